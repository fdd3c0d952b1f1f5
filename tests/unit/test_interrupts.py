"""Signals: named as the cause of a failure even when a library caught it; never changing a finished command's exit."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException

from pipeline.core.interrupts import Interrupted, handled, within

ROOT = Path(__file__).resolve().parents[2]


def wrapped_by_a_library(signal_error: Exception) -> Exception:
    """What MLflow's REST client does: catch anything and raise its own error while handling it."""
    try:
        try:
            raise signal_error
        except Exception as exc:
            raise MlflowException(f"API request failed with exception {exc}")  # noqa: B904 (as MLflow does)
    except MlflowException as outer:
        return outer


def test_the_interruption_behind_a_wrapping_error_is_found():
    interrupted = Interrupted("interrupted by SIGTERM")
    assert within(wrapped_by_a_library(interrupted)) is interrupted
    assert within(interrupted) is interrupted


def test_an_error_without_an_interruption_behind_it_is_left_alone():
    assert within(wrapped_by_a_library(ValueError("bad"))) is None
    assert within(RuntimeError("plain")) is None


def swallowed_by_a_library() -> None:
    """What pydantic-core does when a signal lands while it builds a validator: its own error, nothing chained."""
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
    except BaseException:
        pass
    raise ValueError('Error building "definitions" validator')


def test_a_signal_swallowed_by_a_library_is_still_the_cause():
    # given a command whose library turned the signal's Interrupted into its own unchained error
    with pytest.raises(ValueError) as caught, handled():
        swallowed_by_a_library()
    # then the interruption is named as the cause, not the library's error
    found = within(caught.value)
    assert found is not None and str(found).startswith("interrupted by SIGTERM")
    # and a later command that no signal stopped is left alone
    with handled():
        pass
    assert within(RuntimeError("plain")) is None


LATE_SIGNAL = """
import os, signal, sys, time
from pipeline.core.interrupts import handled
with handled(then_block={then_block}):
    pass  # the command's work, done
os.kill(os.getpid(), signal.SIGTERM)  # lands while the process is on its way out
time.sleep(0.2)
sys.exit(5)
"""


def run_with_a_late_signal(then_block: bool) -> int:
    code = LATE_SIGNAL.format(then_block=then_block)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=60).returncode


def test_a_signal_after_the_command_is_done_leaves_its_exit_code():
    # given a command that has finished, when SIGTERM lands before the process exits, then its own code stands
    assert run_with_a_late_signal(then_block=True) == 5
    # and without the block (the CLI called in-process) the default handler is back: the signal kills
    assert run_with_a_late_signal(then_block=False) == -signal.SIGTERM
