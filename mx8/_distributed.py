"""Distributed mode of ``mx8.load``: the local ``mx8d-agent`` serves the batches.

``open_distributed`` asks the agent for the job (waiting, with a message, until the agent
has registered with the coordinator) and returns the loader of the job's mode:

* **rank-exact** (the coordinator's default): ``DistributedLoader``. Trainer rank r of
  world W gets exactly the batches embedded ``mx8.load(rank=r, world_size=W)`` gives it:
  the same ``Shard`` of the same order, cut by the agent, which fetches for every rank of
  its host under one byte budget and prefetches their next steps. ``len(loader)``,
  ``set_epoch``, ``state_dict`` and ``load_state_dict`` mean what they mean embedded
  (``mx8._state``); a state saved at another world size resumes elastically. The stream
  to the agent carries the rank's contract (rank, world size, batch size, drop_last, and
  seed/shuffle when given), which the coordinator checks against the job and the other
  ranks, and the rank's start; it waits (saying so) until every rank of its world joined.
* **dynamic**: ``mx8._dynamic.DynamicLoader`` (work-stealing; no fixed length).
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc

from mx8._agent_client import AgentStreamClient, RankOpen, check_agent_address
from mx8._config import TrainerConfig, resolve_rank
from mx8._dynamic import DynamicLoader
from mx8._state import EpochCursor, LoaderShape, build_state, resume_cursor
from mx8._stats import LoaderStats
from mx8.batch import Batch
from mx8_common.errors import AgentError, ConfigError, ContractError
from mx8_common.sample_order import DYNAMIC, JobOrder, Shard, consumed_positions

__all__ = ["DistributedLoader", "open_distributed"]

#: How long a lost agent is waited for (it restarts, ingests the manifest, serves again).
_RECONNECT_S = 120.0


def _describe(agent: str, job: str, timeout_s: float) -> tuple[dict[str, Any], grpc.Channel]:
    """The job as the agent knows it, once the agent has registered (polls until then),
    and the connected channel it was asked through (the first stream takes it over)."""
    check_agent_address(agent)
    deadline = time.monotonic() + timeout_s
    told = False
    with AgentStreamClient(agent, job_id=job, local_rank=0, batch_size=1, timeout_s=timeout_s) as c:
        while True:
            info = c.describe()
            if info["manifest_hash"]:
                return info, c.take_channel()
            if time.monotonic() > deadline:
                raise AgentError(
                    f"mx8d-agent at {agent} has not reached the coordinator after "
                    f"{timeout_s:.0f}s; check the agent's log (--coordinator)",
                    address=agent,
                )
            if not told:
                print(
                    f"mx8: waiting for mx8d-agent at {agent} to register with the coordinator",
                    flush=True,
                    file=sys.stderr,
                )
                told = True
            time.sleep(0.2)


def open_distributed(
    agent: str,
    *,
    link: str | None,
    job: str | None,
    batch_size: int,
    rank: int | None,
    world_size: int | None,
    drop_last: bool,
    shuffle: bool | None,
    seed: int | None,
    epoch: int,
    timeout_s: float = 60.0,
    world_wait_timeout_s: float | None = None,
) -> DistributedLoader | DynamicLoader:
    """The loader of the agent's job, in the job's mode (see the module docstring)."""
    env = TrainerConfig.from_env()
    job_id = job or env.job_id or ""
    info, channel = _describe(agent, job_id, timeout_s)
    if (info["mode"] or DYNAMIC) == DYNAMIC:
        channel.close()
        return DynamicLoader(
            agent, link=link, job=job_id, batch_size=batch_size, rank=rank, timeout_s=timeout_s
        )
    return DistributedLoader(
        agent,
        info=info,
        link=link,
        batch_size=batch_size,
        rank=rank,
        world_size=world_size,
        drop_last=drop_last,
        shuffle=shuffle,
        seed=seed,
        epoch=epoch,
        timeout_s=timeout_s,
        world_wait_timeout_s=(
            env.world_wait_timeout_s if world_wait_timeout_s is None else world_wait_timeout_s
        ),
        env=env,
        channel=channel,
    )


class DistributedLoader:
    """One trainer rank's batches of a rank-exact job, served by the agent at ``agent``."""

    def __init__(
        self,
        agent: str,
        *,
        info: dict[str, Any],
        link: str | None = None,
        batch_size: int = 32,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = False,
        shuffle: bool | None = None,
        seed: int | None = None,
        epoch: int = 0,
        timeout_s: float = 60.0,
        world_wait_timeout_s: float = 600.0,
        env: TrainerConfig | None = None,
        channel: grpc.Channel | None = None,
    ) -> None:
        #: A connected channel to the agent the first stream takes (no connect at the
        #: first batch); closed with the loader if no stream took it.
        self._channel = channel
        if batch_size < 1:
            raise ConfigError(f"batch_size is {batch_size}; it must be at least 1")
        env = TrainerConfig.from_env() if env is None else env
        self.rank, self.world_size = resolve_rank(rank, world_size, env)
        self.local_rank = env.local_rank
        self.agent = agent
        self.link = link
        self.job: str = info["job_id"]
        self.manifest_hash: str = info["manifest_hash"]
        self.total_samples: int = int(info["total_samples"])
        self.epochs: int = int(info["epochs"])
        self.classes: list[str] | None = info["class_names"] or None
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.shuffle = bool(info["shuffle"])
        self.seed = int(info["seed"])
        self.block_size = int(info["block_size"])
        # The coordinator checks these too; saying it here needs no world.
        if seed is not None and seed != self.seed:
            raise ContractError(
                f"seed {seed} of rank {self.rank} differs from the job's --seed {self.seed}; "
                f"pass seed={self.seed} or leave seed out to take the job's",
                field="seed",
            )
        if shuffle is not None and shuffle != self.shuffle:
            raise ContractError(
                f"shuffle={shuffle} of rank {self.rank} differs from the job's shuffle="
                f"{self.shuffle}; pass shuffle={self.shuffle} or leave it out",
                field="shuffle",
            )
        self._given_seed, self._given_shuffle = seed, shuffle
        self._shape = LoaderShape(
            link=link or "",
            job=JobOrder(
                manifest_hash=self.manifest_hash,
                total_samples=self.total_samples,
                block_size=self.block_size,
                shuffle=self.shuffle,
                seed=self.seed,
            ),
            rank=self.rank,
            world_size=self.world_size,
            batch_size=batch_size,
            drop_last=drop_last,
        )
        self.instance_id = uuid.uuid4().hex
        self._timeout_s = timeout_s
        self._world_wait_s = world_wait_timeout_s
        self._cursor = EpochCursor(epoch=epoch)
        self._resumed = False
        self._stream: AgentStreamClient | None = None
        #: What the open stream delivers next: (epoch, step).
        self._stream_next: tuple[int, int] | None = None
        self._iterating = False
        self._bytes = self._samples = self._batches = 0
        self._seconds = 0.0

    # -- shape of the data ------------------------------------------------------------

    @property
    def epoch(self) -> int:
        return self._cursor.epoch

    def _shard(self) -> Shard:
        return self._shape.shard(self._cursor)

    def __len__(self) -> int:
        """Batches of this rank in the current epoch: embedded mode's, equal on every rank."""
        return self._cursor.base_step + self._shard().batches

    # -- the stream -------------------------------------------------------------------

    def _open_stream(self) -> AgentStreamClient:
        c = self._cursor
        step = c.step(self.batch_size)
        if self._stream is not None and self._stream_next == (c.epoch, step):
            return self._stream
        self._close_stream()
        consumed = consumed_positions(
            self.total_samples,
            self.world_size,
            offset=c.offset,
            position=c.position,
            drop_last=self.drop_last,
        )
        channel, self._channel = self._channel, None
        self._stream = AgentStreamClient(
            self.agent,
            channel=channel,
            job_id=self.job,
            local_rank=self.local_rank,
            batch_size=self.batch_size,
            trainer_id=self.instance_id,
            timeout_s=self._timeout_s,
            reconnect_timeout_s=_RECONNECT_S,
            world_wait_timeout_s=self._world_wait_s,
            rank=RankOpen(
                rank=self.rank,
                world_size=self.world_size,
                drop_last=self.drop_last,
                seed=self._given_seed,
                shuffle=self._given_shuffle,
                epoch=c.epoch,
                step=step,
                offset=c.offset,
                base_step=c.base_step,
                consumed=consumed,
                resumed=self._resumed,
            ),
        )
        self._stream_next = (c.epoch, step)
        return self._stream

    def _close_stream(self) -> None:
        if self._stream is not None:
            self._stream.close()
        self._stream = None
        self._stream_next = None

    def __iter__(self) -> Iterator[Batch]:
        """The rest of this rank's current epoch; exhausted, nothing until ``set_epoch``."""
        if self._iterating:
            raise RuntimeError(
                "this loader is already being iterated; finish or close() that loop first"
            )
        c = self._cursor
        if c.epoch >= self.epochs or c.position >= self._shard().samples:
            return iter(())
        return self._iterate()

    def _iterate(self) -> Iterator[Batch]:
        c = self._cursor
        shard = self._shard()
        length = c.base_step + shard.batches
        stream = self._open_stream()
        self._iterating = True
        try:
            while c.position < shard.samples:
                t0 = time.perf_counter()
                try:
                    batch = next(stream)
                except StopIteration:
                    self._close_stream()
                    raise AgentError(
                        f"mx8d-agent at {self.agent} ended the job before step "
                        f"{c.step(self.batch_size)} of epoch {c.epoch}; check its log",
                        address=self.agent,
                    ) from None
                except BaseException:
                    # Close the channel now: closing it at interpreter exit can hang in gRPC.
                    self._close_stream()
                    raise
                finally:
                    self._seconds += time.perf_counter() - t0
                step = c.step(self.batch_size)
                if (batch.epoch, stream.last_step) != (c.epoch, step):
                    self._close_stream()
                    raise AgentError(
                        f"mx8d-agent at {self.agent} sent epoch {batch.epoch} step "
                        f"{stream.last_step} where epoch {c.epoch} step {step} was due",
                        address=self.agent,
                    )
                c.position = shard.batch_bounds(step - c.base_step)[1]
                c.loaded = False
                nxt = step + 1
                self._stream_next = (c.epoch + 1, 0) if nxt == length else (c.epoch, nxt)
                self._bytes += batch.nbytes
                self._samples += len(batch)
                self._batches += 1
                yield batch
            # The loop asked past the epoch's last batch: the trainer is done with it.
            if c.epoch + 1 < self.epochs:
                stream.ack()
            else:
                self._end_of_job(stream)
        finally:
            self._iterating = False

    def _end_of_job(self, stream: AgentStreamClient) -> None:
        """After the job's last batch: read the agent's end of job, which acknowledges
        that batch and ends the stream cleanly (the rank counts as finished)."""
        try:
            next(stream)
        except StopIteration:
            pass
        else:
            raise AgentError(
                f"mx8d-agent at {self.agent} sent a batch after the job's last step",
                address=self.agent,
            )
        self._close_stream()

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` from its beginning on the next iteration (right after
        ``load_state_dict`` of a state in epoch ``epoch``: keep its position)."""
        if self._iterating:
            raise RuntimeError("cannot change the epoch while iterating; finish the loop first")
        c = self._cursor
        if c.loaded and epoch == c.epoch:
            return
        c.restart(epoch)
        self._resumed = False
        # The open stream goes on with the next epoch's step 0; anything else reopens.
        if self._stream_next != (epoch, 0):
            self._close_stream()

    # -- resume -----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Where this rank is, O(1): the same state as embedded mode's (``mx8._state``)."""
        return build_state(self._shape, self._cursor)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a ``state_dict()`` (of any rank; at any world or batch size).

        Every rank of the restarted job must load the same checkpoint: the coordinator
        refuses a world whose ranks start from different points.
        """
        if self._iterating:
            raise RuntimeError("cannot load a state while iterating; finish the loop first")
        cursor, _seed = resume_cursor(self._shape, state, fixed_seed=True)
        self._cursor = cursor
        self._resumed = True
        self._close_stream()

    # -- lifecycle --------------------------------------------------------------------

    def stats(self) -> LoaderStats:
        return LoaderStats(self._bytes, self._samples, self._batches, self._seconds, 0)

    def close(self) -> None:
        """End the stream to the agent; safe to call twice."""
        self._close_stream()
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def __enter__(self) -> DistributedLoader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        # gRPC can deadlock closing a channel while the interpreter shuts down.
        if sys.is_finalizing():
            return
        stream, channel = getattr(self, "_stream", None), getattr(self, "_channel", None)
        if stream is not None:
            stream.close()
        if channel is not None:  # also when __init__ refused the arguments
            channel.close()

    def __repr__(self) -> str:
        return (
            f"DistributedLoader(agent={self.agent!r}, job={self.job!r}, "
            f"manifest_hash={self.manifest_hash[:12]}..., samples={self.total_samples}, "
            f"epoch={self.epoch}, rank={self.rank}/{self.world_size})"
        )
