"""Approaches 1 and 2 of Hoffmann et al. 2022: power laws ``N_opt = n_coef * C**a``,
``D_opt = d_coef * C**b`` from per-budget optima (the lowest-loss run of each budget, or
the minimum of a parabola in ``ln N`` through each IsoFLOP profile), with bootstrap
intervals of ``a`` and ``b`` over runs."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from t5x_lite.config import ConfigError
from t5x_lite.scaling.fits import _check, _interval, check_runs, positive_array


@dataclass(frozen=True)
class PowerLaws:
    """``N_opt = n_coef * C**a`` and ``D_opt = d_coef * C**b`` from optimal points.

    ``points`` are the per-compute optima the laws were fitted to (dicts with
    ``flops``, ``n_params``, ``n_tokens``, ``loss``); ``parabolas`` (Approach 2) hold
    ``(budget, c2, c1, c0)`` with ``loss = c2 x**2 + c1 x + c0``, ``x = ln N``, for
    every profile fitted; ``skipped`` lists ``(budget, reason)`` of profiles that gave
    no optimum. ``ci`` maps ``a`` and ``b`` to 95% bootstrap intervals (over runs)
    when ``n_resamples > 0``; ``n_resamples_used`` of the resamples gave a fit (the
    others had fewer than two budgets with an optimum).
    """

    method: str
    a: float
    n_coef: float
    b: float
    d_coef: float
    points: list[dict[str, float]]
    parabolas: list[tuple[float, float, float, float]] = field(default_factory=list)
    skipped: list[tuple[float, str]] = field(default_factory=list)
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    n_resamples: int = 0
    n_resamples_used: int = 0

    def n_opt(self, flops: Any) -> Any:
        return self.n_coef * np.asarray(flops, np.float64) ** self.a

    def d_opt(self, flops: Any) -> Any:
        return self.d_coef * np.asarray(flops, np.float64) ** self.b

    def tokens_per_param(self, flops: Any) -> Any:
        return self.d_opt(flops) / self.n_opt(flops)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _power_law(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least squares of ``ln y = k ln x + ln c``: returns ``(k, c)``."""
    k, lc = np.polyfit(np.log(x), np.log(y), 1)
    return float(k), float(math.exp(lc))


def _laws(method: str, pts: list[dict[str, float]], **extra: Any) -> PowerLaws:
    _check(
        len({round(math.log(p["flops"]), 6) for p in pts}) >= 2,
        f"{method}: fewer than 2 compute budgets with an optimum; cannot fit a power law",
    )
    c = np.array([p["flops"] for p in pts])
    a, nc = _power_law(c, np.array([p["n_params"] for p in pts]))
    b, dc = _power_law(c, np.array([p["n_tokens"] for p in pts]))
    return PowerLaws(method, a, nc, b, dc, pts, **extra)


def _with_bootstrap(
    law: PowerLaws, refit: Any, strata: list[np.ndarray], bootstrap: int, seed: int
) -> PowerLaws:
    """``law`` with 95% intervals of ``a`` and ``b`` from ``bootstrap`` resamples.

    Each resample draws, from every array of unit ids in ``strata``, as many ids as it
    holds, with replacement; ``refit(ids)`` fits the drawn units (a ConfigError means
    that resample gave no fit, and it is left out of the intervals).
    """
    _check(isinstance(bootstrap, int) and bootstrap >= 0, f"bootstrap={bootstrap!r} must be >= 0")
    if not bootstrap:
        return law
    rng = np.random.default_rng(seed)
    a, b = [], []
    for _ in range(bootstrap):
        ids = np.concatenate([m[rng.integers(0, m.size, m.size)] for m in strata])
        try:
            res = refit(ids)
        except ConfigError:
            continue
        a.append(res.a)
        b.append(res.b)
    ci = {"a": _interval(a), "b": _interval(b)} if len(a) >= 2 else {}
    return dataclasses.replace(law, ci=ci, n_resamples=bootstrap, n_resamples_used=len(a))


def approach1(
    n_params: Any,
    n_tokens: Any,
    losses: Any,
    flops: Any = None,
    num_bins: int = 20,
    runs: Any = None,
    bootstrap: int = 0,
    seed: int = 0,
) -> PowerLaws:
    """Approach 1: the lowest-loss envelope over compute, then power laws in ``C``.

    Runs (or points along training curves) are binned by ``flops`` (default ``6 N D``)
    into ``num_bins`` log-spaced bins; each non-empty bin contributes its lowest-loss
    point ``(C, N, D)``. Needs at least two bins with points. ``runs`` labels the run
    each point belongs to (default: every point its own run); ``bootstrap > 0`` redoes
    the envelope and laws on that many resamples of the runs (drawn with replacement,
    each with all its points) for 95% intervals of ``a`` and ``b`` in ``ci``.
    """
    n, d, loss = check_runs(n_params, n_tokens, losses, min_runs=2)
    c = 6.0 * n * d if flops is None else positive_array("flops", flops, n.size)
    _check(isinstance(num_bins, int) and num_bins >= 2, f"num_bins={num_bins!r} must be >= 2")
    labels = np.arange(n.size) if runs is None else np.asarray(runs).reshape(-1)
    _check(labels.size == n.size, f"runs has {labels.size} labels but n_params has {n.size}")
    run_of_point = np.unique(labels, return_inverse=True)[1]

    def envelope(idx: np.ndarray) -> PowerLaws:
        log_c = np.log(c[idx])
        edges = np.linspace(log_c.min(), log_c.max() * (1 + 1e-12), num_bins + 1)
        which = np.clip(np.searchsorted(edges, log_c, side="right") - 1, 0, num_bins - 1)
        pts = []
        for k in np.unique(which):
            sel = idx[which == k]
            i = sel[np.argmin(loss[sel])]
            pts.append({"flops": c[i], "n_params": n[i], "n_tokens": d[i], "loss": loss[i]})
        return _laws("approach1", pts)

    law = envelope(np.arange(n.size))
    return _with_bootstrap(
        law,
        lambda drawn: envelope(np.flatnonzero(np.isin(run_of_point, drawn))),
        [np.arange(run_of_point.max() + 1)],
        bootstrap,
        seed,
    )


def isoflop_minimum(
    n_params: np.ndarray, n_tokens: np.ndarray, losses: np.ndarray
) -> tuple[dict[str, float] | None, tuple[float, float, float] | None, str]:
    """One IsoFLOP profile's parabola ``loss = c2 x² + c1 x + c0`` (``x = ln N``) and minimum.

    Returns ``(point, (c2, c1, c0), reason)``: ``point`` has ``n_params``,
    ``n_tokens`` and ``loss`` at the minimum, or is None (with ``reason``) when the
    profile has fewer than 3 sizes, opens downwards, or has its minimum outside the
    sizes it sampled. ``n_tokens`` at the minimum is read off a straight line of
    ``ln D`` against ``ln N`` through the runs.
    """
    if np.unique(n_params).size < 3:
        return None, None, "fewer than 3 sizes"
    x = np.log(n_params)
    c2, c1, c0 = (float(v) for v in np.polyfit(x, losses, 2))
    if c2 <= 0:
        return None, (c2, c1, c0), "the parabola has no minimum"
    x_min = -c1 / (2 * c2)
    if not x.min() <= x_min <= x.max():
        return (
            None,
            (c2, c1, c0),
            f"the minimum (N={math.exp(x_min):.3g}) is outside the sampled "
            f"{n_params.min():.3g}..{n_params.max():.3g}",
        )
    slope, icpt = np.polyfit(x, np.log(n_tokens), 1)
    point = {
        "n_params": math.exp(x_min),
        "n_tokens": math.exp(icpt + slope * x_min),
        "loss": c0 - c1 * c1 / (4 * c2),
    }
    return point, (c2, c1, c0), ""


def approach2(
    n_params: Any, n_tokens: Any, losses: Any, budgets: Any, bootstrap: int = 0, seed: int = 0
) -> PowerLaws:
    """Approach 2: a parabola of loss against ``ln N`` on each IsoFLOP profile.

    ``budgets`` gives each run's nominal budget ``C`` (runs sharing it form a
    profile, at least 3 distinct sizes each). Each parabola's minimum gives
    ``N_opt(C)``, and ``D_opt`` is read at ``N_opt`` off a straight line of ``ln D``
    against ``ln N`` through the profile's runs: exactly ``C / (6 N_opt)`` when
    ``C = 6 N D`` holds for ``n_params``, and still meaningful when ``n_params`` counts
    only non-embedding parameters of runs budgeted by their total. A profile gives no
    optimum (it is listed in ``skipped`` with the reason) when its parabola opens
    downwards or its minimum lies outside the sizes it sampled: an extrapolated
    minimum says only that the optimum is beyond the sweep (:func:`isoflop_minimum`).
    ``bootstrap > 0`` refits that many resamples for 95% intervals of ``a`` and
    ``b`` in ``ci``; each resample redraws every profile's runs from that profile
    (with replacement), so every budget keeps its number of runs.
    """
    n, d, loss = check_runs(n_params, n_tokens, losses, min_runs=3)
    c = positive_array("budgets", budgets, n.size)

    def profiles(idx: np.ndarray, record: bool) -> PowerLaws:
        pts, parabolas, skipped = [], [], []
        for budget in np.unique(c[idx]):
            sel = idx[c[idx] == budget]
            point, parabola, reason = isoflop_minimum(n[sel], d[sel], loss[sel])
            if parabola is not None:
                parabolas.append((float(budget), *parabola))
            if point is None:
                skipped.append((float(budget), reason))
            else:
                pts.append({"flops": float(budget), **point})
        if not record:
            return _laws("approach2", pts)
        return _laws("approach2", pts, parabolas=parabolas, skipped=skipped)

    law = profiles(np.arange(n.size), record=True)
    strata = [np.flatnonzero(c == budget) for budget in np.unique(c)]
    return _with_bootstrap(law, lambda idx: profiles(idx, False), strata, bootstrap, seed)
