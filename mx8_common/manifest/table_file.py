"""A ``ManifestTable`` whose columns live in local files, memory-mapped for lookups.

A billion-row manifest is ~25 GiB as an in-memory table: too much to hold on every host.
``build_file_table`` parses the same hash-checked stream as ``ManifestTable``'s builders
but appends each column to a file as blocks are parsed, then maps the files read-only,
so the process's own memory stays about one parsed block whatever the manifest's size
(the mapped pages belong to the page cache, which the kernel reclaims under pressure).
Lookups go through the same ``ManifestTable`` methods, so callers cannot tell the two apart.

Layout, under ``root``::

    <root>/<manifest_hash>/             one sealed table (64 lowercase hex, validated)
        meta.json                       hash, rows, intern tables, each column's file or fill
        <column>.bin                    raw little-endian ints of fixed width
        tails.bin, spill_hints.bin      the bytes blobs
    <root>/.<manifest_hash>.<pid>.<rand>.building/   a build in progress (removed on any
                                    error; a dead process's is removed by the next build)

Fail closed: a build writes into its ``.building`` directory and is renamed to
``<manifest_hash>`` only after the stream's hash matched and every file was flushed; a
truncated or mismatched stream removes the directory, so no table file of it is ever
used. An existing table of the same hash is replaced by rename (a process still mapping
the old files keeps reading them: unlinked files live until unmapped).
"""

from __future__ import annotations

import array
import functools
import json
import mmap
import os
import re
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mx8_common.errors import ManifestHashMismatch, ManifestUnwritable
from mx8_common.manifest.fast_parse import BLOCK_BYTES, BlockReader
from mx8_common.manifest.int_column import is_mapped
from mx8_common.manifest.reader import DEFAULT_MAX_LINE_BYTES
from mx8_common.manifest.table import ManifestTable, build_table

__all__ = ["FileStorage", "build_file_table", "is_mapped", "open_table_dir", "table_dir_name"]

_HASH = re.compile(r"[0-9a-f]{64}")
_META = "meta.json"
_FORMAT = 1
#: Fixed widths: a file column is never rewritten to widen it (disk is cheap, RAM is not).
_WIDTHS: dict[str, type[np.generic]] = {
    "tail_offsets": np.int64,
    "dir_id": np.int32,
    "hint_id": np.int64,
    "byte_offset": np.int64,
    "byte_length": np.int64,
    "label_id": np.int32,
}
_ARRAY_CODES = {np.int32: "i", np.int64: "q"}
_FLUSH_VALUES = 1 << 16
_MAP_CHUNK = 1 << 20


def table_dir_name(manifest_hash: str) -> str:
    """The directory name of ``manifest_hash``'s table; refuses anything but 64 hex digits."""
    if not isinstance(manifest_hash, str) or not _HASH.fullmatch(manifest_hash):
        raise ManifestHashMismatch(
            f"manifest hash {manifest_hash!r} is not 64 lowercase hex digits; refusing to "
            "name a table file after it: the coordinator must announce a sha256 hex digest"
        )
    return manifest_hash


class _FileIntColumn:
    """An int column appended to a file; nothing is written while every row is ``fill``."""

    __slots__ = ("_file", "_pending", "buf", "dtype", "fill", "n", "path")

    def __init__(self, path: Path, dtype: type[np.generic], fill: int) -> None:
        self.path = path
        self.dtype = dtype
        self.fill = fill
        self.n = 0
        # ``buf`` is None until a value other than ``fill`` shows (the builder checks it).
        self.buf: Any = None
        self._file: Any = None
        self._pending = array.array(_ARRAY_CODES[dtype])

    def _open(self) -> None:
        self._file = open(self.path, "wb", buffering=1 << 20)  # noqa: SIM115 - closed in column()
        self.buf = self._file
        fills = np.full(min(self.n, _MAP_CHUNK), self.fill, dtype=self.dtype)
        left = self.n
        while left:
            step = min(left, len(fills))
            self._file.write(fills[:step].tobytes())
            left -= step

    def _flush(self) -> None:
        if self._pending:
            self._file.write(self._pending.tobytes())
            del self._pending[:]

    def append(self, value: int) -> None:
        if self.buf is None:
            if value == self.fill:
                self.n += 1
                return
            self._open()
        self._pending.append(value)
        self.n += 1
        if len(self._pending) >= _FLUSH_VALUES:
            self._flush()

    def extend(self, values: np.ndarray, lo: int, hi: int) -> None:
        if self.buf is None:
            if lo == hi == self.fill:
                self.n += len(values)
                return
            self._open()
        info = np.iinfo(self.dtype)
        if lo < info.min or hi > info.max:
            raise OverflowError(f"value {lo}..{hi} does not fit a {self.dtype.__name__} column")
        self._flush()
        self._file.write(np.ascontiguousarray(values, dtype=self.dtype).tobytes())
        self.n += len(values)

    def column(self) -> np.ndarray:
        if self.buf is None:
            return np.broadcast_to(np.array(self.fill, dtype=self.dtype), (self.n,))
        self._flush()
        self.close()
        return _map_ints(self.path, self.dtype, self.n)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class _FileBlob:
    """A bytes blob appended to a file (``+=`` and ``len``, as the builder uses a bytearray)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: Any = open(path, "wb", buffering=1 << 20)  # noqa: SIM115 - closed in close()
        self._len = 0

    def __iadd__(self, data: bytes) -> _FileBlob:
        self._file.write(data)
        self._len += len(data)
        return self

    def __len__(self) -> int:
        return self._len

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _map_ints(path: Path, dtype: Any, n: int) -> np.ndarray:
    """``n`` ints of ``path``, mapped read-only. A plain ndarray over an ``mmap`` (not an
    ``np.memmap``, whose Python-level ``__getitem__`` would slow every lookup)."""
    if n == 0:
        return np.empty(0, dtype=dtype)
    mapped = _map_bytes(path)
    return np.frombuffer(mapped, dtype=dtype, count=n)


def _map_bytes(path: Path) -> bytes | mmap.mmap:
    """The file's bytes, memory-mapped (slicing an ``mmap`` gives ``bytes``, as the table needs)."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return b""
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


class FileStorage:
    """The builder storage of a file-backed table (see ``MemoryStorage`` in ``table``)."""

    def __init__(self, root: Path, manifest_hash: str) -> None:
        self.root = Path(root)
        self.final = self.root / table_dir_name(manifest_hash)
        self.root.mkdir(parents=True, exist_ok=True)
        _remove_orphans(self.root)
        self.dir = self.root / f".{manifest_hash}.{os.getpid()}.{secrets.token_hex(6)}.building"
        self.dir.mkdir()
        self._columns: list[_FileIntColumn] = []
        self._blobs: list[_FileBlob] = []

    def int_column(self, name: str, code: str, fill: int) -> _FileIntColumn:
        col = _FileIntColumn(self.dir / f"{name}.bin", _WIDTHS[name], fill)
        self._columns.append(col)
        return col

    def blob(self, name: str) -> _FileBlob:
        blob = _FileBlob(self.dir / f"{name}.bin")
        self._blobs.append(blob)
        return blob

    def map_column(
        self, name: str, ids: np.ndarray, fn: Callable[[np.ndarray], np.ndarray], dtype: Any
    ) -> np.ndarray:
        col = self.int_column(name, "i", fill=-1)
        for start in range(0, len(ids), _MAP_CHUNK):
            values = np.asarray(fn(np.asarray(ids[start : start + _MAP_CHUNK])))
            col.extend(values, int(values.min()), int(values.max()))
        return col.column()

    def seal(self, **fields: Any) -> ManifestTable:
        """Write ``meta.json``, flush every file, rename the build into place, map it."""
        for blob in self._blobs:
            blob.close()
        (self.dir / "spill_hints.bin").write_bytes(bytes(fields["spill_hints"]))
        columns: dict[str, Any] = {}
        for name in ("tail_offsets", "dir_id", "byte_offset", "byte_length", "label_id"):
            columns[name] = self._describe(name, fields[name])
        hint_id = fields["hint_id"]
        columns["hint_id"] = None if hint_id is None else self._describe("hint_id", hint_id)
        meta = {
            "format": _FORMAT,
            "manifest_hash": fields["manifest_hash"],
            "rows": len(fields["dir_id"]),
            "dirs": list(fields["dirs"]),
            "hints": list(fields["hints"]),
            "spill_offsets": np.asarray(fields["spill_offsets"]).tolist(),
            "columns": columns,
        }
        for name in ("hint_id", "label_id"):
            if columns.get(name) is None or "file" not in columns[name]:
                (self.dir / f"{name}.bin").unlink(missing_ok=True)
        (self.dir / _META).write_text(json.dumps(meta))
        _fsync_dir_files(self.dir)
        self._replace_final()
        return open_table_dir(self.final, expected_hash=fields["manifest_hash"])

    def _describe(self, name: str, col: np.ndarray) -> dict[str, Any]:
        if is_mapped(col) or (len(col) == 0 and col.strides != (0,)):
            return {"file": f"{name}.bin", "dtype": np.dtype(col.dtype).str}
        if col.strides == (0,) or len(col) == 0:
            fill = int(col[0]) if len(col) else -1
            return {"fill": fill, "dtype": np.dtype(col.dtype).str}
        # A small in-memory column (the label map of a tiny table): write it as a file too.
        np.ascontiguousarray(col).tofile(self.dir / f"{name}.bin")
        return {"file": f"{name}.bin", "dtype": np.dtype(col.dtype).str}

    def _replace_final(self) -> None:
        old = None
        if self.final.exists():
            old = self.root / f".{self.final.name}.{os.getpid()}.{secrets.token_hex(6)}.old"
            os.replace(self.final, old)
        os.replace(self.dir, self.final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def abort(self) -> None:
        """Close and remove the build: a failed ingest leaves no table file behind."""
        for col in self._columns:
            col.close()
        for blob in self._blobs:
            blob.close()
        shutil.rmtree(self.dir, ignore_errors=True)


_ORPHAN = re.compile(r"\.[0-9a-f]{64}\.(\d+)\.[0-9a-f]+\.(building|old)")


def _remove_orphans(root: Path) -> None:
    """Remove builds (and replaced tables) left by processes that died (SIGKILL, power)."""
    for path in root.iterdir():
        match = _ORPHAN.fullmatch(path.name)
        if match is None or _alive(int(match.group(1))):
            continue
        shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def _fsync_dir_files(directory: Path) -> None:
    for path in directory.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def build_file_table(
    reader: BlockReader,
    *,
    root: str | os.PathLike[str],
    expected_hash: str,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    block_bytes: int = BLOCK_BYTES,
) -> ManifestTable:
    """Parse ``reader`` (hash must be ``expected_hash``) into a file-backed table under ``root``.

    Same checks, errors and lookups as ``ManifestTable.from_block_reader``; on any error
    the partial files are removed before it propagates (a file system error becomes
    ``ManifestUnwritable``).
    """
    table_dir_name(expected_hash)
    try:
        storage = FileStorage(Path(root), expected_hash)
        return build_table(
            reader,
            storage=storage,
            expected_hash=expected_hash,
            max_line_bytes=max_line_bytes,
            block_bytes=block_bytes,
        )
    except OSError as exc:
        # Disk full, no permission: one typed line, the partial files already removed.
        raise ManifestUnwritable(
            f"cannot write the manifest table files under {root}: {exc.strerror or exc}; "
            "free disk space there or point --cache-dir elsewhere"
        ) from None


def open_table_dir(path: str | os.PathLike[str], *, expected_hash: str) -> ManifestTable:
    """Map the sealed table in ``path`` (its ``meta.json`` must name ``expected_hash``).

    Only sealed directories (renamed into place after their hash check) are opened; this
    is how a pickled file-backed table is rebuilt in a loader's worker process.
    """
    path = Path(path)
    table_dir_name(expected_hash)
    meta = json.loads((path / _META).read_text())
    if meta.get("format") != _FORMAT or meta.get("manifest_hash") != expected_hash:
        raise ManifestHashMismatch(
            f"table directory {path} holds manifest {meta.get('manifest_hash')!r}, not "
            f"{expected_hash}; delete it and ingest again"
        )
    n = int(meta["rows"])
    cols: dict[str, Any] = {}
    for name, desc in meta["columns"].items():
        rows = n + 1 if name == "tail_offsets" else n  # offsets have one more entry
        if desc is None:
            cols[name] = None
        elif "file" in desc:
            cols[name] = _map_ints(path / desc["file"], np.dtype(desc["dtype"]), rows)
        else:
            fill = np.array(desc["fill"], dtype=np.dtype(desc["dtype"]))
            cols[name] = np.broadcast_to(fill, (rows,))
    return ManifestTable(
        manifest_hash=expected_hash,
        tails=_map_bytes(path / "tails.bin"),
        dirs=tuple(meta["dirs"]),
        hints=tuple(meta["hints"]),
        spill_hints=(path / "spill_hints.bin").read_bytes(),
        spill_offsets=np.asarray(meta["spill_offsets"], dtype=np.int64),
        source=path,
        reopen=functools.partial(open_table_dir, os.fspath(path), expected_hash=expected_hash),
        **cols,
    )
