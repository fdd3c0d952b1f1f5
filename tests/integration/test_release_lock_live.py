"""The release lock and interrupted releases against a real `mlflow server`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from mlflow.tracking import MlflowClient

from pipeline.runtime.tracking_server import tracking_server
from pipeline.store.release_lock import EXPIRES, HOLDER, TICKET_SOURCE, lock_name, release_lock

from ..conftest import ROOT
from .released import copy_store

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory, releases):
    """A real `mlflow server` on a sqlite store that holds versions 1 and 2 released (production on 2).

    The store is a copy of the `releases` snapshot (what two deploys leave), so its model artifacts are files
    the clients read directly; aliases, tags, tickets and the ledger go through the server.
    """
    directory = tmp_path_factory.mktemp("lock-server")
    copy_store(releases.snapshot(2), directory)
    with tracking_server(directory) as url:
        yield url


def tickets(client: MlflowClient, model: str) -> list:
    return client.search_model_versions(f"name='{lock_name(model)}'")


class Occupancy:
    """Who is inside the lock, and the most that ever were at once."""

    def __init__(self):
        self.inside, self.peak, self.entries = 0, 0, []
        self._guard = threading.Lock()

    def enter(self, who) -> None:
        with self._guard:
            self.inside += 1
            self.peak = max(self.peak, self.inside)
            self.entries.append((who, time.monotonic()))

    def leave(self) -> None:
        with self._guard:
            self.inside -= 1


def test_an_expired_lock_is_taken_over_by_exactly_one_waiter_at_a_time(server):
    # given: a holder that died, leaving an expired ticket, and eight releases that find it at once
    client, model = MlflowClient(server), "race-model"
    with release_lock(client, model):  # creates the lock's registered model
        pass
    client.create_model_version(
        lock_name(model), source=TICKET_SOURCE, tags={HOLDER: "dead", EXPIRES: "2020-01-01T00:00:00+00:00"}
    )
    room, start = Occupancy(), threading.Barrier(8)

    def release(i: int) -> None:
        start.wait()
        with release_lock(MlflowClient(server), model, wait_s=120):
            room.enter(i)
            time.sleep(0.2)
            room.leave()

    threads = [threading.Thread(target=release, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    # then: each got the lock, never two at once, and no ticket is left behind (the dead one included)
    assert len(room.entries) == 8 and room.peak == 1
    assert tickets(client, model) == []


def test_a_lock_held_past_its_lifetime_is_renewed_not_taken_over(server):
    client, model = MlflowClient(server), "renew-model"
    room, events = Occupancy(), []

    def long_release() -> None:
        with release_lock(MlflowClient(server), model, ttl_s=1.5):
            room.enter("long")
            events.append("long holds")
            time.sleep(5)  # more than three lifetimes of its ticket
            events.append("long lets go")
            room.leave()

    first = threading.Thread(target=long_release)
    first.start()
    time.sleep(1)
    with release_lock(client, model, ttl_s=1.5, wait_s=60):
        room.enter("second")
        events.append("second holds")
        room.leave()
    first.join()
    assert events == ["long holds", "long lets go", "second holds"] and room.peak == 1


def test_sigterm_or_sigint_during_rollback_leaves_lock_alias_and_ledger_consistent(server, project, cli, monkeypatch):
    # given: production 2 and a good 1 on a real server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    assert cli.status()["aliases"] == {"candidate": "2", "production": "2"}
    client = MlflowClient(server)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def rollback(to: str, why: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline", "rollback", "--to", to, "--reason", why],
            cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    started = time.monotonic()
    assert rollback("1", "uninterrupted").wait(timeout=180) == 0
    whole = time.monotonic() - started
    # when: rollbacks are killed at points spread over a rollback's life, by SIGTERM or SIGINT
    outcomes = []
    for i, share in enumerate((0.35, 0.5, 0.6, 0.7, 0.8, 0.9)):
        production = cli.status()["aliases"]["production"]
        process = rollback("2" if production == "1" else "1", f"killed at {share:.0%}")
        time.sleep(whole * share)
        process.send_signal(signal.SIGTERM if i % 2 == 0 else signal.SIGINT)
        _, err = process.communicate(timeout=180)
        outcomes.append(process.returncode)
        # then: exit 0 (it had finished) or 3 with one line saying so; never a traceback
        assert process.returncode in (0, 3), err
        if process.returncode == 3:
            assert err.strip().splitlines()[-1].startswith("error: interrupted by SIG"), err
            assert "Traceback" not in err
        # and the lock is free, the ledger explains every alias, and production is where its last entry put it
        state = cli.status()
        assert tickets(client, "churn-classifier") == []
        assert state["anomalies"] == [], state["anomalies"]
        moves = [m for m in state["history"] if m["alias"] == "production"]
        assert moves[-1]["to"] == state["aliases"]["production"]
    assert 3 in outcomes, f"no signal landed before the rollback ended: {outcomes} ({whole:.1f}s each)"
