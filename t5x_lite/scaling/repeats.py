"""Data-constrained scaling (Muennighoff et al. 2023, "Scaling Data-Constrained Language
Models"): what repeated epochs of a fixed set of unique tokens are worth.

A run that reads ``D`` tokens out of ``U`` unique ones sees ``U_D = min(D, U)`` unique
tokens repeated ``R_D = D / U_D - 1`` times beyond the first epoch. The paper's
effective data (its equation 5) decays the value of each repetition with a constant
``R_D*``::

    D' = U_D + U_D * R_D* * (1 - exp(-R_D / R_D*))

so a few epochs are worth almost as much as new data, and no amount of repetition is
worth more than ``U_D * (1 + R_D*)`` tokens. The data-constrained law is Chinchilla's
with ``D'`` for ``D``: ``L = E + A / N**alpha + B / D'**beta``. The paper fits ``R_D*
= 15.4`` (and an analogous ``R_N* = 5.3`` for parameters in excess of the unique data,
which is not modelled here: every run here has fewer parameters than that would need).

Worked example (``U = 100`` unique tokens, ``R_D* = 15.4``)::

    >>> float(effective_tokens(100, 100))          # one epoch: all of it counts
    100.0
    >>> round(float(effective_tokens(400, 100)), 1)  # four epochs: 3 repetitions
    372.6
    >>> round(float(effective_tokens(1e9, 100)), 1)  # the ceiling U (1 + R_D*)
    1638.7

:func:`fit_r_star` fits ``R_D*`` on repeated-epoch runs, the other five parameters
held at a fit of unique-data runs of the same setup (the paper's two stages: Chinchilla's
parameters from single-epoch runs, then the decay constant), by the same Huber loss on
``log L`` as Approach 3, with scipy's bounded scalar minimiser over ``ln R_D*`` (so it
stays positive) and a bootstrap over runs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from t5x_lite.config import ConfigError
from t5x_lite.scaling.fits import ChinchillaFit, _huber, _interval, positive_array

# Muennighoff et al. 2023, section 4 (fitted on their repeated-epoch runs).
MUENNIGHOFF2023_R_STAR = 15.387
# Bounds of ln R_D* for the fit: a decay after 0.01 to 10,000 repetitions.
_LN_BOUNDS = (math.log(1e-2), math.log(1e4))


def effective_tokens(n_tokens: Any, unique_tokens: Any, r_star: float = MUENNIGHOFF2023_R_STAR):
    """``D'`` of reading ``n_tokens`` out of ``unique_tokens`` (broadcasting arrays)."""
    if not (isinstance(r_star, int | float) and math.isfinite(r_star) and r_star > 0):
        raise ConfigError(f"R_D*={r_star!r} must be a positive number")
    d = np.asarray(n_tokens, np.float64)
    u = np.minimum(d, np.asarray(unique_tokens, np.float64))
    repeats = d / u - 1.0
    return u + u * r_star * (1.0 - np.exp(-repeats / r_star))


def r_star_of(fit: ChinchillaFit) -> tuple[float, str]:
    """``(R_D*, where it comes from)``: the fit's own when it has one, else the paper's."""
    if fit.r_star is not None:
        return fit.r_star, f"fitted ({fit.name or 'fit file'})"
    return MUENNIGHOFF2023_R_STAR, "Muennighoff et al. 2023"


def predict(fit: ChinchillaFit, n_params: Any, n_tokens: Any, unique_tokens: Any) -> np.ndarray:
    """The data-constrained law's loss: ``fit`` with ``D'`` for ``D``."""
    r_star, _ = r_star_of(fit)
    return fit.predict(n_params, effective_tokens(n_tokens, unique_tokens, r_star))


def _objective(
    ln_r: float,
    base: ChinchillaFit,
    n: np.ndarray,
    d: np.ndarray,
    u: np.ndarray,
    log_loss: np.ndarray,
) -> float:
    pred = base.predict(n, effective_tokens(d, u, math.exp(ln_r)))
    return float(np.sum(_huber(np.log(pred) - log_loss, base.huber_delta)))


def _fit_ln_r(base, n, d, u, log_loss) -> tuple[float, Any]:
    from scipy.optimize import minimize_scalar

    # The objective can have flat stretches (R* far beyond every run's repetitions
    # makes D' = D): start from the best of a coarse grid, then refine inside its cell.
    grid = np.linspace(*_LN_BOUNDS, 61)
    values = [_objective(g, base, n, d, u, log_loss) for g in grid]
    i = int(np.argmin(values))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    res = minimize_scalar(
        _objective,
        bounds=(lo, hi),
        args=(base, n, d, u, log_loss),
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(res.x), res


def fit_r_star(
    n_params: Sequence[float],
    n_tokens: Sequence[float],
    unique_tokens: Sequence[float] | None,
    losses: Sequence[float],
    base: ChinchillaFit,
    bootstrap: int = 0,
    seed: int = 0,
) -> ChinchillaFit:
    """``base`` with ``r_star`` fitted on these runs (and its 95% bootstrap interval in
    ``ci["r_star"]`` when ``bootstrap``); ``unique_tokens`` per run (None or a missing
    count is a one-line ConfigError: a repeated-data fit needs the epochs)."""
    if unique_tokens is None or any(x is None for x in unique_tokens):
        raise ConfigError(
            "a repeated-data fit needs each run's unique_tokens (its epoch count): the runs "
            "have none; give runs of a sweep with scaling.sweep_epochs"
        )
    n = positive_array("n_params", n_params)
    d = positive_array("n_tokens", n_tokens, len(n))
    u = positive_array("unique_tokens", unique_tokens, len(n))
    loss = positive_array("losses", losses, len(n))
    if not np.any(d > u * (1 + 1e-9)):
        raise ConfigError(
            "no run repeats its data (n_tokens <= unique_tokens everywhere): R_D* is not "
            "identified; sweep more than one epoch"
        )
    log_loss = np.log(loss)
    ln_r, res = _fit_ln_r(base, n, d, u, log_loss)
    r_star = math.exp(ln_r)
    samples: list[dict[str, Any]] = []
    rng = np.random.default_rng(seed)
    for _ in range(bootstrap):
        idx = rng.integers(0, len(n), len(n))
        if not np.any(d[idx] > u[idx]):
            continue
        b_ln, b_res = _fit_ln_r(base, n[idx], d[idx], u[idx], log_loss[idx])
        samples.append({"r_star": math.exp(b_ln), "success": bool(b_res.success)})
    ci = dict(base.ci)
    if samples:
        ci["r_star"] = _interval([s["r_star"] for s in samples])
    at_bound = not (_LN_BOUNDS[0] + 1e-3 < ln_r < _LN_BOUNDS[1] - 1e-3)
    record = {
        "fit": "r_star",
        "r_star": r_star,
        "loss": float(res.fun),
        "success": bool(res.success) and not at_bound,
        "message": "at a bound of [0.01, 1e4]" if at_bound else str(res.message),
        "nfev": int(res.nfev),
        "n_runs": len(n),
        "bootstrap": samples,
    }
    return dataclasses.replace(
        base,
        r_star=r_star,
        ci=ci,
        name=f"{base.name or 'fit'}+repeats",
        repeat_fit=record,
    )


def residual_table(fit: ChinchillaFit, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per run: epochs, measured loss, and the law's prediction without (``D``) and with
    (``D'``) the repetition decay."""
    out = []
    for r in rows:
        u, d = float(r["unique_tokens"]), float(r["n_tokens"])
        out.append(
            {
                "run_id": r["run_id"],
                "budget": float(r["budget"]),
                "n_params": float(r["n_params"]),
                "epochs": d / u,
                "measured": float(r["final_eval_loss"]),
                "as_unique": float(fit.predict(r["n_params"], d)),
                "repeated": float(predict(fit, r["n_params"], d, u)),
            }
        )
    return out


def constrained_optimum(flops: float, unique_tokens: float, fit: ChinchillaFit) -> dict[str, float]:
    """The loss-minimising ``N`` under ``C = 6 N D`` when only ``unique_tokens`` are
    unique (continuous ``N``; scipy's bounded scalar minimiser over ``ln N``): its
    ``n_params``, ``n_tokens``, ``epochs`` and ``loss``."""
    from scipy.optimize import minimize_scalar

    c = float(positive_array("flops", [flops])[0])
    u = float(positive_array("unique_tokens", [unique_tokens])[0])

    def loss(ln_n: float) -> float:
        n = math.exp(ln_n)
        return float(predict(fit, n, c / (6.0 * n), u))

    # Coarse grid first (the loss is unimodal in ln N, but flat far from the optimum).
    grid = np.linspace(math.log(1e2), math.log(c / 6.0), 200)
    i = int(np.argmin([loss(g) for g in grid]))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    res = minimize_scalar(loss, bounds=(lo, hi), method="bounded", options={"xatol": 1e-8})
    n = math.exp(float(res.x))
    d = c / (6.0 * n)
    return {"n_params": n, "n_tokens": d, "epochs": d / u, "loss": float(res.fun)}
