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
