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

Approach 3 (:func:`fit_chinchilla`) minimises a Huber loss on ``log L`` with scipy's
L-BFGS-B from the best points of Hoffmann et al.'s grid, and records every start's
outcome; its bootstrap refits each resample from that resample's own best grid
points. Approaches 1 and 2 (:mod:`t5x_lite.scaling.isoflop`) have bootstrap
intervals over runs too.

Fits are plain JSON files (:func:`save_fit`, :func:`load_fit`) that also record which
parameter count ``N`` means (``param_kind``: ``total`` or ``non_embedding``) and
everything else a fit holds (convergence records, bootstrap resamples).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import glob
import itertools
import json
import math
import os
from collections.abc import Iterator, Sequence
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


def _interval(values: Sequence[float]) -> tuple[float, float]:
    """The 2.5% and 97.5% percentiles of ``values`` (a 95% percentile interval)."""
    arr = np.asarray(values, np.float64)
    return float(np.percentile(arr, 2.5)), float(np.percentile(arr, 97.5))


@dataclass(frozen=True)
class ChinchillaFit:
    """``L(N, D) = E + A / N**alpha + B / D**beta``; ``ci`` holds bootstrap intervals.

    ``ci`` maps ``E, A, B, alpha, beta, a, b`` to ``(2.5%, 97.5%)`` percentiles when the
    fit was bootstrapped. ``param_kind`` says whether ``N`` counts all parameters or
    only non-embedding ones.

    A fitted object also says how the optimiser fared: ``starts`` has one record per
    start (``start`` and ``params``: the five parameters before and after, ``loss``:
    the final objective, ``success``, ``message``, ``nit``, ``nfev``, ``grad_norm``);
    ``grad_norm`` is the gradient norm at the best one (with respect to the optimised
    logarithms of the parameters); ``bootstrap`` has one record per resample (its
    best fit's five parameters, ``loss``, ``success`` and ``nit``), drawn with
    ``seed``. ``to_dict`` / ``from_dict`` (and :func:`save_fit` / :func:`load_fit`)
    carry all of it.
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
    huber_delta: float = 1e-3
    grad_norm: float = float("nan")
    starts: list[dict[str, Any]] = field(default_factory=list)
    bootstrap: list[dict[str, Any]] = field(default_factory=list)
    seed: int = 0
    # Data-constrained law (t5x_lite.scaling.repeats): Muennighoff et al.'s decay
    # constant R_D* of repeated data, when fitted (None: not fitted), and that fit's
    # record (its objective, convergence and bootstrap resamples).
    r_star: float | None = None
    repeat_fit: dict[str, Any] = field(default_factory=dict)

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

    @property
    def converged(self) -> bool:
        """Whether the optimiser reported success at the best start (False if unknown)."""
        if not self.starts:
            return False
        return bool(min(self.starts, key=lambda r: r["loss"])["success"])

    def predict(self, n_params: Any, n_tokens: Any) -> np.ndarray:
        """Predicted loss at ``(N, D)`` (broadcasting arrays)."""
        n = np.asarray(n_params, np.float64)
        d = np.asarray(n_tokens, np.float64)
        return self.E + self.A / n**self.alpha + self.B / d**self.beta

    def resampled(self) -> list[ChinchillaFit]:
        """The bootstrap resamples' fits (empty when not bootstrapped)."""
        return [
            ChinchillaFit(*(r[k] for k in _NAMES), param_kind=self.param_kind)
            for r in self.bootstrap
        ]

    def interval(self, fn: Any) -> tuple[float, float] | None:
        """95% bootstrap interval of ``fn(fit) -> float`` (None when not bootstrapped).

        For instance ``fit.interval(lambda f: compute_optimal(1e21, f).n_params)``.
        """
        fits = self.resampled()
        return _interval([fn(f) for f in fits]) if fits else None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["ci"] = {k: list(v) for k, v in self.ci.items()}
        out["a"], out["b"] = self.a, self.b
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "fit") -> ChinchillaFit:
        """The inverse of :meth:`to_dict`; a bad field is a one-line ConfigError."""
        for k in _NAMES:
            _check(k in values, f"{where}: missing field {k!r}")
            _check(
                _positive_number(values[k]), f"{where}: {k}={values[k]!r} must be a positive number"
            )
        kind = values.get("param_kind", "total")
        _check(kind in PARAM_KINDS, f"{where}: param_kind={kind!r} is not one of {PARAM_KINDS}")
        ci = {k: (float(v[0]), float(v[1])) for k, v in (values.get("ci") or {}).items()}
        records = {}
        for key in ("starts", "bootstrap"):
            recs = values.get(key) or []
            _check(
                isinstance(recs, list) and all(isinstance(r, dict) for r in recs),
                f"{where}: {key} must be a list of objects",
            )
            records[key] = recs
        for i, r in enumerate(records["bootstrap"]):
            for k in _NAMES:
                _check(
                    _positive_number(r.get(k)),
                    f"{where}: bootstrap[{i}].{k}={r.get(k)!r} must be a positive number",
                )
        r_star = values.get("r_star")
        _check(
            r_star is None or _positive_number(r_star),
            f"{where}: r_star={r_star!r} must be a positive number (or absent)",
        )
        repeat_fit = values.get("repeat_fit") or {}
        _check(isinstance(repeat_fit, dict), f"{where}: repeat_fit must be an object")
        return cls(
            *(float(values[k]) for k in _NAMES),
            param_kind=kind,
            name=str(values.get("name", "")),
            n_runs=int(values.get("n_runs", 0)),
            objective=float(values.get("objective", float("nan"))),
            ci=ci,
            huber_delta=float(values.get("huber_delta", 1e-3)),
            grad_norm=float(values.get("grad_norm", float("nan"))),
            starts=records["starts"],
            bootstrap=records["bootstrap"],
            seed=int(values.get("seed", 0)),
            r_star=None if r_star is None else float(r_star),
            repeat_fit=repeat_fit,
        )


def _positive_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0


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

# scipy L-BFGS-B settings: tighter than its defaults (ftol 2.2e-9, gtol 1e-5), which
# stop while the exponents still move in the third decimal on a few hundred runs.
LBFGS_OPTIONS = {"maxiter": 2000, "ftol": 1e-13, "gtol": 1e-9}
# Box for ``(ln A, ln B, ln E, ln α, ln β)``: only the exponents are bounded, to
# 1e-3..10, which keeps a long trial step of the line search from overflowing
# ``exp(ln α)``; an optimum on that bound says the data do not pin the exponent.
_BOUNDS = [(None, None)] * 3 + [(math.log(1e-3), math.log(10.0))] * 2


def _grid() -> np.ndarray:
    """Hoffmann et al.'s 4500 starting points as ``(ln A, ln B, ln E, ln α, ln β)``.

    Their grid: ``ln A, ln B ∈ {0, 5, ..., 25}``, ``ln E ∈ {-1, -0.5, ..., 1}``,
    ``α, β ∈ {0, 0.5, ..., 2}``; the exponents are optimised as logarithms (so they
    stay positive), hence 0 becomes 0.1 here.
    """
    exps = np.log([0.1, 0.5, 1.0, 1.5, 2.0])
    es = np.arange(-1.0, 1.01, 0.5)
    abs_ = np.arange(0.0, 25.01, 5.0)
    return np.array(list(itertools.product(abs_, abs_, es, exps, exps)))


def _huber(r: np.ndarray, delta: float) -> np.ndarray:
    """Huber loss, ``r²/2`` where ``|r| <= δ`` and ``δ (|r| - δ/2)`` elsewhere.

    Computed as ``c (|r| - c/2)`` with ``c = min(|r|, δ)``.
    """
    absr = np.abs(r)
    c = np.minimum(absr, delta)
    return c * (absr - 0.5 * c)


def huber_objective(
    theta: np.ndarray,
    log_n: np.ndarray,
    log_d: np.ndarray,
    log_l: np.ndarray,
    weights: np.ndarray,
    delta: float,
) -> tuple[float, np.ndarray]:
    """Approach 3's objective and its gradient at ``theta = (ln A, ln B, ln E, ln α, ln β)``.

    ``Σ_i w_i Huber_δ(LSE(ln A - α ln N_i, ln B - β ln D_i, ln E) - ln L_i) / δ``, the
    log-sum-exp being ``ln`` of the law's prediction. ``weights`` are per-run counts
    (a bootstrap resample is the same runs with other counts). The gradient is the
    chain rule written out (softmax weights of the three terms times the clipped
    residual), so scipy needs no finite differences.
    """
    a, b, e, log_alpha, log_beta = theta
    alpha, beta = math.exp(log_alpha), math.exp(log_beta)
    x1 = a - alpha * log_n
    x2 = b - beta * log_d
    m = np.maximum(np.maximum(x1, x2), e)
    w1, w2, w3 = np.exp(x1 - m), np.exp(x2 - m), np.exp(e - m)
    s = w1 + w2 + w3
    r = m + np.log(s) - log_l
    value = float(weights @ _huber(r, delta)) / delta
    psi = weights * np.clip(r, -delta, delta) / (delta * s)  # d value / d LSE, over s
    g1, g2, g3 = psi * w1, psi * w2, psi * w3
    grad = np.array([g1.sum(), g2.sum(), g3.sum(), -alpha * (g1 @ log_n), -beta * (g2 @ log_d)])
    return value, grad


def _grid_values(
    grid: np.ndarray,
    log_n: np.ndarray,
    log_d: np.ndarray,
    log_l: np.ndarray,
    weights: np.ndarray,
    delta: float,
    chunk: int = 256,
) -> np.ndarray:
    """The objective at every grid point for every column of ``weights``: ``[G, R]``.

    ``weights`` is ``[runs, R]`` (the full data and each resample), so the grid's
    per-run losses are computed once and reused by every resample.
    """
    out = np.empty((len(grid), weights.shape[1]))
    for i in range(0, len(grid), chunk):
        t = grid[i : i + chunk]
        x1 = t[:, 0:1] - np.exp(t[:, 3:4]) * log_n
        x2 = t[:, 1:2] - np.exp(t[:, 4:5]) * log_d
        lse = np.logaddexp(np.logaddexp(x1, x2), t[:, 2:3])
        out[i : i + chunk] = _huber(lse - log_l, delta) @ weights / delta
    return out


@contextlib.contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """Run the body with scipy's bundled OpenBLAS on one thread (where it can be found).

    L-BFGS-B calls BLAS on 5-vectors; with OpenBLAS's default threads each call hands
    work to, and spins on, a second thread, which on a busy two-core machine made a
    fit 5-50x slower (7 ms against 40-300 ms per start measured). The thread count
    is restored afterwards; without scipy's wheel-bundled OpenBLAS this does nothing.
    """
    lib = None
    try:
        import scipy

        libs = glob.glob(
            os.path.join(os.path.dirname(scipy.__file__) + ".libs", "libscipy_openblas*")
        )
        if libs:
            lib = ctypes.CDLL(libs[0])
            before = int(lib.scipy_openblas_get_num_threads())
            lib.scipy_openblas_set_num_threads(1)
    except (OSError, AttributeError):
        lib = None
    try:
        yield
    finally:
        if lib is not None:
            lib.scipy_openblas_set_num_threads(before)


def _params(theta: np.ndarray, centre: tuple[float, float] = (0.0, 0.0)) -> dict[str, float]:
    """Optimiser variables -> ``{E, A, B, alpha, beta}``.

    ``theta = (ln A', ln B', ln E, ln α, ln β)`` for ``ln N - centre[0]`` and
    ``ln D - centre[1]``: ``ln A = ln A' + α centre[0]``, ``ln B = ln B' + β centre[1]``.
    """
    a, b, e, p, q = (float(v) for v in theta)
    alpha, beta = math.exp(p), math.exp(q)
    return {
        "E": math.exp(e),
        "A": math.exp(a + alpha * centre[0]),
        "B": math.exp(b + beta * centre[1]),
        "alpha": alpha,
        "beta": beta,
    }


def _minimize(
    starts: np.ndarray, args: tuple, centre: tuple[float, float]
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """scipy L-BFGS-B from each start: the best parameters and one record per start."""
    from scipy.optimize import minimize

    best, best_loss, records = starts[0], math.inf, []
    with _single_threaded_blas(), np.errstate(over="ignore"):
        for x0 in starts:
            res = minimize(
                huber_objective,
                x0,
                args=args,
                jac=True,
                method="L-BFGS-B",
                bounds=_BOUNDS,
                options=LBFGS_OPTIONS,
            )
            loss = float(res.fun)
            records.append(
                {
                    "start": _params(x0, centre),
                    "params": _params(res.x, centre),
                    "loss": loss,
                    "success": bool(res.success),
                    "message": str(res.message),
                    "nit": int(res.nit),
                    "nfev": int(res.nfev),
                    "grad_norm": float(np.linalg.norm(res.jac)),
                }
            )
            if math.isfinite(loss) and np.all(np.isfinite(res.x)) and loss < best_loss:
                best, best_loss = res.x, loss
    return _params(best, centre), records


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
    bootstrap_starts: int = 3,
    run_weights: Sequence[float] | np.ndarray | None = None,
) -> ChinchillaFit:
    """Approach 3: fit ``E, A, B, alpha, beta`` to final losses of ``len(losses)`` runs.

    Minimises the Huber loss (``delta``) between ``log L`` and
    ``LSE(ln A - alpha ln N, ln B - beta ln D, ln E)`` (:func:`huber_objective`) over
    the logarithms of all five parameters (so each stays positive) with scipy's
    L-BFGS-B, started from the ``num_starts`` best points of Hoffmann et al.'s
    4500-point grid (all evaluated, vectorised); the best optimum is kept and every
    start's outcome recorded (``starts``, ``grad_norm``). ``bootstrap > 0`` refits
    that many resamples of the runs (with replacement), each from the
    ``bootstrap_starts`` best grid points of its own objective, and stores their fits
    (``bootstrap``) and 95% percentile intervals (``ci``). ``run_weights`` (positive,
    one per run; e.g. :func:`t5x_lite.scaling.tuning.noise_weights`) multiply each
    run's term of the objective, in the full fit and in every resample.

    >>> n, d = np.meshgrid([1e6, 1e7, 1e8, 1e9], [1e8, 1e9, 1e10, 1e11])  # 16 runs
    >>> fit = fit_chinchilla(n, d, FITS["hoffmann2022"].predict(n, d))
    >>> round(fit.alpha, 3), round(fit.beta, 3), round(fit.E, 3), fit.converged
    (0.34, 0.28, 1.69, True)
    """
    _check(param_kind in PARAM_KINDS, f"param_kind={param_kind!r} is not one of {PARAM_KINDS}")
    _check(isinstance(bootstrap, int) and bootstrap >= 0, f"bootstrap={bootstrap!r} must be >= 0")
    for name, k in (("num_starts", num_starts), ("bootstrap_starts", bootstrap_starts)):
        _check(isinstance(k, int) and k >= 1, f"{name}={k!r} must be >= 1")
    n, d, loss = check_runs(n_params, n_tokens, losses, min_runs=len(_NAMES))
    _check(np.unique(n).size >= 2, "n_params: every run has the same size; alpha is undefined")
    _check(np.unique(d).size >= 2, "n_tokens: every run has the same length; beta is undefined")
    # ln N and ln D enter centred (ln A, ln B shifted to match): the same law, but
    # ln A and α no longer move together, which halves L-BFGS-B's iterations.
    centre = (float(np.log(n).mean()), float(np.log(d).mean()))
    log_n, log_d, log_l = np.log(n) - centre[0], np.log(d) - centre[1], np.log(loss)
    rng = np.random.default_rng(seed)
    counts = [np.ones(n.size)]
    counts += [
        np.bincount(rng.integers(0, n.size, n.size), minlength=n.size) for _ in range(bootstrap)
    ]
    weights = np.stack(counts, 1).astype(np.float64)  # [runs, 1 + bootstrap]
    if run_weights is not None:
        weights *= positive_array("run_weights", run_weights, n.size)[:, None]
    grid = _grid()
    grid[:, 0] -= np.exp(grid[:, 3]) * centre[0]
    grid[:, 1] -= np.exp(grid[:, 4]) * centre[1]
    order = np.argsort(_grid_values(grid, log_n, log_d, log_l, weights, delta), axis=0)

    def fit_column(j: int, k: int) -> tuple[dict[str, float], list[dict[str, Any]]]:
        args = (log_n, log_d, log_l, weights[:, j], delta)
        return _minimize(grid[order[:k, j]], args, centre)

    params, starts = fit_column(0, num_starts)
    resamples = []
    for j in range(1, bootstrap + 1):
        best, recs = fit_column(j, bootstrap_starts)
        top = min(recs, key=lambda r: r["loss"])
        resamples.append({**best, **{k: top[k] for k in ("loss", "success", "nit")}})
    fit = ChinchillaFit(
        **params,
        param_kind=param_kind,
        name=f"approach3_{param_kind}",
        n_runs=int(n.size),
        objective=min(r["loss"] for r in starts),
        huber_delta=float(delta),
        grad_norm=min(starts, key=lambda r: r["loss"])["grad_norm"],
        starts=starts,
        bootstrap=resamples,
        seed=int(seed),
    )
    if not resamples:
        return fit
    ci = {k: _interval([r[k] for r in resamples]) for k in _NAMES}
    ci["a"] = fit.interval(lambda f: f.a)
    ci["b"] = fit.interval(lambda f: f.b)
    return dataclasses.replace(fit, ci=ci)
