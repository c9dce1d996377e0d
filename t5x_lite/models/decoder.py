"""Decoder-only Transformers: GPT-2, Llama and Mistral, built from the arch's traits.

``Model(cfg).apply({"params": p}, batch)`` maps a batch with Hugging Face key
names to ``{"logits": [B, T, V] float32}``::

    >>> cfg = ModelConfig(family="decoder", arch="gpt2", vocab_size=100, d_model=16,
    ...                   num_heads=2, num_layers=1, d_ff=32, max_seq_len=8)
    >>> batch = {"input_ids": jnp.ones((2, 8), jnp.int32)}
    >>> params = Model(cfg).init(jax.random.key(0), batch)["params"]
    >>> Model(cfg).apply({"params": params}, batch)["logits"].shape
    (2, 8, 100)

Batch keys (``[B, T]``): ``input_ids`` int32; ``attention_mask`` (1 token / 0 pad)
or, for packed rows, ``segment_ids`` (1, 2, ... per document, 0 = pad) with
``positions`` restarting at 0 per document; optional ``prefix_mask`` (bool) for a
prefix LM, whose prefix tokens see each other bidirectionally.

=========  ============================================================================
arch       layout (parameter names in parentheses)
=========  ============================================================================
gpt2       token (``wte``) + learned positions (``wpe``); pre-LN blocks ``layers_i`` with
           LayerNorm ``ln_1`` / ``ln_2`` (biases), attention ``attn`` (query, key, value,
           out; biases), GELU MLP ``mlp`` (wi, wo); final ``ln_f``; logits = H · wteᵀ.
llama      token (``wte``); blocks with RMSNorm ``ln_1`` / ``ln_2``, RoPE grouped-query
           attention ``attn`` (no biases), gated ``mlp`` (wi_0 gate, wi_1 up, wo down;
           ``cfg.activation`` on the gate: silu gives SwiGLU, as presets and HF set);
           final RMSNorm ``ln_f``; untied ``lm_head`` kernel ``[E, V]``.
mistral    llama with sliding-window attention: query ``i`` sees keys ``i - W < j <= i``
           (``model.sliding_window = W``), as HF's ``MistralForCausalLM``.
qwen2      llama with biases on ``query``, ``key`` and ``value`` (none on ``out``), as
           HF's ``Qwen2ForCausalLM``.
=========  ============================================================================

Llama-style archs tie or untie their head with ``model.tie_word_embeddings`` (Llama
3.2-1B ties it: no ``lm_head``, logits = H · wteᵀ) and take Llama 3.1's RoPE
rescaling with ``model.rope_type = "llama3"``. Logits are float32 in every dtype:
the head's operands are in ``model.dtype``, its product is accumulated and kept in
float32.

=========  ============================================================================
=========  ============================================================================

The blocks read ``cfg.traits`` (norm, positions, gated MLP, biases, tied head,
residual init) and never the ``arch`` name.

``dropout_rate`` (when ``deterministic=False``, rng name ``"dropout"``) applies to the
embeddings and to the output of every attention and MLP branch, like GPT-2's
``embd_pdrop`` / ``resid_pdrop``, and for GPT-2 (trait ``attention_dropout``) to the
attention probabilities too, as its ``attn_pdrop``.

A block is ``Block(cfg)(x [B, T, E], mask: AttentionMask, positions [B, T]) ->
[B, T, E]``; the key/value cache of incremental decoding lives inside
``attn`` without changing this interface.

This module imports only jax, flax and the config.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import linen as nn

from t5x_lite import attention, layers, masks
from t5x_lite.config import ModelConfig
from t5x_lite.models import heads

Array = jax.Array


class Block(nn.Module):
    """One pre-norm layer: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``.

    ``x [B, T, E]``, ``mask`` (causal, padding, packed, prefix LM or the cache's slots),
    ``positions [B, T]`` (RoPE only)
    -> ``[B, T, E]``.
    """

    config: ModelConfig

    @nn.compact
    def __call__(
        self, x: Array, mask: masks.AttentionMask, positions: Array, deterministic: bool = True
    ) -> Array:
        cfg, t = self.config, self.config.traits
        dtype = layers.dtype_of(cfg.dtype)
        param_dtype = layers.dtype_of(cfg.param_dtype)
        std = cfg.initializer_range
        # GPT-2 scales residual output projections by 1/sqrt(2 * layers).
        out_std = std / (2 * cfg.num_layers) ** 0.5 if t.scaled_residual_init else std
        rope = None
        if t.positions == "rope":
            rope = functools.partial(layers.apply_rope, inv_freq=layers.model_rope_frequencies(cfg))

        h = layers.norm(cfg, "ln_1")(x)
        h = attention.MultiHeadAttention(
            num_heads=cfg.num_heads,
            head_dim=cfg.head_size,
            num_kv_heads=cfg.kv_heads,
            use_bias=t.biases,
            qkv_bias=t.biases or t.qkv_bias,
            dtype=dtype,
            param_dtype=param_dtype,
            init_std=std,
            out_init_std=out_std,
            implementation=cfg.attention,
            dropout_rate=cfg.dropout_rate if t.attention_dropout else 0.0,
            name="attn",
        )(h, mask=mask, q_positions=positions, rope=rope, deterministic=deterministic)
        h = nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
        x = layers.constrain(x + h, ("batch", "act_length", "act_embed"))

        h = layers.norm(cfg, "ln_2")(x)
        h = layers.Mlp(
            d_ff=cfg.d_ff,
            act=cfg.activation,
            gated=t.gated_mlp,
            use_bias=t.biases,
            dtype=dtype,
            param_dtype=param_dtype,
            init_std=std,
            out_init_std=out_std,
            name="mlp",
        )(h, deterministic=deterministic)
        h = nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
        return layers.constrain(x + h, ("batch", "act_length", "act_embed"))


class Model(nn.Module):
    """GPT-2 / Llama language model: ``batch -> {"logits": [B, T, V] float32}``."""

    config: ModelConfig

    @nn.compact
    def __call__(self, batch: dict[str, Array], deterministic: bool = True) -> dict[str, Array]:
        cfg, traits = self.config, self.config.traits
        dtype = layers.dtype_of(cfg.dtype)
        param_dtype = layers.dtype_of(cfg.param_dtype)
        ids = batch["input_ids"]  # [B, T]
        t = ids.shape[1]
        positions = layers.default_positions(batch, t)  # [B, T]
        mask = masks.self_attention_mask(batch, causal=True, window=cfg.sliding_window)
        if "decode_mask" in batch:  # cached decoding: [B, 1, T, L] over the cache's slots
            mask = masks.explicit(batch["decode_mask"])

        wte = layers.Embed(
            cfg.padded_vocab_size,
            cfg.d_model,
            dtype=dtype,
            param_dtype=param_dtype,
            init_std=cfg.initializer_range,
            name="wte",
        )
        x = wte(ids)  # [B, T, E]
        if traits.positions == "learned":
            wpe = layers.Embed(
                cfg.max_seq_len,
                cfg.d_model,
                axes=("position", "embed"),
                dtype=dtype,
                param_dtype=param_dtype,
                init_std=cfg.initializer_range,
                name="wpe",
            )
            x = x + wpe(positions)
        x = layers.constrain(x, ("batch", "act_length", "act_embed"))
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)

        block = layers.remat(Block, cfg.remat_policy)
        for i in range(cfg.num_layers):
            x = block(cfg, name=f"layers_{i}")(x, mask, positions, deterministic)
        x = layers.norm(cfg, "ln_f")(x)  # [B, T, E]
        if cfg.task_head != "none":  # a fine-tuning head replaces the LM head
            return heads.task_outputs(cfg, x, batch, deterministic)

        if not cfg.tied_head:
            logits = layers.DenseGeneral(
                (cfg.padded_vocab_size,),
                ("embed",),
                ("vocab",),
                use_bias=False,
                dtype=dtype,
                out_dtype=jnp.float32,  # bf16 operands, float32 logits
                param_dtype=param_dtype,
                kernel_init=layers.normal(cfg.initializer_range),
                name="lm_head",
            )(x)
        else:
            logits = wte.attend(x)  # tied: [B, T, V] = x · wteᵀ, float32
        logits = layers.constrain(logits, ("batch", "act_length", "act_vocab"))  # [B, T, Vp]
        return {"logits": layers.real_vocab(logits.astype(jnp.float32), cfg.vocab_size)}


def count_params(cfg: ModelConfig) -> tuple[int, int]:
    """``(total, non_embedding)`` parameter counts, computed from the shapes.

    ``non_embedding`` leaves out the token and position tables and an untied
    ``lm_head``. GPT-2 small (12 x 768, vocab 50257, 1024 positions) gives
    ``total = 124_439_808``.
    """
    t = cfg.traits
    e, f, hd = cfg.d_model, cfg.d_ff, cfg.head_size
    q, kv = cfg.num_heads * hd, cfg.kv_heads * hd
    norm = layers.norm_params(cfg)  # one norm's parameters
    attn = e * q + 2 * e * kv + q * e + ((q + 2 * kv + e) if t.biases else 0)
    attn += (q + 2 * kv) if t.qkv_bias and not t.biases else 0
    mlp = (3 if t.gated_mlp else 2) * e * f + ((f + e) if t.biases else 0)
    norms = 2 * norm
    embeddings = cfg.vocab_size * e * (1 if cfg.tied_head else 2)  # wte (+ untied lm_head)
    if cfg.task_head != "none":  # the task head replaces the LM head
        embeddings = cfg.vocab_size * e
    if t.positions == "learned":
        embeddings += cfg.max_seq_len * e
    final = norm + heads.count_params(cfg)  # the final norm (and a task head)
    non_embedding = cfg.num_layers * (attn + mlp + norms) + final
    return non_embedding + embeddings, non_embedding
