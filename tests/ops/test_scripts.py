"""First-run scripts: bootstrap says what it installs before it does; install_bench ends clean.

The installs themselves need the network and minutes; here a stand-in venv whose ``python``
records its arguments shows what the scripts do and what they print, in order.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _fake_venv(venv: Path, log: Path) -> None:
    """A venv whose python logs ``pip ...`` calls (and prints pins for install_bench)."""
    bin_dir = venv / "bin"
    bin_dir.mkdir(parents=True)
    python = bin_dir / "python"
    python.write_text(
        "#!/usr/bin/env bash\n"
        f'echo "python $*" >> {log}\n'
        'if [ "${1:-}" = "-" ]; then cat >/dev/null; echo "torch==2.13.0"; fi\n'
    )
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    (bin_dir / "activate").write_text(f'export VIRTUAL_ENV={venv}\nexport PATH="{bin_dir}:$PATH"\n')


def _run(script: str, venv: Path, log: Path) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with its stderr appended to ``log``, where the stand-in python writes.

    Both append to one file, so what the script says and what it runs keep their order.
    """
    env = {**os.environ, "MX8_VENV": str(venv), "MX8_INSTALL_CHROMIUM": "0"}
    env.pop("VIRTUAL_ENV", None)
    with open(log, "a") as stderr:
        return subprocess.run(
            ["bash", str(ROOT / script)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            timeout=60,
        )


def test_bootstrap_says_what_it_installs_before_installing(tmp_path: Path) -> None:
    venv, log = tmp_path / "venv", tmp_path / "log"
    _fake_venv(venv, log)
    out = _run("scripts/bootstrap.sh", venv, log)
    assert out.returncode == 0, log.read_text()
    lines = log.read_text().splitlines()
    said = [i for i, line in enumerate(lines) if line.startswith("bootstrap: installing mx8")]
    pip = [i for i, line in enumerate(lines) if "-m pip install" in line]
    assert said and pip and said[0] < pip[0], lines
    assert "about 2-3 minutes on a first run" in lines[said[0]]
    assert any(line.startswith("bootstrap:") and "ready" in line for line in lines[pip[-1] :])
    # Installed once: a second run is silent and installs nothing.
    log.write_text("")
    assert _run("scripts/bootstrap.sh", venv, log).returncode == 0
    assert log.read_text() == ""


def test_install_bench_installs_streaming_last_without_deps(tmp_path: Path) -> None:
    # pip checks declared deps after each install: anything installed after streaming (which
    # is installed without its declared deps on purpose) would end in a resolver ERROR.
    venv, log = tmp_path / "venv", tmp_path / "log"
    _fake_venv(venv, log)
    (venv / ".mx8-installed").touch()
    out = _run("scripts/install_bench.sh", venv, log)
    assert out.returncode == 0, log.read_text()
    installs = [line for line in log.read_text().splitlines() if "-m pip install" in line]
    assert "mosaicml-streaming" in installs[-1] and "--no-deps" in installs[-1]
    assert not any("mosaicml-streaming" in line for line in installs[:-1])
