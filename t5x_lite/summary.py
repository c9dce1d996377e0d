"""The lines printed at the end of a run: evaluation, sample, timing, where things are."""

from __future__ import annotations

import os
import shutil
import sys
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
        text = f"step {1e3 * result['mean_step_s']:.1f} ms"
        if result.get("loop_tokens_per_second"):
            text += f" ({result['loop_tokens_per_second']:.0f} tokens/s, whole loop)"
        timing.append(text)
    if result.get("peak_memory_bytes"):
        mib = result["peak_memory_bytes"] / 2**20
        if result.get("memory_source") == "memory_stats":
            timing.append(f"peak device memory {mib:.1f} MiB (memory_stats)")
        else:
            live = result["live_bytes"]
            timing.append(
                f"peak device memory {mib:.1f} MiB (live arrays: {live['steady'] / 2**20:.1f} "
                f"MiB at logs, {live['during_save'] / 2**20:.1f} MiB during saves)"
            )
    if result.get("skipped_steps"):
        timing.append(f"{result['skipped_steps']} non-finite steps skipped")
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
        where = metrics_lib.workdir_path(workdir, "best")
        lines.append(f"best checkpoint: {where} ({best['metric']} {best['value']:.4f})")
    for p in result["plots"]:
        lines.append(f"plot: {p}")
    lines.append(f"metrics: {metrics_lib.workdir_path(workdir, metrics_lib.METRICS_FILE)}")
    lines.append(
        f"tensorboard: {tensorboard_command()} --logdir "
        f"{metrics_lib.workdir_path(workdir, metrics_lib.TB_DIR)}"
    )
    print("\n".join(lines), flush=True)


def tensorboard_command() -> str:
    """How to start the TensorBoard installed beside this interpreter, as the user's
    shell would find it: ``tensorboard`` when that is the one on ``PATH``, else its
    path (``.venv/bin/tensorboard`` after ``make train``, whose ``.venv`` is not
    active in the shell that ran it)."""
    here = os.path.join(os.path.dirname(sys.executable), "tensorboard")
    if not os.path.exists(here):
        return "tensorboard"  # another installation; the requirements install one here
    found = shutil.which("tensorboard")
    if found and os.path.realpath(found) == os.path.realpath(here):
        return "tensorboard"
    relative = os.path.relpath(here)
    return relative if not relative.startswith("..") else here
