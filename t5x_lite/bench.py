"""Train-step benchmark on synthetic batches: step time, tokens/s and MFU as one JSON line.

Runs the trainer's own jitted, sharded step (:func:`t5x_lite.steps.for_config`) on
random token batches of the preset's family shape, with no data pipeline,
checkpoints or logging, so it isolates the compiled step::

    python -m t5x_lite.bench --config configs/gpt2_small.py --batch 32 --seq 1024 \\
        --dtype bfloat16 --steps 20

prints e.g. ``{"config": "configs/gpt2_small.py", ..., "step_s": 0.21,
"tokens_per_s": 156000.0, "mfu": 0.41, ...}``. Timing: the first step (compile) is
reported as ``compile_s``; ``--warmup`` more steps run untimed; then ``--steps``
steps are dispatched back to back and timed until the last one finishes
(``step_s`` = that time / steps). ``tokens_per_s`` counts ``batch x seq`` input
tokens per step and ``mfu`` = ``flops.train_flops_per_token x tokens_per_s /
(devices x peak)`` with the peak from ``--peak_flops`` (``auto``: from the device
kind; null on a CPU, where ``achieved_flops_per_s`` is still given).

Synthetic batches (all rows full, one document per row):

* decoder: ``input_ids``, ``labels``, ``loss_weights``, ``segment_ids``, ``positions``;
* encoder: the same with 15% of positions weighted (MLM), ``token_type_ids`` when
  the model has segment embeddings, ``next_sentence_label`` with a sentence head;
* encoder_decoder: ``--seq`` encoder tokens and ``--target_len`` decoder tokens
  (default: the objective's row lengths, :func:`t5x_lite.config.row_lengths`, as the
  trainer and the planner count them: span corruption's 114 targets for 512 inputs).

Imports only jax, flax, optax, numpy and t5x_lite's config / presets / models / partitioning
/ steps / optim / losses / flops (no tfds, grain or gin; absl only as flax imports
it). Reading a preset file runs its ``get_config()``, which needs ``ml_collections``
(the presets build ConfigDicts): on a machine without it, install or carry its wheel
(``pip install ml_collections``), or pass a JSON config (``config.json`` of a run
directory, or ``python run_train.py --config=... --print_config > cfg.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import jax
import numpy as np

from t5x_lite import config as C
from t5x_lite import flops, partitioning, presets, steps
from t5x_lite.config.errors import ArgumentParser


def load_values(spec: str) -> dict[str, Any]:
    """Nested config dict of a ``.json`` file or a preset (:func:`t5x_lite.presets.load`:
    ``configs/<name>.py`` or ``<name>``, with optional ``:variant``)."""
    if spec.endswith(".json"):
        if not os.path.isfile(spec):
            raise C.ConfigError(f"config file not found: {spec}")
        with open(spec) as f:
            return json.load(f)
    return presets.load(spec).to_dict()


def bench_config(values: dict[str, Any], args: argparse.Namespace) -> C.Config:
    """The preset with the benchmark's batch, lengths, dtype and mesh applied."""
    values = {k: dict(v) for k, v in values.items()}
    values["data"]["seq_len"] = args.seq
    if args.target_len is not None:
        values["data"]["target_len"] = args.target_len
    values["train"].update(batch_size=args.batch, microbatches=args.microbatches)
    values["train"]["num_steps"] = 1 + args.warmup + args.steps
    for key, value in (
        ("dtype", args.dtype),
        ("attention", args.attention_impl),
        ("remat_policy", args.remat),
    ):
        if value is not None:
            values["model"][key] = value
    data, fsdp, tensor = (int(x) for x in args.mesh.split(","))
    values["mesh"] = {"data": data, "fsdp": fsdp, "tensor": tensor}
    values["scaling"] = {}
    return C.from_dict(values)


def target_length(cfg: C.Config) -> int | None:
    """Decoder row length of an encoder-decoder: the objective table's, as the trainer
    and the planner count it (span corruption at seq_len 512 -> 114)."""
    if cfg.model.family != "encoder_decoder":
        return None
    return C.row_lengths(cfg.data).target_len


def synthetic_batch(cfg: C.Config, seed: int = 0) -> dict[str, np.ndarray]:
    """Random full rows of the family's batch layout (see the module docstring).

    E.g. a decoder with ``batch 2, seq 4``: ``input_ids`` ``[2, 4]`` ids in
    ``[1, vocab)``, ``segment_ids`` all 1, ``positions`` ``[[0, 1, 2, 3]] * 2``.
    """
    rng = np.random.default_rng(seed)
    m, b, t = cfg.model, cfg.train.batch_size, cfg.data.seq_len
    vocab = cfg.data.tokenizer_vocab_size or m.vocab_size

    def ids(length: int) -> np.ndarray:
        return rng.integers(1, vocab, (b, length), dtype=np.int32)

    def row(length: int) -> tuple[np.ndarray, np.ndarray]:
        return np.ones((b, length), np.int32), np.tile(np.arange(length, dtype=np.int32), (b, 1))

    seg, pos = row(t)
    batch = {"input_ids": ids(t), "segment_ids": seg, "positions": pos}
    if m.family == "decoder":
        batch["labels"] = ids(t)
        batch["loss_weights"] = np.ones((b, t), np.float32)
    elif m.family == "encoder":
        batch["labels"] = ids(t)
        batch["loss_weights"] = (rng.random((b, t)) < 0.15).astype(np.float32)
        if m.type_vocab_size:
            batch["token_type_ids"] = np.zeros((b, t), np.int32)
        if m.sentence_head:
            batch["next_sentence_label"] = rng.integers(0, 2, (b,), dtype=np.int32)
    else:
        u = target_length(cfg)
        dseg, dpos = row(u)
        batch.update(
            decoder_input_ids=ids(u),
            decoder_segment_ids=dseg,
            decoder_positions=dpos,
            labels=ids(u),
            loss_weights=np.ones((b, u), np.float32),
        )
    return batch


def abstract_inputs(run_: steps.Steps, cfg: C.Config) -> tuple[Any, Any]:
    """``(state, batch)`` as shape/dtype/sharding structs: what lowering needs, nothing
    allocated (a ``llama_1b`` state is 18 GB before its first step)."""

    def struct(x: Any, sharding: Any) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    state = jax.tree_util.tree_map(struct, run_.abstract_state, run_.state_shardings)
    batch = {
        k: struct(v, run_.batch_sharding) for k, v in synthetic_batch(cfg).items()
    }  # numpy arrays: [B, T] ints and weights, a few MB at most
    return state, batch


def memory_of(compiled: Any, device: Any) -> dict[str, Any]:
    """Device memory of a step: the backend's ``memory_stats()`` peak where it has one
    (GPU, TPU), else the compiled step's ``memory_analysis()``.

    The analysis gives bytes per device of the step's arguments (state + batch), its
    outputs, the outputs that reuse donated arguments (``alias``) and its temporaries;
    the step's footprint is ``arguments + outputs - alias + temporaries``. E.g. a
    donated state of 4 GB, a batch of 0.1 GB, outputs of 4 GB all aliased and 2 GB of
    temporaries: 4.1 + 4 - 4 + 2 = 6.1 GB.
    """
    out: dict[str, Any] = {"peak_bytes": None, "memory_source": None}
    analysis = compiled.memory_analysis() if compiled is not None else None
    if analysis is not None:
        a = {
            name: int(getattr(analysis, f"{name}_size_in_bytes", 0) or 0)
            for name in ("argument", "output", "alias", "temp", "generated_code")
        }
        out["memory_analysis"] = a
        out["peak_bytes"] = a["argument"] + a["output"] - a["alias"] + a["temp"]
        out["memory_source"] = "memory_analysis"
    stats = getattr(device, "memory_stats", lambda: None)() or {}
    if stats.get("peak_bytes_in_use"):
        out["peak_bytes"] = int(stats["peak_bytes_in_use"])
        out["memory_source"] = "memory_stats"
        out["bytes_limit"] = stats.get("bytes_limit")
    return out


def _record(cfg: C.Config, mesh: Any, devices: list[Any], params: int) -> dict[str, Any]:
    """The fields every line shares: what was measured and how it was set up."""
    return {
        "family": cfg.model.family,
        "arch": cfg.model.arch,
        "params": params,
        "batch": cfg.train.batch_size,
        "seq": cfg.data.seq_len,
        "target_len": target_length(cfg),
        "dtype": cfg.model.dtype,
        "optimizer": cfg.optimizer.name,
        "attention_impl": cfg.model.attention_impl,
        "remat_policy": cfg.model.remat_policy,
        "microbatches": cfg.train.microbatches,
        "mesh": dict(zip(mesh.axis_names, (int(x) for x in mesh.devices.shape))),
        "devices": len(devices),
        "device_kind": devices[0].device_kind,
        "backend": jax.default_backend(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "jax": jax.__version__,
    }


def _check_backend(cfg: C.Config) -> None:
    if cfg.model.attention_impl == "cudnn" and jax.default_backend() != "gpu":
        raise C.ConfigError(
            f"model.attention='cudnn' needs GPU devices; the backend is "
            f"{jax.default_backend()!r} (use --attention xla)"
        )


def compile_only(cfg: C.Config) -> dict[str, Any]:
    """Lower and compile the train step from abstract shapes (nothing allocated); the
    JSON record with the compiled step's memory analysis (bytes per device)."""
    _check_backend(cfg)
    devices = jax.devices()
    cfg.mesh.resolve(len(devices))
    mesh = partitioning.make_mesh(cfg.mesh, devices)
    run_ = steps.for_config(cfg, mesh)
    state, batch = abstract_inputs(run_, cfg)
    t0 = time.perf_counter()
    compiled = run_.run(lambda: run_.train.lower(state, batch).compile())
    compile_s = time.perf_counter() - t0
    params = int(sum(x.size for x in jax.tree_util.tree_leaves(run_.abstract_state.params)))
    record = _record(cfg, mesh, devices, params)
    record.update(compile_s=round(compile_s, 3), **memory_of(compiled, None))
    record["memory_source"] = "memory_analysis (compile only)"
    return record


def run(cfg: C.Config, num_steps: int, warmup: int, peak_spec: str) -> dict[str, Any]:
    """Compile, warm up and time ``num_steps`` train steps of ``cfg``; the JSON record."""
    _check_backend(cfg)
    devices = jax.devices()
    cfg.mesh.resolve(len(devices))
    mesh = partitioning.make_mesh(cfg.mesh, devices)
    run_ = steps.for_config(cfg, mesh)
    with jax.set_mesh(mesh):
        batch = jax.device_put(synthetic_batch(cfg), run_.batch_sharding)
    state = run_.run(run_.init, jax.random.key(cfg.train.seed))
    jax.block_until_ready(state)

    t0 = time.perf_counter()
    train = run_.run(lambda: run_.train.lower(state, batch).compile())
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    state, metrics = run_.run(train, state, batch)
    first_loss = float(jax.device_get(metrics["loss"]))
    first_step_s = time.perf_counter() - t0
    for _ in range(warmup):
        state, metrics = run_.run(train, state, batch)
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for _ in range(num_steps):
        state, metrics = run_.run(train, state, batch)
    jax.block_until_ready((state, metrics))
    step_s = (time.perf_counter() - t0) / num_steps

    tokens = cfg.train.batch_size * cfg.data.seq_len
    per_token = flops.flops_per_token_of(cfg.model, cfg.data)
    tps = tokens / step_s
    peak = flops.peak_flops_per_device(peak_spec)
    params = int(sum(x.size for x in jax.tree_util.tree_leaves(state.params)))
    return {
        **_record(cfg, mesh, devices, params),
        "compile_s": round(compile_s, 3),
        "first_step_s": round(first_step_s, 3),
        "steps": num_steps,
        "step_s": step_s,
        "tokens_per_s": tps,
        "flops_per_token": per_token,
        "flops_train_per_step": per_token * tokens,
        "achieved_flops_per_s": per_token * tps,
        "peak_flops_per_device": peak,
        "mfu": per_token * tps / (peak * len(devices)) if peak else None,
        **memory_of(train, devices[0]),
        "loss_first": first_loss,
        "loss_last": float(jax.device_get(metrics["loss"])),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(prog="python -m t5x_lite.bench", description=__doc__.split("\n")[0])
    p.add_argument(
        "--config",
        "--preset",
        dest="config",
        required=True,
        help="preset configs/<name>.py or <name> (needs ml_collections), or a config .json",
    )
    p.add_argument("--batch", type=int, default=8, help="global batch, rows")
    p.add_argument("--seq", type=int, default=128, help="input tokens per row")
    p.add_argument("--target_len", type=int, default=None, help="encoder-decoder targets")
    p.add_argument("--dtype", default=None, help="model compute dtype (default: the preset's)")
    p.add_argument(
        "--attention",
        "--attention_impl",
        dest="attention_impl",
        default=None,
        help="model.attention: auto | xla | cudnn | splash (default: the preset's)",
    )
    p.add_argument("--remat", default=None, help="none | full | dots (default: the preset's)")
    p.add_argument("--microbatches", type=int, default=1)
    p.add_argument("--mesh", default="-1,1,1", help="data,fsdp,tensor (-1 fills)")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after the compile")
    p.add_argument("--peak_flops", default="auto", help="per-device peak: auto, a name, a number")
    p.add_argument("--figure", default=None, help="a label copied into the JSON line")
    p.add_argument(
        "--compile_only",
        action="store_true",
        help="lower + compile from abstract shapes and report the memory analysis; no step",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        if args.steps < 1 or args.warmup < 0:
            raise C.ConfigError(f"--steps={args.steps} must be >= 1 and --warmup >= 0")
        cfg = bench_config(load_values(args.config), args)
        if args.compile_only:
            measured = compile_only(cfg)
        else:
            measured = run(cfg, args.steps, args.warmup, args.peak_flops)
        record = {"figure": args.figure, "config": args.config, **measured}
    except (C.ConfigError, ValueError) as e:
        text = str(e).strip()
        sys.exit(f"error: {text.splitlines()[0] if text else type(e).__name__}")
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
