"""Span corruption and UL2 lengths through the pipeline on kjv, past 100 sentinels."""

from __future__ import annotations

import pytest
from data_fixtures import make_cfg

from t5x_lite import config as C
from t5x_lite.data import pipeline


def test_span_corruption_past_the_sentinels_is_a_config_error(kjv_root, kjv_tokenizer):
    cfg = make_cfg(kjv_root, "span_corruption", seq_len=2048, batch_size=2)
    assert pipeline.lengths(cfg) == (2048, 456)  # T5's pair, no cap at 100 spans
    with pytest.raises(C.ConfigError, match=r"needs 114 sentinels per row; .* has 100") as err:
        pipeline.train_iterator(cfg, kjv_tokenizer)
    assert "\n" not in str(err.value)
    fits = make_cfg(kjv_root, "span_corruption", seq_len=1024, batch_size=2)
    b = next(pipeline.train_iterator(fits, kjv_tokenizer))
    assert b["input_ids"].shape == (2, 1024) and b["labels"].shape == (2, 229)


def test_ul2_rows_at_1024_hold_every_span_to_a_sentinel(kjv_root, kjv_tokenizer):
    cfg = make_cfg(kjv_root, "ul2", seq_len=1024, batch_size=4, ul2_mixture="X:1")
    b = next(pipeline.train_iterator(cfg, kjv_tokenizer))
    sentinels = set(kjv_tokenizer.sentinel_ids.tolist())
    for row, seg in zip(b["input_ids"], b["segment_ids"]):
        for s in range(1, seg.max() + 1):
            used = [t for t in row[seg == s].tolist() if t in sentinels]
            assert used == kjv_tokenizer.sentinel_ids[: len(used)].tolist()  # distinct, in order


# --------------------------------------------------------------------------- long rows


@pytest.mark.parametrize("density", [0.15, 0.5])
def test_span_lengths_128_to_4096_match_t5_formula(density):
    """Every ``seq_len`` in 128..4096 at T5's mean span 3: our (tokens_length,
    targets_length) against the literal transcription of T5's ``random_spans_helper``
    (test_data_objectives), and the rows T5's float32 mask makes of our length fit.

    Where T5's own pair would not hold its mask's rows (Python's round(k + 0.5) is even,
    float32 counts 4.5000002 up; only at density 0.15) ours drops by at most one raw
    token and grows the targets by at most two; at density 0.5 the pairs are T5's."""
    from test_data_objectives import _t5_mask_counts, _t5_random_spans_helper

    from t5x_lite.data import span_corruption

    differ = []
    for length in range(128, 4097):
        ours = span_corruption.random_spans_helper(length, density, 3.0)
        t5 = _t5_random_spans_helper(length, density, 3.0)
        noise, spans = (int(x) for x in _t5_mask_counts(ours[0], density, 3.0))
        inputs, targets = ours[0] - noise + spans + 1, noise + spans + 1
        assert inputs <= length and targets <= ours[1], length  # T5's mask fits our row
        if ours != t5:
            assert t5[0] - 1 <= ours[0] <= t5[0] and t5[1] <= ours[1] <= t5[1] + 2, length
            differ.append(length)
        else:  # T5's pair: the inputs fill the row exactly, or one short at density 0.5
            assert length - inputs <= (1 if density == 0.5 else 0) or noise < 2, length
    assert len(differ) <= {0.15: 40, 0.5: 0}[density], differ
    assert span_corruption.random_spans_helper(4096, 0.15, 3.0) == _t5_random_spans_helper(
        4096, 0.15, 3.0
    )


@pytest.mark.parametrize("seq_len, density", [(128, 0.15), (1024, 0.5), (4096, 0.15)])
def test_span_corruption_rows_have_the_helper_lengths(seq_len, density):
    """Rows made by span_corruption at the helper's raw length have exactly the
    lengths its arithmetic promises (no padding, no cap)."""
    import numpy as np

    from t5x_lite.data import span_corruption

    n, targets_length = span_corruption.random_spans_helper(seq_len, density, 3.0)
    inputs_length, mask_targets = span_corruption.corrupted_lengths(n, density, 3.0)
    noise, spans = span_corruption.noise_counts(n, density, 3.0)
    tokens = np.arange(4 * n, dtype=np.int32).reshape(4, n) % 5000 + 10
    sentinels = np.arange(9999, 9999 - spans - 1, -1, dtype=np.int32)
    inputs, targets, mask = span_corruption.span_corruption(
        tokens, 3, np.arange(4), noise_density=density, mean_noise_span_length=3.0,
        sentinel_ids=sentinels, eos_id=1,
    )  # fmt: skip
    assert (mask.sum(1) == noise).all()
    assert inputs.shape[1] == inputs_length <= seq_len
    assert targets.shape[1] == mask_targets <= targets_length
