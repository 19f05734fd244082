"""Split-point guesses: always strictly inside the range, in order, within budget."""

from __future__ import annotations

import hashlib
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
    # Numbers [1000, 1998), then [1998, 2997), ...: 999 keys each after the first range.
    assert points == ["p/obj-00001998", "p/obj-00002997", "p/obj-00003996"]
    assert "p/obj-00001997.bin" < points[0] < "p/obj-00001998.bin"


def test_progression_points_follow_the_rate_the_page_shows() -> None:
    # Every third number: 100 keys span 297 numbers, so a range of 99 keys is 297 wide.
    every_third = progression_points(["d/k0000", "d/k0150", "d/k0297"], None, 100, 100, 2, 2)
    assert every_third == ["d/k0594", "d/k0891"]
    # Three keys per number (.a .b .c): 99 keys are 33 numbers.
    three_each = progression_points(["d/k0000.a", "d/k0033.a"], None, 100, 100, 2, 2)
    assert three_each == ["d/k0066", "d/k0099"]


def test_progression_points_read_no_digit_below_floor() -> None:
    # The prefix "d/k0" ends inside the number: it is the same for all, not read.
    sample = ["d/k0000", "d/k0099"]
    assert progression_points(sample, None, 100, 100, 4, 2) == ["d/k0198", "d/k0297"]
    # "d/k00" fixed: the numbers end at 99; a difference inside it is not read at all.
    assert progression_points(sample, None, 100, 100, 5, 2) == []
    assert progression_points(["d/k0000", "d/k0999"], None, 1000, 1000, 5, 2) is None


def test_progression_points_read_the_numbered_tail_of_a_page_that_starts_in_other_names() -> None:
    # The page ends the a- run and lists the first half of the b- run: b- is read.
    ends_a = [f"d/a-{i:06d}" for i in range(2000, 2500, 20)]
    sample = [*ends_a, *(f"d/b-{i:06d}" for i in range(0, 500, 20)), "d/b-000499"]
    assert progression_points(sample, None, 1000, 1000, 2, 2) == ["d/b-001498", "d/b-002497"]
    # A tail of less than a quarter of the page is too little to go by.
    few = [*ends_a, *ends_a[-1:], "d/b-000000", "d/b-000009"]
    assert progression_points(sorted(set(few)), None, 1000, 1000, 2, 2) is None


def test_progression_points_stop_below_upto_and_at_the_widest_number() -> None:
    bounded = progression_points(["d/0100", "d/0199"], "d/0500", 100, 100, 2, 10)
    assert bounded == ["d/0298", "d/0397", "d/0496"]
    assert progression_points(["d/9800", "d/9899"], None, 100, 100, 2, 10) == ["d/9998"]
    assert progression_points(["d/k0", "d/k4"], None, 5, 5, 2, 3) == ["d/k8"]
    assert progression_points(["d/k0", "d/k9"], None, 10, 10, 2, 3) == []


@pytest.mark.parametrize(
    ("sample", "why"),
    [
        (["h/0a3f", "h/07c1"], "hex, but too short for four digits"),
        (["h/00a1", "h/0x12", "h/33e0"], "not all hex digits"),
        (["i/img1.jpg", "i/img1999.jpg"], "not zero-padded: the runs differ in width"),
        (["i/img10.jpg", "i/img1000.jpg", "i/img11.jpg"], "not zero-padded, same ends"),
        (["i/a-17", "i/b-03"], "the first difference is a letter"),
        (["7/a", "9/a"], "the first difference is in the folder's own path, below floor"),
        (["s/x", "s/x"], "one key"),
    ],
)
def test_progression_points_are_none_unless_keys_look_numbered(sample: list[str], why: str) -> None:
    assert progression_points(sample, None, 1000, 1000, 2, 4) is None, why


def test_progression_points_read_hashes_as_hex_numbers_nine_tenths_of_a_page_wide() -> None:
    keys = sorted(hashlib.sha1(str(i).encode()).hexdigest() + ".jpg" for i in range(20_000))
    page = keys[:1000]
    points = progression_points(page[::50] + page[-1:], None, 1000, 1000, 0, 12)
    assert points is not None and len(points) == 12 and all(len(p) == 5 for p in points)
    for lo, hi in itertools.pairwise([page[-1], *points]):
        assert 800 <= sum(lo < key <= hi for key in keys) < 1000, (lo, hi)
    upper = [key.upper() for key in page]
    assert progression_points(upper, None, 1000, 1000, 0, 2) == [p.upper() for p in points[:2]]


@settings(max_examples=200)
@given(
    start=st.integers(0, 5000),
    stride=st.integers(1, 7),
    suffixes=st.integers(1, 3),
    page=st.integers(12, 60),
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
