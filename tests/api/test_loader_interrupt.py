"""Ctrl-C in a training loop stops mx8's background engine: no hang, no thread left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from support.api import make_local_dataset

_TRAINER = textwrap.dedent(
    """
    import sys, threading, time
    import mx8

    loader = mx8.load(sys.argv[1], batch_size=2, max_inflight_bytes=64)
    try:
        for batch in loader:
            print("batch", flush=True)
            time.sleep(0.2)  # a slow training step: the engine is mid-fetch when SIGINT lands
    except KeyboardInterrupt:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(
            t.name == "mx8-engine" and t.is_alive() for t in threading.enumerate()
        ):
            time.sleep(0.01)
        alive = [t.name for t in threading.enumerate() if t.name == "mx8-engine" and t.is_alive()]
        print("interrupted; engine threads alive:", len(alive), flush=True)
        sys.exit(130)
    print("finished without interrupt", flush=True)
    """
)


def test_loader_ctrl_c_stops_engine_thread_promptly(tmp_path: Path, store_root: str) -> None:
    root = tmp_path / "data"
    make_local_dataset(root, per_class=40)
    script = tmp_path / "trainer.py"
    script.write_text(_TRAINER)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "MX8_MANIFEST_STORE_ROOT": store_root},
    )
    try:
        assert proc.stdout is not None
        for _ in range(2):  # wait until it is really training
            assert proc.stdout.readline().strip() == "batch", proc.stderr
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
        assert time.monotonic() - started < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, (out, err)
    assert "interrupted; engine threads alive: 0" in out, (out, err)
