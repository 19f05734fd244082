"""The agent's ``mx8.v1.AgentMessage`` bytes, built with one copy of the sample bytes.

Building a ``pb.Batch`` with ``payload=`` copies the joined bytes into the message and
``SerializeToString`` copies them again; with 128 KiB-1 MiB samples those copies are most
of the agent's CPU per byte. Protobuf lets a message's fields come in any order and
concatenated encodings merge, so the message is written as: the outer ``batch`` field
key and length, the small fields serialized by protobuf, then the ``payload`` key and
length followed by the samples' bytes, all in one ``b"".join``. Any protobuf parser reads
it as the same ``AgentMessage`` (a test pins that). The ``Stream`` handler therefore
takes ``bytes`` responses (``add_agent_service``).
"""

from __future__ import annotations

from typing import Any

import grpc

from mx8_agent.serve.shm_ring import ShmSlot
from mx8_agent.serve.trainer_hub import ReadyBatch
from mx8_common.rpc.proto import agent_pb2 as pb

__all__ = ["END_OF_JOB", "add_agent_service", "encode_batch"]

#: ``AgentMessage(end_of_job=True)``, encoded once.
END_OF_JOB = pb.AgentMessage(end_of_job=True).SerializeToString()

# Keys (field number << 3 | wire type 2 = length-delimited).
_AGENT_MESSAGE_BATCH = bytes([(pb.AgentMessage.BATCH_FIELD_NUMBER << 3) | 2])
_BATCH_PAYLOAD = bytes([(pb.Batch.PAYLOAD_FIELD_NUMBER << 3) | 2])


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def encode_batch(
    seq: int,
    batch: ReadyBatch,
    locations: list[str] | None = None,
    shared: ShmSlot | None = None,
) -> bytes:
    """The serialized ``AgentMessage`` carrying ``batch`` as ``batch_seq`` ``seq``
    (its bytes in the message, or only where ``shared`` put them, or only the paths of
    the local files the trainer reads itself)."""
    head = pb.Batch(
        batch_seq=seq,
        epoch=batch.epoch,
        step=batch.step,
        sample_ids=batch.sample_ids.tolist(),
        offsets=batch.offsets.tolist(),
        labels=[] if batch.labels is None else batch.labels.tolist(),
        locations=locations or [],
        ack_slack=batch.ack_slack,
    )
    if batch.local_files is not None:
        head.locations.extend(batch.local_files)
        head.local.listed_at = batch.listed_at or 0.0
        return pb.AgentMessage(batch=head).SerializeToString()
    if shared is not None:
        head.shared.segment = shared.segment
        head.shared.offset = shared.offset
        head.shared.length = shared.length
        return pb.AgentMessage(batch=head).SerializeToString()
    head_bytes = head.SerializeToString()
    payload_key = _BATCH_PAYLOAD + _varint(batch.nbytes)
    body = len(head_bytes) + len(payload_key) + batch.nbytes
    return b"".join([_AGENT_MESSAGE_BATCH, _varint(body), head_bytes, payload_key, *batch.parts])


def _identity(data: bytes) -> bytes:
    return data


def add_agent_service(servicer: Any, server: grpc.aio.Server) -> None:
    """Register ``mx8.v1.Agent`` like the generated code, except that ``Stream`` yields
    already-encoded ``AgentMessage`` bytes."""
    handlers = {
        "DescribeJob": grpc.unary_unary_rpc_method_handler(
            servicer.DescribeJob,
            request_deserializer=pb.DescribeJobRequest.FromString,
            response_serializer=pb.JobDescription.SerializeToString,
        ),
        "Stream": grpc.stream_stream_rpc_method_handler(
            servicer.Stream,
            request_deserializer=pb.TrainerMessage.FromString,
            response_serializer=_identity,
        ),
    }
    service = pb.DESCRIPTOR.services_by_name["Agent"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
