#!/usr/bin/env bash
# LoRA training throughput and MFU on one GPU: the workload's loop vs TRL SFTTrainer (packing,
# fused LM head, Liger layer kernels) vs a plain PEFT loop.
# Usage (on the lent GPU machine, from anywhere): benchmarks/gpu/run.sh [bench_gpu.py options]
#   e.g. --models llama-1.1b --seq-len 2048 --batch-size 8
# Needs python3 with torch (CUDA), transformers and peft; no network, no model weights. The TRL
# column needs trl and datasets: with TRL_WHEELS=<dir of wheels> they are installed from there
# (offline); without them it is reported as skipped.
# Prints a JSON summary and writes it to $OUT/gpu_bench.json when OUT is set. <8 min on an H100.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-python3}"
"$PY" -c 'import torch, transformers, peft' 2>/dev/null || {
  echo "run.sh: error: $PY lacks torch, transformers or peft" >&2
  exit 2
}
if [[ -n "${TRL_WHEELS:-}" ]] && ! "$PY" -c 'import trl, datasets' 2>/dev/null; then
  "$PY" -m pip install -q --no-index --find-links "$TRL_WHEELS" trl==1.16.0 liger-kernel==0.8.5
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# a hard ceiling below the device machine's 10-minute command limit
exec timeout --signal=TERM 480 "$PY" benchmarks/gpu/bench_gpu.py "$@"
