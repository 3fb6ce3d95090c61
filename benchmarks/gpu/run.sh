#!/usr/bin/env bash
# LoRA training throughput and MFU on one GPU: the workload's loop vs a plain PEFT loop.
# Usage (on the lent GPU machine, from anywhere): benchmarks/gpu/run.sh [bench_gpu.py options]
# Needs python3 with torch (CUDA), transformers and peft; no network, no model weights.
# Prints a JSON summary and writes it to $OUT/gpu_bench.json when OUT is set. <8 min on an H100.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-python3}"
"$PY" -c 'import torch, transformers, peft' 2>/dev/null || {
  echo "run.sh: error: $PY lacks torch, transformers or peft" >&2
  exit 2
}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# a hard ceiling below the device machine's 10-minute command limit
exec timeout --signal=TERM 480 "$PY" benchmarks/gpu/bench_gpu.py "$@"
