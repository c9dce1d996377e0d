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
Encoders with a sentence head add the row-mean NSP / SOP cross-entropy of
``sentence_logits`` ``[B, 2]`` against ``next_sentence_label`` ``[B]`` to the
token mean (BERT's pre-training loss: ``mlm_loss + nsp_loss``).
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


def objective_sums(
    outputs: dict[str, Array],
    batch: dict[str, Array],
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
) -> dict[str, Array]:
    """Per-batch **sums** of the training objective and metrics (float32 scalars).

    Keys: ``loss`` (weighted token loss incl. smoothing/z-loss), ``ce`` (plain token
    CE), ``correct`` (weighted argmax hits), ``weight`` (sum of ``loss_weights``); with
    ``sentence_logits`` also ``sentence_loss``, ``sentence_correct``, ``sentence_rows``.
    """
    logits = outputs["logits"]  # [B, T, V]
    labels = batch["labels"]  # [B, T]
    weights = batch["loss_weights"].astype(jnp.float32)  # [B, T]
    loss, ce = token_cross_entropy(logits, labels, label_smoothing, z_loss)
    hits = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    out = {
        "loss": jnp.sum(loss * weights),
        "ce": jnp.sum(ce * weights),
        "correct": jnp.sum(hits * weights),
        "weight": jnp.sum(weights),
    }
    if "sentence_logits" in outputs and "next_sentence_label" in batch:
        s_logits = outputs["sentence_logits"].astype(jnp.float32)  # [B, 2]
        s_labels = batch["next_sentence_label"].astype(jnp.int32)  # [B]
        s_lse = jax.nn.logsumexp(s_logits, axis=-1)
        s_ce = s_lse - jnp.take_along_axis(s_logits, s_labels[:, None], axis=-1)[:, 0]
        out["sentence_loss"] = jnp.sum(s_ce)
        out["sentence_correct"] = jnp.sum(
            (jnp.argmax(s_logits, axis=-1) == s_labels).astype(jnp.float32)
        )
        out["sentence_rows"] = jnp.asarray(s_labels.shape[0], jnp.float32)
    return out


def total_loss(sums: dict[str, Array], weight: Array, rows: Array | None) -> Array:
    """Objective from :func:`objective_sums` with global denominators.

    ``weight``: total token weight of the whole (global) batch; ``rows``: its number
    of rows (used for the sentence loss, when present).
    """
    loss = sums["loss"] / jnp.maximum(weight, 1.0)
    if "sentence_loss" in sums and rows is not None:
        loss = loss + sums["sentence_loss"] / jnp.maximum(rows, 1.0)
    return loss


def summarize(sums: dict[str, Any]) -> dict[str, Any]:
    """Means from accumulated sums: ``loss``, ``perplexity``, ``accuracy`` (+ sentence).

    ``{"ce": 6.93, "correct": 5, "weight": 10, ...}`` -> ``{"loss": 0.693,
    "perplexity": 2.0, "accuracy": 0.5, ...}``. ``loss`` here is the mean token
    cross-entropy (no smoothing, no z-loss): ``perplexity = exp(loss)``.
    """
    w = max(float(sums["weight"]), 1.0)
    out = {
        "loss": float(sums["ce"]) / w,
        "accuracy": float(sums["correct"]) / w,
    }
    out["perplexity"] = math.exp(min(out["loss"], 80.0))
    if "sentence_loss" in sums:
        rows = max(float(sums["sentence_rows"]), 1.0)
        out["sentence_loss"] = float(sums["sentence_loss"]) / rows
        out["sentence_accuracy"] = float(sums["sentence_correct"]) / rows
    return out
