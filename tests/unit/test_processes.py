"""Waiting for a child to answer: only the child's own answer counts, not another process on a reused port."""

import subprocess
import sys

import pytest

from pipeline.core.errors import CheckFailed
from pipeline.runtime.processes import free_port, listens, stop, wait_for


def http_server(port: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_an_answer_from_another_process_on_the_same_port_is_not_the_childs():
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    first = http_server(port)
    try:
        wait_for(url, 30, first)
        assert listens(first.pid, url)
        # a second child handed the same port cannot bind it; the first one's answers do not make it ready
        second = http_server(port)
        try:
            with pytest.raises(CheckFailed, match="exited with code 1"):
                wait_for(url, 30, second)
            assert not listens(second.pid, url)
        finally:
            stop(second)
    finally:
        stop(first)
