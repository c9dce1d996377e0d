"""Approach 3's optimiser (t5x_lite.scaling.fits): the objective and its gradient
against a numpy transcription of the law, every start's convergence record, bootstrap
resamples that really refit, positivity, a JSON round trip of everything a fit holds,
bootstrap coverage of the true exponents, and bootstrap intervals for Approaches 1
and 2."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from test_scaling_fits import isoflop_design

from t5x_lite.config import ConfigError
from t5x_lite.scaling import FITS, ChinchillaFit, approach1, approach2, fit_chinchilla, load_fit
from t5x_lite.scaling.fits import huber_objective, save_fit

NAMES = ("E", "A", "B", "alpha", "beta")


def runs_300(true: ChinchillaFit):
    """300 IsoFLOP runs: 12 budgets 1e18..1e23 x 25 sizes over N_opt/10..N_opt*10."""
    n, d = [], []
    for budget in np.logspace(18, 23, 12):
        n0 = true.G * (budget / 6) ** true.a
        for f in np.logspace(-1, 1, 25):
            n.append(n0 * f)
            d.append(budget / (6 * n0 * f))
    return np.array(n), np.array(d)


def noisy(true: ChinchillaFit, n, d, seed: int, noise: float = 0.01):
    rng = np.random.default_rng(seed)
    return true.predict(n, d) * (1 + noise * rng.standard_normal(n.size))


def reference_objective(params, n, d, loss, weights, delta):
    """The objective straight from its definition: Huber of ln(prediction) - ln(loss)."""
    E, A, B, alpha, beta = params
    r = np.log(E + A / n**alpha + B / d**beta) - np.log(loss)
    huber = np.where(np.abs(r) <= delta, 0.5 * r**2, delta * (np.abs(r) - 0.5 * delta))
    return float(np.sum(weights * huber)) / delta


def test_objective_and_gradient_match_a_transcription_of_the_law():
    rng = np.random.default_rng(0)
    true = FITS["besiroglu2024"]
    n, d = runs_300(true)
    loss = noisy(true, n, d, seed=1)
    weights = rng.integers(0, 3, n.size).astype(float)
    for delta in (1e-3, 0.5):  # mostly linear, mostly quadratic Huber regime
        for _ in range(5):
            params = np.array([1.7, 400.0, 2000.0, 0.3, 0.35]) * rng.uniform(0.6, 1.6, 5)
            E, A, B, alpha, beta = params
            theta = np.log([A, B, E, alpha, beta])
            args = (np.log(n), np.log(d), np.log(loss), weights, delta)
            value, grad = huber_objective(theta, *args)
            assert value == pytest.approx(reference_objective(params, n, d, loss, weights, delta))
            # Central differences of the transcription, in the optimiser's variables.
            h = 1e-6
            for i in range(5):
                step = np.zeros(5)
                step[i] = h
                up, down = np.exp(theta + step), np.exp(theta - step)
                as_params = [(p[2], p[0], p[1], p[3], p[4]) for p in (up, down)]
                fd = (
                    reference_objective(as_params[0], n, d, loss, weights, delta)
                    - reference_objective(as_params[1], n, d, loss, weights, delta)
                ) / (2 * h)
                assert grad[i] == pytest.approx(fd, rel=1e-5, abs=1e-6), (delta, i)


@pytest.fixture(scope="module")
def fit_300():
    true = FITS["besiroglu2024"]
    n, d = runs_300(true)
    loss = noisy(true, n, d, seed=0)
    return n, d, loss, fit_chinchilla(n, d, loss, bootstrap=20, seed=3)


def test_every_start_moves_converges_and_is_recorded(fit_300):
    n, d, loss, fit = fit_300
    assert len(fit.starts) == 16 and fit.converged
    for rec in fit.starts:
        assert set(rec) == {"start", "params", "loss", "success", "message", "nit", "nfev",
                            "grad_norm"}  # fmt: skip
        assert rec["nit"] >= 1 and rec["nfev"] >= 2 and rec["message"]
        assert all(rec["params"][k] != rec["start"][k] for k in NAMES), rec
        # The recorded loss is the objective at the recorded parameters.
        p = [rec["params"][k] for k in NAMES]
        assert rec["loss"] == pytest.approx(
            reference_objective(p, n, d, loss, 1.0, fit.huber_delta), rel=1e-9
        )
    best = min(fit.starts, key=lambda r: r["loss"])
    assert fit.objective == best["loss"] and fit.grad_norm == best["grad_norm"]
    assert fit.grad_norm < 1e-4
    assert [fit.alpha, fit.beta] == [best["params"]["alpha"], best["params"]["beta"]]
    # Every start that converged found the same optimum (to the third decimal).
    for rec in fit.starts:
        if rec["success"] and rec["loss"] <= best["loss"] * (1 + 1e-9):
            assert rec["params"]["alpha"] == pytest.approx(fit.alpha, abs=1e-3)


def test_bootstrap_resamples_refit_from_their_own_starts(fit_300):
    """Each resample is a real refit: it moved off its start, did not come back equal to
    the full-data optimum, and equals fitting the resampled runs directly."""
    n, d, loss, fit = fit_300
    assert len(fit.bootstrap) == 20 and fit.seed == 3
    assert all(r["nit"] >= 1 for r in fit.bootstrap)
    assert sum(r["success"] for r in fit.bootstrap) >= 18
    for r in fit.bootstrap:
        assert all(r[k] != getattr(fit, k) for k in NAMES), r
    alphas = [r["alpha"] for r in fit.bootstrap]
    assert len(set(alphas)) == 20 and np.std(alphas) > 1e-3
    # The first resample drawn the way fit_chinchilla draws it, fitted as plain runs.
    idx = np.random.default_rng(3).integers(0, n.size, n.size)
    direct = fit_chinchilla(n[idx], d[idx], loss[idx], num_starts=3)
    for k in NAMES:
        assert fit.bootstrap[0][k] == pytest.approx(getattr(direct, k), rel=1e-4), k
    lo, hi = fit.ci["alpha"]
    assert lo == pytest.approx(np.percentile(alphas, 2.5))
    assert hi == pytest.approx(np.percentile(alphas, 97.5))
    a = [r["beta"] / (r["alpha"] + r["beta"]) for r in fit.bootstrap]
    assert fit.ci["a"] == pytest.approx((np.percentile(a, 2.5), np.percentile(a, 97.5)))


def test_parameters_stay_positive_where_the_data_push_them_past_zero():
    """No irreducible loss (E = 0) and losses that grow with N (alpha < 0): the fit
    still returns positive parameters rather than crossing zero."""
    n, d = runs_300(FITS["hoffmann2022"])
    no_floor = 406.4 / n**0.34 + 410.7 / d**0.28
    growing = 2.0 + 1e-3 * n**0.1 + 410.7 / d**0.28
    for loss in (no_floor, growing):
        fit = fit_chinchilla(n, d, loss)
        for k in NAMES:
            assert getattr(fit, k) > 0 and math.isfinite(getattr(fit, k)), k
        assert all(r["nit"] >= 1 for r in fit.starts)


def test_json_round_trip_of_everything_a_fit_holds(tmp_path, fit_300):
    *_, fit = fit_300
    path = save_fit(fit, str(tmp_path / "fit.json"))
    back = load_fit(path)
    assert back == fit
    for field in ("starts", "bootstrap", "ci", "grad_norm", "seed", "huber_delta"):
        assert getattr(back, field) == getattr(fit, field), field
    assert back.converged == fit.converged
    assert back.interval(lambda f: f.a) == fit.interval(lambda f: f.a)
    values = json.loads(Path(path).read_text())
    assert set(values) >= {"starts", "bootstrap", "grad_norm", "a", "b"}


def test_bad_fit_files_are_one_line_errors(tmp_path, fit_300):
    *_, fit = fit_300
    good = fit.to_dict()
    cases = [
        ({"E": 0.0}, "E=0.0 must be a positive number"),
        ({"A": -406.4}, "A=-406.4 must be a positive number"),
        ({"beta": "0.3"}, "beta='0.3' must be a positive number"),
        ({"alpha": True}, "alpha=True must be a positive number"),
        ({"starts": {"x": 1}}, "starts must be a list of objects"),
    ]
    bad_resample = [dict(r) for r in good["bootstrap"]]
    bad_resample[2]["alpha"] = -0.1
    cases.append(({"bootstrap": bad_resample}, r"bootstrap\[2\]\.alpha=-0\.1"))
    for change, match in cases:
        path = tmp_path / "bad.json"
        path.write_text(json.dumps({**good, **change}))
        with pytest.raises(ConfigError, match=match) as e:
            load_fit(str(path))
        assert "\n" not in str(e.value) and "bad.json" in str(e.value)


def test_bootstrap_intervals_cover_the_true_exponents():
    """20 experiments of 300 runs from known parameters with 1% noise: the 95%
    intervals of alpha and beta (50 resamples, 2 starts each) contain the truth in at
    least 18 of 20. A run of 100 such experiments measured 95% for alpha, 93% for beta."""
    true = FITS["besiroglu2024"]
    n, d = runs_300(true)
    hits = {"alpha": 0, "beta": 0}
    for i in range(20):
        fit = fit_chinchilla(
            n, d, noisy(true, n, d, seed=1000 + i), bootstrap=50, seed=i, bootstrap_starts=2
        )
        for k in hits:
            lo, hi = fit.ci[k]
            hits[k] += lo <= getattr(true, k) <= hi
            assert hi - lo < 0.05, (k, lo, hi)  # an interval, not the whole range
        assert all(r["alpha"] != fit.alpha for r in fit.bootstrap)
    assert hits["alpha"] >= 18 and hits["beta"] >= 18, hits


def test_approach2_bootstrap_intervals():
    true = FITS["besiroglu2024"]
    n, d, c = isoflop_design(true, np.logspace(17, 23, 7), 9, spread=4.0)
    loss = noisy(true, n, d, seed=4, noise=0.003)
    law = approach2(n, d, loss, c, bootstrap=60, seed=1)
    assert law.n_resamples == 60 and 50 <= law.n_resamples_used <= 60
    lo, hi = law.ci["a"]
    assert lo < law.a < hi and lo <= true.a <= hi and hi - lo < 0.1
    assert law.ci["b"][0] <= true.b <= law.ci["b"][1]
    assert approach2(n, d, loss, c, bootstrap=60, seed=1).ci == law.ci  # same seed
    assert approach2(n, d, loss, c).ci == {}
    # Without noise every resample that keeps 3 sizes per profile finds the same law.
    exact = approach2(n, d, true.predict(n, d), c, bootstrap=20)
    assert exact.ci["a"][1] - exact.ci["a"][0] < 0.02


def test_approach1_bootstrap_resamples_runs_not_points():
    true = FITS["hoffmann2022"]
    n, d, _ = isoflop_design(true, np.logspace(17, 23, 7), 13, spread=8.0)
    # Five points along each run's training curve.
    frac = np.tile(np.linspace(0.2, 1.0, 5), n.size)
    runs = np.repeat(np.arange(n.size), 5)
    cn, cd = n[runs], d[runs] * frac
    loss = true.predict(cn, cd)
    law = approach1(cn, cd, loss, num_bins=7, runs=runs, bootstrap=40, seed=2)
    assert law.n_resamples_used == 40
    assert law.ci["a"][0] <= law.a <= law.ci["a"][1]
    assert law.ci["a"][0] < law.ci["a"][1] < law.ci["a"][0] + 0.2
    # Every envelope point comes from a drawn run: with all runs identical labels
    # (one run), each resample is the full data and the interval collapses.
    one = approach1(cn, cd, loss, num_bins=7, runs=np.zeros(cn.size), bootstrap=5)
    assert one.ci["a"] == (one.a, one.a)
    with pytest.raises(ConfigError, match="runs has 3 labels"):
        approach1(cn, cd, loss, runs=[1, 2, 3])
