"""The training loop: check, init or restore, step, log, evaluate, checkpoint, stop.

``train(cfg, workdir)`` runs one experiment end to end and returns a summary::

    >>> out = train(from_dict({...}), "/tmp/run")
    >>> out["final_eval_loss"], out["steps"], out["tokens_seen"]
    (4.21, 200, 409600)

What it does, in order:

1. *Checks, before anything is compiled or written*: the config (objective vs
   model family, NSP/SOP vs sentence head, ...), the mesh fills the devices,
   ``train.batch_size`` splits over ``data x fsdp`` (per microbatch) and the
   processes, the devices can run the model (``attention_impl='cudnn'`` needs
   GPUs), a workdir that already holds a run has the same model (``config.json``)
   and tokenizer (``tokenizer.model``), and the corpus, tokenizer, lengths and both
   data splits load. Each problem is one :class:`~t5x_lite.config.ConfigError`
   line; the workdir is neither created nor touched.
2. Creates the workdir and copies the tokenizer into it; restores the latest
   checkpoint (train state onto *this* run's mesh, data-iterator state) or
   initialises the state sharded, then writes the resolved ``config.json``.
3. Steps to ``train.num_steps``: every ``log_every`` a record in ``metrics.jsonl`` and
   TensorBoard (loss = mean over the logging window, learning rate, tokens/s, MFU or
   achieved FLOP/s), every ``eval_every`` an evaluation on ``train.eval_batches``
   validation batches, every ``checkpoint.every_steps`` an async checkpoint, every
   ``plot_every`` fresh PNG plots.
4. On SIGTERM / SIGINT (unless ``checkpoint.save_on_preemption=False``, which keeps
   the default signal behaviour): finishes the current step, saves a checkpoint at it, and
   returns with ``preempted=True`` (restarting on the same workdir resumes there
   and reproduces the uninterrupted run bit for bit on the same machine).
5. At the end: final evaluation and checkpoint, plots, and for decoders a sampled
   continuation of ``train.sample_prompt``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from t5x_lite import checkpoints, decoding, flops, loading, partitioning, steps, summary
from t5x_lite import metrics as metrics_lib
from t5x_lite.config import Config, ConfigError, to_dict
from t5x_lite.evaluation import evaluate, metric_names, task_metrics
from t5x_lite.partitioning import replicated_value, to_global
from t5x_lite.preflight import (
    BEST_DIR,
    CHECKPOINT_DIR,
    CONFIG_FILE,
    TOKENIZER_FILE,
    check_backend,
    check_layout,
    check_workdir,
    write_json,
)
from t5x_lite.progress import Progress

BEST_FILE = "best.json"  # {"step", "metric", "value"} of the checkpoint in best/

# Re-exported: what callers of the trainer check before a run.
__all__ = ["check_layout", "check_workdir", "sampleable_ids", "train"]
sampleable_ids = decoding.sampleable_ids


# --------------------------------------------------------------------------- helpers


class _StopFlag:
    """SIGTERM / SIGINT set a flag checked after each step (main thread only).

    A second SIGINT (Ctrl-C twice) raises KeyboardInterrupt without saving.
    """

    def __init__(self, enabled: bool) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}
        self.enabled = enabled
        if enabled and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.signum = signum

    def requested(self) -> bool:
        local = self.signum is not None
        if jax.process_count() == 1:
            return local
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.asarray([local], np.int32))
        return bool(np.any(flags))

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old = {}


@dataclasses.dataclass
class _Window:
    """Train-only time and tokens since the last log (evals and saves excluded)."""

    seconds: float = 0.0
    steps: int = 0
    losses: list[float] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class _Session:
    """Everything a started run holds: checked config, data, compiled steps, state."""

    cfg: Config
    workdir: str
    devices: list[jax.Device]
    mesh_shape: tuple[int, int, int]
    process_count: int
    primary: bool
    tokenizer: Any
    iterator: Any
    eval_batches: list[dict[str, jax.Array]]
    run: steps.Steps
    ckpt: checkpoints.Checkpointer
    state: Any
    latest: int | None
    start_step: int
    restore_s: float | None
    init_note: str
    task: Any  # the fine-tuning task's data (t5x_lite.data.task_pipeline), or None
    best_value: float | None  # checkpoint.best_metric of the best checkpoint so far
    tokens_per_step: int
    flops_per_token: float


def _start(cfg: Config, workdir: str, devices: list[jax.Device]) -> _Session:
    """Steps 1 and 2 of the module docstring: check, create the workdir, init or restore.

    Checks that read files (lengths, tokenizer, corpus, splits) come before anything
    is written into the workdir: the tokenizer is read from the workdir only when a
    run there already holds one, and both data streams are built (and validated).
    """
    from t5x_lite.data import pipeline

    pidx, pcount = jax.process_index(), jax.process_count()
    mesh_shape = check_layout(cfg, len(devices), pcount)
    check_backend(cfg, devices)
    check_workdir(cfg, workdir)
    run_tokenizer = os.path.join(workdir, TOKENIZER_FILE)
    resuming_tokenizer = os.path.isfile(run_tokenizer)
    base = None
    if cfg.train.init_from and not loading.checkpoint_steps(workdir):
        base = loading.check_init_from(cfg.model, cfg.train.init_from)
        cfg = _with_base_tokenizer(cfg, base, resuming_tokenizer)
    tokenizer = pipeline.get_tokenizer(
        cfg, workdir if resuming_tokenizer else None, pidx, pcount
    )
    task = None
    if cfg.task.kind != "none":  # fine-tuning: the task's rows, all of its validation split
        from t5x_lite.data import task_pipeline

        task = task_pipeline.load(cfg, tokenizer)
        iterator = task.train_iterator(pidx, pcount)
        eval_local = task.eval_batches(pidx, pcount)
    else:
        iterator = pipeline.train_iterator(cfg, tokenizer, pidx, pcount)
        eval_local = pipeline.eval_batches(cfg, tokenizer, cfg.train.eval_batches, pidx, pcount)
    best_value = _best_so_far(cfg, workdir)

    # Every check passed: only now is the workdir created and the tokenizer copied in.
    os.makedirs(workdir, exist_ok=True)
    if not resuming_tokenizer:
        pipeline.get_tokenizer(cfg, workdir)  # byte-identical copy of ``tokenizer``

    mesh = partitioning.make_mesh(cfg.mesh, devices)
    run = steps.for_config(cfg, mesh)
    ckpt = checkpoints.Checkpointer(os.path.join(workdir, CHECKPOINT_DIR), cfg.checkpoint)
    latest = ckpt.latest_step()
    restore_s = None
    data_state = None
    init_note = ""
    if latest is not None:
        t0 = time.perf_counter()
        target = checkpoints.abstract_with_shardings(run.abstract_state, run.state_shardings)
        try:
            state, data_state, _ = ckpt.restore(latest, target, pidx)
        except (ValueError, KeyError, TypeError) as e:  # tree or shape mismatch
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ConfigError(
                f"checkpoint {ckpt.directory}/{latest} does not fit this run's train state "
                f"({first[:200]}); choose another --workdir"
            ) from None
        jax.block_until_ready(state)
        restore_s = time.perf_counter() - t0
    else:
        state = run.run(run.init, jax.random.key(cfg.train.seed))
        if base is not None:
            params, fresh = loading.initial_params(cfg.model, base, state.params)
            state = state.replace(params=params)
            init_note = f"initialised from {base.path}" + (
                f" (step {base.step})" if base.step is not None else ""
            )
            init_note += f"; new: {', '.join(fresh)}" if fresh else ""
    if data_state is not None:
        iterator.set_state(data_state)
    primary = pidx == 0
    if primary:  # only now: a start that fails above leaves the old config.json alone
        write_json(os.path.join(workdir, CONFIG_FILE), to_dict(cfg))
    return _Session(
        cfg=cfg,
        workdir=workdir,
        devices=devices,
        mesh_shape=mesh_shape,
        process_count=pcount,
        primary=primary,
        tokenizer=tokenizer,
        iterator=iterator,
        eval_batches=[to_global(b, run.batch_sharding) for b in eval_local],
        run=run,
        ckpt=ckpt,
        state=state,
        latest=latest,
        start_step=int(replicated_value(state.step)),
        restore_s=restore_s,
        init_note=init_note,
        task=task,
        best_value=best_value,
        tokens_per_step=cfg.train.batch_size * cfg.data.seq_len,
        flops_per_token=_flops_per_token(cfg, task),
    )


def _with_base_tokenizer(cfg: Config, base: loading.Loaded, resuming: bool) -> Config:
    """``cfg`` reading the base's tokenizer (``data.tokenizer`` unset, fresh workdir)."""
    if cfg.data.tokenizer or resuming:
        return cfg
    if base.tokenizer is None:
        raise ConfigError(
            f"train.init_from={cfg.train.init_from!r} has no t5x_lite tokenizer "
            f"({base.note}); set data.tokenizer to a SentencePiece .model"
        )
    data = dataclasses.replace(cfg.data, tokenizer=base.tokenizer.path)
    return dataclasses.replace(cfg, data=data)


def _flops_per_token(cfg: Config, task: Any) -> float:
    """The objective table's count, or for a task its rows' lengths (label words)."""
    if task is None:
        return flops.flops_per_token_of(cfg.model, cfg.data)
    labels = task.train.arrays.get("labels")
    target = labels.shape[1] if cfg.model.family == "encoder_decoder" else None
    return flops.train_flops_per_token(cfg.model, cfg.data.seq_len, target)


def _best_so_far(cfg: Config, workdir: str) -> float | None:
    """``checkpoint.best_metric`` of ``workdir/best.json`` (None: none saved yet);
    an unknown metric name is a ConfigError before anything is compiled."""
    name = cfg.checkpoint.best_metric
    if not name:
        return None
    known = metric_names(cfg.task.kind, cfg.model.family)
    if name not in known:
        raise ConfigError(
            f"checkpoint.best_metric={name!r} is not an eval metric of this run (one of "
            f"{', '.join(known)})"
        )
    path = os.path.join(workdir, BEST_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        saved = json.load(f)
    return float(saved["value"]) if saved.get("metric") == name else None


def _log_record(
    s: _Session, step: int, m: dict[str, float], window: _Window, peak: float | None
) -> dict[str, Any]:
    """The ``log_every`` record: the window's mean loss, throughput and MFU."""
    tps = s.tokens_per_step * window.steps / window.seconds if window.seconds else None
    achieved = s.flops_per_token * tps if tps else None
    return {
        **{k: v for k, v in m.items() if k != "loss"},
        "loss": float(np.mean(window.losses)),
        "tokens_per_second": tps,
        "flops_per_second": achieved,
        "mfu": achieved / (peak * len(s.devices)) if (achieved and peak) else None,
        "tokens_seen": step * s.tokens_per_step,
    }


def _sample(s: _Session) -> tuple[str | None, list[int] | None]:
    """Decoders: the end-of-run continuation of ``train.sample_prompt`` (text, ids).

    Every process runs the sampler (its forward pass is a collective); process 0
    prints. Decoding prompt and continuation together keeps the space between them.
    """
    cfg = s.cfg
    if cfg.model.family != "decoder" or cfg.model.task_head != "none":
        return None, None
    prompt_ids, sampled = decoding.sample_ids(
        s.run,
        s.state.params,
        s.tokenizer,
        cfg.train.sample_prompt,
        cfg.train.sample_tokens,
        cfg.data.seq_len,
        seed=cfg.train.seed,
    )
    return decoding.printable(s.tokenizer.decode(prompt_ids + sampled)), sampled


# --------------------------------------------------------------------------- train


def train(
    cfg: Config,
    workdir: str,
    *,
    devices: list[jax.Device] | None = None,
    progress: bool | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    handle_signals: bool = True,
    sample: bool = True,
) -> dict[str, Any]:
    """Train ``cfg`` in ``workdir`` (resuming it if it holds checkpoints); see module doc.

    ``devices``: the mesh's devices (default all); ``progress``: None follows
    ``train.progress_bar``, False prints nothing; ``on_step(step, metrics)`` is called
    after every step with that step's metrics as floats.
    Returns ``final_eval_loss``, ``final_eval`` (all eval metrics),
    ``final_train_loss``, ``steps``, ``start_step``, ``tokens_seen``, ``wall_time_s``,
    ``losses`` (``{step: loss}`` of the steps run here), ``preempted``, ``sample``
    (decoders: the prompt and its sampled continuation as text) and ``sample_ids`` (the
    sampled ids, all below ``tokenizer.vocab_size``), and timings.
    """
    wall_start = time.perf_counter()
    cfg = cfg.validate()  # trained as given: entry points apply a scaling plan first
    s = _start(cfg, workdir, list(devices if devices is not None else jax.devices()))
    run, ckpt, tc = s.run, s.ckpt, cfg.train
    peak = flops.peak_flops_per_device(tc.peak_flops)
    show = s.primary and (progress is not False)
    bar = Progress(
        tc.num_steps,
        s.start_step,
        bar=tc.progress_bar if progress is None else bool(progress),
        enabled=show,
    )
    writer = metrics_lib.MetricsWriter(workdir, enabled=s.primary, resume_step=s.start_step)
    if s.latest is not None:
        bar.write(f"resumed from {ckpt.directory}/{s.latest} (restore {s.restore_s:.2f}s)")
    if s.init_note:
        bar.write(s.init_note)
    cfg = s.cfg
    # With save_on_preemption=False nothing is caught: signals keep their default
    # meaning (SIGTERM ends the process, Ctrl-C raises KeyboardInterrupt) instead of a
    # handler that would only set a flag nobody acts on.
    stop = _StopFlag(handle_signals and cfg.checkpoint.save_on_preemption)
    stats: dict[str, Any] = {}
    history: dict[int, float] = {}
    window, last_eval, eval_step = _Window(), {}, None
    save_blocking: list[float] = []
    step_times: list[float] = []
    compile_s, saved_step, step, preempted = None, s.latest, s.start_step, False

    def save(at: int) -> None:
        nonlocal saved_step
        if saved_step == at:
            return
        meta = {"mesh": list(s.mesh_shape), "process_count": s.process_count}
        t0 = time.perf_counter()
        # The live state is donated to the next step; the background save reads a copy.
        snapshot = run.run(run.copy, s.state) if ckpt.needs_copy else s.state
        ckpt.save(at, snapshot, s.iterator.get_state(), meta)
        save_blocking.append(time.perf_counter() - t0)
        saved_step = at

    def run_eval(at: int) -> None:
        nonlocal last_eval, eval_step
        last_eval, eval_step = evaluate(run, s.state.params, s.eval_batches), at
        if s.task is not None:
            last_eval.update(
                task_metrics(
                    run, s.state.params, s.eval_batches, s.task.validation, cfg.task.kind,
                    cfg.task.max_answer_len,
                )
            )
        record = {f"eval_{k}": v for k, v in last_eval.items()}
        if at > s.start_step or s.latest is None:  # a finished run re-opened logs nothing
            writer.write(at, record)
            keep_best(at)
        stats.update(record)

    def keep_best(at: int) -> None:
        """Save the state in best/ when checkpoint.best_metric improved (keep one)."""
        name, mode = cfg.checkpoint.best_metric, cfg.checkpoint.best_mode
        if not name:
            return
        value = float(last_eval[name])
        if s.best_value is not None and (
            value <= s.best_value if mode == "max" else value >= s.best_value
        ):
            return
        best_cfg = dataclasses.replace(cfg.checkpoint, keep=1, async_save=False)
        best = checkpoints.Checkpointer(os.path.join(workdir, BEST_DIR), best_cfg)
        try:
            meta = {"mesh": list(s.mesh_shape), "process_count": s.process_count}
            best.save(at, s.state, s.iterator.get_state(), {**meta, name: value})
            best.wait()
        finally:
            best.close()
        s.best_value = value
        stats["best_" + name] = value
        if s.primary:
            write_json(os.path.join(workdir, BEST_FILE), {"step": at, "metric": name,
                                                          "value": value})  # fmt: skip

    try:
        while step < tc.num_steps:
            batch = to_global(next(s.iterator), run.batch_sharding)
            t0 = time.perf_counter()
            s.state, step_metrics = run.run(run.train, s.state, batch)
            m = {k: float(v) for k, v in replicated_value(step_metrics).items()}
            dt = time.perf_counter() - t0
            step += 1
            if compile_s is None:
                compile_s = dt
            else:
                window.seconds, window.steps = window.seconds + dt, window.steps + 1
                step_times.append(dt)
            history[step] = m["loss"]
            window.losses.append(m["loss"])
            last = step == tc.num_steps
            logged = step % tc.log_every == 0 or last
            if logged:
                record = _log_record(s, step, m, window, peak)
                writer.write(step, record)
                stats.update(record)
                window = _Window()
            if step % tc.eval_every == 0 or last:
                run_eval(step)
            if step % cfg.checkpoint.every_steps == 0 or last:
                save(step)
            if step % tc.plot_every == 0:
                writer.plot()
            bar.update(step, stats, logged)
            if on_step is not None:
                on_step(step, m)
            if stop.enabled and stop.requested():
                preempted = True
                bar.write(f"signal {stop.signum}: saving a checkpoint at step {step}")
                save(step)
                break
        if not preempted:
            if eval_step != step:
                run_eval(step)
            save(step)
        ckpt.wait()
    finally:
        stop.restore()
        bar.close()
        ckpt.close()
    plots = writer.plot()
    writer.close()
    sample_text, sampled = _sample(s) if (sample and not preempted) else (None, None)
    result = {
        "final_eval_loss": last_eval.get("loss"),
        "final_eval": last_eval,
        "eval_step": eval_step,
        "final_train_loss": history.get(step),
        "steps": step,
        "start_step": s.start_step,
        "tokens_seen": step * s.tokens_per_step,
        "wall_time_s": time.perf_counter() - wall_start,
        "losses": history,
        "preempted": preempted,
        "workdir": os.path.abspath(workdir),
        "checkpoint_dir": ckpt.directory,
        "checkpoint_step": saved_step,
        "best": (
            {"metric": cfg.checkpoint.best_metric, "value": s.best_value}
            if cfg.checkpoint.best_metric
            else None
        ),
        "plots": plots,
        "sample": sample_text,
        "sample_ids": sampled,
        "compile_s": compile_s,
        "mean_step_s": float(np.mean(step_times)) if step_times else None,
        "save_blocking_s": save_blocking,
        "restore_s": s.restore_s,
        "flops_per_token": s.flops_per_token,
        "flops_train_per_step": s.flops_per_token * s.tokens_per_step,
        "config": cfg,
    }
    if show:
        summary.print_summary(result, workdir)
    return result
