"""Hugging Face checkpoints in and out: ``import_hf`` and ``export_hf``.

A Hugging Face directory is ``config.json`` + ``model.safetensors`` (no hub access
anywhere). Per-architecture name maps live in :mod:`t5x_lite.hf` (one module per
``model_type``, each with ``from_hf(hf_config, tensors) -> (ModelConfig, params)``
and ``to_hf(cfg, params) -> (hf_config, tensors)``); this module only reads, checks
and writes files and dispatches on ``model_type``.

    >>> cfg, params = import_hf("/path/to/gpt2")          # doctest: +SKIP
    >>> export_hf(cfg, params, "/tmp/gpt2_roundtrip")    # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from t5x_lite.config import ConfigError, ModelConfig
from t5x_lite.hf import HF_MODULES, module_for_arch


def _read_config(path: str) -> dict[str, Any]:
    if not os.path.isdir(path):
        raise ConfigError(f"{path}: not a directory (expected config.json + model.safetensors)")
    cfg_file = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_file):
        raise ConfigError(f"{cfg_file}: missing")
    with open(cfg_file) as f:
        return json.load(f)


def _read_tensors(path: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    if not files:
        raise ConfigError(f"{os.path.join(path, 'model.safetensors')}: missing")
    tensors: dict[str, np.ndarray] = {}
    for name in files:
        tensors.update(load_file(os.path.join(path, name)))
    return tensors


def import_hf(path: str) -> tuple[ModelConfig, Any]:
    """``(ModelConfig, params)`` from a local Hugging Face model directory.

    Raises a one-line ConfigError for an unsupported ``model_type`` or a missing
    weight (naming the tensor and the file) before any JAX array is built.
    """
    hf_config = _read_config(path)
    model_type = hf_config.get("model_type")
    if model_type not in HF_MODULES:
        raise ConfigError(
            f"{os.path.join(path, 'config.json')}: model_type={model_type!r} is not supported "
            f"(supported: {', '.join(sorted(HF_MODULES))})"
        )
    tensors = _read_tensors(path)
    # Tied checkpoints may omit the output head; modules resolve that themselves.
    return HF_MODULES[model_type].from_hf(hf_config, tensors, source=path)


def export_hf(cfg: ModelConfig, params: Any, path: str) -> None:
    """Write ``config.json`` + ``model.safetensors`` that ``transformers`` loads."""
    from safetensors.numpy import save_file

    cfg.validate()
    hf_config, tensors = module_for_arch(cfg.arch).to_hf(cfg, params)
    os.makedirs(path, exist_ok=True)
    tensors = {k: np.ascontiguousarray(np.asarray(v, np.float32)) for k, v in tensors.items()}
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf_config, f, indent=2, sort_keys=True)
