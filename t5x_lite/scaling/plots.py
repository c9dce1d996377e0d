"""PNG plots of a sweep: IsoFLOP profiles, the loss-compute frontier, N_opt and D_opt,
and the extrapolation check (a law fitted without the largest budget, predicting it).

Every plot has log axes, labelled axes, a legend, and its fitted lines drawn over the
measured points. Inputs are the rows of ``runs.csv`` / ``curves.csv`` (see
:mod:`t5x_lite.scaling.sweep`) and the fits of :mod:`t5x_lite.scaling.fits`. Each
``*_figure`` function returns the matplotlib ``Figure`` (for inspection; close it
with ``plt.close``); its ``*_plot`` twin writes that figure to a PNG and closes it::

    isoflop_plot(rows, {"total": a2_total, "non_embedding": a2_nonemb}, "isoflop.png")
    fig = isoflop_figure(rows, {"total": a2_total})  # fig.axes[0].get_xscale() == "log"

matplotlib is imported inside the functions (Agg backend, no display needed).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from t5x_lite.scaling.fits import FITS, ChinchillaFit, compute_optimal
from t5x_lite.scaling.isoflop import PowerLaws
from t5x_lite.scaling.planner import COMPUTE_LABELS

KIND_COLUMN = {"total": "n_params", "non_embedding": "n_non_embedding"}
KIND_LABEL = {"total": "parameters N (total)", "non_embedding": "non-embedding parameters N"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _budgets(rows: Sequence[dict[str, Any]]) -> list[float]:
    return sorted({float(r["budget"]) for r in rows})


def _colors(n: int) -> list[Any]:
    plt = _pyplot()
    return [plt.get_cmap("viridis")(x) for x in np.linspace(0.0, 0.85, max(n, 1))]


def _plain_log_y(ax: Any) -> None:
    """Log y axis labelled with plain numbers (``3.5``, not ``3.5 x 10^0``)."""
    from matplotlib.ticker import FormatStrFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%.3g"))
    ax.tick_params(axis="y", which="minor", labelsize=7)


def _count_axis(axis: Any) -> None:
    """Log axis of counts labelled 20k, 50k, 100k, 2M (ticks at 1, 2, 5 per decade)."""
    from matplotlib.ticker import EngFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(EngFormatter(sep=""))
    axis.set_minor_formatter(NullFormatter())


def save(fig: Any, path: str) -> str:
    """Write ``fig`` to the PNG ``path`` (120 dpi) and close it; returns ``path``."""
    fig.savefig(path, dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def isoflop_plot(
    rows: Sequence[dict[str, Any]],
    approach2: dict[str, PowerLaws | None],
    path: str,
    compute: str = "6nd",
) -> str:
    """Write :func:`isoflop_figure` to the PNG ``path``; returns ``path``."""
    return save(isoflop_figure(rows, approach2, compute), path)


def isoflop_figure(
    rows: Sequence[dict[str, Any]], approach2: dict[str, PowerLaws | None], compute: str = "6nd"
) -> Any:
    """Final eval loss against N per budget, one panel per parameter kind in ``approach2``.

    Points are runs; lines the Approach 2 parabolas (``loss = c2 x^2 + c1 x + c0``,
    ``x = ln N``) and stars their minima (only those inside the sampled sizes).
    """
    plt = _pyplot()
    kinds = list(approach2)
    fig, axes = plt.subplots(1, len(kinds), figsize=(6.0 * len(kinds), 4.6), squeeze=False)
    budgets = _budgets(rows)
    colors = _colors(len(budgets))
    for ax, kind in zip(axes[0], kinds):
        col = KIND_COLUMN[kind]
        law = approach2[kind]
        parabolas = {p[0]: p[1:] for p in (law.parabolas if law else [])}
        optima = {p["flops"] for p in (law.points if law else [])}
        for budget, color in zip(budgets, colors):
            sel = [r for r in rows if float(r["budget"]) == budget]
            n = np.array([float(r[col]) for r in sel])
            loss = np.array([float(r["final_eval_loss"]) for r in sel])
            ax.scatter(n, loss, color=color, s=28, zorder=3, label=f"C = {budget:.2g} FLOPs")
            if budget in parabolas:
                c2, c1, c0 = parabolas[budget]
                x = np.linspace(np.log(n.min()) - 0.2, np.log(n.max()) + 0.2, 100)
                ax.plot(np.exp(x), c2 * x * x + c1 * x + c0, color=color, lw=1.5, zorder=2)
                if budget in optima:
                    xm = -c1 / (2 * c2)
                    ax.scatter(
                        [np.exp(xm)],
                        [c0 - c1 * c1 / (4 * c2)],
                        marker="*",
                        s=140,
                        color=color,
                        edgecolor="black",
                        zorder=4,
                    )
        ax.set_xscale("log")
        _count_axis(ax.xaxis)
        _plain_log_y(ax)
        ax.set_xlabel(KIND_LABEL[kind])
        ax.set_ylabel("final eval loss (nats/token)")
        ax.set_title(f"IsoFLOP profiles, {kind.replace('_', '-')} N ({COMPUTE_LABELS[compute]})")
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    handles.append(plt.Line2D([], [], color="gray", lw=1.5))
    labels.append("parabola fit (Approach 2)")
    handles.append(plt.Line2D([], [], marker="*", color="gray", ls="", markersize=11))
    labels.append("parabola minimum")
    fig.legend(
        handles,
        labels,
        fontsize=9,
        loc="upper center",
        ncol=min(len(labels), 6),
        bbox_to_anchor=(0.5, 0.0),
    )
    return fig


def frontier_plot(
    rows: Sequence[dict[str, Any]],
    curves: Sequence[dict[str, Any]],
    fit: ChinchillaFit | None,
    approach1: PowerLaws | None,
    path: str,
    compute: str = "6nd",
) -> str:
    """Write :func:`frontier_figure` to the PNG ``path``; returns ``path``."""
    return save(frontier_figure(rows, curves, fit, approach1, compute), path)


def frontier_figure(
    rows: Sequence[dict[str, Any]],
    curves: Sequence[dict[str, Any]],
    fit: ChinchillaFit | None,
    approach1: PowerLaws | None,
    compute: str = "6nd",
) -> Any:
    """Loss against training compute ``C = 6 N D`` (N total): curves, runs, envelope, fit.

    Thin lines are training-loss curves coloured by model size; dots the final eval
    losses; diamonds Approach 1's lowest-loss envelope; the black line the Approach 3
    frontier ``L(N_opt(C), D_opt(C))``.
    """
    plt = _pyplot()
    from matplotlib.colors import LogNorm

    fig, ax = plt.subplots(figsize=(7.5, 5.0))
    n_all = np.array([float(r["n_params"]) for r in rows])
    norm = LogNorm(vmin=n_all.min(), vmax=max(n_all.max(), n_all.min() * 1.01))
    cmap = plt.get_cmap("viridis")
    by_run = {r["run_id"]: float(r["n_params"]) for r in rows}
    for run_id, n in by_run.items():
        pts = [c for c in curves if c["run_id"] == run_id]
        if pts:
            d = np.array([float(c["n_tokens"]) for c in pts])
            ax.plot(
                6 * n * d, [float(c["loss"]) for c in pts], color=cmap(norm(n)), lw=0.8, alpha=0.6
            )
    if curves:
        ax.plot([], [], color="gray", lw=0.8, label="training loss along a run (colour: N)")
    c_runs = np.array([float(r["flops_6nd"]) for r in rows])
    loss = np.array([float(r["final_eval_loss"]) for r in rows])
    ax.scatter(
        c_runs,
        loss,
        c=n_all,
        cmap=cmap,
        norm=norm,
        s=30,
        edgecolor="black",
        lw=0.5,
        zorder=3,
        label="final eval loss of a run (held-out documents)",
    )
    if approach1 is not None:
        ax.scatter(
            [p["flops"] for p in approach1.points],
            [p["loss"] for p in approach1.points],
            marker="D",
            s=40,
            facecolor="none",
            edgecolor="red",
            zorder=4,
            label="lowest training loss at each C (Approach 1 envelope)",
        )
    if fit is not None:
        c = np.logspace(np.log10(c_runs.min()) - 0.3, np.log10(c_runs.max()) + 0.5, 100)
        n_opt, d_opt = compute_optimal(c, fit)
        ax.plot(
            c,
            fit.predict(n_opt, d_opt),
            color="black",
            lw=1.8,
            zorder=5,
            label=f"Approach 3 frontier, eval loss (E={fit.E:.2f}, α={fit.alpha:.2f}, "
            f"β={fit.beta:.2f})",
        )
    ax.set_xscale("log")
    _plain_log_y(ax)
    ax.set_xlabel(f"training compute, {COMPUTE_LABELS[compute]} (FLOPs)")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("Loss against compute")
    ax.grid(True, which="both", alpha=0.3)
    sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(sm, ax=ax, label="parameters N (total)")
    lo = np.percentile(loss, 0) * 0.9
    ax.set_ylim(lo, max(loss.max(), lo) * 1.6)
    ax.legend(fontsize=8)
    return fig


def optimal_plot(
    budgets: Sequence[float],
    laws: dict[str, PowerLaws | None],
    fits: dict[str, ChinchillaFit | None],
    path: str,
    compute: str = "6nd",
) -> str:
    """Write :func:`optimal_figure` to the PNG ``path``; returns ``path``."""
    return save(optimal_figure(budgets, laws, fits, compute), path)


def optimal_figure(
    budgets: Sequence[float],
    laws: dict[str, PowerLaws | None],
    fits: dict[str, ChinchillaFit | None],
    compute: str = "6nd",
) -> Any:
    """``N_opt`` and ``D_opt`` against ``C``: points and power laws of each approach.

    ``laws`` maps a label (e.g. "Approach 1") to its power laws (points drawn);
    ``fits`` maps a label to an Approach 3 fit (closed-form lines). Hoffmann et al.'s
    published fit is drawn dotted for reference.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12.0, 4.6))
    c = np.logspace(np.log10(min(budgets)) - 0.3, np.log10(max(budgets)) + 0.3, 50)
    markers = iter(["o", "s", "^", "v"])
    colors = iter(["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown"])
    for label, law in laws.items():
        if law is None:
            continue
        color, marker = next(colors), next(markers)
        pc = np.array([p["flops"] for p in law.points])
        for ax, key, fn, exp in (
            (axes[0], "n_params", law.n_opt, law.a),
            (axes[1], "n_tokens", law.d_opt, law.b),
        ):
            what = "envelope points" if label == "Approach 1" else "optima"
            ax.scatter(
                pc,
                [p[key] for p in law.points],
                color=color,
                marker=marker,
                s=36,
                zorder=3,
                label=f"{label} {what}",
            )
            ax.plot(c, fn(c), color=color, lw=1.5, label=f"{label}: ∝ C^{exp:.2f}")
    for label, fit in fits.items():
        if fit is None:
            continue
        color = next(colors)
        n_opt, d_opt = compute_optimal(c, fit)
        axes[0].plot(c, n_opt, color=color, lw=1.5, ls="--", label=f"{label}: ∝ C^{fit.a:.2f}")
        axes[1].plot(c, d_opt, color=color, lw=1.5, ls="--", label=f"{label}: ∝ C^{fit.b:.2f}")
    ref = FITS["hoffmann2022"]
    n_ref, d_ref = compute_optimal(c, ref)
    axes[0].plot(c, n_ref, color="gray", ls=":", lw=1.5, label=f"Hoffmann 2022: ∝ C^{ref.a:.2f}")
    axes[1].plot(c, d_ref, color="gray", ls=":", lw=1.5, label=f"Hoffmann 2022: ∝ C^{ref.b:.2f}")
    for ax, what in (
        (axes[0], "compute-optimal parameters N_opt"),
        (axes[1], "compute-optimal tokens D_opt"),
    ):
        ax.set_xscale("log")
        ax.set_yscale("log")
        _count_axis(ax.yaxis)
        ax.set_xlabel(f"training compute, {COMPUTE_LABELS[compute]} (FLOPs)")
        ax.set_ylabel(what)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_title("N_opt against compute (points: measured optima)")
    axes[1].set_title("D_opt against compute")
    return fig


def holdout_plot(
    rows: Sequence[dict[str, Any]], holdout: Any, path: str, compute: str = "6nd"
) -> str:
    """Write :func:`holdout_figure` to the PNG ``path``; returns ``path``."""
    return save(holdout_figure(rows, holdout, compute), path)


def holdout_figure(rows: Sequence[dict[str, Any]], holdout: Any, compute: str = "6nd") -> Any:
    """The extrapolation check (a :class:`~t5x_lite.scaling.report.Holdout`), two panels.

    Left: final eval loss against N (total) per budget, dots the runs the law was
    fitted on and red squares the held-out budget's; lines the fitted law along each
    IsoFLOP profile ``L(N, C / 6N)`` (dashed red: the held-out budget), a red star at
    its predicted optimum and a black cross at the measured one (the profile's
    parabola minimum, when it has one). Right: predicted against measured loss for
    every run, with the line ``predicted = measured``.
    """
    plt = _pyplot()
    fit = holdout.fit
    fig, (left, right) = plt.subplots(1, 2, figsize=(12.0, 4.6))
    budgets = _budgets(rows)
    colors = _colors(len(budgets))
    measured, predicted, held_mask = [], [], []
    for budget, color in zip(budgets, colors):
        sel = [r for r in rows if float(r["budget"]) == budget]
        n = np.array([float(r["n_params"]) for r in sel])
        d = np.array([float(r["n_tokens"]) for r in sel])
        loss = np.array([float(r["final_eval_loss"]) for r in sel])
        held = budget == holdout.budget
        lo_n, hi_n = n.min(), n.max()
        if held:  # the prediction spans its own optimum too
            lo_n = min(lo_n, holdout.predicted_opt["n_params"])
            hi_n = max(hi_n, holdout.predicted_opt["n_params"])
        x = np.logspace(np.log10(lo_n) - 0.1, np.log10(hi_n) + 0.1, 100)
        curve = fit.predict(x, budget / (6 * x))
        if held:
            left.scatter(n, loss, marker="s", s=40, facecolor="none", edgecolor="red", lw=1.5,
                         zorder=4, label=f"held-out runs, C = {budget:.2g}")  # fmt: skip
            left.plot(x, curve, color="red", ls="--", lw=1.8, zorder=3,
                      label="prediction for the held-out budget")  # fmt: skip
        else:
            left.scatter(
                n, loss, color=color, s=26, zorder=3, label=f"fitted runs, C = {budget:.2g}"
            )
            left.plot(x, curve, color=color, lw=1.2, zorder=2)
        measured.append(loss)
        predicted.append(fit.predict(n, d))
        held_mask.append(np.full(n.size, held))
    p = holdout.predicted_opt
    left.scatter([p["n_params"]], [p["loss"]], marker="*", s=180, color="red", edgecolor="black",
                 zorder=5, label="predicted optimum")  # fmt: skip
    if holdout.measured_opt is not None:
        m = holdout.measured_opt
        left.scatter([m["n_params"]], [m["loss"]], marker="X", s=90, color="black", zorder=5,
                     label="measured optimum (parabola minimum)")  # fmt: skip
    left.plot([], [], color="gray", lw=1.2, label="law fitted without the held-out budget")
    left.set_xscale("log")
    _count_axis(left.xaxis)
    _plain_log_y(left)
    left.set_xlabel(KIND_LABEL["total"])
    left.set_ylabel("final eval loss (nats/token)")
    left.set_title(
        f"Fit on C < {holdout.budget:.2g}, predicting C = {holdout.budget:.2g}\n"
        f"({COMPUTE_LABELS[compute]})"
    )
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)

    meas, pred, mask = (np.concatenate(v) for v in (measured, predicted, held_mask))
    right.scatter(meas[~mask], pred[~mask], color="gray", s=26, zorder=3, label="fitted runs")
    right.scatter(meas[mask], pred[mask], marker="s", s=40, facecolor="none", edgecolor="red",
                  lw=1.5, zorder=4, label="held-out runs")  # fmt: skip
    lo, hi = min(meas.min(), pred.min()) * 0.97, max(meas.max(), pred.max()) * 1.03
    right.plot([lo, hi], [lo, hi], color="black", lw=1.0, label="predicted = measured")
    right.set_xscale("log")
    _plain_log_y(right)
    from matplotlib.ticker import FormatStrFormatter

    right.xaxis.set_major_formatter(FormatStrFormatter("%.3g"))
    right.xaxis.set_minor_formatter(FormatStrFormatter("%.3g"))
    right.tick_params(axis="x", which="minor", labelsize=7)
    right.set_xlim(lo, hi)
    right.set_ylim(lo, hi)
    right.set_xlabel("measured final eval loss (nats/token)")
    right.set_ylabel("predicted loss (nats/token)")
    err = holdout.errors
    right.set_title(f"Held-out runs: mean |error| {np.abs(err).mean():.3f} nats")
    right.grid(True, which="both", alpha=0.3)
    right.legend(fontsize=8)
    return fig
