"""Attention: ``jax.nn.dot_product_attention`` for the deterministic path, explicit
float32 probabilities when attention dropout is active, and the multi-head block with
its key/value cache for incremental decoding.

Shapes: ``B`` batch, ``T`` query length, ``S`` key length, ``H`` heads, ``K`` key/value
heads, ``D`` head size, ``E`` model width. This module imports only jax, flax and
:mod:`t5x_lite.layers`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from t5x_lite.layers import DenseGeneral, bottleneck_adapter, constrain, normal

Array = jax.Array


def dot_product_attention(
    q: Array,
    k: Array,
    v: Array,
    mask: Array | None = None,
    bias: Array | None = None,
    scale: float | None = None,
    implementation: str = "xla",
) -> Array:
    """``q [B, T, H, D]``, ``k, v [B, S, K, D]`` (``H % K == 0``) -> ``[B, T, H, D]``.

    ``mask`` ``[B|1, 1|H, T, S]`` bool (True = attend), ``bias`` ``[B|1, H, T, S]``
    added to the logits (T5 relative positions). Softmax runs in float32.
    ``implementation`` is passed to ``jax.nn.dot_product_attention`` (xla | cudnn).
    """
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    if bias is not None:
        # jax broadcasts a [1|B, H, T, S] bias; cuDNN wants the compute dtype.
        bias = bias.astype(q.dtype if implementation == "cudnn" else jnp.float32)
    # jax's xla implementation computes logits and softmax in float32 for
    # bf16/fp16 inputs and repeats key/value heads for grouped-query attention.
    return jax.nn.dot_product_attention(
        q, k, v, bias=bias, mask=mask, scale=scale, implementation=implementation
    )


def attention_probabilities(
    q: Array,
    k: Array,
    mask: Array | None = None,
    bias: Array | None = None,
    scale: float | None = None,
) -> Array:
    """``softmax(q·kᵀ · scale + bias)`` over keys, float32 ``[B, H, T, S]``.

    ``q [B, T, H, D]``, ``k [B, S, K, D]`` (key heads repeated ``H / K`` times);
    masked-out keys get the float32 minimum before the softmax, as
    ``jax.nn.dot_product_attention`` does, so a row that sees nothing is uniform.
    E.g. ``D = 1``, ``scale = 1``, ``q = [[1]]``, ``k = [[0], [ln 3]]`` give
    ``[0.25, 0.75]``.
    """
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    groups = q.shape[2] // k.shape[2]
    k = jnp.repeat(k, groups, axis=2)  # [B, S, H, D]
    logits = jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=jnp.float32) * scale
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(logits, axis=-1)


def attend_with_probabilities(probs: Array, v: Array) -> Array:
    """``probs [B, H, T, S]``, ``v [B, S, K, D]`` -> context ``[B, T, H, D]`` in
    ``v.dtype`` (value heads repeated ``H / K`` times)."""
    v = jnp.repeat(v, probs.shape[1] // v.shape[2], axis=2)  # [B, S, H, D]
    out = jnp.einsum(
        "bhts,bshd->bthd", probs.astype(v.dtype), v, preferred_element_type=jnp.float32
    )
    return out.astype(v.dtype)


class MultiHeadAttention(nn.Module):
    """Attention block ``[B, T, E] (x) [B, S, E] -> [B, T, E]`` with q/k/v/o projections.

    Projections are named ``query``, ``key``, ``value``, ``out``; kernels are
    ``[E, H, D]`` (``embed, heads, kv``) and ``[H, D, E]``. ``num_kv_heads < num_heads``
    gives grouped-query attention (``kv_heads`` axis). ``rope`` is an optional
    callable ``(q_or_k [B, T, H, D], positions [B, T]) -> same`` applied to q and k.

    ``dropout_rate`` (when ``deterministic=False``, rng ``"dropout"``) drops attention
    probabilities, scaling the kept ones by ``1 / (1 - rate)``; the dropped
    probabilities are sown as ``intermediates/dropped_probabilities`` ``[B, H, T, S]``.
    Deterministic calls (and ``rate = 0``) take the fused
    ``jax.nn.dot_product_attention``. ``qkv_bias`` overrides ``use_bias`` for the
    query, key and value projections (Qwen2: biases there, none on ``out``).

    Parameter-efficient hooks (params placed by :mod:`t5x_lite.peft`, never created
    by ``init``): LoRA inside the projections (:class:`DenseGeneral`), a bottleneck
    adapter on the output (:func:`~t5x_lite.layers.bottleneck_adapter`) and, in
    self-attention, learned key/value prefixes (:meth:`_with_prefix`).
    """

    num_heads: int
    head_dim: int
    num_kv_heads: int | None = None
    use_bias: bool = True
    scale: float | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    init_std: float = 0.02
    out_init_std: float | None = None
    # Init std of ``query``; None means init_std (T5 folds 1/sqrt(D) into it).
    query_init_std: float | None = None
    implementation: str = "xla"
    dropout_rate: float = 0.0
    qkv_bias: bool | None = None

    @nn.compact
    def __call__(
        self,
        x: Array,
        kv: Array | None = None,
        mask: Array | None = None,
        bias: Array | None = None,
        q_positions: Array | None = None,
        kv_positions: Array | None = None,
        rope: Callable[[Array, Array], Array] | None = None,
        deterministic: bool = True,
    ) -> Array:
        cross = kv is not None
        kv = x if kv is None else kv
        e = x.shape[-1]
        kh = self.num_kv_heads or self.num_heads
        kv_axis = "kv_heads" if kh != self.num_heads else "heads"
        common = dict(use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype)
        qkv_bias = self.use_bias if self.qkv_bias is None else self.qkv_bias
        qkv = dict(common, use_bias=qkv_bias)
        init = normal(self.init_std)
        q = DenseGeneral(
            (self.num_heads, self.head_dim),
            ("embed",),
            ("heads", "kv"),
            kernel_init=normal(self.query_init_std or self.init_std),
            name="query",
            **qkv,
        )(x)
        k = DenseGeneral(
            (kh, self.head_dim),
            ("embed",),
            (kv_axis, "kv"),
            kernel_init=init,
            name="key",
            **qkv,
        )(kv)
        v = DenseGeneral(
            (kh, self.head_dim),
            ("embed",),
            (kv_axis, "kv"),
            kernel_init=init,
            name="value",
            **qkv,
        )(kv)
        if rope is not None:
            q = rope(q, q_positions)
            k = rope(k, kv_positions if kv_positions is not None else q_positions)
        if self.is_mutable_collection("cache") and not self.is_initializing():
            k, v = self._cached(k, v, cross, mask)  # [B, L, K, D]: the cache's keys/values
        if not cross and self.has_variable("params", "prefix_key"):
            k, v, mask, bias = self._with_prefix(k, v, mask, bias)  # [B, P + S, K, D]
        q = constrain(q, ("batch", "act_length", "act_heads", "act_kv"))
        k = constrain(k, ("batch", "act_length", "act_kv_heads", "act_kv"))
        v = constrain(v, ("batch", "act_length", "act_kv_heads", "act_kv"))
        if self.dropout_rate > 0.0 and not deterministic:
            # Dropout on the attention probabilities, as BERT (attention_probs_dropout_prob)
            # and T5 (dropout on the softmax weights) define it: the fused kernel has no
            # dropout, so this path forms the [B, H, T, S] probabilities explicitly.
            probs = attention_probabilities(q, k, mask=mask, bias=bias, scale=self.scale)
            probs = nn.Dropout(self.dropout_rate)(probs, deterministic=False)
            self.sow("intermediates", "dropped_probabilities", probs)
            out = attend_with_probabilities(probs, v)  # [B, T, H, D]
        else:
            out = dot_product_attention(
                q, k, v, mask=mask, bias=bias, scale=self.scale, implementation=self.implementation
            )
        y = DenseGeneral(
            (e,),
            ("heads", "kv"),
            ("embed",),
            kernel_init=normal(self.out_init_std or self.init_std),
            name="out",
            **common,
        )(out)
        return bottleneck_adapter(self, y)

    def _with_prefix(
        self, k: Array, v: Array, mask: Array | None, bias: Array | None
    ) -> tuple[Array, Array, Array | None, Array | None]:
        """Prefix-tuning hook (Li & Liang 2021): learned ``prefix_key`` / ``prefix_value``
        ``[P, K, D]`` (placed by :mod:`t5x_lite.peft`) go in front of the keys/values
        ``[B, S, K, D]`` -> ``[B, P + S, K, D]``; every query sees them (the mask
        ``[B|1, 1|H, T, S]`` gains ``P`` True columns in front) and they get no position
        bias (``bias`` gains ``P`` zero columns). Prefixes are keys as attention sees
        them (no RoPE), and token positions stay where they were. With the cache the
        prefixes join the cached keys on every call, so cached and uncached agree.
        """
        b = k.shape[0]
        pk = jnp.asarray(self.get_variable("params", "prefix_key"), k.dtype)
        pv = jnp.asarray(self.get_variable("params", "prefix_value"), v.dtype)
        p = pk.shape[0]
        k = jnp.concatenate([jnp.broadcast_to(pk[None], (b, *pk.shape)), k], axis=1)
        v = jnp.concatenate([jnp.broadcast_to(pv[None], (b, *pv.shape)), v], axis=1)
        if mask is not None:
            mask = jnp.concatenate([jnp.ones((*mask.shape[:3], p), bool), mask], axis=-1)
        if bias is not None:
            bias = jnp.concatenate([jnp.zeros((*bias.shape[:3], p), bias.dtype), bias], axis=-1)
        return k, v, mask, bias

    def _cached(self, k: Array, v: Array, cross: bool, mask: Array | None) -> tuple[Array, Array]:
        """Incremental decoding (``apply(..., mutable=["cache"])``): keys/values of the
        whole cache ``[B, L, K, D]`` in place of this call's ``k, v [B, T, K, D]``.

        Self-attention writes ``k, v`` at slots ``cache_index .. cache_index + T - 1`` of
        ``cached_key`` / ``cached_value`` ``[B, L, K, D]``, ``L = mask.shape[-1]`` (created
        as zeros on the first call, the prefill), and advances ``cache_index``; the
        caller's ``mask [B|1, 1, T, L]`` says which slots each query sees.
        Cross-attention stores the encoder's keys/values on the first call and reuses
        them afterwards (this call's projections are then dead code). Only key/value
        heads are stored (``K``, not ``H``: grouped-query attention).
        """
        axes = ("batch", "act_length", "act_kv_heads", "act_kv")
        if cross:
            ck = self.variable("cache", "cached_key", lambda: constrain(k, axes))
            cv = self.variable("cache", "cached_value", lambda: constrain(v, axes))
            return ck.value, cv.value
        assert mask is not None, "cached self-attention needs a [B|1, 1, T, L] mask"
        b, t, kh, d = k.shape
        shape = (b, mask.shape[-1], kh, d)
        ck = self.variable("cache", "cached_key", jnp.zeros, shape, k.dtype)
        cv = self.variable("cache", "cached_value", jnp.zeros, shape, v.dtype)
        index = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
        i = index.value
        write = jax.lax.dynamic_update_slice
        ck.value = constrain(write(ck.value, k.astype(ck.value.dtype), (0, i, 0, 0)), axes)
        cv.value = constrain(write(cv.value, v.astype(cv.value.dtype), (0, i, 0, 0)), axes)
        index.value = i + t
        return ck.value, cv.value
