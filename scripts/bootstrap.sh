#!/usr/bin/env bash
# Create .venv (once) and install mx8 with its test extras and the CPU build of torch.
# Sourced by scripts/test.sh and scripts/demo.sh so a fresh machine needs nothing else.
# Says on stderr what it does before each slow step: a first run installs for minutes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MX8_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
# Headless Chromium for the status-page browser test (it skips without it). Only as root on
# a Debian-like machine, and never when MX8_INSTALL_CHROMIUM=0.
if [ "${MX8_INSTALL_CHROMIUM:-1}" != "0" ] && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null \
  && ! command -v chromium >/dev/null; then
  echo "bootstrap: installing headless Chromium (apt-get) for the status-page browser test" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "bootstrap: could not install chromium; the status-page browser test will skip" >&2
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "bootstrap: creating $VENV (first run only)" >&2
  "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
stamp="$VENV/.mx8-installed"
if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
  if [ -f "$stamp" ]; then
    echo "bootstrap: pyproject.toml changed; updating mx8's packages in $VENV" >&2
  else
    echo "bootstrap: installing mx8 with its test extras and torch ${MX8_TORCH_VERSION:-2.13.0}" \
      "(CPU) into $VENV; about 2-3 minutes on a first run" >&2
  fi
  started=$SECONDS
  # pip's notes about configured mirrors that are absent here are noise; errors still show.
  quiet() { "$@" 2> >(grep -v -e "is ignored: it is neither" -e "^WARNING: Running pip as" >&2); }
  quiet python -m pip install -q --upgrade pip
  # torch is optional for users; tests of to_torch() and the vision loader need it. Pin the CPU
  # build so pip never pulls a multi-GB CUDA wheel.
  quiet python -m pip install -q "torch==${MX8_TORCH_VERSION:-2.13.0}"
  quiet python -m pip install -q -e "$ROOT[test]"
  touch "$stamp"
  echo "bootstrap: $VENV ready ($((SECONDS - started)) s)" >&2
fi
# azurite (the Azure Blob emulator the az:// tests start) comes from npm, pinned by
# tests/emulators/package-lock.json. Without npm those tests skip, naming why.
EMU="$ROOT/tests/emulators"
if command -v npm >/dev/null && { [ ! -f "$EMU/node_modules/.package-lock.json" ] \
  || [ "$EMU/package-lock.json" -nt "$EMU/node_modules/.package-lock.json" ]; }; then
  echo "bootstrap: installing azurite (npm ci in tests/emulators) for the az:// tests" >&2
  (cd "$EMU" && npm ci --no-audit --no-fund --loglevel=error >/dev/null) \
    || echo "bootstrap: npm ci failed; the az:// tests will skip" >&2
fi
