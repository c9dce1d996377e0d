"""Command line: ``python -m t5x_lite.scaling {fit,plan,sweep,report}``.

Examples::

    # The compute-optimal shape and steps for some budgets (a preset + overrides):
    python -m t5x_lite.scaling plan --budget 1e18 1e20 --config configs/gpt2_small.py
    # An IsoFLOP sweep through the trainer (restart the same command to continue):
    # (the runs' workdirs go under OUT/workdirs unless --workdir says otherwise)
    python -m t5x_lite.scaling sweep --config configs/scaling_sweep.py --out results/scaling
    # Refit and redraw from the CSV (and check a fit without the largest budget):
    python -m t5x_lite.scaling report --out results/scaling --holdout-largest
    # Fit a runs CSV (columns n_params or n_non_embedding, n_tokens, final_eval_loss):
    python -m t5x_lite.scaling fit --csv results/scaling/runs.csv --bootstrap 200

Errors in flags, configs or data are one line on stderr (exit status 2).
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
from typing import Any

from t5x_lite import presets
from t5x_lite.config import Config, ConfigError, from_dict
from t5x_lite.config.errors import ArgumentParser


def load_config(spec: str | None, overrides: list[str]) -> Config:
    """A typed Config from a preset (:func:`t5x_lite.presets.load`: a file or a name)
    and ``section.field=value``s."""
    if spec is None:
        values: dict[str, Any] = {}
    else:
        values = presets.load(spec).to_dict()
    for item in overrides:
        key, sep, raw = item.partition("=")
        parts = key.split(".")
        if not sep or len(parts) != 2:
            raise ConfigError(f"--set {item!r}: expected section.field=value")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        values.setdefault(parts[0], {})[parts[1]] = value
    return from_dict(values)


def _cmd_plan(args: argparse.Namespace) -> None:
    from t5x_lite.scaling.planner import plan

    cfg = load_config(args.config, args.set)
    fit = args.fit or cfg.scaling.fit
    header = (
        f"{'budget':>9} {'N_opt':>9} {'D_opt':>9} {'layers':>6} {'d_model':>7} {'heads':>5} "
        f"{'d_ff':>6} {'N':>9} {'steps':>9} {'D':>9} {'D/N':>6} {'6ND/C':>6} "
        f"{'FLOPs':>9} {'loss':>6}"
    )
    print(
        f"{cfg.model.family}/{cfg.model.arch}, vocab {cfg.model.vocab_size}, seq "
        f"{cfg.data.seq_len}, batch {cfg.train.batch_size}, fit {fit}"
    )
    print(header)
    for budget in args.budget:
        _, _, i = plan(
            cfg.model, budget, cfg.data.seq_len, cfg.train.batch_size, fit, cfg.data.target_len
        )
        print(
            f"{budget:9.3g} {i['n_opt']:9.3g} {i['d_opt']:9.3g} {i['num_layers']:6d} "
            f"{i['d_model']:7d} {i['num_heads']:5d} {i['d_ff']:6d} {i['n_params']:9.3g} "
            f"{i['num_steps']:9d} {i['n_tokens']:9.3g} {i['tokens_per_param']:6.1f} "
            f"{i['flops_6nd'] / budget:6.3f} {i['flops_train']:9.3g} {i['predicted_loss']:6.3f}"
        )
    print(f"N counts {i['param_kind']} parameters; FLOPs = the trainer's count (with attention)")


def _cmd_fit(args: argparse.Namespace) -> None:
    import numpy as np

    from t5x_lite.scaling.fits import fit_chinchilla, save_fit
    from t5x_lite.scaling.isoflop import approach1, approach2
    from t5x_lite.scaling.plots import KIND_COLUMN
    from t5x_lite.scaling.sweep import read_rows

    if not os.path.isfile(args.csv):
        raise ConfigError(f"--csv={args.csv!r} is not a file")
    rows = read_rows(args.csv)
    col = KIND_COLUMN[args.params]
    for need in (col, "n_tokens", "final_eval_loss"):
        if rows and need not in rows[0]:
            raise ConfigError(f"{args.csv} has no column {need!r}")
    n = [r[col] for r in rows]
    d = [r["n_tokens"] for r in rows]
    loss = [r["final_eval_loss"] for r in rows]
    fit = fit_chinchilla(
        n, d, loss, bootstrap=args.bootstrap, seed=args.seed, param_kind=args.params
    )
    print(f"Approach 3 on {fit.n_runs} runs ({args.params} parameters):")
    for k in ("E", "A", "B", "alpha", "beta", "a", "b"):
        ci = f"  [{fit.ci[k][0]:.4g}, {fit.ci[k][1]:.4g}]" if k in fit.ci else ""
        print(f"  {k:5s} = {getattr(fit, k):.4g}{ci}")
    ok = sum(r["success"] for r in fit.starts)
    print(f"  {ok} of {len(fit.starts)} starts converged; gradient norm {fit.grad_norm:.2g}")
    if rows and "budget" in rows[0]:
        budgets = [r["budget"] for r in rows]
        flops = 6.0 * np.array([r["n_params"] for r in rows]) * np.array(d)
        boot = {"bootstrap": args.bootstrap, "seed": args.seed}
        laws = (
            ("Approach 1", lambda: approach1(n, d, loss, flops=flops, **boot)),
            ("Approach 2", lambda: approach2(n, d, loss, budgets, **boot)),
        )
        for name, fit_law in laws:
            try:  # a sweep without enough interior minima has no Approach 2 (as the report)
                law = fit_law()
            except ConfigError as e:
                print(f"{name}: no fit ({e})")
                continue
            ci = ""
            if law.ci:
                ci = f"  (a in [{law.ci['a'][0]:.3f}, {law.ci['a'][1]:.3f}])"
            print(f"{name}: N_opt ∝ C^{law.a:.3f}, D_opt ∝ C^{law.b:.3f}{ci}")
    if args.save:
        if os.path.exists(args.save) and not args.force:
            raise ConfigError(f"--save={args.save!r} exists; pass --force to replace it")
        print(f"saved {save_fit(fit, args.save)}")


def _cmd_sweep(args: argparse.Namespace) -> None:
    from t5x_lite.scaling.report import write_report
    from t5x_lite.scaling.sweep import run_sweep

    cfg = load_config(args.config, args.set)
    rows = run_sweep(
        cfg,
        args.out,
        args.workdir or os.path.join(args.out, "workdirs"),
        dry_run=args.dry_run or args.plan_only,
        plan_only=args.plan_only,
        allow_repeats=args.allow_repeats,
        progress=not args.no_progress,
    )
    if not (args.dry_run or args.plan_only):
        paths = write_report(args.out, bootstrap=args.bootstrap)
        print(f"{len(rows)} runs; report: {paths['report']}")


def _cmd_report(args: argparse.Namespace) -> None:
    from t5x_lite.scaling.report import write_report

    paths = write_report(args.out, bootstrap=args.bootstrap, holdout=args.holdout_largest)
    held = paths.pop("holdout_result", None)
    for name, path in paths.items():
        print(f"{name}: {path}")
    if held is not None:
        p, best = held.predicted_opt, held.best_run
        print(
            f"held out C = {held.budget:.3g}: mean |predicted - measured| loss "
            f"{abs(held.errors).mean():.3f} nats; best loss predicted {p['loss']:.4f}, measured "
            f"{best['measured']:.4f}; best N predicted {p['n_params']:.3g}, measured "
            f"{held.measured_best_n:.3g}; best run predicted {held.predicted_best_run['run_id']}, "
            f"measured {best['run_id']}"
        )


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(
        prog="python -m t5x_lite.scaling", description=__doc__.split("\n")[0]
    )
    sub = p.add_subparsers(dest="command", required=True)

    def config_args(q: argparse.ArgumentParser, required: bool) -> None:
        q.add_argument(
            "--config", required=required, help="preset file, e.g. configs/gpt2_small.py"
        )
        q.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="SECTION.FIELD=VALUE",
            help="override a config field (repeatable)",
        )

    q = sub.add_parser("plan", help="compute-optimal model shape and steps for budgets")
    q.add_argument("--budget", type=float, nargs="+", required=True, help="FLOPs, e.g. 1e18")
    q.add_argument("--fit", help="built-in fit name or fit JSON (default: scaling.fit)")
    config_args(q, required=False)
    q.set_defaults(fn=_cmd_plan)

    q = sub.add_parser("fit", help="Chinchilla fits of a runs CSV")
    q.add_argument("--csv", required=True)
    q.add_argument("--params", choices=("total", "non_embedding"), default="total")
    q.add_argument("--bootstrap", type=int, default=0)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--save", help="write the Approach 3 fit as JSON here")
    q.add_argument("--force", action="store_true", help="replace an existing --save file")
    q.set_defaults(fn=_cmd_fit)

    q = sub.add_parser("sweep", help="IsoFLOP sweep through the trainer, then the report")
    config_args(q, required=True)
    q.add_argument("--out", required=True, help="results directory (CSV, plots, report)")
    q.add_argument(
        "--workdir", help="root of the runs' workdirs (default: OUT/workdirs, git-ignored)"
    )
    q.add_argument("--dry-run", action="store_true", help="print the plan, train nothing")
    q.add_argument(
        "--plan-only", action="store_true", help="print the plan without reading the corpus"
    )
    q.add_argument(
        "--allow-repeats",
        action="store_true",
        help="allow runs that read more tokens than the corpus holds",
    )
    q.add_argument(
        "--no-progress", action="store_true", help="no progress bars, one line per run"
    )
    q.add_argument("--bootstrap", type=int, default=200)
    q.set_defaults(fn=_cmd_sweep)

    q = sub.add_parser("report", help="refit, replot and rewrite report.md from the CSVs")
    q.add_argument("--out", required=True)
    q.add_argument("--bootstrap", type=int, default=200)
    q.add_argument(
        "--holdout-largest",
        action="store_true",
        help="also fit without the largest budget and check the prediction for it",
    )
    q.set_defaults(fn=_cmd_report)

    args = p.parse_args(argv)
    try:
        args.fn(args)
    except ConfigError as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
