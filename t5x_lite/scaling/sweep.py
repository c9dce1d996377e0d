"""IsoFLOP sweeps through the real trainer, recorded in a CSV that survives restarts.

For each budget ``C`` in ``scaling.sweep_budgets`` the sweep trains
``scaling.sweep_sizes`` models whose parameter counts (of the ``scaling.fit``'s
``param_kind``) are log-spaced over ``N_opt / spread ... N_opt * spread`` around that
fit's optimum, each shape the planner's nearest (duplicates dropped), each for
``round(C / (6 N x batch_size x seq_len))`` steps with its cosine schedule ending
there. Example: ``C = 1e12`` with hoffmann2022 gives ``N_opt = 1.6e5``; five sizes
with spread 2.5 aim at ``6.3e4, 1.0e5, 1.6e5, 2.5e5, 3.9e5`` parameters.

Everything goes to ``out_dir``:

* ``runs.csv`` — one row per finished run (:data:`RUN_COLUMNS`): shape, ``N``
  (total and non-embedding), ``D``, ``C = 6ND``, the trainer's FLOP count, final
  eval loss, wall time, the corpus and its training-token count;
* ``curves.csv`` — the training-loss curve of every run (``run_id, step, n_tokens,
  loss``), read from its ``metrics.jsonl``, for Approach 1's envelope;
* ``sweep_config.json`` — the base config; a later sweep into the same directory
  must match it (budgets and sizes may be added).

Run workdirs live under ``workdir_root/<run_id>``; an interrupted sweep restarted
with the same command skips the runs in ``runs.csv`` and resumes a half-done run from
its last checkpoint. Then :func:`t5x_lite.scaling.report.write_report` fits and plots.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from t5x_lite import flops as flops_lib
from t5x_lite.config import Config, ConfigError, ModelConfig, row_lengths, to_dict
from t5x_lite.scaling.fits import compute_optimal, load_fit
from t5x_lite.scaling.planner import nearest_shape, shape_grid, step_compute
from t5x_lite.scaling.tuning import rule_rate

RUNS_FILE = "runs.csv"
CURVES_FILE = "curves.csv"
CONFIG_FILE = "sweep_config.json"
RUN_COLUMNS = (
    "run_id",
    "budget",
    "family",
    "arch",
    "vocab_size",
    "seq_len",
    "batch_size",
    "num_layers",
    "d_model",
    "num_heads",
    "d_ff",
    "n_params",
    "n_non_embedding",
    "num_steps",
    "n_tokens",
    "flops_6nd",
    "flops_train",
    "final_eval_loss",
    "final_train_loss",
    "wall_time_s",
    "corpus",
    "corpus_train_tokens",
    "unique_tokens",
    "epochs",
    "learning_rate",
    "seed",
)
CURVE_COLUMNS = ("run_id", "step", "n_tokens", "loss")


@dataclasses.dataclass(frozen=True)
class Run:
    """One planned run of a sweep (``model`` trained ``num_steps`` steps at ``budget``)."""

    run_id: str
    budget: float
    model: ModelConfig
    num_steps: int
    batch_size: int
    seq_len: int
    n_params: int
    n_non_embedding: int
    # The run's peak learning rate and seed when the sweep varies them (None: config's).
    learning_rate: float | None = None
    seed: int | None = None

    @property
    def n_tokens(self) -> int:
        return self.num_steps * self.batch_size * self.seq_len

    @property
    def flops_6nd(self) -> float:
        return 6.0 * self.n_params * self.n_tokens


def plan_sweep(cfg: Config) -> list[Run]:
    """The runs of ``cfg``'s sweep, budget by budget, smallest model first.

    One-line ConfigError when no budgets are set or a run would get no step.
    """
    sc = cfg.scaling.validate()
    if not sc.sweep_budgets:
        raise ConfigError("scaling.sweep_budgets is empty; give the IsoFLOP budgets to sweep")
    fit = load_fit(sc.fit)
    kind = fit.param_kind
    grid = shape_grid(cfg.model, kind)
    batch, seq = cfg.train.batch_size, cfg.data.seq_len
    if sc.sweep_epochs and not cfg.data.unique_tokens:
        raise ConfigError(
            "scaling.sweep_epochs needs data.unique_tokens > 0: the unique tokens the "
            "epochs repeat"
        )
    runs = []
    for budget in sorted(sc.sweep_budgets):
        shapes: dict[tuple[int, int], ModelConfig] = {}
        if sc.sweep_epochs:
            # N = C / (6 D) at D = epochs x unique tokens (by 6ND whatever sc.compute;
            # the steps below then spend the budget as sc.compute counts it).
            u = cfg.data.unique_tokens
            targets = [budget / (6.0 * e * u) for e in sorted(sc.sweep_epochs)]
            if kind == "non_embedding":
                raise ConfigError(
                    "scaling.sweep_epochs plans sizes by total parameters; use a fit with "
                    "param_kind 'total'"
                )
        else:
            center = compute_optimal(budget, fit).n_params
            exps = np.linspace(-1.0, 1.0, sc.sweep_sizes) if sc.sweep_sizes > 1 else np.zeros(1)
            targets = list(center * sc.sweep_spread**exps)
        for target in targets:
            m = nearest_shape(cfg.model, float(target), kind, grid)
            shapes.setdefault((m.num_layers, m.d_model), m)
        for (layers, width), m in shapes.items():
            counts = flops_lib.param_counts(m)
            target = row_lengths(cfg.data).target_len if m.family == "encoder_decoder" else None
            steps = round(budget / step_compute(m, seq, batch, sc.compute, target))
            if steps < 1:
                raise ConfigError(
                    f"scaling.sweep_budgets: {budget:.3g} FLOPs buy no step of the "
                    f"{counts[kind]:.3g}-parameter model (batch {batch} x seq {seq})"
                )
            runs.append(
                Run(
                    run_id=f"C{budget:.3g}_L{layers}_d{width}",
                    budget=float(budget),
                    model=m,
                    num_steps=steps,
                    batch_size=batch,
                    seq_len=seq,
                    n_params=counts["total"],
                    n_non_embedding=counts["non_embedding"],
                )
            )
    def rates(r: Run) -> tuple[float | None, ...]:
        if sc.sweep_lr_rule:
            return (rule_rate(sc.sweep_lr_rule, r.n_params),)
        return sc.sweep_lrs or (None,)

    runs = [
        dataclasses.replace(
            r,
            run_id=r.run_id + (f"_lr{lr:.3g}" if lr is not None else "")
            + (f"_s{seed}" if seed is not None else ""),
            learning_rate=lr,
            seed=seed,
        )
        for r in runs
        for lr in rates(r)
        for seed in (sc.sweep_seeds or (None,))
    ]
    return sorted(runs, key=lambda r: (r.budget, r.n_params, r.run_id))


def run_config(cfg: Config, run: Run) -> Config:
    """The trainer's config for ``run``: its model and steps, warmup at most a tenth."""
    warmup = min(cfg.optimizer.warmup_steps, max(run.num_steps // 10, 1))
    optimizer = dataclasses.replace(cfg.optimizer, warmup_steps=warmup)
    if run.learning_rate is not None:
        optimizer = dataclasses.replace(optimizer, learning_rate=run.learning_rate)
    data, seed = cfg.data, cfg.train.seed
    if run.seed is not None:
        data, seed = dataclasses.replace(cfg.data, seed=run.seed), run.seed
    return dataclasses.replace(
        cfg,
        model=run.model,
        data=data,
        train=dataclasses.replace(
            cfg.train,
            num_steps=run.num_steps,
            eval_every=run.num_steps,
            progress_bar=False,
            seed=seed,
        ),
        optimizer=optimizer,
        checkpoint=dataclasses.replace(
            cfg.checkpoint, every_steps=max(cfg.checkpoint.every_steps, 1)
        ),
        scaling=dataclasses.replace(cfg.scaling, flops_budget=0.0),
    ).validate()


def corpus_train_tokens(cfg: Config) -> int:
    """Tokens in the training split of ``cfg.data.corpus`` under the run's tokenizer."""
    from t5x_lite.data import pipeline

    tok = pipeline.get_tokenizer(cfg)
    return int(pipeline.batch_source(cfg, tok, cfg.data.train_split).store.num_tokens)


# --------------------------------------------------------------------------- CSV files


def read_rows(path: str) -> list[dict[str, Any]]:
    """Rows of a sweep CSV, numbers converted (empty list when the file is absent)."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [{k: _number(v) for k, v in row.items()} for row in rows]


def _number(text: str) -> Any:
    """``"3" -> 3``, ``"2.5" -> 2.5``, ``"" -> None``, other text unchanged."""
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def append_rows(path: str, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    """Append ``rows`` to the CSV at ``path`` (header written when the file is new)."""
    new = not os.path.exists(path)
    if not new:  # a file written before columns were added keeps its own header
        with open(path, newline="") as f:
            columns = tuple(next(csv.reader(f), None) or columns)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerows({k: r.get(k) for k in columns} for r in rows)
        f.flush()
        os.fsync(f.fileno())


def read_curve(workdir: str, run_id: str) -> list[dict[str, Any]]:
    """Logged training losses of a run from its ``metrics.jsonl`` (last record per step)."""
    path = os.path.join(workdir, "metrics.jsonl")
    by_step: dict[int, dict[str, Any]] = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                rec = json.loads(line)
                if "loss" in rec and "tokens_seen" in rec:
                    by_step[int(rec["step"])] = {
                        "run_id": run_id,
                        "step": int(rec["step"]),
                        "n_tokens": int(rec["tokens_seen"]),
                        "loss": float(rec["loss"]),
                    }
    return [by_step[s] for s in sorted(by_step)]


# Fields a sweep may change between invocations in one output directory (more budgets,
# sizes, learning rates or seeds add runs; the finished ones stay valid).
_EXTENSIBLE = ("sweep_budgets", "sweep_sizes", "sweep_spread", "sweep_lrs", "sweep_seeds")


def _comparable(cfg: Config) -> dict[str, Any]:
    d = to_dict(cfg)
    for k in _EXTENSIBLE:
        d["scaling"].pop(k)
    return d


def check_out_dir(cfg: Config, out_dir: str) -> None:
    """An existing ``sweep_config.json`` must describe the same sweep (one-line error)."""
    path = os.path.join(out_dir, CONFIG_FILE)
    if not os.path.exists(path):
        return
    with open(path) as f:
        old = json.load(f)
    old = {k: v for k, v in old.items() if k != "scaling"} | {
        "scaling": {
            k: v
            for k, v in old.get("scaling", {}).items()
            if k not in _EXTENSIBLE
        }
    }
    new = _comparable(cfg)
    defaults = to_dict(Config())
    for section in new:
        for key in new[section]:
            a, b = old.get(section, {}).get(key), new[section][key]
            if key not in old.get(section, {}) and b == defaults[section].get(key):
                continue  # a field added since, at its default: the same sweep
            if a != b:
                raise ConfigError(
                    f"{path} records {section}.{key}={a!r} but this sweep has {b!r}; "
                    "use another output directory"
                )


# --------------------------------------------------------------------------- the sweep


def run_sweep(
    cfg: Config,
    out_dir: str,
    workdir_root: str,
    *,
    dry_run: bool = False,
    plan_only: bool = False,
    allow_repeats: bool = False,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Train the sweep's missing runs (see module doc); returns all rows of ``runs.csv``.

    ``dry_run`` prints the plan (and checks the corpus) without training; ``plan_only``
    prints it without reading the corpus (a plan for another machine). ``progress``
    shows a bar over the sweep's FLOPs (by 6ND, with the time left at the rate so far)
    and the trainer's bar of the run in progress; ``log`` then writes above them. Unless
    ``allow_repeats``, a run that would consume more tokens than the corpus's training
    split holds is a ConfigError before anything is trained. Runs go through
    :func:`t5x_lite.trainer.train`.
    """
    runs = plan_sweep(cfg)
    check_out_dir(cfg, out_dir)
    runs_path = os.path.join(out_dir, RUNS_FILE)
    done = {r["run_id"] for r in read_rows(runs_path)}
    total = sum(r.flops_6nd for r in runs)
    todo = [r for r in runs if r.run_id not in done]
    log(
        f"sweep: {len(runs)} runs over {len(cfg.scaling.sweep_budgets)} budgets "
        f"({total:.3g} FLOPs by 6ND), {len(runs) - len(todo)} already in {runs_path}"
    )
    for r in runs:
        log(
            f"  {r.run_id:24s} N={r.n_params:>10,d} (non-emb {r.n_non_embedding:>10,d}) "
            f"D={r.n_tokens:>11,d} steps={r.num_steps:>6d}" + ("  done" if r.run_id in done else "")
        )
    biggest = max(runs, key=lambda r: r.n_tokens)
    if plan_only:
        log(
            f"largest run reads {biggest.n_tokens:,d} tokens ({biggest.run_id}); "
            f"data.corpus={cfg.data.corpus!r} not read (plan only)"
        )
        return read_rows(runs_path)
    tokens = corpus_train_tokens(cfg)
    log(
        f"corpus {cfg.data.corpus}: {tokens:,d} training tokens; largest run takes "
        f"{biggest.n_tokens:,d} ({biggest.run_id})"
    )
    if biggest.n_tokens > tokens and not allow_repeats and not cfg.scaling.sweep_epochs:
        raise ConfigError(
            f"run {biggest.run_id} needs {biggest.n_tokens:,d} tokens but data.corpus="
            f"{cfg.data.corpus!r} has {tokens:,d}: it would repeat data; lower the budgets, "
            "use a larger corpus or pass --allow-repeats"
        )
    if dry_run:
        return read_rows(runs_path)
    os.makedirs(out_dir, exist_ok=True)
    if not os.path.exists(os.path.join(out_dir, CONFIG_FILE)):
        with open(os.path.join(out_dir, CONFIG_FILE), "w") as f:
            json.dump(_comparable(cfg) | {"scaling": to_dict(cfg.scaling)}, f, indent=2)
            f.write("\n")
    from t5x_lite.trainer import train

    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=sum(r.flops_6nd for r in todo), unit="FLOP", unit_scale=True,
            desc=f"sweep 0/{len(todo)}", position=0, dynamic_ncols=True, smoothing=0.0,
        )  # fmt: skip
        log_line = log

        def log(msg: str) -> None:
            with tqdm.external_write_mode():  # the bars step aside for the line
                log_line(msg)

    for i, run in enumerate(todo):
        workdir = os.path.join(workdir_root, run.run_id)
        log(f"[{i + 1}/{len(todo)}] {run.run_id}: training {run.num_steps} steps in {workdir}")
        t0 = time.perf_counter()
        result = train(run_config(cfg, run), workdir, progress=bar is not None, sample=False)
        if result.get("preempted"):
            log(f"{run.run_id} stopped; run the same command again to resume")
            sys.exit(1)
        loss = result.get("final_eval_loss")
        if loss is None or not math.isfinite(loss):
            raise ConfigError(f"run {run.run_id} ended without a finite eval loss ({loss})")
        row = {
            "run_id": run.run_id,
            "budget": run.budget,
            "family": run.model.family,
            "arch": run.model.arch,
            "vocab_size": run.model.vocab_size,
            "seq_len": run.seq_len,
            "batch_size": run.batch_size,
            "num_layers": run.model.num_layers,
            "d_model": run.model.d_model,
            "num_heads": run.model.num_heads,
            "d_ff": run.model.d_ff,
            "n_params": run.n_params,
            "n_non_embedding": run.n_non_embedding,
            "num_steps": run.num_steps,
            "n_tokens": run.n_tokens,
            "flops_6nd": run.flops_6nd,
            "flops_train": run.n_tokens
            * flops_lib.flops_per_token_of(
                run.model, dataclasses.replace(cfg.data, seq_len=run.seq_len)
            ),
            "final_eval_loss": float(loss),
            "final_train_loss": result.get("final_train_loss"),
            "wall_time_s": round(time.perf_counter() - t0, 1),
            "corpus": cfg.data.corpus,
            "corpus_train_tokens": tokens,
            "unique_tokens": tokens,
            "epochs": run.n_tokens / tokens,
            "learning_rate": run_config(cfg, run).optimizer.peak_learning_rate,
            "seed": run_config(cfg, run).train.seed,
        }
        append_rows(
            os.path.join(out_dir, CURVES_FILE), CURVE_COLUMNS, read_curve(workdir, run.run_id)
        )
        append_rows(runs_path, RUN_COLUMNS, [row])
        log(f"    eval loss {loss:.4f} in {row['wall_time_s']:.0f}s")
        if bar is not None:
            bar.set_description(f"sweep {i + 1}/{len(todo)}")
            bar.update(run.flops_6nd)
    if bar is not None:
        bar.close()
    return read_rows(runs_path)
