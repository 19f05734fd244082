"""The gRPC face of the agent for local trainers (``mx8.v1.Agent``): convert and delegate.

``DescribeJob`` answers from a plain ``JobInfo``; ``Stream`` takes the trainer's
``OpenStream``, attaches a session to the ``TrainerHub``, feeds acknowledgements to it
from a reader task, and sends what ``next_for`` returns. The handlers just raise: the
agent's ``ErrorBoundary`` interceptor turns an ``Mx8Error`` (a bad open, a storage
failure, a refused resume, a manifest that failed closed) into a typed status that the
trainer client rebuilds as the same class. ``Batch.locations`` is filled only for a
stream opened with ``want_locations``, from the ``locate`` callback. A stream opened with
a rank contract is rank-exact mode's and is served by ``rank_stream``; when it also
carries a ``ShmProbe`` that this agent reads back from its ``shared_memory`` directory,
its batches go through a ``ShmRing`` there (``mx8_common.shm``).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mx8_agent.serve.batch_wire import END_OF_JOB, encode_batch
from mx8_agent.serve.rank_stream import RankBackend, rank_spec, serve_rank_stream
from mx8_agent.serve.shm_ring import ShmRing
from mx8_agent.serve.trainer_hub import ReadyBatch, TrainerHub, TrainerSession
from mx8_common import shm
from mx8_common.errors import RequestError
from mx8_common.obs.events import emit
from mx8_common.rpc.proto import agent_pb2 as pb
from mx8_common.rpc.proto import agent_pb2_grpc as pb_grpc
from mx8_common.sample_order import RANK_EXACT

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
    mode: str = ""
    shuffle: bool = False
    seed: int = 0
    block_size: int = 0


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
        self,
        *,
        hub: TrainerHub,
        job_info: Callable[[], JobInfo],
        locate: Locate | None = None,
        ranks: Callable[[], Awaitable[RankBackend]] | None = None,
        shared_memory: Path | None = shm.SHM_DIR,
        shared_max_bytes: int = 256 * 1024 * 1024,
    ) -> None:
        self._hub = hub
        self._job_info = job_info
        self._locate = locate
        self._ranks = ranks
        self._shm_dir = shared_memory
        self._shm_max = shared_max_bytes
        self._rings: set[ShmRing] = set()
        #: Batches handed over through shared memory by rings already closed.
        self._shared_closed = 0

    @property
    def batches_shared(self) -> int:
        """Batches whose bytes went to a trainer through shared memory."""
        return self._shared_closed + sum(r.batches for r in self._rings)

    @property
    def shared_streams(self) -> int:
        """Open streams that hand batches over through shared memory."""
        return len(self._rings)

    def _ring(self, op: pb.OpenStream, window: int) -> ShmRing | None:
        """A ring for this stream when the trainer's probe shows it shares our /dev/shm."""
        if self._shm_dir is None or not op.HasField("shm_probe"):
            return None
        probe = op.shm_probe
        if not shm.check_probe(probe.name, probe.token, self._shm_dir):
            return None
        ring = ShmRing(window=window, max_bytes=self._shm_max, directory=self._shm_dir)
        self._rings.add(ring)
        return ring

    def _drop_ring(self, ring: ShmRing | None) -> None:
        if ring is not None and ring in self._rings:
            ring.close()
            self._rings.discard(ring)
            self._shared_closed += ring.batches

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
            mode=info.mode,
            shuffle=info.shuffle,
            seed=info.seed,
            block_size=info.block_size,
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
        if op.HasField("contract"):
            spec = rank_spec(op, trainer_id, op.window or _DEFAULT_WINDOW)
            locate = self._locate if op.want_locations else None
            job_id = self._job_info().job_id
            ring = self._ring(op, spec.window)
            stream = serve_rank_stream(
                self._rank_backend,
                spec,
                job_id=job_id,
                requests=request_iterator,
                locate=locate,
                ring=ring,
            )
            try:
                # aclosing: the rank stream's own clean-up (the rank server forgets the
                # stream, so reads still landing in the ring are dropped) runs before its
                # ring is unmapped, not whenever the loop finalizes the generator.
                async with contextlib.aclosing(stream):
                    async for message in stream:
                        yield message
            finally:
                self._drop_ring(ring)
            return
        if self._job_info().mode == RANK_EXACT:
            raise RequestError(
                "this job runs in rank-exact mode: open the stream with the trainer's rank "
                "contract (mx8.load does), or run the coordinator with --mode dynamic",
                field="contract",
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

    async def _rank_backend(self) -> RankBackend:
        if self._ranks is None:
            raise RequestError(
                "this agent serves no rank-exact job; open the stream without a rank contract",
                field="contract",
            )
        return await self._ranks()

    async def _read_acks(
        self, request_iterator: AsyncIterator[pb.TrainerMessage], session: TrainerSession
    ) -> None:
        async for message in request_iterator:
            if message.HasField("ack"):
                self._hub.ack(session, message.ack.batch_seq)
