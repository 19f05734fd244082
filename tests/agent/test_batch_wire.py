"""``batch_wire.encode_batch`` bytes parse as the same ``AgentMessage`` protobuf builds."""

from __future__ import annotations

import numpy as np
import pytest

from mx8_agent.serve.batch_wire import END_OF_JOB, encode_batch
from mx8_agent.serve.servicer import batch_to_proto
from mx8_agent.serve.trainer_hub import ReadyBatch
from mx8_common.rpc.proto import agent_pb2 as pb


@pytest.mark.parametrize(
    ("sizes", "labels", "locations", "seq"),
    [
        ([0], False, False, 1),
        ([5, 0, 300], True, False, 127),
        ([128 << 10, (1 << 20) - 3], False, True, 128),
        ([1] * 200, True, True, 2**40),
    ],
)
def test_batch_wire_encode_batch_parses_like_protobuf(
    sizes: list[int], labels: bool, locations: bool, seq: int
) -> None:
    parts = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    offsets = np.zeros(len(parts) + 1, dtype=np.uint64)
    np.cumsum(sizes, out=offsets[1:])
    batch = ReadyBatch(
        lease_id="L1",
        epoch=3,
        first_pos=10,
        sample_ids=np.arange(7, 7 + len(parts), dtype=np.uint64),
        parts=parts,
        offsets=offsets,
        labels=np.arange(len(parts), dtype=np.int64) - 1 if labels else None,
    )
    where = [f"s3://b/k{i}" for i in range(len(parts))] if locations else None
    wire = encode_batch(seq, batch, where)
    assert pb.AgentMessage.FromString(wire) == batch_to_proto(seq, batch, where)
    assert pb.AgentMessage.FromString(wire).batch.payload == b"".join(parts)


def test_batch_wire_end_of_job_is_the_end_of_job_message() -> None:
    assert pb.AgentMessage.FromString(END_OF_JOB).end_of_job is True
