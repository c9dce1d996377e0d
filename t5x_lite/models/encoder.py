"""Encoder-only family: BERT, RoBERTa and ALBERT (masked LM + optional NSP/SOP head).

The module follows Hugging Face's ``BertForPreTraining`` / ``RobertaForMaskedLM`` /
``AlbertForPreTraining`` layout exactly, so checkpoints convert name by name
(:mod:`t5x_lite.hf.bert`):

* embeddings: word + learned position (+ segment when ``type_vocab_size > 0``),
  LayerNorm, dropout. ALBERT embeds in ``embed_dim`` (``Em``) and projects to
  ``d_model`` (``E``) with ``embed_proj``;
* ``num_layers`` post-LN layers: ``LN(x + Attn(x))`` then ``LN(x + MLP(x))``;
  ALBERT (``share_layers``) applies one layer ``num_layers`` times;
* MLM head: dense (``E -> Em``) + activation + LayerNorm, then logits tied to the
  word embedding plus a vocabulary bias: ``logits = LN(act(h W)) · W_wordᵀ + b``;
* with ``sentence_head``: pooler ``tanh(h[:, 0] W_p)`` and a 2-way classifier
  (NSP for BERT, SOP for ALBERT).

Positions: packed rows pass ``positions`` (restarting at 0 per segment); the table
row used is ``positions + position_offset``. RoBERTa's table keeps HF's offset of
``pad_token_id + 1`` rows, so its table has ``max_seq_len + position_offset`` rows;
without ``positions`` it counts only real tokens (``cumsum(attention_mask) - 1``),
which is what HF derives from non-pad ``input_ids``.

Example::

    >>> cfg = ModelConfig(family="encoder", arch="bert", vocab_size=100, d_model=16,
    ...                   num_heads=2, num_layers=1, d_ff=32, max_seq_len=8,
    ...                   type_vocab_size=2, sentence_head=True)
    >>> out = Model(cfg).apply({"params": params}, {"input_ids": ids})  # ids [2, 8]
    >>> out["logits"].shape, out["sentence_logits"].shape, out["pooled"].shape
    ((2, 8, 100), (2, 2), (2, 16))

This module imports only jax, flax and the config (via :mod:`t5x_lite.layers`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from t5x_lite import attention, layers, masks
from t5x_lite.config import ConfigError, ModelConfig
from t5x_lite.models import heads

Array = jax.Array

# Activations are constrained with these logical names (see t5x_lite.partitioning).
_HIDDEN = ("batch", "act_length", "act_embed")


def check_config(cfg: ModelConfig) -> None:
    """Encoder-specific constraints beyond :meth:`ModelConfig.validate` (one-line errors)."""
    if not cfg.traits.factorised_embedding and cfg.embedding_dim != cfg.d_model:
        raise ConfigError(
            f"model.embed_dim={cfg.embed_dim} differs from model.d_model={cfg.d_model}; only "
            "arch 'albert' factorises embeddings"
        )
    if cfg.position_offset < 0:
        raise ConfigError(f"model.position_offset={cfg.position_offset} must be >= 0")
    if cfg.type_vocab_size < 0:
        raise ConfigError(f"model.type_vocab_size={cfg.type_vocab_size} must be >= 0")


def num_positions(cfg: ModelConfig) -> int:
    """Rows of the learned position table: ``max_seq_len + position_offset``."""
    return cfg.max_seq_len + cfg.position_offset


def head_activation(cfg: ModelConfig) -> str:
    """Activation of the MLM transform (``traits.head_activation``, e.g. RoBERTa's head
    always uses exact GELU), else ``model.activation``."""
    return cfg.traits.head_activation or cfg.activation


def positions_of(cfg: ModelConfig, batch: dict[str, Array], length: int) -> Array:
    """Position ids ``[B, T]`` (before ``position_offset``).

    ``positions`` when given; packed rows without them (``segment_ids``) restart at 0
    per segment (:func:`t5x_lite.layers.default_positions`, ``[1,1,2,2,2,0] ->
    [0,1,0,1,2,0]``), for every arch; otherwise, with
    ``traits.pad_skipping_positions`` (RoBERTa) and an ``attention_mask``, the count of
    real tokens before each one (``[1,1,1,0] -> [0,1,2,0]``, HF's pad-skipping
    positions); else ``arange(T)``.
    """
    packed = "positions" in batch or "segment_ids" in batch
    pad_skipping = cfg.traits.pad_skipping_positions and "attention_mask" in batch
    if not packed and pad_skipping:
        m = batch["attention_mask"].astype(jnp.int32)  # [B, T]
        return (jnp.cumsum(m, axis=1) - 1) * m
    return layers.default_positions(batch, length)


class EncoderLayer(nn.Module):
    """Post-LN Transformer layer ``[B, T, E] -> [B, T, E]`` (BERT / ALBERT layout)."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: Array, mask: Array, deterministic: bool = True) -> Array:
        cfg = self.config
        dt = layers.dtype_of(cfg.dtype)
        pdt = layers.dtype_of(cfg.param_dtype)
        h = attention.MultiHeadAttention(
            num_heads=cfg.num_heads,
            head_dim=cfg.head_size,
            use_bias=True,
            dtype=dt,
            param_dtype=pdt,
            init_std=cfg.initializer_range,
            implementation=cfg.attention,
            dropout_rate=cfg.dropout_rate,
            name="attention",
        )(x, mask=mask, deterministic=deterministic)  # [B, T, E]
        h = nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
        x = layers.norm(cfg, "attention_norm")(x + h)
        x = layers.constrain(x, _HIDDEN)
        h = layers.Mlp(
            cfg.d_ff,
            act=cfg.activation,
            use_bias=True,
            dtype=dt,
            param_dtype=pdt,
            init_std=cfg.initializer_range,
            name="mlp",
        )(x, deterministic=deterministic)  # [B, T, E]
        h = nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
        x = layers.norm(cfg, "mlp_norm")(x + h)
        return layers.constrain(x, _HIDDEN)


class Model(nn.Module):
    """BERT / RoBERTa / ALBERT: ``batch -> {"logits" [B, T, V], ...}`` (see module doc)."""

    config: ModelConfig

    @nn.compact
    def __call__(self, batch: dict[str, Array], deterministic: bool = True) -> dict[str, Array]:
        cfg = self.config
        check_config(cfg)
        dt = layers.dtype_of(cfg.dtype)
        pdt = layers.dtype_of(cfg.param_dtype)
        std = cfg.initializer_range
        em = cfg.embedding_dim
        ids = batch["input_ids"]  # [B, T]
        b, t = ids.shape
        dense = dict(dtype=dt, param_dtype=pdt, kernel_init=layers.normal(std))

        # ---- embeddings: [B, T] -> [B, T, Em]
        word = layers.Embed(
            cfg.padded_vocab_size, em, ("vocab", "embed"), dt, pdt, std, name="word_embeddings"
        )
        x = word(ids)
        if cfg.type_vocab_size:
            types = batch.get("token_type_ids")
            types = jnp.zeros((b, t), jnp.int32) if types is None else types
            x = x + layers.Embed(
                cfg.type_vocab_size,
                em,
                ("type_vocab", "embed"),
                dt,
                pdt,
                std,
                name="token_type_embeddings",
            )(types)
        pos = positions_of(cfg, batch, t) + cfg.position_offset  # [B, T]
        x = x + layers.Embed(
            num_positions(cfg),
            em,
            ("position", "embed"),
            dt,
            pdt,
            std,
            name="position_embeddings",
        )(pos)
        x = layers.norm(cfg, "embed_norm")(x)
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        if cfg.traits.factorised_embedding:
            # [B, T, Em] -> [B, T, E]
            x = layers.DenseGeneral(
                (cfg.d_model,), ("embed",), ("mlp",), name="embed_proj", **dense
            )(x)
        x = layers.constrain(x, _HIDDEN)

        # ---- layers
        mask = masks.self_attention_mask(batch, causal=False)  # padding or segments
        layer_cls = layers.remat(EncoderLayer, cfg.remat_policy)
        if cfg.share_layers:
            shared = layer_cls(cfg, name="layer")
            for _ in range(cfg.num_layers):
                x = shared(x, mask, deterministic)
        else:
            for i in range(cfg.num_layers):
                x = layer_cls(cfg, name=f"layers_{i}")(x, mask, deterministic)

        # ---- a fine-tuning head replaces the MLM head (t5x_lite.models.heads)
        if cfg.task_head != "none":
            pooled = heads.encoder_pooled(cfg, x) if cfg.task_head == "sequence" else None
            return heads.task_outputs(cfg, x, batch, deterministic, pooled)

        # ---- MLM head: [B, T, E] -> [B, T, Em] -> [B, T, V]
        h = layers.DenseGeneral((em,), ("embed",), ("mlp",), name="mlm_dense", **dense)(x)
        h = layers.activation(head_activation(cfg))(h)
        h = layers.norm(cfg, "mlm_norm")(h)
        bias = layers.param_with_axes(
            self, "mlm_bias", nn.initializers.zeros, (cfg.padded_vocab_size,), ("vocab",), pdt
        )
        logits = word.attend(h) + bias.astype(jnp.float32)  # float32 [B, T, Vp]
        logits = layers.constrain(logits, ("batch", "act_length", "act_vocab"))
        out = {"logits": layers.real_vocab(logits, cfg.vocab_size)}  # [B, T, V]

        # ---- pooler + NSP / SOP: [B, E] -> [B, 2]
        if cfg.sentence_head:
            pooled = heads.encoder_pooled(cfg, x)
            sentence = layers.DenseGeneral(
                (2,), ("embed",), ("classes",), name="sentence_classifier", **dense
            )(pooled)
            out["pooled"] = pooled.astype(jnp.float32)
            out["sentence_logits"] = sentence.astype(jnp.float32)
        return out


def count_params(cfg: ModelConfig) -> tuple[int, int]:
    """``(total, non_embedding)`` parameters of :class:`Model`, analytically.

    ``non_embedding`` excludes the word, position and segment tables only; ALBERT's
    ``embed_proj`` (``Em -> E``), the MLM head (including its vocabulary bias) and
    the pooler count as non-embedding, like any other dense layer.
    E.g. BERT-base with the NSP head: 110,106,428 total, 86,270,780 non-embedding.
    """
    check_config(cfg)
    e, em, v, f = cfg.d_model, cfg.embedding_dim, cfg.vocab_size, cfg.d_ff
    hd = cfg.num_heads * cfg.head_size
    tables = (v + num_positions(cfg) + cfg.type_vocab_size) * em
    embed_norm = 2 * em
    proj = em * e + e if cfg.traits.factorised_embedding else 0
    attention = 3 * (e * hd + hd) + hd * e + e
    mlp = e * f + f + f * e + e
    layer = attention + mlp + 2 * 2 * e
    stack = (1 if cfg.share_layers else cfg.num_layers) * layer
    mlm = e * em + em + 2 * em + v
    sentence = (e * e + e + e * 2 + 2) if cfg.sentence_head else 0
    if cfg.task_head != "none":  # the task head replaces the MLM (and NSP) head
        mlm, sentence = 0, heads.count_params(cfg)
    total = tables + embed_norm + proj + stack + mlm + sentence
    return total, total - tables
