"""A growable signed int column, as narrow as its values allow (a ``ManifestTable`` part).

``IntColumn`` is what the in-memory table builder appends to; ``is_mapped`` tells a
column that views a memory-mapped file (``table_file``) from one the process holds.
"""

from __future__ import annotations

import array
import mmap

import numpy as np

__all__ = ["DTYPES", "IntColumn", "is_mapped"]

DTYPES: dict[str, type[np.generic]] = {"h": np.int16, "i": np.int32, "q": np.int64}
#: The next wider array type once a value does not fit (int16 -> int32 -> int64).
_WIDER = {"h": "i", "i": "q"}


class IntColumn:
    """A growable signed int column, as narrow as its values allow.

    It allocates nothing while every row holds ``fill`` (an all -1 column then costs no
    memory) and widens int16 -> int32 -> int64 the first time a value does not fit, so
    the dtype depends only on the values, whichever builder path appended them. Offsets
    and lengths of a 1M-row manifest fit int32: half the bytes of int64 columns.
    """

    __slots__ = ("buf", "code", "fill", "n")

    def __init__(self, code: str, fill: int) -> None:
        self.code = code
        self.fill = fill
        self.buf: array.array[int] | None = None
        self.n = 0

    def _fit(self, lo: int, hi: int) -> None:
        """Widen (and allocate) so ``lo..hi`` fits; the rows so far keep their values."""
        if self.buf is None and lo == hi == self.fill:
            return
        code = self.code
        bits = 8 * np.dtype(DTYPES[code]).itemsize - 1
        while lo < -(1 << bits) or hi >= 1 << bits:
            code = _WIDER[code]
            bits = 8 * np.dtype(DTYPES[code]).itemsize - 1
        if self.buf is None:
            self.buf = array.array(code, bytes(self.n * np.dtype(DTYPES[code]).itemsize))
            if self.n and self.fill:
                np.frombuffer(self.buf, dtype=DTYPES[code])[:] = self.fill
        elif code != self.code:
            wide = array.array(code, bytes(self.n * np.dtype(DTYPES[code]).itemsize))
            np.frombuffer(wide, dtype=DTYPES[code])[:] = np.frombuffer(self.buf, DTYPES[self.code])
            self.buf = wide
        self.code = code

    def append(self, value: int) -> None:
        """Append one value (the row-by-row builder)."""
        self._fit(value, value)
        if self.buf is not None:
            self.buf.append(value)
        self.n += 1

    def extend(self, values: np.ndarray, lo: int, hi: int) -> None:
        """Append int ``values`` whose smallest and largest are ``lo`` and ``hi``."""
        self._fit(lo, hi)
        if self.buf is not None:
            # A byte view of numpy's memory: one copy into the array, no bytes object.
            raw = np.ascontiguousarray(values, dtype=DTYPES[self.code]).view(np.uint8)
            self.buf.frombytes(raw)
        self.n += len(values)

    def column(self) -> np.ndarray:
        """A read-only numpy view of the values without copying (zero-stride when all fill)."""
        if self.buf is None:
            return np.broadcast_to(np.array(self.fill, dtype=DTYPES[self.code]), (self.n,))
        col = np.frombuffer(self.buf, dtype=DTYPES[self.code])
        col.flags.writeable = False
        return col


def is_mapped(col: np.ndarray) -> bool:
    """True when ``col`` views an ``mmap`` (through ndarray views and a memoryview)."""
    base = col.base
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    return isinstance(base, mmap.mmap)
