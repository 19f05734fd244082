"""``Events``: the structlog events a test captured (the root conftest's ``logs`` fixture)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, overload

__all__ = ["Events"]


class Events:
    """Captured events in order, each a dict with ``"event"`` and its fields.

    Read by iterating or indexing, or by name; ``clear()`` starts a fresh window (events
    a test's setup emitted stop counting).
    """

    def __init__(self, entries: list[dict[str, Any]]) -> None:
        self._entries = entries  # appended to by structlog while the capture runs

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    @overload
    def __getitem__(self, i: int) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, i: slice) -> list[dict[str, Any]]: ...
    def __getitem__(self, i: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        return self._entries[i]

    def names(self) -> list[str]:
        """The event names, in order."""
        return [e["event"] for e in list(self._entries)]

    def named(self, event: str) -> list[dict[str, Any]]:
        """Every event called ``event``, in order."""
        return [e for e in list(self._entries) if e["event"] == event]

    def clear(self) -> None:
        """Forget what was captured so far."""
        self._entries.clear()
