"""Checks shared by the per-architecture Hugging Face name maps.

Every importer reads tensors through :func:`take` (present, right shape, float32)
and ends with :func:`check_no_unexpected` (nothing in the file left unread), so a
bad checkpoint gives the same one-line ConfigError whatever its architecture::

    >>> take({"w": np.ones((2, 3), np.float16)}, "w", (2, 3), "/ckpt").dtype
    dtype('float32')
    >>> take({"w": np.ones((2, 3))}, "w", (3, 2), "/ckpt")
    Traceback (most recent call last):
    ...
    t5x_lite.config.ConfigError: /ckpt: tensor 'w' has shape (2, 3), config.json implies (3, 2)

Everything here is numpy.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

import numpy as np

from t5x_lite.config import ConfigError, ModelConfig

# HF activation names (``hidden_act`` / ``activation_function``) -> ModelConfig.activation.
ACTIVATIONS_IN = {
    "gelu": "gelu",
    "gelu_new": "gelu_new",
    "gelu_pytorch_tanh": "gelu_new",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}


def take(tensors: Mapping[str, Any], name: str, shape: tuple[int, ...], source: str) -> np.ndarray:
    """``tensors[name]`` as float32, checked against the ``shape`` config.json implies.

    A missing tensor or a wrong shape is a one-line ConfigError naming ``source``
    (the checkpoint directory) and the tensor.
    """
    if name not in tensors:
        raise ConfigError(f"{source}: tensor {name!r} is missing from the safetensors weights")
    x = np.asarray(tensors[name], np.float32)
    if x.shape != shape:
        raise ConfigError(
            f"{source}: tensor {name!r} has shape {x.shape}, config.json implies {shape}"
        )
    return x


def check_no_unexpected(
    tensors: Collection[str],
    expected: Collection[str],
    source: str,
    what: str,
    ignored: Callable[[str], bool] = lambda name: False,
) -> None:
    """One-line ConfigError if the file holds a tensor the model does not read.

    ``tensors``: names in the file; ``expected``: names read; ``ignored(name)``:
    buffers and duplicates a file may carry harmlessly; ``what`` describes the
    model (e.g. ``"GPT-2 with 2 layers"``). E.g. a 3-layer GPT-2 file read with a
    config saying 2 layers: ``unexpected tensor 'transformer.h.2.ln_1.bias' (12 in
    all) for GPT-2 with 2 layers``.
    """
    extra = sorted(n for n in tensors if n not in expected and not ignored(n))
    if extra:
        raise ConfigError(
            f"{source}: unexpected tensor {extra[0]!r} ({len(extra)} in all) for {what}"
        )


def model_config(where: str, build: Callable[[], ModelConfig]) -> ModelConfig:
    """``build()`` validated, its errors (bad field values, unconvertible numbers) as one
    ConfigError line prefixed with ``where`` (the HF ``config.json`` being read)."""
    try:
        return build().validate()
    except (ConfigError, TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from None
