#!/usr/bin/env bash
# Every check CI runs: lint, import layers, generated-code staleness, the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
ruff check .
ruff format --check .
lint-imports --no-logo
python scripts/gen_proto.py --check
python -m pytest -q -p no:cacheprovider "$@"
