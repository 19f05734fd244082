"""The agent refuses objects overwritten after the snapshot's listing, as embedded mode does.

The coordinator names the listing time in its RegisterNode reply; the agent's reader sends
S3 GETs with ``If-Unmodified-Since`` it. A snapshot stored before mx8 kept the time sends 0:
the agent then checks sizes only, and says so at registration.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from support.agent import run_trainer
from support.api import make_s3_dataset
from support.eventually import assert_eventually
from support.logs import Events
from support.s3_clock import server_time

from mx8_common.errors import ObjectChangedError
from mx8_coordinator.config import CoordinatorConfig
from mx8_coordinator.server import Coordinator


@asynccontextmanager
async def _coordinator(link: str, store: Path) -> AsyncIterator[Coordinator]:
    config = CoordinatorConfig(
        dataset=link, listen="127.0.0.1:0", store=str(store), mode="dynamic", block_size=8
    )
    async with Coordinator(config) as coordinator:
        yield coordinator


async def _overwrite_same_size_later(
    s3_sync_client: Any, bucket: str, location: str, body: bytes, listed_at: float
) -> None:
    # A second later on S3's clock: HTTP dates (and S3's comparison) have whole seconds.
    await assert_eventually(lambda: server_time(s3_sync_client, bucket) > listed_at, timeout_s=5)
    key = location.removeprefix(f"s3://{bucket}/")
    s3_sync_client.put_object(Bucket=bucket, Key=key, Body=body)


async def test_agent_s3_same_size_overwrite_after_snapshot_fails_with_object_changed(
    tmp_path: Path,
    s3_sync_client: Any,
    s3_bucket: str,
    start_agent: Callable[..., Any],
    logs: Events,
) -> None:
    objects = make_s3_dataset(s3_sync_client, s3_bucket, "ds/", per_class=10)
    victim = sorted(objects)[12]
    async with _coordinator(f"s3://{s3_bucket}/ds/", tmp_path / "store") as coordinator:
        assert coordinator.job is not None
        listed_at = coordinator.job.spec.listed_at
        assert listed_at is not None
        body = objects[victim].upper()
        assert len(body) == len(objects[victim]) and body != objects[victim]
        await _overwrite_same_size_later(s3_sync_client, s3_bucket, victim, body, listed_at)
        logs.clear()
        agent = await start_agent(coordinator.address)
        run = await asyncio.to_thread(run_trainer, agent.url, batch_size=4)
        with pytest.raises(ObjectChangedError):
            await agent.result()
    (registered,) = [e for e in logs.named("node_registered") if e["component"] == "agent"]
    assert registered["listed_at"] == listed_at
    assert registered["changed_objects"] == "size-or-modified"
    assert isinstance(run.error, ObjectChangedError)
    assert run.error.location == victim
    assert "modified" in str(run.error) and "@refresh" in str(run.error)
    assert 12 not in run.ids  # the changed bytes never reached the trainer
    (event,) = logs.named("object_changed_since_snapshot")
    assert event["log_level"] == "error" and event["location"] == victim


async def test_agent_snapshot_without_listing_time_checks_sizes_only(
    tmp_path: Path,
    s3_sync_client: Any,
    s3_bucket: str,
    start_agent: Callable[..., Any],
    logs: Events,
) -> None:
    objects = make_s3_dataset(s3_sync_client, s3_bucket, "ds/", per_class=5)
    link, store = f"s3://{s3_bucket}/ds/", tmp_path / "store"
    async with _coordinator(link, store) as coordinator:
        assert coordinator.job is not None
        manifest_hash = coordinator.job.spec.manifest_hash
        listed_at = coordinator.job.spec.listed_at
        assert listed_at is not None
    # A snapshot stored before mx8 kept its listing time: the meta has none.
    meta_path = store / "by-hash" / f"{manifest_hash}.meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["listed_at"]
    meta_path.write_text(json.dumps(meta))
    victim = sorted(objects)[3]
    await _overwrite_same_size_later(
        s3_sync_client, s3_bucket, victim, objects[victim].upper(), listed_at
    )
    async with _coordinator(link, store) as coordinator:
        assert coordinator.job is not None and coordinator.job.spec.listed_at is None
        logs.clear()
        agent = await start_agent(coordinator.address)
        run = await asyncio.to_thread(run_trainer, agent.url, batch_size=4, keep_batches=True)
        await agent.result()
    (registered,) = [e for e in logs.named("node_registered") if e["component"] == "agent"]
    assert registered["listed_at"] is None and registered["changed_objects"] == "size-only"
    assert run.error is None, run.error
    payloads = {
        int(i): bytes(p) for b in run.batches for i, p in zip(b.sample_ids, b.payloads, strict=True)
    }
    # Unknown listing time: a same-size overwrite goes through (what docs/operations.md says).
    assert sorted(payloads) == list(range(10)) and payloads[3] == objects[victim].upper()
    assert not logs.named("object_changed_since_snapshot")
