"""Decoder objectives: causal LM and prefix LM on packed rows.

Rows come from the ``doc [EOS]`` stream of :mod:`t5x_lite.data.packing`, one token
wider than ``seq_len`` so that every position has its next token. Prefix LM gives
every document segment of a row its own prefix and loss mask (``prefix_lengths(...,
slot=slot)``), as UL2's S denoiser gives each packed example its own split.
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


def _document_segments(slot: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(offset, length, start)``, each ``[B, T]``, of each input position's document
    segment in ``[B, T+1]`` rows: its place in the segment, the segment's input tokens
    and the row position where the segment starts."""
    seg, offset = segments_and_positions(slot[:, :-1])
    b, t = seg.shape
    flat = np.arange(b)[:, None] * (t + 1) + seg  # [B, T] ids of (row, segment)
    length = np.bincount(flat.ravel(), minlength=b * (t + 1))[flat]
    return offset, length, np.arange(t) - offset


def prefix_lengths(
    key: int,
    rows: np.ndarray,
    seq_len: int,
    prefix_fraction: float,
    *,
    slot: np.ndarray | None = None,
) -> np.ndarray:
    """Prefix lengths: ``round(fraction * n)`` or, when the fraction is 0, uniform in
    ``[1, n - 1]`` (a fresh draw per row and epoch), always within ``[1, n - 1]``.

    Without ``slot``: ``[B]``, one prefix per row of ``n = seq_len`` tokens (the
    row's first tokens, whatever documents they belong to). With ``slot`` (``[B, T+1]``,
    ``T = seq_len``): ``[B, T]``, per document: every position holds the prefix length
    of its document segment, ``n`` being the segment's input tokens (halves round to
    even; a one-token segment gets 1), drawn per ``(row, segment start)``.

    Example (``seq_len=13``, fraction 0.6; documents of 2, 5 and 6 input tokens,
    ``slot = [[0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2]]``)::

        without slot  [8]                    round(0.6 * 13)
        with slot     [[1, 1, 3, 3, 3, 3, 3, 4, 4, 4, 4, 4, 4]]   1.2, 3.0, 3.6 rounded
    """
    rows = np.asarray(rows, dtype=np.int64)
    if slot is None:
        if prefix_fraction > 0:
            p = round(prefix_fraction * seq_len)
            return np.full(len(rows), min(max(p, 1), seq_len - 1), dtype=np.int64)
        return 1 + rng.randint(key, rows, seq_len - 1)
    if slot.shape[1] != seq_len + 1:
        raise ValueError(
            f"slot has {slot.shape[1]} tokens per row, not seq_len + 1 = {seq_len + 1}"
        )
    _, length, start = _document_segments(slot)
    top = np.maximum(length - 1, 1)  # [B, T]
    if prefix_fraction > 0:
        p = np.rint(prefix_fraction * length).astype(np.int64)
        return np.clip(p, 1, top)
    return 1 + rng.randint(key, rows[:, None] * seq_len + start, top)


def prefix_lm(ids: np.ndarray, slot: np.ndarray, prefix_len: np.ndarray) -> dict[str, np.ndarray]:
    """Causal LM whose prefixes are bidirectional and carry no loss.

    Adds ``prefix_mask`` ``[B, T]`` (True on prefix tokens) and drops the loss on labels
    inside a prefix (the model sees them); the last prefix token predicts the first
    token after the prefix. ``prefix_len`` comes from :func:`prefix_lengths`:

    * ``[B, T]`` (per document, ``slot=`` given there): every document segment of the
      row has its own prefix, its first ``prefix_len`` tokens. The model's mask is
      ``segment & (causal | prefix x prefix)``, so a prefix token sees its own
      document's prefix only and the rest of each document is causal.
    * ``[B]``: the row's first ``prefix_len`` positions, whatever documents they are in.

    Example (EOS = 1; a packed row of three documents: the end of ``[.., 6]``, then
    ``[7, 8, 9, 10]`` and ``[11, .., 17, ..]``, which goes on in the next row; per
    document prefixes of 1, 3 and 4 tokens)::

        ids          [[6, 1, 7, 8, 9, 10, 1, 11, 12, 13, 14, 15, 16, 17]]
        slot         [[0, 0, 1, 1, 1, 1,  1, 2,  2,  2,  2,  2,  2,  2]]
        prefix_len   [[1, 1, 3, 3, 3, 3,  3, 4,  4,  4,  4,  4,  4]]
        ->  input_ids    [[6, 1, 7, 8, 9, 10, 1, 11, 12, 13, 14, 15, 16]]
            labels       [[1, 7, 8, 9, 10, 1, 11, 12, 13, 14, 15, 16, 17]]
            segment_ids  [[1, 1, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3]]
            positions    [[0, 1, 0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5]]
            prefix_mask  [[T, F, T, T, T, F, F, T, T, T, T, F, F]]
            loss_weights [[1, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 1, 1]]

    (9 predicts 10 and 14 predicts 15 with loss; EOS never predicts the next
    document.) With ``prefix_len = [2]`` instead, only ``6, 1`` would be a prefix.
    """
    out = causal_lm(ids, slot)
    if prefix_len.ndim == 2:  # per document: offsets inside each segment
        offset, plen = out["positions"], prefix_len
    else:  # per row: offsets inside the row
        offset = np.broadcast_to(np.arange(out["input_ids"].shape[1]), out["input_ids"].shape)
        plen = prefix_len[:, None]
    out["prefix_mask"] = offset < plen
    out["loss_weights"] = (out["loss_weights"] * (offset + 1 >= plen)).astype(np.float32)
    return out


# --------------------------------------------------------------------------- table rows


def _lm_layout(data: Any, tok: Any) -> Layout:
    # Documents end in EOS; one extra stream token gives the last position its label.
    return Layout(prefix=(), suffix=(tok.eos_id,), width=data.seq_len, extra=1)


def _causal_rows(src: Any, epoch: int, rows: np.ndarray, ids: np.ndarray, slot: np.ndarray):
    return causal_lm(ids, slot)


def _prefix_rows(src: Any, epoch: int, rows: np.ndarray, ids: np.ndarray, slot: np.ndarray):
    # Each document of a packed row gets its own prefix and loss mask.
    data = src.data
    plen = prefix_lengths(
        src.key(epoch, "prefix"), rows, data.seq_len, data.prefix_fraction, slot=slot
    )
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
