"""Chinchilla scaling-law fits (Hoffmann et al. 2022, Approaches 1, 2 and 3).

The parametric law (Approach 3) is ``L(N, D) = E + A / N**alpha + B / D**beta`` for a
model of ``N`` parameters trained on ``D`` tokens. Under ``C = 6 N D`` the loss is
lowest at::

    G = (alpha A / (beta B)) ** (1 / (alpha + beta))
    N_opt = G (C / 6) ** a,        a = beta / (alpha + beta)
    D_opt = (C / 6) ** b / G,      b = alpha / (alpha + beta)

Example with Hoffmann et al.'s published fit::

    >>> opt = compute_optimal(5.76e23, "hoffmann2022")   # Chinchilla's budget
    >>> f"{opt.n_params:.3g} params, {opt.n_tokens:.3g} tokens, {opt.tokens_per_param:.1f}"
    '3.22e+10 params, 2.98e+12 tokens, 92.6'

Fits are plain JSON files (:func:`save_fit`, :func:`load_fit`) that also record which
parameter count ``N`` means (``param_kind``: ``total`` or ``non_embedding``).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from t5x_lite.config import ConfigError

PARAM_KINDS = ("total", "non_embedding")
_NAMES = ("E", "A", "B", "alpha", "beta")


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def positive_array(name: str, values: Any, length: int | None = None) -> np.ndarray:
    """``values`` as a float64 vector, every entry positive and finite (else ConfigError).

    >>> positive_array("losses", [3.0, 2.5])
    array([3. , 2.5])
    """
    try:
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a sequence of numbers, got {values!r:.60}") from None
    if length is not None:
        _check(arr.size == length, f"{name} has {arr.size} values but n_params has {length}")
    bad = np.flatnonzero(~(np.isfinite(arr) & (arr > 0)))
    if bad.size:
        i = int(bad[0])
        raise ConfigError(f"{name}[{i}]={float(arr[i])!r} must be positive and finite")
    return arr


# --------------------------------------------------------------------------- fit object


@dataclass(frozen=True)
class ChinchillaFit:
    """``L(N, D) = E + A / N**alpha + B / D**beta``; ``ci`` holds bootstrap intervals.

    ``ci`` maps ``E, A, B, alpha, beta, a, b`` to ``(2.5%, 97.5%)`` percentiles when the
    fit was bootstrapped. ``param_kind`` says whether ``N`` counts all parameters or
    only non-embedding ones.
    """

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    param_kind: str = "total"
    name: str = ""
    n_runs: int = 0
    objective: float = float("nan")
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def a(self) -> float:
        """Exponent of ``N_opt ∝ C**a``: ``beta / (alpha + beta)``."""
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        """Exponent of ``D_opt ∝ C**b``: ``alpha / (alpha + beta)``."""
        return self.alpha / (self.alpha + self.beta)

    @property
    def G(self) -> float:
        return (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta))

    def predict(self, n_params: Any, n_tokens: Any) -> np.ndarray:
        """Predicted loss at ``(N, D)`` (broadcasting arrays)."""
        n = np.asarray(n_params, np.float64)
        d = np.asarray(n_tokens, np.float64)
        return self.E + self.A / n**self.alpha + self.B / d**self.beta

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["ci"] = {k: list(v) for k, v in self.ci.items()}
        out["a"], out["b"] = self.a, self.b
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "fit") -> ChinchillaFit:
        for k in _NAMES:
            _check(k in values, f"{where}: missing field {k!r}")
            v = values[k]
            _check(
                isinstance(v, int | float) and math.isfinite(v) and v > 0,
                f"{where}: {k}={v!r} must be a positive number",
            )
        kind = values.get("param_kind", "total")
        _check(kind in PARAM_KINDS, f"{where}: param_kind={kind!r} is not one of {PARAM_KINDS}")
        ci = {k: (float(v[0]), float(v[1])) for k, v in (values.get("ci") or {}).items()}
        return cls(
            *(float(values[k]) for k in _NAMES),
            param_kind=kind,
            name=str(values.get("name", "")),
            n_runs=int(values.get("n_runs", 0)),
            objective=float(values.get("objective", float("nan"))),
            ci=ci,
        )


FITS: dict[str, ChinchillaFit] = {
    # Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models", Approach 3.
    "hoffmann2022": ChinchillaFit(1.69, 406.4, 410.7, 0.34, 0.28, name="hoffmann2022"),
    # Besiroglu et al. 2024, "Chinchilla Scaling: A replication attempt" (refit of the
    # same data, without the early-stopped optimiser).
    "besiroglu2024": ChinchillaFit(1.82, 482.01, 2085.43, 0.3478, 0.3658, name="besiroglu2024"),
}


def load_fit(spec: str | ChinchillaFit) -> ChinchillaFit:
    """A built-in fit by name (:data:`FITS`), a fit JSON file, or ``spec`` itself."""
    if isinstance(spec, ChinchillaFit):
        return spec
    if spec in FITS:
        return FITS[spec]
    _check(
        isinstance(spec, str) and os.path.isfile(spec),
        f"scaling.fit={spec!r} is neither a built-in fit ({', '.join(FITS)}) nor a fit JSON file",
    )
    try:
        with open(spec) as f:
            values = json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f"fit file {spec}: {type(e).__name__}: {e}") from None
    _check(isinstance(values, dict), f"fit file {spec}: expected a JSON object")
    return ChinchillaFit.from_dict(values, where=f"fit file {spec}")


def save_fit(fit: ChinchillaFit, path: str) -> str:
    """Write ``fit`` as JSON to ``path`` (via a temporary file, then renamed)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(fit.to_dict(), f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------- compute-optimal


class Optimum(NamedTuple):
    """``(n_params, n_tokens)`` at a compute budget (floats or arrays)."""

    n_params: Any
    n_tokens: Any

    @property
    def tokens_per_param(self) -> Any:
        return self.n_tokens / self.n_params


def compute_optimal(flops: Any, fit: str | ChinchillaFit = "hoffmann2022") -> Optimum:
    """Loss-minimising ``(N, D)`` under ``C = 6 N D`` (closed form; see module docstring).

    ``flops`` is a number or an array of budgets; ``fit`` a name, fit file or object.
    """
    f = load_fit(fit)
    scalar = np.ndim(flops) == 0
    c = positive_array("flops", flops)
    n = f.G * (c / 6.0) ** f.a
    d = (c / 6.0) ** f.b / f.G
    if scalar:
        return Optimum(float(n[0]), float(d[0]))
    return Optimum(n, d)


# --------------------------------------------------------------------------- Approach 3


def _grid() -> np.ndarray:
    """Hoffmann et al.'s starting grid over ``(a, b, e, alpha, beta)``, 4500 points."""
    exps = np.arange(0.0, 2.01, 0.5)
    es = np.arange(-1.0, 1.01, 0.5)
    abs_ = np.arange(0.0, 25.01, 5.0)
    return np.array(list(itertools.product(abs_, abs_, es, exps, exps)))


def _objective_batch(
    theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray, delta: float
) -> np.ndarray:
    """Huber objective at many parameter vectors at once: ``theta [S, 5] -> [S]``."""
    a, b, e, al, be = (theta[:, i : i + 1] for i in range(5))
    x1 = a - al * log_n  # [S, n]
    x = np.stack([x1, b - be * log_d, np.broadcast_to(e, x1.shape)], 0)  # [3, S, n]
    lse = np.logaddexp.reduce(x, axis=0)  # [S, n]
    r = np.abs(lse - log_l)
    hub = np.where(r <= delta, 0.5 * r * r, delta * (r - 0.5 * delta))
    return hub.sum(-1) / delta


def _objective(
    theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray, delta: float
) -> tuple[float, np.ndarray]:
    """Huber(δ) of ``LSE(a - α log N, b - β log D, e) - log L``, summed, / δ; and gradient."""
    a, b, e, al, be = theta
    x1 = a - al * log_n
    x2 = b - be * log_d
    m = np.maximum(np.maximum(x1, x2), e)
    w1, w2, w3 = np.exp(x1 - m), np.exp(x2 - m), np.exp(e - m)
    s = w1 + w2 + w3
    r = m + np.log(s) - log_l
    absr = np.abs(r)
    value = np.where(absr <= delta, 0.5 * r * r, delta * (absr - 0.5 * delta)).sum() / delta
    psi = np.clip(r, -delta, delta) / delta  # d huber / d r, scaled
    w1, w2, w3 = psi * w1 / s, psi * w2 / s, psi * w3 / s
    grad = np.array([w1.sum(), w2.sum(), w3.sum(), -(w1 * log_n).sum(), -(w2 * log_d).sum()])
    return float(value), grad


def lbfgs(
    fun: Any,
    x0: np.ndarray,
    args: tuple = (),
    memory: int = 10,
    maxiter: int = 1000,
    gtol: float = 1e-9,
    ftol: float = 1e-14,
) -> tuple[np.ndarray, float]:
    """Minimise ``fun(x, *args) -> (value, gradient)`` by L-BFGS; returns ``(x, value)``.

    The two-loop recursion over the last ``memory`` steps, with a strong-Wolfe line
    search (``scipy.optimize.line_search``). Written out because scipy's L-BFGS-B
    spends most of its time in multi-threaded BLAS calls on these 5-vectors (30x
    slower on a busy two-core machine).

    >>> x, v = lbfgs(lambda x: (((x - 3) ** 2).sum(), 2 * (x - 3)), np.zeros(2))
    >>> np.round(x, 6).tolist(), round(v, 12)
    ([3.0, 3.0], 0.0)
    """
    import warnings

    from scipy.optimize import line_search

    cache: dict[bytes, tuple[float, np.ndarray]] = {}  # evaluations of this line search

    def both(z: np.ndarray) -> tuple[float, np.ndarray]:
        key = z.tobytes()
        if key not in cache:
            cache[key] = fun(z, *args)
        return cache[key]

    x = np.asarray(x0, np.float64).copy()
    f, g = fun(x, *args)
    s_hist: list[np.ndarray] = []
    y_hist: list[np.ndarray] = []
    for _ in range(maxiter):
        if np.max(np.abs(g)) < gtol:
            break
        q = g.copy()
        coefs = []
        for s, y in zip(reversed(s_hist), reversed(y_hist)):
            rho = 1.0 / np.dot(y, s)
            a = rho * np.dot(s, q)
            q -= a * y
            coefs.append((rho, a))
        if s_hist:
            q *= np.dot(s_hist[-1], y_hist[-1]) / np.dot(y_hist[-1], y_hist[-1])
        for (s, y), (rho, a) in zip(zip(s_hist, y_hist), reversed(coefs)):
            q += (a - rho * np.dot(y, q)) * s
        p = -q
        if np.dot(p, g) >= 0:  # not a descent direction: restart from steepest descent
            p = -g
            s_hist.clear()
            y_hist.clear()
        cache.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            step = line_search(
                lambda z: both(z)[0], lambda z: both(z)[1], x, p, gfk=g, old_fval=f, maxiter=50
            )[0]
        if step is None:
            break
        x_new = x + step * p
        f_new, g_new = both(x_new)
        s, y = x_new - x, g_new - g
        if np.dot(s, y) > 1e-12 * np.linalg.norm(s) * np.linalg.norm(y):
            s_hist.append(s)
            y_hist.append(y)
            if len(s_hist) > memory:
                s_hist.pop(0)
                y_hist.pop(0)
        converged = abs(f - f_new) <= ftol * max(abs(f), abs(f_new), 1.0)
        x, f, g = x_new, f_new, g_new
        if converged:
            break
    return x, float(f)


def _minimize(
    starts: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray, delta: float
) -> tuple[np.ndarray, float]:
    """L-BFGS from each start; the lowest objective wins."""
    best, best_val = starts[0], math.inf
    for x0 in starts:
        x, value = lbfgs(_objective, x0, (log_n, log_d, log_l, delta))
        if np.all(np.isfinite(x)) and value < best_val:
            best, best_val = x, value
    return best, best_val


def _top_starts(grid: np.ndarray, args: tuple, k: int) -> np.ndarray:
    values = _objective_batch(grid, *args)
    return grid[np.argsort(values)[:k]]


def _theta_to_params(theta: np.ndarray) -> dict[str, float]:
    a, b, e, al, be = (float(v) for v in theta)
    return {"E": math.exp(e), "A": math.exp(a), "B": math.exp(b), "alpha": al, "beta": be}


def check_runs(
    n_params: Any, n_tokens: Any, losses: Any, min_runs: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated float64 vectors of equal length, at least ``min_runs`` long."""
    n = positive_array("n_params", n_params)
    d = positive_array("n_tokens", n_tokens, n.size)
    loss = positive_array("losses", losses, n.size)
    _check(n.size >= min_runs, f"{n.size} runs are fewer than the {min_runs} this fit needs")
    return n, d, loss


def fit_chinchilla(
    n_params: Sequence[float] | np.ndarray,
    n_tokens: Sequence[float] | np.ndarray,
    losses: Sequence[float] | np.ndarray,
    bootstrap: int = 0,
    seed: int = 0,
    param_kind: str = "total",
    delta: float = 1e-3,
    num_starts: int = 16,
) -> ChinchillaFit:
    """Approach 3: fit ``E, A, B, alpha, beta`` to final losses of ``len(losses)`` runs.

    Minimises the Huber loss (``delta``) between ``log L`` and
    ``LSE(a - alpha log N, b - beta log D, e)`` (``A = e^a``, ``B = e^b``, ``E = e^e``)
    with L-BFGS, started from the ``num_starts`` best points of Hoffmann et al.'s
    4500-point grid (all evaluated, vectorised); the best optimum is kept.
    ``bootstrap > 0`` refits on that many resamples of the runs (with replacement)
    and stores 95% percentile intervals in ``ci``.

    >>> n, d = np.meshgrid([1e6, 1e7, 1e8, 1e9], [1e8, 1e9, 1e10, 1e11])  # 16 runs
    >>> fit = fit_chinchilla(n, d, FITS["hoffmann2022"].predict(n, d))
    >>> round(fit.alpha, 3), round(fit.beta, 3), round(fit.E, 3)
    (0.34, 0.28, 1.69)
    """
    _check(param_kind in PARAM_KINDS, f"param_kind={param_kind!r} is not one of {PARAM_KINDS}")
    _check(isinstance(bootstrap, int) and bootstrap >= 0, f"bootstrap={bootstrap!r} must be >= 0")
    n, d, loss = check_runs(n_params, n_tokens, losses, min_runs=len(_NAMES))
    _check(np.unique(n).size >= 2, "n_params: every run has the same size; alpha is undefined")
    _check(np.unique(d).size >= 2, "n_tokens: every run has the same length; beta is undefined")
    log_n, log_d, log_l = np.log(n), np.log(d), np.log(loss)
    grid = _grid()
    args = (log_n, log_d, log_l, delta)
    theta, value = _minimize(_top_starts(grid, args, num_starts), *args)

    ci: dict[str, tuple[float, float]] = {}
    if bootstrap:
        rng = np.random.default_rng(seed)
        samples = []
        for _ in range(bootstrap):
            idx = rng.integers(0, n.size, n.size)
            bargs = (log_n[idx], log_d[idx], log_l[idx], delta)
            starts = np.concatenate([theta[None], _top_starts(grid, bargs, 1)])
            bt, _ = _minimize(starts, *bargs)
            p = _theta_to_params(bt)
            p["a"] = p["beta"] / (p["alpha"] + p["beta"])
            p["b"] = p["alpha"] / (p["alpha"] + p["beta"])
            samples.append(p)
        for k in samples[0]:
            vals = np.array([s[k] for s in samples])
            ci[k] = (float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5)))
    return ChinchillaFit(
        **_theta_to_params(theta),
        param_kind=param_kind,
        name=f"approach3_{param_kind}",
        n_runs=int(n.size),
        objective=value,
        ci=ci,
    )


# --------------------------------------------------------------------------- Approaches 1, 2


@dataclass(frozen=True)
class PowerLaws:
    """``N_opt = n_coef * C**a`` and ``D_opt = d_coef * C**b`` from optimal points.

    ``points`` are the per-compute optima the laws were fitted to (dicts with
    ``flops``, ``n_params``, ``n_tokens``, ``loss``); ``parabolas`` (Approach 2) hold
    ``(budget, c2, c1, c0)`` with ``loss = c2 x**2 + c1 x + c0``, ``x = ln N``, for
    every profile fitted; ``skipped`` lists ``(budget, reason)`` of profiles that gave
    no optimum.
    """

    method: str
    a: float
    n_coef: float
    b: float
    d_coef: float
    points: list[dict[str, float]]
    parabolas: list[tuple[float, float, float, float]] = field(default_factory=list)
    skipped: list[tuple[float, str]] = field(default_factory=list)

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


def approach1(
    n_params: Any,
    n_tokens: Any,
    losses: Any,
    flops: Any = None,
    num_bins: int = 20,
) -> PowerLaws:
    """Approach 1: the lowest-loss envelope over compute, then power laws in ``C``.

    Runs (or points along training curves) are binned by ``flops`` (default ``6 N D``)
    into ``num_bins`` log-spaced bins; each non-empty bin contributes its lowest-loss
    point ``(C, N, D)``. Needs at least two bins with points.
    """
    n, d, loss = check_runs(n_params, n_tokens, losses, min_runs=2)
    c = 6.0 * n * d if flops is None else positive_array("flops", flops, n.size)
    _check(isinstance(num_bins, int) and num_bins >= 2, f"num_bins={num_bins!r} must be >= 2")
    edges = np.linspace(np.log(c.min()), np.log(c.max()) * (1 + 1e-12), num_bins + 1)
    which = np.clip(np.searchsorted(edges, np.log(c), side="right") - 1, 0, num_bins - 1)
    pts = []
    for k in np.unique(which):
        idx = np.flatnonzero(which == k)
        i = idx[np.argmin(loss[idx])]
        pts.append({"flops": c[i], "n_params": n[i], "n_tokens": d[i], "loss": loss[i]})
    return _laws("approach1", pts)


def approach2(n_params: Any, n_tokens: Any, losses: Any, budgets: Any) -> PowerLaws:
    """Approach 2: a parabola of loss against ``ln N`` on each IsoFLOP profile.

    ``budgets`` gives each run's nominal budget ``C`` (runs sharing it form a
    profile, at least 3 distinct sizes each). Each parabola's minimum gives
    ``N_opt(C)``, and ``D_opt`` is read at ``N_opt`` off a straight line of ``ln D``
    against ``ln N`` through the profile's runs: exactly ``C / (6 N_opt)`` when
    ``C = 6 N D`` holds for ``n_params``, and still meaningful when ``n_params`` counts
    only non-embedding parameters of runs budgeted by their total. A profile gives no
    optimum (it is listed in ``skipped`` with the reason) when its parabola opens
    downwards or its minimum lies outside the sizes it sampled: an extrapolated
    minimum says only that the optimum is beyond the sweep.
    """
    n, d, loss = check_runs(n_params, n_tokens, losses, min_runs=3)
    c = positive_array("budgets", budgets, n.size)
    pts, parabolas, skipped = [], [], []
    for budget in np.unique(c):
        idx = np.flatnonzero(c == budget)
        if np.unique(n[idx]).size < 3:
            skipped.append((float(budget), "fewer than 3 sizes"))
            continue
        x = np.log(n[idx])
        c2, c1, c0 = np.polyfit(x, loss[idx], 2)
        parabolas.append((float(budget), float(c2), float(c1), float(c0)))
        if c2 <= 0:
            skipped.append((float(budget), "the parabola has no minimum"))
            continue
        x_min = -c1 / (2 * c2)
        if not x.min() <= x_min <= x.max():
            skipped.append(
                (
                    float(budget),
                    f"the minimum (N={math.exp(x_min):.3g}) is outside the sampled "
                    f"{n[idx].min():.3g}..{n[idx].max():.3g}",
                )
            )
            continue
        slope, icpt = np.polyfit(x, np.log(d[idx]), 1)
        pts.append(
            {
                "flops": float(budget),
                "n_params": math.exp(x_min),
                "n_tokens": math.exp(icpt + slope * x_min),
                "loss": float(c0 - c1 * c1 / (4 * c2)),
            }
        )
    return _laws("approach2", pts, parabolas=parabolas, skipped=skipped)
