"""Class labels of image-folder datasets: label modes, decode hints and ``labels.tsv``.

In ``imagefolder`` mode the first path component under the dataset root is the class
name, and a class's label id is its position among the sorted class names. ``auto``
means imagefolder when every object sits inside a class folder and there are at least two
classes, else ``none``.

Why a cheap first pass: label ids are positions in *sorted class-name* order, which is not
the order classes appear in a sorted key listing (``cat-x/1`` sorts before ``cat/1``
because ``-`` < ``/``, yet ``cat`` < ``cat-x``), and ``auto`` must know whether any loose
object exists before the first row is written (a loose ``zzz.txt`` lists last). So the
resolver first asks its page source for a ``FolderSummary``: the distinct first
components plus a count of loose objects. S3 answers with one delimiter listing and a
local folder with one ``scandir``, so the pass costs pages per *class*, not per object,
and memory is bounded by the number of classes. The main pass then checks each key
against that summary, so a dataset that changes between the passes fails loudly.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from mx8_common.errors import LabelError

__all__ = [
    "DECODE_HINT_PREFIX",
    "LABEL_MODES",
    "ClassIndex",
    "FolderSummary",
    "LabelMode",
    "choose_classes",
    "decode_labels_tsv",
    "encode_labels_tsv",
    "imagefolder_hint",
    "parse_label_id",
    "scan_folders",
    "validate_label_mode",
]

LabelMode = Literal["none", "imagefolder", "auto"]
LABEL_MODES: tuple[str, ...] = ("none", "imagefolder", "auto")
DECODE_HINT_PREFIX = "mx8:vision:imagefolder"
_HINT_RE = re.compile(r"^mx8:vision:imagefolder;label_id=(0|[1-9][0-9]*)$")


def validate_label_mode(mode: str) -> LabelMode:
    """``mode`` if it is a known label mode, else ``LabelError`` listing them."""
    if mode not in LABEL_MODES:
        raise LabelError(f"label mode {mode!r} is unknown; use one of {', '.join(LABEL_MODES)}")
    return mode  # type: ignore[return-value]


def imagefolder_hint(label_id: int) -> str:
    """The decode_hint of a sample of class ``label_id``."""
    return f"{DECODE_HINT_PREFIX};label_id={label_id}"


def parse_label_id(hint: str) -> int | None:
    """The label id in an imagefolder decode_hint, or None for any other hint."""
    m = _HINT_RE.match(hint)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class FolderSummary:
    """What sits directly under a dataset root: class folders and loose objects."""

    #: Distinct first path components that hold at least one object, sorted.
    folders: tuple[str, ...]
    #: Objects directly under the root (not inside any folder).
    loose_objects: int
    #: One loose object key, for error messages.
    example_loose: str | None = None


async def scan_folders(pages: AsyncIterable[Sequence[tuple[str, int]]]) -> FolderSummary:
    """A ``FolderSummary`` from a full pass over listing pages (memory: one set of classes).

    The fallback for page sources that cannot summarize cheaply themselves.
    """
    folders: set[str] = set()
    loose = 0
    example: str | None = None
    async for page in pages:
        for key, _size in page:
            head, sep, _rest = key.partition("/")
            if sep:
                folders.add(head)
            else:
                loose += 1
                example = example or key
    return FolderSummary(tuple(sorted(folders)), loose, example)


class ClassIndex:
    """Sorted class names and the label id of each."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names: tuple[str, ...] = tuple(names)
        self._ids = {name: i for i, name in enumerate(self.names)}

    def hint_for(self, key: str, *, link: str) -> str:
        """The decode_hint of ``key`` (relative to the root); the class must be known."""
        head, sep, _rest = key.partition("/")
        label_id = self._ids.get(head) if sep else None
        if label_id is None:
            raise LabelError(
                f"{link}: object {key!r} is not inside one of the {len(self.names)} class "
                "folders seen when indexing began; the dataset changed while it was being "
                "indexed, so index it again",
                link=link,
            )
        return imagefolder_hint(label_id)


def choose_classes(mode: LabelMode, summary: FolderSummary, *, link: str) -> ClassIndex | None:
    """The class index a label mode yields for a dataset, or None for unlabeled."""
    if mode == "none":
        return None
    ok = summary.loose_objects == 0 and len(summary.folders) >= (2 if mode == "auto" else 1)
    if ok:
        for name in summary.folders:
            if "\t" in name or "\n" in name or "\r" in name:
                raise LabelError(
                    f"{link}: class folder {name!r} holds a TAB/CR/LF, which labels.tsv "
                    "cannot store; rename the folder",
                    link=link,
                )
        return ClassIndex(summary.folders)
    if mode == "auto":
        return None
    if summary.loose_objects:
        raise LabelError(
            f"{link}: label_mode='imagefolder' needs every object inside a class folder, but "
            f"{summary.loose_objects} sit directly under the root (e.g. "
            f"{summary.example_loose!r}); move them into class folders, index recursively, "
            "or use label_mode='none'",
            link=link,
        )
    raise LabelError(
        f"{link}: label_mode='imagefolder' found no class folders; use label_mode='none'",
        link=link,
    )


def encode_labels_tsv(class_names: Iterable[str]) -> bytes:
    """``labels.tsv``: one ``<label_id>\\t<class_name>`` line per class, ids 0..N-1."""
    lines = []
    for i, name in enumerate(class_names):
        if "\t" in name or "\n" in name or "\r" in name:
            raise LabelError(f"class name {name!r} holds a TAB/CR/LF; rename the folder")
        lines.append(f"{i}\t{name}\n")
    return "".join(lines).encode("utf-8")


def decode_labels_tsv(data: bytes) -> list[str]:
    """Class names in label-id order from ``labels.tsv`` bytes."""
    names: list[str] = []
    for line_no, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        raw_id, sep, name = line.partition("\t")
        if not sep or raw_id != str(len(names)):
            raise LabelError(
                f"labels.tsv line {line_no} is {line!r}; expected '{len(names)}<TAB><class>'. "
                "The file is corrupt: index the dataset again with @refresh"
            )
        names.append(name)
    return names
