"""``TrainerHub``: fair sharing, windows, acks, re-queue on disconnect, end of job, bytes."""

from __future__ import annotations

import asyncio

import pytest
from support.agent import make_batch, new_hub

from mx8_common.errors import ObjectChangedError, RequestError


async def test_trainer_hub_first_batch_size_wins() -> None:
    hub, _ = new_hub()
    hub.set_batch_size(32)
    hub.set_batch_size(32)
    with pytest.raises(RequestError, match=r"batch_size 16 differs from 32"):
        hub.set_batch_size(16)
    assert await hub.wait_batch_size() == 32


async def test_trainer_hub_waiting_trainers_are_served_in_turn() -> None:
    hub, _ = new_hub()
    a = hub.attach("a", window=8)
    b = hub.attach("b", window=8)
    got: list[str] = []

    async def pull(session, name: str, n: int) -> None:
        for _ in range(n):
            seq, _batch = await hub.next_for(session)
            got.append(name)
            hub.ack(session, seq)

    tasks = [asyncio.create_task(pull(a, "a", 3)), asyncio.create_task(pull(b, "b", 3))]
    await asyncio.sleep(0)
    for k in range(6):
        hub.put(make_batch(k))
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert sorted(got) == ["a"] * 3 + ["b"] * 3
    assert got[:2] in (["a", "b"], ["b", "a"])


async def test_trainer_hub_window_caps_unacked_batches() -> None:
    hub, acked = new_hub()
    s = hub.attach("a", window=2)
    for k in range(3):
        hub.put(make_batch(k))
    first = await hub.next_for(s)
    second = await hub.next_for(s)
    assert first is not None and second is not None
    third = asyncio.create_task(hub.next_for(s))
    await asyncio.sleep(0.01)
    assert not third.done()  # two unacked: the window is full
    assert hub.ack(s, first[0]) == 1
    result = await asyncio.wait_for(third, 1)
    assert result is not None and result[1].first_pos == 8
    assert [b.first_pos for b in acked] == [0]


async def test_trainer_hub_detach_requeues_unacked_at_front_in_order() -> None:
    hub, acked = new_hub()
    a = hub.attach("a", window=4)
    for k in range(4):
        hub.put(make_batch(k))
    seqs = [(await hub.next_for(a)) for _ in range(3)]
    hub.ack(a, seqs[0][0])
    hub.detach(a)
    assert hub.requeued_batches == 2
    b = hub.attach("b", window=4)
    order = []
    for _ in range(3):
        seq, batch = await hub.next_for(b)
        order.append(batch.first_pos)
        hub.ack(b, seq)
    assert order == [4, 8, 12]
    assert [x.first_pos for x in acked] == [0, 4, 8, 12]


async def test_trainer_hub_end_of_job_waits_for_every_ack() -> None:
    hub, _ = new_hub()
    a = hub.attach("a", window=4)
    b = hub.attach("b", window=4)
    hub.put(make_batch(0))
    seq, _ = await hub.next_for(a)
    hub.finish()
    waiting_b = asyncio.create_task(hub.next_for(b))
    await asyncio.sleep(0.01)
    assert not waiting_b.done()  # a may still leave and give its batch back
    hub.ack(a, seq)
    assert await asyncio.wait_for(waiting_b, 1) is None
    assert await hub.next_for(a) is None
    assert hub.drained


async def test_trainer_hub_wait_room_blocks_until_acks_free_bytes() -> None:
    hub, _ = new_hub(max_bytes=100)
    s = hub.attach("a", window=4)
    await hub.wait_room(1000)  # an empty hub always has room: no deadlock on big batches
    hub.put(make_batch(0, nbytes=80))
    room = asyncio.create_task(hub.wait_room(40))
    await asyncio.sleep(0.01)
    assert not room.done()
    seq, _ = await hub.next_for(s)
    assert not room.done()  # sent but unacknowledged still counts
    hub.ack(s, seq)
    await asyncio.wait_for(room, 1)
    assert hub.held_bytes == 0


async def test_trainer_hub_discard_lease_drops_its_queued_batches() -> None:
    hub, _ = new_hub()
    hub.put(make_batch(0, lease="L1"))
    hub.put(make_batch(1, lease="L2"))
    hub.put(make_batch(2, lease="L1"))
    assert hub.discard_lease("L1") == 2
    assert hub.queued_batches == 1
    assert hub.held_bytes == 40


async def test_trainer_hub_fail_reaches_waiting_and_later_trainers() -> None:
    hub, _ = new_hub()
    s = hub.attach("a", window=4)
    waiting = asyncio.create_task(hub.next_for(s))
    await asyncio.sleep(0)
    hub.fail(ObjectChangedError("s3://b/k changed", location="s3://b/k"))
    with pytest.raises(ObjectChangedError):
        await waiting
    with pytest.raises(ObjectChangedError):
        await hub.next_for(s)


async def test_trainer_hub_holds_batches_the_fence_refuses_until_redispatch() -> None:
    hub, _acked = new_hub()
    allowed = {"L1"}
    hub.deliverable = lambda batch: batch.lease_id in allowed
    hub.put(make_batch(0, lease="L2"))
    hub.put(make_batch(1, lease="L1"))
    session = hub.attach("t", window=4)
    # L2's batch is held; L1's (queued after it) goes first.
    first = await asyncio.wait_for(hub.next_for(session), 1)
    assert first is not None and first[1].lease_id == "L1"
    waiting = asyncio.ensure_future(hub.next_for(session))
    await asyncio.sleep(0)
    assert not waiting.done()
    allowed.add("L2")
    hub.redispatch()
    second = await asyncio.wait_for(waiting, 1)
    assert second is not None and second[1].lease_id == "L2"


async def test_trainer_hub_fenced_batches_dropped_when_the_lease_is_discarded() -> None:
    hub, _acked = new_hub()
    hub.deliverable = lambda batch: False
    hub.put(make_batch(0, lease="L2"))
    assert hub.queued_batches == 1
    assert hub.discard_lease("L2") == 1
    assert hub.queued_batches == 0 and hub.held_bytes == 0
