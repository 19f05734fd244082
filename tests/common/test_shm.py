"""``mx8_common.shm``: the probe a trainer offers and the sweep of a dead agent's files,
on a private directory standing in for ``/dev/shm``."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

import pytest

from mx8_common import shm


def _files(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def test_shm_probe_accepts_only_the_same_token_under_the_same_name(tmp_path: Path) -> None:
    probe = shm.write_probe(tmp_path)
    assert probe is not None
    name, token = probe
    assert not shm.check_probe(name, b"0" * 16, tmp_path)
    assert not shm.check_probe("../" + name, token, tmp_path)
    assert not shm.check_probe(name, token, tmp_path / "elsewhere")
    assert shm.check_probe(name, token, tmp_path)
    assert _files(tmp_path) == []  # an accepted probe is removed
    assert shm.write_probe(tmp_path / "missing") is None


def test_shm_sweep_removes_dead_agents_segments_and_stale_probes_only(tmp_path: Path) -> None:
    held = shm.create_segment(1 << 16, tmp_path)  # a live agent holds its lock
    assert held is not None
    dead = tmp_path / (shm.SEGMENT_PREFIX + "00112233aabbccdd")
    dead.write_bytes(b"left by a killed agent")
    fresh = shm.write_probe(tmp_path)
    assert fresh is not None
    stale = shm.write_probe(tmp_path)
    assert stale is not None
    old = time.time() - 3600
    os.utime(tmp_path / stale[0], (old, old))
    (tmp_path / "not-ours").write_bytes(b"")
    assert shm.sweep(tmp_path) == 2
    assert _files(tmp_path) == sorted([held.name, fresh[0], "not-ours"])
    # The sweep did not take the live agent's lock away.
    fd = os.open(tmp_path / held.name, os.O_RDONLY)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
    held.close()
