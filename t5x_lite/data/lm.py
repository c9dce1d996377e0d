"""Decoder objectives: causal LM and prefix LM on packed rows.

Rows come from the ``doc [EOS]`` stream of :mod:`t5x_lite.data.packing`, one token
wider than ``seq_len`` so that every position has its next token.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from t5x_lite.config import objectives
from t5x_lite.data import rng
from t5x_lite.data.packing import segments_and_positions
from t5x_lite.data.rows import Layout, RowBuilder


def causal_lm(ids: np.ndarray, slot: np.ndarray) -> dict[str, np.ndarray]:
    """Next-token prediction on packed rows.

    Args:
      ids: ``[B, T+1]`` stream tokens; slot: ``[B, T+1]`` document slot of each token.
    Returns ``input_ids``, ``labels`` (``labels[t] = ids[t+1]``), ``loss_weights`` (1
    where the next token is in the same document), ``segment_ids``, ``positions``, all
    ``[B, T]``.

    Example (EOS = 1, two documents ``[5, 6]`` and ``[7, 8, 9]``)::

        ids  = [[5, 6, 1, 7, 8]]       slot = [[0, 0, 0, 1, 1]]
        ->  input_ids    [[5, 6, 1, 7]]
            labels       [[6, 1, 7, 8]]
            loss_weights [[1, 1, 0, 1]]   (EOS does not predict the next document)
            segment_ids  [[1, 1, 1, 2]]
            positions    [[0, 1, 2, 0]]
    """
    segment_ids, positions = segments_and_positions(slot[:, :-1])
    return {
        "input_ids": ids[:, :-1].astype(np.int32),
        "labels": ids[:, 1:].astype(np.int32),
        "loss_weights": (slot[:, 1:] == slot[:, :-1]).astype(np.float32),
        "segment_ids": segment_ids,
        "positions": positions,
    }


def prefix_lengths(key: int, rows: np.ndarray, seq_len: int, prefix_fraction: float) -> np.ndarray:
    """``[B]`` prefix length per row: ``round(fraction * seq_len)`` or uniform in
    ``[1, seq_len - 1]`` when the fraction is 0 (a fresh draw per row and epoch)."""
    if prefix_fraction > 0:
        p = round(prefix_fraction * seq_len)
        return np.full(len(rows), min(max(p, 1), seq_len - 1), dtype=np.int64)
    return 1 + rng.randint(key, np.asarray(rows), seq_len - 1)


def prefix_lm(ids: np.ndarray, slot: np.ndarray, prefix_len: np.ndarray) -> dict[str, np.ndarray]:
    """Causal LM whose first ``prefix_len`` positions form a bidirectional prefix.

    Adds ``prefix_mask`` ``[B, T]`` (True on the prefix) and drops the loss on labels
    inside the prefix (the model sees them).

    Example (the causal example above with ``prefix_len = [2]``)::

        prefix_mask  [[True, True, False, False]]
        loss_weights [[0, 1, 0, 1]]   (label 6 is in the prefix; EOS position as before)
    """
    out = causal_lm(ids, slot)
    t = np.arange(out["input_ids"].shape[1])
    prefix_mask = t[None, :] < prefix_len[:, None]
    out["prefix_mask"] = prefix_mask
    out["loss_weights"] = out["loss_weights"] * (t[None, :] + 1 >= prefix_len[:, None])
    out["loss_weights"] = out["loss_weights"].astype(np.float32)
    return out


# --------------------------------------------------------------------------- table rows


def _lm_layout(data: Any, tok: Any) -> Layout:
    # Documents end in EOS; one extra stream token gives the last position its label.
    return Layout(prefix=(), suffix=(tok.eos_id,), width=data.seq_len, extra=1)


def _causal_rows(src: Any, epoch: int, rows: np.ndarray, ids: np.ndarray, slot: np.ndarray):
    return causal_lm(ids, slot)


def _prefix_rows(src: Any, epoch: int, rows: np.ndarray, ids: np.ndarray, slot: np.ndarray):
    data = src.data
    plen = prefix_lengths(src.key(epoch, "prefix"), rows, data.seq_len, data.prefix_fraction)
    return prefix_lm(ids, slot, plen)


objectives.register(
    objectives.ObjectiveSpec(
        name="causal_lm",
        families=("decoder",),
        min_seq_len=2,
        builder=RowBuilder(layout=_lm_layout, rows=_causal_rows),
    )
)
objectives.register(
    objectives.ObjectiveSpec(
        name="prefix_lm",
        families=("decoder",),
        min_seq_len=3,
        fields=("prefix_fraction",),
        builder=RowBuilder(layout=_lm_layout, rows=_prefix_rows),
    )
)
