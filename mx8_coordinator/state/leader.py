"""Who leads a job whose lease log lives in a store: terms claimed by conditional create.

    <job>/terms/<term, 12 digits>   {"term", "holder", "address", "since_unix_ms"}
                                    created once (If-None-Match: *): one owner per term
    <job>/leader                    the leader record: the term's owner rewrites it every
                                    renew interval ({"term", ..., "renewals"})

A coordinator becomes leader by creating the next term object. It may only try when no
term exists yet (a new job), or after the leader record and the newest term stayed the
same for ``ttl_ms`` on its own monotonic clock (the leader stopped renewing). A standby
waits like that for as long as it takes; a coordinator started without ``--standby``
that sees the record change while it waits refuses to start (another one is alive). A
leader that shuts down cleanly marks its record released, and then nobody waits.

Renewal checks that no newer term exists, then rewrites the record. The leader only
counts as valid until ``renew_start + ttl/2``: a standby that saw a renewal start its TTL
after the write landed, so the old leader stops before anyone may take over (monotonic
clocks running at about the same rate; no wall-clock comparison). Validity alone is not
what keeps the log single-writer: segments are conditional creates by sequence number
(``store_log``), so a deposed leader's next write conflicts with the new term's first
segment whatever the clocks did.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

from mx8_common.errors import CoordinatorFencedError, LeaseLogError, TransientStorageError
from mx8_common.store import ManifestStore
from mx8_coordinator.state.node_registry import monotonic_ms

__all__ = ["LeaderElection", "LeaderRecord", "job_prefix"]


def job_prefix(job_id: str) -> str:
    """The folder of one job's log, terms and leader record in the state store."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", job_id)


@dataclass(frozen=True)
class LeaderRecord:
    """A term's owner, as its term object and the leader record hold it."""

    term: int
    holder: str
    address: str
    since_unix_ms: int
    renewals: int = 0
    #: Written by a leader that shut down cleanly: a standby may take over at once.
    released: bool = False

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> LeaderRecord:
        try:
            obj = json.loads(data)
            return cls(
                term=int(obj["term"]),
                holder=str(obj["holder"]),
                address=str(obj["address"]),
                since_unix_ms=int(obj["since_unix_ms"]),
                renewals=int(obj.get("renewals", 0)),
                released=bool(obj.get("released", False)),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise LeaseLogError(
                f"leader record {where} is unreadable ({exc}); it is not one an mx8 "
                "coordinator wrote: use another --state-dir or --job-id",
                path=where,
            ) from None

    @property
    def since(self) -> str:
        """When this term began (UTC, ISO 8601)."""
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.since_unix_ms / 1000))

    def describe(self) -> str:
        return f"{self.holder} at {self.address or '?'} (term {self.term}, since {self.since})"


class LeaderElection:
    """Claims and renews one job's leadership in a store; see the module docstring."""

    def __init__(
        self,
        store: ManifestStore,
        job_id: str,
        *,
        holder: str,
        address: str,
        ttl_ms: int,
        clock: Callable[[], int] = monotonic_ms,
    ) -> None:
        self.store = store
        self.job_id = job_id
        self.holder = holder
        self.address = address
        self.ttl_ms = ttl_ms
        self._clock = clock
        self._prefix = job_prefix(job_id)
        #: This coordinator's term once it leads (0 before).
        self.term = 0
        self.record: LeaderRecord | None = None
        #: The leader it replaced, if it took over a term from another coordinator.
        self.previous: LeaderRecord | None = None
        self._valid_until_ms = 0
        #: Why the last renewal failed ("" once one succeeds), for people.
        self.last_error = ""

    # -- layout ------------------------------------------------------------------------
    @property
    def leader_rel(self) -> str:
        return f"{self._prefix}/leader"

    def term_rel(self, term: int) -> str:
        return f"{self._prefix}/terms/{term:012d}"

    @property
    def renew_interval_ms(self) -> int:
        return max(10, self.ttl_ms // 5)

    @property
    def poll_interval_ms(self) -> int:
        return max(10, self.ttl_ms // 10)

    @property
    def valid_window_ms(self) -> int:
        """How long after a renewal starts this leader may still lease (below the TTL)."""
        return self.ttl_ms // 2

    # -- reading -----------------------------------------------------------------------
    async def latest_term(self) -> int:
        names = await self.store.list_objects(f"{self._prefix}/terms")
        terms = [int(n) for n in names if n.isdigit()]
        return max(terms, default=0)

    async def read_term(self, term: int) -> LeaderRecord | None:
        data = await self.store.read_object(self.term_rel(term))
        where = self.store.object_location(self.term_rel(term))
        return None if data is None else LeaderRecord.from_bytes(data, where)

    async def read_record(self) -> LeaderRecord | None:
        data = await self.store.read_object(self.leader_rel)
        where = self.store.object_location(self.leader_rel)
        return None if data is None else LeaderRecord.from_bytes(data, where)

    def fenced_error(self, newer: LeaderRecord | None, what: str) -> CoordinatorFencedError:
        owner = newer.describe() if newer is not None else "a coordinator with a newer term"
        return CoordinatorFencedError(
            f"another coordinator owns job {self.job_id!r}: {owner}; this one (term "
            f"{self.term}) was deposed and {what}: it leases nothing more and exits",
            path=self.store.object_location(self._prefix),
            job_id=self.job_id,
            term=self.term,
        )

    # -- becoming leader ---------------------------------------------------------------
    async def claim(
        self, *, standby: bool, on_wait: Callable[[LeaderRecord | None], None] | None = None
    ) -> int:
        """Wait until this coordinator may take the next term, take it, return it.

        Without ``standby``, a leader record that changes while this one waits is
        another live coordinator: ``CoordinatorFencedError`` ("another coordinator owns
        job X since T").
        """
        observed: tuple[int, bytes | None] | None = None
        since = self._clock()
        waiting_told = False
        while True:
            try:
                latest = await self.latest_term()
                body = await self.store.read_object(self.leader_rel)
            except TransientStorageError as exc:
                # The store is away: not seeing the leader says nothing about it, so the
                # wait starts over once the store answers (a standby survives the blip).
                self.last_error = str(exc)
                since = self._clock()
                await asyncio.sleep(self.poll_interval_ms / 1000)
                continue
            now = self._clock()
            if latest == 0:
                if await self._take(1):
                    return self.term
                observed = None
                continue
            where = self.store.object_location(self.leader_rel)
            record = None if body is None else LeaderRecord.from_bytes(body, where)
            if record is not None and record.released and record.term == latest:
                # The leader shut down cleanly: no need to wait out its TTL.
                self.previous = record
                if await self._take(latest + 1):
                    return self.term
                observed = None
                continue
            if (latest, body) != observed:
                if observed is not None and not standby:
                    current = await self.read_record() or await self.read_term(latest)
                    since = current.since if current is not None else "?"
                    owner = current.describe() if current is not None else f"term {latest}"
                    raise CoordinatorFencedError(
                        f"another coordinator owns job {self.job_id!r} since {since}: "
                        f"{owner} renews its leader record; stop it, or start this one "
                        "with --standby",
                        path=self.store.object_location(self._prefix),
                        job_id=self.job_id,
                        term=latest,
                    )
                observed, since = (latest, body), now
                if not waiting_told and on_wait is not None:
                    waiting_told = True
                    on_wait(await self.read_record() or await self.read_term(latest))
            elif now - since >= self.ttl_ms:
                self.previous = await self.read_record() or await self.read_term(latest)
                if await self._take(latest + 1):
                    return self.term
                observed = None  # another standby won this term: watch the new leader
                continue
            await asyncio.sleep(self.poll_interval_ms / 1000)

    async def _take(self, term: int) -> bool:
        started = self._clock()
        record = LeaderRecord(
            term=term,
            holder=self.holder,
            address=self.address,
            since_unix_ms=int(time.time() * 1000),
        )
        if not await self.store.create_object(self.term_rel(term), record.to_bytes()):
            return False
        self.term, self.record = term, record
        self._valid_until_ms = started + self.valid_window_ms
        await self.store.replace_object(self.leader_rel, record.to_bytes())
        return True

    # -- staying leader ----------------------------------------------------------------
    def valid(self) -> bool:
        """Whether this coordinator may still hand out leases (its term is not at risk)."""
        return self.term > 0 and self._clock() < self._valid_until_ms

    async def renew(self) -> None:
        """Check no newer term exists, rewrite the record, extend validity.

        ``CoordinatorFencedError`` when a newer term exists; store errors propagate
        (validity then runs out on its own).
        """
        assert self.record is not None, "renew() before claim()"
        started = self._clock()
        newer = await self.read_term(self.term + 1)
        if newer is not None:
            self._valid_until_ms = 0
            raise self.fenced_error(newer, "found its term taken at renewal")
        self.record = replace(self.record, renewals=self.record.renewals + 1)
        await self.store.replace_object(self.leader_rel, self.record.to_bytes())
        self._valid_until_ms = max(self._valid_until_ms, started + self.valid_window_ms)
        self.last_error = ""

    async def release(self) -> None:
        """Stop leasing and mark the record released, so a standby takes over at once
        (a clean shutdown, after the log is closed). Nothing if the term was lost."""
        self.stop()
        if self.record is None or await self.read_term(self.term + 1) is not None:
            return
        self.record = replace(self.record, released=True)
        await self.store.replace_object(self.leader_rel, self.record.to_bytes())

    def stop(self) -> None:
        """Lease nothing more (shutdown or fencing)."""
        self._valid_until_ms = 0
