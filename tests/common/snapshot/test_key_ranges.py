"""Split-point guesses: always strictly inside the range, in order, within budget."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mx8_common.snapshot.key_ranges import (
    child_dir,
    common_length,
    fanout_points,
    in_range,
    scope_dir,
    thin,
)

_keys = st.text(alphabet="ab09/-._é日", min_size=1, max_size=8)


def test_fanout_points_on_numbered_keys_step_one_digit_at_a_time() -> None:
    sample = [f"p/obj-{i:08d}.bin" for i in range(0, 1000, 50)] + ["p/obj-00000999.bin"]
    points = fanout_points("p/obj-00000999.bin", None, sample, floor=2, budget=12)
    assert points[:9] == [f"p/obj-0000{d}" for d in "123456789"]
    assert points[9:] == ["p/obj-0001", "p/obj-0002", "p/obj-0003"]


def test_fanout_points_stay_below_upto_and_inside_the_folder() -> None:
    sample = ["d/x/a10", "d/x/a19"]
    points = fanout_points("d/x/a19", "d/x/a5", sample, floor=4, budget=50)
    assert points and all("d/x/a19" < p < "d/x/a5" and p.startswith("d/x/") for p in points)


@given(
    cursor=_keys,
    upto=st.none() | _keys,
    sample=st.lists(_keys, min_size=1, max_size=20),
    floor=st.integers(0, 3),
    budget=st.integers(0, 40),
)
def test_fanout_points_are_strictly_inside_the_range_sorted_and_within_budget(
    cursor: str, upto: str | None, sample: list[str], floor: int, budget: int
) -> None:
    points = fanout_points(cursor, upto, sorted(sample), floor, budget)
    assert len(points) <= budget
    assert points == sorted(set(points))
    assert all(p > cursor and (upto is None or p < upto) for p in points)


def test_thin_keeps_the_first_and_spreads_evenly() -> None:
    points = [f"p{i:03d}" for i in range(100)]
    assert thin(points, 4) == ["p000", "p025", "p050", "p075"]
    assert thin(points[:3], 10) == points[:3]
    assert thin(points, 0) == []


def test_in_range_drops_points_on_or_outside_the_bounds() -> None:
    assert in_range(["b", "a", "c", "b", "e"], "a", "e") == ["b", "c"]
    assert in_range(["b"], None, None) == ["b"]


def test_scope_and_child_folders() -> None:
    assert scope_dir("r/", "r/a/b/1", "r/a/c/") == "r/a/"
    assert scope_dir("r/", "r/a/1", "r/b") == "r/"
    assert scope_dir("r/", "r/a/1", None) == "r/"
    assert child_dir("r/", "r/a/b/1") == "r/a/"
    assert child_dir("r/a/", "r/a/1") is None
    assert common_length("abc", "abd") == 2 and common_length("ab", "abc") == 2
