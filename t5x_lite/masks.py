"""Attention masks as structure, not as dense arrays.

An :class:`AttentionMask` says *which kind* of mask a self- or cross-attention call
has (causal, a sliding window, key padding, packed segments, a prefix-LM prefix, or
an explicit array) and carries only the small arrays that define it (``[B, S]``
validity, ``[B, T]`` segment ids). Each attention backend turns that into what it
takes: ``is_causal`` and sequence lengths for cuDNN, a static mask plus
``segment_ids`` for splash attention, and masks computed from iotas and ``[B, S]``
vectors inside the logits for the XLA path, so causal and padded attention never
build a ``[B, 1, T, S]`` array. :meth:`AttentionMask.dense` materialises the mask
for the few places that need it (prefix tuning, tests).

Shapes: ``B`` batch, ``T`` query length, ``S`` key length, ``H`` heads. Segment id 0
marks padding; a query sees the keys of its own segment id (padding sees padding,
outputs never read). This module imports only jax and flax.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

Array = jax.Array


@struct.dataclass
class AttentionMask:
    """What query ``i`` may see of key ``j``; every set field must hold (AND).

    * ``causal``: ``j <= i`` (static), or with ``prefix [B, T]`` bool (prefix LM,
      ``T == S``): ``j <= i`` or both ``i`` and ``j`` in the prefix;
    * ``window`` ``W`` (static, causal attention): ``i - j < W`` (the query and the
      ``W - 1`` keys before it, Mistral);
    * ``kv_valid [B, S]`` bool: key ``j`` is a real token (padding masks keys only,
      as Hugging Face's models do; outputs at padded queries are never read);
    * ``q_segments [B, T]``, ``kv_segments [B, S]`` int: same segment id (packed rows);
    * ``dense_mask [B|1, 1|H, T, S]`` bool: an explicit mask (the decoding cache's slots).

    E.g. ``AttentionMask(causal=True, kv_valid=jnp.asarray([[1, 1, 0]])).dense(3, 3)``
    is ``[[[[1, 0, 0], [1, 1, 0], [1, 1, 0]]]]`` (True as 1).
    """

    kv_valid: Array | None = None
    q_segments: Array | None = None
    kv_segments: Array | None = None
    prefix: Array | None = None
    dense_mask: Array | None = None
    causal: bool = struct.field(pytree_node=False, default=False)
    window: int | None = struct.field(pytree_node=False, default=None)

    @property
    def kind(self) -> str:
        """``explicit`` (a dense array), ``prefix`` (prefix LM), ``segments`` (packed),
        or ``simple``: causal / window / key padding only (every backend's fast case)."""
        if self.dense_mask is not None:
            return "explicit"
        if self.prefix is not None:
            return "prefix"
        if self.q_segments is not None:
            return "segments"
        return "simple"

    def kv_lengths(self) -> Array | None:
        """``[B]`` int32 number of real keys, valid when padding is trailing (the
        data pipeline, task rows and scoring right-pad); None without padding."""
        if self.kv_valid is None:
            return None
        return self.kv_valid.astype(jnp.int32).sum(-1)

    def logits_masks(self, t: int, s: int) -> list[Array]:
        """Boolean factors, each broadcastable to ``[B, H, T, S]``, that the logits are
        masked by one after another (each a ``where`` fused into the softmax).
        Causal and window parts are one ``[T, S]`` iota comparison and padding is
        ``[B, 1, 1, S]``, never combined into a ``[B, 1, T, S]`` array; only segments,
        a prefix or an explicit mask carry a batch *and* both lengths."""
        out = []
        if self.causal:
            i = jax.lax.broadcasted_iota(jnp.int32, (t, s), 0)
            j = jax.lax.broadcasted_iota(jnp.int32, (t, s), 1)
            c = j <= i  # [T, S]
            if self.window is not None and self.window < s:
                c = c & (i - j < self.window)
            if self.prefix is not None:
                p = self.prefix.astype(bool)
                c = c | (p[:, None, :, None] & p[:, None, None, :])  # [B, 1, T, T]
            out.append(c)
        if self.kv_valid is not None:
            out.append(self.kv_valid.astype(bool)[:, None, None, :])  # [B, 1, 1, S]
        if self.q_segments is not None:
            q = self.q_segments[:, None, :, None]
            out.append(q == self.kv_segments[:, None, None, :])  # [B, 1, T, S]
        if self.dense_mask is not None:
            out.append(self.dense_mask)
        return out

    def dense(self, t: int, s: int) -> Array:
        """The mask as one ``[B|1, 1|H, T, S]`` bool array (prefix tuning, tests)."""
        m = jnp.ones((1, 1, t, s), bool)
        for factor in self.logits_masks(t, s):
            m = m & factor
        return m


def self_attention_mask(
    batch: dict[str, Array],
    causal: bool,
    prefix_key: str = "prefix_mask",
    window: int | None = None,
    segment_key: str = "segment_ids",
    mask_key: str = "attention_mask",
) -> AttentionMask:
    """The :class:`AttentionMask` of self-attention over one row stream of ``batch``:
    the one mask builder of every family (encoder, decoder, T5's decoder with its
    ``decoder_*`` keys).

    Uses ``segment_key`` when present (packed rows), else ``mask_key`` (1 = token,
    0 = padding), else nothing; causal (or prefix LM with ``prefix_key``) and, with
    ``window``, the sliding window. E.g. a batch with ``attention_mask [[1, 1, 0]]``
    and ``causal=True`` gives ``AttentionMask(causal=True, kv_valid=[[T, T, F]])``.
    """
    mask = AttentionMask(causal=causal, window=window if causal else None)
    if segment_key in batch:
        seg = batch[segment_key]
        mask = mask.replace(q_segments=seg, kv_segments=seg)
    elif mask_key in batch:
        mask = mask.replace(kv_valid=batch[mask_key].astype(bool))
    if causal and prefix_key in batch:
        mask = mask.replace(prefix=batch[prefix_key].astype(bool))
    return mask


def cross_attention_mask(
    q_segments: Array | None, kv_segments: Array | None, kv_valid: Array | None
) -> AttentionMask:
    """Decoder -> encoder: packed rows see their own segment (both segment ids
    given), otherwise queries see the real keys (``kv_valid [B, S]``)."""
    if q_segments is not None and kv_segments is not None:
        return AttentionMask(q_segments=q_segments, kv_segments=kv_segments)
    return AttentionMask(kv_valid=kv_valid)


def explicit(mask: Array) -> AttentionMask:
    """An explicit ``[B|1, 1|H, T, S]`` bool mask (cached decoding's slots)."""
    return AttentionMask(dense_mask=mask)
