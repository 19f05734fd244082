"""Split points for partitioned listing: pure functions of keys, no I/O.

A listing partition is a key range ``(after, upto]`` (``None``: unbounded). Splitting
one at strictly increasing points ``p1 < ... < pk`` inside it gives ``(after, p1],
(p1, p2], ..., (pk, upto]``: disjoint, in order, and together exactly the original, for
*any* points. So where the points fall decides only how evenly work spreads, never what
is listed; these functions only guess well.

Three sources of points:

- **folders**: the common prefixes (``dir/``) of a delimiter listing. Splitting at ``d/``
  puts every key under ``d/`` in the range that starts after it.
- **progression** (``progression_points``) for flat folders of numbered keys: the page
  ``obj-00000000`` .. ``obj-00000999`` says the next keys are ``obj-00001000`` .., so
  ranges are cut about a page wide (``obj-00001999``, ``obj-00002998``, ...), each
  holding just under one page: one request lists it and shows that it ended.
- **fan-out** (``fanout_points``) for other flat folders: from the last key listed and the page
  it ended, guess keys further on by raising one character at a time at positions more
  significant than those the page varied in (``obj-00000999`` -> ``obj-00001``,
  ``obj-00002``, ..., ``obj-0001``, ...). A guess past the end of the data only costs one
  empty request.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

__all__ = [
    "child_dir",
    "common_length",
    "fanout_points",
    "in_range",
    "progression_points",
    "scope_dir",
    "thin",
]

_CLASSES = (string.digits, string.ascii_lowercase, string.ascii_uppercase)


def common_length(a: str, b: str) -> int:
    """Length of the longest common prefix of two strings (characters, not path parts)."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def in_range(points: Sequence[str], after: str | None, upto: str | None) -> list[str]:
    """The points strictly inside ``(after, upto)``, sorted, without repeats."""
    return sorted(
        {p for p in points if (after is None or p > after) and (upto is None or p < upto)}
    )


def thin(points: Sequence[str], budget: int) -> list[str]:
    """At most ``budget`` of the sorted ``points``, spread evenly (the first one kept)."""
    if budget <= 0:
        return []
    if len(points) <= budget:
        return list(points)
    n = len(points)
    return [points[i] for i in sorted({i * n // budget for i in range(budget)})]


def scope_dir(root: str, key: str, upto: str | None) -> str:
    """The deepest folder (``root`` or below) that holds both ``key`` and ``upto``."""
    if upto is None:
        return root
    common = key[: common_length(key, upto)]
    cut = common.rfind("/", len(root))
    return common[: cut + 1] if cut >= 0 else root


def child_dir(folder: str, key: str) -> str | None:
    """The folder directly under ``folder`` that holds ``key``, or None if ``key`` is loose."""
    cut = key.find("/", len(folder))
    return key[: cut + 1] if cut >= 0 else None


def _class_of(ch: str) -> str:
    for chars in _CLASSES:
        if ch in chars:
            return chars
    return ""


def _varying_chars(sample: Sequence[str], start: int, width: int = 4) -> set[str]:
    """Characters at the first ``width`` positions from ``start`` where the sample differs."""
    seen: set[str] = set()
    for pos in range(start, start + width):
        at = {key[pos] for key in sample if len(key) > pos}
        if len(at) > 1:
            seen |= at
    return seen


def fanout_points(
    cursor: str, upto: str | None, sample: Sequence[str], floor: int, budget: int
) -> list[str]:
    """Up to ``budget`` guessed split points after ``cursor`` in a flat folder.

    ``sample`` is the page that ended at ``cursor`` (sorted); positions below ``floor``
    (the folder's own path) are never varied. Positions are taken from the one just
    above the page's varying part outward, so the first ranges are about a page wide
    and each further position ~|alphabet| times wider.
    """
    if budget <= 0 or not sample:
        return []
    common = common_length(sample[0], sample[-1])
    varying = {ch for ch in _varying_chars(sample, common) if ch.isalnum()}
    top = min(common, len(cursor))
    positions = list(range(top - 1, floor - 1, -1)) or list(range(top, len(cursor)))
    points: list[str] = []
    for pos in positions:
        here = cursor[pos]
        chars = sorted(ch for ch in set(_class_of(here)) | varying if ch > here)
        for ch in chars:
            point = cursor[:pos] + ch
            if point > cursor and (upto is None or point < upto):
                points.append(point)
        if len(points) >= budget:
            break
    return in_range(points[:budget], cursor, upto)


def _digit_run(key: str, pos: int, floor: int = 0) -> tuple[int, int]:
    """The run ``[start, end)`` of ASCII digits in ``key`` around ``pos``, from ``floor``
    at most (empty if none)."""
    if pos >= len(key) or key[pos] not in string.digits:
        return pos, pos
    start, end = pos, pos + 1
    while start > floor and key[start - 1] in string.digits:
        start -= 1
    while end < len(key) and key[end] in string.digits:
        end += 1
    return start, end


#: How the varying part of a page's keys reads as a number: ``key[start:end]`` in
#: ``digits`` (its base), and the share of a page a range is meant to hold.
_Scale = tuple[int, int, str, float]

_HEX_LOWER = string.digits + "abcdef"
_HEX_UPPER = string.digits + "ABCDEF"


def _decimal(sample: Sequence[str], at: int, floor: int) -> _Scale | None:
    """Zero-padded numbers: a digit run around ``at`` as wide in every sample key."""
    start, end = _digit_run(sample[-1], at, floor)
    if start == end:
        return None
    stem = sample[-1][:start]
    for key in sample:
        if not key.startswith(stem) or _digit_run(key, start, floor) != (start, end):
            return None  # not zero-padded (or not digits): key order is not number order
    return start, end, string.digits, 1.0


def _hexadecimal(sample: Sequence[str], at: int, floor: int, width: int = 4) -> _Scale | None:
    """Hashes: a run of hex digits through ``width`` past ``at`` in every sample key.

    The run starts where the cursor's hex digits do, so a number carries into the digits
    the page kept fixed (``0fff`` -> ``1000``). Hashes spread evenly but at random, so a
    range is meant to hold 9/10 of a page: the spread (~3%) rarely makes it two requests.
    """
    cursor = sample[-1]
    for digits in (_HEX_LOWER, _HEX_UPPER):
        allowed = set(digits)
        start = at
        while start > floor and cursor[start - 1] in allowed:
            start -= 1
        end, stem = at + width, cursor[:start]
        seen: set[str] = set()
        for key in sample:
            run = key[start:end]
            if len(run) < end - start or not key.startswith(stem) or not allowed >= set(run):
                break
            seen.update(run)
        else:
            if not seen <= set(string.digits):  # letters too: not decimal digits
                return start, end, digits, 0.9
    return None


def _scale(sample: Sequence[str], floor: int) -> tuple[int, _Scale] | None:
    """How the sample's keys read as numbers, from the first sample key that they do.

    A page may end one run of names and start another (``a-002999``, ``b-000000``):
    the tail that reads as numbers is read, if it is at least a quarter of the sample.
    Tails are tried where a run starts: where the common start with the cursor grows
    (in sorted keys it never shrinks towards the cursor).
    """
    cursor = sample[-1]
    starts: dict[int, int] = {}
    for tail, key in enumerate(sample[: len(sample) - max(2, len(sample) // 4) + 1]):
        starts.setdefault(common_length(key, cursor), tail)
    for at, tail in starts.items():
        part = sample[tail:]
        if at < floor or part[0] >= cursor:
            continue
        scale = _decimal(part, at, floor) or _hexadecimal(part, at, floor)
        if scale is not None:
            return tail, scale
    return None


def progression_points(
    sample: Sequence[str], upto: str | None, keys: int, page: int, floor: int, count: int
) -> list[str] | None:
    """Up to ``count`` split points after the cursor, each range just under one page.

    ``sample`` is keys of a page of at most ``page`` keys that listed ``keys`` keys, in
    order, spread evenly over the page, its first and last key included (the last is the
    cursor). Where the first and the cursor first differ, the keys (or a tail of them, if
    the page starts in other names) may read as numbers: a run of digits as wide in every
    sample key (``obj-00000000`` .. ``obj-00000999``) or hex digits (hashes, ``3fa9...``).
    Then the numbers that follow hold keys at the rate the page showed: point ``i`` is
    the keys' common start and number ``h + i * step`` (``h`` the cursor's number),
    ``step`` numbers holding ``page - 1`` keys at that rate (hashes: 9/10 of a page). A
    point is a prefix of the keys numbered at it (``obj-00001998`` < ``obj-00001998.bin``),
    so a range holds whole numbers: the first the rest of ``h`` and the numbers below
    ``h + step``, each further one ``step`` numbers. Positions below ``floor`` (the
    folder's own path) are never read. None (use ``fanout_points``) when the keys do not
    read as numbers.
    """
    if keys < 2 or page < 2 or len(sample) < 2 or sample[0] >= sample[-1]:
        return None
    found = _scale(sample, floor)
    if found is None:
        return None
    tail, scale = found
    # The sample spreads evenly over the page: its tail holds that share of the keys.
    keys = 1 + (keys - 1) * (len(sample) - 1 - tail) // (len(sample) - 1)
    if keys < 2:
        return None
    first, cursor = sample[tail], sample[-1]
    start, end, digits, fill = scale
    base, width = len(digits), end - start
    low, high = int(first[start:end], base), int(cursor[start:end], base)
    # Keys per number, from the page: (keys - 1) keys after the first over high - low.
    room = page - 1 if fill >= 1 else int(page * fill)
    step = max(1, room * (high - low) // (keys - 1))
    stem = cursor[:start]
    # One number a range (many keys each): the rest of the cursor's may be none at all.
    origin = high + 1 if step == 1 else high
    points: list[str] = []
    for i in range(1, count + 1):
        number = origin + i * step
        if number >= base**width:
            break
        points.append(stem + _spell(number, digits, width))
    return in_range(points, cursor, upto)


def _spell(number: int, digits: str, width: int) -> str:
    """``number`` in base ``len(digits)``, ``width`` digits, zero-padded."""
    out = []
    for _ in range(width):
        number, digit = divmod(number, len(digits))
        out.append(digits[digit])
    return "".join(reversed(out))
