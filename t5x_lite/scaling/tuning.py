"""Tuned small runs: the best learning rate per size, and seed noise as fit weights.

A sweep with ``scaling.sweep_lrs`` and ``scaling.sweep_seeds`` trains every planned
(budget, shape) at each learning rate and seed. :func:`select_points` reduces its
rows to one point per (budget, shape): the learning rate of lowest mean eval loss
over seeds, that mean as the point's loss, the seeds' standard deviation as its
noise. :func:`noise_weights` turns the noise into Approach 3's per-run weights.

Example: a shape at 1e12 FLOPs trained at learning rates 1e-3 and 3e-3 with seeds 0
and 1, losses ``{1e-3: (4.10, 4.14), 3e-3: (4.00, 4.02)}``, becomes one point with
``learning_rate=3e-3``, ``final_eval_loss=4.01``, ``loss_std=0.0141`` (the sample
standard deviation), ``n_seeds=2``, ``lr_at_edge=True`` (the best rate is the largest
tried: the sweep should extend its range there).

:func:`fit_lr_rule` summarises the best rates as a power law in the total parameter
count, ``lr(N) = lr_ref * (N / n_ref) ** -exponent``, which a larger sweep then applies
with one rate per size (``scaling.sweep_lr_rule``, :func:`rule_rate`) instead of
searching. Example: best rates 1e-2 at N = 1e4 and 1e-3 at N = 1e6 give exponent 0.5
and 3.16e-3 at ``n_ref = 1e5`` (their geometric mean).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

from t5x_lite.config import ConfigError


def _key(r: dict[str, Any]) -> tuple:
    # Runs that differ only in learning rate or seed share all of these.
    return tuple(r.get(k) for k in ("budget", "num_layers", "d_model", "n_params", "n_tokens",
                                    "unique_tokens"))  # fmt: skip


def _lr(r: dict[str, Any]) -> float | None:
    v = r.get("learning_rate")
    return None if v in (None, "") else float(v)


def select_points(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (budget, shape): the best learning rate's seed-0 run (the first
    seed's), its ``final_eval_loss`` the mean over seeds, plus ``loss_std`` (NaN with
    one seed), ``n_seeds``, ``lr_losses`` ({rate: mean loss}) and ``lr_at_edge`` (the
    best rate is the smallest or largest of several tried). Rows of a sweep that
    varies neither come back unchanged except for those fields."""
    groups: dict[tuple, dict[float | None, list[dict[str, Any]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for r in rows:
        groups[_key(r)][_lr(r)].append(r)
    points = []
    for by_lr in groups.values():
        means = {lr: float(np.mean([x["final_eval_loss"] for x in rs])) for lr, rs in by_lr.items()}
        best = min(means, key=means.__getitem__)
        runs = sorted(by_lr[best], key=lambda x: (x.get("seed") in (None, ""), x.get("seed")))
        losses = [float(x["final_eval_loss"]) for x in runs]
        rates = sorted(lr for lr in means if lr is not None)
        points.append(
            {
                **runs[0],
                "final_eval_loss": means[best],
                "loss_std": float(np.std(losses, ddof=1)) if len(losses) > 1 else float("nan"),
                "n_seeds": len(losses),
                "lr_losses": means,
                "lr_at_edge": len(rates) > 1 and best in (rates[0], rates[-1]),
            }
        )
    return sorted(points, key=lambda p: (float(p["budget"]), int(p["n_params"])))


def noise_weights(points: list[dict[str, Any]]) -> np.ndarray | None:
    """Approach 3's per-run weights ``1 / sigma`` on ``log L`` (mean 1), or None when no
    point has two seeds.

    ``sigma`` is a point's seed spread of ``log L`` (``loss_std / loss``); a point with
    one seed gets the median of the others, and every sigma is held above half that
    median so that two seeds that agree by chance do not dominate the fit. The weight is
    ``1 / sigma``, not ``1 / sigma**2``: Approach 3's Huber loss (delta 1e-3) is linear
    in residuals this large, so ``|r| / sigma`` is each residual in units of its noise.
    """
    std = np.array([p.get("loss_std", float("nan")) for p in points], np.float64)
    loss = np.array([p["final_eval_loss"] for p in points], np.float64)
    sigma = std / loss
    known = np.isfinite(sigma) & (sigma > 0)
    if not known.any():
        return None
    median = float(np.median(sigma[known]))
    sigma = np.where(known, np.maximum(sigma, 0.5 * median), median)
    w = 1.0 / sigma
    return w / w.mean()


def fit_lr_rule(points: list[dict[str, Any]]) -> tuple[float, float, float]:
    """``(lr_ref, n_ref, exponent)`` of the least-squares line through ``log lr`` of the
    points' best rates against ``log N`` (total parameters); ``n_ref`` is the points'
    geometric-mean N, rounded to two significant digits. Needs two sizes."""
    n = np.array([float(p["n_params"]) for p in points], np.float64)
    lr = np.array([float(p["learning_rate"]) for p in points], np.float64)
    if len(set(n.tolist())) < 2 or not (np.all(lr > 0) and np.all(n > 0)):
        raise ConfigError(
            "a learning-rate rule needs best rates > 0 at two or more model sizes; "
            f"got {len(set(n.tolist()))} size(s)"
        )
    n_ref = float(f"{math.exp(np.log(n).mean()):.2g}")
    slope, intercept = np.polyfit(np.log(n / n_ref), np.log(lr), 1)
    return float(f"{math.exp(intercept):.3g}"), n_ref, round(-slope, 3) + 0.0  # no -0.0


def rule_rate(rule: tuple[float, ...], n_params: float) -> float:
    """The rate ``rule = (lr_ref, n_ref, exponent)`` gives a model of ``n_params``
    (one-line ConfigError when it is not a finite positive number)."""
    lr_ref, n_ref, exponent = rule
    with np.errstate(all="ignore"):
        lr = float(lr_ref * np.power(float(n_params) / n_ref, -float(exponent)))
    if not (math.isfinite(lr) and lr > 0):
        raise ConfigError(
            f"scaling.sweep_lr_rule={tuple(rule)!r} gives learning rate {lr!r} at "
            f"N={n_params:,.0f}; it must be a finite rate > 0"
        )
    return lr
