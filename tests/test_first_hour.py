"""What a new user hits in the first hour: batch size 1, optimizer defaults that
train, terminal-safe samples."""

from __future__ import annotations

import numpy as np
import pytest
from data_fixtures import make_cfg

from t5x_lite.data import pipeline


@pytest.mark.parametrize(
    "objective, sentence",
    [("causal_lm", "none"), ("prefix_lm", "none"), ("mlm", "none"), ("mlm", "nsp"),
     ("span_corruption", "none"), ("ul2", "none")],
)  # fmt: skip
def test_batch_size_one_is_row_by_row_the_batch_of_two(
    kjv_root, kjv_tokenizer, objective, sentence
):
    one = pipeline.train_iterator(
        make_cfg(kjv_root, objective, sentence, seq_len=64, batch_size=1), kjv_tokenizer
    )
    two = pipeline.train_iterator(
        make_cfg(kjv_root, objective, sentence, seq_len=64, batch_size=2), kjv_tokenizer
    )
    a, b, pair = next(one), next(one), next(two)
    for key, value in pair.items():
        assert a[key].shape[0] == 1
        np.testing.assert_array_equal(np.concatenate([a[key], b[key]]), value, err_msg=key)
    state = one.get_state()
    c = next(one)
    one.set_state(state)
    np.testing.assert_array_equal(next(one)["input_ids"], c["input_ids"])


def test_samples_never_hold_text_a_terminal_cannot_show(kjv_tokenizer):
    from t5x_lite import decoding

    tok = kjv_tokenizer
    allowed = decoding.sampleable_ids(tok)
    byte = {tok.id_to_piece(i): i for i in range(tok.vocab_size) if tok.id_to_piece(i)[:3] == "<0x"}
    assert len(byte) == 256  # byte fallback
    for b in (0x00, 0x02, 0x1B, 0x7F):
        assert not allowed[byte[f"<0x{b:02X}>"]], b
    for b in (0x0A, 0x41, 0xE2):
        assert allowed[byte[f"<0x{b:02X}>"]], b
    assert (
        decoding.printable("In the\x00 begin\x02ning\n\tGod") == "In the\\x00 begin\\x02ning\n\tGod"
    )
    assert decoding.printable("caf\u00e9 \u2014 ok") == "caf\u00e9 \u2014 ok"
