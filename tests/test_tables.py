"""The architecture and objective tables: one row per arch / objective, read by every
consumer, and one-line errors for what a row does not allow."""

from __future__ import annotations

import dataclasses

import pytest

import t5x_lite
from t5x_lite import config as C
from t5x_lite import flops, models
from t5x_lite.config import objectives


def test_every_arch_has_a_family_and_an_hf_map():
    from t5x_lite.hf import module_for_arch

    for arch, traits in C.ARCHS.items():
        assert traits.family in C.FAMILIES
        assert arch in module_for_arch(arch).ARCHS
    assert C.archs_of("decoder") == ("gpt2", "llama", "mistral", "qwen2")


@pytest.mark.parametrize(
    "model, message",
    [
        ({"arch": "transformer_xl"}, "model.arch='transformer_xl' is not one of"),
        ({"arch": "gpt2", "share_layers": True}, "model.share_layers=True needs arch 'albert'"),
        ({"arch": "llama", "sliding_window": 16}, "model.sliding_window=16 needs arch 'mistral'"),
        ({"arch": "mistral", "sliding_window": 0}, "model.sliding_window=0 must be a positive"),
        ({"arch": "gpt2", "embed_dim": 32}, "only arch 'albert' factorises embeddings"),
        ({"arch": "bert"}, "model.arch='bert' is not one of ('gpt2', 'llama', 'mistral', 'qwen2')"),
    ],
)
def test_trait_combinations_the_table_refuses(model, message):
    with pytest.raises(C.ConfigError) as err:
        C.from_dict({"model": model})
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"model": {"family": "decoder"}, "data": {"objective": "span_corruption"}},
         "data.objective='span_corruption' does not train model.family='decoder' "
         "(use one of causal_lm, prefix_lm)"),
        ({"model": {"family": "encoder", "arch": "bert"}, "data": {"objective": "ul2"}},
         "(use one of mlm)"),
        ({"data": {"objective": "causal_lm", "sentence_objective": "nsp"}},
         "data.sentence_objective='nsp' needs data.objective='mlm'"),
    ],
)  # fmt: skip
def test_objective_on_a_family_it_does_not_train(values, message):
    with pytest.raises(C.ConfigError) as err:
        C.from_dict(values)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_objective_table_rows():
    assert t5x_lite.__version__
    assert objectives.names() == ("causal_lm", "prefix_lm", "mlm", "span_corruption", "ul2")
    assert objectives.names("sentence") == ("nsp", "sop")
    assert objectives.for_family("encoder_decoder") == ("span_corruption", "ul2")
    assert objectives.spec("prefix_lm").fields == ("prefix_fraction",)
    ul2 = C.DataConfig(objective="ul2", seq_len=64)
    assert C.row_lengths(ul2) == (64, 64)
    assert C.row_lengths(dataclasses.replace(ul2, target_len=32)) == (64, 32)
    assert C.row_lengths(C.DataConfig(seq_len=64)) == (64, 64)
    with pytest.raises(C.ConfigError, match=r"data\.target_len=10 is below the 29 targets"):
        C.row_lengths(C.DataConfig(objective="span_corruption", seq_len=128, target_len=10))


def test_traits_drive_counts_not_arch_names():
    """A llama with the mistral row's sliding window keeps llama's parameter and FLOP
    counts (a mask changes neither); t5 and t5_v1_1 differ exactly by their traits."""
    llama = C.ModelConfig(arch="llama", d_model=64, num_heads=4, num_kv_heads=2, d_ff=96)
    mistral = dataclasses.replace(llama, arch="mistral", sliding_window=8)
    assert models.count_params(mistral) == models.count_params(llama)
    assert flops.train_flops_per_token(mistral, 32) == flops.train_flops_per_token(llama, 32)
    t5 = C.ModelConfig(family="encoder_decoder", arch="t5", vocab_size=100, d_model=32,
                       num_heads=2, d_ff=64)  # fmt: skip
    v11 = dataclasses.replace(t5, arch="t5_v1_1")
    # gated MLP: + one [E, F] matrix per layer (2 encoder + 2 decoder); untied head: + V x E.
    extra = 4 * 32 * 64 + 100 * 32
    assert models.count_params(v11)["total"] - models.count_params(t5)["total"] == extra


def test_model_object_scores_and_predicts_from_its_heads():
    """``score_batch`` is each row's weighted label log-likelihood and ``predict_batch``
    each head's argmax, checked in float64 numpy from the module's own outputs."""
    import jax
    import numpy as np

    cfg = C.ModelConfig(family="encoder", arch="bert", vocab_size=50, d_model=16, num_heads=2,
                        num_layers=1, d_ff=32, max_seq_len=8, type_vocab_size=2,
                        sentence_head=True)  # fmt: skip
    model = models.get(cfg)
    assert [h.output for h in model.heads] == ["logits", "sentence_logits"]
    params = models.init_params(cfg, jax.random.key(0))
    rng = np.random.default_rng(0)
    batch = {
        "input_ids": rng.integers(1, 50, (3, 8)).astype(np.int32),
        "labels": rng.integers(1, 50, (3, 8)).astype(np.int32),
        "loss_weights": rng.random((3, 8)).astype(np.float32) * (rng.random((3, 8)) < 0.5),
        "next_sentence_label": np.array([0, 1, 1], np.int32),
    }
    out = model.apply(params, batch)
    logits = np.asarray(out["logits"], np.float64)
    log_p = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
    log_p -= logits.max(-1, keepdims=True)
    picked = np.take_along_axis(log_p, batch["labels"][..., None], -1)[..., 0]
    want = (picked * batch["loss_weights"]).sum(-1)
    np.testing.assert_allclose(np.asarray(model.score_batch(params, batch)), want, rtol=1e-5)
    pred = model.predict_batch(params, batch)
    np.testing.assert_array_equal(pred["predictions"], logits.argmax(-1))
    np.testing.assert_array_equal(
        pred["sentence_predictions"], np.asarray(out["sentence_logits"]).argmax(-1)
    )
