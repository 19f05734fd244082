"""The records of the lease log, typed, and their JSON-line form (the one encoder/decoder).

Each record is one line after the header; the short keys are the on-disk format that
every log written so far uses, so they never change:

    {"ev": "rank", "node": "n1", "rank": 0}                       world freeze / late joiner
    {"ev": "deal", "epoch": 0, "world": 3}                        epoch dealt over 3 ranks
    {"ev": "issue", "lease": "L7", "seq": 7, "node": "n1", "epoch": 0, "start": 0, "end": 64}
    {"ev": "progress", "lease": "L7", "cursor": 32}               cursor == end completes it
    {"ev": "expire", "lease": "L7"}                               remainder was re-queued

``decode_record`` refuses a line that is not one of these with a ``ValueError`` naming
what is wrong; the lease log turns it into a ``LeaseLogError`` with the path and line.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

__all__ = [
    "DealRecord",
    "ExpireRecord",
    "IssueRecord",
    "LeaseRecord",
    "ProgressRecord",
    "RankRecord",
    "decode_record",
    "encode_record",
]


@dataclass(frozen=True)
class RankRecord:
    """``node_id`` holds ``rank`` (the world freeze, or a node joining after it)."""

    ev: ClassVar[str] = "rank"
    node_id: str
    rank: int


@dataclass(frozen=True)
class DealRecord:
    """``epoch``'s blocks were dealt over ``world_size`` ranks."""

    ev: ClassVar[str] = "deal"
    epoch: int
    world_size: int


@dataclass(frozen=True)
class IssueRecord:
    """Lease ``lease_id`` (sequence number ``seq``) of ``[start, end)`` went to ``node_id``."""

    ev: ClassVar[str] = "issue"
    lease_id: str
    seq: int
    node_id: str
    epoch: int
    start: int
    end: int


@dataclass(frozen=True)
class ProgressRecord:
    """``lease_id`` is committed up to ``cursor`` (``cursor == end`` completes it)."""

    ev: ClassVar[str] = "progress"
    lease_id: str
    cursor: int


@dataclass(frozen=True)
class ExpireRecord:
    """``lease_id`` expired; its remainder went back to the queue."""

    ev: ClassVar[str] = "expire"
    lease_id: str


LeaseRecord = RankRecord | DealRecord | IssueRecord | ProgressRecord | ExpireRecord

_KINDS: dict[str, type[LeaseRecord]] = {
    cls.ev: cls for cls in (RankRecord, DealRecord, IssueRecord, ProgressRecord, ExpireRecord)
}
#: Field name -> on-disk key, where they differ.
_KEYS = {"node_id": "node", "lease_id": "lease", "world_size": "world"}
#: Field type (as annotated) -> the JSON type a line must hold for it.
_TYPES: dict[str, type] = {"str": str, "int": int}


def encode_record(record: LeaseRecord) -> dict[str, Any]:
    """The JSON object of ``record`` (``"ev"`` first, then the fields in their order)."""
    out: dict[str, Any] = {"ev": record.ev}
    for f in fields(record):
        out[_KEYS.get(f.name, f.name)] = getattr(record, f.name)
    return out


def decode_record(obj: Any) -> LeaseRecord:
    """The record a decoded JSON line holds; ``ValueError`` if it is not one."""
    if not isinstance(obj, dict):
        raise ValueError(f"a record is a JSON object, not {type(obj).__name__}")
    cls = _KINDS.get(obj.get("ev"))  # type: ignore[arg-type]
    if cls is None:
        raise ValueError(f"unknown record kind ev={obj.get('ev')!r}")
    values: dict[str, Any] = {}
    for f in fields(cls):
        key = _KEYS.get(f.name, f.name)
        if key not in obj:
            raise ValueError(f"{cls.ev!r} record has no {key!r}")
        value = obj[key]
        want = _TYPES[str(f.type)]
        # bool is an int to Python, never to this format.
        if not isinstance(value, want) or isinstance(value, bool):
            raise ValueError(f"{cls.ev!r} record's {key!r} is {value!r}, not {want.__name__}")
        values[f.name] = value
    return cls(**values)
