"""The canary split is keyed by the rollout's secret salt: no client can choose its side."""

from api.release import contract
from api.release.traffic import Traffic
from api.release.traffic_reading import read_traffic

from ..unit.test_canary_binding import KEY, MODEL, NOW, bound

SALT_A, SALT_B = "0f" * 16, "e1" * 16
CUSTOMERS = [f"cust-{i}" for i in range(400)]


def canary_side(traffic: Traffic) -> set[str]:
    return {c for c in CUSTOMERS if traffic.to_canary([c])}


def test_a_customers_side_depends_on_the_salt_and_stays_the_same():
    a, b = Traffic("canary", "2", 30, salt=SALT_A), Traffic("canary", "2", 30, salt=SALT_B)
    on_a, on_b = canary_side(a), canary_side(b)
    assert 80 <= len(on_a) <= 160 and 80 <= len(on_b) <= 160  # about 30 % of 400
    assert on_a != on_b and len(on_a & on_b) < 0.6 * len(on_a)  # another salt, another split
    assert all(canary_side(Traffic("canary", "2", 30, salt=SALT_A)) == on_a for _ in range(3))  # same id, same side
    # the bucket is a keyed hash of the id's text: not CRC32, not the bare id
    assert a.bucket("cust-1") == a.bucket("cust-1") and {a.bucket(c) for c in CUSTOMERS[:50]} != {
        b.bucket(c) for c in CUSTOMERS[:50]
    }


def test_as_the_weight_grows_customers_move_to_the_canary_once():
    at = {w: canary_side(Traffic("canary", "2", w, salt=SALT_A)) for w in (5, 10, 25, 50, 100)}
    assert at[5] <= at[10] <= at[25] <= at[50] <= at[100] == set(CUSTOMERS)
    assert len(at[5]) < len(at[50])


def test_every_record_decides_and_a_mixed_batch_goes_to_production():
    traffic = Traffic("canary", "2", 40, salt=SALT_A)
    canary = sorted(canary_side(traffic))
    production = sorted(set(CUSTOMERS) - set(canary))
    assert traffic.to_canary(canary[:20])  # every customer on the canary's side: the canary
    assert not traffic.to_canary([*canary[:20], production[0]])  # one is production's: all of it is
    assert not traffic.to_canary([production[0], *canary[:20]])
    assert not traffic.to_canary([None, production[0]])  # a record without an id cannot pull it to the canary


def test_without_customer_ids_the_side_is_a_random_draw():
    traffic = Traffic("canary", "2", 50, salt=SALT_A)
    draws = [traffic.to_canary(None) for _ in range(400)]
    assert 120 <= sum(draws) <= 280
    canary = next(c for c in CUSTOMERS if traffic.to_canary([c]))
    with_anonymous = [traffic.to_canary([canary, None]) for _ in range(400)]
    assert 120 <= sum(with_anonymous) <= 280  # a record without an id: drawn, not given to the canary


def test_off_shadow_and_the_ends_of_the_weight():
    assert not any(Traffic("shadow", "2", 0, 1.0, salt=SALT_A).to_canary([c]) for c in CUSTOMERS)
    assert not any(Traffic("canary", "2", 0, salt=SALT_A).to_canary([c]) for c in CUSTOMERS)
    assert all(Traffic("canary", "2", 100, salt=SALT_A).to_canary([c]) for c in CUSTOMERS)


def test_the_salt_is_a_tag_read_back_covered_by_the_signature_and_never_shown():
    tags, traffic = bound(weight=30)  # a running rollout's state, signed as rollout signs it
    assert tags[contract.CANARY_SALT] == traffic.salt
    read = read_traffic(tags, "2", MODEL, KEY.public_key(), now=NOW)
    assert read == traffic and read.problem is None
    # another salt under the same signature: refused, read as off
    swapped = read_traffic({**tags, contract.CANARY_SALT: SALT_B}, "2", MODEL, KEY.public_key(), now=NOW)
    assert swapped.mode == "off" and "not signed" in (swapped.problem or "")
    assert traffic.salt not in repr(traffic) and traffic.salt not in str(traffic.describe())


def test_a_salt_that_is_not_hex_or_too_long_still_keys_the_split_and_read_traffic_never_raises():
    text = Traffic("canary", "2", 30, salt="not hex at all")
    long = Traffic("canary", "2", 30, salt="ab" * 200)  # 200 bytes: more than BLAKE2b's key
    assert canary_side(text) != canary_side(long) and canary_side(text)
    tags, _ = bound(weight=30)
    for salt in ("zz" * 100, ""):  # any salt reads (a wrong one only fails the signature: off, never a crash)
        read = read_traffic({**tags, contract.CANARY_SALT: salt}, "2", MODEL, KEY.public_key(), now=NOW)
        assert read.mode == "off" and read.refused == "signature"
