#!/usr/bin/env bash
# Every GPU figure in one run (<= 8 minutes on one H100/H200), one JSON line each:
#   bash bench/gpu.sh | tee gpu.jsonl
# GPT-2 124M (seq 1024, bf16, batch sweep), llama_1b MFU (seq 2048, AdamW), T5-base,
# BERT-base; each line with compile time, peak device memory, remat policy, XLA flags.
# Needs jax, flax, optax, numpy (no tfds, grain, gin, ml_collections).
# BENCH_SMOKE=1: tiny shapes on a CPU in seconds, with those four made unimportable.
# BENCH_FIGURES=gpt2,llama picks figures; BENCH_BUDGET_S (default 450) caps the run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if [[ "${BENCH_SMOKE:-0}" != "0" ]]; then
  export PYTHONPATH="$ROOT/bench/no_data_stack:$PYTHONPATH"
  export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
else
  # Overlap of communication and compute; set XLA_FLAGS yourself to replace these.
  export XLA_FLAGS="${XLA_FLAGS:---xla_gpu_enable_latency_hiding_scheduler=true}"
  # Let XLA take 95% of the device's memory (the default is 75%).
  export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-.95}"
fi
cd "$ROOT"
exec "$PY" bench/gpu.py
