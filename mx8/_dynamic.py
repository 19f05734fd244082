"""Dynamic mode of ``mx8.load`` (coordinator ``--mode dynamic``): take work as it comes.

The coordinator leases sample ranges to the agents, and each agent shares its batches
among the host's trainers as they ask: every sample is delivered once per epoch, but
trainers take different numbers of batches (no ``len``), which suits consumers that are
not lockstep (inference, preprocessing, asynchronous training), not DDP. The trainer
code is the same as embedded: one ``for`` loop per epoch, each yielding ``Batch``es.
Resume is the coordinator's lease log: a restarted trainer simply opens a new stream and
gets what is not yet committed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from mx8._agent_client import AgentStreamClient
from mx8._config import TrainerConfig
from mx8._stats import LoaderStats
from mx8.batch import Batch
from mx8_common.errors import ConfigError

__all__ = ["DynamicLoader"]


class DynamicLoader:
    """Batches of the coordinator's dynamic-mode job, served by the agent at ``agent``."""

    def __init__(
        self,
        agent: str,
        *,
        link: str | None = None,
        job: str | None = None,
        batch_size: int = 32,
        rank: int | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        self.agent = agent
        self.link = link
        env = TrainerConfig.from_env()
        # No job named: take the one job the host's agent serves.
        self.job = job or env.job_id or ""
        self.batch_size = batch_size
        self.local_rank = rank if rank is not None else env.local_rank
        self._timeout_s = timeout_s
        with self._client() as client:
            info = client.describe()
        self.job = self.job or info["job_id"]
        self.manifest_hash: str = info["manifest_hash"]
        self.total_samples: int = int(info["total_samples"])
        self.epochs: int = int(info["epochs"])
        self.classes: list[str] | None = info["class_names"] or None
        self._current: AgentStreamClient | None = None
        self._held: Batch | None = None  # the first batch of the next epoch's loop
        self._drained = False
        self._bytes = self._samples = self._batches = 0
        self._seconds = 0.0

    def _client(self) -> AgentStreamClient:
        return AgentStreamClient(
            self.agent,
            job_id=self.job,
            local_rank=self.local_rank,
            batch_size=self.batch_size,
            timeout_s=self._timeout_s,
        )

    def __iter__(self) -> Iterator[Batch]:
        """This trainer's batches of one epoch; the next ``for`` loop continues with the next.

        As in embedded mode, ``for epoch in range(E): for batch in loader:`` walks the job
        epoch by epoch. One stream to the agent serves every epoch: a loop ends when the
        first batch of a later epoch arrives, which is kept (unacknowledged) for the next
        loop. A batch of an earlier epoch that arrives late (work re-issued from a failed
        node) is yielded in the loop that is running, with its own ``batch.epoch``. After
        the job ends every further loop is empty at once.
        """
        if self._drained:
            return
        if self._current is None:
            self._current = self._client()
        client = self._current
        epoch: int | None = None
        while True:
            t0 = time.perf_counter()
            try:
                if self._held is not None:
                    batch, self._held = self._held, None
                else:
                    batch = next(client)
            except StopIteration:
                self._drained = True
                self.close()
                return
            finally:
                self._seconds += time.perf_counter() - t0
            if epoch is None:
                epoch = batch.epoch
            elif batch.epoch > epoch:
                self._held = batch
                return
            self._bytes += batch.nbytes
            self._samples += len(batch)
            self._batches += 1
            yield batch

    def __len__(self) -> int:
        raise TypeError(
            "a dynamic-mode loader has no fixed length: the coordinator balances work across "
            "nodes at run time; iterate until it ends (rank-exact mode, the coordinator's "
            "default, has len())"
        )

    def set_epoch(self, epoch: int) -> None:
        """No-op: in distributed mode the coordinator runs the epochs (``--epochs``)."""

    def state_dict(self) -> dict[str, Any]:
        """Distributed progress lives in the coordinator's lease log; this names the job."""
        return {"mode": "distributed", "manifest_hash": self.manifest_hash, "job": self.job}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("manifest_hash") != self.manifest_hash:
            raise ConfigError(
                f"this state belongs to snapshot {state.get('manifest_hash')}, but the "
                f"coordinator's job reads {self.manifest_hash}"
            )

    def stats(self) -> LoaderStats:
        return LoaderStats(self._bytes, self._samples, self._batches, self._seconds, 0)

    def close(self) -> None:
        """End the stream; batches not yet acknowledged go back to the host's trainers."""
        if self._current is not None:
            self._current.close()
            self._current = None
        self._held = None

    def __enter__(self) -> DynamicLoader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"DynamicLoader(agent={self.agent!r}, job={self.job!r}, "
            f"manifest_hash={self.manifest_hash[:12]}..., samples={self.total_samples})"
        )
