"""``TrainerHub`` resumes: a reconnecting trainer_id gets its own batches back, in order."""

from __future__ import annotations

import asyncio

import pytest
from support.agent import make_batch, new_hub
from support.eventually import assert_eventually

from mx8_agent.serve.trainer_hub import TrainerHub
from mx8_common.errors import RequestError, TrainerResumeError


async def take(hub: TrainerHub, session, n: int) -> list[tuple[int, int]]:
    """``n`` batches for ``session`` as (batch_seq, first sample id)."""
    out = []
    for _ in range(n):
        seq, batch = await hub.next_for(session)
        out.append((seq, int(batch.sample_ids[0])))
    return out


async def test_trainer_hub_resume_resends_unacked_with_old_seqs_and_acks_consumed() -> None:
    hub, acked = new_hub()
    for k in range(6):
        hub.put(make_batch(k))
    a = hub.attach("t1", window=4)
    assert await take(hub, a, 4) == [(1, 0), (2, 4), (3, 8), (4, 12)]
    hub.ack(a, 1)
    hub.detach(a)  # the stream broke; the trainer had consumed batch 2 too (ack lost)
    b = hub.attach("t1", window=4, resume_after=2)
    assert [x.first_pos for x in acked] == [0, 4]
    assert b.samples_acked == 4
    # 3 and 4 again with their old numbers, then new ones continue at 5.
    assert await take(hub, b, 4) == [(3, 8), (4, 12), (5, 16), (6, 20)]
    hub.ack(b, 6)
    hub.finish()
    assert hub.drained and hub.held_bytes == 0
    assert await hub.next_for(b) is None


async def test_trainer_hub_resume_skips_batches_another_trainer_took() -> None:
    hub, acked = new_hub()
    for k in range(4):
        hub.put(make_batch(k))
    a = hub.attach("t1", window=2)
    other = hub.attach("t2", window=8)
    assert await take(hub, a, 2) == [(1, 0), (2, 4)]
    hub.detach(a)  # grace 0: both go back to the queue at once
    assert await take(hub, other, 1) == [(1, 0)]
    b = hub.attach("t1", window=2, resume_after=0)
    # Batch 2 was still queued: it comes back to t1; batch 1 now belongs to t2.
    assert await take(hub, b, 2) == [(2, 4), (3, 8)]
    assert acked == []


async def test_trainer_hub_resume_of_unknown_trainer_is_refused() -> None:
    hub, _ = new_hub()
    with pytest.raises(TrainerResumeError, match="restarted") as info:
        hub.attach("never-seen", window=4, resume_after=3)
    assert info.value.trainer_id == "never-seen"
    assert hub.sessions == []
    # A fresh stream (nothing consumed) of an unknown id is simply a new trainer.
    assert hub.attach("never-seen", window=4).next_seq == 1


async def test_trainer_hub_second_stream_of_live_trainer_replaces_first() -> None:
    hub, _ = new_hub()
    hub.put(make_batch(0))
    a = hub.attach("t1", window=1)
    assert await take(hub, a, 1) == [(1, 0)]
    waiting = asyncio.create_task(hub.next_for(a))  # at its window: waits for an ack
    await asyncio.sleep(0)
    b = hub.attach("t1", window=1, resume_after=0)
    with pytest.raises(RequestError, match="replaced this one"):
        await waiting
    with pytest.raises(RequestError, match="own trainer_id"):
        await hub.next_for(a)
    assert hub.sessions == [b]
    assert await take(hub, b, 1) == [(1, 0)]


async def test_trainer_hub_grace_keeps_parked_batches_from_others_until_it_ends() -> None:
    acked: list = []
    hub = TrainerHub(max_bytes=10_000, on_acked=acked.append, resume_grace_s=0.3)
    hub.put(make_batch(0))
    hub.put(make_batch(1))
    a = hub.attach("t1", window=2)
    await take(hub, a, 2)
    other = hub.attach("t2", window=4)
    hub.detach(a)
    assert hub.reserved_batches == 2 and not hub.drained
    got = asyncio.create_task(take(hub, other, 2))
    await asyncio.sleep(0.05)
    assert not got.done()  # parked for t1, not handed to t2 yet
    assert await got == [(1, 0), (2, 4)]  # the grace ended: t2 gets them, in order
    assert hub.requeued_batches == 2 and hub.reserved_batches == 0


async def test_trainer_hub_discard_lease_drops_parked_and_resend_batches() -> None:
    hub = TrainerHub(max_bytes=10_000, on_acked=lambda b: None, resume_grace_s=5.0)
    hub.put(make_batch(0, lease="L1"))
    hub.put(make_batch(1, lease="L2"))
    a = hub.attach("t1", window=2)
    await take(hub, a, 2)
    hub.detach(a)
    assert hub.discard_lease("L1") == 1
    b = hub.attach("t1", window=2)
    assert [seq for seq, _b in b.resend] == [2]
    assert hub.discard_lease("L2") == 1
    assert hub.held_bytes == 0 and hub.reserved_batches == 0
    hub.finish()
    await assert_eventually(lambda: hub.drained)
    assert await hub.next_for(b) is None
