#!/usr/bin/env bash
# LoRA training throughput and MFU on one GPU: the workload's loop vs TRL SFTTrainer (packing,
# fused LM head, Liger layer kernels) vs a plain PEFT loop.
# Usage (on the lent GPU machine, from anywhere):
#   benchmarks/gpu/run.sh                 both models at seq 512 (batch 16), then at seq 2048
#                                         (batch 8): gpu_bench-seq512.json, gpu_bench-seq2048.json
#   benchmarks/gpu/run.sh [bench_gpu.py options]   one run, e.g. --models llama-1.1b --seq-len 2048
# Needs python3 with torch (CUDA), transformers and peft; no network, no model weights. The TRL
# column needs trl and datasets: with TRL_WHEELS=<dir of wheels> they are installed from there
# (offline); without them it is reported as skipped.
# Prints each JSON summary and writes it under $OUT when OUT is set. About 2 x 2-4 min on an H100.
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
bench() {  # a hard ceiling per run, below the device machine's 10-minute command limit
  timeout --signal=TERM 290 "$PY" benchmarks/gpu/bench_gpu.py "$@"
}
if [[ $# -gt 0 ]]; then
  bench "$@"
  exit
fi
out="${OUT:-.}"
bench --seq-len 512 --batch-size 16 --out "$out/gpu_bench-seq512.json"
bench --seq-len 2048 --batch-size 8 --out "$out/gpu_bench-seq2048.json"
