"""Pure release rules: may a version be promoted, where does a rollback go.

These functions see plain values read from the registry and decide; the
registry adapters (pipeline/store/model_versions.py and
pipeline/store/alias_moves.py) do the reading and the moving. A rule that
says no raises ReleaseRefused, which the CLI exits 1 on.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass


class ReleaseRefused(Exception):
    """A release rule said no; the message says which and why."""


@dataclass(frozen=True)
class VersionState:
    """A registered version as the release rules see it: its verdicts and the production its gate compared with."""

    version: str
    gate: str  # passed | failed | pending
    smoke: str  # passed | failed | pending
    baseline: str | None  # the production version its gate compared against

    @property
    def releasable(self) -> bool:
        """True when both its gate and its smoke test passed."""
        return self.gate == "passed" and self.smoke == "passed"


def check_promotion(
    state: VersionState, candidate: str | None, production: str | None, rolled_back: Collection[str] = ()
) -> bool:
    """Compare-and-set precondition (docs/DESIGN.md invariants 1 and 3).

    Returns False when production already points at the version (nothing to
    do), True when the move may go ahead, and raises ReleaseRefused otherwise.
    `rolled_back`: the versions production was rolled back away from (the
    verified ledger); a re-run deploy never promotes one of them again.
    """
    if production == state.version:
        return False
    if state.version in rolled_back:
        raise ReleaseRefused(
            f"version {state.version} was rolled back out of production (the release ledger says why): it is not "
            f"promoted again; release a new version, or return to it deliberately with "
            f"`rollback --to {state.version} --reason ...`"
        )
    if state.gate != "passed":
        raise ReleaseRefused(f"version {state.version} did not pass its gates (gate: {state.gate})")
    if state.smoke != "passed":
        raise ReleaseRefused(f"version {state.version} has not passed smoke tests (smoke: {state.smoke})")
    if candidate != state.version:
        raise ReleaseRefused(
            f"candidate alias points at {candidate or 'nothing'}, not {state.version}: "
            "a newer candidate was registered; promote that one instead"
        )
    if production != state.baseline:
        raise ReleaseRefused(
            f"production moved from {state.baseline or 'nothing'} to {production or 'nothing'} after "
            f"version {state.version} was gated against it; re-run the gate"
        )
    return True


def rollback_candidates(
    versions: list[VersionState], production: str | None, to: str | None, served: list[tuple[str, str, bool]]
) -> list[VersionState]:
    """The versions a rollback may move production to, best first; ReleaseRefused if there is none.

    With `to`, only that version. Without, the versions production served
    before the current one, most recent first, from the verified ledger
    (`served`: each production move as (from, to, was it a rollback), oldest
    first): never one production was rolled back away from, and only those
    whose gate and smoke passed. The caller takes the first whose artifact
    still verifies and names the ones it skipped.
    """
    if production is None:
        raise ReleaseRefused("production points at nothing: there is nothing to roll back")
    by_version = {v.version: v for v in versions}
    if to is not None:
        if to not in by_version:
            known = ", ".join(sorted(by_version, key=int)) or "none"
            raise ReleaseRefused(f"version {to} does not exist (registered versions: {known})")
        target = by_version[to]
        if not target.releasable:
            raise ReleaseRefused(
                f"version {to} never passed gates and smoke (gate: {target.gate}, smoke: {target.smoke}); "
                "refusing to serve it"
            )
        return [target]
    rolled_back = {before for before, _, rollback in served if rollback and before}
    earlier: list[str] = []
    for _, version, _ in reversed(served):
        if version != production and version not in earlier and version not in rolled_back and version in by_version:
            earlier.append(version)
    found = [by_version[v] for v in earlier if by_version[v].releasable]
    if not found:
        raise ReleaseRefused(
            f"the release ledger names no version production served before {production} that passed gates and "
            "smoke and was not rolled back: nothing to roll back to (name one with --to)"
        )
    return found
