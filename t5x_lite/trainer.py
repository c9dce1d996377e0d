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
3. Steps to ``train.num_steps`` without waiting on the host between logs: step metrics
   stay on the device and are fetched every ``log_every`` steps (one transfer), and
   ``train.prefetch_depth`` batches are put on the devices while the step before runs.
   Every ``log_every`` a record in ``metrics.jsonl`` and TensorBoard (loss = mean over
   the logging window, learning rate, tokens/s and MFU or achieved FLOP/s of the whole
   loop, ``skipped_steps``, ``peak_memory_bytes``), every ``eval_every`` an evaluation
   on ``train.eval_batches`` validation batches, every ``checkpoint.every_steps`` an
   async checkpoint, every ``plot_every`` fresh PNG plots.
   A non-finite loss or gradient norm (a flag each step computes on the device) stops
   the run with :class:`~t5x_lite.loop.NonFiniteError` at the next fetch, and every save fetches
   first and checks the state itself, so no non-finite state is saved; with
   ``train.on_nonfinite=skip`` the step drops that update on the device instead.
4. On SIGTERM / SIGINT (unless ``checkpoint.save_on_preemption=False``, which keeps
   the default signal behaviour): finishes the current step, saves a checkpoint at it, and
   returns with ``preempted=True`` (restarting on the same workdir resumes there
   and reproduces the uninterrupted run bit for bit on the same machine). Several
   processes agree on the step without a per-step collective (:class:`~t5x_lite.loop.StopFlag`).
5. At the end: final evaluation and checkpoint, plots, and for decoders a sampled
   continuation of ``train.sample_prompt``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from etils import epath

from t5x_lite import (
    checkpoints,
    decoding,
    flops,
    loading,
    loop,
    partitioning,
    paths,
    peft_run,
    steps,
    summary,
)
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
__all__ = ["NonFiniteError", "check_layout", "check_workdir", "sampleable_ids", "train"]
sampleable_ids = decoding.sampleable_ids
NonFiniteError = loop.NonFiniteError


# --------------------------------------------------------------------------- helpers


def _join(workdir: str, name: str) -> str:
    """``workdir/name`` through ``etils.epath``: a ``gs://`` workdir stays a URL.

    >>> _join("gs://bucket/run", "checkpoints")
    'gs://bucket/run/checkpoints'
    """
    return os.fspath(paths.path(workdir, name))


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
    run_tokenizer = _join(workdir, TOKENIZER_FILE)
    resuming_tokenizer = epath.Path(run_tokenizer).is_file()
    base = None
    if cfg.train.init_from and not loading.checkpoint_steps(workdir):
        base = loading.check_init_from(cfg.model, cfg.train.init_from)
        cfg = _with_base_tokenizer(cfg, base, resuming_tokenizer)
    if cfg.peft.enabled:  # the frozen base, on every start (checkpoints hold only its deltas)
        base = peft_run.base_of(cfg, workdir, base)
    tokenizer = pipeline.get_tokenizer(
        cfg, workdir if resuming_tokenizer else None, pidx, pcount
    )
    # Each process reads the rows of the global batch its devices hold (processes that
    # share rows, when a model axis spans hosts, read the same ones).
    mesh = partitioning.make_mesh(cfg.mesh, devices)
    shard = partitioning.data_shard(partitioning.batch_sharding(mesh, 1), cfg.train.batch_size)
    task = None
    if cfg.task.kind != "none":  # fine-tuning: the task's rows, all of its validation split
        from t5x_lite.data import task_pipeline

        task = task_pipeline.load(cfg, tokenizer)
        iterator = task.train_iterator(*shard)  # the rows this process's devices hold
        eval_local = task.eval_batches(*shard)
    else:
        iterator = pipeline.train_iterator(cfg, tokenizer, pidx, pcount, shard)
        eval_local = pipeline.eval_batches(
            cfg, tokenizer, cfg.train.eval_batches, pidx, pcount, shard
        )
    best_value = _best_so_far(cfg, workdir)

    # Every check passed: only now is the workdir created and the tokenizer copied in.
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    if not resuming_tokenizer:
        # A byte-identical copy of ``tokenizer`` (into gs://: process 0 writes it).
        pipeline.get_tokenizer(cfg, workdir, pidx, pcount)

    peft_manifest = None
    if cfg.peft.enabled:
        run, peft_manifest = peft_run.build_steps(cfg, mesh, base)
    else:
        run = steps.for_config(cfg, mesh)
    ckpt = checkpoints.Checkpointer(_join(workdir, CHECKPOINT_DIR), cfg.checkpoint)
    restore_s = None
    data_state = None
    init_note = ""
    latest = None
    t0 = time.perf_counter()
    target = checkpoints.abstract_with_shardings(run.abstract_state, run.state_shardings)
    log = print if pidx == 0 else (lambda line: None)
    restored = ckpt.restore_latest(target, pidx, log=log)
    if restored is not None:
        latest, state, data_state, _ = restored
        jax.block_until_ready(state)
        restore_s = time.perf_counter() - t0
    else:
        state = run.run(run.init, jax.random.key(cfg.train.seed))
        if base is not None and not cfg.peft.enabled:
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
        write_json(_join(workdir, CONFIG_FILE), to_dict(cfg))
        if peft_manifest is not None:
            peft_run.write_manifest(workdir, peft_manifest)
    if peft_manifest is not None:
        init_note = peft_run.start_line(peft_manifest)
    return _Session(
        cfg=cfg,
        workdir=workdir,
        devices=devices,
        mesh_shape=mesh_shape,
        process_count=pcount,
        primary=primary,
        tokenizer=tokenizer,
        iterator=iterator,
        eval_batches=[to_global(b, run.batch_sharding, cfg.train.batch_size) for b in eval_local],
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
    path = epath.Path(_join(workdir, BEST_FILE))
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    return float(saved["value"]) if saved.get("metric") == name else None


def _log_record(
    s: _Session, step: int, m: dict[str, float], window: loop.Window, peak: float | None
) -> dict[str, Any]:
    """The ``log_every`` record: the window's mean loss, throughput and MFU."""
    tps = s.tokens_per_step * window.steps / window.seconds if window.seconds else None
    achieved = s.flops_per_token * tps if tps else None
    return {
        **{k: v for k, v in m.items() if k not in ("loss", "nonfinite")},
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
        s.run.run(s.run.full_params, s.state.params),
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
    after every step with that step's metrics as floats (so, with it, the loop fetches
    metrics every step).
    Returns ``final_eval_loss``, ``final_eval`` (all eval metrics),
    ``final_train_loss``, ``steps``, ``start_step``, ``tokens_seen``, ``wall_time_s``,
    ``losses`` (``{step: loss}`` of the steps run here), ``preempted``, ``sample``
    (decoders: the prompt and its sampled continuation as text) and ``sample_ids`` (the
    sampled ids, all below ``tokenizer.vocab_size``), ``skipped_steps``, device memory
    (``peak_memory_bytes``, ``memory_source``, ``live_bytes``) and timings
    (``mean_step_s`` and ``loop_tokens_per_second`` time the whole loop).
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
    stop = loop.StopFlag(handle_signals and cfg.checkpoint.save_on_preemption,
                     tc.preemption_check_every)  # fmt: skip
    stats: dict[str, Any] = {}
    history: dict[int, float] = {}
    window, last_eval, eval_step = loop.Window(), {}, None
    save_blocking: list[float] = []
    loop_s, loop_steps, skipped = 0.0, 0, 0
    # Device memory: the backend's peak where it keeps one, else live-array bytes
    # sampled at each log (steady) and right after each save returns (the write runs on).
    memory_source = loop.peak_device_memory(s.devices)[1]
    live = {"steady": 0, "during_save": 0}
    compile_s, saved_step, step, preempted = None, s.latest, s.start_step, False
    pending: list[tuple[int, dict[str, jax.Array]]] = []  # metrics still on the device
    state_finite = loop.state_finite(run)
    feed = loop.Prefetch(
        s.iterator, lambda b: to_global(b, run.batch_sharding, tc.batch_size), tc.prefetch_depth
    )

    def last_good() -> str:
        where = f"{ckpt.directory}/{saved_step}" if saved_step is not None else None
        return f"the last good checkpoint is {where}" if where else "no checkpoint was saved"

    def fetch() -> dict[str, float]:
        """Bring the pending steps' metrics to the host (one transfer); the newest as
        floats. Stops the run (stop mode) at the first non-finite step."""
        nonlocal skipped
        if not pending:
            return {}
        local = jax.device_get(
            [jax.tree_util.tree_map(lambda x: x.addressable_data(0), m) for _, m in pending]
        )
        got = [(at, {k: float(v) for k, v in m.items()}) for (at, _), m in zip(pending, local)]
        pending.clear()
        for at, m in got:
            if m["nonfinite"]:
                if tc.on_nonfinite == "stop":
                    raise loop.NonFiniteError(
                        f"non-finite loss or gradient at step {at} (loss {m['loss']}, "
                        f"grad_norm {m['grad_norm']}); stopped without saving it: "
                        f"{last_good()} (train.on_nonfinite=skip drops such updates)"
                    )
                skipped += 1
            history[at] = m["loss"]
            window.losses.append(m["loss"])
        return got[-1][1]

    def save(at: int) -> None:
        nonlocal saved_step
        if saved_step == at:
            return
        fetch()  # a non-finite step since the last log stops the run here, unsaved
        if not state_finite(s.state):
            raise loop.NonFiniteError(
                f"the train state at step {at} holds non-finite values; not saved: "
                f"{last_good()}"
            )
        meta = {"mesh": list(s.mesh_shape), "process_count": s.process_count}
        t0 = time.perf_counter()
        # Orbax copies the arrays to the host before returning: the state may be donated
        # to the next step while the files are written.
        ckpt.save(at, s.state, feed.consumed_state, meta)
        save_blocking.append(time.perf_counter() - t0)
        if memory_source == "live_arrays":
            live["during_save"] = max(live["during_save"], loop.live_bytes_per_device())
        saved_step = at

    def run_eval(at: int) -> None:
        nonlocal last_eval, eval_step
        fetch()  # a non-finite step stops the run before its evaluation
        last_eval, eval_step = evaluate(run, s.state.params, s.eval_batches), at
        if s.task is not None:
            view = getattr(run, "inference", None) or run  # PEFT: the combined params
            last_eval.update(
                task_metrics(
                    view, run.full_params(s.state.params), s.eval_batches, s.task.validation,
                    cfg.task.kind, cfg.task.max_answer_len,
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
        fetch()
        if not state_finite(s.state):
            return  # a non-finite state is never saved (the next fetch or save stops)
        best_cfg = dataclasses.replace(cfg.checkpoint, keep=1, async_save=False)
        best = checkpoints.Checkpointer(_join(workdir, BEST_DIR), best_cfg)
        try:
            meta = {"mesh": list(s.mesh_shape), "process_count": s.process_count}
            best.save(at, s.state, feed.consumed_state, {**meta, name: value})
            best.wait()
        finally:
            best.close()
        s.best_value = value
        stats["best_" + name] = value
        if s.primary:
            write_json(_join(workdir, BEST_FILE), {"step": at, "metric": name,
                                                    "value": value})  # fmt: skip

    try:
        while step < tc.num_steps:
            batch = feed.pop()
            t0 = time.perf_counter()
            s.state, step_metrics = run.run(run.train, s.state, batch)  # dispatched
            step += 1
            pending.append((step, step_metrics))
            feed.fill()  # the next batches go to the devices while this step runs
            if compile_s is None:  # the first step: compilation, timed to its end
                jax.block_until_ready(s.state)
                compile_s = time.perf_counter() - t0
                window.start()
            else:
                window.steps += 1
            last = step == tc.num_steps
            logged = step % tc.log_every == 0 or last
            m = fetch() if (logged or on_step is not None) else {}
            if logged:
                window.pause()  # the fetch waited for this step: the window ends here
                if memory_source == "live_arrays":
                    live["steady"] = max(live["steady"], loop.live_bytes_per_device())
                if window.losses:
                    record = _log_record(s, step, m, window, peak)
                    record["skipped_steps"] = skipped
                    record["peak_memory_bytes"] = loop.memory_now(s.devices, live)
                    writer.write(step, record)
                    stats.update(record)
                loop_s, loop_steps = loop_s + window.seconds, loop_steps + window.steps
                window = loop.Window()
            every = (tc.eval_every, cfg.checkpoint.every_steps, tc.plot_every)
            busy = last or any(step % n == 0 for n in every)
            if busy and not logged:
                jax.block_until_ready(s.state)
                window.pause()
            if step % tc.eval_every == 0 or last:
                run_eval(step)
            if step % cfg.checkpoint.every_steps == 0 or last:
                save(step)
            if step % tc.plot_every == 0:
                writer.plot()
            bar.update(step, stats, logged)
            if on_step is not None:
                on_step(step, m)
            if stop.requested(step):
                preempted = True
                bar.write(f"signal {stop.signum}: saving a checkpoint at step {step}")
                save(step)
                break
            if window.started is None and compile_s is not None:
                window.start()
        if not preempted:
            fetch()
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
        "workdir": checkpoints.resolve(workdir),
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
        # The whole loop (input, transfers, dispatch; evals, saves and plots left out).
        "mean_step_s": loop_s / loop_steps if loop_steps else None,
        "loop_tokens_per_second": (
            s.tokens_per_step * loop_steps / loop_s if loop_steps and loop_s else None
        ),
        "skipped_steps": skipped,
        "peak_memory_bytes": loop.memory_now(s.devices, live),
        "memory_source": memory_source,
        "live_bytes": dict(live),
        "save_blocking_s": save_blocking,
        "restore_s": s.restore_s,
        "flops_per_token": s.flops_per_token,
        "flops_train_per_step": s.flops_per_token * s.tokens_per_step,
        "config": cfg,
    }
    if show:
        summary.print_summary(result, workdir)
    return result
