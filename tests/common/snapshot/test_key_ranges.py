"""Split-point guesses: always strictly inside the range, in order, within budget."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mx8_common.snapshot.key_ranges import (
    child_dir,
    common_length,
    fanout_points,
    in_range,
    progression_points,
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


def test_progression_points_cut_numbered_keys_into_ranges_of_one_page_less_one() -> None:
    sample = [f"p/obj-{i:08d}.bin" for i in range(0, 1000, 15)] + ["p/obj-00000999.bin"]
    points = progression_points(sample, None, keys=1000, page=1000, floor=2, count=3)
    # Numbers [1000, 1999), [1999, 2998), ...: 999 keys each, a point before its own key.
    assert points == ["p/obj-00001999", "p/obj-00002998", "p/obj-00003997"]
    assert "p/obj-00001998.bin" < points[0] < "p/obj-00001999.bin"


def test_progression_points_follow_the_rate_the_page_shows() -> None:
    # Every third number: 100 keys span 297 numbers, so a range of 99 keys is 297 wide.
    every_third = progression_points(["d/k0000", "d/k0150", "d/k0297"], None, 100, 100, 2, 2)
    assert every_third == ["d/k0595", "d/k0892"]
    # Three keys per number (.a .b .c): 99 keys are 33 numbers.
    three_each = progression_points(["d/k0000.a", "d/k0033.a"], None, 100, 100, 2, 2)
    assert three_each == ["d/k0067", "d/k0100"]


def test_progression_points_stop_below_upto_and_at_the_widest_number() -> None:
    bounded = progression_points(["d/0100", "d/0199"], "d/0500", 100, 100, 2, 10)
    assert bounded == ["d/0299", "d/0398", "d/0497"]
    assert progression_points(["d/9800", "d/9899"], None, 100, 100, 2, 10) == ["d/9999"]
    assert progression_points(["d/k0", "d/k4"], None, 5, 5, 2, 3) == ["d/k9"]
    assert progression_points(["d/k0", "d/k9"], None, 10, 10, 2, 3) == []


@pytest.mark.parametrize(
    ("sample", "why"),
    [
        (["h/0a3f", "h/07c1"], "a hash: the first difference is not a digit in both"),
        (["h/00a1", "h/01f2", "h/0c11", "h/33e0"], "a hash whose ends look numbered"),
        (["i/img1.jpg", "i/img1999.jpg"], "not zero-padded: the runs differ in width"),
        (["i/img10.jpg", "i/img1000.jpg", "i/img11.jpg"], "not zero-padded, same ends"),
        (["i/a-17", "i/b-03"], "the first difference is a letter"),
        (["7/a", "9/a"], "the digits are the folder's own path, below floor"),
        (["s/x", "s/x"], "one key"),
    ],
)
def test_progression_points_are_none_unless_keys_look_numbered(sample: list[str], why: str) -> None:
    assert progression_points(sample, None, 1000, 1000, 2, 4) is None, why


@settings(max_examples=200)
@given(
    start=st.integers(0, 5000),
    stride=st.integers(1, 7),
    suffixes=st.integers(1, 3),
    page=st.integers(4, 60),
    count=st.integers(0, 6),
)
def test_progression_ranges_each_hold_less_than_a_page_on_evenly_numbered_keys(
    start: int, stride: int, suffixes: int, page: int, count: int
) -> None:
    numbers = range(start, start + stride * 400, stride)
    keys = [f"d/n{n:06d}{s}" for n in numbers for s in [".a", ".b", ".c"][:suffixes]]
    listed = keys[:page]  # starts at a whole number, and spans two when a page holds more
    points = progression_points(listed, None, page, page, 2, count)
    assert points is not None and len(points) <= count
    bounds = [listed[-1], *points]
    for lo, hi in itertools.pairwise(bounds):
        held = sum(lo < key <= hi for key in keys)
        # Whole numbers per range: at most one number's keys more than a page less one.
        assert 1 <= held <= page - 1 + (suffixes - 1), (lo, hi, held)


@given(
    sample=st.lists(_keys, min_size=0, max_size=10),
    upto=st.none() | _keys,
    keys=st.integers(0, 1000),
    page=st.integers(0, 1000),
    floor=st.integers(0, 3),
    count=st.integers(0, 40),
)
def test_progression_points_are_strictly_inside_the_range_sorted_and_within_count(
    sample: list[str],
    upto: str | None,
    keys: int,
    page: int,
    floor: int,
    count: int,
) -> None:
    sample = sorted(set(sample))
    points = progression_points(sample, upto, keys, page, floor, count)
    if points is not None:
        assert len(points) <= count
        assert points == sorted(set(points))
        assert all(p > sample[-1] and (upto is None or p < upto) for p in points)


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
