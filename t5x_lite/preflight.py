"""Checks a run passes before anything is compiled or written, and the workdir layout.

Each problem is one :class:`~t5x_lite.config.ConfigError` line naming the field,
e.g. ``train.batch_size=6 is not divisible by mesh data*fsdp = 2*2 = 4``; none of
these functions creates or changes a file.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax

from t5x_lite.config import Config, ConfigError, to_dict

CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.model"  # the copy pipeline.get_tokenizer keeps in a workdir
CHECKPOINT_DIR = "checkpoints"
BEST_DIR = "best"  # the best checkpoint by checkpoint.best_metric (fine-tuning)
# Model fields that may change between a run and its resumption (numerics and
# memory, not the parameters' meaning or shapes).
RUNTIME_MODEL_FIELDS = ("dtype", "attention_impl", "remat_policy", "dropout_rate")


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


def write_json(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def out_of_memory_message(cfg: Config, error: BaseException) -> str | None:
    """One line for an XLA out-of-memory error (None for any other error), naming the
    shape's levers: batch, sequence length, microbatches and remat.

    E.g. ``out of memory (Out of memory allocating 107039856848 bytes) training
    train.batch_size=32 x data.seq_len=1024 with train.microbatches=1 and
    model.remat_policy='none'; lower train.batch_size or data.seq_len, raise
    train.microbatches, set model.remat_policy=full, or use the preset's :cpu variant``.
    """
    text = str(error)
    if "RESOURCE_EXHAUSTED" not in text:
        return None
    first = next((line.strip() for line in text.splitlines() if "RESOURCE_EXHAUSTED" in line), "")
    cause = first.split("RESOURCE_EXHAUSTED:", 1)[-1].strip()[:160]
    return (
        f"out of memory ({cause}) training train.batch_size={cfg.train.batch_size} x "
        f"data.seq_len={cfg.data.seq_len} with train.microbatches={cfg.train.microbatches} "
        f"and model.remat_policy={cfg.model.remat_policy!r}; lower train.batch_size or "
        "data.seq_len, raise train.microbatches, set model.remat_policy=full, or use the "
        "preset's :cpu variant"
    )
