"""What a new user hits in the first hour: batch size 1, optimizer defaults that
train, terminal-safe samples."""

from __future__ import annotations

import dataclasses

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


def test_smoke_and_cpu_variants_shrink_the_shape_not_the_architecture():
    from t5x_lite import presets

    full = presets.load_typed("gpt2_small")
    smoke = presets.load_typed("gpt2_small:smoke,bf16")
    assert (smoke.train.batch_size, smoke.data.seq_len, smoke.train.num_steps) == (8, 128, 20)
    assert smoke.model == dataclasses.replace(full.model, dtype="bfloat16")
    cpu = presets.load_typed("llama_1b:cpu")
    assert (cpu.train.batch_size, cpu.data.seq_len, cpu.model.remat_policy) == (8, 256, "full")
    assert presets.load_typed("gpt2_tiny:smoke").data.seq_len == 128  # already short enough


def test_out_of_memory_is_one_line_naming_the_levers():
    import jax
    import jax.numpy as jnp

    from t5x_lite import preflight, presets

    cfg = presets.load_typed("gpt2_small")
    with pytest.raises(Exception) as err:  # a real allocation XLA cannot make
        jax.jit(lambda: jnp.ones((2**38,), jnp.float32))().block_until_ready()
    message = preflight.out_of_memory_message(cfg, err.value)
    assert message is not None and "\n" not in message
    for lever in ("train.batch_size=32", "data.seq_len=1024", "train.microbatches=1",
                  "model.remat_policy='none'", "Out of memory allocating"):  # fmt: skip
        assert lever in message, lever
    assert preflight.out_of_memory_message(cfg, ValueError("other")) is None
