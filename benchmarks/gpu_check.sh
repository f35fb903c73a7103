#!/usr/bin/env bash
# The prepared GPU check of issue 11: step it/s and peak memory of every method at the published
# ACDC (12+12 @ 256x256) and LA (112x112x80) batch, plain and fast paths side by side, the
# training batches/s of the DataLoader against data.on_device, then the whole
# `ssmis train configs/acdc/bcp.yaml` loop for MINUTES minutes (its it/s and test Dice).
#
# Before the device call, on the development machine (once; writes the git-ignored
# benchmarks/data/: a 43 MiB ACDC copy and 7.5 MiB of wheels the GPU image lacks):
#   python benchmarks/pack_gpu_data.py --wheels
# The device command (run tool; about 7 minutes on an H200 by the H100 figures, inside one 10-minute
# call; prints step tables first, so a cut-off run still reports them):
#   run(command="bash benchmarks/gpu_check.sh 2.5 2>&1 | tee $OUT/gpu_check.txt",
#       carry=["benchmarks/data"], timeout_s=600)
# Extra arguments after MINUTES go to benchmarks/gpu_check.py, e.g.
#   bash benchmarks/gpu_check.sh 2.5 --variants plain fast compile --loop-method cvbm
# CPU, seconds (what CI runs through tests/test_speed.py):
#   bash benchmarks/gpu_check.sh 0 --quick
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-2.5}
shift || true
PY=${PYTHON:-python3}
if ! "$PY" -c "import pydantic, monai, nibabel" 2>/dev/null; then
  if [ -d benchmarks/data/wheels ]; then  # offline install of what the image lacks
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/ssmis-site benchmarks/data/wheels/*.whl
    export PYTHONPATH=/tmp/ssmis-site${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "pydantic/monai/nibabel missing and no benchmarks/data/wheels: run" \
         "python benchmarks/pack_gpu_data.py --wheels first and carry benchmarks/data" >&2
    exit 2
  fi
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
  --format=csv,noheader || true
exec "$PY" benchmarks/gpu_check.py --minutes "$MINUTES" "$@"
