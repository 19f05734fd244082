"""The rank-exact half of the agent's ``Stream``: ``OpenStream`` -> ``RankServer`` -> bytes.

A stream whose ``OpenStream`` carries a ``RankContract`` is one trainer rank: it joins
its world (the trainer gets a ``WorldWaiting`` message at once and then every few
seconds, or when who is missing changes, until the world is complete), then receives
its batches in order from the step it presented, each tagged with its epoch and step,
and ``end_of_job`` after the job's last one. Its first batches are read while it joins.
Acknowledgements free the agent's budget and move the rank's reported progress. With a
``ShmRing`` (the trainer shares the agent's ``/dev/shm``) each batch's bytes go into the
ring and the message only says where; acknowledgements free the ring too, and the ring
is closed when the stream ends. A trainer on this host that asked to read local files
itself (``trainer_reads``) gets, for a batch of whole local files, only their paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from mx8_agent.serve.batch_wire import END_OF_JOB, encode_batch
from mx8_agent.serve.shm_ring import ShmRing
from mx8_agent.serve.trainer_hub import ReadyBatch
from mx8_common.obs.events import emit
from mx8_common.rpc.proto import agent_pb2 as pb

__all__ = [
    "RankBackend",
    "RankSpec",
    "WorldReady",
    "WorldWait",
    "rank_spec",
    "serve_rank_stream",
]

_COMPONENT = "agent"
#: How often an unchanged "still waiting" is repeated to the trainer.
_WAIT_REPEAT_S = 2.0


@dataclass(frozen=True, kw_only=True)
class RankSpec:
    """What a rank-exact stream serves: the rank's contract and where it starts."""

    instance_id: str
    rank: int
    world_size: int
    batch_size: int
    drop_last: bool = False
    seed: int | None = None
    shuffle: bool | None = None
    window: int = 4
    epoch: int = 0
    step: int = 0
    #: The start epoch's segment: its first global position and the steps before it.
    offset: int = 0
    base_step: int = 0
    consumed: int = 0
    resumed: bool = False
    #: The trainer reads local files itself (``OpenStream.trainer_reads``); honoured only
    #: with a ring (the trainer shares this host).
    trainer_reads: bool = False


@dataclass(frozen=True)
class WorldWait:
    """The rank's world is incomplete (``missing`` empty: the coordinator is away)."""

    world_size: int
    registered: tuple[int, ...]
    missing: tuple[int, ...]


@dataclass(frozen=True)
class WorldReady:
    world_id: str


class RankBackend(Protocol):
    """What serving a rank needs (``mx8_agent.work.rank_server.RankServer``)."""

    def join(self, spec: RankSpec) -> AsyncIterator[WorldWait | WorldReady]: ...

    def open(self, spec: RankSpec, ring: ShmRing | None = None) -> Any: ...

    def joined(self, stream: Any, world_id: str) -> None: ...

    def first_batch_bytes(self, spec: RankSpec) -> int: ...

    def close(self, stream: Any) -> None: ...

    async def next_batch(self, stream: Any) -> tuple[int, ReadyBatch] | None: ...

    def ack(self, stream: Any, batch_seq: int) -> int: ...


def rank_spec(op: pb.OpenStream, trainer_id: str, window: int) -> RankSpec:
    """The ``RankSpec`` of a rank-exact ``OpenStream``."""
    c, s = op.contract, op.start
    return RankSpec(
        instance_id=trainer_id,
        rank=c.rank,
        world_size=c.world_size,
        batch_size=op.batch_size,
        drop_last=c.drop_last,
        seed=c.seed if c.HasField("seed") else None,
        shuffle=c.shuffle if c.HasField("shuffle") else None,
        window=window,
        epoch=s.epoch,
        step=s.step,
        offset=s.offset,
        base_step=s.base_step,
        consumed=s.consumed,
        resumed=s.resumed,
        trainer_reads=op.trainer_reads,
    )


def _waiting(job_id: str, state: WorldWait) -> bytes:
    return pb.AgentMessage(
        waiting=pb.WorldWaiting(
            job_id=job_id,
            world_size=state.world_size,
            registered_ranks=state.registered,
            missing_ranks=state.missing,
        )
    ).SerializeToString()


async def serve_rank_stream(
    backend: Callable[[], Awaitable[RankBackend]],
    spec: RankSpec,
    *,
    job_id: str,
    requests: AsyncIterator[pb.TrainerMessage],
    locate: Callable[[np.ndarray], list[str]] | None,
    ring: ShmRing | None = None,
) -> AsyncIterator[bytes]:
    """The encoded ``AgentMessage``s of one rank-exact stream (join, then batches).

    ``backend`` waits for the agent's ``RankServer`` (the manifest is being ingested):
    the trainer hears it waits meanwhile."""
    server: RankBackend | None = None
    while server is None:
        try:
            async with asyncio.timeout(_WAIT_REPEAT_S):
                server = await backend()
        except TimeoutError:
            yield _waiting(job_id, WorldWait(spec.world_size, (), ()))
    world_id = ""
    last: tuple[object, ...] | None = None
    told = 0.0
    # The rank's first batches are read while it joins: they are its batches whatever
    # world forms (the coordinator serves a rank from the position it presented). A
    # contract no batch can be cut for waits for the coordinator's refusal instead.
    opening = asyncio.ensure_future(_open_early(server, spec, ring)) if _placeable(spec) else None
    stream: Any = None
    try:
        async for state in server.join(spec):
            if isinstance(state, WorldReady):
                world_id = state.world_id
                break
            now = time.monotonic()
            key = (state.registered, state.missing)
            if key != last or now - told >= _WAIT_REPEAT_S:
                last, told = key, now
                yield _waiting(job_id, state)
        stream = await opening if opening is not None else server.open(spec, ring)
        server.joined(stream, world_id)
        emit(
            _COMPONENT,
            "trainer_connected",
            trainer_id=spec.instance_id,
            rank=spec.rank,
            world_size=spec.world_size,
            world_id=world_id,
            epoch=spec.epoch,
            step=spec.step,
            shared_memory=ring is not None,
            trainer_reads=spec.trainer_reads and ring is not None,
        )
        async for message in _serve(server, stream, requests, locate, ring):
            yield message
    finally:
        if stream is None and opening is not None:  # the join failed or the trainer left
            opening.cancel()
            if opening.done() and not opening.cancelled() and opening.exception() is None:
                server.close(opening.result())
        if ring is not None:
            ring.close()


def _placeable(spec: RankSpec) -> bool:
    """Whether the rank's batches can be cut at all (the coordinator checks the rest)."""
    return spec.world_size > 0 and 0 <= spec.rank < spec.world_size and spec.batch_size > 0


async def _open_early(server: RankBackend, spec: RankSpec, ring: ShmRing | None) -> Any:
    """Make the ring's first segment (in a thread), then start reading the rank's
    batches (``RankServer.open``); the stream is served once the world is ready."""
    if ring is not None:
        await ring.prepare(server.first_batch_bytes(spec))
    return server.open(spec, ring)


async def _serve(
    server: RankBackend,
    stream: Any,
    requests: AsyncIterator[pb.TrainerMessage],
    locate: Callable[[np.ndarray], list[str]] | None,
    ring: ShmRing | None,
) -> AsyncIterator[bytes]:
    """The rank's batches in order, then ``end_of_job``; acknowledgements on the side."""
    spec = stream.spec
    acks = asyncio.create_task(_read_acks(server, stream, requests, ring))
    try:
        while True:
            item = await server.next_batch(stream)
            if item is None:
                yield END_OF_JOB
                # The last acknowledgement may still be on its way: the trainer ends its
                # side once it has sent it, and the rank is finished only then.
                await acks
                return
            seq, batch = item
            if batch.local_files is not None:  # the trainer reads them: no bytes here
                yield encode_batch(seq, batch)
                continue
            where = locate(batch.sample_ids) if locate is not None else None
            shared = batch.shared
            if shared is not None and ring is not None:
                ring.sent(shared, seq)  # read straight into the ring
            elif ring is not None:
                shared = ring.put(seq, batch.parts, batch.nbytes)
            yield encode_batch(seq, batch, where, shared)
    finally:
        acks.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await acks
        server.close(stream)
        if ring is not None:
            ring.close()
        emit(
            _COMPONENT,
            "trainer_disconnected",
            trainer_id=spec.instance_id,
            rank=spec.rank,
            batches_sent=stream.batches_sent,
            samples_acked=stream.samples_acked,
            epoch=stream.acked[0],
            step=stream.acked[1],
        )


async def _read_acks(
    server: RankBackend,
    stream: Any,
    requests: AsyncIterator[pb.TrainerMessage],
    ring: ShmRing | None,
) -> None:
    async for message in requests:
        if message.HasField("ack"):
            server.ack(stream, message.ack.batch_seq)
            if ring is not None:
                ring.release_through(message.ack.batch_seq)
