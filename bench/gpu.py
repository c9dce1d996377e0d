"""Every GPU figure of the project in one run: the driver behind ``bench/gpu.sh``.

Runs ``python -m t5x_lite.bench`` once per trial, each in its own process (so each
trial's peak device memory is its own and an out-of-memory trial ends only itself),
from the JSON configs in ``bench/configs/`` (no ml_collections on the GPU image), and
prints one JSON line per trial, then one ``*_best`` line per figure::

    bash bench/gpu.sh | tee gpu.jsonl                 # one H100/H200, <= 8 minutes
    BENCH_SMOKE=1 bash bench/gpu.sh                   # tiny shapes on a CPU, seconds

Trials run in priority order: first one trial of every figure (GPT-2 124M at
sequence 1024 and batch 32, ``llama_1b`` at 2048 with AdamW, T5-base, BERT-base),
then the batch / remat sweep. A trial starts only while the time budget
(``BENCH_BUDGET_S``, default 450 s) has room for it (``--budget`` estimates per
trial); a trial that fails with ``attention_impl=cudnn`` is retried once with
``xla``; XLA flags this jax does not know (``Unknown flag in XLA_FLAGS``) are
dropped for the rest of the run (the lines say so). A failed trial is a line with
``"error"``. Each line carries the remat
policy, the attention implementation, the XLA flags, the compile time and the peak
device memory (``memory_stats()``) of its step.

Environment: ``BENCH_SMOKE=1`` (tiny CPU shapes), ``BENCH_FIGURES=gpt2,llama``
(a subset, by figure prefix), ``BENCH_SWEEP=0`` (the first trial of each figure
only), ``BENCH_BUDGET_S``, ``XLA_FLAGS`` (recorded).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = os.path.join(HERE, "configs")

# (figure, config, flags, seconds this trial is expected to take, priority: 0 = first).
# Flags are t5x_lite.bench's; --steps / --warmup come from the mode.
GPU_TRIALS: list[tuple[str, str, dict[str, Any], float, int]] = [
    ("gpt2_124m", "gpt2_small", dict(batch=32, seq=1024, remat="none"), 60, 0),
    ("llama_1b", "llama_1b", dict(batch=8, seq=2048, remat="none"), 120, 0),
    ("t5_base", "t5_base", dict(batch=64, seq=512, remat="none"), 70, 0),
    ("bert_base", "bert_base", dict(batch=256, seq=128, remat="none"), 50, 0),
    ("gpt2_124m", "gpt2_small", dict(batch=64, seq=1024, remat="none"), 60, 1),
    ("gpt2_124m", "gpt2_small", dict(batch=16, seq=1024, remat="none"), 50, 1),
    ("llama_1b", "llama_1b", dict(batch=16, seq=2048, remat="dots"), 130, 1),
    ("gpt2_124m", "gpt2_small", dict(batch=48, seq=1024, remat="none"), 60, 2),
]
GPU_COMMON = dict(dtype="bfloat16", attention_impl="cudnn", steps=10, warmup=2)

# The same figures on tiny presets, float32 on a CPU, in seconds.
SMOKE_TRIALS: list[tuple[str, str, dict[str, Any], float, int]] = [
    ("gpt2_124m", "gpt2_tiny", dict(batch=4, seq=32, remat="none"), 5, 0),
    ("llama_1b", "llama_tiny", dict(batch=4, seq=32, remat="none"), 5, 0),
    ("t5_base", "t5_tiny", dict(batch=4, seq=32, remat="none"), 5, 0),
    ("bert_base", "bert_tiny", dict(batch=4, seq=32, remat="none"), 5, 0),
    ("gpt2_124m", "gpt2_tiny", dict(batch=8, seq=32, remat="none"), 5, 1),
    ("llama_1b", "llama_tiny", dict(batch=4, seq=32, remat="dots"), 5, 1),
]
SMOKE_COMMON = dict(dtype="float32", attention_impl="xla", steps=2, warmup=0)

# Which number picks a figure's best trial.
BEST_BY = {"gpt2_124m": "tokens_per_s", "llama_1b": "mfu", "t5_base": "tokens_per_s",
           "bert_base": "tokens_per_s"}  # fmt: skip


def bench_command(config: str, flags: dict[str, Any], figure: str) -> list[str]:
    """The ``python -m t5x_lite.bench`` command line of one trial."""
    cmd = [sys.executable, "-m", "t5x_lite.bench", "--config",
           os.path.join(CONFIGS, f"{config}.json"), "--figure", figure]  # fmt: skip
    for key, value in flags.items():
        cmd += [f"--{key}", str(value)]
    return cmd


def run_trial(cmd: list[str], timeout: float, env: dict[str, str]) -> dict[str, Any]:
    """The JSON line of one trial, or ``{"error": ...}`` (its last stderr line)."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode == 0 and lines:
        return json.loads(lines[-1])
    err = done.stderr.strip().splitlines() or [f"exit {done.returncode}"]
    flag = [ln for ln in err if "Unknown flag in XLA_FLAGS" in ln]  # then a stack trace
    return {"error": (flag or err)[-1][:500]}


def best_lines(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One ``<figure>_best`` record per figure: its trial with the highest ``BEST_BY``
    number (failed trials never win)."""
    out = []
    for figure, key in BEST_BY.items():
        ok = [r for r in records if r.get("figure") == figure and r.get(key) is not None]
        if not ok:
            ok = [r for r in records if r.get("figure") == figure and "error" not in r]
        if ok:
            best = max(ok, key=lambda r: r.get(key) or r.get("tokens_per_s") or 0.0)
            out.append({**best, "figure": f"{figure}_best", "best_by": key,
                        "trials": sum(r.get("figure") == figure for r in records)})  # fmt: skip
    return out


def main() -> None:
    smoke = os.environ.get("BENCH_SMOKE", "") not in ("", "0")
    trials, common = (SMOKE_TRIALS, SMOKE_COMMON) if smoke else (GPU_TRIALS, GPU_COMMON)
    wanted = [w for w in os.environ.get("BENCH_FIGURES", "").split(",") if w]
    if wanted:
        trials = [t for t in trials if any(t[0].startswith(w) for w in wanted)]
    if os.environ.get("BENCH_SWEEP", "1") == "0":
        trials = [t for t in trials if t[4] == 0]
    budget = float(os.environ.get("BENCH_BUDGET_S", "450"))
    start = time.perf_counter()
    env, dropped = dict(os.environ), ""
    records: list[dict[str, Any]] = []
    for figure, config, flags, estimate, priority in sorted(trials, key=lambda t: t[4]):
        left = budget - (time.perf_counter() - start)
        if priority > 0 and left < estimate:
            continue  # the sweep only while the budget has room
        if left <= 0:
            records.append({"figure": figure, "config": config, **flags,
                            "error": "skipped: time budget spent"})  # fmt: skip
            print(json.dumps(records[-1]), flush=True)
            continue
        args = {**common, **flags}
        record = run_trial(bench_command(config, args, figure), left, env)
        if "Unknown flag in XLA_FLAGS" in record.get("error", ""):
            dropped = env.pop("XLA_FLAGS", "")
            left = budget - (time.perf_counter() - start)
            record = run_trial(bench_command(config, args, figure), max(left, 1), env)
        if "error" in record and args["attention_impl"] == "cudnn":
            first_error = record["error"]
            args["attention_impl"] = "xla"
            left = budget - (time.perf_counter() - start)
            record = run_trial(bench_command(config, args, figure), max(left, 1), env)
            record["cudnn_error"] = first_error
        if dropped:
            record["xla_flags_dropped"] = dropped
        if "error" in record:
            record = {"figure": figure, "config": config, **args, **record}
        record["mode"] = "smoke" if smoke else "gpu"
        records.append(record)
        print(json.dumps(record), flush=True)
    for line in best_lines(records):
        print(json.dumps(line), flush=True)
    wall = round(time.perf_counter() - start, 1)
    print(json.dumps({"figure": "total", "wall_s": wall, "budget_s": budget,
                      "trials": len(records),
                      "failed": sum("error" in r for r in records)}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
