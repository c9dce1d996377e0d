"""Typed config: conversion from plain dicts and one-line errors naming the field."""

import pytest

from t5x_lite import config as C


def test_from_dict_fills_defaults_and_coerces():
    cfg = C.from_dict(
        {"model": {"family": "decoder", "arch": "llama", "num_kv_heads": 2, "d_model": 64},
         "optimizer": {"no_decay": ["bias"]}, "train": {"batch_size": 8.0}}
    )
    assert cfg.model.kv_heads == 2 and cfg.model.head_size == 16
    assert cfg.optimizer.no_decay == ("bias",)
    assert cfg.train.batch_size == 8 and isinstance(cfg.train.batch_size, int)
    assert C.from_dict(C.to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    "values, message",
    [
        ({"model": {"d_model": 10, "num_heads": 3}}, "model.d_model=10 is not divisible by"),
        ({"model": {"family": "rnn"}}, "model.family='rnn'"),
        ({"model": {"family": "encoder", "arch": "gpt2"}}, "model.arch='gpt2'"),
        ({"model": {"dmodel": 64}}, "unknown config field model.dmodel"),
        ({"optimiser": {}}, "unknown config section 'optimiser'"),
        ({"model": {"num_layers": "two"}}, "model.num_layers='two' must be an integer"),
        ({"model": {"arch": "gpt2", "num_kv_heads": 2}}, "needs arch 'llama'"),
        ({"data": {"objective": "mlmm"}}, "data.objective='mlmm'"),
        ({"data": {"seq_len": 1024}, "model": {"max_seq_len": 512}}, "data.seq_len=1024 exceeds"),
        ({"train": {"batch_size": 10, "microbatches": 3}}, "train.batch_size=10 is not divisible"),
    ],
)
def test_bad_input_is_one_line_naming_the_field(values, message):
    with pytest.raises(C.ConfigError) as err:
        C.from_dict(values)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_mesh_resolution():
    assert C.MeshConfig(data=-1, fsdp=2, tensor=2).resolve(8) == (2, 2, 2)
    assert C.MeshConfig(data=1, fsdp=-1, tensor=1).resolve(8) == (1, 8, 1)
    with pytest.raises(C.ConfigError, match=r"2\*2\*1 = 4 differs from the 8 available devices"):
        C.MeshConfig(data=2, fsdp=2, tensor=1).resolve(8)
    with pytest.raises(C.ConfigError, match="cannot fill 8 devices"):
        C.MeshConfig(data=-1, fsdp=3, tensor=1).resolve(8)
    with pytest.raises(C.ConfigError, match="only one of"):
        C.MeshConfig(data=-1, fsdp=-1, tensor=1).resolve(8)


@pytest.mark.parametrize(
    "model, message",
    [
        ({"arch": "gpt2", "d_model": 64, "num_heads": 4, "head_dim": 32},
         "model.head_dim=32 x model.num_heads=4 != model.d_model=64"),
        ({"family": "encoder", "arch": "bert", "d_model": 64, "num_heads": 4, "head_dim": 8},
         "model.head_dim=8 x model.num_heads=4 != model.d_model=64"),
        ({"attention": "cudnn"},
         "model.attention='cudnn' needs model.dtype bfloat16 or float16 (got 'float32')"),
        ({"attention": "flash"},
         "model.attention='flash' is not one of auto, xla, cudnn, splash"),
        ({"vocab_pad_multiple": 0},
         "model.vocab_pad_multiple=0 must be a positive integer (1 disables padding)"),
    ],
)  # fmt: skip
def test_model_shape_and_attention_constraints(model, message):
    with pytest.raises(C.ConfigError) as err:
        C.ModelConfig(**model).validate()
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "model",
    [
        {"arch": "gpt2", "d_model": 64, "num_heads": 4, "head_dim": 16},  # 4 x 16 == 64
        {"arch": "llama", "d_model": 48, "num_heads": 4, "head_dim": 16},
        {"family": "encoder_decoder", "arch": "t5", "d_model": 24, "num_heads": 3, "head_dim": 10},
        {"attention": "cudnn", "dtype": "bfloat16"},
        {"attention": "cudnn", "dtype": "float16"},
        {"attention": "splash"},
    ],
)
def test_model_shape_and_attention_constraints_allow(model):
    assert C.ModelConfig(**model).validate()
