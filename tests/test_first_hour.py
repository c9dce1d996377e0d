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


def _loss_drop(optimizer: dict, num_steps: int = 30) -> tuple[float, float]:
    """(peak learning rate, first - last training loss) of a tiny Llama fitted to one
    fixed batch of a deterministic sequence rule for ``num_steps`` steps."""
    import jax

    from t5x_lite import config as C
    from t5x_lite import partitioning, steps

    cfg = C.from_dict(
        {
            "model": dict(family="decoder", arch="llama", vocab_size=128, d_model=64,
                          num_heads=4, num_kv_heads=4, num_layers=1, d_ff=128, max_seq_len=32),
            "data": {"seq_len": 32},
            "optimizer": optimizer,
            "train": {"batch_size": 16, "num_steps": num_steps},
            "mesh": {"data": 1, "fsdp": 1, "tensor": 1},
        }
    )  # fmt: skip
    start = np.random.default_rng(0).integers(0, 128, (16, 1))
    ids = ((start * 7 + np.arange(33)[None] * 3) ** 2) % 127 + 1
    batch = {"input_ids": ids[:, :-1].astype(np.int32), "labels": ids[:, 1:].astype(np.int32),
             "loss_weights": np.ones((16, 32), np.float32)}  # fmt: skip
    s = steps.for_config(cfg, partitioning.make_mesh(cfg.mesh, jax.devices()[:1]))
    state, losses = s.init(jax.random.key(0)), []
    for _ in range(num_steps):
        state, metrics = s.train(state, batch)
        losses.append(float(metrics["loss"]))
    return cfg.optimizer.learning_rate, losses[0] - losses[-1]


def test_every_optimizer_default_learning_rate_trains():
    """Leaving optimizer.learning_rate unset gives each optimizer a rate that trains:
    Adafactor at AdamW's 3e-4 barely moves (its updates are relative to parameter RMS),
    at its own default it learns about as fast as AdamW at its default."""
    from t5x_lite import config as C

    adamw_lr, adamw = _loss_drop({"warmup_steps": 5})
    adafactor_lr, adafactor = _loss_drop({"name": "adafactor", "warmup_steps": 5})
    assert (adamw_lr, adafactor_lr) == (3e-4, 1e-2)
    # Measured: 0.52 and 0.47 nats; Adafactor at 3e-4 gives 0.01.
    assert adamw > 0.3 and adafactor > 0.5 * adamw, (adamw, adafactor)
    assert C.from_dict({"optimizer": {"learning_rate": 1e-3}}).optimizer.learning_rate == 1e-3
    with pytest.raises(C.ConfigError, match=r"optimizer.learning_rate=0.0 must be > 0"):
        C.from_dict({"optimizer": {"learning_rate": 0.0}})
