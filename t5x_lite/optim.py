"""Optimizers and learning-rate schedules as optax transformations.

:func:`make_optimizer` turns an :class:`~t5x_lite.config.OptimizerConfig` into one
``optax.GradientTransformation``::

    clip_by_global_norm(grad_clip_norm)      # skipped when grad_clip_norm == 0
    -> scale_by_adam | scale_by_factored_rms (adafactor)
    -> add_decayed_weights(weight_decay, mask=decay_mask)
    -> scale_by_learning_rate(schedule)

Adafactor follows T5 (Shazeer & Stern 2018): factored second moments for matrices
whose two largest dims are >= 128, decay ``1 - t**-0.8``, epsilon 1e-30, no
momentum, updates clipped at RMS 1 and scaled by ``max(1e-3, RMS(param))``; with
``weight_decay = 0`` and ``grad_clip_norm = 0`` it equals
``optax.adafactor(schedule)``. ``optimizer.b1/b2/eps`` are AdamW's only.

Every schedule warms up linearly over ``warmup_steps`` (``lr * (s + 1) / warmup``
at step ``s``, so the first update is not zero) and then follows ``schedule``:

==============  ===============================================================
cosine          ``min + (lr - min) * (1 + cos(pi * p)) / 2``, p = post-warmup progress
linear          straight line from ``lr`` to ``min`` at ``num_steps``
inverse_sqrt    ``lr * sqrt(warmup / s)`` after warmup (T5's rsqrt schedule)
constant        ``lr``
==============  ===============================================================

with ``min = lr * min_lr_ratio`` (inverse_sqrt and constant ignore it). E.g.
``lr=1e-3, warmup_steps=10, num_steps=110``, cosine, ``min_lr_ratio=0.1``: step 0
-> 1e-4, step 9 -> 1e-3, step 60 -> 5.5e-4, step 110 -> 1e-4.

Weight decay skips every parameter whose ``/``-joined path contains one of
``no_decay`` (by default biases, norm scales and embedding tables):
``{"mlp": {"wi": {"kernel": ..., "bias": ...}}}`` -> ``{"mlp": {"wi": {"kernel": True,
"bias": False}}}``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from t5x_lite.config import OptimizerConfig

Schedule = Callable[[jax.Array], jax.Array]


def make_schedule(cfg: OptimizerConfig, num_steps: int) -> Schedule:
    """Learning rate as a function of the (0-based) step; see the module docstring."""
    peak = cfg.peak_learning_rate
    floor = peak * float(cfg.min_lr_ratio)
    warmup = int(cfg.warmup_steps)
    decay_steps = max(int(num_steps) - warmup, 1)

    def schedule(step: jax.Array) -> jax.Array:
        s = jnp.asarray(step, jnp.float32)
        if warmup > 0:
            warm = peak * jnp.minimum((s + 1.0) / warmup, 1.0)
        else:
            warm = jnp.asarray(peak, jnp.float32)
        progress = jnp.clip((s - warmup) / decay_steps, 0.0, 1.0)
        if cfg.schedule == "cosine":
            after = floor + (peak - floor) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        elif cfg.schedule == "linear":
            after = peak + (floor - peak) * progress
        elif cfg.schedule == "inverse_sqrt":
            after = peak * jnp.sqrt(max(warmup, 1) / jnp.maximum(s, max(warmup, 1)))
        else:  # constant
            after = jnp.asarray(peak, jnp.float32)
        return jnp.where(s < warmup, warm, after)

    return schedule


def _path_str(path: tuple[Any, ...]) -> str:
    parts = []
    for k in path:
        key = getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))
        parts.append(str(key))
    return "/".join(parts)


def decay_mask(params: Any, no_decay: tuple[str, ...]) -> Any:
    """Tree of bools: True where weight decay applies (path matches none of ``no_decay``)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: not any(pat in _path_str(path) for pat in no_decay), params
    )


def make_optimizer(
    cfg: OptimizerConfig, num_steps: int
) -> tuple[optax.GradientTransformation, Schedule]:
    """``(transformation, schedule)`` for ``cfg``; see the module docstring for the chain."""
    schedule = make_schedule(cfg, num_steps)
    parts: list[optax.GradientTransformation] = []
    if cfg.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
    if cfg.name == "adamw":
        parts.append(optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps))
    else:  # adafactor (T5's defaults: factored second moments, update clipping at 1)
        parts.append(optax.scale_by_factored_rms(factored=True, decay_rate=0.8, epsilon=1e-30))
        parts.append(optax.clip_by_block_rms(1.0))
        parts.append(optax.scale_by_param_block_rms())
    if cfg.weight_decay > 0:
        mask = lambda p: decay_mask(p, tuple(cfg.no_decay))  # noqa: E731
        parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=mask))
    parts.append(optax.scale_by_learning_rate(schedule))
    return optax.chain(*parts), schedule
