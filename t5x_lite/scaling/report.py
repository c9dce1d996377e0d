"""Fits, plots and a markdown report from a sweep's ``runs.csv`` (and ``curves.csv``).

``write_report(out_dir)`` reads the CSVs that :mod:`t5x_lite.scaling.sweep` wrote and
writes, next to them:

* ``fit_total.json``, ``fit_non_embedding.json`` — Approach 3 fits (bootstrap CIs);
* ``isoflop.png``, ``frontier.png``, ``optimal.png``, ``optimal_non_embedding.png``;
* ``report.md`` — the runs, the three approaches for both parameter counts (with
  bootstrap intervals and the optimiser's convergence), the tokens-per-parameter
  ratio, compared with Hoffmann et al. 2022;
* for a data-constrained sweep (``scaling.sweep_epochs``), the report of
  :mod:`t5x_lite.scaling.repeat_report` instead;
* with ``holdout=True`` (``report --holdout-largest``), an extrapolation check:
  Approach 3 fitted without the largest budget (``fit_holdout_largest.json``)
  against that budget's measured losses and best size (``holdout.png``).

Compute is what ``scaling.compute`` of the sweep counts (its ``sweep_config.json``):
``6nd``, ``C = 6 N_total D``, by default, or ``flops``, the model's training FLOPs;
every plot and the report state which. The non-embedding analysis changes only what
``N`` counts. Approach 3's own optimum assumes
``C = 6 N D`` for its ``N``, so its non-embedding exponents follow Kaplan's convention.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from t5x_lite.config import ConfigError
from t5x_lite.scaling import plots, tuning
from t5x_lite.scaling.fits import FITS, ChinchillaFit, compute_optimal, fit_chinchilla, save_fit
from t5x_lite.scaling.isoflop import PowerLaws, approach1, approach2, isoflop_minimum
from t5x_lite.scaling.sweep import CONFIG_FILE as SWEEP_CONFIG_FILE
from t5x_lite.scaling.sweep import CURVES_FILE, RUNS_FILE, read_rows

KINDS = ("total", "non_embedding")


def _try(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, str | None]:
    """``fn(...)`` or ``(None, reason)`` when the data cannot support that fit."""
    try:
        return fn(*args, **kwargs), None
    except ConfigError as e:
        return None, str(e)


def analyse(
    rows: list[dict[str, Any]],
    curves: list[dict[str, Any]],
    bootstrap: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """Approaches 1, 2 and 3 for both parameter counts: ``{kind: {...}}`` plus notes.

    ``rows`` are the sweep's points (:func:`t5x_lite.scaling.tuning.select_points`: one
    per budget and shape, its best learning rate); Approach 3 weights them by their
    seed noise when they have replicates (``weighted`` in the result says so).
    """
    if not rows:
        raise ConfigError("no finished runs to analyse (runs.csv is empty or missing)")
    run_weights = tuning.noise_weights(rows)
    d = np.array([float(r["n_tokens"]) for r in rows])
    loss = np.array([float(r["final_eval_loss"]) for r in rows])
    budgets = np.array([float(r["budget"]) for r in rows])
    n_total = {r["run_id"]: float(r["n_params"]) for r in rows}
    lo, hi = budgets.min(), budgets.max() * 1.05
    out: dict[str, Any] = {"notes": [], "weighted": run_weights is not None}
    for kind in KINDS:
        col = plots.KIND_COLUMN[kind]
        n = np.array([float(r[col]) for r in rows])
        res: dict[str, Any] = {}
        res["approach3"], why3 = _try(
            fit_chinchilla,
            n,
            d,
            loss,
            bootstrap=bootstrap,
            seed=seed,
            param_kind=kind,
            run_weights=run_weights,
        )
        res["approach2"], why2 = _try(
            approach2, n, d, loss, budgets, bootstrap=bootstrap, seed=seed
        )
        # Approach 1: envelope of the training curves over the sweep's compute range.
        kind_n = {r["run_id"]: float(r[col]) for r in rows}
        pts = [c for c in curves if c["run_id"] in kind_n]
        cn = np.array([kind_n[c["run_id"]] for c in pts])
        cd = np.array([float(c["n_tokens"]) for c in pts])
        cc = np.array([6.0 * n_total[c["run_id"]] * float(c["n_tokens"]) for c in pts])
        keep = (cc >= lo) & (cc <= hi)
        if keep.sum() >= 2:
            cl = np.array([float(c["loss"]) for c in pts])
            ids = np.array([c["run_id"] for c in pts])
            res["approach1"], why1 = _try(
                approach1,
                cn[keep],
                cd[keep],
                cl[keep],
                flops=cc[keep],
                num_bins=12,
                runs=ids[keep],
                bootstrap=bootstrap,
                seed=seed,
            )
            res["approach1_source"] = "training-loss curves"
        else:
            res["approach1"], why1 = _try(
                approach1,
                n,
                d,
                loss,
                flops=6.0 * d * np.array([n_total[r["run_id"]] for r in rows]),
                bootstrap=bootstrap,
                seed=seed,
            )
            res["approach1_source"] = "final eval losses"
        for name, why in (("Approach 1", why1), ("Approach 2", why2), ("Approach 3", why3)):
            if why:
                out["notes"].append(f"{name} ({kind}): {why}")
        if res["approach2"] is not None:
            for budget, reason in res["approach2"].skipped:
                out["notes"].append(
                    f"Approach 2 ({kind}): no optimum at C = {budget:.3g}: {reason}"
                )
        out[kind] = res
    return out


# --------------------------------------------------------------------------- holdout


@dataclass(frozen=True)
class Holdout:
    """Approach 3 fitted without the largest budget, against that budget's runs.

    ``fit`` used the runs of ``fit_budgets`` (N total, ``C = 6 N D``); ``runs`` has,
    for each run at ``budget``, its ``run_id``, ``n_params``, ``n_tokens``,
    ``measured`` and ``predicted`` loss. ``predicted_opt`` is the fit's
    compute-optimal point at ``budget`` (``n_params``, ``n_tokens``, ``loss``, and
    95% bootstrap intervals ``n_params_ci`` / ``loss_ci`` when bootstrapped);
    ``measured_opt`` the held-out profile's parabola minimum (None, with
    ``measured_opt_reason``, when it has none inside the sampled sizes).
    ``fitted_max`` is the largest ``(N, D)`` among the fitted runs and
    ``seed_sigma`` their median seed spread of the loss (nats; None with one seed
    per point): what :meth:`reasons` sets the miss against.
    """

    budget: float
    fit_budgets: list[float]
    fit: ChinchillaFit
    runs: list[dict[str, Any]]
    predicted_opt: dict[str, Any]
    measured_opt: dict[str, float] | None
    measured_opt_reason: str
    fitted_max: tuple[float, float] = (float("inf"), float("inf"))
    seed_sigma: float | None = None

    @property
    def errors(self) -> np.ndarray:
        """``predicted - measured`` loss of each held-out run (nats/token)."""
        return np.array([r["predicted"] - r["measured"] for r in self.runs])

    @property
    def best_run(self) -> dict[str, Any]:
        """The held-out run with the lowest measured loss."""
        return min(self.runs, key=lambda r: r["measured"])

    @property
    def predicted_best_run(self) -> dict[str, Any]:
        """The held-out run the fit predicts to have the lowest loss."""
        return min(self.runs, key=lambda r: r["predicted"])

    @property
    def measured_best_n(self) -> float:
        """Measured best size: the parabola minimum, else the best run's N."""
        if self.measured_opt is not None:
            return self.measured_opt["n_params"]
        return self.best_run["n_params"]

    def reasons(self, full: ChinchillaFit | None = None) -> list[str]:
        """Why the held-out losses miss, one sentence each: whether the errors are a
        shift or scatter, whether the held-out runs lie beyond the fitted N and D, what
        repeating the corpus accounts for (Muennighoff et al. 2023's effective D), the
        miss against the seeds' noise, and how far the law's parameters move when the
        held-out budget joins the fit (``full``, the fit on every budget)."""
        from t5x_lite.scaling.repeats import effective_tokens

        err = self.errors
        out = []
        lower = [r for r in self.runs if r["predicted"] > r["measured"]]
        higher = [r for r in self.runs if r["predicted"] <= r["measured"]]
        major, minor = (lower, higher) if len(lower) >= len(higher) else (higher, lower)
        diffs = sorted(abs(r["predicted"] - r["measured"]) for r in major)
        how = "a lower" if major is lower else "a higher"
        text = (
            f"{len(major)} of {len(self.runs)} held-out runs reached {how} loss than predicted, "
            f"by {diffs[0]:.3f} to {diffs[-1]:.3f} nats"
        )
        if major is lower:
            text += ": the law fitted on the smaller budgets underestimates what the next one gains"
        else:
            text += ": the law fitted on the smaller budgets overestimates what the next one gains"
        if minor:
            text += ("; the other: " if len(minor) == 1 else "; the others: ") + ", ".join(
                f"{r['run_id']} (N {r['n_params']:,.0f}, {r['n_tokens'] / r['n_params']:.1f} "
                f"tokens per parameter) {r['predicted'] - r['measured']:+.3f}"
                for r in minor
            )
        out.append(text + ".")
        n_max, d_max = self.fitted_max
        beyond = [r for r in self.runs if r["n_params"] > n_max or r["n_tokens"] > d_max]
        if beyond:
            out.append(
                f"{len(beyond)} of {len(self.runs)} held-out runs lie beyond the fitted runs' "
                f"largest N ({n_max:,.0f}) or D ({d_max:,.0f}): the check extrapolates in N and "
                "D, not only in C."
            )
        repeated = [
            r for r in self.runs if r.get("unique_tokens") and r["n_tokens"] > r["unique_tokens"]
        ]
        if repeated:
            shifts = [
                float(
                    self.fit.predict(
                        r["n_params"], effective_tokens(r["n_tokens"], r["unique_tokens"])
                    )
                )
                - r["predicted"]
                for r in repeated
            ]
            epochs = max(r["n_tokens"] / r["unique_tokens"] for r in repeated)
            big = max(shifts, key=abs)
            verdict = (
                "repetition does not explain the miss"
                if abs(big) < 0.5 * np.abs(err).mean()
                else "repetition accounts for much of the miss"
            )
            out.append(
                f"{len(repeated)} held-out runs repeat the corpus (up to {epochs:.2f} epochs); "
                "counted at Muennighoff et al. 2023's effective D their predictions move by at "
                f"most {big:+.3f} nats: {verdict}."
            )
        if self.seed_sigma:
            out.append(
                f"Seeds at the fitted points differ by {self.seed_sigma:.3f} nats (median "
                f"standard deviation): the mean miss is {np.abs(err).mean() / self.seed_sigma:.0f}"
                "× that noise."
            )
        else:
            out.append("Each point has one seed, so the miss is not set against seed noise.")
        if full is not None:
            out.append(
                f"Fitted on every budget, E, α, β are {full.E:.3f}, {full.alpha:.3f}, "
                f"{full.beta:.3f} (without the largest: {self.fit.E:.3f}, {self.fit.alpha:.3f}, "
                f"{self.fit.beta:.3f})"
                + (
                    ": the smaller budgets do not pin the parameters, and the prediction moves "
                    "with them."
                    if abs(full.E - self.fit.E) > 0.1 or abs(full.alpha - self.fit.alpha) > 0.05
                    else "."
                )
            )
        return out


def holdout_largest(rows: list[dict[str, Any]], bootstrap: int = 200, seed: int = 0) -> Holdout:
    """Fit Approach 3 on every budget but the largest and predict the largest (N total).

    Needs at least two budgets left after holding one out (else ConfigError).
    """
    if not rows:
        raise ConfigError("no finished runs to analyse (runs.csv is empty or missing)")
    budgets = sorted({float(r["budget"]) for r in rows})
    if len(budgets) - 1 < 2:
        raise ConfigError(
            f"--holdout-largest: runs.csv has {len(budgets)} compute budget(s); holding out "
            f"the largest leaves {len(budgets) - 1}, fewer than the 2 a fit needs"
        )
    held = budgets[-1]
    train = [r for r in rows if float(r["budget"]) < held]
    test = [r for r in rows if float(r["budget"]) == held]

    def column(sel: list[dict[str, Any]], key: str) -> np.ndarray:
        return np.array([float(r[key]) for r in sel])

    fit = fit_chinchilla(
        column(train, "n_params"),
        column(train, "n_tokens"),
        column(train, "final_eval_loss"),
        bootstrap=bootstrap,
        seed=seed,
        run_weights=tuning.noise_weights(train),
    )
    fit = dataclasses.replace(fit, name="approach3_total_holdout_largest")
    n, d, loss = column(test, "n_params"), column(test, "n_tokens"), column(test, "final_eval_loss")
    predicted = fit.predict(n, d)
    runs = [
        {
            "run_id": r["run_id"],
            "n_params": float(n[i]),
            "n_tokens": float(d[i]),
            "measured": float(loss[i]),
            "predicted": float(predicted[i]),
            "unique_tokens": float(r.get("corpus_train_tokens") or 0) or None,
        }
        for i, r in enumerate(test)
    ]
    opt = compute_optimal(held, fit)
    predicted_opt: dict[str, Any] = {
        "n_params": opt.n_params,
        "n_tokens": opt.n_tokens,
        "loss": float(fit.predict(opt.n_params, opt.n_tokens)),
    }
    if fit.bootstrap:

        def opt_loss(f: ChinchillaFit) -> float:
            o = compute_optimal(held, f)
            return float(f.predict(o.n_params, o.n_tokens))

        predicted_opt["n_params_ci"] = fit.interval(lambda f: compute_optimal(held, f).n_params)
        predicted_opt["loss_ci"] = fit.interval(opt_loss)
    measured_opt, _, reason = isoflop_minimum(n, d, loss)
    stds = [s for s in (float(r.get("loss_std", "nan")) for r in train) if np.isfinite(s)]
    return Holdout(
        held, budgets[:-1], fit, runs, predicted_opt, measured_opt,
        "" if measured_opt else reason,
        fitted_max=(float(column(train, "n_params").max()), float(column(train, "n_tokens").max())),
        seed_sigma=float(np.median(stds)) if stds else None,
    )  # fmt: skip


# Keys of :func:`figures` (also the keys of their paths in ``write_report``'s result)
# -> PNG file names.
FIGURE_FILES = {
    "isoflop": "isoflop.png",
    "frontier": "frontier.png",
    "optimal.png": "optimal.png",
    "optimal_non_embedding.png": "optimal_non_embedding.png",
}


def _sweep_scaling(out_dir: str) -> dict[str, Any]:
    """The ``scaling`` section of the sweep's ``sweep_config.json`` ({} when absent)."""
    path = os.path.join(out_dir, SWEEP_CONFIG_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f).get("scaling", {})


def sweep_compute(out_dir: str) -> str:
    """The compute definition (``scaling.compute``) the sweep in ``out_dir`` spent its
    budgets by, from its ``sweep_config.json`` (``6nd`` when absent)."""
    return _sweep_scaling(out_dir).get("compute", "6nd")


def sweep_lr_rule(out_dir: str) -> tuple[float, ...] | None:
    """The sweep's ``scaling.sweep_lr_rule`` (None when it searched or shared a rate)."""
    rule = _sweep_scaling(out_dir).get("sweep_lr_rule") or None
    return tuple(rule) if rule else None


def figures(
    rows: list[dict[str, Any]],
    curves: list[dict[str, Any]],
    result: dict[str, Any],
    compute: str = "6nd",
) -> dict[str, Any]:
    """The report's matplotlib Figures (keys of :data:`FIGURE_FILES`) from :func:`analyse`.

    IsoFLOP profiles (both parameter kinds), the loss-compute frontier (total N) and
    N_opt / D_opt against C for each kind. The caller closes them (``plots.save``).
    """
    budgets = sorted({float(r["budget"]) for r in rows})
    out = {
        "isoflop": plots.isoflop_figure(rows, {k: result[k]["approach2"] for k in KINDS}, compute),
        "frontier": plots.frontier_figure(
            rows, curves, result["total"]["approach3"], result["total"]["approach1"], compute
        ),
    }
    for kind, key in (("total", "optimal.png"), ("non_embedding", "optimal_non_embedding.png")):
        out[key] = plots.optimal_figure(
            budgets,
            {"Approach 1": result[kind]["approach1"], "Approach 2": result[kind]["approach2"]},
            {"Approach 3": result[kind]["approach3"]},
            compute,
        )
    return out


HOLDOUT_FIGURE = "holdout.png"
HOLDOUT_FIT = "fit_holdout_largest.json"


def write_report(
    out_dir: str, bootstrap: int = 200, seed: int = 0, holdout: bool = False
) -> dict[str, Any]:
    """Fit, plot and write ``report.md`` in ``out_dir`` (see module doc); returns paths.

    ``holdout=True`` adds the extrapolation check (:func:`holdout_largest`): its fit
    (``fit_holdout_largest.json``), plot (``holdout.png``) and a report section; the
    :class:`Holdout` itself is returned under ``"holdout_result"``.
    """
    from t5x_lite.scaling import repeat_report

    if repeat_report.is_repeat_sweep(out_dir):
        if holdout:
            raise ConfigError(
                f"{out_dir} is a data-constrained sweep (scaling.sweep_epochs): "
                "--holdout-largest checks IsoFLOP sweeps"
            )
        return repeat_report.write_repeat_report(out_dir, bootstrap=bootstrap, seed=seed)
    all_rows = read_rows(os.path.join(out_dir, RUNS_FILE))
    rows = tuning.select_points(all_rows)
    curves = read_rows(os.path.join(out_dir, CURVES_FILE))
    compute = sweep_compute(out_dir)
    held = holdout_largest(rows, bootstrap=bootstrap, seed=seed) if holdout else None
    result = analyse(rows, curves, bootstrap=bootstrap, seed=seed)
    paths: dict[str, Any] = {}
    for kind in KINDS:
        fit = result[kind]["approach3"]
        if fit is not None:
            paths[f"fit_{kind}"] = save_fit(fit, os.path.join(out_dir, f"fit_{kind}.json"))
    for key, fig in figures(rows, curves, result, compute).items():
        paths[key] = plots.save(fig, os.path.join(out_dir, FIGURE_FILES[key]))
    if held is not None:
        paths["holdout_fit"] = save_fit(held.fit, os.path.join(out_dir, HOLDOUT_FIT))
        paths["holdout"] = plots.holdout_plot(
            rows, held, os.path.join(out_dir, HOLDOUT_FIGURE), compute
        )
        paths["holdout_result"] = held
    text = render(rows, result, held, compute, all_rows, lr_rule=sweep_lr_rule(out_dir))
    paths["report"] = os.path.join(out_dir, "report.md")
    with open(paths["report"], "w") as f:
        f.write(text)
    return paths


# --------------------------------------------------------------------------- markdown


def _tuning_note(
    points: list[dict[str, Any]], result: dict[str, Any], lr_rule: tuple[float, ...] | None = None
) -> str:
    """The reading note on learning rates and seeds (what this sweep tuned)."""
    rates = {lr for p in points for lr in p.get("lr_losses", {}) if lr is not None}
    seeds = max(int(p.get("n_seeds", 1)) for p in points)
    if lr_rule:
        a, n, k = lr_rule
        return (
            f"- Each run's peak learning rate comes from the rule `scaling.sweep_lr_rule="
            f"({a:g}, {n:g}, {k:g})`: lr(N) = {a:g} × (N / {n:g})^{-k:g}, one rate per size "
            f"({min(rates):.3g} to {max(rates):.3g} here) and {seeds} seed(s) per point, so "
            "a point carries whatever loss the rule leaves against a search at its size."
        )
    if len(rates) <= 1 and seeds <= 1:
        return (
            "- Every run uses the same learning rate, batch and warmup rule, and shapes come "
            "from a coarse grid (1–6 layers, widths in steps of 16), so each point carries "
            "tuning and shape noise that large-scale sweeps average away; the bootstrap "
            "intervals include only the noise between runs."
        )
    edge = [p["run_id"] for p in points if p.get("lr_at_edge")]
    text = (
        f"- Each point is the best of {len(rates)} learning rates "
        f"({', '.join(f'{r:.3g}' for r in sorted(rates))}) by mean eval loss over "
        f"{seeds} seed(s)"
    )
    if result.get("weighted"):
        text += "; Approach 3 weights each point by 1/σ of its seeds' log-loss spread"
    if edge:
        text += (
            f". At {len(edge)} of {len(points)} points the best rate is at the edge of "
            "the range tried ("
            + ", ".join(edge[:4])
            + (", ..." if len(edge) > 4 else "")
            + "): widen `scaling.sweep_lrs` there"
        )
    if len(rates) > 1 and len({int(p["n_params"]) for p in points}) > 1:
        a, n, k = tuning.fit_lr_rule(points)
        text += (
            f". The best rates follow lr(N) = {a:g} × (N / {n:g})^{-k:g} (least squares on "
            f"log lr); a larger sweep can train at that rule, one rate per size: "
            f"`--set 'scaling.sweep_lr_rule=({a:g}, {n:g}, {k:g})'`"
        )
    return text + "."


def _ci(fit: ChinchillaFit, key: str, fmt: str) -> str:
    value = format(getattr(fit, key), fmt)
    if key in fit.ci:
        lo, hi = fit.ci[key]
        return f"{value} [{format(lo, fmt)}, {format(hi, fmt)}]"
    return value


def _bracket(ci: dict[str, tuple[float, float]], key: str) -> str:
    return f"[{ci[key][0]:.3f}, {ci[key][1]:.3f}]" if key in ci else "–"


def _law_row(name: str, law: PowerLaws | None, c_mid: float) -> str:
    if law is None:
        return f"| {name} | – | – | – | – | – |"
    return (
        f"| {name} | {law.a:.3f} | {law.b:.3f} | {_bracket(law.ci, 'a')} "
        f"| {_bracket(law.ci, 'b')} | {law.tokens_per_param(c_mid):.1f} |"
    )


def _convergence(fit: ChinchillaFit) -> str:
    """One sentence on how the optimiser fared (starts, gradient, resamples)."""
    best = min(fit.starts, key=lambda r: r["loss"]) if fit.starts else None
    if best is None:
        return ""
    ok = sum(r["success"] for r in fit.starts)
    text = (
        f"Optimiser (scipy L-BFGS-B): {ok} of {len(fit.starts)} starts report convergence; "
        f"the best ({best['nit']} iterations) says “{best['message']}”, gradient norm "
        f"{fit.grad_norm:.2g}."
    )
    if fit.bootstrap:
        ok_b = sum(r["success"] for r in fit.bootstrap)
        text += f" {ok_b} of {len(fit.bootstrap)} bootstrap refits converged."
    return text


def _interval_text(ci: tuple[float, float] | None, fmt: str) -> str:
    return f" [{format(ci[0], fmt)}, {format(ci[1], fmt)}]" if ci else ""


def render_holdout(held: Holdout, full: ChinchillaFit | None = None) -> list[str]:
    """The report's extrapolation section (markdown lines); ``full``, Approach 3 on
    every budget, lets it say how far the parameters move (:meth:`Holdout.reasons`)."""
    p, m = held.predicted_opt, held.measured_opt
    err = held.errors
    best, pbest = held.best_run, held.predicted_best_run
    lines = [
        "## Extrapolation check: the largest budget held out",
        "",
        f"Approach 3 (N total) fitted on the {held.fit.n_runs} runs of the "
        f"{len(held.fit_budgets)} budgets {held.fit_budgets[0]:.3g}–{held.fit_budgets[-1]:.3g}, "
        f"predicting the {len(held.runs)} runs at C = {held.budget:.3g} "
        f"(α = {held.fit.alpha:.3f}, β = {held.fit.beta:.3f}, E = {held.fit.E:.3f}; "
        "intervals are 95% bootstrap):",
        "",
        "![Held-out budget: predicted against measured](holdout.png)",
        "",
        "| at the held-out budget | predicted | measured | predicted − measured |",
        "|---|---|---|---|",
        f"| loss of each run (mean / largest absolute error) | | | {np.abs(err).mean():.3f} / "
        f"{np.abs(err).max():.3f} nats |",
        f"| lowest loss (fit's optimum; best run) | {p['loss']:.4f}"
        f"{_interval_text(p.get('loss_ci'), '.3f')} | {best['measured']:.4f} "
        f"| {p['loss'] - best['measured']:+.4f} |",
    ]
    if m is not None:
        lines.append(
            f"| best model size N (fit's N_opt; profile's parabola minimum) | "
            f"{p['n_params']:,.0f}{_interval_text(p.get('n_params_ci'), ',.0f')} "
            f"| {m['n_params']:,.0f} | ×{p['n_params'] / m['n_params']:.2f} |"
        )
    else:
        lines.append(
            f"| best model size N (fit's N_opt; best run — the profile has no parabola "
            f"minimum: {held.measured_opt_reason}) | {p['n_params']:,.0f}"
            f"{_interval_text(p.get('n_params_ci'), ',.0f')} | {best['n_params']:,.0f} "
            f"| ×{p['n_params'] / best['n_params']:.2f} |"
        )
    lines += [
        f"| best of the runs | {pbest['run_id']} | {best['run_id']} | "
        + ("same run |" if pbest is best else "**a different run** |"),
        "",
    ]
    checks = (
        ("lowest loss", p.get("loss_ci"), best["measured"]),
        ("best size", p.get("n_params_ci"), held.measured_best_n),
    )
    for what, ci, value in checks:
        if not ci:
            continue
        if ci[0] <= value <= ci[1]:
            verdict = "inside the fit's 95% bootstrap interval: the miss is within what the "
            verdict += "smaller budgets pin down"
        else:
            verdict = "**outside** the fit's 95% bootstrap interval: the law does not "
            verdict += "extrapolate to it"
        lines.append(f"- The measured {what} lies {verdict}.")
    lines += ["", "Why the losses miss:", ""] + [f"- {r}" for r in held.reasons(full)]
    lines += [
        "",
        "| run | N | D | measured loss | predicted loss | predicted − measured |",
        "|---|---|---|---|---|---|",
    ]
    for r in held.runs:
        diff = r["predicted"] - r["measured"]
        lines.append(
            f"| {r['run_id']} | {r['n_params']:,.0f} | {r['n_tokens']:,.0f} "
            f"| {r['measured']:.4f} | {r['predicted']:.4f} | {diff:+.4f} |"
        )
    return [*lines, ""]


def _repeats_note(rows: list[dict[str, Any]], result: dict[str, Any]) -> str:
    """What repeating the corpus costs the points that do (Muennighoff et al. 2023)."""
    from t5x_lite.scaling.repeats import MUENNIGHOFF2023_R_STAR, effective_tokens

    over = [r for r in rows if int(r["n_tokens"]) > int(r["corpus_train_tokens"])]
    worst = max(over, key=lambda r: int(r["n_tokens"]) / int(r["corpus_train_tokens"]))
    d, u = int(worst["n_tokens"]), int(worst["corpus_train_tokens"])
    d_eff = float(effective_tokens(d, u))
    text = (
        f" ({d / u:.2f} epochs): {len(over)} of {len(rows)} points repeat the corpus. By "
        f"Muennighoff et al. 2023's effective data (R_D* = {MUENNIGHOFF2023_R_STAR:.1f}) the "
        f"most repeated, {worst['run_id']}, counts as {d_eff / d:.1%} of its tokens"
    )
    fit = result["total"]["approach3"]
    if fit is not None:
        cost = fit.B / d_eff**fit.beta - fit.B / d**fit.beta
        text += f", which the total-N law below prices at {cost:.3f} nats"
    return text + "; the fits count D as read."


def render(
    rows: list[dict[str, Any]],
    result: dict[str, Any],
    holdout: Holdout | None = None,
    compute: str = "6nd",
    all_rows: list[dict[str, Any]] | None = None,
    lr_rule: tuple[float, ...] | None = None,
) -> str:
    """The markdown text of ``report.md`` (with the extrapolation section if ``holdout``).

    ``rows`` are the sweep's points (best learning rate per budget and shape),
    ``all_rows`` every run (the runs table; ``rows`` when None)."""
    all_rows = rows if all_rows is None else all_rows
    budgets = sorted({float(r["budget"]) for r in rows})
    c_mid = math.sqrt(budgets[0] * budgets[-1])
    first = rows[0]
    tokens = max(int(r["corpus_train_tokens"]) for r in rows)
    biggest = max(int(r["n_tokens"]) for r in rows)
    wall = sum(float(r["wall_time_s"]) for r in all_rows)  # every run trained, tuned or not
    count = f"{len(all_rows)} runs"
    if len(all_rows) != len(rows):
        count += f" ({len(rows)} points: the best learning rate of each budget and shape)"
    lines = [
        "# IsoFLOP sweep",
        "",
        f"{count} of `{first['arch']}` ({first['family']}), vocabulary "
        f"{first['vocab_size']}, sequence length {first['seq_len']}, batch "
        f"{first['batch_size']}, over {len(budgets)} budgets from {budgets[0]:.3g} to "
        f"{budgets[-1]:.3g} FLOPs ({math.log10(budgets[-1] / budgets[0]):.2f} orders of "
        f"magnitude; {plots.COMPUTE_LABELS[compute]}). Corpus "
        f"`{first['corpus']}`: {tokens:,d} training tokens; the largest run reads "
        f"{biggest:,d}"
        + (", so no run repeats data." if biggest <= tokens else _repeats_note(rows, result))
        + f" Total training time {wall / 60:.1f} min.",
        "",
        "![IsoFLOP profiles](isoflop.png)",
        "",
        "![Loss against compute](frontier.png)",
        "",
        "![N_opt and D_opt against compute](optimal.png)",
        "",
        "![The same with non-embedding N](optimal_non_embedding.png)",
        "",
    ]
    for kind in ("total", "non_embedding"):
        res = result[kind]
        fit = res["approach3"]
        label = "total" if kind == "total" else "non-embedding"
        lines += [f"## Fits with {label} parameters", ""]
        if fit is not None:
            lines += [
                "Approach 3, `L(N, D) = E + A/N^α + B/D^β` (95% bootstrap intervals):",
                "",
                "| E | A | B | α | β |",
                "|---|---|---|---|---|",
                f"| {_ci(fit, 'E', '.3f')} | {_ci(fit, 'A', '.4g')} | {_ci(fit, 'B', '.4g')} "
                f"| {_ci(fit, 'alpha', '.3f')} | {_ci(fit, 'beta', '.3f')} |",
                "",
                _convergence(fit),
                "",
            ]
        lines += [
            f"Exponents of N_opt ∝ C^a and D_opt ∝ C^b, and D/N at C = {c_mid:.3g}:",
            "",
            "| method | a | b | a, 95% interval | b, 95% interval | tokens per parameter |",
            "|---|---|---|---|---|---|",
            _law_row(f"Approach 1 ({res['approach1_source']})", res["approach1"], c_mid),
            _law_row("Approach 2 (IsoFLOP parabolas)", res["approach2"], c_mid),
        ]
        if fit is not None:
            opt = compute_optimal(c_mid, fit)
            lines.append(
                f"| Approach 3 (parametric) | {fit.a:.3f} | {fit.b:.3f} | {_bracket(fit.ci, 'a')} "
                f"| {_bracket(fit.ci, 'b')} | {opt.tokens_per_param:.1f} |"
            )
        h = FITS["hoffmann2022"]
        lines += [
            f"| Hoffmann et al. 2022 (Approach 3 fit, at this C) | {h.a:.3f} | {h.b:.3f} | – | – "
            f"| {compute_optimal(c_mid, h).tokens_per_param:.1f} |",
            "| Hoffmann et al. 2022 (Approaches 1–2, headline) | ≈0.5 | ≈0.5 | – | – | ≈20 |",
            "",
        ]
        for name in ("approach1", "approach2"):
            law = res[name]
            if law is not None and law.n_resamples_used < law.n_resamples:
                lines += [
                    f"{name.replace('approach', 'Approach ')}: {law.n_resamples_used} of "
                    f"{law.n_resamples} bootstrap resamples gave a fit (the others had fewer "
                    "than two budgets with an optimum); its intervals are over those.",
                    "",
                ]
        if res["approach2"] is not None and res["approach2"].points:
            lines += [
                "IsoFLOP minima (Approach 2):",
                "",
                "| C | N_opt | D_opt | D/N | loss |",
                "|---|---|---|---|---|",
            ]
            for p in res["approach2"].points:
                lines.append(
                    f"| {p['flops']:.3g} | {p['n_params']:,.0f} | {p['n_tokens']:,.0f} "
                    f"| {p['n_tokens'] / p['n_params']:.1f} | {p['loss']:.4f} |"
                )
            lines.append("")
    if holdout is not None:
        lines += render_holdout(holdout, result["total"]["approach3"])
    lines += [
        "## Reading these numbers",
        "",
        f"- Compute is {plots.COMPUTE_LABELS[compute]} (`scaling.compute`), the quantity the "
        "planner and the sweep spend; the non-embedding fits change only what N counts"
        + (
            ""
            if compute == "6nd"
            else " (Approach 3's closed-form optimum still assumes C = 6·N·D)"
        )
        + ". At these sizes the token "
        "and position tables are a large share of N, so the two sets of exponents differ "
        "(Kaplan et al. 2020 counted non-embedding parameters, Hoffmann et al. 2022 all).",
        _tuning_note(rows, result, lr_rule),
        "- Hoffmann et al.'s a ≈ b ≈ 0.5 and ~20 tokens per parameter come from 70M–16B "
        "parameter models; their own parametric fit (Approach 3) predicts fewer tokens per "
        "parameter at small budgets (the row above), and small models are known to favour "
        "different ratios.",
        "",
    ]
    if result["notes"]:
        lines += ["## Notes", ""] + [f"- {n}" for n in result["notes"]] + [""]
    lines += [
        "## Runs",
        "",
        "| run | layers | d_model | N total | N non-emb | steps | D | D/N | eval loss | time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(all_rows, key=lambda r: (float(r["budget"]), int(r["n_params"]))):
        lines.append(
            f"| {r['run_id']} | {r['num_layers']} | {r['d_model']} | {int(r['n_params']):,d} "
            f"| {int(r['n_non_embedding']):,d} | {r['num_steps']} | {int(r['n_tokens']):,d} "
            f"| {int(r['n_tokens']) / int(r['n_params']):.1f} | {float(r['final_eval_loss']):.4f} "
            f"| {float(r['wall_time_s']):.0f} |"
        )
    lines.append("")
    flag = " --holdout-largest" if holdout is not None else ""
    lines.append(
        f"Regenerate with `python -m t5x_lite.scaling report --out <this directory>{flag}`."
    )
    return "\n".join(lines) + "\n"
