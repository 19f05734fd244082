"""The README's first command: the whole distributed path, end to end, as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_demo_runs_full_path_and_delivers_every_sample_once() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MX8_", "AWS_"))}
    result = subprocess.run(
        [sys.executable, "-m", "mx8.demo", "--per-class", "12", "--timeout", "240"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "epoch 0: every sample delivered once: yes" in out
    assert "epoch 1: every sample delivered once: yes" in out
    assert "objects: 36" in out
    assert "manifest hash:" in out
