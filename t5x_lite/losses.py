"""Weighted cross-entropy objectives and their metrics.

Losses are returned as **sums** (over the weighted tokens / the rows of the batch)
together with the matching denominators, so gradient accumulation over
microbatches and evaluation over many batches both divide once, at the end, by the
global count: the mean over 2 microbatches of 3 + 1 weighted tokens is
``(sum_a + sum_b) / 4``, not ``(sum_a / 3 + sum_b / 1) / 2``.

Token loss at one position with logits ``z`` ``[V]``, label ``y``, label smoothing
``a`` and z-loss coefficient ``c``::

    log_p = log_softmax(z)
    ce    = -log_p[y]                                   # reported as "ce"
    loss  = -((1 - a) * log_p[y] + a / V * sum(log_p)) + c * logsumexp(z) ** 2

E.g. ``z = [0, 0]``, ``y = 1``, ``a = c = 0`` gives ``ce = loss = log 2 = 0.693``.
Which outputs are scored, against which labels and weights, is the model's
business (:mod:`t5x_lite.models.base`): e.g. encoders with a sentence head add the
row-mean NSP / SOP cross-entropy of ``sentence_logits`` ``[B, 2]`` against
``next_sentence_label`` ``[B]`` to the token mean (BERT's ``mlm_loss + nsp_loss``).
This module imports only jax.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array


def token_cross_entropy(
    logits: Array, labels: Array, label_smoothing: float = 0.0, z_loss: float = 0.0
) -> tuple[Array, Array]:
    """``logits [B, T, V]``, ``labels [B, T]`` -> ``(loss [B, T], ce [B, T])`` in float32.

    ``ce`` is the plain cross-entropy ``-log p(label)``; ``loss`` adds label smoothing
    and the z-loss (see the module docstring).
    """
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)  # [B, T]
    label_logit = jnp.take_along_axis(logits, labels[..., None].astype(jnp.int32), axis=-1)[
        ..., 0
    ]  # [B, T]
    ce = lse - label_logit
    loss = ce
    if label_smoothing > 0:
        mean_log_p = jnp.mean(logits, axis=-1) - lse  # [B, T] = sum(log_p) / V
        loss = (1.0 - label_smoothing) * ce - label_smoothing * mean_log_p
    if z_loss > 0:
        loss = loss + z_loss * jnp.square(lse)
    return loss, ce


def weighted_sums(
    logits: Array,
    labels: Array,
    weights: Array,
    prefix: str = "",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
) -> dict[str, Array]:
    """**Sums** of one head's objective and metrics (float32 scalars).

    ``logits [..., C]``, ``labels [...]`` int, ``weights [...]`` float. Keys (after
    ``prefix``): ``loss`` (weighted loss incl. smoothing / z-loss), ``ce`` (plain
    cross-entropy), ``correct`` (weighted argmax hits), ``weight`` (sum of weights).
    E.g. logits ``[[0, 0]]``, label ``[1]``, weight ``[2]`` -> ``loss = ce = 2 log 2``,
    ``correct = 0`` (the argmax of a tie is index 0, a miss), ``weight = 2``.
    """
    weights = weights.astype(jnp.float32)
    loss, ce = token_cross_entropy(logits, labels, label_smoothing, z_loss)
    hits = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return {
        f"{prefix}loss": jnp.sum(loss * weights),
        f"{prefix}ce": jnp.sum(ce * weights),
        f"{prefix}correct": jnp.sum(hits * weights),
        f"{prefix}weight": jnp.sum(weights),
    }


def total_loss(sums: dict[str, Array], denominators: dict[str, Array]) -> Array:
    """``sum_p sums[p + "loss"] / max(denominators[p + "weight"], 1)`` over the heads
    named in ``denominators`` (global counts: the whole batch, all microbatches)."""
    total = jnp.zeros((), jnp.float32)
    for key, weight in denominators.items():
        prefix = key[: -len("weight")]
        total = total + sums[f"{prefix}loss"] / jnp.maximum(weight, 1.0)
    return total


def summarize(sums: dict[str, Any]) -> dict[str, Any]:
    """Means from accumulated sums: ``loss``, ``perplexity``, ``accuracy`` (+ sentence).

    ``{"ce": 6.93, "correct": 5, "weight": 10, ...}`` -> ``{"loss": 0.693,
    "perplexity": 2.0, "accuracy": 0.5, ...}``. ``loss`` here is the mean token
    cross-entropy (no smoothing, no z-loss): ``perplexity = exp(loss)``.
    """
    out: dict[str, Any] = {}
    for key in sorted(k for k in sums if k.endswith("weight")):
        prefix = key[: -len("weight")]
        w = max(float(sums[key]), 1.0)
        out[f"{prefix}loss"] = float(sums[f"{prefix}ce"]) / w
        out[f"{prefix}accuracy"] = float(sums[f"{prefix}correct"]) / w
    if "loss" in out:  # the token (or single task) head
        out["perplexity"] = math.exp(min(out["loss"], 80.0))
    return out
