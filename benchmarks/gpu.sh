#!/usr/bin/env bash
# The GPU run of issue #18, ready for a lent GPU machine (one H200 or H100):
#   benchmarks/gpu.sh            # 512^3 train and segment, then 2048^3 Zarr to Zarr (needs ~45 GiB of disk)
#   benchmarks/gpu.sh --size 32 --inference-size 48 --device cpu --epochs 1   # the small path the tests run
# Prints the machine, the training and segmenting times, the on-disk throughput and the
# peak GPU memory; goals: 512^3 train <= 60 s, segment <= 5 s; 2048^3 from and to disk <= 120 s.
# Arguments after the defaults override them (argparse keeps the last). Set PYTHON to
# choose the interpreter (default: the project's .venv, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
exec "$python" -m benchmarks.segmentation speed --size 512 --inference-size 2048 --device auto "$@"
