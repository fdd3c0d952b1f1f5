"""`python -m pipeline`: the CLI."""

import gc
import signal
import sys


def _before_start(signum: int, _frame: object) -> None:
    """A signal while the CLI is still importing: nothing has started, exit 3 in one line as any interruption."""
    sys.stderr.write(f"error: interrupted by {signal.Signals(signum).name} before the command started: nothing done\n")
    raise SystemExit(3)


# Installed first: the imports below take a second or two, and a default handler would exit 143 or with a traceback.
for _signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(_signum, _before_start)

from pipeline.cli import main  # noqa: E402

code = main(process_ends=True)
# Everything the command made is closed, written and renamed by now. Frozen, the millions of objects MLflow,
# scikit-learn and SciPy left are not walked by the collections the interpreter runs while it shuts down:
# exit takes ~0.1 s instead of 1-2 s (atexit handlers still run, as before).
gc.freeze()
sys.exit(code)
