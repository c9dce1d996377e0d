"""The lines printed at the end of a run: evaluation, sample, timing, where things are."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from t5x_lite import metrics as metrics_lib


def print_summary(result: dict[str, Any], workdir: str) -> None:
    ev = result["final_eval"]
    lines = []
    if result["preempted"]:
        lines.append(
            f"stopped at step {result['steps']}; checkpoint saved, run the same command "
            "again to resume"
        )
    if ev:
        # loss and perplexity first where the run has them (span QA logs start/end losses).
        first = [f"loss {ev['loss']:.4f}"] if "loss" in ev else []
        first += [f"perplexity {ev['perplexity']:.2f}"] if "perplexity" in ev else []
        extra = [f"{k} {v:.4f}" for k, v in ev.items() if k not in ("loss", "perplexity")]
        lines.append(f"eval at step {result['eval_step']}: " + ", ".join(first + extra))
    if result["sample"] is not None:
        lines.append(f"sample: {result['sample']!r}")
    timing = []
    if result["compile_s"] is not None:
        timing.append(f"first step (compile) {result['compile_s']:.1f} s")
    if result["mean_step_s"] is not None:
        timing.append(f"step {1e3 * result['mean_step_s']:.1f} ms")
    saves = result["save_blocking_s"]
    if saves:
        first, rest = 1e3 * saves[0], [1e3 * x for x in saves[1:]]
        text = f"checkpoint save blocked the loop {first:.1f} ms (first save"
        if rest:
            text += f"), {float(np.median(rest)):.1f} ms (median of the other {len(rest)}"
        timing.append(text + ")")
    if result["restore_s"] is not None:
        timing.append(f"restore {result['restore_s']:.2f} s")
    if timing:
        lines.append("timing: " + ", ".join(timing))
    lines.append(f"checkpoints: {result['checkpoint_dir']} (step {result['checkpoint_step']})")
    best = result.get("best")
    if best and best.get("value") is not None:
        where = os.path.join(os.path.abspath(workdir), "best")
        lines.append(f"best checkpoint: {where} ({best['metric']} {best['value']:.4f})")
    for p in result["plots"]:
        lines.append(f"plot: {p}")
    lines.append(f"metrics: {os.path.join(os.path.abspath(workdir), metrics_lib.METRICS_FILE)}")
    lines.append(
        "tensorboard: tensorboard --logdir "
        f"{os.path.join(os.path.abspath(workdir), metrics_lib.TB_DIR)}"
    )
    print("\n".join(lines), flush=True)
