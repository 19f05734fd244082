"""The parent's loader state, shared with the torch DataLoader workers that copied it.

torch builds each worker's copy of the dataset once (inherited on fork, pickled on spawn)
and, with ``persistent_workers=True``, keeps it for every later epoch: a ``set_epoch`` or
``load_state_dict`` in the parent never reaches the copies. So the parent publishes its
loader state here on every change, and a worker reads it each time torch starts an epoch in
it (``iter(dataset)``, also after torch's ``_ResumeIteration``).

A worker also records which publication it started from. While the parent's latest state
is one that workers took, the parent knows its own position is stale: the batches went
through workers whose progress the parent cannot see.

The buffer is lock-free shared memory (``multiprocessing.RawArray``), which torch can hand
to fork, spawn and forkserver workers alike; a single writer (the parent) and a sequence
counter keep a reader from seeing a half-written state.
"""

from __future__ import annotations

import ctypes
import json
import multiprocessing
from multiprocessing.context import get_spawning_popen
from typing import Any

__all__ = ["SharedLoaderState", "spawning"]

_CAPACITY = 8192  # a loader state is a few hundred bytes of JSON


def spawning() -> bool:
    """True while a process is being started with this object as an argument (spawn)."""
    return get_spawning_popen() is not None


class SharedLoaderState:
    """One published loader state (a JSON dict) plus which publication workers took."""

    def __init__(self) -> None:
        # _seq is odd while the parent writes; its even values number the publications.
        self._seq = multiprocessing.RawValue(ctypes.c_int64, 0)
        self._taken = multiprocessing.RawValue(ctypes.c_int64, -1)
        self._size = multiprocessing.RawValue(ctypes.c_int64, 0)
        self._buf = multiprocessing.RawArray(ctypes.c_char, _CAPACITY)

    def publish(self, state: dict[str, Any]) -> None:
        """Make ``state`` what workers start their next epoch from (parent only)."""
        data = json.dumps(state, sort_keys=True).encode()
        if len(data) > _CAPACITY:
            raise ValueError(f"loader state of {len(data)} bytes does not fit the shared buffer")
        self._seq.value += 1
        ctypes.memmove(self._buf, data, len(data))
        self._size.value = len(data)
        self._seq.value += 1

    def take(self) -> dict[str, Any] | None:
        """The published state (None if nothing was published), marked as taken by workers."""
        while True:
            seq = self._seq.value
            if seq % 2:
                continue  # the parent is writing: a few microseconds
            data = self._buf.raw[: self._size.value]
            if self._seq.value == seq:
                break
        if seq == 0:
            return None
        self._taken.value = seq
        state: dict[str, Any] = json.loads(data)
        return state

    def taken_by_workers(self) -> bool:
        """True when workers started from the latest publication (the parent's is stale)."""
        seq = self._seq.value
        return seq > 0 and self._taken.value == seq
