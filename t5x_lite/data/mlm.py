"""Masked language modelling (BERT / RoBERTa), vectorised over rows.

Each non-special token is selected with probability ``probability`` (15%); a selected
token becomes ``[MASK]`` with probability ``mask_rate`` (80%), a different random
ordinary token with ``random_rate`` (10%), and stays unchanged otherwise. Special
tokens ([CLS], [SEP], pad, EOS, sentinels, ...) are never selected. With whole-word
masking the selection is drawn once per word (a word starts at a SentencePiece piece
beginning with U+2581 or after a special token) and applies to all its pieces.

The draws are counter-based (:mod:`t5x_lite.data.rng`): the mask of row ``r`` depends
only on ``(key, r)``, and the pipeline derives ``key`` from the seed, the split and the
epoch, so an example gets a fresh mask each time it is seen (RoBERTa's dynamic
masking), identical across processes and restores.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from t5x_lite.config import objectives
from t5x_lite.data import rng
from t5x_lite.data.packing import segments_and_positions
from t5x_lite.data.rows import Layout, RowBuilder


def mask_tokens(
    ids: np.ndarray,
    key: int,
    rows: np.ndarray,
    *,
    special_mask: np.ndarray,
    normal_ids: np.ndarray,
    mask_id: int,
    probability: float = 0.15,
    mask_rate: float = 0.8,
    random_rate: float = 0.1,
    word_start_mask: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Apply BERT's 80/10/10 masking to ``ids``.

    Args:
      ids: ``[B, T]`` int token ids (padding must be marked special).
      key: 64-bit key of the draws; rows: ``[B]`` row numbers (the counters).
      special_mask: ``[V]`` bool, tokens never selected.
      normal_ids: ``[K]`` sorted ids a random replacement is drawn from.
      word_start_mask: ``[V]`` bool; when given, whole words are selected.
    Returns:
      ``input_ids`` (masked), ``labels`` (= the original ``ids``) and ``loss_weights``
      (1.0 at selected positions), all ``[B, T]``.

    Example (``[MASK]`` = 6, specials 0/4/5, ``normal_ids = arange(10, 40)``)::

        mask_tokens(np.array([[4, 11, 12, 13, 14, 15, 16, 17, 18, 5]]), key=4,
                    rows=np.array([0]), probability=0.5, ...)
        -> input_ids    [[4, 11, 12, 13, 14, 30, 16, 17, 6, 5]]
           labels       [[4, 11, 12, 13, 14, 15, 16, 17, 18, 5]]
           loss_weights [[0, 0, 0, 0, 1, 1, 0, 0, 1, 0]]

        (14 selected and kept, 15 replaced by the random 30, 18 masked)
    """
    ids = np.asarray(ids)
    t = ids.shape[1]
    counters = np.asarray(rows, dtype=np.int64)[:, None] * t + np.arange(t)  # [B, T]
    special = special_mask[ids]
    u_select = rng.uniform(rng.derive_key(key, "select"), counters)
    if word_start_mask is not None:
        start = word_start_mask[ids]
        start[:, 0] = True
        start[:, 1:] |= special[:, :-1]
        idx = np.arange(t)
        word_start_pos = np.maximum.accumulate(np.where(start, idx, 0), axis=1)
        u_select = np.take_along_axis(u_select, word_start_pos, axis=1)
    selected = (u_select < probability) & ~special
    u_action = rng.uniform(rng.derive_key(key, "action"), counters)
    to_mask = selected & (u_action < mask_rate)
    to_random = selected & (u_action >= mask_rate) & (u_action < mask_rate + random_rate)
    # A random ordinary token other than the original (uniform over the rest of the pool).
    k = len(normal_ids)
    pos = np.minimum(np.searchsorted(normal_ids, ids), k - 1)
    in_pool = normal_ids[pos] == ids
    draw = rng.randint(rng.derive_key(key, "replace"), counters, np.where(in_pool, k - 1, k))
    draw = draw + (in_pool & (draw >= pos))
    replacement = normal_ids[np.minimum(draw, k - 1)]
    out = np.where(to_mask, mask_id, np.where(to_random, replacement, ids))
    return {
        "input_ids": out.astype(np.int32),
        "labels": ids.astype(np.int32),
        "loss_weights": selected.astype(np.float32),
    }


# --------------------------------------------------------------------------- table rows


def mask_batch(src: Any, ids: np.ndarray, epoch: int, rows: np.ndarray) -> dict[str, np.ndarray]:
    """:func:`mask_tokens` with the settings of ``src.data`` and ``src.tok``."""
    data, tok = src.data, src.tok
    return mask_tokens(
        ids,
        src.key(epoch, "mlm"),
        rows,
        special_mask=tok.special_mask,
        normal_ids=tok.normal_ids,
        mask_id=tok.mask_id,
        probability=data.mlm_probability,
        mask_rate=data.mask_token_rate,
        random_rate=data.random_token_rate,
        word_start_mask=tok.word_start_mask if data.whole_word_masking else None,
    )


def _layout(data: Any, tok: Any) -> Layout:
    # Each document as [CLS] doc [SEP], packed.
    return Layout(prefix=(tok.cls_id,), suffix=(tok.sep_id,), width=data.seq_len)


def _rows(src: Any, epoch: int, rows: np.ndarray, ids: np.ndarray, slot: np.ndarray):
    segment_ids, positions = segments_and_positions(slot)
    return {
        **mask_batch(src, ids, epoch, rows),
        "segment_ids": segment_ids,
        "positions": positions,
        "token_type_ids": np.zeros_like(ids),
    }


objectives.register(
    objectives.ObjectiveSpec(
        name="mlm",
        families=("encoder",),
        min_seq_len=4,
        fields=("mlm_probability", "mask_token_rate", "random_token_rate", "whole_word_masking"),
        builder=RowBuilder(layout=_layout, rows=_rows),
    )
)
