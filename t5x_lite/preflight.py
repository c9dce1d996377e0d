"""Checks a run passes before anything is compiled or written, and the workdir layout.

Each problem is one :class:`~t5x_lite.config.ConfigError` line naming the field,
e.g. ``train.batch_size=6 is not divisible by mesh data*fsdp = 2*2 = 4``; none of
these functions creates or changes a file.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import jax

from t5x_lite import paths
from t5x_lite.config import Config, ConfigError, saved_config, to_dict

CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.model"  # the copy pipeline.get_tokenizer keeps in a workdir
CHECKPOINT_DIR = "checkpoints"
BEST_DIR = "best"  # the best checkpoint by checkpoint.best_metric (fine-tuning)
# Model fields that may change between a run and its resumption (numerics and
# memory, not the parameters' meaning or shapes).
RUNTIME_MODEL_FIELDS = ("dtype", "attention", "attention_impl", "remat_policy", "dropout_rate")


def check_layout(cfg: Config, num_devices: int, process_count: int = 1) -> tuple[int, int, int]:
    """Mesh shape ``(data, fsdp, tensor)``, or a one-line ConfigError for the layout.

    A mesh that needs more devices than a CPU-only host has names the flag that
    splits the CPU (``run_train.py --host_devices=N``).
    """
    try:
        data, fsdp, tensor = cfg.mesh.resolve(num_devices)
    except ConfigError as e:
        sizes = [v for v in (cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor) if v > 0]
        need = math.prod(sizes)
        if need > num_devices and jax.default_backend() == "cpu":
            raise ConfigError(
                f"{e}; on a CPU, run_train.py --host_devices={need} splits it into {need} devices"
            ) from None
        raise
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
    # Processes feed the rows their devices hold (partitioning.data_shard): when a model
    # axis spans processes they share rows, so the process count need not divide rows.
    return data, fsdp, tensor


def check_backend(cfg: Config, devices: list[jax.Device]) -> None:
    """One-line ConfigError for a model setting the devices cannot run.

    ``model.attention='cudnn'`` needs GPUs and ``'splash'`` TPUs: on other devices
    they are refused here, before compilation, instead of failing inside XLA.
    """
    platforms = sorted({d.platform for d in devices})
    need = {"cudnn": "gpu", "splash": "tpu"}.get(cfg.model.attention)
    if need is not None and platforms != [need]:
        raise ConfigError(
            f"model.attention={cfg.model.attention!r} needs {need.upper()} devices; this "
            f"run has {', '.join(platforms)} (jax.default_backend()="
            f"{jax.default_backend()!r}); use model.attention='auto' or 'xla'"
        )


def _padded(model: dict[str, Any]) -> int | None:
    """Token-table rows of a saved model dict (``vocab_size`` padded up)."""
    v, m = model.get("vocab_size"), model.get("vocab_pad_multiple")
    return None if not isinstance(v, int) or not isinstance(m, int) else -(-v // m) * m


def check_workdir(cfg: Config, workdir: str) -> dict[str, Any] | None:
    """The saved config of an existing run in ``workdir`` (None if fresh); read-only.

    Raises ConfigError when its model differs from ``cfg.model`` in anything but
    :data:`RUNTIME_MODEL_FIELDS`, e.g. ``workdir /tmp/run holds a model with
    model.d_model=64; the requested config has model.d_model=128 (choose another
    --workdir)``.
    """
    path = paths.path(workdir, CONFIG_FILE)
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
        saved_model = dict(saved_config(saved)["model"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path} is not a t5x_lite config.json ({e})") from None
    wanted = to_dict(cfg.model)
    # What the model is comes first: a run of another family or architecture is named
    # as such, not by the first of its many differing fields.
    first = ("family", "arch")
    names = set(saved_model) | set(wanted)
    keys = [k for k in first if k in names] + sorted(names - set(first))
    for key in keys:
        if key in RUNTIME_MODEL_FIELDS:
            continue
        if key == "vocab_pad_multiple" and _padded(saved_model) == _padded(wanted):
            continue  # the same table rows either way
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


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """``obj`` as indented JSON at ``path`` (local or a URL), never half-written."""
    paths.write_text(paths.path(path), json.dumps(obj, indent=2) + "\n")


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


def finished_message(cfg: Config, workdir: str) -> str | None:
    """One line when ``workdir`` already holds this run finished (a checkpoint at or past
    ``train.num_steps``; read-only), else None: re-running a finished command then says
    so instead of restoring and re-evaluating it."""
    from t5x_lite import checkpoints

    directory = paths.path(workdir, CHECKPOINT_DIR)
    if not directory.is_dir() or check_workdir(cfg, workdir) is None:
        return None
    ckpt = checkpoints.Checkpointer(os.fspath(directory), cfg.checkpoint, create=False)
    try:
        latest = ckpt.latest_step()
    finally:
        ckpt.close()
    if latest is None or latest < cfg.train.num_steps:
        return None
    return (
        f"{workdir} already holds this run, finished at step {latest} "
        f"(train.num_steps={cfg.train.num_steps}): nothing to train; raise "
        "--config.train.num_steps to continue it, or pass another --workdir"
    )


# float32 values per parameter that the train state holds whatever the batch: the master
# parameters, their gradients and the optimizer's moments (Adafactor's factored moments
# are counted as none: this is a lower bound).
STATE_FLOATS_PER_PARAM = {"adamw": 4, "adafactor": 2}


def check_state_memory(
    cfg: Config, devices: list[jax.Device], mesh_shape: tuple[int, int, int]
) -> None:
    """One-line ConfigError when the train state alone cannot fit, before any compile.

    The state is at least :data:`STATE_FLOATS_PER_PARAM` float32 values per parameter,
    split over the mesh's ``fsdp * tensor`` devices and repeated over its ``data`` axis.
    On a CPU every device shares the host's memory, so all ``data`` copies of the state
    are compared with the host's RAM; on an accelerator each device's share with its
    ``bytes_limit`` (``mesh_shape``: the resolved ``(data, fsdp, tensor)``). Activations come on top
    (a run that passes may still run out of memory; :func:`out_of_memory_message`).
    E.g. ``out of memory: the train state needs at least 4.4 TB (274,878,496,768
    parameters x 16 B: float32 params, gradients and adamw's moments) and this host has
    24.0 GB; use a smaller model.*, optimizer.name=adafactor, or shard it over more
    devices (mesh.fsdp)``.
    """
    from t5x_lite import flops

    n = flops.param_counts(cfg.model)["total"]
    per_param = 4 * STATE_FLOATS_PER_PARAM.get(cfg.optimizer.name, 2)
    data, fsdp, tensor = mesh_shape
    if all(d.platform == "cpu" for d in devices):
        need = n * per_param * data
        have, where = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this host has"
    else:
        stats = devices[0].memory_stats() or {}
        if "bytes_limit" not in stats:
            return
        need = n * per_param // (fsdp * tensor)
        have, where = int(stats["bytes_limit"]), f"each {devices[0].device_kind} has"
    if need <= have:
        return
    raise ConfigError(
        f"out of memory: the train state needs at least {need / 1e9:,.1f} GB ({n:,d} "
        f"parameters x {per_param} B: float32 params, gradients and {cfg.optimizer.name}'s "
        f"moments) and {where} {have / 1e9:.1f} GB; use a smaller model.*, "
        "optimizer.name=adafactor, or shard it over more devices (mesh.fsdp)"
    )


def check_writable(workdir: str) -> None:
    """One-line ConfigError unless ``workdir`` can be written (or created): the nearest
    existing directory on its path must be writable; checked before any data is read
    or compiled, e.g. ``--workdir=/data/ro/run: /data/ro is not writable (Permission
    denied); choose another --workdir``. A URL (``gs://bucket/run``) needs its client
    and bucket (:func:`t5x_lite.paths.check_url`); write permission on a bucket shows
    at the first write."""
    if paths.is_url(workdir):
        paths.check_url(workdir, "--workdir")
        return
    path = os.path.abspath(workdir)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        raise ConfigError(
            f"--workdir={workdir}: {path} is not a directory; choose another --workdir"
        )
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(
            f"--workdir={workdir}: {path} is not writable (Permission denied); choose another "
            "--workdir"
        )
