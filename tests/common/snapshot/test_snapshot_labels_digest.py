"""labels.tsv is covered by the digest recorded in the manifest's meta at indexing: class
names changed in the store are an IntegrityError on every later load, embedded included."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.snapshot import cfg

import mx8
from mx8_common.errors import IntegrityError
from mx8_common.snapshot.resolver import resolve_snapshot


def make_classes(root: Path) -> Path:
    for name, n in (("cat", 3), ("dog", 2), ("emu", 1)):
        (root / name).mkdir(parents=True)
        for i in range(n):
            (root / name / f"{i}.jpg").write_bytes(f"{name}{i}".encode())
    return root


async def test_swapped_class_names_in_labels_tsv_are_an_integrity_error(
    tmp_path: Path, store_root: str
) -> None:
    root = make_classes(tmp_path / "ds")
    first = await resolve_snapshot(str(root), cfg(store_root, label_mode="imagefolder"))
    assert first.class_names == ("cat", "dog", "emu")
    labels = Path(store_root) / "by-hash" / f"{first.manifest_hash}.labels.tsv"
    text = labels.read_text()
    labels.chmod(0o644)
    labels.write_text(text.replace("cat", "@@@").replace("dog", "cat").replace("@@@", "dog"))
    with pytest.raises(IntegrityError, match="class names were changed") as caught:
        await resolve_snapshot(str(root), cfg(store_root, label_mode="imagefolder"))
    assert str(labels) in str(caught.value)
    with pytest.raises(IntegrityError, match="class names were changed"):
        mx8.load(str(root), label_mode="imagefolder", store=store_root)
    # The fix the message names: delete it and index again.
    labels.unlink()
    with pytest.raises(IntegrityError, match="is missing"):
        await resolve_snapshot(str(root), cfg(store_root, label_mode="imagefolder"))
    again = await resolve_snapshot(f"{root}@refresh", cfg(store_root, label_mode="imagefolder"))
    assert again.class_names == ("cat", "dog", "emu")
