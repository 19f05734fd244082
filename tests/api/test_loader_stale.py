"""Stale snapshots: a plain link's reuse says so, and a same-size overwrite is refused."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from support.api import collect, flat, make_local_dataset, make_s3_dataset
from support.eventually import assert_eventually_blocking
from support.s3_clock import server_time

import mx8


def test_load_same_size_s3_overwrite_after_snapshot_is_refused_until_refresh(
    s3_sync_client: Any, s3_bucket: str, store_root: str
) -> None:
    objects = make_s3_dataset(s3_sync_client, s3_bucket, "ds/", per_class=5)
    link = f"s3://{s3_bucket}/ds/"
    first = mx8.load(link, batch_size=4)
    assert sorted(flat(collect(first))) == list(range(10))
    listed_at = first.snapshot.listed_at
    assert listed_at is not None
    # Overwrite one object with other bytes of the same length, a second later on S3's clock.
    assert_eventually_blocking(lambda: server_time(s3_sync_client, s3_bucket) > listed_at)
    victim = sorted(objects)[3]
    key = victim.removeprefix(f"s3://{s3_bucket}/")
    s3_sync_client.put_object(Bucket=s3_bucket, Key=key, Body=objects[victim].upper())

    stale = mx8.load(link, batch_size=4)  # the plain link reuses the old snapshot
    assert stale.manifest_hash == first.manifest_hash
    with pytest.raises(mx8.ObjectChangedError) as info:
        collect(stale)
    assert info.value.location == victim
    assert "@refresh" in str(info.value)

    fresh = mx8.load(link + "@refresh", batch_size=4)
    assert fresh.manifest_hash == first.manifest_hash  # same keys and sizes: same identity
    payloads = {}
    for batch in fresh:
        for i, sid in enumerate(batch.sample_ids):
            payloads[int(sid)] = bytes(batch.payloads[i])
    assert payloads[3] == objects[victim].upper()
    assert sorted(flat(collect(mx8.load(link, batch_size=4)))) == list(range(10))


def test_load_same_size_local_overwrite_after_snapshot_is_refused_until_refresh(
    tmp_path: Path, store_root: str
) -> None:
    root = tmp_path / "data"
    files = make_local_dataset(root, per_class=3)
    first = mx8.load(str(root), batch_size=4)
    listed_at = first.snapshot.listed_at
    assert_eventually_blocking(lambda: time.time() > listed_at + 0.05)
    victim = sorted(files)[0]
    Path(victim).write_bytes(files[victim].upper())
    with pytest.raises(mx8.ObjectChangedError, match="@refresh"):
        collect(mx8.load(str(root), batch_size=4))
    assert len(flat(collect(mx8.load(f"{root}@refresh", batch_size=4)))) == 9


def test_load_plain_link_reuse_is_told_on_stderr_not_stdout(
    tmp_path: Path, store_root: str
) -> None:
    root = tmp_path / "data"
    make_local_dataset(root, per_class=2)
    script = textwrap.dedent(
        f"""
        import mx8
        mx8.load({str(root)!r})
        mx8.load({str(root)!r})
        mx8.load({str(root)!r})
        print("training output")
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MX8_LOG")}
    env["MX8_MANIFEST_STORE_ROOT"] = store_root
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "training output\n"  # events never land in a script's output
    reuse_lines = [line for line in out.stderr.splitlines() if "snapshot_reused" in line]
    assert len(reuse_lines) == 1
    line = reuse_lines[0]
    hash_ = mx8.resolve_manifest_hash(str(root))
    for fragment in (hash_, "objects=6", "indexed_at=", f"refresh_with={root}@refresh"):
        assert fragment in line
