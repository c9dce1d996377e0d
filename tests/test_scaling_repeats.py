"""Data-constrained scaling (t5x_lite.scaling.repeats): Muennighoff et al.'s effective
data against a numpy transcription of their equation, the fit of R_D* on synthetic
runs of a known law, the data-constrained planner against a brute-force search, the
sweep's epoch plan, the unique-token subset of the training split, and bad input."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import kjv_root, kjv_tokenizer, make_cfg  # noqa: F401

from t5x_lite.config import ConfigError, ScalingConfig
from t5x_lite.scaling import FITS, load_fit, repeats
from t5x_lite.scaling.__main__ import load_config
from t5x_lite.scaling.fits import save_fit
from t5x_lite.scaling.planner import plan, shape_for_width, shape_grid, step_compute
from t5x_lite.scaling.report import write_report
from t5x_lite.scaling.sweep import RUN_COLUMNS, append_rows, check_out_dir, plan_sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = FITS["besiroglu2024"]


def muennighoff_d_prime(d: float, u: float, r_star: float) -> float:
    """Equation 5 of Muennighoff et al. 2023, written out from the paper:
    U_D = min(D, U), R_D = D / U_D - 1, D' = U_D + U_D R_D* (1 - exp(-R_D / R_D*))."""
    u_d = min(d, u)
    r_d = d / u_d - 1.0
    return u_d + u_d * r_star * (1.0 - math.exp(-r_d / r_star))


@pytest.mark.parametrize(
    "d,u,r", [(50.0, 100.0, 15.4), (100.0, 100.0, 15.4), (400.0, 100.0, 15.4), (1e6, 1e3, 2.0)]
)
def test_effective_tokens_is_the_papers_equation(d, u, r):
    assert float(repeats.effective_tokens(d, u, r)) == pytest.approx(
        muennighoff_d_prime(d, u, r), rel=1e-12
    )


def test_effective_tokens_limits():
    # Up to one epoch everything counts; beyond, less and less; never above U (1 + R*).
    assert float(repeats.effective_tokens(7e5, 1e6)) == 7e5
    e = repeats.effective_tokens(np.array([2e6, 4e6, 1e12]), 1e6, 15.4)
    assert 1.9e6 < e[0] < 2e6 and 3.5e6 < e[1] < 4e6
    assert e[2] == pytest.approx(1e6 * 16.4)
    with pytest.raises(ConfigError, match="R_D"):
        repeats.effective_tokens(1.0, 1.0, 0.0)


def synthetic_runs(r_star: float, noise: float, seed: int) -> list[dict]:
    """IsoFLOP-style repeated runs from ``BASE`` with decay ``r_star`` (numpy reference)."""
    rng = np.random.default_rng(seed)
    rows = []
    u = 2e9
    for budget in (1e20, 3e20, 1e21):
        for epochs in (1, 2, 4, 8, 16, 32, 64):
            d = epochs * u
            n = budget / (6 * d)
            loss = (
                BASE.E
                + BASE.A / n**BASE.alpha
                + BASE.B / muennighoff_d_prime(d, u, r_star) ** BASE.beta
            )
            loss *= 1 + noise * rng.standard_normal()
            rows.append({"run_id": f"C{budget:.0e}_e{epochs}", "budget": budget, "n_params": n,
                         "n_tokens": d, "unique_tokens": u, "final_eval_loss": loss})  # fmt: skip
    return rows


def _fit(rows, bootstrap=0):
    return repeats.fit_r_star(
        [r["n_params"] for r in rows], [r["n_tokens"] for r in rows],
        [r["unique_tokens"] for r in rows], [r["final_eval_loss"] for r in rows],
        BASE, bootstrap=bootstrap,
    )  # fmt: skip


def test_fit_recovers_r_star_and_its_interval_covers_it():
    exact = _fit(synthetic_runs(5.0, 0.0, 0))
    assert exact.r_star == pytest.approx(5.0, rel=1e-4)
    assert exact.repeat_fit["success"]
    noisy = _fit(synthetic_runs(5.0, 0.003, 1), bootstrap=40)
    lo, hi = noisy.ci["r_star"]
    assert lo < 5.0 < hi and hi / lo < 3
    # The base law's five parameters are kept; the fit round-trips through JSON.
    assert (noisy.E, noisy.alpha) == (BASE.E, BASE.alpha)


def test_fit_round_trips_and_bad_fit_files(tmp_path):
    fit = _fit(synthetic_runs(5.0, 0.0, 0))
    path = save_fit(fit, str(tmp_path / "fit.json"))
    back = load_fit(path)
    assert back.r_star == fit.r_star and back.repeat_fit["n_runs"] == 21
    assert repeats.r_star_of(back)[0] == fit.r_star
    assert repeats.r_star_of(BASE) == (repeats.MUENNIGHOFF2023_R_STAR, "Muennighoff et al. 2023")
    values = json.loads(Path(path).read_text())
    values["r_star"] = -1.0
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(values))
    with pytest.raises(ConfigError, match=r"r_star=-1.0 must be a positive number"):
        load_fit(str(bad))


def test_fit_refuses_runs_without_epochs_or_without_repeats():
    rows = synthetic_runs(5.0, 0.0, 0)
    args = ([r["n_params"] for r in rows], [r["n_tokens"] for r in rows])
    losses = [r["final_eval_loss"] for r in rows]
    with pytest.raises(ConfigError, match="needs each run's unique_tokens"):
        repeats.fit_r_star(*args, None, losses, BASE)
    with pytest.raises(ConfigError, match="needs each run's unique_tokens"):
        repeats.fit_r_star(*args, [None] * len(rows), losses, BASE)
    with pytest.raises(ConfigError, match="no run repeats its data"):
        repeats.fit_r_star(*args, [1e15] * len(rows), losses, BASE)


def test_constrained_optimum_matches_brute_force():
    fit = dataclasses.replace(BASE, r_star=5.0)
    c, u = 1e22, 1e10
    opt = repeats.constrained_optimum(c, u, fit)
    ns = np.geomspace(1e6, 1e12, 200001)
    d = c / (6 * ns)
    ref = [BASE.E + BASE.A / n**BASE.alpha + BASE.B / muennighoff_d_prime(x, u, 5.0) ** BASE.beta
           for n, x in zip(ns[::50], d[::50], strict=True)]  # fmt: skip
    best = ns[::50][int(np.argmin(ref))]
    assert opt["n_params"] == pytest.approx(best, rel=0.01)
    # With scarce data the optimum trades tokens for parameters: bigger than Chinchilla's.
    from t5x_lite.scaling import compute_optimal

    free = compute_optimal(c, BASE)
    assert (
        free.n_tokens > u and opt["n_params"] > free.n_params and opt["epochs"] < free.n_tokens / u
    )


def test_planner_with_unique_tokens_picks_the_lowest_predicted_loss():
    cfg = load_config(os.path.join(ROOT, "configs", "scaling_sweep.py"), [])
    fit = dataclasses.replace(load_fit("hoffmann2022"), r_star=3.0)
    c, u, seq, batch = 6e12, 50_000, cfg.data.seq_len, cfg.train.batch_size
    _model, steps, info = plan(cfg.model, c, seq, batch, fit, unique_tokens=u)
    _, _, free = plan(cfg.model, c, seq, batch, fit)
    assert info["epochs"] == pytest.approx(steps * batch * seq / u)
    assert info["n_params"] > free["n_params"] and info["r_star"] == 3.0
    # Brute force over the whole grid (shapes up to 100x the chosen size) with the
    # numpy transcription of the law.
    losses = []
    for d_model, layers, n in shape_grid(cfg.model, "total"):
        if n > 100 * info["n_params"]:
            continue
        m = shape_for_width(cfg.model, d_model, layers)
        k = round(c / step_compute(m, seq, batch))
        if k >= 1:
            dp = muennighoff_d_prime(k * batch * seq, u, 3.0)
            losses.append(fit.E + fit.A / n**fit.alpha + fit.B / dp**fit.beta)
    assert info["predicted_loss"] == pytest.approx(min(losses), rel=1e-9)


def test_sweep_epochs_plan_and_refusals(tmp_path):
    cfg = load_config(os.path.join(ROOT, "configs", "scaling_repeat.py"), [])
    cfg = dataclasses.replace(cfg, scaling=dataclasses.replace(cfg.scaling, fit="hoffmann2022"))
    runs = plan_sweep(cfg)
    u = cfg.data.unique_tokens
    for budget in cfg.scaling.sweep_budgets:
        epochs = sorted(r.n_tokens / u for r in runs if r.budget == budget)
        assert len(epochs) == len(cfg.scaling.sweep_epochs)
        # Nearest grid shapes: each run's epochs within a factor 1.6 of the planned one.
        for got, want in zip(epochs, sorted(cfg.scaling.sweep_epochs), strict=True):
            assert want / 1.6 < got < want * 1.6
    no_u = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, unique_tokens=0))
    with pytest.raises(ConfigError, match=r"sweep_epochs needs data\.unique_tokens > 0"):
        plan_sweep(no_u)
    with pytest.raises(ConfigError, match="sweep_epochs has 0"):
        ScalingConfig(sweep_epochs=(0,)).validate()
    # A results directory recorded before these fields existed is the same sweep.
    old = {"data": {"seq_len": 64}, "scaling": {}}
    (tmp_path / "sweep_config.json").write_text(json.dumps(old))
    base = load_config(os.path.join(ROOT, "configs", "scaling_sweep.py"), [])
    rec = json.loads(json.dumps(__import__("t5x_lite.config", fromlist=["to_dict"]).to_dict(base)))
    rec["data"].pop("unique_tokens")
    rec["scaling"].pop("sweep_epochs")
    (tmp_path / "sweep_config.json").write_text(json.dumps(rec))
    check_out_dir(base, str(tmp_path))


def test_repeat_report_from_a_synthetic_sweep(tmp_path):
    out = tmp_path / "rep"
    out.mkdir()
    base_path = save_fit(BASE, str(tmp_path / "base.json"))
    (out / "sweep_config.json").write_text(
        json.dumps({"scaling": {"fit": base_path, "sweep_epochs": [1, 4, 16]}})
    )
    rows = synthetic_runs(5.0, 0.0, 0)
    append_rows(str(out / "runs.csv"), RUN_COLUMNS, rows)
    paths = write_report(str(out), bootstrap=5)
    assert load_fit(paths["fit"]).r_star == pytest.approx(5.0, rel=1e-3)
    text = Path(paths["report"]).read_text()
    assert "Fitted R_D* = 5" in text and "![loss against epochs](repeats.png)" in text
    assert os.path.getsize(paths["figure"]) > 10_000
    with pytest.raises(ConfigError, match="data-constrained sweep"):
        write_report(str(out), holdout=True)


def test_unique_tokens_subset_of_the_training_split(kjv_root, kjv_tokenizer):  # noqa: F811
    from t5x_lite.data import iterator_state, pipeline

    cfg = make_cfg(kjv_root, seq_len=64, unique_tokens=20_000)
    full = pipeline.batch_source(make_cfg(kjv_root, seq_len=64), kjv_tokenizer, "train").store
    sub = pipeline.batch_source(cfg, kjv_tokenizer, "train").store
    assert 20_000 <= sub.num_tokens < 20_000 + max(np.diff(full.doc_starts))
    # Whole documents of the full split, in their order: each is found there.
    whole = {bytes(np.asarray(full.document(d))) for d in range(full.num_docs)}
    assert all(bytes(sub.document(d)) in whole for d in range(sub.num_docs))
    # Deterministic, and the eval split is untouched.
    again = pipeline._source.__wrapped__(
        cfg.data, kjv_tokenizer.path, kjv_tokenizer.sha256, "train"
    )
    np.testing.assert_array_equal(again.store.tokens, sub.tokens)
    ev = pipeline.batch_source(cfg, kjv_tokenizer, cfg.data.eval_split).store
    assert (
        ev.num_tokens
        == pipeline.batch_source(
            make_cfg(kjv_root, seq_len=64), kjv_tokenizer, cfg.data.eval_split
        ).store.num_tokens
    )
    # Training rows hold only tokens of the subset: an epoch covers it.
    src = pipeline.batch_source(cfg, kjv_tokenizer, "train")
    assert src.tokens_per_epoch < full.num_tokens / 10
    # Its batches hold only the subset's tokens (an id missing from it never appears).
    it = pipeline.train_iterator(cfg, kjv_tokenizer)
    ids = np.concatenate([next(it)["input_ids"].ravel() for _ in range(20)])
    assert set(np.unique(ids)) <= set(np.unique(sub.tokens)) | set(range(8))
    # The iterator state records the cap; a state saved before it existed restores at
    # the default 0 only.
    state = it.get_state()
    assert state["data.unique_tokens"] == 20_000
    del state["data.unique_tokens"]
    with pytest.raises(ConfigError, match=r"saved with data\.unique_tokens=None"):
        it.set_state(state)
    plain = pipeline.train_iterator(make_cfg(kjv_root, seq_len=64), kjv_tokenizer)
    old = plain.get_state()
    del old["data.unique_tokens"]
    plain.set_state(old)
    assert iterator_state.fingerprint(cfg, kjv_tokenizer)["data.unique_tokens"] == 20_000
    with pytest.raises(ConfigError, match=r"data\.unique_tokens=-1 must be >= 0"):
        make_cfg(kjv_root, unique_tokens=-1)
