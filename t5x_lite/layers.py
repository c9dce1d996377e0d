"""Building blocks shared by the three families.

Every parameter is created through :func:`param_with_axes`, so it carries logical
axis names (see :mod:`t5x_lite.partitioning`); activations are constrained with
:func:`constrain`. Shapes use ``B`` batch, ``T`` query length, ``S`` key length,
``H`` heads, ``K`` key/value heads, ``D`` head size, ``E`` model width,
``F`` MLP width, ``V`` vocabulary. Attention masks live in :mod:`t5x_lite.masks`.

This module imports only jax, flax, numpy and the config.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

Array = jax.Array
Initializer = Callable[..., Array]

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def dtype_of(name: str) -> jnp.dtype:
    return DTYPES[name]


def constrain(x: Array, axes: Sequence[Any]) -> Array:
    """Sharding constraint by logical names (a no-op outside a mesh + rules context).

    Entries are logical names, None (replicated) or ``PartitionSpec.UNCONSTRAINED``.
    """
    return nn.with_logical_constraint(x, tuple(axes))


def param_with_axes(
    module: nn.Module,
    name: str,
    init: Initializer,
    shape: Sequence[int],
    axes: Sequence[str | None],
    dtype: Any = jnp.float32,
) -> Array:
    """``module.param`` whose value is boxed with logical axis names."""
    assert len(axes) == len(shape), (name, shape, axes)
    return module.param(name, nn.with_logical_partitioning(init, tuple(axes)), tuple(shape), dtype)


def normal(std: float) -> Initializer:
    return nn.initializers.normal(stddev=std)


# --------------------------------------------------------------------------- dense


class DenseGeneral(nn.Module):
    """``y = x · W (+ b)`` contracting the last ``len(in_axes)`` dims of ``x``.

    ``kernel`` has shape ``x.shape[-n_in:] + features`` and logical names
    ``in_axes + out_axes``; e.g. a Q projection is
    ``DenseGeneral((H, D), in_axes=("embed",), out_axes=("heads", "kv"))``:
    ``[B, T, E] -> [B, T, H, D]``.
    """

    features: tuple[int, ...]
    in_axes: tuple[str | None, ...]
    out_axes: tuple[str | None, ...]
    use_bias: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Initializer = normal(0.02)
    kernel_name: str = "kernel"
    # dtype of the product (and bias add); None means ``dtype``. The LM heads pass
    # float32: operands stay in ``dtype``, the accumulation is never rounded to it.
    out_dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        n_in = len(self.in_axes)
        in_shape = x.shape[-n_in:]
        kernel = param_with_axes(
            self,
            self.kernel_name,
            self.kernel_init,
            (*in_shape, *self.features),
            (*self.in_axes, *self.out_axes),
            self.param_dtype,
        )
        x = x.astype(self.dtype)
        kernel = jnp.asarray(kernel, self.dtype)
        lhs = tuple(range(x.ndim - n_in, x.ndim))
        out_dtype = self.out_dtype or self.dtype
        y = jax.lax.dot_general(
            x, kernel, ((lhs, tuple(range(n_in))), ((), ())), preferred_element_type=out_dtype
        )
        if self.use_bias:
            bias = param_with_axes(
                self, "bias", nn.initializers.zeros, self.features, self.out_axes, self.param_dtype
            )
            y = y + jnp.asarray(bias, out_dtype)
        if self.has_variable("params", "lora_a"):
            y = y + self._lora(x, n_in, out_dtype)
        return y

    def _lora(self, x: Array, n_in: int, out_dtype: Any) -> Array:
        """LoRA hook: ``lora_scale · (x · A) · B`` when the params hold ``lora_a``
        ``[*in, r]``, ``lora_b`` ``[r, *features]`` and the constant ``lora_scale`` ``[]``
        (``alpha / r``; placed by :mod:`t5x_lite.peft`, never created by ``init``).
        With a constant ``lora_dropout`` rate and a ``"dropout"`` rng (training steps),
        ``x`` is dropped before ``A`` (inverted dropout), as PEFT's ``lora_dropout``.
        """
        if self.has_variable("params", "lora_dropout") and self.has_rng("dropout"):
            # Training steps pass a dropout rng; evaluation and decoding do not.
            rate = jnp.asarray(self.get_variable("params", "lora_dropout"), jnp.float32)
            keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - rate, x.shape)
            x = jnp.where(keep, x / (1.0 - rate).astype(x.dtype), jnp.zeros_like(x))
        a = jnp.asarray(self.get_variable("params", "lora_a"), self.dtype)
        b = jnp.asarray(self.get_variable("params", "lora_b"), self.dtype)
        scale = self.get_variable("params", "lora_scale")
        lhs = tuple(range(x.ndim - n_in, x.ndim))
        z = jax.lax.dot_general(x, a, ((lhs, tuple(range(n_in))), ((), ())))  # [..., r]
        dz = jax.lax.dot_general(
            z, b, (((z.ndim - 1,), (0,)), ((), ())), preferred_element_type=out_dtype
        )  # [..., *features]
        return dz * jnp.asarray(scale, out_dtype)


# --------------------------------------------------------------------------- embeddings


class Embed(nn.Module):
    """Token (or position / segment) table ``[V, E]`` with a tied-logits ``attend``."""

    num_embeddings: int
    features: int
    axes: tuple[str, str] = ("vocab", "embed")
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    init_std: float = 0.02

    def setup(self) -> None:
        self.embedding = param_with_axes(
            self,
            "embedding",
            normal(self.init_std),
            (self.num_embeddings, self.features),
            self.axes,
            self.param_dtype,
        )

    def __call__(self, ids: Array) -> Array:
        """``ids [B, T]`` int -> ``[B, T, E]``: row ``ids[b, t]`` of the table.

        E.g. a table ``[[0, 1], [2, 3], [4, 5]]`` and ``ids [[2, 0]]`` give
        ``[[[4, 5], [0, 1]]]``. The table is first all-gathered along its ``embed``
        axis (fsdp), its row axis left as the parameter has it (``vocab`` on
        tensor where it divides), and the gathered rows are constrained to
        ``(batch, act_length, act_embed)``. Gathering straight from the
        fsdp-sharded table yields rows split over ``embed`` on the very mesh
        axis that also splits the batch, a layout XLA can only leave by
        replicating the whole activation ("Involuntary full rematerialization"
        on data x fsdp x tensor meshes). Gathering from the all-gathered table,
        as MaxText / T5X do, leaves the values unchanged.
        """
        # rows: left as the parameter has them (vocab on tensor where it divides)
        rows = jax.sharding.PartitionSpec.UNCONSTRAINED
        table = constrain(jnp.asarray(self.embedding, self.dtype), (rows, None))  # [V, E]
        x = jnp.take(table, ids, axis=0)  # [B, T, E]
        if x.ndim == 3:
            x = constrain(x, ("batch", "act_length", "act_embed"))
        return x

    def attend(self, x: Array) -> Array:
        """Tied logits ``x [B, T, E] -> [B, T, V] = x · Wᵀ`` in float32.

        Operands are in ``dtype``; the product accumulates in float32 and is returned
        unrounded (a bfloat16 logit of magnitude 10 would otherwise carry an error
        of up to 2**-8 * 16 = 0.06 before the loss sees it).
        """
        table = jnp.asarray(self.embedding, self.dtype)
        return jnp.einsum(
            "bte,ve->btv", x.astype(self.dtype), table, preferred_element_type=jnp.float32
        )


def real_vocab(logits: Array, vocab_size: int) -> Array:
    """Logits over the real vocabulary: ``[B, T, Vp] -> [B, T, V]``.

    Token tables and LM heads have ``model.padded_vocab_size`` rows (a multiple of
    ``model.vocab_pad_multiple``) so the head matmul runs at an aligned width; the
    padding columns are sliced off here, once, so losses, sampling, scoring,
    fill-mask and export never see a padded id. Slicing (rather than -inf masking)
    keeps the padding invisible by construction; XLA fuses the slice into the
    consumer. E.g. ``V = 3`` of ``Vp = 4``: ``[[[1, 2, 3, 0]]] -> [[[1, 2, 3]]]``.
    """
    return logits if logits.shape[-1] == vocab_size else logits[..., :vocab_size]


# --------------------------------------------------------------------------- norms


def _normalize(
    module: nn.Module,
    x: Array,
    eps: float,
    center: bool,
    use_bias: bool,
    dtype: Any,
    param_dtype: Any,
) -> Array:
    """Shared body of :class:`LayerNorm` and :class:`RMSNorm`, in float32.

    ``x [..., E]`` -> ``[..., E]``: ``c = x - mean(x)`` when ``center`` else ``x``;
    ``y = c / sqrt(mean(c²) + eps) * scale (+ bias)``. E.g. ``x = [1, 3]``, scale 1,
    eps 0: centred ``[-1, 1]``; uncentred ``[1, 3] / sqrt(5) = [0.447, 1.342]``.
    ``scale`` (ones) and ``bias`` (zeros) are ``[E]`` params in ``param_dtype``.
    """
    d = x.shape[-1]
    scale = param_with_axes(module, "scale", nn.initializers.ones, (d,), ("embed",), param_dtype)
    xf = x.astype(jnp.float32)
    if center:
        xf = xf - xf.mean(-1, keepdims=True)
    y = xf * jax.lax.rsqrt(jnp.square(xf).mean(-1, keepdims=True) + eps)
    y = y * scale.astype(jnp.float32)
    if use_bias:
        bias = param_with_axes(module, "bias", nn.initializers.zeros, (d,), ("embed",), param_dtype)
        y = y + bias.astype(jnp.float32)
    return y.astype(dtype)


class LayerNorm(nn.Module):
    """LayerNorm with ``scale`` and ``bias`` over the last dim, computed in float32."""

    eps: float = 1e-5
    use_bias: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return _normalize(self, x, self.eps, True, self.use_bias, self.dtype, self.param_dtype)


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x²) + eps) * scale`` (T5 LayerNorm, Llama RMSNorm), in float32."""

    eps: float = 1e-6
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return _normalize(self, x, self.eps, False, False, self.dtype, self.param_dtype)


def norm(cfg: Any, name: str) -> nn.Module:
    """The norm of ``cfg.traits.norm`` (layernorm | rmsnorm) with the model's eps and
    dtypes: the one place every family gets its norms from."""
    kw = dict(
        eps=cfg.norm_eps,
        dtype=dtype_of(cfg.dtype),
        param_dtype=dtype_of(cfg.param_dtype),
        name=name,
    )
    return LayerNorm(**kw) if cfg.traits.norm == "layernorm" else RMSNorm(**kw)


def norm_params(cfg: Any) -> int:
    """Parameters of one :func:`norm` of ``cfg``: scale (+ bias for layernorm)."""
    return cfg.d_model * (2 if cfg.traits.norm == "layernorm" else 1)


# --------------------------------------------------------------------------- activations


def activation(name: str) -> Callable[[Array], Array]:
    """gelu (exact erf, BERT), gelu_new (tanh approx., GPT-2/T5 v1.1), relu, silu."""
    return {
        "gelu": lambda x: jax.nn.gelu(x, approximate=False),
        "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
        "relu": jax.nn.relu,
        "silu": jax.nn.silu,
    }[name]


class Mlp(nn.Module):
    """Feed-forward block ``[B, T, E] -> [B, T, E]``.

    Plain: ``wo(act(wi(x)))``. Gated (SwiGLU / gated-GELU): ``wo(act(wi_0(x)) * wi_1(x))``.
    Submodule names: ``wi`` / ``wi_0``, ``wi_1`` and ``wo``. Adapter params in this
    module's scope add a :func:`bottleneck_adapter` on the output.
    """

    d_ff: int
    act: str = "gelu_new"
    gated: bool = False
    use_bias: bool = True
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    init_std: float = 0.02
    # Init std of ``wo``; None means init_std.
    out_init_std: float | None = None

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        e = x.shape[-1]
        dense = dict(
            use_bias=self.use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=normal(self.init_std),
        )
        f = activation(self.act)
        if self.gated:
            h = f(DenseGeneral((self.d_ff,), ("embed",), ("mlp",), name="wi_0", **dense)(x))
            h = h * DenseGeneral((self.d_ff,), ("embed",), ("mlp",), name="wi_1", **dense)(x)
        else:
            h = f(DenseGeneral((self.d_ff,), ("embed",), ("mlp",), name="wi", **dense)(x))
        h = constrain(h, ("batch", "act_length", "act_mlp"))
        h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
        dense["kernel_init"] = normal(self.out_init_std or self.init_std)
        y = DenseGeneral((e,), ("mlp",), ("embed",), name="wo", **dense)(h)
        return bottleneck_adapter(self, y)


# --------------------------------------------------------------------------- adapters


def bottleneck_adapter(module: nn.Module, y: Array) -> Array:
    """Houlsby adapter hook on a sublayer's output ``y [B, T, E]``.

    When ``module``'s params hold ``adapter_down`` ``[E, M]`` (+ ``adapter_down_bias``
    ``[M]``) and ``adapter_up`` ``[M, E]`` (+ ``adapter_up_bias`` ``[E]``), placed by
    :mod:`t5x_lite.peft`, returns ``y + up(gelu(down(y)))`` (tanh GELU, as the
    reference adapter-BERT), in ``y.dtype``; otherwise ``y`` unchanged. With ``up``
    zero (its initialisation) the sublayer is exactly the base's.
    """
    if not module.has_variable("params", "adapter_down"):
        return y

    def get(name: str) -> Array:
        return jnp.asarray(module.get_variable("params", name), y.dtype)

    h = jnp.einsum("...e,em->...m", y, get("adapter_down")) + get("adapter_down_bias")
    h = jax.nn.gelu(h, approximate=True)  # [B, T, M]
    return y + jnp.einsum("...m,me->...e", h, get("adapter_up")) + get("adapter_up_bias")


# --------------------------------------------------------------------------- positions


def segment_positions(segment_ids: Array) -> Array:
    """Position of each token inside its packed segment (jax twin of
    :func:`t5x_lite.data.packing.segment_positions`).

    ``[B, T]`` int -> ``[B, T]`` int32, e.g. ``[[1, 1, 1, 2, 2, 0]] -> [[0, 1, 2, 0, 1, 0]]``.
    """
    t = segment_ids.shape[1]
    idx = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), segment_ids.shape)
    prev = jnp.pad(segment_ids[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
    starts = jnp.where(segment_ids != prev, idx, 0)
    return jnp.where(segment_ids > 0, idx - jax.lax.cummax(starts, axis=1), 0)


def default_positions(
    batch: dict[str, Array],
    length: int,
    ids_key: str = "input_ids",
    positions_key: str = "positions",
    segment_key: str = "segment_ids",
) -> Array:
    """``[B|1, T]`` int32 positions: ``batch[positions_key]`` (packed rows restart at 0
    per segment), else derived from ``segment_key``, else ``arange(T)``."""
    if positions_key in batch:
        return batch[positions_key].astype(jnp.int32)
    if segment_key in batch:
        return segment_positions(batch[segment_key])
    return jnp.broadcast_to(
        jnp.arange(length, dtype=jnp.int32)[None], (batch[ids_key].shape[0], length)
    )


# --------------------------------------------------------------------------- rotary


def rope_frequencies(
    head_dim: int,
    theta: float = 10000.0,
    rope_type: str = "default",
    factor: float = 8.0,
    low_freq_factor: float = 1.0,
    high_freq_factor: float = 4.0,
    original_max_len: int = 8192,
) -> np.ndarray:
    """RoPE inverse frequencies ``[D/2]`` float32: ``theta ** (-2i / D)``, rescaled for
    ``rope_type="llama3"`` as Llama 3.1 defines it (HF ``_compute_llama3_parameters``).

    With wavelength ``w = 2π / f`` and ``L = original_max_len``: ``w < L /
    high_freq_factor`` keeps ``f``; ``w > L / low_freq_factor`` uses ``f / factor``;
    between, ``s = (L / w - low_freq_factor) / (high_freq_factor - low_freq_factor)``
    blends ``(1 - s) f / factor + s f``. E.g. ``D = 6, theta = 100, L = 32``, factors
    ``(4, 1, 4)``: ``f = [1, 0.2154, 0.0464]`` (wavelengths 6.3, 29.2, 135.4 against
    the bounds 8 and 32) become ``[1, 0.0591, 0.0116]``: kept, blended, divided by 4.
    """
    f = 1.0 / (np.float32(theta) ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    f = f.astype(np.float32)
    if rope_type == "default":
        return f
    assert rope_type == "llama3", rope_type
    wavelen = 2 * np.pi / f
    low_wavelen = original_max_len / low_freq_factor
    high_wavelen = original_max_len / high_freq_factor
    scaled = np.where(wavelen > low_wavelen, f / factor, f)
    smooth = (original_max_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, blended, scaled).astype(np.float32)


def model_rope_frequencies(cfg: Any) -> np.ndarray:
    """:func:`rope_frequencies` of a ``ModelConfig`` (its ``head_size`` and ``rope_*``)."""
    return rope_frequencies(
        cfg.head_size,
        cfg.rope_theta,
        cfg.rope_type,
        cfg.rope_factor,
        cfg.rope_low_freq_factor,
        cfg.rope_high_freq_factor,
        cfg.rope_original_max_len,
    )


def apply_rope(
    x: Array, positions: Array, theta: float = 10000.0, inv_freq: np.ndarray | None = None
) -> Array:
    """Rotary embedding, Llama / HF "rotate_half" layout.

    ``x [B, T, H, D]``, ``positions [B, T]`` -> ``[B, T, H, D]``; dims ``i`` and
    ``i + D/2`` form a rotated pair with frequency ``inv_freq[i]`` (default
    ``theta ** (-2i / D)``; see :func:`rope_frequencies` for scaled variants).
    """
    d = x.shape[-1]
    if inv_freq is None:
        inv_freq = 1.0 / (theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))  # [D/2]
    ang = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
    ang = jnp.concatenate([ang, ang], axis=-1)[:, :, None, :]  # [B, T, 1, D]
    cos, sin = jnp.cos(ang), jnp.sin(ang)
    xf = x.astype(jnp.float32)
    x1, x2 = xf[..., : d // 2], xf[..., d // 2 :]
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (xf * cos + rotated * sin).astype(x.dtype)


# --------------------------------------------------------------------------- remat

# "dots": save the outputs of matmuls without dot_general batch dimensions, i.e. the
# weight projections (q/k/v/out, MLP, tied logits); recompute the attention logits
# and probabilities (batched over B and H) and elementwise ops in the backward pass.
REMAT_POLICIES: dict[str, Any] = {
    "full": None,  # save only the layer's inputs
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def remat(layer_cls: type[nn.Module], policy: str) -> type[nn.Module]:
    """``layer_cls`` rematerialised per ``policy`` (none | full | dots); the one wrapper
    every family uses.

    ``none`` returns ``layer_cls`` unchanged; ``full`` recomputes the whole layer in
    the backward pass; ``dots`` keeps weight-matmul outputs (see
    :data:`REMAT_POLICIES`). The layer's ``__call__`` must take a Python bool
    ``deterministic`` argument, passed positionally; it is made static.
    E.g. ``remat(Block, "dots")(cfg, name="layers_0")(x, mask, positions, True)``.
    """
    if policy == "none":
        return layer_cls
    names = list(inspect.signature(layer_cls.__call__).parameters)  # ["self", "x", ...]
    return nn.remat(
        layer_cls,
        policy=REMAT_POLICIES[policy],
        static_argnums=(names.index("deterministic"),),
    )
