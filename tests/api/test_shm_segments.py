"""``mx8._shm.SharedSegments``: the trainer copies a batch out of the agent's segment
(its own ``bytes``), keeps only the newest mapping, refuses names and ranges that are not
the agent's."""

from __future__ import annotations

from pathlib import Path

import pytest

from mx8._shm import SharedSegments
from mx8_agent.serve.shm_ring import ShmRing
from mx8_common.errors import AgentError


def test_shared_segments_copy_out_and_keep_only_the_newest_mapping(tmp_path: Path) -> None:
    ring = ShmRing(window=1, max_bytes=1 << 30, directory=tmp_path)
    reader = SharedSegments("unix:/agent.sock", tmp_path)
    a = ring.put(1, [b"one", b"two"], 6)
    assert a is not None
    got = reader.read(a.segment, a.offset, a.length)
    assert got == b"onetwo" and isinstance(got, bytes)
    ring.release_through(1)
    b = ring.put(2, [b"N" * (2 << 20)], 2 << 20)
    assert b is not None
    assert reader.read(b.segment, b.offset, b.length) == b"N" * (2 << 20)
    assert got == b"onetwo"  # a batch's bytes are its own, whatever the ring does next
    with pytest.raises(AgentError, match="not one of its files"):
        reader.read("../etc/passwd", 0, 1)
    with pytest.raises(AgentError, match="which has"):
        reader.read(b.segment, b.offset, 1 << 30)
    reader.close()
    reader.close()
    ring.close()
