"""Packing: documents laid end to end and cut into rows, with segment ids and positions.

Every packed objective reads its rows from one *stream*: the documents of a split in
a per-epoch order, each wrapped as ``prefix + document + suffix`` (causal LM: ``doc
[EOS]``; MLM: ``[CLS] doc [SEP]``; span corruption: the bare document, as T5's
``reduce_concat_tokens``). Row ``r`` of width ``n`` is ``stream[r*n : r*n + n]``:
nothing is padded, a document that does not fit continues in the next row, and its
tokens get one segment id per row (1, 2, ... in order) with positions restarting at 0.
The number of rows per epoch, ``(stream length - extra) // n``, does not depend on the
order, so a global row index maps to ``(epoch, row)`` by one division.

All functions are vectorised over rows; nothing loops over tokens in Python.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def stream_lengths(doc_starts: np.ndarray, prefix: Sequence[int], suffix: Sequence[int]):
    """``[D]`` int64 length of each wrapped document in the stream."""
    return np.diff(doc_starts).astype(np.int64) + len(prefix) + len(suffix)


def stream_window(
    tokens: np.ndarray,
    doc_starts: np.ndarray,
    order: np.ndarray,
    cum_end: np.ndarray,
    starts: np.ndarray,
    width: int,
    prefix: Sequence[int] = (),
    suffix: Sequence[int] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """Tokens ``stream[s : s + width]`` for each ``s`` in ``starts``, and their slot.

    Args:
      tokens: ``[N]`` token ids of all documents (document d is
        ``tokens[doc_starts[d]:doc_starts[d+1]]``).
      doc_starts: ``[D+1]`` offsets.
      order: ``[D]`` the epoch's document order (stream slot j holds ``order[j]``).
      cum_end: ``[D]`` cumulative wrapped lengths of ``order``: slot j ends there.
      starts: ``[B]`` stream offsets of the rows.
    Returns:
      ids ``[B, width]`` int32 and slot ``[B, width]`` int64 (which stream slot, i.e.
      which document of the epoch, each token belongs to).

    Example: documents ``[11, 12]`` and ``[13]``, order ``[1, 0]``, suffix ``[1]``
    (EOS): the stream is ``13 1 11 12 1``, ``cum_end = [2, 5]``; ``starts=[1]``,
    ``width=3`` gives ids ``[[1, 11, 12]]`` and slot ``[[0, 1, 1]]``.
    """
    pos = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(width, dtype=np.int64)
    slot = np.searchsorted(cum_end, pos, side="right")  # [B, width]
    doc = order[slot]
    length = doc_starts[doc + 1] - doc_starts[doc]
    off = pos - (cum_end[slot] - (length + len(prefix) + len(suffix)))  # offset in wrapped doc
    body = off - len(prefix)
    inside = (body >= 0) & (body < length)
    idx = np.where(inside, doc_starts[doc] + body, 0)
    ids = np.asarray(tokens[idx.ravel()], dtype=np.int32).reshape(idx.shape)
    if prefix:
        pre = np.asarray(prefix, dtype=np.int32)
        ids = np.where(off < len(prefix), pre[np.minimum(off, len(prefix) - 1)], ids)
    if suffix:
        suf = np.asarray(suffix, dtype=np.int32)
        after = body - length
        ids = np.where(after >= 0, suf[np.clip(after, 0, len(suffix) - 1)], ids)
    return ids.astype(np.int32), slot


def segment_positions(segment_ids: np.ndarray) -> np.ndarray:
    """Position of each token inside its run of equal segment ids (0 for padding too).

    The one numpy definition of packed positions (the models' jax twin is
    :func:`t5x_lite.layers.segment_positions`).

    >>> segment_positions(np.array([[1, 1, 1, 2, 2, 0]])).tolist()
    [[0, 1, 2, 0, 1, 0]]
    """
    b, t = segment_ids.shape
    new = np.ones((b, t), dtype=bool)
    new[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    idx = np.arange(t, dtype=np.int32)
    run_start = np.maximum.accumulate(np.where(new, idx, 0), axis=1)
    return np.where(segment_ids > 0, idx - run_start, 0).astype(np.int32)


def segments_and_positions(slot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Segment ids (1, 2, ... per run of equal slots) and positions restarting per run.

    >>> seg, pos = segments_and_positions(np.array([[7, 7, 8, 8, 8, 9]]))
    >>> seg.tolist(), pos.tolist()
    ([[1, 1, 2, 2, 2, 3]], [[0, 1, 0, 1, 2, 0]])
    """
    new = np.ones(slot.shape, dtype=bool)
    new[:, 1:] = slot[:, 1:] != slot[:, :-1]
    segment_ids = np.cumsum(new, axis=1, dtype=np.int32)
    return segment_ids, segment_positions(segment_ids)


def encoder_decoder_batch(inputs: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
    """Encoder/decoder arrays of one-example rows (padding = id 0).

    >>> b = encoder_decoder_batch(np.array([[7, 99, 1, 0]]), np.array([[99, 8, 1]]))
    >>> b["decoder_input_ids"].tolist(), b["segment_ids"].tolist()
    ([[0, 99, 8]], [[1, 1, 1, 0]])
    """
    seg = (inputs != 0).astype(np.int32)
    dseg = (targets != 0).astype(np.int32)
    return {
        "input_ids": inputs.astype(np.int32),
        "segment_ids": seg,
        "positions": segment_positions(seg),
        "decoder_input_ids": shift_right(targets, dseg),
        "decoder_segment_ids": dseg,
        "decoder_positions": segment_positions(dseg),
        "labels": targets.astype(np.int32),
        "loss_weights": dseg.astype(np.float32),
    }


def pad_to(x: np.ndarray, width: int, value: int = 0) -> np.ndarray:
    """Right-pad (or keep) ``[B, n]`` to ``[B, width]``.

    >>> pad_to(np.array([[1, 2]]), 4).tolist()
    [[1, 2, 0, 0]]
    """
    if x.shape[1] > width:
        raise ValueError(f"row of {x.shape[1]} tokens does not fit width {width}")
    out = np.full((x.shape[0], width), value, dtype=x.dtype)
    out[:, : x.shape[1]] = x
    return out


def shift_right(labels: np.ndarray, segment_ids: np.ndarray, start_id: int = 0) -> np.ndarray:
    """Decoder inputs: labels shifted right within each segment, ``start_id`` first.

    >>> shift_right(np.array([[5, 6, 1, 7, 1, 0]]), np.array([[1, 1, 1, 2, 2, 0]])).tolist()
    [[0, 5, 6, 0, 7, 0]]
    """
    out = np.zeros_like(labels)
    out[:, 1:] = labels[:, :-1]
    first = np.ones_like(segment_ids, dtype=bool)
    first[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    out = np.where(first, start_id, out)
    return np.where(segment_ids > 0, out, 0).astype(labels.dtype)


def place_segments(
    ids: np.ndarray,
    segment_ids: np.ndarray,
    positions: np.ndarray,
    rows: np.ndarray,
    offsets: np.ndarray,
    values: np.ndarray,
    lengths: np.ndarray,
    segment: int | np.ndarray,
) -> None:
    """Write ``values[k, :lengths[k]]`` into row ``rows[k]`` of ``ids`` from column
    ``offsets[k]`` (in place), with segment id ``segment`` and positions 0, 1, ...

    Packs variable-length examples into rows side by side (UL2's encoder and decoder
    rows); raises ValueError when one would run past the row.

    >>> ids, seg, pos = (np.zeros((1, 6), np.int32) for _ in range(3))
    >>> place_segments(ids, seg, pos, np.array([0]), np.array([2]), np.array([[7, 8, 9]]),
    ...                np.array([2]), 3)
    >>> ids.tolist(), seg.tolist(), pos.tolist()
    ([[0, 0, 7, 8, 0, 0]], [[0, 0, 3, 3, 0, 0]], [[0, 0, 0, 1, 0, 0]])
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(rows) and int((np.asarray(offsets) + lengths).max()) > ids.shape[1]:
        raise ValueError(f"segments run past a row of {ids.shape[1]} tokens")
    t = np.arange(values.shape[1])
    keep = t[None, :] < lengths[:, None]  # [g, n]
    r = np.broadcast_to(np.asarray(rows)[:, None], keep.shape)[keep]
    c = (np.asarray(offsets, dtype=np.int64)[:, None] + t[None, :])[keep]
    ids[r, c] = values[keep]
    segment_ids[r, c] = np.broadcast_to(np.asarray(segment)[..., None], keep.shape)[keep]
    positions[r, c] = np.broadcast_to(t, keep.shape)[keep]
