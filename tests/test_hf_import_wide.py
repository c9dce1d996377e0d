"""Wider Hugging Face import: Llama 3.x (``llama3`` RoPE rescaling, tied embeddings),
Qwen2 (q/k/v biases) and GPT-2 with a padded vocabulary, against transformers on torch.

Each case is a tiny random ``transformers`` model (float32, eager attention, every
weight and norm gain drawn at random) saved with ``save_pretrained``; both ways are
checked to 1e-4 max abs on the padded batch's real tokens: HF -> ours through
:func:`t5x_lite.convert.import_hf`, ours -> HF through ``export_hf`` then
``from_pretrained`` (no missing or unexpected tensor), and the export imports back to
the same config and tree.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import save_file

from t5x_lite import convert, layers
from t5x_lite.config import ConfigError, ModelConfig
from t5x_lite.models import decoder

B, T = 3, 13
ATOL = 1e-4


def _random(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            gain = p.ndim == 1 and ("norm" in name or ".ln_" in name) and "weight" in name
            p.copy_((1.0 if gain else 0.0) + 0.2 * torch.randn_like(p))
    return model.eval()


def _batch(vocab: int) -> dict[str, np.ndarray]:
    """Random ids with right padding in rows 1 and 2; row 0 starts with the last two
    ids of the table (a padded vocabulary's unused rows)."""
    ids = np.random.RandomState(0).randint(0, vocab, (B, T)).astype(np.int32)
    ids[0, :2] = [vocab - 1, vocab - 2]
    mask = np.ones((B, T), np.int32)
    mask[1, 9:] = 0
    mask[2, 4:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _torch_logits(model: torch.nn.Module, batch: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(batch["input_ids"], dtype=torch.long),
            attention_mask=torch.tensor(batch["attention_mask"], dtype=torch.long),
        )
    return out.logits.numpy()


@functools.partial(jax.jit, static_argnums=0)
def _jit_logits(cfg: ModelConfig, params, batch) -> jax.Array:
    return decoder.Model(cfg).apply({"params": params}, batch)["logits"]


def _both_ways(model: torch.nn.Module, tmp_path, vocab: int) -> tuple[ModelConfig, Any, float]:
    """Import ``model``, compare, export, load in transformers, compare, re-import.

    Returns ``(cfg, params, max abs error of the import)``.
    """
    src, out = str(tmp_path / "hf"), str(tmp_path / "export")
    model.save_pretrained(src)
    cfg, params = convert.import_hf(src)
    batch = _batch(vocab)
    ref = _torch_logits(model, batch)
    valid = batch["attention_mask"].astype(bool)
    assert np.abs(ref).max() > 1.0  # random weights give O(1) logits
    ours = np.asarray(_jit_logits(cfg, params, batch))
    err = float(np.abs(ours - ref)[valid].max())
    assert err < ATOL, err

    convert.export_hf(cfg, params, out)
    loaded, info = type(model).from_pretrained(
        out, attn_implementation="eager", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    back = _torch_logits(loaded.eval(), batch)
    np.testing.assert_allclose(back[valid], ours[valid], atol=ATOL, rtol=0)
    cfg2, params2 = convert.import_hf(out)
    assert cfg2 == cfg
    jax.tree_util.tree_map(np.testing.assert_array_equal, params2, params)
    return cfg, params, err


# --------------------------------------------------------------------------- Llama 3.x

# Head size 16, theta 500: wavelengths 2π · 500^(i/8) run 6.3 .. 1446, so against
# original_max_position_embeddings=64 with factors 1 / 4 (bounds 16 and 64) some
# frequencies are kept, some blended and some divided by ``factor``.
_LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}


def _llama3(tied: bool) -> torch.nn.Module:
    config = transformers.LlamaConfig(
        vocab_size=97, hidden_size=48, intermediate_size=72, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        max_position_embeddings=256, rms_norm_eps=1e-5, rope_parameters=dict(_LLAMA3_ROPE),
        tie_word_embeddings=tied, bos_token_id=None, eos_token_id=None,
        attn_implementation="eager",
    )  # fmt: skip
    return _random(transformers.LlamaForCausalLM(config), seed=3)


def test_llama3_rope_frequencies_equal_transformers():
    model = _llama3(tied=False)
    ours = layers.rope_frequencies(16, 500.0, "llama3", 8.0, 1.0, 4.0, 64)
    theirs = model.model.rotary_emb.inv_freq.numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=0)
    default = layers.rope_frequencies(16, 500.0)
    kept, divided = ours == default, np.isclose(ours, default / 8.0, rtol=1e-6)
    assert kept.any() and divided.any() and (~kept & ~divided).any()  # all three bands


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied_3_2"])
def test_llama3_both_ways(tmp_path, tied):
    model = _llama3(tied)
    assert (model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()) == tied
    cfg, params, _ = _both_ways(model, tmp_path, 97)
    assert (cfg.arch, cfg.rope_type, cfg.rope_factor, cfg.rope_original_max_len) == (
        "llama", "llama3", 8.0, 64,
    )  # fmt: skip
    assert cfg.tied_head == tied and ("lm_head" in params) == (not tied)
    exported = json.loads((tmp_path / "export" / "config.json").read_text())
    assert exported["rope_parameters"] == _LLAMA3_ROPE
    assert exported["tie_word_embeddings"] == tied


def test_llama3_rescaling_matters(tmp_path):
    """The same weights with default RoPE differ from the reference by far more than 1e-4."""
    model = _llama3(tied=False)
    model.save_pretrained(str(tmp_path))
    cfg, params = convert.import_hf(str(tmp_path))
    batch = _batch(97)
    valid = batch["attention_mask"].astype(bool)
    plain = dataclass_replace(cfg, rope_type="default")
    err = np.abs(np.asarray(_jit_logits(plain, params, batch)) - _torch_logits(model, batch))
    assert err[valid].max() > 1e-2


def dataclass_replace(cfg: ModelConfig, **kw: Any) -> ModelConfig:
    import dataclasses

    return dataclasses.replace(cfg, **kw).validate()


# --------------------------------------------------------------------------- Qwen2


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied_0_5b"])
def test_qwen2_both_ways(tmp_path, tied):
    config = transformers.Qwen2Config(
        vocab_size=89, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
        num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64,
        rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 300.0},
        tie_word_embeddings=tied, bos_token_id=None, eos_token_id=None,
        attn_implementation="eager",
    )  # fmt: skip
    model = _random(transformers.Qwen2ForCausalLM(config), seed=4)
    assert model.model.layers[0].self_attn.q_proj.bias is not None
    cfg, params, _ = _both_ways(model, tmp_path, 89)
    assert (cfg.arch, cfg.kv_heads, cfg.head_size, cfg.rope_theta) == ("qwen2", 2, 8, 300.0)
    attn = params["layers_0"]["attn"]
    assert attn["query"]["bias"].shape == (6, 8) and attn["key"]["bias"].shape == (2, 8)
    assert "bias" not in attn["out"]
    # The biases count: zeroing them changes the logits well past the tolerance.
    zeroed = jax.tree_util.tree_map_with_path(
        lambda p, x: x * 0 if "bias" in jax.tree_util.keystr(p) else x, params
    )
    batch = _batch(89)
    diff = np.abs(np.asarray(_jit_logits(cfg, zeroed, batch) - _jit_logits(cfg, params, batch)))
    assert diff.max() > 1e-2


def test_qwen2_sliding_window_is_refused(tmp_path):
    transformers.Qwen2Config(
        vocab_size=89, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True,
    ).to_json_file(str(tmp_path / "config.json"))  # fmt: skip
    save_file({"x": np.zeros(1, np.float32)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ConfigError, match="use_sliding_window=True is not supported") as err:
        convert.import_hf(str(tmp_path))
    assert "\n" not in str(err.value) and "config.json" in str(err.value)


# --------------------------------------------------------------------------- GPT-2


def test_gpt2_padded_vocabulary_both_ways(tmp_path):
    """GPT-2 with its table padded from 50257 to 50304 rows (nanoGPT's multiple of 64):
    every row, the 47 padding rows included, maps both ways."""
    config = transformers.GPT2Config(
        vocab_size=50304, n_embd=32, n_layer=2, n_head=4, n_positions=24, n_inner=48,
        attn_implementation="eager",
    )  # fmt: skip
    model = _random(transformers.GPT2LMHeadModel(config), seed=5)
    cfg, params, _ = _both_ways(model, tmp_path, 50304)
    assert cfg.vocab_size == 50304 and params["wte"]["embedding"].shape == (50304, 32)
    batch = _batch(50304)
    assert (batch["input_ids"] >= 50257).any()  # padding rows are read too
    exported = json.loads((tmp_path / "export" / "config.json").read_text())
    assert exported["vocab_size"] == 50304 and exported["eos_token_id"] == 50256


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "rope, match",
    [
        ({"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}, r"rope_type='yarn' is not"),
        ({"rope_type": "llama3", "factor": 8.0, "rope_theta": 1e4}, r"low_freq_factor is missing"),
    ],
)
def test_unsupported_rope_is_a_one_line_error(tmp_path, rope, match):
    transformers.LlamaConfig(
        vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
        num_attention_heads=4,
    ).to_json_file(str(tmp_path / "config.json"))  # fmt: skip
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["rope_parameters"] = rope
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    save_file({"x": np.zeros(1, np.float32)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ConfigError, match=match) as err:
        convert.import_hf(str(tmp_path))
    assert "\n" not in str(err.value) and os.path.join(str(tmp_path), "config.json") in str(
        err.value
    )


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"arch": "gpt2", "tie_word_embeddings": False}, "model.tie_word_embeddings=False needs"),
        ({"arch": "gpt2", "rope_type": "llama3"}, "model.rope_type='llama3' needs rotary"),
        ({"arch": "llama", "rope_type": "yarn"}, "model.rope_type='yarn' is not one of"),
        (
            {"arch": "llama", "rope_type": "llama3", "rope_high_freq_factor": 1.0},
            "model.rope_high_freq_factor=1.0 must exceed",
        ),
    ],
)
def test_model_config_rejects(fields, match):
    with pytest.raises(ConfigError, match=match) as err:
        ModelConfig(family="decoder", **fields).validate()
    assert "\n" not in str(err.value)


def test_tied_llama_with_a_different_lm_head_is_refused(tmp_path):
    model = _llama3(tied=True)
    model.save_pretrained(str(tmp_path))
    from safetensors.numpy import load_file

    tensors = load_file(str(tmp_path / "model.safetensors"))
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"] + 1.0
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(ConfigError, match=r"'lm_head\.weight' differs") as err:
        convert.import_hf(str(tmp_path))
    assert "\n" not in str(err.value)
