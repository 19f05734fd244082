"""``read_many_into``: local samples straight into shared memory, refusing what every other
read path refuses, with the same typed errors."""

from __future__ import annotations

import mmap
import os
import time
from pathlib import Path

import pytest

from mx8_common.errors import ObjectChangedError, ObjectNotFoundError
from mx8_common.storage.local_read import read_many_into


def _files(tmp_path: Path, n: int) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n):
        data = bytes([i]) * (1000 + 17 * i)
        path = tmp_path / f"s{i}.bin"
        path.write_bytes(data)
        out.append((str(path), data))
    return out


def test_read_into_places_samples_back_to_back_at_the_offset(tmp_path: Path) -> None:
    files = _files(tmp_path, 5)
    whole = tmp_path / "packed.bin"
    whole.write_bytes(b"HEAD" + b"ranged-sample" + b"TAIL")
    items = [(p, None, len(d)) for p, d in files] + [(f"file://{whole}", 4, 13)]
    target = mmap.mmap(-1, 1 << 16)
    took = read_many_into(items, target, 100, listed_at=None)
    expected = b"".join(d for _, d in files) + b"ranged-sample"
    assert target[100 : 100 + len(expected)] == expected and took >= 0
    assert target[:100] == bytes(100)  # nothing written before the offset
    target.close()  # no view of it is left behind


def test_read_into_refuses_like_the_reader(tmp_path: Path) -> None:
    (path, data), (other, _) = _files(tmp_path, 2)
    target = mmap.mmap(-1, 1 << 16)
    with pytest.raises(ObjectNotFoundError):
        read_many_into([(str(tmp_path / "gone.bin"), None, 10)], target, 0, None)
    with pytest.raises(ObjectChangedError):
        read_many_into([(path, None, len(data) + 1)], target, 0, None)  # size differs
    with pytest.raises(ObjectChangedError):
        read_many_into([(other, 10, 1 << 14)], target, 0, None)  # the range runs past the end
    listed = time.time() - 3600
    with pytest.raises(ObjectChangedError):
        read_many_into([(path, None, len(data))], target, 0, listed)  # modified after listing
    os.utime(path, (listed - 10, listed - 10))
    read_many_into([(path, None, len(data))], target, 0, listed)
    assert target[: len(data)] == data
    target.close()
