"""Local files a rank reads itself, ahead of the trainer (``OpenStream.trainer_reads``).

An agent on the trainer's host may send a batch of whole local files as their paths and
sizes only (``Batch.local``). ``ReadAhead`` owns the stream's response iterator on a
thread of its own: it takes each message as it arrives and reads such a batch's files
there (``local_read.read_local``: the snapshot's size and listing-time checks, its typed
errors), while the trainer works on the batch before. So every rank reads its own
batches, in parallel with the others and with its own training step, as an embedded
loader's engine thread does, instead of all of a host's ranks waiting on the agent's
reader. The agent sends at most the stream's window of batches ahead, so at most that
many are read ahead here.

A read that fails ends the read-ahead with the error beside its message: the client then
reopens the stream without ``trainer_reads`` (the agent reads, and reports what is
really wrong with the file, if anything). A trainer waiting on a read that takes longer
than ``_SAY_EVERY_S`` (a hung network file system) says which file, every
``_SAY_EVERY_S``: a blocked read cannot be taken back, so it waits on.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from mx8_common.errors import StorageError
from mx8_common.rpc.proto import agent_pb2 as pb
from mx8_common.storage.local_read import read_local

__all__ = ["ReadAhead", "read_batch_files"]

_END = object()
#: Seconds a trainer waits on one file's read before it says so (and again after each).
_SAY_EVERY_S = 5.0


def _say(line: str) -> None:
    print(f"mx8: {line}", file=sys.stderr, flush=True)


def read_batch_files(batch: pb.Batch, on_file: Callable[[str], None] | None = None) -> list[bytes]:
    """The bytes of a ``Batch.local`` batch's files, in order (blocking); ``on_file`` is
    told each file before it is read."""
    offsets = batch.offsets
    listed_at = batch.local.listed_at or None
    out = []
    for i, location in enumerate(batch.locations):
        if on_file is not None:
            on_file(location)
        out.append(read_local(location, None, offsets[i + 1] - offsets[i], listed_at))
    return out


class ReadAhead:
    """The messages of one stream, each with its read files (see the module docstring).

    ``next()`` gives ``(message, parts)``: ``parts`` is the list of a local batch's file
    bytes, the ``StorageError`` its read raised (the last item), or None for any other
    message. It raises what iterating the stream raised (``grpc.RpcError``), and
    ``StopIteration`` once the stream ended.
    """

    def __init__(
        self, responses: Iterator[pb.AgentMessage], say: Callable[[str], None] = _say
    ) -> None:
        self._responses = responses
        self._say = say
        #: The file being read and since when (None between batches).
        self._reading: tuple[str, float] | None = None
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="mx8-trainer-reads", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        put = self._queue.put
        try:
            for message in self._responses:
                if not (message.HasField("batch") and message.batch.HasField("local")):
                    put((message, None))
                    continue
                try:
                    put((message, read_batch_files(message.batch, self._on_file)))
                except StorageError as exc:
                    put((message, exc))
                    return  # the client reopens the stream: nothing after this counts
                finally:
                    self._reading = None
        except BaseException as exc:  # grpc.RpcError (a cancel too): the client's to judge
            put(exc)
            return
        put(_END)

    def _on_file(self, location: str) -> None:
        self._reading = (location, time.monotonic())

    def _get(self) -> Any:
        """The next item; while one file's read holds it up, say which, now and then."""
        while True:
            try:
                return self._queue.get(timeout=_SAY_EVERY_S)
            except queue.Empty:
                reading = self._reading
                if reading is None:
                    continue  # waiting for the agent's next batch, not on a read
                waited = time.monotonic() - reading[1]
                if waited >= _SAY_EVERY_S:
                    self._say(
                        f"still reading {reading[0]} after {waited:.0f}s; its file system is "
                        "slow or hung (check the mount)"
                    )

    def next(self) -> tuple[pb.AgentMessage, list[bytes] | StorageError | None]:
        item = self._get()
        if item is _END or isinstance(item, BaseException):
            self._queue.put(item)  # asked again, it answers the same
            if item is _END:
                raise StopIteration
            raise item
        return item

    def drain(self) -> None:
        """Wait for the stream to end (its last messages are dropped)."""
        while True:
            try:
                self.next()
            except StopIteration:
                return
