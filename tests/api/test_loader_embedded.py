"""mx8.load in embedded mode over a local folder and over the S3-protocol server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.api import collect, engine_threads, flat, make_local_dataset, make_s3_dataset
from support.eventually import assert_eventually_blocking

import mx8


@dataclass
class Dataset:
    link: str
    contents: dict[str, bytes]  # location -> bytes

    @property
    def size(self) -> int:
        return len(self.contents)


@pytest.fixture(params=["local", "s3"])
def dataset(request: pytest.FixtureRequest, tmp_path: Path, store_root: str) -> Dataset:
    if request.param == "local":
        root = tmp_path / "data"
        return Dataset(str(root), make_local_dataset(root))
    client = request.getfixturevalue("s3_sync_client")
    bucket = request.getfixturevalue("s3_bucket")
    return Dataset(f"s3://{bucket}/ds/", make_s3_dataset(client, bucket, "ds/"))


@pytest.fixture
def local(tmp_path: Path, store_root: str) -> Dataset:
    root = tmp_path / "local"
    return Dataset(str(root), make_local_dataset(root, per_class=40))


def test_load_every_sample_exactly_once_with_its_bytes_and_label(dataset: Dataset) -> None:
    loader = mx8.load(dataset.link, batch_size=7)
    seen: dict[str, bytes] = {}
    batches = 0
    for batch in loader:
        batches += 1
        assert batch.epoch == 0
        assert batch.labels is not None
        for sid, payload, label in zip(batch.sample_ids, batch.payloads, batch.labels, strict=True):
            location = loader.table.location(int(sid))
            assert location not in seen
            seen[location] = payload
            # imagefolder labels: the class folder's position among the sorted classes.
            class_name = location.rsplit("/", 2)[-2]
            assert loader.classes[int(label)] == class_name
    assert seen == dataset.contents
    assert batches == len(loader) == -(-dataset.size // 7)
    stats = loader.stats()
    assert stats.samples == dataset.size
    assert stats.bytes == sum(len(v) for v in dataset.contents.values())
    assert stats.batches == batches
    assert list(loader) == []  # iterating consumes the epoch


def test_load_same_order_twice_and_shuffle_reproducible_per_seed_and_epoch(
    dataset: Dataset,
) -> None:
    def order(**kw: Any) -> list[list[int]]:
        return collect(mx8.load(dataset.link, batch_size=8, **kw))

    plain = order()
    assert plain == order()
    assert flat(plain) == list(range(dataset.size))  # unshuffled: manifest order
    shuffled = order(shuffle=True, seed=1, epoch=0)
    assert shuffled == order(shuffle=True, seed=1, epoch=0)
    assert sorted(flat(shuffled)) == list(range(dataset.size))
    assert shuffled != plain
    assert shuffled != order(shuffle=True, seed=1, epoch=1)
    assert shuffled != order(shuffle=True, seed=2, epoch=0)


def test_loader_set_epoch_restarts_with_the_new_epochs_order(local: Dataset) -> None:
    loader = mx8.load(local.link, batch_size=16, shuffle=True, seed=3)
    first = collect(loader)
    loader.set_epoch(1)
    second = collect(loader)
    assert first != second
    assert sorted(flat(first)) == sorted(flat(second)) == list(range(local.size))
    assert second == collect(mx8.load(local.link, batch_size=16, shuffle=True, seed=3, epoch=1))


@pytest.mark.parametrize("drop_last", [False, True])
def test_load_four_ranks_are_disjoint_cover_the_epoch_and_have_equal_batches(
    dataset: Dataset, drop_last: bool
) -> None:
    world = 4
    per_rank = [
        collect(
            mx8.load(
                dataset.link,
                batch_size=3,
                shuffle=True,
                seed=5,
                rank=r,
                world_size=world,
                drop_last=drop_last,
            )
        )
        for r in range(world)
    ]
    assert len({len(batches) for batches in per_rank}) == 1  # DDP never waits on a rank
    ids = [i for batches in per_rank for b in batches for i in b]
    counts = Counter(ids)
    n = dataset.size
    if drop_last:
        assert len(ids) == len(counts) == n - n % world  # disjoint, only the tail cut
    else:
        assert set(counts) == set(range(n))  # union is everything
        assert len(ids) == -(-n // world) * world  # padded by repeating a few samples
        assert sum(c - 1 for c in counts.values()) == len(ids) - n


def test_load_rank_and_world_size_come_from_the_environment(
    local: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    from_env = collect(mx8.load(local.link, batch_size=5))
    explicit = collect(mx8.load(local.link, batch_size=5, rank=1, world_size=2))
    assert from_env == explicit
    assert flat(from_env) == list(range(1, local.size, 2))


def test_loader_stopping_early_resumes_where_it_stopped(local: Dataset) -> None:
    loader = mx8.load(local.link, batch_size=10)
    it = iter(loader)
    head = [next(it).sample_ids.tolist() for _ in range(3)]
    it.close()  # the loop ends early: the engine stops, the position stays
    assert_eventually_blocking(lambda: not engine_threads())
    rest = collect(loader)
    assert flat(head + rest) == list(range(local.size))


_RESUME_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import mx8

    link, state = sys.argv[1], json.loads(sys.argv[2])
    loader = mx8.load(link, batch_size=6, shuffle=True, seed=11)
    loader.load_state_dict(state)
    print(json.dumps([int(i) for b in loader for i in b.sample_ids]))
    """
)


def test_loader_state_dict_restored_in_a_new_process_yields_exactly_the_rest(
    dataset: Dataset,
) -> None:
    full = flat(collect(mx8.load(dataset.link, batch_size=6, shuffle=True, seed=11)))
    loader = mx8.load(dataset.link, batch_size=6, shuffle=True, seed=11)
    it = iter(loader)
    taken = [int(i) for _ in range(2) for i in next(it).sample_ids]
    state = loader.state_dict()
    it.close()
    assert state["manifest_hash"] == loader.manifest_hash
    assert state["position"] == 12
    out = subprocess.run(
        [sys.executable, "-c", _RESUME_SCRIPT, dataset.link, json.dumps(state)],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ.copy(),
        check=False,
    )
    assert out.returncode == 0, out.stderr
    rest = json.loads(out.stdout.strip().splitlines()[-1])
    assert taken == full[:12]
    assert rest == full[12:]


def test_loader_state_of_another_snapshot_is_a_clear_error(local: Dataset, tmp_path: Path) -> None:
    other_root = tmp_path / "other"
    make_local_dataset(other_root, classes=("x", "y"), per_class=3)
    state = mx8.load(str(other_root), batch_size=4).state_dict()
    loader = mx8.load(local.link, batch_size=4)
    with pytest.raises(mx8.ConfigError, match=r"belongs to snapshot .*@sha256:"):
        loader.load_state_dict(state)


def test_load_deleted_object_mid_epoch_raises_in_consumer_and_engine_exits(
    dataset: Dataset, s3_sync_client_or_none: Any
) -> None:
    # A tiny byte budget keeps the engine only a few ~24-byte samples ahead of the consumer,
    # so the last object is surely still unread when it is deleted.
    loader = mx8.load(dataset.link, batch_size=2, fetch_concurrency=2, max_inflight_bytes=48)
    last = loader.table.location(dataset.size - 1)
    it = iter(loader)
    next(it)
    assert engine_threads()
    if last.startswith("s3://"):
        bucket, key = last[len("s3://") :].split("/", 1)
        s3_sync_client_or_none.delete_object(Bucket=bucket, Key=key)
    else:
        os.unlink(last)
    with pytest.raises(mx8.ObjectNotFoundError) as info:
        for _ in it:
            pass
    assert info.value.location == last
    assert_eventually_blocking(lambda: not engine_threads())


@pytest.fixture
def s3_sync_client_or_none(request: pytest.FixtureRequest, dataset: Dataset) -> Any:
    if dataset.link.startswith("s3://"):
        return request.getfixturevalue("s3_sync_client")
    return None


def test_load_changed_object_raises_object_changed(local: Dataset) -> None:
    loader = mx8.load(local.link, batch_size=4, fetch_concurrency=2, max_inflight_bytes=48)
    last = loader.table.location(local.size - 1)
    it = iter(loader)
    next(it)
    Path(last).write_bytes(b"a different length than before, surely\n" * 3)
    with pytest.raises(mx8.ObjectChangedError):
        list(it)
    assert_eventually_blocking(lambda: not engine_threads())


def test_loader_close_mid_epoch_stops_the_engine(local: Dataset) -> None:
    loader = mx8.load(local.link, batch_size=3)
    it = iter(loader)
    next(it)
    assert engine_threads()
    loader.close()
    loader.close()  # idempotent
    assert_eventually_blocking(lambda: not engine_threads())
    assert list(it) == []


def test_loader_abandoned_iterator_is_cleaned_up_by_gc(local: Dataset) -> None:
    def take_one() -> None:
        it = iter(mx8.load(local.link, batch_size=3))
        next(it)

    take_one()
    assert_eventually_blocking(lambda: not engine_threads())


@pytest.mark.parametrize("link", ["relative/folder", "s3://", "ftp://host/data", "/abs@sha256:xyz"])
def test_load_bad_link_raises_link_error(link: str, store_root: str) -> None:
    with pytest.raises(mx8.LinkError):
        mx8.load(link)
