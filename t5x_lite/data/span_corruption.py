"""T5 span corruption, with the arithmetic of T5's ``random_spans_noise_mask``.

A chunk of ``length`` raw tokens gets ``num_noise = round(length * noise_density)``
noise tokens, clipped to ``[1, length - 1]``, in ``num_spans = round(num_noise /
mean_noise_span_length)`` spans, at least one (:func:`noise_counts`). The split of
noise and non-noise tokens into spans is uniformly random, non-noise first, exactly as
T5's ``_random_segmentation``. Inputs keep the non-noise tokens and put
``<extra_id_i>`` in place of span i; targets hold each sentinel followed by the span it
replaced; both end in EOS. :func:`random_spans_helper` is T5's choice of the raw
``tokens_length`` whose inputs fill ``inputs_length`` (512 -> 568 raw tokens and 114
target tokens; 2048 -> 2274 and 456), hence rows need no padding at all.

Sentinels. A row needs one sentinel per noise span and the tokenizer has a fixed
number of them (``max_spans``, e.g. 100). T5 numbers span i as ``vocab_size - 1 - i``
and so runs into ordinary pieces past its 100 extra ids; here a length that needs more
spans than there are sentinels is a one-line :class:`ConfigError` naming the length,
density, mean span and sentinel count (span corruption at ``seq_len=2048``, density
0.15, mean span 3 needs 114). UL2 instead caps each example's length
(:mod:`t5x_lite.data.ul2`). ``max_spans=None`` only does the arithmetic.

Everything is vectorised over rows: all rows of a call share the same lengths.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from t5x_lite.config import ConfigError, objectives
from t5x_lite.data import packing, rng
from t5x_lite.data.rows import Layout, RowBuilder


def noise_counts(
    length: int,
    noise_density: float,
    mean_noise_span_length: float,
    max_spans: int | None = None,
) -> tuple[int, int]:
    """``(num_noise_tokens, num_noise_spans)`` of a chunk of ``length`` tokens, as T5.

    T5's ``random_spans_noise_mask``: ``length`` at least 2, noise tokens
    ``round(length * density)`` clipped to ``[1, length - 1]``, spans
    ``round(noise / mean)`` at least 1, in float32 with halves to even as its
    ``tf.round`` (``30 * 0.15`` is 4.5000002 in float32: 5 noise tokens, where Python
    floats say 4). Spans are also kept within the noise and non-noise token counts,
    where T5 fails (a mean span below 1, or fewer non-noise tokens than spans).
    ``max_spans`` is the number of sentinels: a count above it raises
    :class:`ConfigError`.

    >>> noise_counts(568, 0.15, 3.0)
    (85, 28)
    >>> noise_counts(2274, 0.15, 3.0)  # 114 spans: more than 100 sentinels
    (341, 114)
    """
    length = max(int(length), 2)
    f32 = np.float32
    num_noise = int(np.round(f32(length) * f32(noise_density)))
    num_noise = min(max(num_noise, 1), length - 1)
    num_spans = max(int(np.round(f32(num_noise) / f32(mean_noise_span_length))), 1)
    num_spans = min(num_spans, num_noise, length - num_noise)
    if max_spans is not None and num_spans > max_spans:
        raise ConfigError(
            f"span corruption of length={length} tokens at noise_density={noise_density}, "
            f"mean_noise_span_length={mean_noise_span_length} makes {num_spans} noise spans, "
            f"more than the {max_spans} sentinels of the tokenizer"
        )
    return num_noise, num_spans


def corrupted_lengths(
    tokens_length: int,
    noise_density: float,
    mean_noise_span_length: float,
    max_spans: int | None = None,
) -> tuple[int, int]:
    """``(inputs_length, targets_length)`` of one corrupted chunk, EOS included.

    >>> corrupted_lengths(568, 0.15, 3.0)  # 483 kept + 28 sentinels + EOS; 85 + 28 + 1
    (512, 114)
    """
    num_noise, num_spans = noise_counts(
        tokens_length, noise_density, mean_noise_span_length, max_spans
    )
    return tokens_length - num_noise + num_spans + 1, num_noise + num_spans + 1


def random_spans_helper(
    inputs_length: int,
    noise_density: float,
    mean_noise_span_length: float,
    max_spans: int | None = None,
    *,
    extra_tokens_per_span_inputs: int = 1,
    extra_tokens_per_span_targets: int = 1,
) -> tuple[int, int]:
    """T5's ``random_spans_helper``: ``(tokens_length, targets_length)``.

    ``tokens_length`` is the largest raw length (searched upwards from
    ``inputs_length - 1``) whose inputs, ``extra_tokens_per_span_inputs`` per noise
    span and EOS included, fit ``inputs_length``; ``targets_length`` its targets. When
    ``noise_density == 0.5`` and the targets would be longer than the inputs, both
    shrink by one (T5's adjustment, which keeps targets at the round inputs length).

    T5's helper counts in Python floats without its mask's clipping, the mask (and
    :func:`noise_counts`) in float32 with it; the two disagree at a few lengths (one
    in 40 at density 0.15, e.g. 30 * 0.15 = 4.5; chunks with less than half a mean
    span of noise). Rows are made by the mask, so where T5's pair would not hold them
    ``tokens_length`` drops until the inputs fit and ``targets_length`` grows to the
    targets; elsewhere the pair is T5's. ``max_spans`` (the sentinels) raises
    :class:`ConfigError` when the chosen length needs more spans; no silent cap.

    >>> random_spans_helper(512, 0.15, 3.0)
    (568, 114)
    >>> random_spans_helper(2048, 0.15, 3.0)
    (2274, 456)
    >>> random_spans_helper(512, 0.5, 3.0)  # 767 would give 513 targets
    (766, 512)
    """

    def encoded(n: int, num_noise: int, num_spans: int) -> tuple[int, int]:
        return (
            n - num_noise + num_spans * extra_tokens_per_span_inputs + 1,  # EOS
            num_noise + num_spans * extra_tokens_per_span_targets + 1,
        )

    def t5_lengths(n: int) -> tuple[int, int]:  # T5's helper: Python floats, no clipping
        num_noise = round(n * noise_density)
        return encoded(n, num_noise, round(num_noise / mean_noise_span_length))

    def mask_lengths(n: int) -> tuple[int, int]:  # what the noise mask makes
        return encoded(n, *noise_counts(n, noise_density, mean_noise_span_length))

    tokens_length = inputs_length - 1
    while t5_lengths(tokens_length + 1)[0] <= inputs_length:
        tokens_length += 1
    encoded_inputs, targets_length = t5_lengths(tokens_length)
    if noise_density == 0.5 and targets_length > encoded_inputs:
        tokens_length -= 1
        targets_length -= 1
    while tokens_length > 2 and mask_lengths(tokens_length)[0] > inputs_length:
        tokens_length -= 1
    targets_length = max(targets_length, mask_lengths(tokens_length)[1])
    if max_spans is not None:
        _, num_spans = noise_counts(tokens_length, noise_density, mean_noise_span_length)
        if num_spans > max_spans:
            raise ConfigError(
                f"span corruption at data.seq_len={inputs_length} ({tokens_length} raw tokens), "
                f"data.noise_density={noise_density}, "
                f"data.mean_noise_span_length={mean_noise_span_length} needs {num_spans} "
                f"sentinels per row; the tokenizer has {max_spans}"
            )
    return tokens_length, targets_length


def _random_segmentation(
    key: int, counters: np.ndarray, num_items: int, num_segments: int
) -> np.ndarray:
    """``[B, num_segments]`` positive lengths summing to ``num_items``, uniformly random.

    Chooses ``num_segments - 1`` distinct cut points among the ``num_items - 1`` gaps.
    """
    b = counters.shape[0]
    if num_segments == 1:
        return np.full((b, 1), num_items, dtype=np.int64)
    u = rng.uniform(key, counters[:, None] * (num_items + 1) + np.arange(num_items - 1))
    cuts = np.sort(np.argsort(u, axis=1)[:, : num_segments - 1], axis=1) + 1  # [B, k-1]
    bounds = np.concatenate(
        [np.zeros((b, 1), np.int64), cuts, np.full((b, 1), num_items, np.int64)], axis=1
    )
    return np.diff(bounds, axis=1)


def random_spans_noise_mask(
    length: int,
    noise_density: float,
    mean_noise_span_length: float,
    key: int,
    rows: np.ndarray,
    max_spans: int | None = None,
) -> np.ndarray:
    """``[B, length]`` bool noise mask per row, T5's algorithm (no random roll).

    Counts from :func:`noise_counts` (``max_spans``: the sentinels, checked there).

    Example (``length=10``, density 0.3, mean span 1.5 -> 3 noise tokens in 2 spans)::

        random_spans_noise_mask(10, 0.3, 1.5, key=1, rows=np.array([0]))
        -> [[F, F, F, F, T, F, F, F, T, T]]
    """
    rows = np.asarray(rows, dtype=np.int64)
    num_noise, num_spans = noise_counts(length, noise_density, mean_noise_span_length, max_spans)
    noise_len = _random_segmentation(rng.derive_key(key, "noise"), rows, num_noise, num_spans)
    keep_len = _random_segmentation(
        rng.derive_key(key, "keep"), rows, length - num_noise, num_spans
    )
    interleaved = np.stack([keep_len, noise_len], axis=2).reshape(len(rows), 2 * num_spans)
    span_starts = np.cumsum(interleaved, axis=1)[:, :-1]  # [B, 2k-1], all < length
    indicator = np.zeros((len(rows), length), dtype=np.int64)
    np.put_along_axis(indicator, span_starts, 1, axis=1)
    span_num = np.cumsum(indicator, axis=1)
    return (span_num % 2) == 1


def _to_sentinels(tokens: np.ndarray, mask: np.ndarray, sentinel_ids: np.ndarray) -> np.ndarray:
    """Replace each run of ``mask`` by one sentinel (run i -> ``sentinel_ids[i]``)."""
    prev = np.zeros_like(mask)
    prev[:, 1:] = mask[:, :-1]
    first = mask & ~prev
    later = mask & prev
    run = np.cumsum(first, axis=1) - 1
    out = np.where(first, sentinel_ids[np.maximum(run, 0)], tokens)  # run < len: checked
    keep = ~later
    return out[keep].reshape(tokens.shape[0], -1)  # same count in every row


def span_corruption(
    tokens: np.ndarray,
    key: int,
    rows: np.ndarray,
    *,
    noise_density: float,
    mean_noise_span_length: float,
    sentinel_ids: np.ndarray,
    eos_id: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Corrupt ``[B, n]`` raw chunks; returns ``(inputs, targets, noise_mask)``.

    Every noise span gets its own sentinel: more spans than ``sentinel_ids`` is a
    :class:`ConfigError` (see the module docstring).

    Example (sentinels ``<extra_id_0> = 99``, ``<extra_id_1> = 98``, EOS = 1, the mask
    of :func:`random_spans_noise_mask`'s example, key=1)::

        tokens  [[10, 11, 12, 13, 14, 15, 16, 17, 18, 19]]
        inputs  [[10, 11, 12, 13, 99, 15, 16, 17, 98, 1]]
        targets [[99, 14, 98, 18, 19, 1]]
    """
    mask = random_spans_noise_mask(
        tokens.shape[1], noise_density, mean_noise_span_length, key, rows, len(sentinel_ids)
    )
    eos = np.full((tokens.shape[0], 1), eos_id, dtype=np.int32)
    inputs = np.concatenate([_to_sentinels(tokens, mask, sentinel_ids), eos], axis=1)
    targets = np.concatenate([_to_sentinels(tokens, ~mask, sentinel_ids), eos], axis=1)
    return inputs.astype(np.int32), targets.astype(np.int32), mask


# --------------------------------------------------------------------------- table rows


def row_lengths(data: Any) -> objectives.RowLengths:
    """``(seq_len, targets)``: ``data.target_len`` or the targets T5's arithmetic makes
    from a full row (seq_len 512 -> 114); a ``target_len`` below that is an error."""
    _, derived = random_spans_helper(data.seq_len, data.noise_density, data.mean_noise_span_length)
    if data.target_len is not None and data.target_len < derived:
        raise ConfigError(
            f"data.target_len={data.target_len} is below the {derived} targets that "
            f"span corruption makes from data.seq_len={data.seq_len}"
        )
    return objectives.RowLengths(data.seq_len, data.target_len or derived)


def _layout(data: Any, tok: Any) -> Layout:
    width, _ = random_spans_helper(
        data.seq_len, data.noise_density, data.mean_noise_span_length, tok.num_sentinels
    )
    return Layout(prefix=(), suffix=(), width=width)


def _rows(src: Any, epoch: int, rows: np.ndarray, ids: np.ndarray, slot: np.ndarray):
    data, tok = src.data, src.tok
    inputs, targets, _ = span_corruption(
        ids,
        src.key(epoch, "spans"),
        rows,
        noise_density=data.noise_density,
        mean_noise_span_length=data.mean_noise_span_length,
        sentinel_ids=tok.sentinel_ids,
        eos_id=tok.eos_id,
    )
    inputs = packing.pad_to(inputs, src.input_len)
    targets = packing.pad_to(targets, src.target_len)
    return packing.encoder_decoder_batch(inputs, targets)


objectives.register(
    objectives.ObjectiveSpec(
        name="span_corruption",
        families=("encoder_decoder",),
        min_seq_len=8,
        fields=("noise_density", "mean_noise_span_length"),
        lengths=row_lengths,
        builder=RowBuilder(layout=_layout, rows=_rows),
    )
)
