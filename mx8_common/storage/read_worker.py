"""Read worker processes: an agent's batches of local files read straight into shared
memory by helper processes, each with its own interpreter lock.

Why processes: one agent serves every trainer rank of its host. Read in the agent's own
threads, every ``open``/``fstat``/``preadv``/``close`` of a file hands the GIL back and
forth with the event loop that answers the trainers, and the reads ran at a third of
their speed (issue 14: 34 us of wall time per 64 KiB file inside the agent against
11-14 us alone). A worker process reads with its GIL to itself, on another core.

``ReadWorkers(n)`` starts ``n`` workers (``python -m mx8_common.storage.read_worker``,
which imports only ``local_read``) on first use. ``read(items, segment, offset,
listed_at)`` gives a future of the seconds the read took, or the reader's typed
``StorageError`` (``ObjectNotFoundError``, ``ObjectChangedError``, ...) exactly as an
in-process read raises it. Jobs go to the worker with the fewest pending. A worker reads
one job at a time; a job that takes longer than ``_STUCK_S`` (storage that waits: a cold
disk, a network file system) lets its second thread (``_THREADS``) take the next, so a
read that waits does not hold up the next batch for long.

Protocol, one ``socketpair`` per worker, frames of a 4-byte length and a pickle (both
ends are this module, in one agent's process tree):

* agent -> worker: ``("read", job, segment, size, new, offset, items, listed_at)``, with
  the segment's file descriptor attached (``SCM_RIGHTS``) when ``new`` (the first job of
  that segment for that worker: names are unlinked early, descriptors are not);
  ``("forget", segment)`` once the agent closed the segment, so the worker unmaps it.
* worker -> agent: ``(job, seconds, error or None)``.

A worker exits when its socket closes, so an agent killed with -9 leaves none behind. A
worker that dies fails its pending reads with one line naming it (``read_worker_exited``):
the agent stops on it like on any failed read, nothing is served half-read.
"""

from __future__ import annotations

import array
import asyncio
import collections
import contextlib
import math
import mmap
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from mx8_common.errors import StorageError
from mx8_common.storage.local_read import LocalItem, read_many_into

__all__ = ["ReadWorkers", "SharedSegment"]

_HEADER = 4
_RECV = 1 << 16
#: Threads of one worker. Two reading at once read page-cached files ~10 % faster alone
#: (80k vs 54-72k files/s of 64 KiB), but beside the trainers of a busy host their GIL
#: hand-offs cost CPU the trainers need: one at a time, the distributed benchmark's agent
#: took 9 % less CPU per sample and ran 6 % faster (paired medians of 16 alternating
#: epochs, benchmarks/RESULTS.md). So the second only reads while the first is stuck.
_THREADS = 2
#: Seconds a job runs before the next thread may start the next job (a page-cached batch
#: of 64 files takes about a millisecond).
_STUCK_S = 0.02
#: Seconds ``aclose`` waits for reads in flight, then for a worker to exit.
_CLOSE_WAIT_S = 5.0


def _frame(msg: object) -> bytes:
    body = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    return len(body).to_bytes(_HEADER, "little") + body


def _frames(buf: bytearray) -> list[Any]:
    """The complete messages at the head of ``buf`` (removed from it)."""
    out = []
    while len(buf) >= _HEADER:
        n = int.from_bytes(buf[:_HEADER], "little")
        if len(buf) < _HEADER + n:
            break
        out.append(pickle.loads(buf[_HEADER : _HEADER + n]))
        del buf[: _HEADER + n]
    return out


class SharedSegment(Protocol):
    """What a job reads into (``mx8_common.shm.Segment``): a named shared-memory file;
    ``on_close`` callbacks run when its owner closes it."""

    name: str
    size: int
    on_close: list[Callable[[], None]]

    def fileno(self) -> int: ...


class _Worker:
    """One worker process and the agent's end of its socket."""

    def __init__(self, loop: asyncio.AbstractEventLoop, index: int) -> None:
        self._loop = loop
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", __name__, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                # Not in the agent's session: a ^C reaches the agent, which closes it.
                start_new_session=True,
            )
        except OSError as exc:
            ours.close()
            raise StorageError(
                f"cannot start the agent's local read worker ({sys.executable}): {exc}; "
                "check that the agent's Python can start another process"
            ) from None
        finally:
            theirs.close()
        ours.setblocking(False)
        self.sock = ours
        self.index = index
        self.pending: dict[int, asyncio.Future[float]] = {}
        self.known: set[str] = set()
        self._in = bytearray()
        self._out: collections.deque[tuple[memoryview, int | None]] = collections.deque()
        self._writing = False
        self.dead: StorageError | None = None
        loop.add_reader(ours.fileno(), self._readable)

    # -- sending ------------------------------------------------------------------------

    def send(self, frame: bytes, fd: int | None = None) -> None:
        if self.dead is not None:
            return
        self._out.append((memoryview(frame), fd))
        if not self._writing:
            self._flush()

    def _flush(self) -> None:
        while self._out:
            data, fd = self._out[0]
            try:
                if fd is not None:
                    fds = array.array("i", [fd])
                    sent = self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
                else:
                    sent = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._died(f"its socket failed ({exc})")
                return
            if sent < len(data):
                # The descriptor went with the first byte; the rest goes on its own.
                self._out[0] = (data[sent:], None)
                break
            self._out.popleft()
        writing = bool(self._out)
        if writing != self._writing:
            self._writing = writing
            if writing:
                self._loop.add_writer(self.sock.fileno(), self._flush)
            else:
                self._loop.remove_writer(self.sock.fileno())

    # -- receiving ----------------------------------------------------------------------

    def _readable(self) -> None:
        try:
            data = self.sock.recv(_RECV)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._died(f"its socket failed ({exc})")
            return
        if not data:
            self._died(f"it exited ({self.proc.poll()})")
            return
        self._in += data
        for job, seconds, error in _frames(self._in):
            fut = self.pending.pop(job, None)
            if fut is None or fut.done():
                continue
            if error is not None:
                fut.set_exception(error)
            else:
                fut.set_result(seconds)

    def _died(self, why: str) -> None:
        if self.dead is not None:
            return
        from mx8_common.obs.events import emit  # not imported by the worker process

        self.dead = StorageError(
            f"the agent's local read worker {self.index} (pid {self.proc.pid}) stopped: {why}; "
            "see the agent's log above for its error and restart the agent"
        )
        emit("agent", "read_worker_exited", worker=self.index, pid=self.proc.pid, reason=why)
        self._detach()
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(self.dead)
        self.pending.clear()

    def _detach(self) -> None:
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self.sock.fileno())
        if self._writing:
            with contextlib.suppress(Exception):
                self._loop.remove_writer(self.sock.fileno())
            self._writing = False
        self._out.clear()

    def close(self) -> None:
        """Close the socket (the worker exits on it); on the loop's thread."""
        if self.dead is None:
            self.dead = StorageError("the agent's local read workers are closed")
        self._detach()
        self.sock.close()

    def reap(self) -> None:
        """Wait for the process to exit (blocking: off the loop), killing it if it stays."""
        try:
            self.proc.wait(timeout=_CLOSE_WAIT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class ReadWorkers:
    """``n`` read worker processes, started on first use (see the module docstring)."""

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ValueError(f"read workers: {n}; at least 1")
        self.n = n
        self._workers: list[_Worker] = []
        self._next_job = 1
        self.closed = False

    def read(
        self,
        items: Sequence[LocalItem],
        segment: SharedSegment,
        offset: int,
        listed_at: float | None,
    ) -> asyncio.Future[float]:
        """Read ``items`` back to back into ``segment`` (an ``mx8_common.shm.Segment``)
        from ``offset``; the future gives the seconds it took or the read's error."""
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        if self.closed:
            fut.set_exception(StorageError("the agent's local read workers are closed"))
            return fut
        self.start()
        worker = min(self._workers, key=lambda w: (w.dead is not None, len(w.pending)))
        if worker.dead is not None:
            fut.set_exception(worker.dead)
            return fut
        job = self._next_job
        self._next_job += 1
        new = segment.name not in worker.known
        worker.pending[job] = fut
        msg = ("read", job, segment.name, segment.size, new, offset, list(items), listed_at)
        if new:
            worker.known.add(segment.name)
            segment.on_close.append(lambda w=worker, name=segment.name: self._forget(w, name))
        worker.send(_frame(msg), segment.fileno() if new else None)
        return fut

    def start(self) -> None:
        """Start the workers now (else on the first read): their interpreters start while
        the trainers connect, not while the first batch waits."""
        if not self._workers and not self.closed:
            loop = asyncio.get_running_loop()
            self._workers = [_Worker(loop, i) for i in range(self.n)]

    def _forget(self, worker: _Worker, name: str) -> None:
        if name in worker.known:
            worker.known.discard(name)
            worker.send(_frame(("forget", name)))

    @property
    def pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers]

    async def aclose(self) -> None:
        """Let reads in flight finish (a few seconds at most), then stop the workers."""
        self.closed = True
        pending = [f for w in self._workers for f in w.pending.values()]
        if pending:
            await asyncio.wait(pending, timeout=_CLOSE_WAIT_S)
        workers, self._workers = self._workers, []
        for worker in workers:
            for fut in worker.pending.values():
                if not fut.done():
                    fut.cancel()
            worker.close()
            await asyncio.to_thread(worker.reap)


# -- the worker process -----------------------------------------------------------------


class _Jobs:
    """A worker's queue of jobs for its threads: thread ``k`` takes the next job only
    while threads ``0..k-1`` are all busy and have been for ``stuck_s`` (see ``_THREADS``).
    """

    def __init__(self, stuck_s: float = _STUCK_S) -> None:
        self._stuck_s = stuck_s
        self._cond = threading.Condition()
        self._queue: collections.deque[Any] = collections.deque()
        self._busy_since: dict[int, float] = {}  # thread -> when its job started
        self._closed = False

    def put(self, job: Any) -> None:
        with self._cond:
            self._queue.append(job)
            self._cond.notify_all()

    def close(self) -> None:
        """No more jobs: each thread ends once the queue is empty."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def done(self, me: int) -> None:
        with self._cond:
            self._busy_since.pop(me, None)
            self._cond.notify_all()

    def take(self, me: int) -> Any:
        """Thread ``me``'s next job; None once closed and empty."""
        with self._cond:
            while True:
                if not self._queue:
                    if self._closed:
                        return None
                    self._cond.wait()
                    continue
                wait = self._wait_before_taking(me)
                if wait <= 0:
                    self._busy_since[me] = time.monotonic()
                    job = self._queue.popleft()
                    if self._queue:
                        # A later thread that waited for this one to be busy now waits
                        # with a deadline: this job may get stuck.
                        self._cond.notify_all()
                    return job
                self._cond.wait(None if wait == math.inf else wait)

    def start_readers(self, n: int, work: Callable[[int, Any], None]) -> list[threading.Thread]:
        """``n`` threads, each taking jobs as thread ``k`` and running ``work(k, job)``,
        until ``close`` and an empty queue; join them after ``close``."""

        def reader(me: int) -> None:
            while (job := self.take(me)) is not None:
                try:
                    work(me, job)
                finally:
                    self.done(me)

        threads = [
            threading.Thread(target=reader, args=(k,), name=f"mx8-read-worker-{k}", daemon=True)
            for k in range(n)
        ]
        for t in threads:
            t.start()
        return threads

    def _wait_before_taking(self, me: int) -> float:
        """Seconds until ``me`` may take a job (<= 0: now; inf: until woken)."""
        now = time.monotonic()
        wait = 0.0
        for k in range(me):
            started = self._busy_since.get(k)
            if started is None:
                return math.inf  # an earlier thread is free: it takes the job
            wait = max(wait, started + self._stuck_s - now)
        return wait


def _serve(sock: socket.socket, threads: int = _THREADS) -> None:
    maps: dict[str, mmap.mmap] = {}
    busy: collections.Counter[str] = collections.Counter()  # jobs running per segment
    forgotten: set[str] = set()  # closed by the agent, unmapped when its last job ends
    lock = threading.Lock()  # guards the three above and the socket's writes
    fds: collections.deque[int] = collections.deque()
    buf = bytearray()

    def release(name: str) -> None:
        busy[name] -= 1
        if not busy[name] and name in forgotten:
            forgotten.discard(name)
            del busy[name]
            maps.pop(name).close()

    def run(job: int, name: str, offset: int, items: list[Any], listed_at: Any) -> None:
        try:
            reply = (job, read_many_into(items, maps[name], offset, listed_at), None)
        except StorageError as exc:
            reply = (job, 0.0, exc)
        except Exception as exc:  # the agent gets it as one line, not a traceback
            reply = (job, 0.0, StorageError(f"local read worker: {exc!r}"))
        with lock:
            release(name)
            sock.sendall(_frame(reply))

    jobs = _Jobs()
    readers = jobs.start_readers(threads, lambda _me, job: run(*job))
    try:
        while True:
            data, got_fds, _flags, _addr = socket.recv_fds(sock, _RECV, 16)
            fds.extend(got_fds)
            if not data:
                return  # the agent closed its end or went away (the readers drain first)
            buf += data
            for msg in _frames(buf):
                with lock:
                    if msg[0] == "forget":
                        if busy[msg[1]]:
                            forgotten.add(msg[1])
                        elif msg[1] in maps:
                            busy.pop(msg[1], None)
                            maps.pop(msg[1]).close()
                        continue
                    _op, job, name, size, new, offset, items, listed_at = msg
                    try:
                        if new:
                            fd = fds.popleft()
                            try:
                                maps[name] = mmap.mmap(fd, size, flags=mmap.MAP_SHARED)
                            finally:
                                os.close(fd)
                    except Exception as exc:
                        sock.sendall(
                            _frame((job, 0.0, StorageError(f"local read worker: {exc!r}")))
                        )
                        continue
                    busy[name] += 1
                jobs.put((job, name, offset, items, listed_at))
    finally:
        jobs.close()
        for t in readers:
            t.join()


def main(argv: Sequence[str]) -> int:
    sock = socket.socket(fileno=int(argv[0]))
    # The agent went away mid-reply: nothing to tell anyone.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError, KeyboardInterrupt):
        _serve(sock)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
