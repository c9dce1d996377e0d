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


# Parameters with a vocabulary axis (path in the params tree -> that axis): token
# tables, untied LM heads and the MLM bias of every family.
VOCAB_LEAVES: dict[tuple[str, ...], int] = {
    ("wte", "embedding"): 0,
    ("lm_head", "kernel"): 1,
    ("word_embeddings", "embedding"): 0,
    ("mlm_bias",): 0,
    ("token_embedder", "embedding"): 0,
    ("decoder", "logits_dense", "kernel"): 1,
}


def _resize_vocab(params: Any, rows: int) -> Any:
    """``params`` (nested dicts) with each :data:`VOCAB_LEAVES` leaf's vocabulary axis
    cut or zero-padded to ``rows``; other leaves as they are."""

    def walk(tree: Any, path: tuple[str, ...]) -> Any:
        if isinstance(tree, Mapping):
            return {k: walk(v, (*path, str(k))) for k, v in tree.items()}
        if path not in VOCAB_LEAVES:
            return tree
        x, axis = np.asarray(tree), VOCAB_LEAVES[path]
        if x.shape[axis] >= rows:
            return np.take(x, np.arange(rows), axis=axis)
        widths = [(0, 0)] * x.ndim
        widths[axis] = (0, rows - x.shape[axis])
        return np.pad(x, widths)

    return walk(params, ())


def pad_vocab(cfg: ModelConfig, params: Any) -> Any:
    """Imported weights (``cfg.vocab_size`` rows) padded with zero rows to the model's
    ``cfg.padded_vocab_size``: e.g. GPT-2's ``wte`` ``[50257, 768] -> [50304, 768]``.
    The padded logits columns are sliced off by the model, so their values never
    matter."""
    return _resize_vocab(params, cfg.padded_vocab_size)


def real_vocab(cfg: ModelConfig, params: Any) -> Any:
    """The inverse of :func:`pad_vocab` for export: the first ``cfg.vocab_size`` rows
    (``[50304, 768] -> [50257, 768]``), the shapes Hugging Face's config implies."""
    return _resize_vocab(params, cfg.vocab_size)


def model_config(where: str, build: Callable[[], ModelConfig]) -> ModelConfig:
    """``build()`` validated, its errors (bad field values, unconvertible numbers) as one
    ConfigError line prefixed with ``where`` (the HF ``config.json`` being read)."""
    try:
        return build().validate()
    except (ConfigError, TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from None
