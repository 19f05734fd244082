#!/usr/bin/env bash
# Install the benchmark baselines into mx8's .venv: s3torchconnector and MosaicML Streaming.
# They are not a pip extra: streaming 0.13.0 pins numpy < 2.2 and pulls
# torchvision, which drags in a CUDA torch. So: s3torchconnector under a torch/numpy pin, and
# streaming without its declared deps plus the ones its MDS writer/reader import (its
# MDSWriter and StreamingDataset run on numpy 2.4 here).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "$ROOT/scripts/bootstrap.sh"
pins="$(mktemp)"
trap 'rm -f "$pins"' EXIT
python - >"$pins" <<'PY'
import numpy, torch
print(f"torch=={torch.__version__}\nnumpy=={numpy.__version__}")
PY
quiet() { "$@" 2> >(grep -v -e "is ignored: it is neither" -e "^WARNING: Running pip as" >&2); }
echo "install_bench: installing s3torchconnector and MosaicML Streaming into $VIRTUAL_ENV" >&2
quiet python -m pip install -q -c "$pins" "s3torchconnector>=1.5"
# Streaming's runtime deps first, streaming itself last and without its declared deps: pip
# checks declared deps after every install, so any install after it would end with a
# resolver ERROR about the ones it skips on purpose (numpy<2.2, torchvision, cloud SDKs).
quiet python -m pip install -q -c "$pins" Brotli catalogue python-snappy "xxhash<4" zstd tqdm boto3 \
  "transformers>=4.21.3,<5"
quiet python -m pip install -q --no-deps "mosaicml-streaming==0.13.0"
cd "$ROOT"
python -c "import s3torchconnector; from benchmarks.case_first_batch import import_streaming_base; import_streaming_base()" \
  && echo "bench baselines installed: python -m benchmarks"
