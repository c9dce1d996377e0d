"""Attention: one entry point, :func:`dot_product_attention`, over four backends, with
explicit float32 probabilities when attention dropout is active, and the multi-head
block with its key/value cache for incremental decoding.

Masks arrive as :class:`t5x_lite.masks.AttentionMask` (structure, not a dense array)
and each backend takes them in its own form:

=========  ===========================================================================
backend    what it receives
=========  ===========================================================================
xla        logits masked by ``[T, S]`` iota comparisons (causal, window) and
           ``[B, 1, 1, S]`` key validity (padding): no ``[B, 1, T, S]`` array for
           causal or padded attention; segments / prefix LM as ``[B, 1, T, S]``
cudnn      ``jax.nn.dot_product_attention(implementation="cudnn")`` with
           ``is_causal``, ``key_value_seq_lengths`` (trailing padding) and
           ``local_window_size``; segments and prefix LM as a dense mask
splash     Pallas splash attention (TPU): a static causal / local / full mask and
           ``segment_ids`` (packed rows; padding is segment 0 of the keys)
auto       cudnn on GPU in bfloat16/float16 for causal/window/padding masks, splash
           on TPU for lengths that are multiples of 128, xla otherwise
=========  ===========================================================================

Calls a backend cannot express take the xla path: an explicit mask (the decoding
cache's slots), T5's relative-position bias, a prefix LM or lengths that are not
multiples of 128 (its block width) on splash, and attention
dropout on every backend (dropout needs the probabilities, so that path forms the
float32 ``[B, H, T, S]`` probabilities explicitly).

Shapes: ``B`` batch, ``T`` query length, ``S`` key length, ``H`` heads, ``K`` key/value
heads, ``G = H / K`` heads per key head, ``D`` head size, ``E`` model width. This
module imports only jax, flax, :mod:`t5x_lite.config`, :mod:`t5x_lite.masks` and
:mod:`t5x_lite.layers`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from t5x_lite.config import ConfigError
from t5x_lite.layers import DenseGeneral, bottleneck_adapter, constrain, normal
from t5x_lite.masks import AttentionMask

Array = jax.Array

BACKENDS = ("auto", "xla", "cudnn", "splash")
_SPLASH_INTERPRET = [False]


@contextlib.contextmanager
def splash_interpret() -> Iterator[None]:
    """Run splash attention in Pallas interpret mode while tracing inside this block,
    so ``attention="splash"`` works off TPU (tests on the CPU; slow)."""
    _SPLASH_INTERPRET.append(True)
    try:
        yield
    finally:
        _SPLASH_INTERPRET.pop()


def resolve(
    requested: str, q: Array, k: Array, mask: AttentionMask | None, bias: Array | None
) -> str:
    """The backend a call runs on: ``requested`` unless it is ``auto`` or the call has
    something that backend cannot take (then ``xla``; see the module docstring).

    ``splash`` off TPU outside :func:`splash_interpret` and ``cudnn`` off GPU are
    one-line ConfigErrors (raised while tracing, before compilation).
    """
    backend = jax.default_backend()
    kind = "simple" if mask is None else mask.kind
    if requested == "splash" and backend != "tpu" and not _SPLASH_INTERPRET[-1]:
        raise ConfigError(
            f"model.attention='splash' needs TPU devices; the backend is {backend!r} "
            "(use model.attention='auto' or 'xla')"
        )
    if requested == "cudnn" and backend != "gpu":
        raise ConfigError(
            f"model.attention='cudnn' needs GPU devices; the backend is {backend!r} "
            "(use model.attention='auto' or 'xla')"
        )
    if kind == "explicit":
        return "xla"
    if requested == "auto":
        d, t, s = q.shape[-1], q.shape[1], k.shape[1]
        half = q.dtype in (jnp.bfloat16, jnp.float16)
        if backend == "gpu" and half and kind == "simple" and bias is None and d % 8 == 0:
            return "cudnn" if d <= 128 else "xla"
        if backend == "tpu" and bias is None and kind != "prefix" and t % 128 == s % 128 == 0:
            return "splash"
        return "xla"
    if requested == "splash" and (
        bias is not None or kind == "prefix" or q.shape[1] % 128 or k.shape[1] % 128
    ):
        return "xla"
    return requested


def dot_product_attention(
    q: Array,
    k: Array,
    v: Array,
    mask: AttentionMask | None = None,
    bias: Array | None = None,
    scale: float | None = None,
    implementation: str = "auto",
) -> Array:
    """``q [B, T, H, D]``, ``k, v [B, S, K, D]`` (``H % K == 0``) -> ``[B, T, H, D]``.

    ``mask`` says what each query sees, ``bias`` ``[B|1, H, T, S]`` is added to the
    logits (T5 relative positions). Softmax runs in float32. ``implementation`` is
    one of :data:`BACKENDS`, resolved per call by :func:`resolve`.
    """
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    backend = resolve(implementation, q, k, mask, bias)
    if backend == "cudnn":
        return _cudnn(q, k, v, mask, bias, scale)
    if backend == "splash":
        return _splash(q, k, v, mask, scale)
    probs = attention_probabilities(q, k, mask=mask, bias=bias, scale=scale)
    return attend_with_probabilities(probs, v)


def fused_mask_arguments(mask: AttentionMask | None, t: int, s: int) -> dict[str, Any]:
    """Keyword arguments of ``jax.nn.dot_product_attention`` for ``mask``:
    ``is_causal``, ``key_value_seq_lengths`` (``[B]``, trailing padding) and
    ``local_window_size = (W - 1, 0)`` for a simple mask, ``mask`` (dense) otherwise.
    E.g. ``AttentionMask(causal=True, window=4)`` at ``t = s = 16`` gives
    ``{"is_causal": True, "local_window_size": (3, 0)}``."""
    if mask is None:
        return {}
    if mask.kind != "simple":
        return {"mask": mask.dense(t, s)}
    out: dict[str, Any] = {}
    if mask.causal:
        out["is_causal"] = True
        if mask.window is not None and mask.window < s:
            out["local_window_size"] = (mask.window - 1, 0)
    if mask.kv_valid is not None:
        out["key_value_seq_lengths"] = mask.kv_lengths()
    return out


def _cudnn(
    q: Array, k: Array, v: Array, mask: AttentionMask | None, bias: Array | None, scale: float
) -> Array:
    """cuDNN flash attention; the bias in the compute dtype, as cuDNN wants it."""
    kw = fused_mask_arguments(mask, q.shape[1], k.shape[1])
    bias = None if bias is None else bias.astype(q.dtype)
    return jax.nn.dot_product_attention(
        q, k, v, bias=bias, scale=scale, implementation="cudnn", **kw
    )


def _splash(q: Array, k: Array, v: Array, mask: AttentionMask | None, scale: float) -> Array:
    """Pallas splash attention, one kernel vmapped over the batch.

    The static mask is causal (with a window: local ``(W - 1, 0)``) or full; packed
    rows pass their segment ids, padding passes key segment ids ``kv_valid`` (0 for
    padding) against query segment 1. Key/value heads are repeated ``G`` times. Under
    a mesh (``jax.set_mesh``, as the steps run) the kernel runs in ``shard_map``:
    rows split over ``data`` x ``fsdp`` and heads over ``tensor`` where they divide,
    since XLA cannot partition a Pallas call itself.
    """
    from jax.sharding import PartitionSpec as P

    b, t, h, _ = q.shape
    mask = AttentionMask() if mask is None else mask
    groups = h // k.shape[2]
    qh = jnp.swapaxes(q * jnp.asarray(scale, q.dtype), 1, 2)  # [B, H, T, D]
    kh = jnp.swapaxes(jnp.repeat(k, groups, axis=2), 1, 2)  # [B, H, S, D]
    vh = jnp.swapaxes(jnp.repeat(v, groups, axis=2), 1, 2)
    if mask.q_segments is not None:
        q_seg, kv_seg = mask.q_segments, mask.kv_segments
    elif mask.kv_valid is not None:
        q_seg, kv_seg = jnp.ones((b, t), jnp.int32), mask.kv_valid
    else:
        q_seg = kv_seg = None
    segments = None if q_seg is None else (q_seg.astype(jnp.int32), kv_seg.astype(jnp.int32))

    def local(qh: Array, kh: Array, vh: Array, segments: Any) -> Array:
        kernel = _splash_kernel(mask, qh.shape[1], qh.shape[2], kh.shape[2])
        if segments is None:
            return jax.vmap(kernel)(qh, kh, vh)
        seg = _splash_segments(*segments)
        return jax.vmap(lambda a, b_, c, d: kernel(a, b_, c, segment_ids=d))(qh, kh, vh, seg)

    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        out = local(qh, kh, vh, segments)
    else:
        rows = tuple(a for a in ("data", "fsdp") if mesh.shape.get(a, 1) > 1)
        rows = rows if b % math.prod(mesh.shape[a] for a in rows) == 0 else ()
        tensor = mesh.shape.get("tensor", 1)
        heads = "tensor" if tensor > 1 and h % tensor == 0 else None
        spec = P(rows or None, heads, None, None)
        seg_spec = None if segments is None else (P(rows or None, None),) * 2
        out = jax.shard_map(
            local,
            mesh=mesh,
            in_specs=(spec, spec, spec, seg_spec),
            out_specs=spec,
            check_vma=False,
        )(qh, kh, vh, segments)
    return jnp.swapaxes(out, 1, 2).astype(q.dtype)  # [B, T, H, D]


def _splash_kernel(mask: AttentionMask, h: int, t: int, s: int) -> Callable[..., Array]:
    """The splash kernel of ``h`` heads over ``[T, S]`` for ``mask``'s static part."""
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_kernel as sk,
    )
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_mask as sm,
    )

    if mask.causal and mask.window is not None and mask.window < s:
        base = sm.LocalMask((t, s), (mask.window - 1, 0), offset=0)
    elif mask.causal:
        base = sm.CausalMask((t, s))
    else:
        base = sm.FullMask((t, s))
    bq, bk = min(128, t), min(128, s)
    sizes = sk.BlockSizes(
        block_q=bq, block_kv=bk, block_kv_compute=bk, block_q_dkv=bq,
        block_kv_dkv=bk, block_kv_dkv_compute=bk, block_q_dq=bq, block_kv_dq=bk,
    )  # fmt: skip
    return sk.make_splash_mha(
        sm.MultiHeadMask([base] * h),
        head_shards=1,
        q_seq_shards=1,
        block_sizes=sizes,
        interpret=_SPLASH_INTERPRET[-1],
    )


def _splash_segments(q_seg: Array, kv_seg: Array) -> Any:
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_kernel as sk,
    )

    return sk.SegmentIds(q=q_seg, kv=kv_seg)


def attention_probabilities(
    q: Array,
    k: Array,
    mask: AttentionMask | None = None,
    bias: Array | None = None,
    scale: float | None = None,
) -> Array:
    """``softmax(q·kᵀ · scale + bias)`` over keys, float32 ``[B, H, T, S]``.

    ``q [B, T, H, D]``, ``k [B, S, K, D]``: query heads ``k·G .. k·G + G - 1`` share
    key head ``k`` (the logits are one ``[B, K, G, T, S]`` product, no repeated
    keys); masked-out keys get the float32 minimum before the softmax, as
    ``jax.nn.dot_product_attention`` does, so a row that sees nothing is uniform.
    E.g. ``D = 1``, ``scale = 1``, ``q = [[1]]``, ``k = [[0], [ln 3]]`` give
    ``[0.25, 0.75]``.
    """
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    b, t, h, d = q.shape
    s, kh = k.shape[1], k.shape[2]
    qg = q.reshape(b, t, kh, h // kh, d)  # [B, T, K, G, D]
    logits = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32)
    logits = logits.reshape(b, h, t, s) * scale  # [B, H, T, S]
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    for m in [] if mask is None else mask.logits_masks(t, s):
        logits = jnp.where(m, logits, jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(logits, axis=-1)


def attend_with_probabilities(probs: Array, v: Array) -> Array:
    """``probs [B, H, T, S]``, ``v [B, S, K, D]`` -> context ``[B, T, H, D]`` in
    ``v.dtype`` (query heads ``k·G ..`` read value head ``k``)."""
    b, h, t, s = probs.shape
    kh, d = v.shape[2], v.shape[3]
    pg = probs.reshape(b, kh, h // kh, t, s).astype(v.dtype)  # [B, K, G, T, S]
    out = jnp.einsum("bkgts,bskd->btkgd", pg, v, preferred_element_type=jnp.float32)
    return out.reshape(b, t, h, d).astype(v.dtype)


class MultiHeadAttention(nn.Module):
    """Attention block ``[B, T, E] (x) [B, S, E] -> [B, T, E]`` with q/k/v/o projections.

    Projections are named ``query``, ``key``, ``value``, ``out``; kernels are
    ``[E, H, D]`` (``embed, heads, kv``) and ``[H, D, E]``. ``num_kv_heads < num_heads``
    gives grouped-query attention (``kv_heads`` axis). ``rope`` is an optional
    callable ``(q_or_k [B, T, H, D], positions [B, T]) -> same`` applied to q and k.

    ``dropout_rate`` (when ``deterministic=False``, rng ``"dropout"``) drops attention
    probabilities, scaling the kept ones by ``1 / (1 - rate)``; the dropped
    probabilities are sown as ``intermediates/dropped_probabilities`` ``[B, H, T, S]``.
    Deterministic calls (and ``rate = 0``) take :func:`dot_product_attention` on
    the ``implementation`` backend (:data:`BACKENDS`). ``mask`` is an
    :class:`~t5x_lite.masks.AttentionMask`. ``qkv_bias`` overrides ``use_bias`` for the
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
    implementation: str = "auto"
    dropout_rate: float = 0.0
    qkv_bias: bool | None = None

    @nn.compact
    def __call__(
        self,
        x: Array,
        kv: Array | None = None,
        mask: AttentionMask | None = None,
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
            k, v, mask, bias = self._with_prefix(k, v, mask, bias, q.shape[1])  # [B, P + S, K, D]
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
        self, k: Array, v: Array, mask: AttentionMask | None, bias: Array | None, q_len: int
    ) -> tuple[Array, Array, AttentionMask, Array | None]:
        """Prefix-tuning hook (Li & Liang 2021): learned ``prefix_key`` / ``prefix_value``
        ``[P, K, D]`` (placed by :mod:`t5x_lite.peft`) go in front of the keys/values
        ``[B, S, K, D]`` -> ``[B, P + S, K, D]``; every query sees them (the mask,
        made dense ``[B|1, 1|H, T, S]``, gains ``P`` True columns in front) and they get no position
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
        t, s = q_len, k.shape[1] - p
        dense = (mask or AttentionMask()).dense(t, s)  # [B|1, 1|H, T, S]
        dense = jnp.concatenate([jnp.ones((*dense.shape[:3], p), bool), dense], axis=-1)
        mask = AttentionMask(dense_mask=dense)
        if bias is not None:
            bias = jnp.concatenate([jnp.zeros((*bias.shape[:3], p), bias.dtype), bias], axis=-1)
        return k, v, mask, bias

    def _cached(
        self, k: Array, v: Array, cross: bool, mask: AttentionMask | None
    ) -> tuple[Array, Array]:
        """Incremental decoding (``apply(..., mutable=["cache"])``): keys/values of the
        whole cache ``[B, L, K, D]`` in place of this call's ``k, v [B, T, K, D]``.

        Self-attention writes ``k, v`` at slots ``cache_index .. cache_index + T - 1`` of
        ``cached_key`` / ``cached_value`` ``[B, L, K, D]``, ``L`` the last dim of the
        caller's explicit mask (created
        as zeros on the first call, the prefill), and advances ``cache_index``; the
        explicit mask ``[B|1, 1, T, L]`` says which slots each query sees.
        Cross-attention stores the encoder's keys/values on the first call and reuses
        them afterwards (this call's projections are then dead code). Only key/value
        heads are stored (``K``, not ``H``: grouped-query attention).
        """
        axes = ("batch", "act_length", "act_kv_heads", "act_kv")
        if cross:
            ck = self.variable("cache", "cached_key", lambda: constrain(k, axes))
            cv = self.variable("cache", "cached_value", lambda: constrain(v, axes))
            return ck.value, cv.value
        assert mask is not None and mask.dense_mask is not None, (
            "cached self-attention needs an explicit [B|1, 1, T, L] mask"
        )
        b, t, kh, d = k.shape
        shape = (b, mask.dense_mask.shape[-1], kh, d)
        ck = self.variable("cache", "cached_key", jnp.zeros, shape, k.dtype)
        cv = self.variable("cache", "cached_value", jnp.zeros, shape, v.dtype)
        index = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
        i = index.value
        write = jax.lax.dynamic_update_slice
        ck.value = constrain(write(ck.value, k.astype(ck.value.dtype), (0, i, 0, 0)), axes)
        cv.value = constrain(write(cv.value, v.astype(cv.value.dtype), (0, i, 0, 0)), axes)
        index.value = i + t
        return ck.value, cv.value
