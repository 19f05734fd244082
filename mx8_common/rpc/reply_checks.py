"""Checks of what a coordinator answers, at the node's side of the wire.

A node trusts no field of a reply before it is checked: a manifest hash becomes a file
name (cached ingest), a block size a divisor, a lease range a loop bound. A reply that
fails a check raises ``CoordinatorReplyError`` naming the field, so the agent fails
closed with one line (``coordinator_reply_invalid``) instead of a traceback or a write
outside its directories.

``listed_at_unix_s`` (the snapshot's listing time) decides which objects a read refuses
as changed: a value far in the future would silently turn that check off, one before
S3 existed would refuse every object, so either fails closed. 0 means unknown (an older
coordinator, a snapshot stored before mx8 kept the time): sizes are then checked only.
"""

from __future__ import annotations

import math
import time
from typing import Any

from mx8_common.errors import CoordinatorReplyError, StoreError
from mx8_common.sample_order import MAX_BLOCK_SIZE
from mx8_common.store.base import check_hash

__all__ = ["LISTED_AT_FUTURE_MARGIN_S", "check_lease", "check_registration"]

#: How far past this host's clock a listing time may lie (clock skew between the storage,
#: the coordinator's host and this one) before it is refused.
LISTED_AT_FUTURE_MARGIN_S = 86400.0
#: 2000-01-01T00:00:00Z: no snapshot was listed before it.
_EARLIEST_LISTING_S = 946684800.0


def _bad(field: str, value: object, why: str) -> CoordinatorReplyError:
    return CoordinatorReplyError(
        f"the coordinator answered {field}={value!r}: {why}; it is broken or not an mx8 "
        "coordinator of this version: fix or restart it",
        field=field,
    )


def check_registration(reply: Any, *, now: float | None = None) -> Any:
    """``reply`` (a ``RegisterNodeResponse``) if every field is usable, else raise.

    ``now`` (Unix seconds, default this host's clock) bounds ``listed_at_unix_s``.
    """
    try:
        check_hash(reply.manifest_hash)
    except StoreError:
        raise _bad("manifest_hash", reply.manifest_hash, "not 64 lowercase hex digits") from None
    if reply.block_size <= 0 or reply.block_size > MAX_BLOCK_SIZE:
        raise _bad("block_size", reply.block_size, f"not in [1, {MAX_BLOCK_SIZE}]")
    if reply.heartbeat_interval_ms <= 0:
        raise _bad("heartbeat_interval_ms", reply.heartbeat_interval_ms, "not positive")
    if reply.lease_ttl_ms <= 0:
        raise _bad("lease_ttl_ms", reply.lease_ttl_ms, "not positive")
    if reply.world_size and reply.rank >= reply.world_size:
        raise _bad("rank", reply.rank, f"not below world_size {reply.world_size}")
    if reply.epochs <= 0:
        raise _bad("epochs", reply.epochs, "not positive")
    _check_listed_at(reply.listed_at_unix_s, time.time() if now is None else now)
    return reply


def _check_listed_at(listed_at: float, now: float) -> None:
    if listed_at == 0:
        return  # unknown: size checks only
    if not math.isfinite(listed_at):
        raise _bad("listed_at_unix_s", listed_at, "not a finite time")
    if listed_at < _EARLIEST_LISTING_S:
        raise _bad("listed_at_unix_s", listed_at, "before 2000-01-01, not a listing time")
    if listed_at > now + LISTED_AT_FUTURE_MARGIN_S:
        raise _bad(
            "listed_at_unix_s",
            listed_at,
            f"{listed_at - now:.0f} s ahead of this host's clock (over the "
            f"{LISTED_AT_FUTURE_MARGIN_S:.0f} s allowed for skew; check the clocks)",
        )


def check_lease(lease: Any, *, total_samples: int) -> None:
    """Raise unless ``lease`` (a ``Lease``) lies inside the manifest."""
    if not lease.lease_id:
        raise _bad("lease_id", lease.lease_id, "empty")
    r = lease.range
    if r.start_id > r.end_id:
        raise _bad("range", (r.start_id, r.end_id), "start after end")
    if r.end_id > total_samples:
        raise _bad("range", (r.start_id, r.end_id), f"past the manifest's {total_samples} samples")
    if not r.start_id <= lease.cursor <= r.end_id:
        raise _bad("cursor", lease.cursor, f"outside the lease [{r.start_id}, {r.end_id}]")
