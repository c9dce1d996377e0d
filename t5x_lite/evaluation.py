"""Evaluation of a train state on a fixed list of global batches."""

from __future__ import annotations

from typing import Any

import jax

from t5x_lite import losses, steps
from t5x_lite.partitioning import replicated_value


def evaluate(run: steps.Steps, params: Any, batches: list[dict[str, jax.Array]]) -> dict:
    """Mean token CE (``loss``), ``perplexity``, ``accuracy`` (+ sentence metrics)."""
    total: dict[str, float] = {}
    for batch in batches:
        sums = replicated_value(run.run(run.eval, params, batch))
        for k, v in sums.items():
            total[k] = total.get(k, 0.0) + float(v)
    return losses.summarize(total) if total else {}
