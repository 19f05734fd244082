"""External sort: spilled runs merge back into exactly the sorted input."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from mx8_common.snapshot.external_sort import ExternalSorter


@pytest.mark.parametrize(("n", "per_run"), [(0, 5), (7, 100), (1000, 1), (1000, 64), (5000, 999)])
def test_external_sorter_merges_runs_in_order(tmp_path: Path, n: int, per_run: int) -> None:
    rng = random.Random(n * 31 + per_run)
    items = [(f"k/{rng.randrange(10**9):09d}/é{i}", rng.randrange(1, 10**6)) for i in range(n)]
    shuffled = items[:]
    rng.shuffle(shuffled)
    with ExternalSorter(keys_per_run=per_run, directory=tmp_path) as sorter:
        for start in range(0, n, 37):  # pages of an odd size
            sorter.add(shuffled[start : start + 37])
        merged = list(sorter.merged())
        # Below one full run nothing touches disk; above it the remainder is a last run.
        expected_runs = 0 if n < per_run else n // per_run + (1 if n % per_run else 0)
        assert sorter.runs == expected_runs
    assert merged == sorted(items)
    assert list(tmp_path.iterdir()) == []  # run files removed


def test_external_sorter_rejects_tab_keys(tmp_path: Path) -> None:
    with ExternalSorter(keys_per_run=2, directory=tmp_path) as sorter, pytest.raises(ValueError):
        sorter.add([("a\tb", 1)])


def test_external_sorter_keeps_duplicates_for_caller_to_reject(tmp_path: Path) -> None:
    with ExternalSorter(keys_per_run=1, directory=tmp_path) as sorter:
        sorter.add([("b", 1), ("a", 2), ("b", 1)])
        assert list(sorter.merged()) == [("a", 2), ("b", 1), ("b", 1)]
