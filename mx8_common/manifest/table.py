"""A parsed manifest held compactly in memory: columns, not one Python object per row.

A table of N samples is a handful of flat buffers:

    tails        one bytes blob of UTF-8 location tails, row i at tail_offsets[i:i+2]
    tail_offsets int[N+1] into ``tails``
    dir_id       int[N]: index of the row's directory in a small interned list, or -1
                 when the whole location is in ``tails``
    byte_offset  int[N], -1 = none      byte_length int[N], -1 = none
    label_id     int[N], -1 = none (parsed from ``mx8:vision:imagefolder;label_id=<n>``)
    hint_id      int[N] into a small interned list of distinct decode hints

Every ``int`` column is signed and as narrow as its values allow (int16, int32 or int64,
decided by the values alone): a 1M-row listing's offsets and lengths fit int32 and its
directory ids int16, which takes ~30% off the table compared with int64/int32 columns.

Why directories are interned: listings put millions of objects under a few thousand
folders (``s3://bucket/train/n01440764/``), and the folder repeats on every row; storing
it once and a 2-byte id per row roughly halves the table. Both intern tables are capped
(``MAX_INTERNED``) so a pathological dataset (every file in its own folder, a unique
hint per row) falls back to storing the full text per row instead of growing a dict of
millions of strings. A column whose every value is the same default (-1, or hint 0) is a
zero-stride numpy view and costs no memory.

Builders append into ``bytearray``/``array.array`` buffers that numpy then wraps without a
copy, so building never holds per-row Python objects and peak memory is about the final
size plus the buffers' growth slack.
"""

from __future__ import annotations

import array
import io
import mmap
import os
from collections.abc import Callable, Iterable
from typing import Any, BinaryIO, Protocol

import numpy as np

from mx8_common.errors import ManifestNonSequentialId
from mx8_common.manifest.fast_parse import (
    BLOCK_BYTES,
    BlockHasher,
    BlockReader,
    FileBlockReader,
    ParsedBlock,
    parse_block,
)
from mx8_common.manifest.format import ManifestRecord
from mx8_common.manifest.int_column import IntColumn, is_mapped
from mx8_common.manifest.labels import imagefolder_hint, parse_label_id
from mx8_common.manifest.reader import (
    DEFAULT_MAX_LINE_BYTES,
    check_hash,
    parse_canonical_lines,
    raise_unterminated_line,
    read_schema_header,
)

# parse_label_id is re-exported from mx8_common.manifest.labels, where the hint format lives.
__all__ = [
    "MAX_INTERNED",
    "ManifestTable",
    "MemoryStorage",
    "TableStorage",
    "build_table",
    "parse_label_id",
]

#: Most distinct directories (and, separately, decode hints) a table interns.
MAX_INTERNED = 1 << 16

_INT32_MAX = (1 << 31) - 1


def _label_of(hint: str) -> int:
    """The int32 label id of an imagefolder hint, or -1 (none, or too big for the column)."""
    label = parse_label_id(hint)
    return label if label is not None and label <= _INT32_MAX else -1


def _as_column(buf: array.array[int]) -> np.ndarray:
    """A read-only int64 numpy view of the ``"q"`` array ``buf`` without copying."""
    col = np.frombuffer(buf, dtype=np.int64)
    col.flags.writeable = False
    return col


def _narrowest(values: np.ndarray) -> np.ndarray:
    """``values`` as int16 when they fit, else int32 (small per-intern-table arrays)."""
    if len(values) == 0 or (int(values.min()) >= -(1 << 15) and int(values.max()) < 1 << 15):
        return values.astype(np.int16)
    return values.astype(np.int32)


def _expand_runs(
    heads: np.ndarray, ids: dict[bytes, int], values: list[bytes], rows: int, column: IntColumn
) -> None:
    """Append one id per row to ``column``, from runs starting at ``heads`` (``b""`` = -1)."""
    run_ids = np.fromiter((ids.get(v, -1) for v in values), dtype=np.int32, count=len(values))
    lo, hi = int(run_ids.min()), int(run_ids.max())
    if column.buf is None and lo == hi == column.fill:
        column.n += rows  # nothing to write: the column is still all ``fill``
        return
    column.extend(np.repeat(run_ids, np.diff(heads, append=rows)), lo, hi)


class TableStorage(Protocol):
    """Where a table builder keeps its columns while it parses, and how it seals them."""

    def int_column(self, name: str, code: str, fill: int) -> Any: ...
    def blob(self, name: str) -> Any: ...
    def map_column(
        self, name: str, ids: np.ndarray, fn: Callable[[np.ndarray], np.ndarray], dtype: Any
    ) -> np.ndarray: ...
    def seal(self, **fields: Any) -> ManifestTable: ...
    def abort(self) -> None: ...


class MemoryStorage:
    """Where a builder keeps its columns: growable in-memory buffers (the default).

    ``mx8_common.manifest.table_file.FileStorage`` is the other one: the same columns
    appended to files and memory-mapped, for manifests too big to hold in RAM.
    """

    def int_column(self, name: str, code: str, fill: int) -> Any:
        """A growable int column named ``name`` (``code``: its narrowest array type)."""
        return IntColumn(code, fill)

    def blob(self, name: str) -> Any:
        """A growable bytes blob (``+=`` and ``len``)."""
        return bytearray()

    def map_column(
        self, name: str, ids: np.ndarray, fn: Callable[[np.ndarray], np.ndarray], dtype: Any
    ) -> np.ndarray:
        """``fn(ids)`` as a read-only column (the file storage maps ``ids`` in chunks)."""
        col = np.asarray(fn(ids), dtype=dtype)
        col.flags.writeable = False
        return col

    def seal(self, **fields: Any) -> ManifestTable:
        """The finished table of ``fields`` (``ManifestTable``'s keyword arguments)."""
        return ManifestTable(**fields)

    def abort(self) -> None:
        """Drop a build that failed (nothing to release in memory)."""


class _Builder:
    """Growable buffers behind ``ManifestTable.from_records``."""

    def __init__(self, storage: TableStorage | None = None) -> None:
        self.storage = storage if storage is not None else MemoryStorage()
        self.tails = self.storage.blob("tails")
        self.tail_offsets = self.storage.int_column("tail_offsets", "i", fill=0)
        self.tail_offsets.append(0)
        self.dir_ids = self.storage.int_column("dir_id", "h", fill=-1)
        self.dirs: dict[bytes, int] = {}
        # Most manifests have one hint ("" or none at all): no column until a second shows.
        self.hint_ids = self.storage.int_column("hint_id", "h", fill=0)
        self.hints: dict[bytes, int] = {b"": 0}
        # Hints past the intern cap live here, addressed by hint_id = MAX_INTERNED + k.
        self.spill_hints = bytearray()
        self.spill_offsets = array.array("q", [0])
        self.byte_offset = self.storage.int_column("byte_offset", "i", fill=-1)
        self.byte_length = self.storage.int_column("byte_length", "i", fill=-1)
        self.n = 0

    def add(self, rec: ManifestRecord) -> None:
        if rec.sample_id != self.n:
            raise ManifestNonSequentialId(
                f"record {self.n} has sample_id {rec.sample_id}; a manifest table needs "
                "sample ids exactly 0..N-1 in order",
                line_no=self.n + 2,
            )
        # Keys are UTF-8 bytes, as the block parser sees them; "/" is ASCII, so cutting
        # the bytes at the last "/" cuts the text at the same place.
        loc = rec.location.encode()
        cut = loc.rfind(b"/") + 1
        dir_id = self.dirs.get(loc[:cut], -1) if cut else -1
        if dir_id < 0 and cut and len(self.dirs) < MAX_INTERNED:
            dir_id = self.dirs[loc[:cut]] = len(self.dirs)
        self.tails += loc[cut:] if dir_id >= 0 else loc
        self.tail_offsets.append(len(self.tails))
        self.dir_ids.append(dir_id)
        hint = rec.decode_hint.encode()
        hint_id = self.hints.get(hint, -1)
        if hint_id < 0:
            if len(self.hints) < MAX_INTERNED:
                hint_id = self.hints[hint] = len(self.hints)
            else:
                hint_id = MAX_INTERNED + len(self.spill_offsets) - 1
                self.spill_hints += hint
                self.spill_offsets.append(len(self.spill_hints))
        self.hint_ids.append(hint_id)
        self.byte_offset.append(-1 if rec.byte_offset is None else rec.byte_offset)
        self.byte_length.append(-1 if rec.byte_length is None else rec.byte_length)
        self.n += 1

    def add_block(self, block: ParsedBlock) -> bool:
        """Append a parsed block's rows; False (nothing changed) when they would push a
        directory or hint past the intern cap, so the caller adds them row by row instead."""
        new_dirs = [d for d in dict.fromkeys(block.dirs) if d and d not in self.dirs]
        new_hints = [h for h in dict.fromkeys(block.hints) if h not in self.hints]
        if (
            len(self.dirs) + len(new_dirs) > MAX_INTERNED
            or len(self.hints) + len(new_hints) > MAX_INTERNED
        ):
            return False
        for d in new_dirs:
            self.dirs[d] = len(self.dirs)
        for h in new_hints:
            self.hints[h] = len(self.hints)
        rows = block.rows
        base = len(self.tails)
        self.tails += block.tails
        ends = np.cumsum(block.tail_lengths)
        ends += base
        # Offsets only grow: the first and the last are the block's bounds.
        self.tail_offsets.extend(ends, int(ends[0]), int(ends[-1]))
        _expand_runs(block.dir_heads, self.dirs, block.dirs, rows, self.dir_ids)
        _expand_runs(block.hint_heads, self.hints, block.hints, rows, self.hint_ids)
        self.byte_offset.extend(block.byte_offset, *block.offset_range)
        self.byte_length.extend(block.byte_length, *block.length_range)
        self.n += rows
        return True

    def finish(self, manifest_hash: str) -> ManifestTable:
        n = self.n
        hints = [""] * len(self.hints)
        for raw, i in self.hints.items():
            hints[i] = raw.decode()
        dirs = [""] * len(self.dirs)
        for raw, i in self.dirs.items():
            dirs[i] = raw.decode()
        hint_ids = self.hint_ids.column()
        label_of_hint = np.array([_label_of(h) for h in hints], dtype=np.int32)
        has_labels = bool((label_of_hint >= 0).any())
        spilled = len(self.spill_offsets) > 1
        if spilled:
            # Rare path: some hints were not interned; parse those row by row.
            spill = bytes(self.spill_hints)
            spill_labels = np.array(
                [
                    _label_of(spill[a:b].decode())
                    for a, b in zip(self.spill_offsets[:-1], self.spill_offsets[1:], strict=True)
                ],
                dtype=np.int32,
            )
            has_labels = has_labels or bool((spill_labels >= 0).any())
            label_of_hint = np.concatenate([label_of_hint, spill_labels])
        if has_labels:
            # One label per hint; the narrowest dtype that holds them (int16 for < 32768
            # classes). Spilled hint ids are MAX_INTERNED + k, so index past the interned.
            label_of_hint = _narrowest(label_of_hint)
            shift = MAX_INTERNED - len(self.hints)

            def labels(ids: np.ndarray) -> np.ndarray:
                if spilled:
                    ids = ids.astype(np.int64)
                    ids[ids >= MAX_INTERNED] -= shift
                return label_of_hint[ids]

            label_id = self.storage.map_column("label_id", hint_ids, labels, label_of_hint.dtype)
        else:
            label_id = np.broadcast_to(np.array(-1, dtype=np.int16), (n,))
        if not spilled and all(
            h == "" or ((lab := _label_of(h)) >= 0 and h == imagefolder_hint(lab)) for h in hints
        ):
            # Every hint is "" or the label hint of its label_id: the hint column is
            # redundant, so decode_hint(i) is rebuilt from label_id instead.
            hint_ids = None
        return self.storage.seal(
            manifest_hash=manifest_hash,
            tails=self.tails,
            tail_offsets=self.tail_offsets.column(),
            dir_id=self.dir_ids.column(),
            dirs=tuple(dirs),
            byte_offset=self.byte_offset.column(),
            byte_length=self.byte_length.column(),
            label_id=label_id,
            hint_id=hint_ids,
            hints=tuple(hints),
            spill_hints=bytes(self.spill_hints),
            spill_offsets=_as_column(self.spill_offsets),
        )


class ManifestTable:
    """A whole manifest as compact columns; rows are read back on demand.

    Public columns (read-only numpy arrays of signed ints, one entry per sample, each as
    narrow as its values allow): ``byte_offset``, ``byte_length`` and ``label_id`` (-1 =
    none). Convert with ``.tolist()`` or ``.astype(np.int64)`` before doing arithmetic.
    """

    __slots__ = (
        "_dir_id",
        "_dirs",
        "_hint_id",
        "_hints",
        "_reopen",
        "_spill_hints",
        "_spill_offsets",
        "_tail_offsets",
        "_tails",
        "byte_length",
        "byte_offset",
        "label_id",
        "manifest_hash",
        "source",
    )

    def __init__(
        self,
        *,
        manifest_hash: str,
        tails: bytes | bytearray | mmap.mmap,
        tail_offsets: np.ndarray,
        dir_id: np.ndarray,
        dirs: tuple[str, ...],
        byte_offset: np.ndarray,
        byte_length: np.ndarray,
        label_id: np.ndarray,
        hint_id: np.ndarray | None,
        hints: tuple[str, ...],
        spill_hints: bytes = b"",
        spill_offsets: np.ndarray | None = None,
        source: os.PathLike[str] | None = None,
        reopen: Callable[[], ManifestTable] | None = None,
    ) -> None:
        self.manifest_hash = manifest_hash
        #: The sealed table directory a file-backed table maps (None: in memory).
        self.source = source
        # How a file-backed table is mapped again after pickling (a picklable partial).
        self._reopen = reopen
        self._tails = tails
        self._tail_offsets = tail_offsets
        self._dir_id = dir_id
        self._dirs = dirs
        self.byte_offset = byte_offset
        self.byte_length = byte_length
        self.label_id = label_id
        self._hint_id = hint_id
        self._hints = hints
        self._spill_hints = spill_hints
        self._spill_offsets = (
            np.zeros(1, dtype=np.int64) if spill_offsets is None else spill_offsets
        )

    # -- builders -----------------------------------------------------------------------

    @classmethod
    def from_records(
        cls, records: Iterable[ManifestRecord], *, manifest_hash: str
    ) -> ManifestTable:
        """Build from records with ids 0..N-1 in order, consuming them one at a time."""
        builder = _Builder()
        for rec in records:
            builder.add(rec)
        return builder.finish(manifest_hash)

    @classmethod
    def from_path(
        cls,
        path: str | os.PathLike[str],
        *,
        expected_hash: str | None = None,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    ) -> ManifestTable:
        """Parse a canonical manifest file; with ``expected_hash`` its bytes must match."""
        with open(path, "rb", buffering=1 << 20) as f:
            return cls._from_reader(f, expected_hash=expected_hash, max_line_bytes=max_line_bytes)

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        *,
        expected_hash: str | None = None,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    ) -> ManifestTable:
        """Parse canonical manifest bytes; with ``expected_hash`` they must match."""
        return cls._from_reader(
            io.BytesIO(data), expected_hash=expected_hash, max_line_bytes=max_line_bytes
        )

    @classmethod
    def _from_reader(
        cls, reader: BinaryIO, *, expected_hash: str | None, max_line_bytes: int
    ) -> ManifestTable:
        return cls.from_block_reader(
            FileBlockReader(reader, max_line_bytes=max_line_bytes),
            expected_hash=expected_hash,
            max_line_bytes=max_line_bytes,
        )

    @classmethod
    def from_block_reader(
        cls,
        reader: BlockReader,
        *,
        expected_hash: str | None = None,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        block_bytes: int = BLOCK_BYTES,
    ) -> ManifestTable:
        """Parse a canonical manifest from ``reader`` a block of whole lines at a time.

        The result, and every error (class, message, line number), is exactly that of
        ``from_records(parse_canonical_manifest_tsv_reader(...))``: a block the vectorized
        parser declines is re-parsed row by row. Without ``expected_hash`` the table's hash
        is that of the bytes read.
        """
        return build_table(
            reader,
            expected_hash=expected_hash,
            max_line_bytes=max_line_bytes,
            block_bytes=block_bytes,
        )

    # -- rows ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._dir_id)

    @property
    def has_labels(self) -> bool:
        """True when at least one sample carries an imagefolder label id."""
        return len(self) > 0 and bool(self.label_id.max() >= 0)

    def location(self, i: int) -> str:
        """The location (``s3://bucket/key`` or a path) of sample ``i``."""
        a, b = int(self._tail_offsets[i]), int(self._tail_offsets[i + 1])
        tail = self._tails[a:b].decode()
        d = int(self._dir_id[i])
        return tail if d < 0 else self._dirs[d] + tail

    def decode_hint(self, i: int) -> str:
        """The decode hint of sample ``i`` ("" when none)."""
        if self._hint_id is None:
            label = int(self.label_id[i])
            return "" if label < 0 else imagefolder_hint(label)
        h = int(self._hint_id[i])
        if h < MAX_INTERNED:
            return self._hints[h]
        k = h - MAX_INTERNED
        a, b = int(self._spill_offsets[k]), int(self._spill_offsets[k + 1])
        return self._spill_hints[a:b].decode()

    def record(self, i: int) -> ManifestRecord:
        """Sample ``i`` as a ``ManifestRecord`` (equal to the parsed row)."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"sample {i} is outside this manifest of {len(self)} samples")
        i %= len(self)
        off = int(self.byte_offset[i])
        length = int(self.byte_length[i])
        return ManifestRecord(
            i,
            self.location(i),
            None if off < 0 else off,
            None if length < 0 else length,
            self.decode_hint(i),
        )

    @property
    def nbytes(self) -> int:
        """Bytes held by the columns and intern tables (what the table costs in RAM)."""
        arrays: tuple[np.ndarray | None, ...] = (
            self._tail_offsets,
            self._dir_id,
            self.byte_offset,
            self.byte_length,
            self.label_id,
            self._hint_id,
            self._spill_offsets,
        )
        # A zero-stride (broadcast) column owns no memory, nor does a memory-mapped one.
        total = sum(
            a.nbytes for a in arrays if a is not None and a.strides != (0,) and not is_mapped(a)
        )
        if not isinstance(self._tails, mmap.mmap):
            total += len(self._tails)
        total += len(self._spill_hints)
        total += sum(len(s) + 64 for s in self._dirs) + sum(len(s) + 64 for s in self._hints)
        return total

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        if self._reopen is not None:
            # A file-backed table travels as its sealed directory and is mapped again.
            return self._reopen, ()
        # Loaders pickle the table into worker processes: keep all -1 columns zero-cost
        # and every column read-only on the other side.
        state = {
            "manifest_hash": self.manifest_hash,
            "tails": bytes(self._tails),
            "tail_offsets": _pack(self._tail_offsets),
            "dir_id": _pack(self._dir_id),
            "dirs": self._dirs,
            "byte_offset": _pack(self.byte_offset),
            "byte_length": _pack(self.byte_length),
            "label_id": _pack(self.label_id),
            "hint_id": None if self._hint_id is None else _pack(self._hint_id),
            "hints": self._hints,
            "spill_hints": self._spill_hints,
            "spill_offsets": _pack(self._spill_offsets),
        }
        return _restore, (state,)

    def __repr__(self) -> str:
        return (
            f"ManifestTable(samples={len(self)}, manifest_hash={self.manifest_hash[:12]}..., "
            f"nbytes={self.nbytes}{', file-backed' if self.source is not None else ''})"
        )


def build_table(
    reader: BlockReader,
    *,
    storage: TableStorage | None = None,
    expected_hash: str | None = None,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    block_bytes: int = BLOCK_BYTES,
) -> ManifestTable:
    """``ManifestTable.from_block_reader`` into ``storage`` (default: memory).

    The table is sealed only once the hash matched; any error aborts the storage first
    (a file-backed build then leaves nothing usable behind).
    """
    builder = _Builder(storage)
    try:
        with BlockHasher(read_schema_header(reader)) as sha:
            line_no = 1  # lines consumed so far
            while block := reader.read_block(block_bytes):
                if block[-1] != 0x0A:
                    raise_unterminated_line(block, line_no + 1, max_line_bytes)
                sha.update(block)
                parsed = parse_block(block, first_id=builder.n, max_line_bytes=max_line_bytes)
                if parsed is None or not builder.add_block(parsed):
                    # The exact error of the bad row, or (huge numbers, intern cap) the rows.
                    for rec in parse_canonical_lines(
                        block,
                        line_no=line_no + 1,
                        first_id=builder.n,
                        max_line_bytes=max_line_bytes,
                    ):
                        builder.add(rec)
                line_no += parsed.rows if parsed is not None else block.count(b"\n")
            digest = sha.hexdigest()
        check_hash(digest, expected_hash)
        return builder.finish(digest)
    except BaseException:
        builder.storage.abort()
        raise


def _pack(col: np.ndarray) -> tuple[str, Any, int, int] | np.ndarray:
    if col.ndim == 1 and col.strides == (0,):
        fill = int(col[0]) if len(col) else -1
        return ("fill", col.dtype.str, len(col), fill)
    return col


def _unpack(packed: tuple[str, Any, int, int] | np.ndarray) -> np.ndarray:
    if isinstance(packed, tuple):
        _, dtype, n, fill = packed
        return np.broadcast_to(np.array(fill, dtype=dtype), (n,))
    packed.flags.writeable = False
    return packed


def _restore(state: dict[str, Any]) -> ManifestTable:
    for name in (
        "tail_offsets",
        "dir_id",
        "byte_offset",
        "byte_length",
        "label_id",
        "spill_offsets",
    ):
        state[name] = _unpack(state[name])
    if state["hint_id"] is not None:
        state["hint_id"] = _unpack(state["hint_id"])
    return ManifestTable(**state)
