"""Snapshot resolver over local folders with a filesystem store."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from support.logs import Events
from support.snapshot import cfg, resolve_in_threads, rows

import mx8
from mx8_common.errors import (
    EmptyDatasetError,
    LabelError,
    LinkError,
    SnapshotNotFoundError,
    UnsupportedKeyError,
)
from mx8_common.manifest.labels import parse_label_id
from mx8_common.snapshot.resolver import (
    SnapshotResolverConfig,
    resolve_snapshot,
    resolve_snapshot_sync,
)
from mx8_common.store import open_manifest_store

FILES = {
    "cat/1.jpg": b"meow",
    "cat/2.jpg": b"purr!",
    "dog/1.jpg": b"woof",
    "dog/sub/3.jpg": b"bark bark",
    "emu/9.jpg": b"e",
}


def make_tree(root: Path, files: dict[str, bytes], order: list[str] | None = None) -> Path:
    for rel in order or list(files):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(files[rel])
    return root


async def test_resolve_snapshot_same_content_same_hash_across_creation_order(
    tmp_path: Path, store_root: str
) -> None:
    root = tmp_path / "ds"
    make_tree(root, FILES)
    first = await resolve_snapshot(str(root), cfg(store_root))
    for p in sorted(root.rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    make_tree(root, FILES, order=list(reversed(FILES)))
    again = await resolve_snapshot(f"{root}@refresh", cfg(str(tmp_path / "other-store")))
    assert again.indexed and first.indexed
    assert again.manifest_hash == first.manifest_hash
    assert [loc for loc, _, _ in rows(first)] == [str(root / k) for k in sorted(FILES)]


async def test_resolve_snapshot_changed_size_or_added_key_changes_hash(
    tmp_path: Path, store_root: str
) -> None:
    root = make_tree(tmp_path / "ds", FILES)
    base = await resolve_snapshot(f"{root}@refresh", cfg(store_root))
    (root / "cat" / "1.jpg").write_bytes(b"meow!")  # one more byte
    grown = await resolve_snapshot(f"{root}@refresh", cfg(store_root))
    (root / "cat" / "1.jpg").write_bytes(b"meow")
    (root / "cat" / "0.jpg").write_bytes(b"new")
    added = await resolve_snapshot(f"{root}@refresh", cfg(store_root))
    (root / "cat" / "0.jpg").unlink()
    back = await resolve_snapshot(f"{root}@refresh", cfg(store_root))
    assert len({base.manifest_hash, grown.manifest_hash, added.manifest_hash}) == 3
    assert back.manifest_hash == base.manifest_hash
    assert added.samples == base.samples + 1


async def test_resolve_snapshot_plain_reuses_refresh_reindexes_pinned_pins(
    tmp_path: Path, store_root: str, logs: Events
) -> None:
    root = make_tree(tmp_path / "ds", FILES)
    first = await resolve_snapshot(str(root), cfg(store_root))
    (root / "late.jpg").write_bytes(b"late")
    reused = await resolve_snapshot(f"file://{root}", cfg(store_root))
    assert first.indexed and not reused.indexed
    assert reused.manifest_hash == first.manifest_hash  # the intent pointer, not a re-index
    assert reused.samples == first.samples == 5
    assert reused.class_names == first.class_names
    assert logs.names().count("snapshot_index_summary") == 1
    refreshed = await resolve_snapshot(f"{root}@refresh", cfg(store_root))
    assert refreshed.indexed and refreshed.samples == 6
    after = await resolve_snapshot(str(root), cfg(store_root))
    assert after.manifest_hash == refreshed.manifest_hash and not after.indexed
    pinned = await resolve_snapshot(f"{root}@sha256:{first.manifest_hash}", cfg(store_root))
    assert pinned.manifest_hash == first.manifest_hash and pinned.samples == 5
    assert not pinned.indexed
    with pytest.raises(SnapshotNotFoundError, match="has no snapshot"):
        await resolve_snapshot(f"{root}@sha256:{'0' * 64}", cfg(store_root))


async def test_resolve_snapshot_non_recursive_excludes_nested(
    tmp_path: Path, store_root: str
) -> None:
    root = make_tree(tmp_path / "ds", {**FILES, "top.bin": b"12", "a.bin": b"1"})
    flat = await resolve_snapshot(str(root), cfg(store_root, recursive=False))
    deep = await resolve_snapshot(str(root), cfg(store_root, recursive=True))
    assert [loc for loc, _, _ in rows(flat)] == [str(root / "a.bin"), str(root / "top.bin")]
    assert flat.class_names is None and deep.samples == 7
    assert flat.manifest_hash != deep.manifest_hash
    with pytest.raises(LabelError, match="needs recursive=True"):
        await resolve_snapshot(
            str(root), cfg(store_root, recursive=False, label_mode="imagefolder")
        )


async def test_resolve_snapshot_label_modes(tmp_path: Path, store_root: str) -> None:
    root = make_tree(tmp_path / "ds", {**FILES, "cat-x/7.jpg": b"x"})
    labeled = await resolve_snapshot(str(root), cfg(store_root, label_mode="imagefolder"))
    assert labeled.class_names == ("cat", "cat-x", "dog", "emu")
    got = {loc.removeprefix(str(root) + "/"): parse_label_id(h) for loc, _, h in rows(labeled)}
    assert got == {
        "cat-x/7.jpg": 1,  # lists first ('-' < '/') but sorts second among class names
        "cat/1.jpg": 0,
        "cat/2.jpg": 0,
        "dog/1.jpg": 2,
        "dog/sub/3.jpg": 2,
        "emu/9.jpg": 3,
    }
    auto = await resolve_snapshot(str(root), cfg(store_root, label_mode="auto"))
    assert auto.manifest_hash == labeled.manifest_hash
    none = await resolve_snapshot(str(root), cfg(store_root, label_mode="none"))
    assert none.class_names is None and {h for _, _, h in rows(none)} == {""}
    async with open_manifest_store(store_root) as store:
        assert await store.get_labels(labeled.manifest_hash) == list(labeled.class_names)
        assert await store.get_labels(none.manifest_hash) is None
    # A loose file: auto falls back to unlabeled, imagefolder refuses.
    (root / "README").write_bytes(b"hi")
    loose_auto = await resolve_snapshot(f"{root}@refresh", cfg(store_root, label_mode="auto"))
    assert loose_auto.class_names is None
    with pytest.raises(LabelError, match="'README'"):
        await resolve_snapshot(f"{root}@refresh", cfg(store_root, label_mode="imagefolder"))


async def test_resolve_snapshot_auto_needs_two_classes(tmp_path: Path, store_root: str) -> None:
    root = make_tree(tmp_path / "ds", {"only/1.jpg": b"1", "only/2.jpg": b"2"})
    auto = await resolve_snapshot(str(root), cfg(store_root))
    assert auto.class_names is None
    one = await resolve_snapshot(str(root), cfg(store_root, label_mode="imagefolder"))
    assert one.class_names == ("only",)


async def test_resolve_snapshot_materialize_flag_same_hash(tmp_path: Path, store_root: str) -> None:
    root = make_tree(tmp_path / "ds", FILES)
    lean = await resolve_snapshot(str(root), cfg(store_root, materialize_manifest_bytes=False))
    full = await resolve_snapshot(
        f"{root}@refresh", cfg(str(tmp_path / "s2"), materialize_manifest_bytes=True)
    )
    reused = await resolve_snapshot(str(root), cfg(store_root, materialize_manifest_bytes=True))
    assert lean.manifest_data is None
    assert lean.manifest_hash == full.manifest_hash == reused.manifest_hash
    assert full.manifest_data == reused.manifest_data
    assert Path(lean.store_path).read_bytes() == full.manifest_data
    assert lean.manifest_bytes == len(full.manifest_data or b"")


async def test_resolve_snapshot_errors_are_distinct(tmp_path: Path, store_root: str) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmptyDatasetError, match="holds no objects"):
        await resolve_snapshot(str(tmp_path / "empty"), cfg(store_root))
    with pytest.raises(EmptyDatasetError):
        await resolve_snapshot(str(tmp_path / "empty"), cfg(store_root, label_mode="none"))
    bad = make_tree(tmp_path / "bad", {"ok.jpg": b"1", "tab\there.jpg": b"2"})
    with pytest.raises(UnsupportedKeyError, match="TAB") as info:
        await resolve_snapshot(str(bad), cfg(store_root, label_mode="none"))
    assert info.value.key == "tab\there.jpg"
    lf = make_tree(tmp_path / "lf", {"line\nfeed.jpg": b"2"})
    with pytest.raises(UnsupportedKeyError, match="LF"):
        await resolve_snapshot(str(lf), cfg(store_root, label_mode="none"))
    with pytest.raises(LinkError, match="relative path"):
        await resolve_snapshot("relative/dir", cfg(store_root))
    async with open_manifest_store(store_root) as store:
        assert list((Path(store_root) / "tmp").iterdir()) == []  # no temp file left behind
        del store


async def test_resolve_snapshot_summary_event_fields(
    tmp_path: Path, store_root: str, logs: Events
) -> None:
    root = make_tree(tmp_path / "ds", FILES)
    resolved = await resolve_snapshot(str(root), cfg(store_root))
    summaries = logs.named("snapshot_index_summary")
    assert len(summaries) == 1
    s = summaries[0]
    assert s["objects_indexed"] == 5 and s["pages_scanned"] == 1
    assert s["recursive"] is True and s["label_mode"] == "auto"
    assert s["manifest_hash"] == resolved.manifest_hash
    assert s["manifest_bytes"] == resolved.manifest_bytes
    assert isinstance(s["scan_ms"], int)


def test_resolve_snapshot_eight_concurrent_threads_one_indexer(
    tmp_path: Path, store_root: str, logs: Events
) -> None:
    root = make_tree(tmp_path / "ds", {f"c{i % 2}/{i:03d}.jpg": b"x" * i for i in range(1, 60)})
    results = resolve_in_threads(str(root), cfg(store_root))
    assert sum(r.indexed for r in results) == 1
    assert len({r.manifest_hash for r in results}) == 1
    assert {r.samples for r in results} == {59}
    assert len(logs.named("snapshot_indexer_elected")) == 1
    assert len(logs.named("snapshot_index_summary")) == 1


async def test_resolve_snapshot_sync_works_inside_running_loop(
    tmp_path: Path, store_root: str
) -> None:
    root = make_tree(tmp_path / "ds", FILES)
    resolved = resolve_snapshot_sync(str(root), cfg(store_root))  # a loop is running here
    assert resolved.samples == 5
    assert mx8.resolve_manifest_hash(str(root), store=store_root) == resolved.manifest_hash
    assert "resolve_manifest_hash" in mx8.__all__


def test_resolve_manifest_hash_plain_code(tmp_path: Path, store_root: str) -> None:
    root = make_tree(tmp_path / "ds", FILES)
    h_auto = mx8.resolve_manifest_hash(str(root))
    h_none = mx8.resolve_manifest_hash(str(root), label_mode="none")
    assert h_auto != h_none  # same objects, but only auto carries imagefolder labels
    assert mx8.resolve_manifest_hash(f"{root}@refresh") == h_auto
    with pytest.raises(mx8.Mx8Error, match="directly under it"):
        mx8.resolve_manifest_hash(str(root), recursive=False)  # no files directly in root
    assert (Path(store_root) / "by-hash" / h_auto).is_file()


def test_snapshot_resolver_config_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MX8_SNAPSHOT_S3_EXTERNAL_SORT", "1")
    monkeypatch.setenv("MX8_SNAPSHOT_S3_SPILL_KEYS_PER_RUN", "123")
    monkeypatch.setenv("MX8_SNAPSHOT_LOCK_STALE_MS", "5000")
    c = SnapshotResolverConfig.from_env(recursive=False, label_mode=None)
    assert c.external_sort and c.spill_keys_per_run == 123 and c.lock_stale_ms == 5000
    assert c.recursive is False and c.label_mode == "auto"
    from mx8_common.errors import ConfigError

    with pytest.raises(ConfigError, match="label mode"):
        SnapshotResolverConfig(label_mode="folders")
    with pytest.raises(ConfigError, match="spill_keys_per_run"):
        SnapshotResolverConfig(spill_keys_per_run=0)


async def test_resolve_snapshot_plain_reuse_says_once_which_snapshot_and_how_to_refresh(
    tmp_path: Path, store_root: str, logs: Events
) -> None:
    root = make_tree(tmp_path / "ds", FILES)
    first = await resolve_snapshot(str(root), cfg(store_root))
    (root / "late.jpg").write_bytes(b"late")  # not seen: the reuse must say so
    for _ in range(3):
        await resolve_snapshot(str(root), cfg(store_root))
    reused = logs.named("snapshot_reused")
    assert len(reused) == 1  # once per process, not per call
    event = reused[0]
    assert event["manifest_hash"] == first.manifest_hash
    assert event["objects"] == 5
    assert event["link"] == str(root)
    assert event["refresh_with"] == f"{root}@refresh"
    assert first.listed_at is not None
    assert event["indexed_at"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(first.listed_at))
    assert event["age"].endswith("s")


async def test_resolve_snapshot_refresh_of_same_content_moves_the_listing_time(
    tmp_path: Path, store_root: str
) -> None:
    root = make_tree(tmp_path / "ds", FILES)
    before = time.time()
    first = await resolve_snapshot(str(root), cfg(store_root))
    assert first.listed_at is not None and before <= first.listed_at <= time.time()
    again = await resolve_snapshot(f"{root}@refresh", cfg(store_root))
    assert again.manifest_hash == first.manifest_hash  # the canonical TSV holds no time
    assert again.listed_at is not None and again.listed_at > first.listed_at
    reused = await resolve_snapshot(str(root), cfg(store_root))
    assert reused.listed_at == again.listed_at
