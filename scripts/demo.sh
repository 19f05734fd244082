#!/usr/bin/env bash
# The main job end to end: local S3-protocol server, mx8-coordinator, two mx8d-agents, two trainers.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
exec python -m mx8.demo "$@"
