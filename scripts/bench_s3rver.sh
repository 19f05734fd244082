#!/usr/bin/env bash
# Run the S3 benchmark cases against s3rver (a Node.js S3-protocol server) instead of the
# default local server (SeaweedFS when installed, else moto).
#
# moto serves from one Python process at ~2 ms of CPU per GET, so on a small box it caps
# every client near the same rate and the S3 ratios measure the server. s3rver costs far
# less per request, so these rows show the clients. Needs npm (s3rver is pinned below and
# installed under .bench/, not committed). Usage:
#   bash scripts/bench_s3rver.sh [python -m benchmarks args...]
# e.g. bash scripts/bench_s3rver.sh --case users_default --case data_plane_s3
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "$ROOT/scripts/bootstrap.sh"
DIR="$ROOT/.bench/s3rver"
if [ ! -x "$DIR/node_modules/.bin/s3rver" ]; then
  mkdir -p "$DIR"
  (cd "$DIR" && npm install --silent --no-audit --no-fund s3rver@3.7.1 >/dev/null)
fi
data="$(mktemp -d)"
port="$(python -c 'from mx8_common.testing.local_s3 import free_port; print(free_port())')"
"$DIR/node_modules/.bin/s3rver" -d "$data" -a 127.0.0.1 -p "$port" --silent &
server=$!
trap 'rc=$?; kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$data"; exit $rc' EXIT
python - "$port" <<'PY'
import sys, time, urllib.error, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}/"
for _ in range(200):
    try:
        urllib.request.urlopen(url, timeout=1).close()
        break
    except urllib.error.HTTPError:
        break  # any HTTP answer: the server is up
    except OSError:
        time.sleep(0.05)
else:
    sys.exit(f"s3rver did not answer on {url}")
PY
cd "$ROOT"
if [ "$#" -eq 0 ]; then
  # Not indexing: s3rver answers InternalError listing the 5,000-key prefix (moto lists it).
  set -- --case data_plane_s3 --case users_default --case latency_proxy
fi
# s3rver's default credentials; the harness takes an external endpoint from this variable.
MX8_BENCH_S3_ENDPOINT="http://127.0.0.1:$port" AWS_ACCESS_KEY_ID=S3RVER \
  AWS_SECRET_ACCESS_KEY=S3RVER AWS_DEFAULT_REGION=us-east-1 python -m benchmarks "$@"
