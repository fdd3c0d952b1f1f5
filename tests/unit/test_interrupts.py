"""A signal is named as the cause of a failure even when a library caught it and raised its own error."""

from mlflow.exceptions import MlflowException

from pipeline.core.interrupts import Interrupted, within


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
