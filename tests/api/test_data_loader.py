"""mx8.DataLoader: plain iteration, collate_fn, pickling and torch DataLoader workers."""

from __future__ import annotations

import pickle
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.utils.data
from support.api import collect, engine_threads, flat, make_local_dataset, make_s3_dataset
from support.clean_process import torch_ids_in_clean_process
from support.eventually import assert_eventually_blocking

import mx8
from mx8.batch import Batch


@pytest.fixture
def link(tmp_path: Path, store_root: str) -> str:
    root = tmp_path / "data"
    make_local_dataset(root, per_class=20)  # 60 samples
    return str(root)


def ids_and_labels(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """A collate_fn (module level, so spawned workers can unpickle it)."""
    t = batch.to_torch()
    return t["sample_ids"], t["labels"]


def torch_ids(ds: mx8.DataLoader, **kw: Any) -> list[list[int]]:
    dl = torch.utils.data.DataLoader(ds, batch_size=None, **kw)
    out = []
    for item in dl:
        ids = item[0] if isinstance(item, tuple | list) else item.sample_ids  # torch: tuple -> list
        out.append([int(i) for i in ids])
    return out


def test_data_loader_is_an_iterable_dataset_with_len_hash_and_classes(link: str) -> None:
    ds = mx8.DataLoader(link, batch_size=8)
    assert isinstance(ds, torch.utils.data.IterableDataset)
    assert len(ds) == 8
    assert ds.manifest_hash == mx8.load(link).manifest_hash
    assert ds.classes == ["ant", "bee", "cat"]
    assert flat(collect(ds)) == list(range(60))


def test_data_loader_collate_fn_is_applied_per_batch(link: str) -> None:
    ds = mx8.DataLoader(link, batch_size=16, collate_fn=ids_and_labels)
    items = list(ds)
    assert len(items) == 4
    ids = torch.cat([i for i, _ in items])
    labels = torch.cat([lab for _, lab in items])
    assert ids.dtype == labels.dtype == torch.int64
    assert ids.tolist() == list(range(60))
    assert labels.tolist() == [0] * 20 + [1] * 20 + [2] * 20


# 3 workers on a 2-core runner: torch warns about oversubscription; the split is the point.
@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
@pytest.mark.parametrize("num_workers", [1, 2, 3])
def test_data_loader_torch_workers_yield_each_id_once_in_single_process_order(
    link: str, num_workers: int
) -> None:
    single = torch_ids(mx8.DataLoader(link, batch_size=7, shuffle=True, seed=4), num_workers=0)
    ds = mx8.DataLoader(link, batch_size=7, shuffle=True, seed=4)
    multi = torch_ids(ds, num_workers=num_workers)
    counts = Counter(flat(multi))
    assert set(counts.values()) == {1}
    assert sorted(counts) == list(range(60))
    assert multi == single  # torch's round-robin merge of the strided workers
    assert len(torch.utils.data.DataLoader(ds, batch_size=None)) == len(ds) == len(multi)


def test_data_loader_torch_workers_follow_set_epoch(link: str) -> None:
    ds = mx8.DataLoader(link, batch_size=10, shuffle=True, seed=9)
    epoch0 = torch_ids(ds, num_workers=2)
    ds.set_epoch(1)
    epoch1 = torch_ids(ds, num_workers=2)
    assert epoch0 != epoch1
    assert sorted(flat(epoch0)) == sorted(flat(epoch1)) == list(range(60))
    assert epoch1 == collect(mx8.load(link, batch_size=10, shuffle=True, seed=9, epoch=1))


def test_data_loader_torch_workers_resume_from_a_loaded_state(link: str) -> None:
    full = collect(mx8.load(link, batch_size=6, shuffle=True, seed=2))
    first = mx8.DataLoader(link, batch_size=6, shuffle=True, seed=2)
    it = iter(first)
    next(it)
    next(it)
    next(it)
    state = first.state_dict()
    it.close()
    resumed = mx8.DataLoader(link, batch_size=6, shuffle=True, seed=2)
    resumed.load_state_dict(state)
    assert torch_ids(resumed, num_workers=2) == full[3:]


def test_data_loader_workers_over_s3_yield_each_id_once(
    s3_sync_client: Any, s3_bucket: str, store_root: str
) -> None:
    make_s3_dataset(s3_sync_client, s3_bucket, "p/", per_class=12)
    link = f"s3://{s3_bucket}/p/"
    # Forked workers, from a parent like a trainer's (see support.clean_process).
    multi, _ = torch_ids_in_clean_process(link, {"batch_size": 5}, {"num_workers": 2})
    assert sorted(flat(multi)) == list(range(24))
    ds = mx8.DataLoader(link, batch_size=5, collate_fn=ids_and_labels)
    assert multi == torch_ids(ds, num_workers=0)  # workers did not consume the parent's epoch


@pytest.mark.parametrize("context", ["fork", "spawn"])
@pytest.mark.parametrize("parent_read_first", [False, True])
def test_data_loader_workers_over_s3_native_client_each_id_once(
    s3_sync_client: Any, s3_bucket: str, store_root: str, context: str, parent_read_first: bool
) -> None:
    # The native client's runtime threads do not survive fork: workers forked before the
    # parent's first read build their own, workers forked after it read through botocore.
    objects = make_s3_dataset(s3_sync_client, s3_bucket, "n/", per_class=8)
    link = f"s3://{s3_bucket}/n/"
    # The parent is a fresh interpreter, like a trainer's (see support.clean_process).
    multi, single = torch_ids_in_clean_process(
        link,
        {"batch_size": 4},
        {"num_workers": 2, "multiprocessing_context": context, "timeout": 60},
        read_first={"batch_size": 4} if parent_read_first else None,
    )
    assert Counter(flat(multi)) == Counter(range(len(objects)))
    if single is not None:
        assert sorted(flat(multi)) == sorted(single)


def test_data_loader_pickles_without_its_loader_and_reads_the_same_snapshot(link: str) -> None:
    ds = mx8.DataLoader(link, batch_size=9, shuffle=True, seed=1, collate_fn=ids_and_labels)
    it = iter(ds)
    next(it)  # a running engine must not travel with the pickle
    blob = pickle.dumps(ds)
    it.close()
    # The folder changes after the parent resolved it: the copy must still read the
    # snapshot the parent resolved (pinned by hash), not index the folder again.
    (Path(link) / "ant" / "new.bin").write_bytes(b"late arrival\n")
    copy = pickle.loads(blob)
    assert copy._loader is None
    assert copy.manifest_hash == ds.manifest_hash
    assert [i.tolist() for i, _ in copy] == collect(
        mx8.load(link, batch_size=9, shuffle=True, seed=1)
    )[1:]
    assert copy.loader.manifest_hash == ds.manifest_hash


def test_data_loader_spawned_workers_yield_each_id_once(link: str) -> None:
    ds = mx8.DataLoader(link, batch_size=12, collate_fn=ids_and_labels)
    multi = torch_ids(ds, num_workers=2, multiprocessing_context="spawn")
    assert multi == collect(mx8.load(link, batch_size=12))


def test_data_loader_abandoned_loop_stops_the_engine(link: str) -> None:
    ds = mx8.DataLoader(link, batch_size=4)
    for _ in ds:
        break
    assert_eventually_blocking(lambda: not engine_threads())
    with ds:
        pass
    assert ds.stats()["batches"] == 1


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_data_loader_persistent_workers_yield_every_epoch_in_full(link: str, context: str) -> None:
    ds = mx8.DataLoader(link, batch_size=7, shuffle=True, seed=3)
    dl = torch.utils.data.DataLoader(
        ds,
        batch_size=None,
        num_workers=2,
        persistent_workers=True,
        multiprocessing_context=context,
        timeout=60,
    )
    epochs = []
    for epoch in range(3):
        ds.set_epoch(epoch)
        epochs.append([[int(i) for i in b.sample_ids] for b in dl])
    assert [len(flat(e)) for e in epochs] == [60, 60, 60]
    for epoch, got in enumerate(epochs):
        assert Counter(flat(got)) == dict.fromkeys(range(60), 1)
        assert got == collect(mx8.load(link, batch_size=7, shuffle=True, seed=3, epoch=epoch))
    assert epochs[0] != epochs[1]


def test_data_loader_persistent_workers_restart_an_abandoned_epoch(link: str) -> None:
    ds = mx8.DataLoader(link, batch_size=5)
    dl = torch.utils.data.DataLoader(
        ds, batch_size=None, num_workers=2, persistent_workers=True, timeout=60
    )
    for _ in dl:
        break  # the workers' loops of this epoch are left open
    ds.set_epoch(0)
    assert collect(dl) == collect(mx8.load(link, batch_size=5))


def test_data_loader_state_after_plain_torch_workers_is_refused_not_stale(link: str) -> None:
    ds = mx8.DataLoader(link, batch_size=4)
    it = iter(torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2, timeout=60))
    for _ in range(5):
        next(it)
    with pytest.raises(mx8.ConfigError, match="StatefulDataLoader"):
        ds.state_dict()
    del it
    ds.set_epoch(1)  # a new epoch's start is known again
    assert ds.state_dict()["epoch"] == 1
    assert ds.state_dict()["position"] == 0


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
@pytest.mark.parametrize(("num_workers", "consumed"), [(0, 5), (2, 5), (2, 6), (3, 1)])
def test_data_loader_stateful_data_loader_resumes_exactly(
    link: str, num_workers: int, consumed: int
) -> None:
    from torchdata.stateful_dataloader import StatefulDataLoader

    full = collect(mx8.load(link, batch_size=4, shuffle=True, seed=5))
    kw: dict[str, Any] = {"batch_size": None, "num_workers": num_workers}
    if num_workers:
        kw["timeout"] = 60
    first = StatefulDataLoader(mx8.DataLoader(link, batch_size=4, shuffle=True, seed=5), **kw)
    it = iter(first)
    head = [[int(i) for i in next(it).sample_ids] for _ in range(consumed)]
    state = first.state_dict()
    del it
    assert head == full[:consumed]

    ds = mx8.DataLoader(link, batch_size=4, shuffle=True, seed=5)
    resumed = StatefulDataLoader(ds, **kw)
    resumed.load_state_dict(state)
    assert collect(resumed) == full[consumed:]
    ds.set_epoch(1)  # the next epoch runs whole, from the parent's epoch
    assert collect(resumed) == collect(mx8.load(link, batch_size=4, shuffle=True, seed=5, epoch=1))


def test_data_loader_worker_state_is_refused_outside_its_worker(link: str) -> None:
    ds = mx8.DataLoader(link, batch_size=4)
    state = {**ds.state_dict(), "worker": {"id": 1, "num_workers": 2, "next_batch": 3}}
    with pytest.raises(mx8.ConfigError, match="worker 1"):
        ds.load_state_dict(state)
