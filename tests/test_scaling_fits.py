"""Chinchilla fits (t5x_lite.scaling.fits): recovery of known laws from noisy synthetic
runs, the closed-form optimum against hand arithmetic and a brute-force search,
Approaches 1 and 2, fit files, and one-line errors on bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from t5x_lite.config import ConfigError
from t5x_lite.scaling import (
    FITS,
    ChinchillaFit,
    approach1,
    approach2,
    compute_optimal,
    fit_chinchilla,
    load_fit,
    save_fit,
)


def isoflop_design(true: ChinchillaFit, budgets, sizes: int, spread: float = 10.0):
    """IsoFLOP runs: per budget, ``sizes`` models log-spaced over N_opt/spread..N_opt*spread."""
    n, d, c = [], [], []
    for budget in budgets:
        n0 = true.G * (budget / 6) ** true.a
        for f in np.logspace(-math.log10(spread), math.log10(spread), sizes):
            n.append(n0 * f)
            d.append(budget / (6 * n0 * f))
            c.append(budget)
    return np.array(n), np.array(d), np.array(c)


@pytest.fixture(scope="module")
def noisy_runs():
    """81 runs (9 budgets 1e16..1e24 x 9 sizes) of each built-in law, 1% noise."""
    out = {}
    rng = np.random.default_rng(0)
    for name, true in FITS.items():
        n, d, c = isoflop_design(true, np.logspace(16, 24, 9), 9)
        loss = true.predict(n, d) * (1 + 0.01 * rng.standard_normal(n.size))
        out[name] = (n, d, c, loss)
    return out


@pytest.mark.parametrize("name", sorted(FITS))
def test_fit_recovers_known_law_from_noisy_losses(name, noisy_runs):
    true = FITS[name]
    n, d, _, loss = noisy_runs[name]
    fit = fit_chinchilla(n, d, loss)
    assert abs(fit.alpha - true.alpha) < 0.03
    assert abs(fit.beta - true.beta) < 0.03
    assert abs(fit.E / true.E - 1) < 0.02
    assert fit.n_runs == n.size and fit.param_kind == "total"


def test_fit_is_exact_without_noise():
    true = FITS["besiroglu2024"]
    n, d, _ = isoflop_design(true, np.logspace(17, 23, 7), 7)
    fit = fit_chinchilla(n, d, true.predict(n, d))
    for k in ("E", "A", "B", "alpha", "beta"):
        assert getattr(fit, k) == pytest.approx(getattr(true, k), rel=1e-3), k


def test_bootstrap_intervals(noisy_runs):
    n, d, _, loss = noisy_runs["hoffmann2022"]
    fit = fit_chinchilla(n, d, loss, bootstrap=8, seed=1)
    assert set(fit.ci) == {"E", "A", "B", "alpha", "beta", "a", "b"}
    for k in ("E", "alpha", "beta"):
        lo, hi = fit.ci[k]
        assert lo < hi
        assert lo <= getattr(fit, k) <= hi
    assert fit.ci["alpha"][1] - fit.ci["alpha"][0] < 0.05  # 81 runs pin alpha down
    # Same seed, same intervals.
    assert fit_chinchilla(n, d, loss, bootstrap=8, seed=1).ci == fit.ci


def test_compute_optimal_hand_computed():
    # hoffmann2022: G = (0.34*406.4 / (0.28*410.7)) ** (1/0.62)
    #             = (138.176 / 114.996) ** 1.612903 = 1.201572 ** 1.612903 = 1.344711
    # C = 5.76e23 (Chinchilla): C/6 = 9.6e22; a = 0.28/0.62 = 0.451613
    # N = 1.344711 * 9.6e22 ** 0.451613 = 3.2190e10, D = 9.6e22 / N = 2.9823e12
    opt = compute_optimal(5.76e23, "hoffmann2022")
    assert opt.n_params == pytest.approx(3.2190e10, rel=2e-4)
    assert opt.n_tokens == pytest.approx(2.9823e12, rel=2e-4)
    assert opt.tokens_per_param == pytest.approx(92.65, rel=2e-4)
    # besiroglu2024: G = (0.3478*482.01 / (0.3658*2085.43)) ** (1/0.7136)
    #              = (167.643 / 762.850) ** 1.401345 = 0.219759 ** 1.401345 = 0.119630
    # C = 1e21: C/6 = 1.666667e20; a = 0.3658/0.7136 = 0.512612
    # N = 0.119630 * 1.666667e20 ** 0.512612 = 2.7785e9, D = 1.666667e20 / N = 5.9985e10:
    # about 21.6 tokens per parameter, the replication's ~20.
    opt = compute_optimal(1e21, "besiroglu2024")
    assert opt.n_params == pytest.approx(2.7785e9, rel=2e-4)
    assert opt.n_tokens == pytest.approx(5.9985e10, rel=2e-4)
    assert opt.tokens_per_param == pytest.approx(21.589, rel=2e-4)


@pytest.mark.parametrize("name", sorted(FITS))
def test_compute_optimal_is_the_isoflop_minimum(name):
    """Brute force: scan N at fixed C = 6ND; the lowest predicted loss is the closed form."""
    fit = FITS[name]
    for c in (1e18, 1e22):
        grid = np.logspace(3, 14, 200_001)
        best = grid[np.argmin(fit.predict(grid, c / (6 * grid)))]
        n_opt, d_opt = compute_optimal(c, name)
        assert n_opt == pytest.approx(best, rel=2e-4)
        assert 6 * n_opt * d_opt == pytest.approx(c, rel=1e-12)
    arr = compute_optimal(np.array([1e18, 1e22]), name)
    assert arr.n_params.shape == (2,)


def test_approach1_envelope_on_synthetic_runs():
    true = FITS["hoffmann2022"]
    # 13 sizes per budget, none exactly at N_opt: the envelope picks the nearest.
    n, d, c = isoflop_design(true, np.logspace(17, 23, 7), 13, spread=8.0)
    n = n * 1.07
    d = c / (6 * n)
    res = approach1(n, d, true.predict(n, d), num_bins=7)
    assert len(res.points) == 7
    assert res.a == pytest.approx(true.a, abs=0.02)
    assert res.b == pytest.approx(true.b, abs=0.02)
    assert res.tokens_per_param(1e20) == pytest.approx(res.d_opt(1e20) / res.n_opt(1e20))


def test_approach2_parabolas_on_synthetic_runs():
    true = FITS["besiroglu2024"]
    n, d, c = isoflop_design(true, np.logspace(17, 23, 7), 9, spread=4.0)
    res = approach2(n, d, true.predict(n, d), c)
    assert len(res.parabolas) == 7 and not res.skipped
    assert res.a == pytest.approx(true.a, abs=0.01)
    assert res.b == pytest.approx(true.b, abs=0.01)
    # The parabola minimum is within 10% of the true optimum at each budget.
    for p in res.points:
        assert p["n_params"] == pytest.approx(compute_optimal(p["flops"], true).n_params, rel=0.1)


def test_approach2_skips_profiles_without_an_interior_minimum():
    true = FITS["hoffmann2022"]
    n, d, c = isoflop_design(true, np.logspace(17, 23, 4), 5, spread=4.0)
    shifted = c == c.max()
    n = np.where(shifted, n * 30.0, n)  # the largest budget samples only oversized models
    d = c / (6 * n)
    res = approach2(n, d, true.predict(n, d), c)
    assert [b for b, _ in res.skipped] == [c.max()]
    assert "outside the sampled" in res.skipped[0][1]
    assert len(res.points) == 3 and len(res.parabolas) == 4


def test_save_and_load_roundtrip(tmp_path, noisy_runs):
    n, d, _, loss = noisy_runs["hoffmann2022"]
    fit = fit_chinchilla(n, d, loss, param_kind="non_embedding", bootstrap=3)
    path = save_fit(fit, str(tmp_path / "fits" / "fit.json"))
    back = load_fit(path)
    assert back == fit
    assert back.param_kind == "non_embedding"
    values = json.loads(Path(path).read_text())
    assert values["a"] == pytest.approx(fit.a)
    # compute_optimal accepts the file path.
    assert compute_optimal(1e20, path) == compute_optimal(1e20, fit)


def _one_line_error(fn, *args, match: str, **kwargs):
    with pytest.raises(ConfigError, match=match) as e:
        fn(*args, **kwargs)
    assert "\n" not in str(e.value)


def test_bad_input_gives_one_line_errors(tmp_path):
    n, d, loss = [1e6, 2e6, 4e6, 8e6, 1.6e7], [1e9, 2e9, 1e9, 2e9, 3e9], [3.0, 2.9, 2.8, 2.7, 2.6]
    _one_line_error(fit_chinchilla, n[:4], d[:4], loss[:4], match="fewer than the 5")
    _one_line_error(fit_chinchilla, n, d[:4], loss, match="n_tokens has 4 values")
    _one_line_error(fit_chinchilla, n, d, loss[:3], match="losses has 3 values")
    _one_line_error(fit_chinchilla, [*n[:4], -1.0], d, loss, match=r"n_params\[4\]=-1.0")
    _one_line_error(fit_chinchilla, n, d, [*loss[:4], float("nan")], match=r"losses\[4\]=nan")
    _one_line_error(fit_chinchilla, n, [0.0, *d[1:]], loss, match=r"n_tokens\[0\]=0.0")
    _one_line_error(fit_chinchilla, n, d, ["x"] * 5, match="losses must be a sequence")
    _one_line_error(fit_chinchilla, [1e6] * 5, d, loss, match="same size")
    _one_line_error(fit_chinchilla, n, d, loss, bootstrap=-1, match="bootstrap")
    _one_line_error(fit_chinchilla, n, d, loss, param_kind="all", match="param_kind")
    _one_line_error(compute_optimal, 0.0, match=r"flops\[0\]=0.0")
    _one_line_error(compute_optimal, float("inf"), match=r"flops\[0\]=inf")
    _one_line_error(compute_optimal, 1e20, "chinchilla", match="neither a built-in fit")
    bad = tmp_path / "bad.json"
    bad.write_text('{"E": 1.7, "A": 400, "B": 400, "alpha": 0.3}')
    _one_line_error(load_fit, str(bad), match="missing field 'beta'")
    bad.write_text("{not json")
    _one_line_error(load_fit, str(bad), match="bad.json")
    bad.write_text('{"E": 1.7, "A": 400, "B": 400, "alpha": -0.3, "beta": 0.3}')
    _one_line_error(load_fit, str(bad), match="alpha=-0.3")
    # Approach 2 needs >= 3 sizes on >= 2 budgets.
    _one_line_error(approach2, n, d, loss, [1e17] * 3 + [1e18] * 2, match="fewer than 2")
    _one_line_error(approach1, [1e6], [1e9], [3.0], match="fewer than the 2")
    _one_line_error(approach1, n, d, loss, flops=[1e17] * 5, match="fewer than 2")
