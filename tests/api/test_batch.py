"""``mx8.Batch``: samples kept as read until the whole payload is asked for."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from mx8 import Batch

PARTS = [b"alpha", bytearray(b"be"), memoryview(b"gamma!")]
JOINED = b"alphabegamma!"


def _parts_batch() -> Batch:
    offsets = np.array([0, 5, 7, 13], dtype=np.int64)
    ids = np.arange(3, dtype=np.uint64)
    return Batch.from_parts(ids, list(PARTS), offsets, None, 4)


def test_a_batch_from_parts_gives_each_sample_without_joining() -> None:
    batch = _parts_batch()
    assert batch.payloads == [b"alpha", b"be", b"gamma!"]
    assert all(type(p) is bytes for p in batch.payloads)
    assert [bytes(v) for v in batch.views()] == [b"alpha", b"be", b"gamma!"]
    assert batch.nbytes == 13
    assert "bytes=13" in repr(batch)
    assert batch._payload is None  # nothing above needed the joined copy


def test_views_share_the_buffers_they_came_from_and_are_read_only() -> None:
    buf = bytearray(b"xyz")
    batch = Batch.from_parts(np.zeros(1, np.uint64), [buf], np.array([0, 3]), None, 0)
    view = batch.views()[0]
    buf[0] = ord("X")
    assert bytes(view) == b"Xyz"
    with pytest.raises(TypeError):
        view[0] = 1


def test_the_payload_is_joined_once_and_matches_the_offsets() -> None:
    batch = _parts_batch()
    payload = batch.payload
    assert payload == JOINED
    assert batch.payload is payload
    off = batch.offsets
    assert [payload[off[i] : off[i + 1]] for i in range(3)] == batch.payloads
    assert [bytes(v) for v in batch.views()] == batch.payloads


def test_a_batch_pickles_as_plain_bytes() -> None:
    batch = _parts_batch()
    back = pickle.loads(pickle.dumps(batch))
    assert back.payload == JOINED
    assert back.payloads == batch.payloads
    assert back.epoch == 4 and back.labels is None
    assert np.array_equal(back.sample_ids, batch.sample_ids)


def test_a_batch_is_read_only() -> None:
    batch = _parts_batch()
    with pytest.raises(AttributeError, match="read-only"):
        batch.epoch = 5  # type: ignore[misc]
    with pytest.raises(AttributeError, match="read-only"):
        batch.sample_ids = np.zeros(0)  # type: ignore[misc]


def test_to_torch_gives_each_sample_from_parts_without_joining_the_batch() -> None:
    torch = pytest.importorskip("torch")
    batch = _parts_batch()
    tensors = batch.to_torch()
    assert [bytes(t.numpy()) for t in tensors["payloads"]] == [b"alpha", b"be", b"gamma!"]
    assert tensors["sample_ids"].dtype == torch.int64
    assert batch._payload is None
