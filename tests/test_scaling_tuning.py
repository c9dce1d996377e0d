"""Tuned small runs (t5x_lite.scaling.tuning): the best learning rate per point, seed
noise as Approach 3's weights, the sweep's plan over rates and seeds, and the report
of a synthetic tuned sweep."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import numpy as np
import pytest

from t5x_lite.config import ConfigError, ScalingConfig
from t5x_lite.scaling import FITS, compute_optimal, fit_chinchilla, load_fit, tuning
from t5x_lite.scaling.__main__ import load_config
from t5x_lite.scaling.report import write_report
from t5x_lite.scaling.sweep import CURVE_COLUMNS, RUN_COLUMNS, append_rows, plan_sweep, run_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRUE = FITS["hoffmann2022"]


def row(budget, layers, lr, seed, loss, n=1000.0):
    return {"run_id": f"C{budget}_L{layers}_lr{lr}_s{seed}", "budget": budget,
            "num_layers": layers, "d_model": 64, "n_params": n, "learning_rate": lr,
            "seed": seed, "final_eval_loss": loss}  # fmt: skip


def test_select_points_by_hand():
    rows = [row(1e12, 2, 1e-3, 0, 4.10), row(1e12, 2, 1e-3, 1, 4.14),
            row(1e12, 2, 3e-3, 1, 4.02), row(1e12, 2, 3e-3, 0, 4.00),
            row(1e12, 4, 1e-3, 0, 3.90), row(1e12, 4, 3e-3, 0, 3.95),
            row(1e12, 4, 2e-3, 0, 3.80)]  # fmt: skip
    a, b = tuning.select_points(rows)
    assert a["learning_rate"] == 3e-3 and a["seed"] == 0  # the first seed's run
    assert a["final_eval_loss"] == pytest.approx(4.01)
    assert a["loss_std"] == pytest.approx(math.sqrt(2) * 0.01) and a["n_seeds"] == 2
    assert a["lr_at_edge"] and a["lr_losses"] == {1e-3: pytest.approx(4.12), 3e-3: 4.01}
    assert b["learning_rate"] == 2e-3 and not b["lr_at_edge"] and math.isnan(b["loss_std"])
    # A sweep that varies neither: the rows themselves.
    plain = [
        dict(row(1e12, L, None, None, 4.0 - L / 10), learning_rate="", seed="") for L in (1, 2)
    ]
    pts = tuning.select_points(plain)
    assert [p["final_eval_loss"] for p in pts] == [3.9, 3.8] and not pts[0]["lr_at_edge"]


def test_noise_weights_by_hand():
    pts = [{"final_eval_loss": 4.0, "loss_std": 0.04}, {"final_eval_loss": 2.0, "loss_std": 0.01},
           {"final_eval_loss": 3.0, "loss_std": float("nan")},
           {"final_eval_loss": 4.0, "loss_std": 0.0001}]  # fmt: skip
    # sigma = 0.01, 0.005, (median of 0.01, 0.005, 0.000025 = 0.005), max(0.000025, 0.0025)
    sigma = np.array([0.01, 0.005, 0.005, 0.0025])
    expect = (1 / sigma) / (1 / sigma).mean()
    np.testing.assert_allclose(tuning.noise_weights(pts), expect, rtol=1e-12)
    assert tuning.noise_weights([{"final_eval_loss": 4.0, "loss_std": float("nan")}]) is None


def test_a_weight_near_zero_removes_a_run_from_the_fit():
    n, d = (x.ravel() for x in np.meshgrid([1e6, 1e7, 1e8, 1e9], [1e8, 1e9, 1e10, 1e11]))
    loss = TRUE.predict(n, d)
    bad = loss.copy()
    bad[5] *= 1.2  # one corrupted run
    without = fit_chinchilla(np.delete(n, 5), np.delete(d, 5), np.delete(loss, 5), num_starts=4)
    w = np.ones(n.size)
    w[5] = 1e-9
    weighted = fit_chinchilla(n, d, bad, run_weights=w, num_starts=4)
    plain = fit_chinchilla(n, d, bad, num_starts=4)
    assert weighted.alpha == pytest.approx(without.alpha, rel=1e-4)
    assert weighted.beta == pytest.approx(without.beta, rel=1e-4)
    assert abs(plain.alpha - TRUE.alpha) > 10 * abs(weighted.alpha - TRUE.alpha)
    with pytest.raises(ConfigError, match=r"run_weights\[0\]=0.0 must be positive"):
        fit_chinchilla(n, d, loss, run_weights=np.zeros(n.size))


def test_sweep_plans_every_rate_and_seed():
    cfg = load_config(os.path.join(ROOT, "configs", "scaling_sweep.py"), [])
    cfg = dataclasses.replace(cfg, scaling=dataclasses.replace(cfg.scaling, sweep_budgets=(6e10,)))
    plain = plan_sweep(cfg)
    sc = dataclasses.replace(cfg.scaling, sweep_lrs=(1e-3, 3e-3, 1e-2), sweep_seeds=(0, 1))
    tuned = plan_sweep(dataclasses.replace(cfg, scaling=sc))
    assert len(tuned) == 6 * len(plain)
    assert len({r.run_id for r in tuned}) == len(tuned)
    assert {r.model for r in tuned} == {r.model for r in plain}
    r = next(r for r in tuned if r.learning_rate == 1e-2 and r.seed == 1)
    rc = run_config(cfg, r)
    assert rc.optimizer.peak_learning_rate == 1e-2 and rc.train.seed == rc.data.seed == 1
    assert r.run_id.endswith("_lr0.01_s1")
    with pytest.raises(ConfigError, match=r"sweep_lrs has 0; learning rates must be > 0"):
        ScalingConfig(sweep_lrs=(0,)).validate()
    with pytest.raises(ConfigError, match=r"sweep_seeds=.* must be distinct integers"):
        ScalingConfig(sweep_seeds=(1, 1)).validate()


def test_report_of_a_synthetic_tuned_sweep(tmp_path):
    """4 budgets x 5 sizes x 3 rates x 2 seeds from the known law; the rates cost
    (log10(lr / best))^2 x 3% of loss and seeds add 0.3% noise; the report picks the
    middle rate everywhere and Approach 3 recovers the law."""
    rng = np.random.default_rng(0)
    rows, curves = [], []
    for budget in (1e17, 1e18, 1e19, 1e20):
        n0 = compute_optimal(budget, TRUE).n_params
        for i, f in enumerate(np.logspace(-0.6, 0.6, 5)):
            n = n0 * f
            d = budget / (6 * n)
            for lr in (1e-3, 3e-3, 1e-2):
                for seed in (0, 1):
                    pen = 1 + 0.03 * math.log10(lr / 3e-3) ** 2
                    loss = float(TRUE.predict(n, d) * pen * (1 + 0.003 * rng.standard_normal()))
                    rid = f"C{budget:.3g}_L{i + 1}_d64_lr{lr:.3g}_s{seed}"
                    rows.append({"run_id": rid, "budget": budget, "family": "decoder",
                                 "arch": "gpt2", "vocab_size": 1024, "seq_len": 64,
                                 "batch_size": 16, "num_layers": i + 1, "d_model": 64,
                                 "num_heads": 4, "d_ff": 256, "n_params": int(n),
                                 "n_non_embedding": int(0.8 * n), "num_steps": 100,
                                 "n_tokens": int(d), "flops_6nd": 6 * int(n) * int(d),
                                 "flops_train": 7 * n * d, "final_eval_loss": loss,
                                 "final_train_loss": loss, "wall_time_s": 1.0,
                                 "corpus": "synthetic", "corpus_train_tokens": 10**13,
                                 "learning_rate": lr, "seed": seed})  # fmt: skip
                    curves.append({"run_id": rid, "step": 100, "n_tokens": int(d), "loss": loss})
    append_rows(str(tmp_path / "runs.csv"), RUN_COLUMNS, rows)
    append_rows(str(tmp_path / "curves.csv"), CURVE_COLUMNS, curves)
    paths = write_report(str(tmp_path), bootstrap=0)
    fit = load_fit(paths["fit_total"])
    assert abs(fit.alpha - TRUE.alpha) < 0.05 and abs(fit.beta - TRUE.beta) < 0.05
    text = Path(paths["report"]).read_text()
    assert "best of 3 learning rates (0.001, 0.003, 0.01) by mean eval loss over 2 seed(s)" in text
    assert "weights each point by 1/σ" in text and "edge of the range" not in text
    # Every best rate is 3e-3, whatever the size: the fitted rule is flat there.
    assert "best rates follow lr(N) = 0.003 × (N / 1.4e+08)^-0 " in text
    assert "`--set 'scaling.sweep_lr_rule=(0.003, 1.4e+08, 0)'`" in text
    assert text.count("_lr0.01_s1 |") == 20  # every run listed in the runs table
    # The header counts every run trained (and its time), not only the points kept.
    assert text.count("120 runs (20 points: the best learning rate of each budget and shape)")
    assert "Total training time 2.0 min." in text


def test_a_learning_rate_rule_by_hand():
    """Best rates 1e-2 at N = 1e4 and 1e-3 at N = 1e6 lie on lr = 3.16e-3 (N / 1e5)^-0.5;
    the rule gives each planned size its own rate, one run per shape and seed."""
    pts = [{"n_params": 1e4, "learning_rate": 1e-2}, {"n_params": 1e6, "learning_rate": 1e-3}]
    assert tuning.fit_lr_rule(pts) == (0.00316, 1e5, 0.5)
    assert tuning.rule_rate((0.00316, 1e5, 0.5), 4e5) == pytest.approx(0.00158)
    with pytest.raises(ConfigError, match="two or more model sizes; got 1 size"):
        tuning.fit_lr_rule(pts[:1])
    with pytest.raises(ConfigError, match=r"gives learning rate 0\.0 at N=1,000,000,000"):
        tuning.rule_rate((1e-3, 1.0, 400.0), 1e9)

    cfg = load_config(os.path.join(ROOT, "configs", "scaling_sweep.py"), [])
    rule = (0.006, 1e5, 0.5)
    sc = dataclasses.replace(cfg.scaling, sweep_budgets=(6e10, 6e11), sweep_lr_rule=rule)
    ruled = plan_sweep(dataclasses.replace(cfg, scaling=sc))
    plain = plan_sweep(dataclasses.replace(cfg, scaling=dataclasses.replace(sc, sweep_lr_rule=())))
    assert [r.model for r in ruled] == [r.model for r in plain]
    for r in ruled:
        lr = 0.006 * (r.n_params / 1e5) ** -0.5
        assert r.learning_rate == pytest.approx(lr, rel=1e-12)
        assert run_config(cfg, r).optimizer.peak_learning_rate == r.learning_rate
        assert r.run_id.endswith(f"_lr{lr:.3g}")
    assert len({r.learning_rate for r in ruled}) > 3  # sizes differ, so rates do


@pytest.mark.parametrize(
    "rule, message",
    [
        ((1e-3, 1e5), r"sweep_lr_rule=\(0\.001, 100000\.0\) must be three numbers"),
        ((0.0, 1e5, 0.5), r"gives non-positive learning rates: lr_ref and n_ref must be > 0"),
        ((1e-3, -1.0, 0.5), r"gives non-positive learning rates"),
        ((1e-3, 1e5, float("nan")), r"must be three numbers"),
    ],
)
def test_bad_learning_rate_rules_are_one_line(rule, message):
    with pytest.raises(ConfigError, match=message) as e:
        ScalingConfig(sweep_lr_rule=rule).validate()
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"sweep_lr_rule and scaling\.sweep_lrs are both set"):
        ScalingConfig(sweep_lr_rule=(1e-3, 1e5, 0.5), sweep_lrs=(1e-3,)).validate()


def test_report_of_a_rule_sweep_that_repeats_its_corpus(tmp_path):
    """One rate per size from a rule, one seed, and a corpus smaller than the largest
    runs read: the report names the rule, and prices the repetition by Muennighoff et
    al.'s effective data (their equation 5, written out here) under its own fit."""
    rule = (0.006, 1e5, 0.5)
    rows, curves = [], []
    for budget in (1e17, 1e18, 1e19, 1e20):
        n0 = compute_optimal(budget, TRUE).n_params
        for i, f in enumerate(np.logspace(-0.6, 0.6, 5)):
            n, lr = int(n0 * f), tuning.rule_rate(rule, n0 * f)
            d = int(budget / (6 * n))
            rid = f"C{budget:.3g}_L{i + 1}_d64_lr{lr:.3g}_s0"
            rows.append({"run_id": rid, "budget": budget, "family": "decoder", "arch": "gpt2",
                         "vocab_size": 1024, "seq_len": 64, "batch_size": 16,
                         "num_layers": i + 1, "d_model": 64, "num_heads": 4, "d_ff": 256,
                         "n_params": n, "n_non_embedding": int(0.8 * n), "num_steps": 100,
                         "n_tokens": d, "flops_6nd": 6 * n * d, "flops_train": 7 * n * d,
                         "final_eval_loss": float(TRUE.predict(n, d)),
                         "final_train_loss": 1.0, "wall_time_s": 1.0, "corpus": "small",
                         "corpus_train_tokens": 2 * 10**10, "learning_rate": lr,
                         "seed": 0})  # fmt: skip
            curves.append({"run_id": rid, "step": 100, "n_tokens": d, "loss": 1.0})
    append_rows(str(tmp_path / "runs.csv"), RUN_COLUMNS, rows)
    append_rows(str(tmp_path / "curves.csv"), CURVE_COLUMNS, curves)
    (tmp_path / "sweep_config.json").write_text('{"scaling": {"sweep_lr_rule": [0.006, 1e5, 0.5]}}')
    paths = write_report(str(tmp_path), bootstrap=0)
    text = Path(paths["report"]).read_text()
    assert "comes from the rule `scaling.sweep_lr_rule=(0.006, 100000, 0.5)`" in text
    assert "one rate per size" in text and "1 seed(s) per point" in text
    over = [r for r in rows if r["n_tokens"] > 2 * 10**10]
    worst = max(over, key=lambda r: r["n_tokens"])
    d, u, r_star = worst["n_tokens"], 2 * 10**10, 15.387
    d_eff = u + u * r_star * (1 - math.exp(-(d / u - 1) / r_star))
    fit = load_fit(paths["fit_total"])
    cost = fit.B / d_eff**fit.beta - fit.B / d**fit.beta
    assert (
        f"({d / u:.2f} epochs): {len(over)} of 20 points repeat the corpus" in text
        and f"the most repeated, {worst['run_id']}, counts as {d_eff / d:.1%} of its tokens"
        in text
        and f"prices at {cost:.3f} nats; the fits count D as read" in text
    ), text[:1500]
    assert 1 < len(over) < 20 and cost > 0.001
