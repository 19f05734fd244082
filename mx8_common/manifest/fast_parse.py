"""Vectorized parsing of the canonical manifest TSV, a block of whole lines at a time.

The reference parser (``manifest_reader``) spends ~1 µs of Python per row: a
``ManifestRecord``, two ``int()``s, a dozen checks. A 1M-row manifest then takes seconds
while a plain ``bytes.split`` of it takes 0.25 s. Here one block (~256 KiB, thousands of
rows) is checked and cut into columns with a handful of numpy passes over its bytes:

* the positions of every LF, TAB and ``/`` give each row's five fields and the
  directory/tail cut of its location (the ``ManifestTable`` layout);
* numbers are gathered right-aligned into a (rows x digits) matrix and checked
  (digits only, no leading zero, <= 18 digits so int64 cannot overflow) and summed;
* directories and hints, which repeat on consecutive rows in real listings, are compared
  with the previous row in bulk, so Python touches one ``bytes`` per *run*, not per row.

``parse_block`` never raises a manifest error: it returns None when anything in the block
is not plainly valid (a bad row, a CR, invalid UTF-8, a 19-digit number...). The caller then
re-parses that one block with ``manifest_reader.parse_canonical_lines``, which raises
the reference parser's exact error (class, message, line number) or, for the rare valid
rows this path declines (huge numbers), builds them row by row. Valid blocks give the same
columns the row-by-row builder would.

``next_block_end`` is the block cut shared by ``FileBlockReader`` (files and bytes) and the
ingest adapter's ``BoundedCarryReader.read_block``: whole lines up to a byte budget, never
holding more than one partial line beyond what was read.
"""

from __future__ import annotations

import functools
import hashlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO, Protocol

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = [
    "BLOCK_BYTES",
    "BlockHasher",
    "BlockReader",
    "FileBlockReader",
    "ParsedBlock",
    "next_block_end",
    "parse_block",
]

#: Bytes of whole lines parsed per block: big enough to amortise numpy's per-call cost,
#: small enough that the block's temporaries (a few times its size) stay small. Measured on
#: the 1M-row stream benchmark: 1 MiB blocks were ~5% faster but added ~5 MiB of peak RSS.
BLOCK_BYTES = 256 * 1024

_MAX_DIGITS = 18  # 10**18 - 1 < 2**63 - 1: any 18-digit number fits the int64 columns
_POW10 = 10 ** np.arange(_MAX_DIGITS - 1, -1, -1, dtype=np.int64)
_POW10_F = _POW10.astype(np.float64)
_EXACT_FLOAT_DIGITS = 15  # 10**15 < 2**53
_LF, _TAB, _SLASH, _ZERO = 0x0A, 0x09, 0x2F, 0x30
#: Widest fixed-width window read around a field (numbers, short directories and hints).
_PAD = 64
_ROW_SEPARATORS = np.array([_TAB, _TAB, _TAB, _TAB, _LF], dtype=np.uint8)


class BlockReader(Protocol):
    """A manifest source read as the schema header line, then blocks of whole lines."""

    def readline(self, size: int = -1, /) -> bytes:
        """Only used for the schema header (line 1), before any ``read_block``."""
        ...

    def read_block(self, max_bytes: int, /) -> bytes:
        """Whole LF-ended lines, at most ``max_bytes`` of them unless the first line alone is
        longer; or, when no whole line is left, the rest without an LF: the tail of a cut
        manifest, or the first ``max_line_bytes + 1`` bytes of an over-long line (exactly
        what ``readline(max_line_bytes + 1)`` returns); ``b""`` at the end."""
        ...


def next_block_end(buf: bytes | bytearray, pos: int, max_bytes: int, cap: int) -> int | None:
    """End of the next block of ``buf[pos:]`` (see ``BlockReader.read_block``), or None when
    more data is needed. ``cap`` is ``max_line_bytes + 1``: the most one line may take."""
    avail = len(buf) - pos
    end = buf.rfind(b"\n", pos, pos + min(avail, max_bytes))
    if end >= 0:
        return end + 1
    # No whole line fits the budget: hand out the first line alone if it is complete.
    end = buf.find(b"\n", pos, pos + min(avail, cap))
    if end >= 0:
        return end + 1
    if avail >= cap:
        return pos + cap  # over-long line: the caller raises ManifestLineTooLong
    return None


class BlockHasher:
    """SHA-256 of a manifest's blocks, hashed on a helper thread while the next is parsed.

    hashlib releases the GIL on large buffers, so hashing a block beside parsing it takes
    ~15% off a large table's build; small manifests are hashed inline (no thread at all).
    At most one block is in flight, and ``with`` always stops the helper.
    """

    def __init__(self, first: bytes = b"", *, background_bytes: int = 64 * 1024) -> None:
        self._sha = hashlib.sha256(first)
        self._background_bytes = background_bytes
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future[None] | None = None

    def update(self, block: bytes) -> None:
        """Add ``block`` (blocks are hashed in call order)."""
        if self._pending is not None:
            self._pending.result()
            self._pending = None
        if len(block) < self._background_bytes:
            self._sha.update(block)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="mx8-manifest-hash")
        self._pending = self._pool.submit(self._sha.update, block)

    def hexdigest(self) -> str:
        """The digest of everything added so far."""
        if self._pending is not None:
            self._pending.result()
            self._pending = None
        return self._sha.hexdigest()

    def close(self) -> None:
        """Stop the helper thread (waits for the block in flight)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._pending = None

    def __enter__(self) -> BlockHasher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FileBlockReader:
    """``BlockReader`` over a binary file or ``BytesIO``: one ``read`` per refill, one carry."""

    def __init__(self, raw: BinaryIO, *, max_line_bytes: int, read_bytes: int = 1 << 20) -> None:
        self._raw = raw
        self._cap = max_line_bytes + 1
        self._read_bytes = read_bytes
        self._buf = b""
        self._pos = 0
        self._eof = False

    def readline(self, size: int = -1, /) -> bytes:
        if self._buf:
            raise RuntimeError("readline() is for the header only, before read_block()")
        return self._raw.readline(size)

    def read_block(self, max_bytes: int, /) -> bytes:
        while True:
            end = next_block_end(self._buf, self._pos, max_bytes, self._cap)
            if end is None:
                if not self._eof:
                    # ``read_bytes`` at a time (reading ``max_line_bytes``, 8 MiB by default,
                    # held two copies of it per refill), doubling while one long line is
                    # carried so a line of up to the cap is still read in O(its length).
                    carry = len(self._buf) - self._pos
                    data = self._raw.read(max(self._read_bytes, min(carry, self._cap)))
                    if data:
                        # Only the partial last line is carried over.
                        self._buf = self._buf[self._pos :] + data
                        self._pos = 0
                        continue
                    self._eof = True
                end = len(self._buf)
            out = self._buf[self._pos : end]
            self._pos = end
            return out


@dataclass(frozen=True, slots=True)
class ParsedBlock:
    """One valid block as ``ManifestTable`` columns (row ``i`` of the block is id
    ``first_id + i``). Directories and hints come as runs of equal consecutive values."""

    rows: int
    #: Location tails (after the last ``/``) of every row, concatenated, and their lengths.
    tails: bytes
    tail_lengths: np.ndarray
    #: Row index where each run of equal directories starts, and each run's directory
    #: (``b""`` for a location without ``/``).
    dir_heads: np.ndarray
    dirs: list[bytes]
    hint_heads: np.ndarray
    hints: list[bytes]
    #: int64 columns, -1 = empty, and each one's (smallest, largest) value.
    byte_offset: np.ndarray
    byte_length: np.ndarray
    offset_range: tuple[int, int]
    length_range: tuple[int, int]


class _Padded:
    """The block's bytes with ``_PAD`` zero bytes on both sides, so fixed-width windows
    starting up to ``_PAD`` bytes before or after any field stay inside the array."""

    __slots__ = ("_windows", "data", "words")

    def __init__(self, u: np.ndarray) -> None:
        self.data = np.zeros(len(u) + 2 * _PAD, dtype=np.uint8)
        self.data[_PAD:-_PAD] = u
        self._windows: dict[int, np.ndarray] = {}
        # The 8 bytes starting at every position as one little-endian uint64 (an unaligned,
        # overlapping view): gathering one word per row is ~3x cheaper than an 8-byte row.
        self.words = np.ndarray((len(self.data) - 7,), dtype="<u8", buffer=self.data, strides=(1,))

    def word_at(self, start: np.ndarray) -> np.ndarray:
        """The uint64 of the 8 bytes from each ``start`` (block positions), first byte lowest."""
        return self.words[start + _PAD]

    def rows(self, start: np.ndarray, width: int) -> np.ndarray:
        """A (rows x width) uint8 copy of the bytes from each ``start`` (block positions)."""
        view = self._windows.get(width)
        if view is None:
            view = self._windows[width] = sliding_window_view(self.data, width)
        return view[start + _PAD]


@functools.cache
def _digit_masks(width: int) -> np.ndarray:
    """Row ``k``: 0xFF on the last ``k`` of ``width`` bytes, 0 elsewhere (right-aligned)."""
    k = np.arange(width + 1)
    return (np.arange(width)[None, :] >= (width - k)[:, None]).astype(np.uint8) * np.uint8(255)


def _numbers(
    u: np.ndarray, padded: _Padded, start: np.ndarray, end: np.ndarray
) -> np.ndarray | None:
    """Canonical decimal fields ``u[start:end]`` as int64 (-1 when empty), or None when one
    is not digits-only, has a leading zero or is longer than 18 digits."""
    length = end - start
    width = int(length.max())
    if width == 0:
        return np.full(len(start), -1, dtype=np.int64)
    if width <= 8:
        return _numbers_swar(padded, end, length)
    if width > _MAX_DIGITS:
        return None  # the row-by-row path parses (or rejects) such numbers
    if bool(((length > 1) & (u[start] == _ZERO)).any()):
        return None
    # Right-align every field in a (rows x width) matrix, bytes left of a field zeroed;
    # uint8 wraps below "0", so one "> 9" finds every non-digit.
    digits = padded.rows(end - width, width) - np.uint8(_ZERO)
    digits &= _digit_masks(width)[length]
    if bool((digits > 9).any()):
        return None
    if width <= _EXACT_FLOAT_DIGITS:
        # A BLAS dot is exact here: every partial sum is an integer below 2**53.
        values = (digits.astype(np.float64) @ _POW10_F[_MAX_DIGITS - width :]).astype(np.int64)
    else:
        values = digits.astype(np.int64) @ _POW10[_MAX_DIGITS - width :]
    values[length == 0] = -1
    return values


def _swar_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per field length k (0..8): the mask keeping a window's high k bytes (the field, as
    the window ends where the field ends, little-endian), ASCII "0"s for the other bytes,
    and the smallest canonical k-digit number (a smaller value means a leading zero)."""
    keep = [((1 << 64) - 1) ^ ((1 << (8 * (8 - k))) - 1) for k in range(9)]
    pad = [0x3030303030303030 & ~m & ((1 << 64) - 1) for m in keep]
    least = [0, 0] + [10 ** (k - 1) for k in range(2, 9)]
    return tuple(np.array(t, dtype=np.uint64) for t in (keep, pad, least))  # type: ignore[return-value]


_KEEP, _ZERO_PAD, _LEAST = _swar_tables()
_HI_NIBBLES = np.uint64(0xF0F0F0F0F0F0F0F0)
_ASCII_ZEROS = np.uint64(0x3030303030303030)


def _numbers_swar(padded: _Padded, end: np.ndarray, length: np.ndarray) -> np.ndarray | None:
    """``_numbers`` for fields of at most 8 bytes, 8 digits per uint64 (SWAR).

    Each field is one word right-aligned at its end, the bytes before it set to "0"; a
    byte is a digit iff its high nibble is 3 both before and after adding 6 (no carry can
    cross bytes once the first holds). Three multiply-shift steps then combine digit
    pairs, quads and octets into the value; a leading zero shows as a value below 10**(k-1).
    """
    w = padded.word_at(end - 8)
    w &= _KEEP[length]
    w |= _ZERO_PAD[length]
    ok = (w & _HI_NIBBLES) == _ASCII_ZEROS
    ok &= ((w + np.uint64(0x0606060606060606)) & _HI_NIBBLES) == _ASCII_ZEROS
    if not bool(ok.all()):
        return None
    w &= np.uint64(0x0F0F0F0F0F0F0F0F)
    w = (w * np.uint64(10) + (w >> np.uint64(8))) & np.uint64(0x00FF00FF00FF00FF)
    w = (w * np.uint64(100) + (w >> np.uint64(16))) & np.uint64(0x0000FFFF0000FFFF)
    w = (w * np.uint64(10000) + (w >> np.uint64(32))) & np.uint64(0xFFFFFFFF)
    if bool((w < _LEAST[length]).any()):
        return None
    values = w.view(np.int64)
    values[length == 0] = -1
    return values


def _byte_masks() -> np.ndarray:
    """Entry k (0..8): a uint64 keeping the first k bytes of a little-endian word."""
    return np.array([(1 << (8 * k)) - 1 for k in range(9)], dtype=np.uint64)


_FIRST_BYTES = _byte_masks()


def _run_heads(u: np.ndarray, padded: _Padded, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Rows whose field ``u[start:end]`` differs from the previous row's (row 0 always)."""
    length = end - start
    same = np.zeros(len(start), dtype=bool)
    np.equal(length[1:], length[:-1], out=same[1:])
    width = int(length.max())
    if width == 0:
        return np.flatnonzero(~same)
    if width <= _PAD:
        # Each field left-aligned in whole uint64 words; a row is compared with the one
        # before it word column by word column (XOR, then OR into one word per row), bytes
        # past the field masked off. Rows of unequal length are heads already.
        nwords = -(-width // 8)
        words = padded.rows(start, 8 * nwords).view(np.uint64)
        shortest = int(length.min())
        diff = np.zeros(len(start) - 1, dtype=np.uint64)
        for j in range(nwords):
            d = words[1:, j] ^ words[:-1, j]
            if 8 * (j + 1) > shortest:  # some field ends before this word does
                if shortest == width:
                    d &= _FIRST_BYTES[width - 8 * j]
                else:
                    d &= _FIRST_BYTES[np.clip(length[1:] - 8 * j, 0, 8)]
            diff |= d
        same[1:] &= diff == 0
        return np.flatnonzero(~same)
    # Long fields: compare the candidates' bytes with the previous row's in one gather.
    cand = np.flatnonzero(same)
    lens = length[cand]
    total = int(lens.sum())
    if total:
        first = np.cumsum(lens) - lens
        ramp = np.arange(total) - np.repeat(first, lens)
        here = u[np.repeat(start[cand], lens) + ramp]
        prev = u[np.repeat(start[cand - 1], lens) + ramp]
        owner = np.repeat(np.arange(len(cand)), lens)
        same[cand] = np.bincount(owner[here != prev], minlength=len(cand)) == 0
    return np.flatnonzero(~same)


def _tails(u: np.ndarray, cut: np.ndarray, loc_end: np.ndarray) -> bytes:
    """The bytes of every row's ``[cut, loc_end)``, concatenated in row order."""
    n = len(cut)
    # Alternating runs (gap, tail, gap, tail, ..., gap) expanded into one byte mask.
    runs = np.empty(2 * n + 1, dtype=np.int64)
    runs[0] = cut[0]
    runs[2 : 2 * n : 2] = cut[1:] - loc_end[:-1]
    runs[1 : 2 * n : 2] = loc_end - cut
    runs[2 * n] = len(u) - loc_end[-1]
    in_tail = np.zeros(2 * n + 1, dtype=bool)
    in_tail[1::2] = True
    return u[np.repeat(in_tail, runs)].tobytes()


def _slices(block: bytes, start: np.ndarray, end: np.ndarray) -> list[bytes]:
    return [block[a:b] for a, b in zip(start.tolist(), end.tolist(), strict=True)]


def parse_block(block: bytes, *, first_id: int, max_line_bytes: int) -> ParsedBlock | None:
    """Columns of ``block`` (whole LF-ended lines, ids from ``first_id``), or None when the
    block is not plainly valid and must be re-parsed row by row for the exact error."""
    if not block or block[-1] != _LF or b"\r" in block:
        return None
    if not block.isascii():
        try:
            # Tabs and LFs are ASCII, so a valid block means every field is valid UTF-8.
            block.decode("utf-8")
        except UnicodeDecodeError:
            return None
    u = np.frombuffer(block, dtype=np.uint8)
    # TABs and LFs in one scan: a valid row has exactly TAB TAB TAB TAB LF, in that order.
    seps = np.flatnonzero(u <= _LF)
    kinds = u[seps]
    if bool((kinds < _TAB).any()):
        # Control bytes 0x00-0x08 are legal in a location or hint: not separators.
        keep = kinds >= _TAB
        seps, kinds = seps[keep], kinds[keep]
    if len(seps) % 5 or not bool((kinds.reshape(-1, 5) == _ROW_SEPARATORS).all()):
        return None
    grid = seps.reshape(-1, 5)
    n = len(grid)
    nl = grid[:, 4]
    t = grid[:, :4]
    line_start = np.empty(n, dtype=np.int64)
    line_start[0] = 0
    line_start[1:] = nl[:-1] + 1
    if int((nl - line_start).max()) > max_line_bytes:
        return None
    if bool((t[:, 0] == line_start).any()):
        return None  # an empty sample_id
    loc_start, loc_end = t[:, 0] + 1, t[:, 1]
    if bool((loc_end == loc_start).any()):
        return None  # an empty location
    padded = _Padded(u)
    ids = _numbers(u, padded, line_start, t[:, 0])
    if ids is None or not np.array_equal(ids, np.arange(first_id, first_id + n)):
        return None
    byte_length = _numbers(u, padded, t[:, 2] + 1, t[:, 3])
    byte_offset = _numbers(u, padded, t[:, 1] + 1, t[:, 2])
    if byte_length is None or byte_offset is None:
        return None
    offset_range = (int(byte_offset.min()), int(byte_offset.max()))
    length_range = (int(byte_length.min()), int(byte_length.max()))
    if length_range[0] <= 0 and bool((byte_length == 0).any()):
        return None  # a zero length
    if offset_range[1] >= 0 and bool(((byte_offset >= 0) & (byte_length < 0)).any()):
        return None  # an offset without a length
    # Directory / tail cut: the last "/" inside the location, if any.
    slashes = np.flatnonzero(u == _SLASH)
    cut = loc_start
    if len(slashes):
        k = np.searchsorted(slashes, loc_end) - 1
        last = slashes[np.maximum(k, 0)]
        cut = np.where((k >= 0) & (last >= loc_start), last + 1, loc_start)
    dir_heads = _run_heads(u, padded, loc_start, cut)
    hint_start = t[:, 3] + 1
    if bool((nl == hint_start).all()):
        hint_heads, hints = np.zeros(1, dtype=np.int64), [b""]
    else:
        hint_heads = _run_heads(u, padded, hint_start, nl)
        hints = _slices(block, hint_start[hint_heads], nl[hint_heads])
    return ParsedBlock(
        rows=n,
        tails=_tails(u, cut, loc_end),
        tail_lengths=loc_end - cut,
        dir_heads=dir_heads,
        dirs=_slices(block, loc_start[dir_heads], cut[dir_heads]),
        hint_heads=hint_heads,
        hints=hints,
        byte_offset=byte_offset,
        byte_length=byte_length,
        offset_range=offset_range,
        length_range=length_range,
    )
