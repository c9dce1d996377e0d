"""Approach 3 on Chinchilla's own runs (Epoch AI's extraction, tests/data): the fit
reproduces Besiroglu et al. 2024's refit, converged, within seconds."""

from __future__ import annotations

import os
import time

import numpy as np

from t5x_lite.scaling import FITS, compute_optimal, fit_chinchilla

DATA = os.path.join(os.path.dirname(__file__), "data", "chinchilla_runs.csv")


def chinchilla_runs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(N, D, loss)`` of the 240 runs the replication fits (the 5 highest losses out)."""
    n, flops, loss = np.loadtxt(DATA, delimiter=",", skiprows=1).T
    assert n.size == 245
    keep = loss < np.sort(loss)[-5]
    return n[keep], flops[keep] / (6 * n[keep]), loss[keep]


def test_fit_reproduces_the_epoch_ai_refit_in_seconds():
    n, d, loss = chinchilla_runs()
    assert n.size == 240
    start = time.perf_counter()
    fit = fit_chinchilla(n, d, loss)
    seconds = time.perf_counter() - start
    assert seconds < 10, seconds
    ref = FITS["besiroglu2024"]  # E 1.82, A 482.01, B 2085.43, alpha 0.3478, beta 0.3658
    assert abs(fit.E - ref.E) < 0.02
    assert abs(fit.alpha - ref.alpha) < 0.005
    assert abs(fit.beta - ref.beta) < 0.005
    assert abs(np.log(fit.A / ref.A)) < 0.1 and abs(np.log(fit.B / ref.B)) < 0.1
    assert fit.converged and fit.grad_norm < 1e-4
    assert all(r["nit"] >= 1 for r in fit.starts)
    # The replication's headline: about 20 tokens per parameter at Chinchilla's budget.
    ratio = compute_optimal(5.76e23, fit).tokens_per_param
    assert abs(ratio / compute_optimal(5.76e23, ref).tokens_per_param - 1) < 0.1
