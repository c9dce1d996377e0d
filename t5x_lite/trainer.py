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
from jax.sharding import NamedSharding, PartitionSpec

from t5x_lite import checkpoints, flops, losses, partitioning, steps
from t5x_lite import metrics as metrics_lib
from t5x_lite.config import Config, ConfigError, to_dict
from t5x_lite.progress import Progress

CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.model"  # the copy pipeline.get_tokenizer keeps in a workdir
CHECKPOINT_DIR = "checkpoints"
# Model fields that may change between a run and its resumption (numerics and
# memory, not the parameters' meaning or shapes).
RUNTIME_MODEL_FIELDS = ("dtype", "attention_impl", "remat_policy", "dropout_rate")


# --------------------------------------------------------------------------- checks


def check_layout(cfg: Config, num_devices: int, process_count: int = 1) -> tuple[int, int, int]:
    """Mesh shape ``(data, fsdp, tensor)``, or a one-line ConfigError for the layout."""
    data, fsdp, tensor = cfg.mesh.resolve(num_devices)
    rows = cfg.train.batch_size
    split = data * fsdp
    if rows % split:
        raise ConfigError(
            f"train.batch_size={rows} is not divisible by mesh data*fsdp = {data}*{fsdp} = {split}"
        )
    micro = rows // cfg.train.microbatches
    if micro % split:
        raise ConfigError(
            f"train.batch_size/train.microbatches = {rows}/{cfg.train.microbatches} = {micro} "
            f"rows per microbatch is not divisible by mesh data*fsdp = {split}"
        )
    if rows % process_count:
        raise ConfigError(
            f"train.batch_size={rows} is not divisible by the {process_count} processes"
        )
    return data, fsdp, tensor


def check_backend(cfg: Config, devices: list[jax.Device]) -> None:
    """One-line ConfigError for a model setting the devices cannot run.

    ``model.attention_impl='cudnn'`` needs GPUs: on CPU devices it is refused here,
    before compilation, instead of failing inside XLA.
    """
    platforms = sorted({d.platform for d in devices})
    if cfg.model.attention_impl == "cudnn" and platforms != ["gpu"]:
        raise ConfigError(
            f"model.attention_impl='cudnn' needs GPU devices; this run has "
            f"{', '.join(platforms)} (jax.default_backend()={jax.default_backend()!r}); "
            "use model.attention_impl='xla'"
        )


def check_workdir(cfg: Config, workdir: str) -> dict[str, Any] | None:
    """The saved config of an existing run in ``workdir`` (None if fresh); read-only.

    Raises ConfigError when its model differs from ``cfg.model`` in anything but
    :data:`RUNTIME_MODEL_FIELDS`, e.g. ``workdir /tmp/run holds a model with
    model.d_model=64; the requested config has model.d_model=128 (choose another
    --workdir)``.
    """
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            saved = json.load(f)
        saved_model = dict(saved["model"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path} is not a t5x_lite config.json ({e})") from None
    wanted = to_dict(cfg.model)
    for key in sorted(set(saved_model) | set(wanted)):
        if key in RUNTIME_MODEL_FIELDS:
            continue
        if saved_model.get(key) != wanted.get(key):
            raise ConfigError(
                f"workdir {workdir} holds a model with model.{key}={saved_model.get(key)!r}; "
                f"the requested config has model.{key}={wanted.get(key)!r} (choose another "
                "--workdir)"
            )
    # The optimizer-state layout of its checkpoints: the optimizer, and whether the
    # chain clips and decays (each adds a state entry).
    opt = saved.get("optimizer", {})
    layout = {
        "optimizer.name": (opt.get("name", cfg.optimizer.name), cfg.optimizer.name),
        "optimizer.grad_clip_norm > 0": (
            opt.get("grad_clip_norm", cfg.optimizer.grad_clip_norm) > 0,
            cfg.optimizer.grad_clip_norm > 0,
        ),
        "optimizer.weight_decay > 0": (
            opt.get("weight_decay", cfg.optimizer.weight_decay) > 0,
            cfg.optimizer.weight_decay > 0,
        ),
    }
    for name, (there, here) in layout.items():
        if there != here:
            raise ConfigError(
                f"workdir {workdir} holds a run with {name} = {there!r}; the requested "
                f"config has {here!r}, whose optimizer state differs (choose another --workdir)"
            )
    return saved


def _write_json(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


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


def replicated_value(tree: Any) -> Any:
    """Host numpy copy of replicated arrays (also when they span several processes)."""
    return jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_data(0)), tree)


def to_global(local: dict[str, np.ndarray], sharding: Any) -> dict[str, jax.Array]:
    """Per-process rows ``[B / P, ...]`` -> global arrays ``[B, ...]`` split by ``sharding``."""
    n = jax.process_count()
    return {
        k: jax.make_array_from_process_local_data(
            sharding, np.asarray(v), (v.shape[0] * n, *v.shape[1:])
        )
        for k, v in local.items()
    }


def evaluate(run: steps.Steps, params: Any, batches: list[dict[str, jax.Array]]) -> dict:
    """Mean token CE (``loss``), ``perplexity``, ``accuracy`` (+ sentence metrics)."""
    total: dict[str, float] = {}
    for batch in batches:
        sums = replicated_value(run.run(run.eval, params, batch))
        for k, v in sums.items():
            total[k] = total.get(k, 0.0) + float(v)
    return losses.summarize(total) if total else {}


def sampleable_ids(tokenizer: Any) -> np.ndarray:
    """``[tokenizer.vocab_size]`` bool: ids a text continuation may contain.

    Reserved pieces (pad, BOS, [CLS], [SEP], [MASK], UL2 mode tokens, sentinels) are
    excluded; EOS stays, since sampling it ends the continuation.
    """
    allowed = ~np.asarray(tokenizer.special_mask, bool)[: int(tokenizer.vocab_size)].copy()
    allowed[tokenizer.eos_id] = True
    return allowed


def sample_ids(
    run: steps.Steps,
    params: Any,
    tokenizer: Any,
    prompt: str,
    num_tokens: int,
    seq_len: int,
    temperature: float = 0.8,
    top_k: int = 40,
    seed: int = 0,
) -> tuple[list[int], list[int]]:
    """Decoder only: ``(prompt_ids, new_ids)``, up to ``num_tokens`` sampled ids (no KV cache).

    Each new token re-runs the model on a fixed ``[1, seq_len]`` buffer (right-padded;
    causal attention keeps padding from affecting earlier positions) and samples the
    logits at the last filled position with ``temperature`` (0 = greedy) among the
    ``top_k`` most likely tokens. Only ids below ``tokenizer.vocab_size`` are candidates:
    a model whose embedding table is larger than the tokenizer (``model.vocab_size`` >
    ``data.tokenizer_vocab_size``) has logits for ids that decode to nothing, and those
    are masked out, and so are the tokenizer's reserved pieces (pad, [MASK], sentinels,
    ...: ``tokenizer.special_mask``) other than EOS. Sampling stops before EOS.
    """
    prompt_ids = list(tokenizer.encode(prompt))[-(seq_len - 1) :]
    ids = list(prompt_ids)
    start = len(ids)
    rng = np.random.default_rng(seed)
    limit = int(tokenizer.vocab_size)
    pad = max(getattr(tokenizer, "pad_id", 0), 0)
    reserved = ~sampleable_ids(tokenizer)  # [V_tokenizer] bool
    replicated = NamedSharding(run.mesh, PartitionSpec())
    for _ in range(num_tokens):
        window = ids[-seq_len:]
        buf = np.full((1, seq_len), pad, np.int32)
        buf[0, : len(window)] = window
        batch = {"input_ids": jax.make_array_from_process_local_data(replicated, buf)}
        # [V_model] -> [V_tokenizer]: ids past the tokenizer's vocabulary are never drawn.
        logits = replicated_value(run.run(run.logits, params, batch))[0, len(window) - 1, :limit]
        logits = np.where(reserved, -np.inf, logits.astype(np.float64))
        if temperature <= 0:
            nxt = int(np.argmax(logits))
        else:
            z = logits.astype(np.float64) / temperature
            top = np.argsort(z)[-top_k:]
            p = np.exp(z[top] - z[top].max())
            nxt = int(top[rng.choice(len(top), p=p / p.sum())])
        if nxt == tokenizer.eos_id:
            break
        ids.append(nxt)
    return prompt_ids, ids[start:]


# --------------------------------------------------------------------------- train


@dataclasses.dataclass
class _Window:
    """Train-only time and tokens since the last log (evals and saves excluded)."""

    seconds: float = 0.0
    steps: int = 0
    losses: list[float] = dataclasses.field(default_factory=list)


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
    from t5x_lite.data import pipeline

    cfg = cfg.validate()  # trained as given: entry points apply a scaling plan first
    devices = list(devices if devices is not None else jax.devices())
    pidx, pcount = jax.process_index(), jax.process_count()
    mesh_shape = check_layout(cfg, len(devices), pcount)
    check_backend(cfg, devices)
    check_workdir(cfg, workdir)
    peak = flops.peak_flops_per_device(cfg.train.peak_flops)
    primary = pidx == 0
    show = primary and (progress is not False)
    bar = cfg.train.progress_bar if progress is None else bool(progress)

    # Checks that read files (lengths, tokenizer, corpus, splits) come before anything
    # is written into the workdir: the tokenizer is read from the workdir only when a
    # run there already holds one, and both data streams are built (and validated).
    enc_dec = cfg.model.family == "encoder_decoder"
    target_len = pipeline.lengths(cfg).target_len if enc_dec else None
    run_tokenizer = os.path.join(workdir, TOKENIZER_FILE)
    resuming_tokenizer = os.path.isfile(run_tokenizer)
    tokenizer = pipeline.get_tokenizer(cfg, workdir if resuming_tokenizer else None)
    iterator = pipeline.train_iterator(cfg, tokenizer, pidx, pcount)
    eval_local = pipeline.eval_batches(cfg, tokenizer, cfg.train.eval_batches, pidx, pcount)

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
    start_step = int(replicated_value(state.step))

    if data_state is not None:
        iterator.set_state(data_state)
    eval_global = [to_global(b, run.batch_sharding) for b in eval_local]
    if primary:  # only now: a start that fails above leaves the old config.json alone
        _write_json(os.path.join(workdir, CONFIG_FILE), to_dict(cfg))

    tokens_per_step = cfg.train.batch_size * cfg.data.seq_len
    flops_per_token = flops.train_flops_per_token(cfg.model, cfg.data.seq_len, target_len)

    writer = metrics_lib.MetricsWriter(workdir, enabled=primary, resume_step=start_step)
    bar_ = Progress(cfg.train.num_steps, start_step, bar=bar, enabled=show)
    if latest is not None:
        bar_.write(f"resumed from {ckpt.directory}/{latest} (restore {restore_s:.2f}s)")
    # save_on_preemption=False keeps the default signal behaviour (SIGTERM ends the
    # process, Ctrl-C raises KeyboardInterrupt) instead of a handler that would only
    # set a flag nobody acts on.
    stop = _StopFlag(handle_signals and cfg.checkpoint.save_on_preemption)

    stats: dict[str, Any] = {}
    history: dict[int, float] = {}
    window = _Window()
    last_eval: dict[str, float] = {}
    eval_step = None
    save_blocking: list[float] = []
    step_times: list[float] = []
    compile_s = None
    saved_step = latest
    step = start_step
    preempted = False

    def save(at: int) -> None:
        nonlocal saved_step
        if saved_step == at:
            return
        meta = {"mesh": list(mesh_shape), "process_count": pcount}
        t0 = time.perf_counter()
        # The live state is donated to the next step; the background save reads a copy.
        snapshot = run.run(run.copy, state) if ckpt.needs_copy else state
        ckpt.save(at, snapshot, iterator.get_state(), meta)
        save_blocking.append(time.perf_counter() - t0)
        saved_step = at

    def run_eval(at: int) -> None:
        nonlocal last_eval, eval_step
        last_eval = evaluate(run, state.params, eval_global)
        eval_step = at
        record = {f"eval_{k}": v for k, v in last_eval.items()}
        if at > start_step or latest is None:  # a finished run re-opened logs nothing new
            writer.write(at, record)
        stats.update(record)

    try:
        while step < cfg.train.num_steps:
            local = next(iterator)
            batch = to_global(local, run.batch_sharding)
            t0 = time.perf_counter()
            state, step_metrics = run.run(run.train, state, batch)
            m = replicated_value(step_metrics)
            dt = time.perf_counter() - t0
            step += 1
            if compile_s is None:
                compile_s = dt
            else:
                window.seconds += dt
                window.steps += 1
                step_times.append(dt)
            m = {k: float(v) for k, v in m.items()}
            history[step] = m["loss"]
            window.losses.append(m["loss"])
            logged = step % cfg.train.log_every == 0 or step == cfg.train.num_steps
            if logged:
                tps = tokens_per_step * window.steps / window.seconds if window.seconds else None
                achieved = flops_per_token * tps if tps else None
                record = {
                    **{k: v for k, v in m.items() if k != "loss"},
                    "loss": float(np.mean(window.losses)),
                    "tokens_per_second": tps,
                    "flops_per_second": achieved,
                    "mfu": achieved / (peak * len(devices)) if (achieved and peak) else None,
                    "tokens_seen": step * tokens_per_step,
                }
                writer.write(step, record)
                stats.update(record)
                window = _Window()
            if step % cfg.train.eval_every == 0 or step == cfg.train.num_steps:
                run_eval(step)
            if step % cfg.checkpoint.every_steps == 0 or step == cfg.train.num_steps:
                save(step)
            if step % cfg.train.plot_every == 0:
                writer.plot()
            bar_.update(step, stats, logged)
            if on_step is not None:
                on_step(step, m)
            if stop.enabled and stop.requested():
                preempted = True
                bar_.write(f"signal {stop.signum}: saving a checkpoint at step {step}")
                save(step)
                break
        if not preempted:
            if eval_step != step:
                run_eval(step)
            save(step)
        ckpt.wait()
    finally:
        stop.restore()
        bar_.close()
        ckpt.close()
    plots = writer.plot()
    writer.close()

    sample_text = None
    sampled: list[int] | None = None
    # Every process runs the sampler (its forward pass is a collective); process 0 prints.
    if sample and not preempted and cfg.model.family == "decoder":
        prompt_ids, sampled = sample_ids(
            run,
            state.params,
            tokenizer,
            cfg.train.sample_prompt,
            cfg.train.sample_tokens,
            cfg.data.seq_len,
            seed=cfg.train.seed,
        )
        # Decoding prompt and continuation together keeps the space between them.
        sample_text = tokenizer.decode(prompt_ids + sampled)
    result = {
        "final_eval_loss": last_eval.get("loss"),
        "final_eval": last_eval,
        "eval_step": eval_step,
        "final_train_loss": history.get(step),
        "steps": step,
        "start_step": start_step,
        "tokens_seen": step * tokens_per_step,
        "wall_time_s": time.perf_counter() - wall_start,
        "losses": history,
        "preempted": preempted,
        "workdir": os.path.abspath(workdir),
        "checkpoint_dir": ckpt.directory,
        "checkpoint_step": saved_step,
        "plots": plots,
        "sample": sample_text,
        "sample_ids": sampled,
        "compile_s": compile_s,
        "mean_step_s": float(np.mean(step_times)) if step_times else None,
        "save_blocking_s": save_blocking,
        "restore_s": restore_s,
        "flops_per_token": flops_per_token,
        "config": cfg,
    }
    if show:
        _print_summary(result, workdir)
    return result


def _print_summary(result: dict[str, Any], workdir: str) -> None:
    ev = result["final_eval"]
    lines = []
    if result["preempted"]:
        lines.append(
            f"stopped at step {result['steps']}; checkpoint saved, run the same command "
            "again to resume"
        )
    if ev:
        extra = ", ".join(f"{k} {v:.4f}" for k, v in ev.items() if k not in ("loss", "perplexity"))
        lines.append(
            f"eval at step {result['eval_step']}: loss {ev['loss']:.4f}, perplexity "
            f"{ev['perplexity']:.2f}" + (f", {extra}" if extra else "")
        )
    if result["sample"] is not None:
        lines.append(f"sample: {result['sample']!r}")
    timing = []
    if result["compile_s"] is not None:
        timing.append(f"first step (compile) {result['compile_s']:.1f} s")
    if result["mean_step_s"] is not None:
        timing.append(f"step {1e3 * result['mean_step_s']:.1f} ms")
    saves = result["save_blocking_s"]
    if saves:
        first, rest = 1e3 * saves[0], [1e3 * x for x in saves[1:]]
        text = f"checkpoint save blocked the loop {first:.1f} ms (first save"
        if rest:
            text += f"), {float(np.median(rest)):.1f} ms (median of the other {len(rest)}"
        timing.append(text + ")")
    if result["restore_s"] is not None:
        timing.append(f"restore {result['restore_s']:.2f} s")
    if timing:
        lines.append("timing: " + ", ".join(timing))
    lines.append(f"checkpoints: {result['checkpoint_dir']} (step {result['checkpoint_step']})")
    for p in result["plots"]:
        lines.append(f"plot: {p}")
    lines.append(f"metrics: {os.path.join(os.path.abspath(workdir), metrics_lib.METRICS_FILE)}")
    lines.append(
        "tensorboard: tensorboard --logdir "
        f"{os.path.join(os.path.abspath(workdir), metrics_lib.TB_DIR)}"
    )
    print("\n".join(lines), flush=True)
