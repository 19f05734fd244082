"""Run a DataLoader-with-workers check from a clean interpreter.

The pytest process has run in-process gRPC servers and clients by the time the DataLoader
tests run; forking it copies gRPC's live threads' state into the workers, which then crash
now and then (``fork_posix.cc: Other threads are currently calling into gRPC``). A trainer
script has no such servers, so the fork cases run where a trainer would: in a fresh
interpreter (spawned), whose DataLoader forks its workers.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
from typing import Any

__all__ = ["ids_and_labels", "torch_ids", "torch_ids_in_clean_process"]


def ids_and_labels(batch: Any) -> tuple[Any, Any]:
    """A collate_fn (module level, so workers of any start method can unpickle it)."""
    t = batch.to_torch()
    return t["sample_ids"], t["labels"]


def torch_ids(ds: Any, **kw: Any) -> list[list[int]]:
    """The ids of each batch of ``torch.utils.data.DataLoader(ds, batch_size=None, **kw)``."""
    import torch.utils.data

    out = []
    for item in torch.utils.data.DataLoader(ds, batch_size=None, **kw):
        ids = item[0] if isinstance(item, tuple | list) else item.sample_ids
        out.append([int(i) for i in ids])
    return out


def _child(
    link: str, loader_kw: dict[str, Any], dl_kw: dict[str, Any], read_first: dict[str, Any] | None
) -> tuple[list[list[int]], list[int] | None]:
    import mx8

    single = None
    if read_first is not None:  # the parent reads before its workers fork
        single = [int(i) for b in mx8.load(link, **read_first) for i in b.sample_ids]
    ds = mx8.DataLoader(link, collate_fn=ids_and_labels, **loader_kw)
    return torch_ids(ds, **dl_kw), single


def torch_ids_in_clean_process(
    link: str,
    loader_kw: dict[str, Any],
    dl_kw: dict[str, Any],
    *,
    read_first: dict[str, Any] | None = None,
    timeout_s: float = 180.0,
) -> tuple[list[list[int]], list[int] | None]:
    """``torch_ids(mx8.DataLoader(link, **loader_kw), **dl_kw)`` in a spawned interpreter
    (the environment is inherited), and the ids of ``mx8.load(link, **read_first)`` read
    there first when given."""
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
        return pool.submit(_child, link, loader_kw, dl_kw, read_first).result(timeout_s)
