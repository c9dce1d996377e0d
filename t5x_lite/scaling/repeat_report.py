"""The report of a data-constrained sweep (``scaling.sweep_epochs``).

``write_repeat_report(out_dir)`` reads the sweep's ``runs.csv`` (each run's
``n_params``, ``n_tokens``, ``unique_tokens``, ``final_eval_loss``), takes the sweep's
``scaling.fit`` (the law of unique-data runs of the same setup, e.g. the IsoFLOP
sweep's ``fit_total.json``) and writes, next to the CSV:

* ``fit_repeats.json`` — that fit with ``R_D*`` fitted on these runs
  (:func:`t5x_lite.scaling.repeats.fit_r_star`, bootstrap interval);
* ``repeats.png`` — measured loss against epochs for each budget, with the law's
  prediction as unique data, with Muennighoff et al.'s ``R_D*`` and with the fitted one;
* ``report.md`` — the runs, the fitted ``R_D*``, prediction errors with and without
  the decay, and the data-constrained planner's choice at each budget.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from t5x_lite.config import ConfigError
from t5x_lite.scaling import plots, repeats
from t5x_lite.scaling.fits import ChinchillaFit, compute_optimal, load_fit, save_fit
from t5x_lite.scaling.sweep import CONFIG_FILE, RUNS_FILE, read_rows

FIT_FILE = "fit_repeats.json"
FIGURE_FILE = "repeats.png"


def sweep_settings(out_dir: str) -> dict[str, Any]:
    """The sweep's recorded config (``sweep_config.json``), ``{}`` when absent."""
    path = os.path.join(out_dir, CONFIG_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def is_repeat_sweep(out_dir: str) -> bool:
    return bool(sweep_settings(out_dir).get("scaling", {}).get("sweep_epochs"))


def repeats_figure(rows: list[dict[str, Any]], fit: ChinchillaFit) -> Any:
    """Loss against epochs per budget: runs as dots, the law's three predictions as lines."""
    plt = plots._pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    budgets = sorted({float(r["budget"]) for r in rows})
    colors = plots._colors(len(budgets))
    r_fit = fit.r_star
    muenn = repeats.MUENNIGHOFF2023_R_STAR
    for color, c in zip(colors, budgets, strict=True):
        rs = sorted((r for r in rows if float(r["budget"]) == c), key=lambda r: r["n_tokens"])
        u = float(rs[0]["unique_tokens"])
        e = np.array([r["n_tokens"] / u for r in rs])
        ax.plot(e, [r["final_eval_loss"] for r in rs], "o", color=color, label=f"C = {c:.2g}")
        grid = np.geomspace(e.min() / 1.2, e.max() * 1.2, 100)
        d = grid * u
        n = c / (6.0 * d)
        ax.plot(grid, fit.predict(n, d), ":", color=color, alpha=0.6)
        ax.plot(
            grid,
            fit.predict(n, repeats.effective_tokens(d, u, muenn)),
            "--",
            color=color,
            alpha=0.6,
        )
        ax.plot(grid, fit.predict(n, repeats.effective_tokens(d, u, r_fit)), "-", color=color)
    ax.set_xscale("log", base=2)
    ax.set_xlabel(f"epochs over {float(rows[0]['unique_tokens']):,.0f} unique tokens")
    ax.set_ylabel("eval loss (nats/token)")
    ax.set_title(
        f"Data-constrained IsoFLOP runs: dotted as unique data, dashed R_D* = {muenn:.1f} "
        f"(Muennighoff), solid fitted R_D* = {r_fit:.3g}",
        fontsize=8,
    )
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return fig


def write_repeat_report(out_dir: str, bootstrap: int = 200, seed: int = 0) -> dict[str, Any]:
    """Fit ``R_D*``, plot and write ``report.md`` for the sweep in ``out_dir``."""
    rows = read_rows(os.path.join(out_dir, RUNS_FILE))
    if not rows:
        raise ConfigError(f"no finished runs in {os.path.join(out_dir, RUNS_FILE)}")
    settings = sweep_settings(out_dir)
    base = load_fit(settings.get("scaling", {}).get("fit", "hoffmann2022"))
    fit = repeats.fit_r_star(
        [r["n_params"] for r in rows],
        [r["n_tokens"] for r in rows],
        [r.get("unique_tokens") for r in rows],
        [r["final_eval_loss"] for r in rows],
        base,
        bootstrap=bootstrap,
        seed=seed,
    )
    paths = {"fit": save_fit(fit, os.path.join(out_dir, FIT_FILE))}
    paths["figure"] = plots.save(repeats_figure(rows, fit), os.path.join(out_dir, FIGURE_FILE))
    paths["report"] = os.path.join(out_dir, "report.md")
    with open(paths["report"], "w") as f:
        f.write(render(rows, fit, base))
    return paths


def render(rows: list[dict[str, Any]], fit: ChinchillaFit, base: ChinchillaFit) -> str:
    u = float(rows[0]["unique_tokens"])
    budgets = sorted({float(r["budget"]) for r in rows})
    rec = fit.repeat_fit
    ci = fit.ci.get("r_star")
    ci_text = f" [{ci[0]:.3g}, {ci[1]:.3g}] (95% bootstrap over runs)" if ci else ""
    table = repeats.residual_table(fit, rows)
    muenn = ChinchillaFit(
        *(getattr(base, k) for k in ("E", "A", "B", "alpha", "beta")),
        r_star=repeats.MUENNIGHOFF2023_R_STAR,
    )
    lines = [
        "# Data-constrained sweep",
        "",
        f"{len(rows)} runs over {len(budgets)} budgets, each reading "
        f"{min(t['epochs'] for t in table):.2g} to {max(t['epochs'] for t in table):.3g} "
        f"epochs of the same {u:,.0f} unique training tokens (`data.unique_tokens`), "
        f"sizes N = C / 6D. The law of unique data is `{base.name or 'the sweep fit'}` "
        f"(E={base.E:.3g}, A={base.A:.4g}, B={base.B:.4g}, α={base.alpha:.3g}, "
        f"β={base.beta:.3g}); only Muennighoff et al.'s decay constant R_D* is fitted here.",
        "",
        f"![loss against epochs]({FIGURE_FILE})",
        "",
        f"**Fitted R_D* = {fit.r_star:.3g}**{ci_text}; Muennighoff et al. 2023 fit "
        f"{repeats.MUENNIGHOFF2023_R_STAR:.1f} on 8.7B-parameter-scale runs. Optimiser: "
        f"{'converged' if rec.get('success') else 'did not converge'} ({rec.get('message')}).",
        "",
        "| run | C | N | epochs | measured | law as unique data | R_D* = 15.4 | fitted R_D* |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in table:
        m15 = float(repeats.predict(muenn, t["n_params"], t["epochs"] * u, u))
        lines.append(
            f"| {t['run_id']} | {t['budget']:.3g} | {t['n_params']:,.0f} | {t['epochs']:.2f} | "
            f"{t['measured']:.4f} | {t['as_unique']:.4f} | {m15:.4f} | {t['repeated']:.4f} |"
        )
    err_u = np.mean([abs(t["as_unique"] - t["measured"]) for t in table])
    err_r = np.mean([abs(t["repeated"] - t["measured"]) for t in table])
    lines += [
        "",
        f"Mean |predicted − measured|: {err_u:.3f} nats as unique data, {err_r:.3f} nats "
        "with the fitted decay.",
        "",
        "## The planner with this many unique tokens",
        "",
        "`scaling.flops_budget` with `data.unique_tokens` plans by the data-constrained law "
        "(continuous optimum shown; the planner picks the nearest grid shape):",
        "",
        "| C | N_opt, unique data | N_opt, data-constrained | epochs | predicted loss |",
        "|---|---|---|---|---|",
    ]
    for c in [*budgets, budgets[-1] * 10, budgets[-1] * 100]:
        free = compute_optimal(c, base)
        opt = repeats.constrained_optimum(c, u, fit)
        lines.append(
            f"| {c:.3g} | {free.n_params:,.0f} | {opt['n_params']:,.0f} | "
            f"{opt['epochs']:.2f} | {opt['loss']:.4f} |"
        )
    lines.append("")
    return "\n".join(lines)
