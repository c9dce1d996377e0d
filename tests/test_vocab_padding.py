"""The vocabulary padded to ``model.vocab_pad_multiple`` inside the model is invisible:
logits of the real size, equal to an unpadded model with the same real weights, and
counted as stored (``count_params``) and as run (FLOPs)."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_lite import flops, models
from t5x_lite.config import ModelConfig
from t5x_lite.hf import common

SMALL = dict(vocab_size=1000, d_model=32, num_heads=2, num_layers=1, d_ff=64, max_seq_len=16)
# Untied heads (Llama's lm_head, T5 v1.1's logits_dense) are padded on import and
# compared with transformers by the HF parity tests (vocabularies 61 and 97).
CASES = {
    "gpt2": dict(family="decoder", arch="gpt2"),  # tied head
    "bert": dict(family="encoder", arch="bert", type_vocab_size=2),  # tied + mlm_bias [V]
}


@pytest.mark.parametrize("name", list(CASES))
def test_padded_model_equals_unpadded_model_on_the_real_rows(name):
    padded = ModelConfig(**SMALL, **CASES[name]).validate()
    plain = dataclasses.replace(padded, vocab_pad_multiple=1)
    assert padded.padded_vocab_size == 1024 and plain.padded_vocab_size == 1000
    batch = models.example_batch(padded, 2, 8)
    batch["input_ids"] = jnp.asarray(np.random.default_rng(0).integers(0, 1000, (2, 8)))
    if "decoder_input_ids" in batch:
        batch["decoder_input_ids"] = batch["input_ids"][:, ::-1]
    # The padded rows hold random values (init), not zeros: they still must not show.
    params = models.init_params(padded, jax.random.key(0), batch)
    real = common.real_vocab(padded, params)  # the same weights, 1000 rows
    assert any(1024 in x.shape for x in jax.tree.leaves(params))
    assert not any(1024 in np.shape(x) for x in jax.tree.leaves(real))
    ours = models.build(padded).apply({"params": params}, batch)["logits"]
    want = models.build(plain).apply({"params": real}, batch)["logits"]
    assert ours.shape == want.shape == (2, 8, 1000)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(want), atol=1e-5, rtol=0)


def test_counts_say_what_is_stored_and_what_runs():
    cfg = ModelConfig(**SMALL, family="decoder", arch="llama").validate()
    tree = jax.eval_shape(lambda: models.init_params(cfg, jax.random.key(0)))
    elements = sum(math.prod(x.shape) for x in jax.tree.leaves(tree))
    counts = models.count_params(cfg)
    # wte and the untied lm_head each gain 24 rows of 32
    assert counts["vocab_padding"] == 2 * 24 * 32
    assert counts["total"] + counts["vocab_padding"] == elements
    plain = dataclasses.replace(cfg, vocab_pad_multiple=1)
    assert models.count_params(plain)["total"] == counts["total"]
    # GPT-2 small: the published 124,439,808, and 47 tied rows of 768 stored beside them
    gpt2 = ModelConfig(vocab_size=50257, d_model=768, num_heads=12, num_layers=12, d_ff=3072,
                       max_seq_len=1024)  # fmt: skip
    assert gpt2.padded_vocab_size == 50304
    assert models.count_params(gpt2) == {
        "total": 124_439_808, "non_embedding": 85_056_000, "vocab_padding": 47 * 768,
    }  # fmt: skip
    # FLOPs count the head at the padded width, the matmul the hardware runs
    head = flops.forward_flops_per_row(cfg, 8)["head"]
    assert head == 2 * 8 * 32 * 1024
    assert flops.forward_flops_per_row(plain, 8)["head"] == 2 * 8 * 32 * 1000


@pytest.mark.parametrize("vocab, refused", [(2048, False), (1000, True)])
def test_a_workdir_saved_before_padding_resumes_with_the_same_rows(tmp_path, vocab, refused):
    """A config.json written without ``vocab_pad_multiple`` (unpadded tables, and the
    old key ``attention_impl``) resumes when the padded rows are the same (2048) and is
    a one-line error naming the field when they are not (1000 -> 1024)."""
    import json

    from t5x_lite import preflight
    from t5x_lite.config import ConfigError, from_dict, saved_config, to_dict

    want = from_dict({"model": {"vocab_size": vocab}})
    old = to_dict(want)
    del old["model"]["vocab_pad_multiple"]
    old["model"]["attention_impl"] = old["model"].pop("attention")
    (tmp_path / "config.json").write_text(json.dumps(old))
    assert from_dict(saved_config(old)).model.padded_vocab_size == vocab  # read as run
    if not refused:
        assert preflight.check_workdir(want, str(tmp_path)) is not None
        return
    with pytest.raises(ConfigError) as err:
        preflight.check_workdir(want, str(tmp_path))
    said = "model.vocab_pad_multiple=1; the requested config has model.vocab_pad_multiple=128"
    assert said in str(err.value)
    assert "\n" not in str(err.value)
