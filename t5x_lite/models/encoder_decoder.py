"""Encoder-decoder Transformers: T5 (original) and T5 v1.1.

``Model(cfg).apply({"params": p}, batch)`` maps a batch with Hugging Face key names
to ``{"logits": [B, T, V] float32}`` over the decoder positions::

    >>> cfg = ModelConfig(family="encoder_decoder", arch="t5_v1_1", vocab_size=100,
    ...                   d_model=16, num_heads=2, head_dim=4, num_layers=1, d_ff=32)
    >>> batch = {"input_ids": jnp.ones((2, 6), jnp.int32),
    ...          "decoder_input_ids": jnp.ones((2, 4), jnp.int32)}
    >>> params = Model(cfg).init(jax.random.key(0), batch)["params"]
    >>> Model(cfg).apply({"params": params}, batch)["logits"].shape
    (2, 4, 100)

``encode`` and ``decode`` run the two halves separately (``method=Model.encode``):
``encode(batch) -> [B, S, E]`` and ``decode(encoded, batch) -> {"logits": ...}``,
where ``batch`` still carries the encoder's ``attention_mask`` / ``segment_ids`` for
the cross-attention mask.

Batch keys (``[B, S]`` encoder, ``[B, T]`` decoder, int32): ``input_ids``,
``attention_mask`` (1 token / 0 pad) or packed ``segment_ids`` (1, 2, ...; 0 = pad)
with ``positions``; ``decoder_input_ids``, ``decoder_attention_mask`` or packed
``decoder_segment_ids`` with ``decoder_positions``. In packed rows decoder segment
``k`` attends only to encoder segment ``k``, and relative positions are
``positions[key] - positions[query]`` so that documents packed together see exactly
what they would see alone.

=========  ============================================================================
arch       layout (parameter names)
=========  ============================================================================
t5_v1_1    shared ``token_embedder`` ``[V, E]``; per stack a bucketed relative position
           bias ``relpos_bias/rel_embedding`` ``[buckets, H]`` (bidirectional in the
           encoder, causal in the decoder) shared by all layers; pre-RMSNorm layers
           ``layers_i`` with no biases, unscaled attention (T5 folds 1/sqrt(D) into the
           query init), gated-GELU MLP (``wi_0``, ``wi_1``, ``wo``); final
           ``encoder_norm`` / ``decoder_norm``; untied ``decoder/logits_dense``.
t5         same, with a ReLU MLP (``wi``, ``wo``) and the tied head
           ``logits = (H * d_model**-0.5) · token_embedderᵀ``.
=========  ============================================================================

Encoder layer: ``pre_attention_layer_norm``, ``attention``, ``pre_mlp_layer_norm``,
``mlp``. Decoder layer: ``pre_self_attention_layer_norm``, ``self_attention``,
``pre_cross_attention_layer_norm``, ``encoder_decoder_attention``,
``pre_mlp_layer_norm``, ``mlp``. The MLP activation is ``cfg.activation`` (presets
and the HF importer set relu for t5 and gelu_new for t5_v1_1).

This module imports only jax, flax, numpy and the config.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from t5x_lite import attention, layers, masks
from t5x_lite.config import ModelConfig

Array = jax.Array


# --------------------------------------------------------------------------- positions


def relative_position_bucket(
    relative_position: Array, bidirectional: bool, num_buckets: int, max_distance: int
) -> Array:
    """T5's bucket of each ``key - query`` distance (Mesh TensorFlow / HF formula).

    Half the buckets (per direction when ``bidirectional``) hold exact distances
    ``0 .. max_exact-1``; the rest grow logarithmically up to ``max_distance``, beyond
    which everything shares the last bucket. Unidirectional (decoder) buckets see
    only ``key <= query``; later keys land in bucket 0 (masked anyway). Computed in
    float32 like the reference, so bucket boundaries agree exactly. E.g. with
    ``num_buckets=8, max_distance=16, bidirectional=True``: distances
    ``[-20, -3, -1, 0, 1, 3, 20] -> [3, 2, 1, 0, 5, 6, 7]``.

    ``relative_position`` int ``[...]`` -> int32 ``[...]`` in ``[0, num_buckets)``.
    """
    n = relative_position.astype(jnp.int32)
    buckets = jnp.zeros_like(n)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (n > 0).astype(jnp.int32) * num_buckets
        n = jnp.abs(n)
    else:
        n = -jnp.minimum(n, 0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    # Clamp below at max_exact only to keep log() finite; small distances use `n`.
    ratio = jnp.maximum(n, max(max_exact, 1)).astype(jnp.float32) / max_exact
    large = max_exact + (
        jnp.log(ratio) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    ).astype(jnp.int32)
    large = jnp.minimum(large, num_buckets - 1)
    return buckets + jnp.where(is_small, n, large)


class RelativePositionBias(nn.Module):
    """Learned per-head bias of each bucketed ``key - query`` distance.

    ``q_positions [B|1, T]``, ``k_positions [B|1, S]`` int -> ``[B|1, H, T, S]``
    float32; table ``rel_embedding`` ``[num_buckets, H]`` (``relpos_buckets, heads``).
    """

    num_heads: int
    num_buckets: int
    max_distance: int
    bidirectional: bool
    init_std: float = 1.0
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, q_positions: Array, k_positions: Array) -> Array:
        table = layers.param_with_axes(
            self,
            "rel_embedding",
            layers.normal(self.init_std),
            (self.num_buckets, self.num_heads),
            ("relpos_buckets", "heads"),
            self.param_dtype,
        )
        rel = k_positions[:, None, :] - q_positions[:, :, None]  # [B|1, T, S]
        bucket = relative_position_bucket(
            rel, self.bidirectional, self.num_buckets, self.max_distance
        )
        bias = jnp.take(jnp.asarray(table, jnp.float32), bucket, axis=0)  # [B|1, T, S, H]
        bias = jnp.transpose(bias, (0, 3, 1, 2))  # [B|1, H, T, S]
        batch_axis = "batch" if bias.shape[0] > 1 else None
        return layers.constrain(bias, (batch_axis, "act_heads", "act_length", None))


# --------------------------------------------------------------------------- masks


def _valid(batch: dict[str, Array], mask_key: str, seg_key: str, ids_key: str) -> Array:
    """``[B, L]`` bool: real (non-padding) tokens."""
    if seg_key in batch:
        return batch[seg_key] > 0
    if mask_key in batch:
        return batch[mask_key].astype(bool)
    return jnp.ones(batch[ids_key].shape, bool)


def encoder_mask(batch: dict[str, Array]) -> masks.AttentionMask:
    """Bidirectional encoder self-attention: padding or packed segments."""
    return masks.self_attention_mask(batch, causal=False)


def decoder_mask(batch: dict[str, Array]) -> masks.AttentionMask:
    """Causal decoder self-attention (packing-aware)."""
    return masks.self_attention_mask(
        batch,
        causal=True,
        prefix_key="decoder_prefix_mask",  # never set: T5's decoder is causal
        segment_key="decoder_segment_ids",
        mask_key="decoder_attention_mask",
    )


def cross_mask(batch: dict[str, Array]) -> masks.AttentionMask:
    """Decoder -> encoder attention.

    Packed rows (both ``decoder_segment_ids`` and ``segment_ids``): decoder segment
    ``k`` sees only encoder segment ``k``. Otherwise: queries see the real keys.
    """
    if "decoder_segment_ids" in batch and "segment_ids" in batch:
        return masks.cross_attention_mask(
            batch["decoder_segment_ids"], batch["segment_ids"], None
        )
    k = _valid(batch, "attention_mask", "segment_ids", "input_ids")
    return masks.cross_attention_mask(None, None, k)


# --------------------------------------------------------------------------- layers


def _attention(cfg: ModelConfig, name: str) -> attention.MultiHeadAttention:
    """T5 attention: no biases, no 1/sqrt(D) scaling (folded into the query init)."""
    e, h, d = cfg.d_model, cfg.num_heads, cfg.head_size
    return attention.MultiHeadAttention(
        num_heads=h,
        head_dim=d,
        use_bias=False,
        scale=1.0,
        dtype=layers.dtype_of(cfg.dtype),
        param_dtype=layers.dtype_of(cfg.param_dtype),
        init_std=e**-0.5,
        query_init_std=(e * d) ** -0.5,
        out_init_std=(h * d) ** -0.5,
        implementation=cfg.attention,
        dropout_rate=cfg.dropout_rate,
        name=name,
    )


def _mlp(cfg: ModelConfig) -> layers.Mlp:
    return layers.Mlp(
        d_ff=cfg.d_ff,
        act=cfg.activation,
        gated=cfg.traits.gated_mlp,
        use_bias=False,
        dropout_rate=cfg.dropout_rate,
        dtype=layers.dtype_of(cfg.dtype),
        param_dtype=layers.dtype_of(cfg.param_dtype),
        init_std=cfg.d_model**-0.5,
        out_init_std=cfg.d_ff**-0.5,
        name="mlp",
    )


_RESIDUAL = ("batch", "act_length", "act_embed")


class EncoderLayer(nn.Module):
    """``x + attn(norm(x))`` then ``x + mlp(norm(x))``.

    ``x [B, S, E]``, ``mask`` (an ``AttentionMask``), ``bias [B|1, H, S, S]`` -> ``[B, S, E]``.
    """

    config: ModelConfig

    @nn.compact
    def __call__(
        self, x: Array, mask: masks.AttentionMask, bias: Array, deterministic: bool = True
    ) -> Array:
        cfg = self.config
        drop = nn.Dropout(cfg.dropout_rate)
        h = layers.norm(cfg, "pre_attention_layer_norm")(x)
        h = _attention(cfg, "attention")(h, mask=mask, bias=bias, deterministic=deterministic)
        x = layers.constrain(x + drop(h, deterministic=deterministic), _RESIDUAL)
        h = layers.norm(cfg, "pre_mlp_layer_norm")(x)
        h = _mlp(cfg)(h, deterministic=deterministic)
        return layers.constrain(x + drop(h, deterministic=deterministic), _RESIDUAL)


class DecoderLayer(nn.Module):
    """Causal self-attention, cross-attention to the encoder, MLP; all pre-norm.

    ``y [B, T, E]``, ``encoded [B, S, E]``, ``self_mask``, ``enc_mask`` (``AttentionMask``),
    ``bias [B|1, H, T, T]`` -> ``[B, T, E]``.
    """

    config: ModelConfig

    @nn.compact
    def __call__(
        self,
        y: Array,
        encoded: Array,
        self_mask: masks.AttentionMask,
        enc_mask: masks.AttentionMask,
        bias: Array,
        deterministic: bool = True,
    ) -> Array:
        cfg = self.config
        drop = nn.Dropout(cfg.dropout_rate)
        h = layers.norm(cfg, "pre_self_attention_layer_norm")(y)
        h = _attention(cfg, "self_attention")(
            h, mask=self_mask, bias=bias, deterministic=deterministic
        )
        y = layers.constrain(y + drop(h, deterministic=deterministic), _RESIDUAL)
        h = layers.norm(cfg, "pre_cross_attention_layer_norm")(y)
        h = _attention(cfg, "encoder_decoder_attention")(
            h, kv=encoded, mask=enc_mask, deterministic=deterministic
        )
        y = layers.constrain(y + drop(h, deterministic=deterministic), _RESIDUAL)
        h = layers.norm(cfg, "pre_mlp_layer_norm")(y)
        h = _mlp(cfg)(h, deterministic=deterministic)
        return layers.constrain(y + drop(h, deterministic=deterministic), _RESIDUAL)


def _relpos(cfg: ModelConfig, bidirectional: bool) -> RelativePositionBias:
    return RelativePositionBias(
        num_heads=cfg.num_heads,
        num_buckets=cfg.relative_num_buckets,
        max_distance=cfg.relative_max_distance,
        bidirectional=bidirectional,
        init_std=cfg.d_model**-0.5,
        param_dtype=layers.dtype_of(cfg.param_dtype),
        name="relpos_bias",
    )


class Encoder(nn.Module):
    """``ids [B, S]``, ``mask`` (an ``AttentionMask``), ``positions [B|1, S]`` -> ``[B, S, E]``."""

    config: ModelConfig
    shared_embedding: nn.Module

    @nn.compact
    def __call__(
        self,
        ids: Array,
        mask: masks.AttentionMask,
        positions: Array,
        deterministic: bool = True,
    ) -> Array:
        cfg = self.config
        drop = nn.Dropout(cfg.dropout_rate)
        x = layers.constrain(self.shared_embedding(ids), _RESIDUAL)  # [B, S, E]
        x = drop(x, deterministic=deterministic)
        bias = _relpos(cfg, bidirectional=True)(positions, positions)  # [B|1, H, S, S]
        layer = layers.remat(EncoderLayer, cfg.remat_policy)
        for i in range(cfg.num_layers):
            x = layer(cfg, name=f"layers_{i}")(x, mask, bias, deterministic)
        x = layers.norm(cfg, "encoder_norm")(x)
        return drop(x, deterministic=deterministic)


class Decoder(nn.Module):
    """Decoder stack and LM head.

    ``ids [B, T]``, ``encoded [B, S, E]``, ``self_mask``, ``enc_mask`` (``AttentionMask``),
    ``positions [B|1, T]`` -> logits ``[B, T, V]`` float32.
    """

    config: ModelConfig
    shared_embedding: nn.Module

    @nn.compact
    def __call__(
        self,
        ids: Array,
        encoded: Array,
        self_mask: masks.AttentionMask,
        enc_mask: masks.AttentionMask,
        positions: Array,
        deterministic: bool = True,
        kv_positions: Array | None = None,
    ) -> Array:
        cfg = self.config
        drop = nn.Dropout(cfg.dropout_rate)
        y = layers.constrain(self.shared_embedding(ids), _RESIDUAL)  # [B, T, E]
        y = drop(y, deterministic=deterministic)
        kv_positions = positions if kv_positions is None else kv_positions  # [B|1, S]
        bias = _relpos(cfg, bidirectional=False)(positions, kv_positions)  # [B|1, H, T, S]
        layer = layers.remat(DecoderLayer, cfg.remat_policy)
        for i in range(cfg.decoder_layers):
            y = layer(cfg, name=f"layers_{i}")(y, encoded, self_mask, enc_mask, bias, deterministic)
        y = layers.norm(cfg, "decoder_norm")(y)
        y = drop(y, deterministic=deterministic)  # [B, T, E]
        if cfg.tied_head:
            scale = cfg.d_model**-0.5 if cfg.traits.head_scale else 1.0
            logits = self.shared_embedding.attend(y * scale)
        else:
            logits = layers.DenseGeneral(
                (cfg.padded_vocab_size,),
                ("embed",),
                ("vocab",),
                use_bias=False,
                dtype=layers.dtype_of(cfg.dtype),
                out_dtype=jnp.float32,  # bf16 operands, float32 logits
                param_dtype=layers.dtype_of(cfg.param_dtype),
                kernel_init=layers.normal(cfg.d_model**-0.5),
                name="logits_dense",
            )(y)
        logits = layers.constrain(logits, ("batch", "act_length", "act_vocab"))  # [B, T, Vp]
        return layers.real_vocab(logits.astype(jnp.float32), cfg.vocab_size)  # [B, T, V]


# --------------------------------------------------------------------------- model


class Model(nn.Module):
    """T5 / T5 v1.1: ``batch -> {"logits": [B, T, V] float32}`` (decoder positions)."""

    config: ModelConfig

    def setup(self) -> None:
        cfg = self.config
        self.token_embedder = layers.Embed(
            cfg.padded_vocab_size,
            cfg.d_model,
            dtype=layers.dtype_of(cfg.dtype),
            param_dtype=layers.dtype_of(cfg.param_dtype),
            init_std=1.0,
        )
        self.encoder = Encoder(cfg, shared_embedding=self.token_embedder)
        self.decoder = Decoder(cfg, shared_embedding=self.token_embedder)

    def encode(self, batch: dict[str, Array], deterministic: bool = True) -> Array:
        """``input_ids [B, S]`` (+ mask / segment keys) -> encoder output ``[B, S, E]``."""
        positions = layers.default_positions(batch, batch["input_ids"].shape[1])
        return self.encoder(batch["input_ids"], encoder_mask(batch), positions, deterministic)

    def decode(
        self, encoded: Array, batch: dict[str, Array], deterministic: bool = True
    ) -> dict[str, Array]:
        """``encoded [B, S, E]`` + decoder keys -> ``{"logits": [B, T, V] float32}``."""
        positions = layers.default_positions(
            batch,
            batch["decoder_input_ids"].shape[1],
            "decoder_input_ids",
            "decoder_positions",
            "decoder_segment_ids",
        )
        self_mask, kv_positions = decoder_mask(batch), None
        if "decode_mask" in batch:  # cached decoding: [B, 1, T, L]; slot j holds position j
            self_mask = masks.explicit(batch["decode_mask"])
            kv_positions = jnp.arange(batch["decode_mask"].shape[-1], dtype=jnp.int32)[None]
        logits = self.decoder(
            batch["decoder_input_ids"],
            encoded,
            self_mask,
            cross_mask(batch),
            positions,
            deterministic,
            kv_positions,
        )
        return {"logits": logits}

    def __call__(self, batch: dict[str, Array], deterministic: bool = True) -> dict[str, Array]:
        return self.decode(self.encode(batch, deterministic), batch, deterministic)


def count_params(cfg: ModelConfig) -> tuple[int, int]:
    """``(total, non_embedding)`` parameter counts, computed from the shapes.

    ``non_embedding`` leaves out the shared token table, an untied
    ``logits_dense`` and the two relative-position tables. Original T5-small
    (vocab 32128, 6+6 layers of 512, 8 heads x 64, d_ff 2048, tied) gives
    ``total = 60_506_624``, as Hugging Face counts it.
    """
    e, f, v = cfg.d_model, cfg.d_ff, cfg.vocab_size
    inner = cfg.num_heads * cfg.head_size
    attn = 4 * e * inner  # query, key, value [E, H, D]; out [H, D, E]
    mlp = (3 if cfg.traits.gated_mlp else 2) * e * f
    n = layers.norm_params(cfg)
    encoder = cfg.num_layers * (attn + mlp + 2 * n) + n
    decoder = cfg.decoder_layers * (2 * attn + mlp + 3 * n) + n
    relpos = 2 * cfg.relative_num_buckets * cfg.num_heads
    embeddings = v * e * (1 if cfg.tied_head else 2)
    non_embedding = encoder + decoder
    return non_embedding + relpos + embeddings, non_embedding
