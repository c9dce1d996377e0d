"""Objective transforms on small numpy arrays: exact hand-checked outputs and statistics."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import make_cfg

from t5x_lite.config import ConfigError
from t5x_lite.data import lm, mlm, packing, pipeline, rng, sentence_pairs, span_corruption, ul2

# A toy vocabulary: 0 pad, 1 eos, 2 bos, 3 unk, 4 [CLS], 5 [SEP], 6 [MASK], 7-9 modes,
# 10..899 ordinary, 900..999 sentinels (<extra_id_0> = 999).
V = 1000
SPECIAL = np.zeros(V, dtype=bool)
SPECIAL[:10] = True
SPECIAL[900:] = True
NORMAL = np.arange(10, 900, dtype=np.int32)
SENTINELS = np.arange(999, 899, -1, dtype=np.int32)


def test_rng_is_stateless_uniform_and_key_dependent():
    k = rng.derive_key(0, "mlm", 3)
    u = rng.uniform(k, np.arange(200_000))
    assert u.min() >= 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.003 and abs(u.var() - 1 / 12) < 0.001
    np.testing.assert_array_equal(u[1000:1010], rng.uniform(k, np.arange(1000, 1010)))
    assert not np.array_equal(u[:100], rng.uniform(rng.derive_key(0, "mlm", 4), np.arange(100)))
    r = rng.randint(k, np.arange(100_000), 7)
    assert r.min() == 0 and r.max() == 6
    assert np.all(np.abs(np.bincount(r) / 100_000 - 1 / 7) < 0.005)


# --------------------------------------------------------------------------- packing


def test_stream_window_docstring_example():
    tokens = np.array([11, 12, 13], dtype=np.int32)
    doc_starts = np.array([0, 2, 3])
    order = np.array([1, 0])
    lens = packing.stream_lengths(doc_starts, (), (1,))
    cum_end = np.cumsum(lens[order])
    assert cum_end.tolist() == [2, 5]
    ids, slot = packing.stream_window(
        tokens, doc_starts, order, cum_end, np.array([1]), 3, (), (1,)
    )
    assert ids.tolist() == [[1, 11, 12]]
    assert slot.tolist() == [[0, 1, 1]]


def test_stream_window_rows_tile_the_stream_with_prefix_and_suffix():
    tokens = np.arange(20, 33, dtype=np.int32)  # docs [20..23], [24], [25..32]
    doc_starts = np.array([0, 4, 5, 13])
    order = np.array([2, 0, 1])
    lens = packing.stream_lengths(doc_starts, (4,), (5,))
    cum_end = np.cumsum(lens[order])
    stream = [4, *range(25, 33), 5, 4, 20, 21, 22, 23, 5, 4, 24, 5]  # by hand
    ids, slot = packing.stream_window(
        tokens, doc_starts, order, cum_end, np.array([0, 5, 10, 14]), 5, (4,), (5,)
    )
    assert cum_end.tolist() == [10, 16, 19]
    assert ids.tolist() == [stream[0:5], stream[5:10], stream[10:15], stream[14:19]]
    assert slot.tolist() == [[0] * 5, [0] * 5, [1] * 5, [1, 1, 2, 2, 2]]
    seg, pos = packing.segments_and_positions(slot)
    assert seg.tolist() == [[1] * 5, [1] * 5, [1] * 5, [1, 1, 2, 2, 2]]
    assert pos.tolist() == [[0, 1, 2, 3, 4]] * 3 + [[0, 1, 0, 1, 2]]


def test_segments_shift_and_pad_examples():
    seg, pos = packing.segments_and_positions(np.array([[7, 7, 8, 8, 8, 9]]))
    assert seg.tolist() == [[1, 1, 2, 2, 2, 3]] and pos.tolist() == [[0, 1, 0, 1, 2, 0]]
    shifted = packing.shift_right(np.array([[5, 6, 1, 7, 1, 0]]), np.array([[1, 1, 1, 2, 2, 0]]))
    assert shifted.tolist() == [[0, 5, 6, 0, 7, 0]]
    assert packing.pad_to(np.array([[1, 2]]), 4).tolist() == [[1, 2, 0, 0]]
    with pytest.raises(ValueError):
        packing.pad_to(np.array([[1, 2, 3]]), 2)


# --------------------------------------------------------------------------- LM


def test_causal_lm_example():
    out = lm.causal_lm(np.array([[5, 6, 1, 7, 8]]), np.array([[0, 0, 0, 1, 1]]))
    assert out["input_ids"].tolist() == [[5, 6, 1, 7]]
    assert out["labels"].tolist() == [[6, 1, 7, 8]]
    assert out["loss_weights"].tolist() == [[1, 1, 0, 1]]
    assert out["segment_ids"].tolist() == [[1, 1, 1, 2]]
    assert out["positions"].tolist() == [[0, 1, 2, 0]]


def test_prefix_lm_example_and_lengths():
    out = lm.prefix_lm(np.array([[5, 6, 1, 7, 8]]), np.array([[0, 0, 0, 1, 1]]), np.array([2]))
    assert out["prefix_mask"].tolist() == [[True, True, False, False]]
    assert out["loss_weights"].tolist() == [[0, 1, 0, 1]]
    fixed = lm.prefix_lengths(0, np.arange(4), 10, 0.3)
    assert fixed.tolist() == [3, 3, 3, 3]
    drawn = lm.prefix_lengths(0, np.arange(10_000), 10, 0.0)
    assert drawn.min() == 1 and drawn.max() == 9
    assert set(np.bincount(drawn)[1:] // 100) <= {10, 11, 12}  # ~uniform over 1..9


# A packed row of three documents: the end of one ([.., 6] EOS), a whole one
# ([7, 8, 9, 10] EOS) and the start of one that goes on in the next row ([11, ..]).
THREE_DOCS = np.array([[6, 1, 7, 8, 9, 10, 1, 11, 12, 13, 14, 15, 16, 17]])
THREE_SLOTS = np.array([[0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2]])


def test_prefix_lm_gives_each_document_its_own_prefix_and_loss():
    plen = lm.prefix_lengths(0, np.array([0]), 13, 0.6, slot=THREE_SLOTS)
    # Segments of 2, 5 and 6 input tokens: round(1.2), round(3.0), round(3.6).
    assert plen.tolist() == [[1, 1, 3, 3, 3, 3, 3, 4, 4, 4, 4, 4, 4]]
    out = lm.prefix_lm(THREE_DOCS, THREE_SLOTS, plen)
    assert out["input_ids"].tolist() == [[6, 1, 7, 8, 9, 10, 1, 11, 12, 13, 14, 15, 16]]
    assert out["labels"].tolist() == [[1, 7, 8, 9, 10, 1, 11, 12, 13, 14, 15, 16, 17]]
    assert out["segment_ids"].tolist() == [[1, 1, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3]]
    assert out["positions"].tolist() == [[0, 1, 0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5]]
    assert out["prefix_mask"].astype(int).tolist() == [[1, 0, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0, 0]]
    # No loss on labels inside a prefix nor across documents; 9 -> 10, 14 -> 15 scored.
    assert out["loss_weights"].tolist() == [[1, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 1, 1]]
    assert out["loss_weights"].dtype == np.float32 and out["prefix_mask"].dtype == bool
    # The row-level prefix of 8 tokens would cover the first two documents and half of
    # the third's loss.
    row = lm.prefix_lm(THREE_DOCS, THREE_SLOTS, lm.prefix_lengths(0, np.array([0]), 13, 0.6))
    assert row["prefix_mask"].astype(int).tolist() == [[1] * 8 + [0] * 5]
    with pytest.raises(ValueError, match="seq_len"):
        lm.prefix_lengths(0, np.array([0]), 12, 0.6, slot=THREE_SLOTS)


def test_prefix_lm_random_prefixes_per_document():
    rows = np.arange(20_000)
    slot = np.repeat(THREE_SLOTS, len(rows), axis=0)
    plen = lm.prefix_lengths(rng.derive_key(0, "prefix"), rows, 13, 0.0, slot=slot)
    # Constant within a segment; uniform in [1, length - 1] (a one-token prefix for 2).
    seg = packing.segments_and_positions(slot[:, :-1])[0]
    for s, length in ((1, 2), (2, 5), (3, 6)):
        p = plen[seg == s].reshape(len(rows), -1)
        assert (p == p[:, :1]).all()
        counts = np.bincount(p[:, 0], minlength=length)[1:]
        assert len(counts) == length - 1
        assert np.all(np.abs(counts / len(rows) - 1 / (length - 1)) < 0.015), (s, counts)
    b, c = plen[:, 2], plen[:, 7]  # independent draws per document
    assert abs(np.corrcoef(b, c)[0, 1]) < 0.03
    # Row-keyed: a subset of rows draws the same prefixes.
    sub = lm.prefix_lengths(rng.derive_key(0, "prefix"), rows[5:9], 13, 0.0, slot=slot[5:9])
    np.testing.assert_array_equal(sub, plen[5:9])


# --------------------------------------------------------------------------- MLM


def _mask(ids, key, **kw):
    return mlm.mask_tokens(
        ids, key, np.arange(len(ids)), special_mask=SPECIAL, normal_ids=NORMAL, mask_id=6, **kw
    )


def test_mask_tokens_docstring_example():
    x = np.array([[4, 11, 12, 13, 14, 15, 16, 17, 18, 5]])
    out = mlm.mask_tokens(
        x,
        4,
        np.array([0]),
        special_mask=np.isin(np.arange(140), [0, 1, 2, 3, 4, 5, 6]),
        normal_ids=np.arange(10, 40),
        mask_id=6,
        probability=0.5,
    )
    assert out["input_ids"].tolist() == [[4, 11, 12, 13, 14, 30, 16, 17, 6, 5]]
    assert out["labels"].tolist() == x.tolist()
    assert out["loss_weights"].tolist() == [[0, 0, 0, 0, 1, 1, 0, 0, 1, 0]]


def test_mask_tokens_rates_over_20k_selected_and_never_specials():
    r = np.random.default_rng(0)
    ids = r.integers(10, 900, size=(400, 512))
    ids[:, 0], ids[:, -1] = 4, 5
    ids[r.random(ids.shape) < 0.05] = 0  # scattered padding / specials
    ids[:, 100] = 950  # a sentinel column
    out = _mask(ids, rng.derive_key(1, "mlm", 0))
    sel = out["loss_weights"] > 0
    cand = ~SPECIAL[ids]
    assert sel.sum() >= 20_000
    assert not (sel & SPECIAL[ids]).any()
    assert abs(sel.sum() / cand.sum() - 0.15) < 0.005
    inp = out["input_ids"]
    masked = sel & (inp == 6)
    kept = sel & (inp == ids)
    randomised = sel & ~masked & ~kept
    assert abs(masked.sum() / sel.sum() - 0.8) < 0.015
    assert abs(randomised.sum() / sel.sum() - 0.1) < 0.015
    assert abs(kept.sum() / sel.sum() - 0.1) < 0.015
    assert np.isin(inp[randomised], NORMAL).all()
    np.testing.assert_array_equal(inp[~sel], ids[~sel])
    np.testing.assert_array_equal(out["labels"], ids)


def test_mask_tokens_reproducible_per_key_and_fresh_per_epoch():
    ids = np.random.default_rng(1).integers(10, 900, size=(8, 64))
    a = _mask(ids, rng.derive_key(0, "train", 0, "mlm"))
    b = _mask(ids, rng.derive_key(0, "train", 0, "mlm"))
    c = _mask(ids, rng.derive_key(0, "train", 1, "mlm"))
    np.testing.assert_array_equal(a["input_ids"], b["input_ids"])
    assert (a["loss_weights"] != c["loss_weights"]).mean() > 0.1
    # A row's mask depends on its row number only, not on the rest of the batch.
    half = mlm.mask_tokens(
        ids[4:],
        rng.derive_key(0, "train", 0, "mlm"),
        np.arange(4, 8),
        special_mask=SPECIAL,
        normal_ids=NORMAL,
        mask_id=6,
    )
    np.testing.assert_array_equal(half["input_ids"], a["input_ids"][4:])


def test_whole_word_masking_selects_whole_words():
    word_start = np.zeros(V, dtype=bool)
    word_start[10:500] = True  # ids < 500 start a word, 500..899 continue it
    word_start |= SPECIAL
    r = np.random.default_rng(2)
    ids = np.where(r.random((300, 128)) < 0.4, r.integers(10, 500, (300, 128)), 0)
    ids = np.where(ids == 0, r.integers(500, 900, (300, 128)), ids)
    ids[:, 0] = 4
    out = _mask(ids, 5, word_start_mask=word_start)
    sel = out["loss_weights"] > 0
    starts = word_start[ids]
    word = np.cumsum(starts, axis=1)
    for row in range(50):
        for w in np.unique(word[row]):
            in_word = (word[row] == w) & ~SPECIAL[ids[row]]
            assert sel[row][in_word].all() or not sel[row][in_word].any()
    assert abs(sel.sum() / (~SPECIAL[ids]).sum() - 0.15) < 0.01


# --------------------------------------------------------------------------- spans


def _t5_random_spans_helper(
    inputs_length, noise_density, mean_noise_span_length, extra_inputs=1, extra_targets=1
):
    """T5's ``random_spans_helper`` (t5/data/preprocessors.py), transcribed literally."""

    def lengths(tokens_length):
        num_noise_tokens = round(tokens_length * noise_density)
        num_nonnoise_tokens = tokens_length - num_noise_tokens
        num_noise_spans = round(num_noise_tokens / mean_noise_span_length)
        return (
            num_nonnoise_tokens + num_noise_spans * extra_inputs + 1,
            num_noise_tokens + num_noise_spans * extra_targets + 1,
        )

    tokens_length = inputs_length - 1
    while lengths(tokens_length + 1)[0] <= inputs_length:
        tokens_length += 1
    inputs_length, targets_length = lengths(tokens_length)
    if noise_density == 0.5 and targets_length > inputs_length:
        tokens_length -= 1
        targets_length -= 1
    return tokens_length, targets_length


def _t5_mask_counts(length, noise_density, mean_noise_span_length):
    """``(num_noise_tokens, num_noise_spans)`` of T5's ``random_spans_noise_mask``
    (tf.float32 arithmetic; tf.round and np.round both round halves to even)."""
    f32 = np.float32
    length = np.maximum(np.asarray(length, np.int32), 2)
    num_noise_tokens = np.round(length.astype(f32) * f32(noise_density)).astype(np.int32)
    num_noise_tokens = np.minimum(np.maximum(num_noise_tokens, 1), length - 1)
    num_noise_spans = np.round(num_noise_tokens.astype(f32) / f32(mean_noise_span_length))
    return num_noise_tokens, np.maximum(num_noise_spans.astype(np.int32), 1)


# (noise_density, mean_noise_span_length) of T5 and of UL2's R and X denoisers, and more.
SPAN_SETTINGS = [(0.15, 3.0), (0.15, 8.0), (0.5, 3.0), (0.5, 8.0), (0.15, 64.0), (0.5, 64.0),
                 (0.25, 2.5), (0.3, 1.5)]  # fmt: skip


@pytest.mark.parametrize("inputs_length", [64, 128, 256, 512, 626, 1024])
def test_random_spans_helper_matches_t5(inputs_length):
    ours = span_corruption.random_spans_helper(inputs_length, 0.15, 3.0, max_spans=10**6)
    assert ours == _t5_random_spans_helper(inputs_length, 0.15, 3.0)
    assert span_corruption.random_spans_helper(512, 0.15, 3.0) == (568, 114)  # T5's C4 setup


def test_random_spans_helper_hand_checked_pairs():
    # 2274 raw: 341 noise in 114 spans -> inputs 1933 + 114 + 1 = 2048, targets 456.
    assert span_corruption.random_spans_helper(2048, 0.15, 3.0) == (2274, 456)
    # 767 raw would be 384 noise (383.5 rounds to even) in 128 spans: inputs 512 but
    # targets 513 > inputs; T5's density-0.5 adjustment takes 766 -> (512, 512).
    assert span_corruption.random_spans_helper(512, 0.5, 3.0) == (766, 512)
    assert span_corruption.corrupted_lengths(766, 0.5, 3.0) == (512, 512)
    assert span_corruption.random_spans_helper(568, 0.15, 3.0) == (630, 126)
    # Two tokens per span in the inputs (T5's extra_tokens_per_span_inputs=2): 538 raw
    # is 81 noise in 27 spans, 457 + 54 + 1 = 512; 539 would also be 81 noise -> 513.
    two = span_corruption.random_spans_helper(512, 0.15, 3.0, extra_tokens_per_span_inputs=2)
    assert two == _t5_random_spans_helper(512, 0.15, 3.0, extra_inputs=2) == (538, 109)


@pytest.mark.parametrize("density,mean", SPAN_SETTINGS)
def test_random_spans_helper_sweep_matches_t5_and_rows_fit(density, mean):
    differ = []
    for length in range(8, 1300):
        ours = span_corruption.random_spans_helper(length, density, mean)
        t5 = _t5_random_spans_helper(length, density, mean)
        inputs, targets = span_corruption.corrupted_lengths(ours[0], density, mean)
        assert inputs <= length and targets <= ours[1], length  # rows fit, padded at most
        # The rows T5's own mask (float32 counts) makes of T5's tokens_length.
        noise, spans = (int(x) for x in _t5_mask_counts(t5[0], density, mean))
        if t5[0] - noise + spans + 1 <= length and noise + spans + 1 <= t5[1]:
            assert ours == t5, length  # T5's pair holds T5's rows: it is ours
        elif round(round(t5[0] * density) / mean) >= 1:  # T5's helper counts a span
            # Python's round(k + 0.5) to even k, float32's up: one noise token and at
            # most one span more than T5's helper counted.
            assert ours[0] >= t5[0] - 1 and t5[1] <= ours[1] <= t5[1] + 2, length
            differ.append(length)
    assert len(differ) <= {0.15: 12, 0.5: 0, 0.25: 0, 0.3: 0}[density], differ


@pytest.mark.parametrize("density,mean", SPAN_SETTINGS)
def test_noise_counts_match_t5_mask(density, mean):
    n = np.arange(1, 5000)
    noise, spans = _t5_mask_counts(n, density, mean)
    ours = np.array([span_corruption.noise_counts(int(k), density, mean) for k in n])
    np.testing.assert_array_equal(ours[:, 0], noise)
    np.testing.assert_array_equal(ours[:, 1], spans)


def test_more_spans_than_sentinels_is_a_one_line_config_error():
    with pytest.raises(ConfigError) as err:
        span_corruption.random_spans_helper(2048, 0.15, 3.0, 100)
    msg = str(err.value)
    assert "\n" not in msg
    for part in ("data.seq_len=2048", "2274 raw", "data.noise_density=0.15",
                 "data.mean_noise_span_length=3.0", "114 sentinels", "has 100"):  # fmt: skip
        assert part in msg, part
    assert span_corruption.random_spans_helper(2048, 0.15, 3.0, 114) == (2274, 456)
    assert span_corruption.random_spans_helper(1024, 0.15, 3.0, 100) == (1137, 229)  # 57 spans
    raw = np.arange(10, 10 + 40)[None]
    with pytest.raises(ConfigError, match=r"length=40 .*makes 7 noise spans, more than the 5"):
        span_corruption.span_corruption(
            raw, 0, np.array([0]), noise_density=0.5, mean_noise_span_length=3.0,
            sentinel_ids=SENTINELS[:5], eos_id=1,
        )  # fmt: skip


def test_random_segmentation_is_uniform_over_compositions():
    # 8 tokens at density 0.5, mean span 2: 4 noise and 4 kept tokens in 2 spans each,
    # kept first. T5 shuffles the cut points, so each of the 3 x 3 (kept, noise) splits
    # is equally likely.
    m = span_corruption.random_spans_noise_mask(8, 0.5, 2.0, key=3, rows=np.arange(45_000))
    runs = collections.Counter()
    for row in m.astype(int):
        cuts = np.flatnonzero(np.diff(row)) + 1
        runs[tuple(np.diff(np.r_[0, cuts, 8]).tolist())] += 1
    assert not m[:, 0].any() and m[:, -1].all()
    assert sorted(runs) == sorted(
        (k, n, 4 - k, 4 - n) for k in (1, 2, 3) for n in (1, 2, 3)
    )  # kept, noise, kept, noise
    assert all(abs(c - 5000) < 350 for c in runs.values()), runs


def test_noise_mask_example_and_invariants():
    m = span_corruption.random_spans_noise_mask(10, 0.3, 1.5, key=1, rows=np.array([0]))
    assert m.astype(int).tolist() == [[0, 0, 0, 0, 1, 0, 0, 0, 1, 1]]
    masks = span_corruption.random_spans_noise_mask(568, 0.15, 3.0, key=9, rows=np.arange(400))
    assert (masks.sum(axis=1) == 85).all()
    starts = masks & ~np.pad(masks, ((0, 0), (1, 0)))[:, :-1]
    assert (starts.sum(axis=1) == 28).all()
    assert not masks[:, 0].any() and masks[:, -1].all()  # non-noise first, noise last
    # Span boundaries are random: every position is noise in some row, at ~15%.
    assert abs(masks.mean(axis=0)[1:-1].mean() - 84 / 566) < 0.01
    assert masks[:, 1:-1].mean(axis=0).min() > 0.03


def _reconstruct(inputs, targets, sentinels):
    """Original tokens from T5 inputs/targets (independent of the implementation)."""
    spans, cur = {}, None
    for t in targets:
        if t in sentinels:
            cur = t
            spans[cur] = []
        elif t != 1:
            spans[cur].append(t)
    out = []
    for t in inputs:
        if t == 1:
            break
        out.extend(spans[t] if t in sentinels else [t])
    return out


def test_span_corruption_example_statistics_and_reconstruction():
    inputs, targets, _ = span_corruption.span_corruption(
        np.arange(10, 20)[None],
        1,
        np.array([0]),
        noise_density=0.3,
        mean_noise_span_length=1.5,
        sentinel_ids=np.array([99, 98, 97]),
        eos_id=1,
    )
    assert inputs.tolist() == [[10, 11, 12, 13, 99, 15, 16, 17, 98, 1]]
    assert targets.tolist() == [[99, 14, 98, 18, 19, 1]]
    raw = np.random.default_rng(3).integers(10, 900, size=(300, 568)).astype(np.int32)
    inputs, targets, _ = span_corruption.span_corruption(
        raw,
        7,
        np.arange(300),
        noise_density=0.15,
        mean_noise_span_length=3.0,
        sentinel_ids=SENTINELS,
        eos_id=1,
    )
    assert inputs.shape == (300, 512) and targets.shape == (300, 114)
    assert (inputs[:, -1] == 1).all() and (targets[:, -1] == 1).all()
    noise = ~np.isin(targets, SENTINELS) & (targets != 1)
    assert noise.sum() >= 20_000
    assert abs(noise.sum() / raw.size - 0.15) < 0.01
    assert abs(noise.sum() / np.isin(targets, SENTINELS).sum() - 3.0) < 0.3
    assert targets[0, 0] == 999 and (np.isin(targets, SENTINELS).sum(1) == 28).all()
    for i in range(20):
        assert _reconstruct(inputs[i].tolist(), targets[i].tolist(), set(SENTINELS)) == list(raw[i])


# --------------------------------------------------------------------------- pairs


def test_make_chunks_example():
    chunks = sentence_pairs.make_chunks(np.array([0, 3, 6, 8, 12]), np.array([0, 3, 4]), 5)
    assert chunks.tolist() == [[0, 0, 2], [0, 2, 3], [1, 3, 4]]


def _pair_corpus():
    # doc 0: sentences [10 11] [12 13 14] [15]; doc 1: [20 21 22] [23 24]
    tokens = np.array([10, 11, 12, 13, 14, 15, 20, 21, 22, 23, 24], dtype=np.int32)
    return tokens, np.array([0, 2, 5, 6, 9, 11]), np.array([0, 3, 5])


def _pair(chunk, u, kind, seq_len=10):
    tokens, starts, docs = _pair_corpus()
    return sentence_pairs.pair_row(
        tokens,
        starts,
        docs,
        np.array(chunk),
        np.array(u),
        kind=kind,
        seq_len=seq_len,
        cls_id=4,
        sep_id=5,
    )


def test_pair_rows_sop_kept_swapped_and_nsp_random():
    ids, types, label = _pair([0, 0, 2], [0.9, 0.0, 0, 0, 0, 0], "sop")
    assert ids.tolist() == [4, 10, 11, 5, 12, 13, 14, 5, 0, 0]
    assert types.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 0, 0] and label == 0
    ids, types, label = _pair([0, 0, 2], [0.1, 0.0, 0, 0, 0, 0], "sop")
    assert ids.tolist() == [4, 12, 13, 14, 5, 10, 11, 5, 0, 0]
    assert types.tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 0, 0] and label == 1
    # NSP negative: B starts at a sentence of the other document and fills the row.
    ids, types, label = _pair([0, 0, 2], [0.1, 0.0, 0.5, 0.0, 0, 0], "nsp")
    assert ids.tolist() == [4, 10, 11, 5, 20, 21, 22, 23, 24, 5] and label == 1
    assert types.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    # One-sentence chunk: split inside the sentence; truncation trims the longer side.
    ids, _, label = _pair([1, 3, 4], [0.9, 0.5, 0, 0, 0, 0], "nsp")
    assert ids.tolist() == [4, 20, 21, 5, 22, 5, 0, 0, 0, 0] and label == 0
    ids, _, _ = _pair([0, 0, 3], [0.9, 0.99, 0, 0, 0.99, 0.0], "sop", seq_len=7)
    assert ids.tolist() == [4, 12, 13, 14, 5, 15, 5]  # A=[10..14] loses 2 at the front
    ids, _, _ = _pair([0, 0, 3], [0.9, 0.99, 0, 0, 0.0, 0.0], "sop", seq_len=7)
    assert ids.tolist() == [4, 10, 11, 12, 5, 15, 5]  # ... or at the back


def test_pair_rows_positive_fraction_and_masks():
    r = np.random.default_rng(5)
    sent_lens = r.integers(1, 6, size=30_000)  # 10,000 documents of 3 sentences
    starts = np.concatenate([[0], np.cumsum(sent_lens)])
    tokens = r.integers(10, 900, size=starts[-1]).astype(np.int32)
    docs = np.arange(0, 30_001, 3)
    chunks = sentence_pairs.make_chunks(starts, docs, 7)
    assert len(chunks) >= 10_000
    out = sentence_pairs.pair_rows(
        tokens,
        starts,
        docs,
        chunks,
        3,
        np.arange(len(chunks)),
        kind="nsp",
        seq_len=10,
        cls_id=4,
        sep_id=5,
    )
    assert abs((out["next_sentence_label"] == 0).mean() - 0.5) < 0.02
    np.testing.assert_array_equal(out["attention_mask"], out["input_ids"] != 0)
    assert (out["input_ids"][:, 0] == 4).all()
    assert ((out["input_ids"] == 5).sum(axis=1) == 2).all()

    # Positives: A and B are pieces of the chunk's text, A before B (truncation may cut
    # the end of A and the start of B).
    def find(part, whole, start=0):
        return next(k for k in range(start, len(whole)) if whole[k : k + len(part)] == part)

    for i in np.flatnonzero(out["next_sentence_label"] == 0)[:300]:
        _, s0, s1 = chunks[i]
        row = out["input_ids"][i].tolist()
        sep = row.index(5)
        a, b = row[1:sep], row[sep + 1 : row.index(5, sep + 1)]
        whole = tokens[starts[s0] : starts[s1]].tolist()
        find(b, whole, find(a, whole) + len(a))


# --------------------------------------------------------------------------- UL2


def test_ul2_denoisers_and_chunk_length():
    assert ul2.denoisers("R:1,S:1") == [
        ("R", 3.0, 0.15, 0.25),
        ("R", 8.0, 0.15, 0.25),
        ("S", 0.0, 0.0, 0.5),
    ]
    n = ul2.chunk_length(512, 512, "R:0.4,S:0.2,X:0.4", 100)
    assert n == 511
    with pytest.raises(ConfigError, match=r"data\.ul2_mixture"):
        ul2.denoisers("R:1,Q:1")
    with pytest.raises(ConfigError, match="too short"):
        ul2.chunk_length(16, 3, "X:1", 100)


MODES = {"R": 7, "X": 8, "S": 9}


def test_ul2_packed_rows_hand_checked_example():
    # The docstring's example: two S examples (4 raw tokens split 2 + 2, 3 split 1 + 2).
    plan = ul2.Plan(np.array([[0, 0]]), np.array([[4, 3]]), np.array([[2, 1]]))
    b = ul2.ul2_rows(
        np.array([[10, 11, 12, 13, 14, 15, 16]]), 0, np.array([0]), plan, mixture="S:1",
        seq_len=8, target_len=7, sentinel_ids=SENTINELS, mode_ids=MODES, eos_id=1,
    )  # fmt: skip
    expected = {
        "input_ids": [9, 10, 11, 1, 9, 14, 1, 0],
        "segment_ids": [1, 1, 1, 1, 2, 2, 2, 0],
        "positions": [0, 1, 2, 3, 0, 1, 2, 0],
        "labels": [12, 13, 1, 15, 16, 1, 0],
        "decoder_input_ids": [0, 12, 13, 0, 15, 16, 0],
        "decoder_segment_ids": [1, 1, 1, 2, 2, 2, 0],
        "decoder_positions": [0, 1, 2, 0, 1, 2, 0],
        "loss_weights": [1, 1, 1, 1, 1, 1, 0],
    }
    assert set(b) == set(expected)
    for k, v in expected.items():
        assert b[k].tolist() == [v], k
    assert b["loss_weights"].dtype == np.float32 and b["input_ids"].dtype == np.int32


def test_ul2_plan_fills_rows_and_segments_reconstruct():
    mix, seq, tgt = "R:0.4,S:0.2,X:0.4", 104, 104
    rows = np.arange(400)
    plan = ul2.plan_rows(5, rows, mixture=mix, seq_len=seq, target_len=tgt, max_spans=100)
    # Row-keyed: any subset of rows gets the same plan (restores, process layouts).
    sub = ul2.plan_rows(5, rows[7:9], mixture=mix, seq_len=seq, target_len=tgt, max_spans=100)
    s = sub.denoiser.shape[1]
    np.testing.assert_array_equal(sub.length, plan.length[7:9, :s])
    assert (plan.length[7:9, s:] == 0).all()
    used = plan.length.sum(axis=1)
    raw = np.random.default_rng(4).integers(10, 900, size=(400, int(used.max()))).astype(np.int32)
    b = ul2.ul2_rows(
        raw, 11, rows, plan, mixture=mix, seq_len=seq, target_len=tgt,
        sentinel_ids=SENTINELS, mode_ids=MODES, eos_id=1,
    )  # fmt: skip
    assert (b["segment_ids"] > 0).mean() >= 0.9  # packed: the encoder rows are full
    assert ((plan.denoiser >= 0).sum(axis=1) >= 2).mean() > 0.5  # several examples per row
    table = ul2.denoisers(mix)
    kinds = np.array([table[d][0] for d in plan.denoiser[plan.denoiser >= 0]])
    assert abs((kinds == "S").mean() - 0.2) < 0.06 and abs((kinds == "R").mean() - 0.4) < 0.06
    sent = set(SENTINELS.tolist())
    for r in range(100):
        seg, dseg = b["segment_ids"][r], b["decoder_segment_ids"][r]
        k = int((plan.denoiser[r] >= 0).sum())
        assert seg.max() == dseg.max() == k
        np.testing.assert_array_equal(b["labels"][r] != 0, dseg > 0)
        np.testing.assert_array_equal(b["loss_weights"][r] > 0, dseg > 0)
        pieces = []
        for i in range(1, k + 1):
            inp = b["input_ids"][r][seg == i].tolist()
            out = b["labels"][r][dseg == i].tolist()
            kind = table[plan.denoiser[r, i - 1]][0]
            assert inp[0] == MODES[kind] and inp[-1] == out[-1] == 1  # mode token, EOS
            assert b["positions"][r][seg == i].tolist() == list(range(len(inp)))
            assert b["decoder_positions"][r][dseg == i].tolist() == list(range(len(out)))
            assert b["decoder_input_ids"][r][dseg == i].tolist() == [0, *out[:-1]]
            if kind == "S":
                pieces += inp[1:-1] + out[:-1]
            else:
                pieces += _reconstruct(inp[1:], out, sent)
        assert pieces == raw[r, : used[r]].tolist()  # every example is its stream piece
    with pytest.raises(ValueError, match="run past"):
        ids, seg, pos = (np.zeros((1, 4), np.int32) for _ in range(3))
        packing.place_segments(ids, seg, pos, [0], np.array([3]), np.ones((1, 2)), [2], 1)


def test_ul2_row_offsets_tile_the_stream():
    kw = dict(mixture="R:0.4,S:0.2,X:0.4", seq_len=64, target_len=64, max_spans=100)
    offsets, width = ul2.row_offsets(3, 5000, **kw)
    used = ul2.plan_rows(3, np.arange(len(offsets) + 1), **kw).length.sum(axis=1)
    np.testing.assert_array_equal(offsets, np.concatenate([[0], np.cumsum(used)[:-2]]))
    assert offsets[-1] + width <= 5000 < offsets[-1] + used[-2] + width
    assert width <= 128 and used.min() >= ul2.MIN_EXAMPLE


def test_ul2_long_rows_use_t5_span_counts_within_the_sentinels():
    # At 2048 an X (3, 0.5) example of 766 raw tokens would need 128 sentinels and an R
    # (3, 0.15) one of 2274 would need 114: each is held to its sentinel limit instead.
    mix, seq, rows = "R:0.5,X:0.5", 2048, np.arange(120)
    assert ul2.sentinel_limit(0.5, 3.0, 100) == 602 and ul2.sentinel_limit(0.15, 3.0, 100) == 2009
    plan = ul2.plan_rows(2, rows, mixture=mix, seq_len=seq, target_len=seq, max_spans=100)
    used = plan.length.sum(axis=1)
    raw = np.random.default_rng(6).integers(10, 900, size=(len(rows), int(used.max())))
    b = ul2.ul2_rows(
        raw.astype(np.int32), 5, rows, plan, mixture=mix, seq_len=seq, target_len=seq,
        sentinel_ids=SENTINELS, mode_ids=MODES, eos_id=1,
    )  # fmt: skip
    table = ul2.denoisers(mix)
    longest: dict[tuple[float, float], int] = collections.defaultdict(int)
    for r in range(len(rows)):
        for i in np.flatnonzero(plan.denoiser[r] >= 0):
            _, mean, density, _ = table[plan.denoiser[r, i]]
            n = int(plan.length[r, i])
            noise, spans = (int(x) for x in _t5_mask_counts(n, density, mean))
            assert spans <= 100
            # [mode] kept tokens and one sentinel per span, EOS | sentinel + span each, EOS
            assert (b["segment_ids"][r] == i + 1).sum() == 1 + n - noise + spans + 1
            assert (b["decoder_segment_ids"][r] == i + 1).sum() == noise + spans + 1
            longest[mean, density] = max(longest[mean, density], n)
    assert longest[3.0, 0.5] == 602 and longest[3.0, 0.15] == 2009  # the limits bind
    assert longest[64.0, 0.5] > 1000 and longest[8.0, 0.5] > 1000


def _greedy_chunks(sentence_starts, doc_sentences, max_tokens):
    """A sentence-by-sentence transcription of the chunking rule (the reference)."""
    out = []
    for d in range(len(doc_sentences) - 1):
        begin, total = int(doc_sentences[d]), 0
        for s in range(int(doc_sentences[d]), int(doc_sentences[d + 1])):
            total += int(sentence_starts[s + 1] - sentence_starts[s])
            if total >= max_tokens or s == int(doc_sentences[d + 1]) - 1:
                if sentence_starts[s + 1] - sentence_starts[begin] >= 2:
                    out.append((d, begin, s + 1))
                begin, total = s + 1, 0
    return np.asarray(out, dtype=np.int64).reshape(-1, 3)


def test_vectorised_chunks_equal_the_greedy_rule_block_by_block():
    rng = np.random.default_rng(0)
    for _ in range(200):  # empty sentences, empty documents, one-token chunks included
        num_sent, num_docs = int(rng.integers(0, 60)), int(rng.integers(1, 12))
        starts = np.concatenate([[0], np.cumsum(rng.integers(0, 9, num_sent))])
        cuts = np.sort(rng.integers(0, num_sent + 1, num_docs - 1))
        docs = np.concatenate([[0], cuts, [num_sent]])
        max_tokens = int(rng.integers(1, 20))
        want = _greedy_chunks(starts, docs, max_tokens)
        np.testing.assert_array_equal(sentence_pairs.make_chunks(starts, docs, max_tokens), want)
        blocks = sentence_pairs.chunk_blocks(starts, docs, max_tokens, int(rng.integers(1, 4)))
        np.testing.assert_array_equal(np.concatenate(list(blocks)), want)


@pytest.mark.parametrize("objective, sentence", [("mlm", "nsp"), ("ul2", "none")])
def test_row_tables_are_memory_mapped_from_the_token_store(
    kjv_root, kjv_tokenizer, objective, sentence
):
    """NSP/SOP chunks and UL2 row offsets are written once beside the token ids and
    memory-mapped (no per-process array), with the values computed in memory."""
    cfg = make_cfg(kjv_root, objective, sentence, seq_len=64)
    source = pipeline.batch_source(cfg, kjv_tokenizer, "validation")
    table = source.chunks if sentence != "none" else source.row_starts
    assert isinstance(table, np.memmap) and len(table) == source.rows_per_epoch
    files = [p.name for p in Path(source.store.path).iterdir()]
    assert any(n.startswith("pair-chunks-" if sentence != "none" else "ul2-offsets-")
               for n in files), files  # fmt: skip
    if sentence != "none":
        store = source.store
        want = _greedy_chunks(
            np.asarray(store.sentence_starts), np.asarray(store.doc_sentences), 61
        )
    else:
        total = source.store.num_tokens + source.wrap * source.store.num_docs
        want, width = ul2.row_offsets(ul2._plan_key(source), total, **ul2._lengths(source))
        assert width == source.width and not isinstance(want, np.memmap)
    np.testing.assert_array_equal(np.asarray(table), want)
