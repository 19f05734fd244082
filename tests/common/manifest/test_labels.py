"""Label modes, decode hints and labels.tsv."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from mx8_common.errors import LabelError
from mx8_common.manifest.labels import (
    ClassIndex,
    FolderSummary,
    choose_classes,
    decode_labels_tsv,
    encode_labels_tsv,
    imagefolder_hint,
    parse_label_id,
    scan_folders,
)


@pytest.mark.parametrize(
    ("hint", "label"),
    [
        ("mx8:vision:imagefolder;label_id=0", 0),
        ("mx8:vision:imagefolder;label_id=1234", 1234),
        ("mx8:vision:imagefolder;label_id=01", None),
        ("mx8:vision:imagefolder;label_id=-1", None),
        ("mx8:vision:imagefolder;label_id=", None),
        ("", None),
        ("other:hint", None),
    ],
)
def test_parse_label_id_reads_only_canonical_hints(hint: str, label: int | None) -> None:
    assert parse_label_id(hint) == label


def test_imagefolder_hint_round_trips() -> None:
    assert all(parse_label_id(imagefolder_hint(i)) == i for i in (0, 7, 999_999))


def test_labels_tsv_round_trips_and_rejects_corruption() -> None:
    names = ["cat", "cat-x", "dög", "with space"]
    data = encode_labels_tsv(names)
    assert data == "0\tcat\n1\tcat-x\n2\tdög\n3\twith space\n".encode()
    assert decode_labels_tsv(data) == names
    with pytest.raises(LabelError, match="corrupt"):
        decode_labels_tsv(b"0\tcat\n2\tdog\n")
    with pytest.raises(LabelError):
        encode_labels_tsv(["a\tb"])


@pytest.mark.parametrize(
    ("mode", "folders", "loose", "expected"),
    [
        ("none", ("a", "b"), 0, None),
        ("auto", ("a", "b"), 0, ("a", "b")),
        ("auto", ("a",), 0, None),
        ("auto", ("a", "b"), 1, None),
        ("imagefolder", ("a",), 0, ("a",)),
    ],
)
def test_choose_classes_by_mode(
    mode: str, folders: tuple[str, ...], loose: int, expected: tuple[str, ...] | None
) -> None:
    got = choose_classes(mode, FolderSummary(folders, loose, "x" if loose else None), link="L")  # type: ignore[arg-type]
    assert (got.names if got else None) == expected


def test_choose_classes_imagefolder_refuses_loose_objects_or_no_classes() -> None:
    with pytest.raises(LabelError, match="'README'"):
        choose_classes("imagefolder", FolderSummary(("a",), 1, "README"), link="L")
    with pytest.raises(LabelError, match="no class folders"):
        choose_classes("imagefolder", FolderSummary((), 0), link="L")


def test_class_index_hints_by_sorted_position() -> None:
    index = ClassIndex(["cat", "cat-x", "dog"])
    assert index.hint_for("cat-x/1.jpg", link="L") == imagefolder_hint(1)
    assert index.hint_for("dog/a/b.jpg", link="L") == imagefolder_hint(2)
    with pytest.raises(LabelError, match="changed while it was being indexed"):
        index.hint_for("emu/1.jpg", link="L")
    with pytest.raises(LabelError):
        index.hint_for("loose.jpg", link="L")


async def test_scan_folders_collects_distinct_first_components() -> None:
    async def pages() -> AsyncIterator[list[tuple[str, int]]]:
        yield [("a/1", 1), ("a/2", 1), ("b/x/y", 1)]
        yield [("c", 1), ("d/1", 1)]

    summary = await scan_folders(pages())
    assert summary == FolderSummary(("a", "b", "d"), 1, "c")
