"""Shadow mode: production answers, and a sampled copy of the request is scored by the canary in a child process.

Why a process: scored by a thread of the worker, copies shared its
interpreter lock, and on a saturated worker production's p99 doubled whatever
the share (benchmarks/shadow_cost.py). Now the worker forks a scorer when a
canary starts being shadowed. The child inherits the canary exactly as the
worker loaded and checked it (nothing is loaded again, from anywhere), closes
every descriptor but its socket, and runs only on CPU time nothing else wants
(SCHED_IDLE): production has the CPU first, and a copy the scorer has no time
for waits or is dropped.

The worker's part is a non-blocking send of a length-prefixed frame on a Unix
stream socket (a few microseconds). A copy is dropped, and counted, when
SHADOW_QUEUE copies are already in flight (sent, less those the child says it
took, in a word of memory both map) or the socket cannot take it. The child
predicts what gathered in one call (api/shadow_tally.py) and sends its
tallies every second; a thread of the worker, woken only then, adds them to
the metrics. The child ends when its socket closes: the worker let
the canary go, or died. A child that died is forked again, at most every
RESTART_S seconds; meanwhile copies are counted failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import math
import mmap
import os
import select
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn

import orjson

from api.live_stats import LiveStats, add_to_histogram
from api.metrics import SHADOW_DECISION_EVENTS, ServiceMetrics
from api.model.loaded_model import LoadedModel, Prediction
from api.shadow_tally import Tally, copy_of

log = logging.getLogger("api")
FRAME = struct.Struct("!I")  # the length of the frame's payload
COUNT = struct.Struct("=Q")  # copies the child has taken, in memory both processes map
BATCH = 256  # copies scored in one call at most
BATCH_BYTES = 1 << 20  # and about this many bytes of them: the child's memory follows what it scores at once
GATHER_S = 0.01  # after a short batch the scorer waits this long for copies to gather: one-record calls cost most
REPORT_S = 1.0  # the scorer sends its tallies this often
RESTART_S = 10.0
STOP_GRACE_S = 2.0  # a child told to end that has not ended by then is killed
READ_POLL_S = 0.5  # how often the reader looks whether its child is overdue
SEND_BUFFER = 4 << 20
PR_SET_PDEATHSIG = 1


class Shadow:
    """Copies of production's requests, sent to a scorer process that follows the canary being shadowed."""

    def __init__(self, metrics: ServiceMetrics, stats: LiveStats, capacity: int) -> None:
        self.metrics, self.stats, self.capacity = metrics, stats, capacity
        self.scorer: ScorerProcess | None = None
        self._stopping: list[ScorerProcess] = []  # told to end; their sockets close once their readers are done
        self._started_for: LoadedModel | None = None  # the canary the last scorer was started for, and when
        self._started_at = float("-inf")

    def offer(self, canary: LoadedModel, body: bytes | Callable[[], bytes], production: Prediction) -> None:
        """Send a copy of a request production answered; never forks, never raises, never waits.

        `body` is the request as /predict reads it, or what makes it: made
        only when the copy can go, and within this guard. Counted dropped when
        no scorer of this canary runs yet (`follow` starts it within a second)
        or it cannot take the copy now; failed when the scorer of this canary
        died or the copy cannot be made.
        """
        self._send(canary, lambda: _copy(body, production))

    async def offer_built_in_thread(
        self, canary: LoadedModel, body: bytes | Callable[[], bytes], production: Prediction
    ) -> None:
        """`offer`, the copy made in a worker thread: a large request's would hold up the event loop."""
        try:
            copy = await asyncio.to_thread(_copy, body, production)
        except Exception as exc:  # a copy that cannot be made is the canary's loss, never production's
            self._lost(canary, exc)
            return
        self._send(canary, lambda: copy)

    def _send(self, canary: LoadedModel, make_copy: Callable[[], bytes]) -> None:
        scorer, m = self.scorer, self.metrics
        try:
            if scorer is None or scorer.canary is not canary:
                m.child(m.shadow, canary.version, "dropped").inc()
            elif not scorer.alive:
                m.child(m.shadow, canary.version, "failed").inc()
            elif not scorer.send(make_copy()):
                m.child(m.shadow, canary.version, "dropped").inc()
        except Exception as exc:  # a copy that cannot go is the canary's loss, never production's
            self._lost(canary, exc)

    def _lost(self, canary: LoadedModel, exc: Exception) -> None:
        self.metrics.child(self.metrics.shadow, canary.version, "failed").inc()
        log.debug("shadow copy not sent: %s", type(exc).__name__)

    def follow(self, canary: LoadedModel | None) -> ScorerProcess | None:
        """Have a scorer of `canary` running (None: none); from the flush loop, every second, off the request path."""
        self._stopping = [s for s in self._stopping if not s.close_if_finished()]
        scorer = self.scorer
        if scorer is not None and scorer.canary is canary and scorer.alive:
            return scorer
        if scorer is not None:
            if scorer.canary is canary:
                log.warning("the shadow scorer of version %s died", scorer.canary.version)
            scorer.stop()
            self._stopping.append(scorer)
            self.scorer = None
        if canary is None:
            return None
        if canary is self._started_for and time.monotonic() < self._started_at + RESTART_S:
            return None  # it died or could not start: not forked again every second
        self._started_for, self._started_at = canary, time.monotonic()
        try:
            self.scorer = ScorerProcess(canary, self.capacity, self._add)
        except (OSError, RuntimeError) as exc:  # no process or thread to be had: production is not the one to suffer
            log.warning("cannot start the shadow scorer of version %s: %s", canary.version, exc)
        return self.scorer

    def _add(self, canary: LoadedModel, taken: dict[str, Any]) -> None:
        """A scorer's tallies, into the metrics (from the scorer's reader thread)."""
        m, version = self.metrics, canary.version
        for outcome in ("scored", "failed"):
            if taken[outcome]:
                m.child(m.shadow, version, outcome).inc(taken[outcome])
        m.child(m.shadow_agreement, version, "true").inc(taken["agreed"])
        m.child(m.shadow_agreement, version, "false").inc(taken["disagreed"])
        if any(taken["delta"]):
            add_to_histogram(m.child(m.shadow_delta, version), taken["delta"], taken["delta_sum"])
        if any(taken["production"]):
            add_to_histogram(m.child(m.shadow_production_score, version), taken["production"], taken["production_sum"])
        for event, count in taken.get("decision", {}).items():
            if event in SHADOW_DECISION_EVENTS and count:
                m.child(m.shadow_decision, version, event).inc(count)
        self.stats.merge(canary, taken["live"])


def _copy(body: bytes | Callable[[], bytes], production: Prediction) -> bytes:
    return copy_of(body() if callable(body) else body, production.labels, production.probabilities)


class ScorerProcess:
    """The worker's side of one scorer child: sends copies; its reader thread takes the tallies and reaps the child.

    The socket is closed only by the thread that sends, and only once the
    reader is done with it: closed under a send or a read in flight, its
    descriptor could be reused by another connection in between.
    """

    def __init__(self, canary: LoadedModel, capacity: int, on_tally: Callable[[LoadedModel, dict], None]) -> None:
        self.canary, self.capacity, self.on_tally = canary, capacity, on_tally
        self.sent = 0  # copies sent; less those the child has taken (`done`), the copies in flight
        self._done = mmap.mmap(-1, COUNT.size)  # shared with the child, which writes how many it has taken
        self.alive = True  # taking copies
        self.finished = threading.Event()  # the reader is done: the child is reaped, the socket may close
        self._stop_by = float("inf")  # past this, a child that has not ended is killed
        self._pending = b""  # the end of a frame the socket took only in part
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with contextlib.suppress(OSError):  # room for copies in flight (the kernel caps it at net.core.wmem_max)
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        worker = os.getpid()
        try:
            self.pid = os.fork()  # on the thread that lives as long as the worker: the child's death signal follows it
        except OSError:
            ours.close()
            theirs.close()
            raise
        if self.pid == 0:
            _scorer_child(theirs.fileno(), canary, self._done, worker)
        theirs.close()
        self._socket = ours
        try:
            threading.Thread(target=self._read, name=f"shadow-{canary.version}", daemon=True).start()
        except RuntimeError:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            ours.close()
            raise
        log.info("shadow scorer of version %s started (pid %d)", canary.version, self.pid)

    def send(self, copy: bytes) -> bool:
        """Send one copy without blocking; False when it cannot go now (too many in flight, the socket is full)."""
        if not self.alive or self.sent - self.done >= self.capacity:
            return False
        try:
            if self._pending:
                self._pending = self._pending[self._socket.send(self._pending, socket.MSG_DONTWAIT) :]
                if self._pending:
                    return False
            frame = FRAME.pack(len(copy)) + copy
            sent = self._socket.send(frame, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except OSError:  # the child is gone
            self.alive = False
            return False
        self._pending = frame[sent:]  # sent in part: the rest goes first, with the next copy
        self.sent += 1
        return True

    @property
    def done(self) -> int:
        """How many copies the child has taken so far (read from the memory it shares with this process)."""
        return int(COUNT.unpack_from(self._done)[0])

    def stop(self) -> None:
        """Tell the child to end: it sees its input end, sends its last tallies and exits (killed if it cannot)."""
        if not math.isinf(self._stop_by):
            return
        self.alive = False
        self._stop_by = time.monotonic() + STOP_GRACE_S
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_WR)

    def close_if_finished(self) -> bool:
        """Close the socket once the reader is done with it; True when closed."""
        if not self.finished.is_set():
            return False
        self._socket.close()
        return True

    def _read(self) -> None:
        buffer = bytearray()
        try:
            while True:
                if time.monotonic() > self._stop_by:  # stuck (a lock inherited mid-use, a predict that never ends)
                    break
                ready, _, _ = select.select([self._socket], [], [], READ_POLL_S)
                if not ready:
                    continue
                chunk = self._socket.recv(1 << 20)
                if not chunk:
                    break
                buffer += chunk
                for message in _take(buffer, len(buffer), most_bytes=len(buffer) + 1):
                    try:
                        self.on_tally(self.canary, orjson.loads(message))
                    except Exception as exc:  # one report the worker cannot take: the next ones still count
                        log.warning("a shadow scorer report was not counted: %s", type(exc).__name__)
        except OSError as exc:
            log.debug("shadow scorer reader ended: %s", type(exc).__name__)
        finally:
            self.alive = False
            with contextlib.suppress(OSError):  # ended or not, the child goes now; a zombie takes the signal too
                os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            self.finished.set()


def _scorer_child(fd: int, canary: LoadedModel, done: mmap.mmap, worker: int) -> NoReturn:
    """The forked child's whole life: detach from the worker, score copies until the socket closes, exit."""
    code = 0
    try:
        _detach(fd, worker)
        _serve(socket.socket(fileno=fd), Tally(canary), done)
    except BaseException:  # nothing of a child may run on into the worker's code
        code = 1
    finally:
        os._exit(code)


def _detach(keep: int, worker: int) -> None:
    """Keep only the socket (and standard streams), die with the worker, yield the CPU to it, touch few pages."""
    os.closerange(3, keep)  # the worker's listening socket and connections: they must close when it does
    os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    with contextlib.suppress(ValueError, OSError):
        signal.set_wakeup_fd(-1)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != worker:  # the worker died before the death signal was set (it may itself be pid 1)
        os._exit(0)
    os.nice(19)  # where SCHED_IDLE is refused, the lowest nice at least
    with contextlib.suppress(OSError, AttributeError):
        # At nice 19 a woken worker still waited for the scorer's time slice
        # to end (production's p99 +30 %); a SCHED_IDLE task is preempted at once.
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    gc.freeze()  # what the worker built is never walked by the collector here: its pages stay shared


def _serve(sock: socket.socket, tally: Tally, done: mmap.mmap) -> None:
    """Score copies as they come, a batch at a time; tallies every REPORT_S; return when the socket closes."""
    buffer = bytearray()
    taken = 0
    next_report = time.monotonic() + REPORT_S
    while True:
        copies = _take(buffer, BATCH)
        if not copies:
            ready, _, _ = select.select([sock], [], [], max(0.0, next_report - time.monotonic()))
            if ready:
                chunk = sock.recv(1 << 20)
                if not chunk:  # the worker let go: its last tallies, if it still listens
                    with contextlib.suppress(OSError):
                        _send(sock, tally.take())
                    return
                buffer += chunk
        else:
            taken += len(copies)
            COUNT.pack_into(done, 0, taken)  # the worker reads it before each send: no message, no wake-up
            tally.score(copies)
            if len(copies) < BATCH:
                time.sleep(GATHER_S)
                with contextlib.suppress(BlockingIOError):
                    buffer += sock.recv(1 << 20, socket.MSG_DONTWAIT)
        if time.monotonic() >= next_report:
            if tally.counted:
                _send(sock, tally.take())
            next_report = time.monotonic() + REPORT_S


def _take(buffer: bytearray, most: int, most_bytes: int = BATCH_BYTES) -> list[bytes]:
    """Up to `most` whole frames' payloads (and `most_bytes`, past the first) from the front of the buffer."""
    found: list[bytes] = []
    start = 0
    while len(found) < most and len(buffer) - start >= FRAME.size and (not found or start < most_bytes):
        (size,) = FRAME.unpack_from(buffer, start)
        if len(buffer) - start < FRAME.size + size:
            break
        found.append(bytes(buffer[start + FRAME.size : start + FRAME.size + size]))
        start += FRAME.size + size
    del buffer[:start]
    return found


def _send(sock: socket.socket, report: dict[str, Any]) -> None:
    payload = orjson.dumps(report)
    sock.sendall(FRAME.pack(len(payload)) + payload)
