"""The gRPC face of the agent for local trainers (``mx8.v1.Agent``): convert and delegate.

``DescribeJob`` answers from a plain ``JobInfo``; ``Stream`` takes the trainer's
``OpenStream``, attaches a session to the ``TrainerHub``, feeds acknowledgements to it
from a reader task, and sends what ``next_for`` returns. The handlers just raise: the
agent's ``ErrorBoundary`` interceptor turns an ``Mx8Error`` (a bad open, a storage
failure, a refused resume, a manifest that failed closed) into a typed status that the
trainer client rebuilds as the same class. ``Batch.locations`` is filled only for a
stream opened with ``want_locations``, from the ``locate`` callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mx8_agent.serve.batch_wire import END_OF_JOB, encode_batch
from mx8_agent.serve.trainer_hub import ReadyBatch, TrainerHub, TrainerSession
from mx8_common.errors import RequestError
from mx8_common.obs.events import emit
from mx8_common.rpc.proto import agent_pb2 as pb
from mx8_common.rpc.proto import agent_pb2_grpc as pb_grpc

__all__ = ["AgentServicer", "JobInfo", "batch_to_proto"]

_COMPONENT = "agent"
_DEFAULT_WINDOW = 4


@dataclass(frozen=True, kw_only=True)
class JobInfo:
    """What ``DescribeJob`` tells a trainer."""

    job_id: str
    manifest_hash: str = ""
    total_samples: int = 0
    epochs: int = 0
    class_names: tuple[str, ...] = ()
    node_rank: int = 0
    world_size: int = 0
    ready: bool = False


#: Sample ids -> their object locations (the agent's manifest table).
Locate = Callable[[np.ndarray], list[str]]


def batch_to_proto(
    seq: int, batch: ReadyBatch, locations: list[str] | None = None
) -> pb.AgentMessage:
    """The ``AgentMessage`` of one batch (``locations`` only when the trainer asked).

    The reference encoding; ``Stream`` sends ``batch_wire.encode_batch``'s equal bytes."""
    return pb.AgentMessage(
        batch=pb.Batch(
            batch_seq=seq,
            epoch=batch.epoch,
            sample_ids=batch.sample_ids.tolist(),
            payload=batch.payload,
            offsets=batch.offsets.tolist(),
            labels=[] if batch.labels is None else batch.labels.tolist(),
            locations=locations or [],
        )
    )


class AgentServicer(pb_grpc.AgentServicer):
    """``mx8.v1.Agent`` over a ``TrainerHub`` and a ``JobInfo`` provider."""

    def __init__(
        self, *, hub: TrainerHub, job_info: Callable[[], JobInfo], locate: Locate | None = None
    ) -> None:
        self._hub = hub
        self._job_info = job_info
        self._locate = locate

    def _check_job(self, job_id: str) -> None:
        ours = self._job_info().job_id
        if job_id and job_id != ours:
            raise RequestError(
                f"this agent serves job {ours!r}, not {job_id!r}; point the trainer at the "
                "agent of its job or fix its job id",
                field="job_id",
            )

    async def DescribeJob(self, request: pb.DescribeJobRequest, context: Any) -> pb.JobDescription:
        self._check_job(request.job_id)
        info = self._job_info()
        return pb.JobDescription(
            job_id=info.job_id,
            manifest_hash=info.manifest_hash,
            total_samples=info.total_samples,
            epochs=info.epochs,
            class_names=list(info.class_names),
            node_rank=info.node_rank,
            world_size=info.world_size,
            ready=info.ready,
        )

    async def Stream(
        self, request_iterator: AsyncIterator[pb.TrainerMessage], context: Any
    ) -> AsyncIterator[bytes]:
        first = await anext(aiter(request_iterator), None)
        if first is None:
            return
        if not first.HasField("open"):
            raise RequestError(
                "the first message of a trainer stream must be OpenStream", field="open"
            )
        op = first.open
        # Without an id a trainer cannot resume; a unique one keeps it from replacing others.
        trainer_id = op.trainer_id or f"{context.peer()}#{op.local_rank}#{uuid.uuid4().hex[:8]}"
        self._check_job(op.job_id)
        if op.want_locations and self._locate is None:
            raise RequestError(
                "this agent cannot report sample locations; open the stream without want_locations",
                field="want_locations",
            )
        self._hub.set_batch_size(op.batch_size)
        session = self._hub.attach(
            trainer_id,
            window=op.window or _DEFAULT_WINDOW,
            local_rank=op.local_rank,
            resume_after=op.resume_after_seq,
            want_locations=op.want_locations,
        )
        emit(
            _COMPONENT,
            "trainer_connected",
            trainer_id=trainer_id,
            local_rank=op.local_rank,
            resumed_after=op.resume_after_seq,
            resent_batches=len(session.resend),
        )
        acks = asyncio.create_task(self._read_acks(request_iterator, session))
        try:
            while True:
                item = await self._hub.next_for(session)
                if item is None:
                    yield END_OF_JOB
                    return
                seq, batch = item
                where = None
                if session.want_locations and self._locate is not None:
                    where = self._locate(batch.sample_ids)
                yield encode_batch(seq, batch, where)
        finally:
            acks.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await acks
            requeued = len(session.unacked)
            self._hub.detach(session)
            emit(
                _COMPONENT,
                "trainer_disconnected",
                trainer_id=trainer_id,
                batches_sent=session.batches_sent,
                samples_acked=session.samples_acked,
                requeued_batches=requeued,
            )

    async def _read_acks(
        self, request_iterator: AsyncIterator[pb.TrainerMessage], session: TrainerSession
    ) -> None:
        async for message in request_iterator:
            if message.HasField("ack"):
                self._hub.ack(session, message.ack.batch_seq)
