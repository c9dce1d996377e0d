"""Prefix LM per document on packed rows: the model's attention and many documents."""

from __future__ import annotations

import numpy as np
import pytest

from t5x_lite.data import lm, packing, rng


def test_prefix_attends_within_its_own_document():
    from t5x_lite import masks

    # The three-document row of the objective tests: prefixes of 1, 3 and 4 tokens.
    ids = np.array([[6, 1, 7, 8, 9, 10, 1, 11, 12, 13, 14, 15, 16, 17]])
    slot = np.array([[0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2]])
    out = lm.prefix_lm(ids, slot, lm.prefix_lengths(0, np.array([0]), 13, 0.6, slot=slot))
    mask = np.asarray(masks.self_attention_mask(out, causal=True).dense(13, 13))[0, 0]
    seg, prefix = out["segment_ids"][0], out["prefix_mask"][0]
    i, j = np.arange(13)[:, None], np.arange(13)[None, :]
    expected = (seg[:, None] == seg[None, :]) & ((j <= i) | (prefix[:, None] & prefix[None, :]))
    np.testing.assert_array_equal(mask, expected)
    assert mask[2, 4] and not mask[2, 5]  # 7 sees its prefix 8, 9, not 10
    assert mask[5, 2] and mask[5, 5] and not mask[5, 6]  # 10 is causal
    assert not mask[0, 2] and not mask[2, 0]  # prefixes of two documents never meet
    assert mask[7, 10] and not mask[7, 11] and not mask[10, 11]


@pytest.mark.parametrize("fraction", [0.0, 0.3])
def test_prefix_lm_on_a_packed_stream_of_many_documents(fraction):
    r = np.random.default_rng(0)
    lengths = r.integers(1, 40, size=4000)  # documents of 1..39 tokens, then EOS
    doc_starts = np.concatenate([[0], np.cumsum(lengths)])
    tokens = r.integers(10, 900, size=doc_starts[-1]).astype(np.int32)
    order = r.permutation(len(lengths))
    cum_end = np.cumsum(packing.stream_lengths(doc_starts, (), (1,))[order])
    seq, rows = 64, np.arange(1200)
    ids, slot = packing.stream_window(
        tokens, doc_starts, order, cum_end, rows * seq, seq + 1, (), (1,)
    )
    key = rng.derive_key(1, "prefix")
    plen = lm.prefix_lengths(key, rows, seq, fraction, slot=slot)
    out = lm.prefix_lm(ids, slot, plen)
    causal = lm.causal_lm(ids, slot)
    seg, pos = out["segment_ids"], out["positions"]
    assert (seg.max(axis=1) >= 3).mean() > 0.9  # rows of several documents
    checked = 0
    for b in range(400):
        for s in range(1, seg[b].max() + 1):
            at = seg[b] == s
            n, p = int(at.sum()), plen[b][at]
            assert (p == p[0]).all() and 1 <= p[0] <= max(n - 1, 1)
            if fraction:
                assert p[0] == min(max(round(fraction * n), 1), max(n - 1, 1))
            # The prefix is the document's first p tokens; its labels carry no loss.
            np.testing.assert_array_equal(out["prefix_mask"][b][at], pos[b][at] < p[0])
            want = causal["loss_weights"][b][at] * (pos[b][at] + 1 >= p[0])
            np.testing.assert_array_equal(out["loss_weights"][b][at], want)
            checked += 1
    assert checked >= 1000
    np.testing.assert_array_equal(out["segment_ids"], causal["segment_ids"])
    np.testing.assert_array_equal(out["labels"], causal["labels"])
    # Every document of two or more tokens has a prefix and some loss after it.
    long_docs = [(b, s) for b in range(400) for s in range(1, seg[b].max() + 1)
                 if (seg[b] == s).sum() >= 2]  # fmt: skip
    for b, s in long_docs:
        at = seg[b] == s
        assert out["prefix_mask"][b][at].any() and not out["prefix_mask"][b][at].all()
        assert out["loss_weights"][b][at].sum() >= 1 or not causal["loss_weights"][b][at].any()
    if not fraction:  # uniform in [1, n - 1]: n / 2 on average
        p, n = np.array([(plen[b][seg[b] == s][0], (seg[b] == s).sum()) for b, s in long_docs]).T
        assert abs(p.mean() / (n.mean() / 2) - 1) < 0.03
