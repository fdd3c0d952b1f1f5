import pytest

from gates.release_policy import ReleaseRefused, VersionState, check_promotion, rollback_candidates


def state(version, gate="passed", smoke="passed", baseline=None):
    return VersionState(version, gate, smoke, baseline)


def test_promotion_goes_ahead_when_nothing_moved():
    assert check_promotion(state("2", baseline="1"), candidate="2", production="1") is True
    assert check_promotion(state("1"), candidate="1", production=None) is True


def test_promotion_is_a_no_op_when_production_is_already_there():
    assert check_promotion(state("2", baseline="1"), candidate="3", production="2") is False


@pytest.mark.parametrize(
    ("version", "candidate", "production", "message"),
    [
        (state("2", gate="failed", baseline="1"), "2", "1", "did not pass its gates"),
        (state("2", smoke="pending", baseline="1"), "2", "1", "has not passed smoke"),
        (state("2", smoke="failed", baseline="1"), "2", "1", "has not passed smoke"),
        (state("2", baseline="1"), "3", "1", "candidate alias points at 3, not 2"),
        (state("3", baseline="2"), "3", "1", "production moved from 2 to 1"),
        (state("1"), "1", "5", "production moved from nothing to 5"),
    ],
)
def test_promotion_refusals(version, candidate, production, message):
    with pytest.raises(ReleaseRefused, match=message):
        check_promotion(version, candidate, production)


def test_a_version_rolled_back_out_of_production_is_never_promoted_again():
    # given: 3 was gated against 2, promoted, and rolled back to 2; the candidate alias still points at 3
    rolled_back = {"3"}
    # then: a re-run deploy cannot promote it again, though every other precondition holds
    with pytest.raises(ReleaseRefused, match=r"version 3 was rolled back out of production.*rollback --to 3"):
        check_promotion(state("3", baseline="2"), candidate="3", production="2", rolled_back=rolled_back)
    # and a version that was not rolled back still goes ahead
    assert check_promotion(state("4", baseline="2"), candidate="4", production="2", rolled_back=rolled_back) is True


VERSIONS = [state("1"), state("2", smoke="failed"), state("3"), state("4")]
# Production's moves in the ledger, as (from, to, was it a rollback): 1, then 3, then 4.
SERVED = [(None, "1", False), ("1", "3", False), ("3", "4", False)]


def test_rollback_goes_back_along_the_ledger_to_what_production_served_before():
    assert [v.version for v in rollback_candidates(VERSIONS, "4", None, SERVED)] == ["3", "1"]
    assert [v.version for v in rollback_candidates(VERSIONS, "3", None, SERVED[:2])] == ["1"]


def test_rollback_never_returns_to_a_version_production_was_rolled_back_away_from():
    # 4 misbehaved and was rolled back to 3; rolling back again goes to 1, not to 4
    served = [*SERVED, ("4", "3", True)]
    assert [v.version for v in rollback_candidates(VERSIONS, "3", None, served)] == ["1"]


def test_rollback_skips_what_never_passed_smoke_and_what_the_ledger_never_served():
    served = [(None, "1", False), ("1", "2", False), ("2", "4", False)]  # 2 was served though its smoke failed
    assert [v.version for v in rollback_candidates(VERSIONS, "4", None, served)] == ["1"]  # 3 was never served


def test_rollback_to_a_named_good_version():
    assert [v.version for v in rollback_candidates(VERSIONS, "4", "1", SERVED)] == ["1"]


@pytest.mark.parametrize(
    ("production", "to", "served", "message"),
    [
        (None, None, SERVED, "nothing to roll back"),
        ("4", "9", SERVED, r"version 9 does not exist \(registered versions: 1, 2, 3, 4\)"),
        ("4", "2", SERVED, "version 2 never passed gates and smoke"),
        ("1", None, SERVED[:1], "names no version production served before 1"),
        ("4", None, [], "names no version production served before 4"),
    ],
)
def test_rollback_refusals(production, to, served, message):
    with pytest.raises(ReleaseRefused, match=message):
        rollback_candidates(VERSIONS, production, to, served)
