"""`python -m api` gives its workers one OpenMP thread unless the operator chose a number."""

import os
import subprocess
import sys

import pytest

from ..conftest import ROOT

# Import the entry point, then what predicts with OpenMP, and ask the loaded OpenMP runtimes how many threads they use.
PROBE = """
import api.__main__, sklearn.ensemble, threadpoolctl
print(sorted({p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "openmp"}))
"""


@pytest.mark.parametrize(("given", "expected"), [(None, "[1]"), ("3", "[3]")])
def test_the_entry_point_limits_openmp_threads_before_any_library_loads(given, expected):
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if given is not None:
        env["OMP_NUM_THREADS"] = given
    command = [sys.executable, "-c", PROBE]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == expected
