"""The three Transformer families as pure-function Flax modules.

``get(cfg)`` returns the model object (module, heads, losses, scoring; see
:mod:`t5x_lite.models.base`); ``build(cfg)`` returns the bare Linen module;
``module.apply({"params": p}, batch)`` takes a dict with Hugging Face key names and
returns ``{"logits": [B, T, V], ...}``::

    >>> from t5x_lite.config import ModelConfig
    >>> cfg = ModelConfig(family="decoder", arch="gpt2", vocab_size=100, d_model=16,
    ...                   num_heads=2, num_layers=1, d_ff=32, max_seq_len=8)
    >>> module = build(cfg)
    >>> params = init_params(cfg, jax.random.key(0))       # unboxed float32 tree
    >>> module.apply({"params": params}, example_batch(cfg, 2, 8))["logits"].shape
    (2, 8, 100)

Batch keys by family (``[B, T]`` int32 unless noted):

* encoder: ``input_ids``, ``attention_mask``, ``token_type_ids``; packed rows use
  ``segment_ids`` and ``positions``. Outputs ``logits`` (MLM) and, with
  ``sentence_head``, ``sentence_logits`` ``[B, 2]`` (NSP / SOP) and ``pooled``.
* decoder: ``input_ids``, ``attention_mask`` or ``segment_ids`` + ``positions``,
  optional ``prefix_mask`` (bool, prefix LM).
* encoder_decoder: ``input_ids``, ``attention_mask``, ``decoder_input_ids``,
  ``decoder_attention_mask``; packed rows use ``segment_ids``, ``positions``,
  ``decoder_segment_ids``, ``decoder_positions``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from t5x_lite import partitioning
from t5x_lite.config import ModelConfig
from t5x_lite.models import decoder, encoder, encoder_decoder
from t5x_lite.models.base import SENTENCE, TASK_HEADS, TOKENS, BaseModel, Head

_FAMILIES = {
    "encoder": encoder,
    "decoder": decoder,
    "encoder_decoder": encoder_decoder,
}


def build(cfg: ModelConfig) -> nn.Module:
    """The Linen module of ``cfg.family`` (config validated first)."""
    cfg.validate()
    return _FAMILIES[cfg.family].Model(cfg)


def get(cfg: ModelConfig) -> BaseModel:
    """The model object of ``cfg``: its module plus the heads it is scored on (the
    token head, and the sentence head of an encoder with ``sentence_head``; or the
    fine-tuning head of ``task_head``)."""
    heads: tuple[Head, ...] = (TOKENS,)
    if cfg.family == "encoder" and cfg.sentence_head:
        heads = (TOKENS, SENTENCE)
    if cfg.task_head != "none":  # a fine-tuning head replaces the LM head
        heads = TASK_HEADS[cfg.task_head]
    return BaseModel(cfg, build(cfg), heads)


def example_batch(cfg: ModelConfig, batch_size: int = 1, length: int = 8) -> dict[str, Any]:
    """All-ones batch with every key the family reads (for ``init`` and shape checks)."""
    ids = jnp.ones((batch_size, length), jnp.int32)
    batch = {"input_ids": ids, "attention_mask": ids}
    if cfg.family == "encoder" and cfg.type_vocab_size:
        batch["token_type_ids"] = jnp.zeros_like(ids)
    if cfg.family == "encoder_decoder":
        batch["decoder_input_ids"] = ids
        batch["decoder_attention_mask"] = ids
    return batch


def init_boxed(cfg: ModelConfig, rng: jax.Array, batch: dict[str, Any] | None = None) -> Any:
    """Params tree boxed with logical axis names (``nn.LogicallyPartitioned`` leaves)."""
    batch = example_batch(cfg) if batch is None else batch
    return build(cfg).init(rng, batch)["params"]


def init_params(cfg: ModelConfig, rng: jax.Array, batch: dict[str, Any] | None = None) -> Any:
    """Plain params tree (arrays, no logical-axis boxes)."""
    return nn.meta.unbox(init_boxed(cfg, rng, batch))


def param_shardings(cfg: ModelConfig, mesh: jax.sharding.Mesh) -> Any:
    """NamedShardings of the (unboxed) params tree under the logical-axis rules."""
    abstract = jax.eval_shape(lambda: init_boxed(cfg, jax.random.key(0)))
    return partitioning.param_shardings(mesh, abstract)


def init_sharded(cfg: ModelConfig, rng: jax.Array, mesh: jax.sharding.Mesh) -> Any:
    """Params initialised directly into their shardings on ``mesh`` (no host copy)."""
    shardings = param_shardings(cfg, mesh)
    return jax.jit(lambda r: init_params(cfg, r), out_shardings=shardings)(rng)


def count_params(cfg: ModelConfig) -> dict[str, int]:
    """Analytic parameter count: ``{"total": ..., "non_embedding": ...,
    "vocab_padding": ...}``.

    ``total`` and ``non_embedding`` count the real vocabulary (the published sizes:
    GPT-2 small 124,439,808); ``vocab_padding`` is the elements of the padded rows
    the stored tree holds beyond them (``model.vocab_pad_multiple``; GPT-2's 50257
    -> 50304 tied rows of 768: 36,096), so the tree has ``total + vocab_padding``.
    ``non_embedding`` excludes token, position and segment embedding tables (and
    an untied output projection, following Kaplan et al. 2020), the quantity
    scaling laws are usually written in.
    """
    cfg.validate()
    family = _FAMILIES[cfg.family]
    total, non_embedding = family.count_params(cfg)
    padded = dataclasses.replace(cfg, vocab_size=cfg.padded_vocab_size, vocab_pad_multiple=1)
    stored, _ = family.count_params(padded)
    return {
        "total": int(total),
        "non_embedding": int(non_embedding),
        "vocab_padding": int(stored - total),
    }
