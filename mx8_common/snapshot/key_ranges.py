"""Split points for partitioned listing: pure functions of keys, no I/O.

A listing partition is a key range ``(after, upto]`` (``None``: unbounded). Splitting
one at strictly increasing points ``p1 < ... < pk`` inside it gives ``(after, p1],
(p1, p2], ..., (pk, upto]``: disjoint, in order, and together exactly the original, for
*any* points. So where the points fall decides only how evenly work spreads, never what
is listed; these functions only guess well.

Two sources of points:

- **folders**: the common prefixes (``dir/``) of a delimiter listing. Splitting at ``d/``
  puts every key under ``d/`` in the range that starts after it.
- **fan-out** (``fanout_points``) for flat folders: from the last key listed and the page
  it ended, guess keys further on by raising one character at a time at positions more
  significant than those the page varied in (``obj-00000999`` -> ``obj-00001``,
  ``obj-00002``, ..., ``obj-0001``, ...). A guess past the end of the data only costs one
  empty request.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

__all__ = ["child_dir", "common_length", "fanout_points", "in_range", "scope_dir", "thin"]

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
