"""Console progress of a run: a tqdm bar, or one plain line per logged step.

The bar shows ``step/num_steps``, the ETA and a postfix such as
``loss=4.812, eval_ppl=121.3, tok/s=5.2k, FLOP/s=2.1G`` (``MFU=41.2%`` where the
device's peak is known). Without a bar (``train.progress_bar=False`` or a process
other than 0) each logged step prints one line::

    step 120/1000  loss 4.812  eval_ppl 121.3  tok/s 5.2k  FLOP/s 2.1G  eta 3m05s
"""

from __future__ import annotations

import sys
import time
from typing import Any


def human(x: float) -> str:
    """``5230.0`` -> ``"5.2k"``, ``2.1e9`` -> ``"2.1G"``."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.1f}{unit}"
    return f"{x:.1f}"


def duration(seconds: float) -> str:
    """``185`` -> ``"3m05s"``."""
    seconds = max(int(seconds), 0)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def postfix(stats: dict[str, Any]) -> dict[str, str]:
    """Short display strings of the latest train / eval numbers."""
    out: dict[str, str] = {}
    if stats.get("loss") is not None:
        out["loss"] = f"{stats['loss']:.3f}"
    if stats.get("eval_perplexity") is not None:
        out["eval_ppl"] = f"{stats['eval_perplexity']:.1f}"
    if stats.get("tokens_per_second"):
        out["tok/s"] = human(stats["tokens_per_second"])
    if stats.get("mfu") is not None:
        out["MFU"] = f"{100 * stats['mfu']:.1f}%"
    elif stats.get("flops_per_second"):
        out["FLOP/s"] = human(stats["flops_per_second"])
    return out


class Progress:
    """``update(step, stats)`` after each step; ``write(msg)`` prints above the bar."""

    def __init__(self, total: int, initial: int, bar: bool, enabled: bool = True) -> None:
        self.total = total
        self.enabled = enabled
        self._bar = None
        self._start = time.perf_counter()
        self._start_step = initial
        if enabled and bar:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True
            )

    def update(self, step: int, stats: dict[str, Any], logged: bool) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            if logged:
                self._bar.set_postfix(postfix(stats), refresh=False)
            return
        if logged:
            done = step - self._start_step
            rate = done / max(time.perf_counter() - self._start, 1e-9)
            eta = (self.total - step) / rate if rate > 0 else 0.0
            fields = "  ".join(f"{k} {v}" for k, v in postfix(stats).items())
            print(f"step {step}/{self.total}  {fields}  eta {duration(eta)}", flush=True)

    def write(self, msg: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(msg, file=sys.stdout)
        else:
            print(msg, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
