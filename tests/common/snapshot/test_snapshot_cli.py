"""``mx8-snapshot-resolve`` as a real subprocess: output, errors, and 8 concurrent processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mx8_common.errors import ConfigError
from mx8_common.snapshot.cli import build_parser, main
from mx8_common.snapshot.resolver import SnapshotResolverConfig


def _cli() -> list[str]:
    exe = shutil.which("mx8-snapshot-resolve")
    return [exe] if exe else [sys.executable, "-m", "mx8_common.snapshot.cli"]


def _tree(root: Path) -> Path:
    for i in range(12):
        p = root / f"class{i % 3}" / f"{i:02d}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x" * (i + 1))
    (root / "top.bin").write_bytes(b"top")
    return root


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_cli(), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_snapshot_cli_prints_hash_and_json(tmp_path: Path) -> None:
    root = _tree(tmp_path / "ds")
    store = str(tmp_path / "store")
    plain = _run(str(root), "--store", store)
    assert plain.returncode == 0, plain.stderr
    manifest_hash = plain.stdout.strip()
    assert len(manifest_hash) == 64
    as_json = _run(str(root), "--store", store, "--json")
    assert as_json.returncode == 0, as_json.stderr
    obj = json.loads(as_json.stdout)
    assert obj == {
        "manifest_hash": manifest_hash,
        "objects_indexed": 13,
        "manifest_bytes": Path(obj["store_path"]).stat().st_size,
        "recursive": True,
        "label_mode": "auto",
        "store_path": str(tmp_path / "store" / "by-hash" / manifest_hash),
    }
    flat = json.loads(_run(str(root), "--store", store, "--json", "--no-recursive").stdout)
    assert flat["objects_indexed"] == 1 and flat["recursive"] is False
    labeled = _run(f"{root}@refresh", "--store", store, "--json", "--label-mode", "imagefolder")
    assert labeled.returncode == 2  # top.bin is not inside a class folder
    assert "top.bin" in labeled.stderr and "Traceback" not in labeled.stderr


@pytest.mark.parametrize(
    ("link", "fragment"),
    [
        ("hdfs://bucket/p", "unknown scheme"),
        ("relative/dir", "relative path"),
        ("/no/such/dir/anywhere", "does not exist"),
        (f"/tmp@sha256:{'1' * 64}", "has no snapshot"),
    ],
)
def test_snapshot_cli_errors_exit_2_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], link: str, fragment: str
) -> None:
    assert main([link, "--store", str(tmp_path / "store")]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err
    assert err.splitlines()[-1].startswith("mx8-snapshot-resolve: error: ")


def test_snapshot_cli_s3_link_json(
    s3_env: Any, s3_bucket: str, s3_sync_client: Any, tmp_path: Path
) -> None:
    for i in range(6):
        s3_sync_client.put_object(
            Bucket=s3_bucket, Key=f"p/{'ab'[i % 2]}/{i}.jpg", Body=b"1" * i or b"0"
        )
    result = _run(f"s3://{s3_bucket}/p/", "--store", str(tmp_path / "store"), "--json")
    assert result.returncode == 0, result.stderr
    obj = json.loads(result.stdout)
    assert obj["objects_indexed"] == 6 and obj["label_mode"] == "auto"


def test_snapshot_cli_eight_concurrent_processes_one_indexer(tmp_path: Path) -> None:
    root = _tree(tmp_path / "ds")
    store = str(tmp_path / "store")
    env = {**os.environ, "MX8_LOG_FORMAT": "json"}
    procs = [
        subprocess.Popen(
            [*_cli(), str(root), "--store", store, "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(8)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
    hashes = {json.loads(out)["manifest_hash"] for out, _ in outputs}
    events = [
        json.loads(line)["event"]
        for _, err in outputs
        for line in err.splitlines()
        if line.startswith("{")
    ]
    assert len(hashes) == 1
    assert events.count("snapshot_indexer_elected") == 1
    assert events.count("snapshot_index_summary") == 1


@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_snapshot_cli_list_concurrency_must_be_a_positive_number(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["s3://b/p/", "--list-concurrency", value])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--list-concurrency" in err and value in err


def test_resolver_config_list_concurrency_from_env_and_validated() -> None:
    cfg = SnapshotResolverConfig.from_env({"MX8_SNAPSHOT_LIST_CONCURRENCY": "4"})
    assert cfg.list_concurrency == 4
    assert SnapshotResolverConfig.from_env({}).list_concurrency == 32
    with pytest.raises(ConfigError, match="list_concurrency must be >= 1"):
        SnapshotResolverConfig(list_concurrency=0)
