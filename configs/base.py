"""Shared builder of preset ConfigDicts.

Every preset in this folder is ``get_config()`` returning :func:`make` of its
sections; defaults come from the typed dataclasses in :mod:`t5x_lite.config`, so a
preset lists only what differs. Fields whose default is ``None`` become typed
placeholders so that ``--config.model.head_dim=64`` works from the command line.

Every preset takes an optional variant, ``--config=configs/<name>.py:<variant>``, a
comma-separated list of names from :data:`VARIANTS` applied in order, e.g.
``configs/gpt2_tiny.py:smoke,bf16``.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import ml_collections
from ml_collections import config_dict

from t5x_lite import config as C

# Named variants a preset can be loaded with (``configs/<name>.py:<variant>[,<variant>]``).
VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    # A quick end-to-end check of a preset: 20 steps, small evaluations.
    "smoke": {
        "train": {"num_steps": 20, "log_every": 5, "eval_every": 10, "eval_batches": 1},
        "checkpoint": {"every_steps": 10},
    },
    # bfloat16 compute with float32 master params (accelerators).
    "bf16": {"model": {"dtype": "bfloat16"}},
    # All devices on fsdp: parameters and optimizer state sharded ZeRO-3 style.
    "fsdp": {"mesh": {"data": 1, "fsdp": -1, "tensor": 1}},
    # Megatron-style model parallelism on every device.
    "tensor": {"mesh": {"data": 1, "fsdp": 1, "tensor": -1}},
    # Rematerialise each layer (trade compute for activation memory).
    "remat": {"model": {"remat_policy": "full"}},
}


def apply_variant(cfg: ml_collections.ConfigDict, variant: str | None) -> None:
    """Apply ``variant`` (comma-separated names from :data:`VARIANTS`) to ``cfg`` in place."""
    for name in filter(None, (variant or "").split(",")):
        if name not in VARIANTS:
            raise C.ConfigError(
                f"unknown preset variant {name!r} (known: {', '.join(sorted(VARIANTS))})"
            )
        for section, values in VARIANTS[name].items():
            for key, value in values.items():
                cfg[section][key] = value


def _section(cls: type, overrides: dict[str, Any] | None) -> ml_collections.ConfigDict:
    hints = typing.get_type_hints(cls)
    out = ml_collections.ConfigDict()
    overrides = dict(overrides or {})
    names = {f.name for f in dataclasses.fields(cls)}
    for key in overrides:
        if key not in names:
            raise C.ConfigError(f"unknown config field {cls.__name__}.{key}")
    for f in dataclasses.fields(cls):
        default = C.to_dict(cls())[f.name]
        value = overrides.get(f.name, default)
        if value is None:
            inner = [a for a in typing.get_args(hints[f.name]) if a is not type(None)]
            out[f.name] = config_dict.placeholder(inner[0] if inner else str)
        elif isinstance(value, list | tuple):
            out[f.name] = tuple(value)
        else:
            out[f.name] = value
    return out


def make(
    model: dict[str, Any],
    data: dict[str, Any] | None = None,
    optimizer: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
    mesh: dict[str, Any] | None = None,
    checkpoint: dict[str, Any] | None = None,
    scaling: dict[str, Any] | None = None,
    variant: str | None = None,
) -> ml_collections.ConfigDict:
    """A locked ConfigDict with all seven sections (unknown fields are errors).

    ``variant`` names entries of :data:`VARIANTS` applied after the preset's values.
    """
    cfg = ml_collections.ConfigDict()
    cfg.model = _section(C.ModelConfig, model)
    cfg.data = _section(C.DataConfig, data)
    cfg.optimizer = _section(C.OptimizerConfig, optimizer)
    cfg.train = _section(C.TrainConfig, train)
    cfg.mesh = _section(C.MeshConfig, mesh)
    cfg.checkpoint = _section(C.CheckpointConfig, checkpoint)
    cfg.scaling = _section(C.ScalingConfig, scaling)
    apply_variant(cfg, variant)
    cfg.lock()
    return cfg


def load(name: str, variant: str | None = None) -> ml_collections.ConfigDict:
    """``get_config(variant)`` of ``configs/<name>.py``."""
    import importlib

    return importlib.import_module(f"configs.{name}").get_config(variant)


def to_typed(cfg: ml_collections.ConfigDict) -> C.Config:
    """The validated typed :class:`t5x_lite.config.Config` of a preset ConfigDict."""
    return C.from_dict(cfg.to_dict())
