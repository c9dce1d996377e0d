"""Llama (``LlamaForCausalLM``) and Mistral (``MistralForCausalLM``) <-> t5x_lite
``decoder`` / ``llama`` | ``mistral`` parameters.

Mistral is Llama with sliding-window attention (HF ``sliding_window`` <->
``model.sliding_window``): the tensors and their names are the same.

Hugging Face ``nn.Linear`` weights are ``[out, in]``; our kernels are ``[in, out]``
with the head dimensions split out (``E`` width, ``H`` query heads, ``K`` key/value
heads, ``D`` head size, ``F`` MLP width)::

    model.embed_tokens.weight                  [V, E]     wte/embedding
    model.layers.N.input_layernorm.weight      [E]        layers_N/ln_1/scale
    model.layers.N.self_attn.q_proj.weight     [H*D, E]   layers_N/attn/query/kernel [E, H, D]
    model.layers.N.self_attn.k_proj.weight     [K*D, E]   layers_N/attn/key/kernel   [E, K, D]
    model.layers.N.self_attn.v_proj.weight     [K*D, E]   layers_N/attn/value/kernel [E, K, D]
    model.layers.N.self_attn.o_proj.weight     [E, H*D]   layers_N/attn/out/kernel   [H, D, E]
    model.layers.N.post_attention_layernorm.weight        layers_N/ln_2/scale
    model.layers.N.mlp.gate_proj.weight        [F, E]     layers_N/mlp/wi_0/kernel   [E, F]
    model.layers.N.mlp.up_proj.weight          [F, E]     layers_N/mlp/wi_1/kernel   [E, F]
    model.layers.N.mlp.down_proj.weight        [E, F]     layers_N/mlp/wo/kernel     [F, E]
    model.norm.weight                          [E]        ln_f/scale
    lm_head.weight                             [V, E]     lm_head/kernel             [E, V]

HF's q/k weights already use the "rotate_half" RoPE layout that
:func:`t5x_lite.layers.apply_rope` implements, so no permutation is needed.
Everything here is numpy: a missing or misshapen tensor is a one-line ConfigError
raised before any JAX array exists.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from t5x_lite.config import ConfigError, ModelConfig
from t5x_lite.hf import common

MODEL_TYPES = ("llama", "mistral")
ARCHS = ("llama", "mistral")
# Our arch -> (HF model_type, HF architecture class).
_HF_NAMES = {"llama": ("llama", "LlamaForCausalLM"), "mistral": ("mistral", "MistralForCausalLM")}

# Non-parameter buffers that older checkpoints carry.
_IGNORED = re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")
_HF_BOS, _HF_EOS = 1, 2


def _rope_theta(hf: dict[str, Any], where: str) -> float:
    """RoPE base from ``rope_parameters`` (transformers v5) or ``rope_theta`` / ``rope_scaling``."""
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    field = "rope_parameters" if hf.get("rope_parameters") else "rope_scaling"
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default":
        raise ConfigError(
            f"{where}: {field}.rope_type={kind!r} is not supported (only default RoPE)"
        )
    factor = rope.get("partial_rotary_factor", hf.get("partial_rotary_factor")) or 1.0
    if factor != 1.0:
        raise ConfigError(f"{where}: partial_rotary_factor={factor!r} is not supported (only 1.0)")
    return float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))


def _config(hf: dict[str, Any], source: str) -> ModelConfig:
    where = f"{source}/config.json"
    act = hf.get("hidden_act", "silu")
    if act not in common.ACTIVATIONS_IN:
        raise ConfigError(
            f"{where}: hidden_act={act!r} is not supported (one of {sorted(common.ACTIVATIONS_IN)})"
        )
    checks = {
        "attention_bias": (False, "Llama projections have no biases"),
        "mlp_bias": (False, "Llama projections have no biases"),
        "tie_word_embeddings": (False, "the llama arch has an untied lm_head"),
        "attention_dropout": (0.0, "attention-probability dropout is not implemented"),
    }
    for field, (want, why) in checks.items():
        value = hf.get(field, want)
        if value != want:
            raise ConfigError(f"{where}: {field}={value!r} is not supported ({why})")
    theta = _rope_theta(hf, where)
    arch = "mistral" if hf.get("model_type") == "mistral" else "llama"
    window = hf.get("sliding_window") if arch == "mistral" else None
    e = int(hf.get("hidden_size", 4096))
    heads = int(hf.get("num_attention_heads", 32))
    head_dim = hf.get("head_dim")
    return common.model_config(
        where,
        lambda: ModelConfig(
            family="decoder",
            arch=arch,
            sliding_window=None if window is None else int(window),
            vocab_size=int(hf.get("vocab_size", 32000)),
            d_model=e,
            num_heads=heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or heads),
            head_dim=None if head_dim in (None, e // heads) else int(head_dim),
            num_layers=int(hf.get("num_hidden_layers", 32)),
            d_ff=int(hf.get("intermediate_size", 11008)),
            max_seq_len=int(hf.get("max_position_embeddings", 2048)),
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            activation=common.ACTIVATIONS_IN[act],
            rope_theta=theta,
            pad_token_id=int(hf.get("pad_token_id") or 0),
            dropout_rate=0.0,
            initializer_range=float(hf.get("initializer_range", 0.02)),
        ),
    )


def from_hf(
    hf_config: dict[str, Any], tensors: dict[str, np.ndarray], source: str
) -> tuple[ModelConfig, dict[str, Any]]:
    """``(ModelConfig, params)`` of a LlamaForCausalLM; params are float32 numpy."""
    cfg = _config(hf_config, source)
    e, f, v = cfg.d_model, cfg.d_ff, cfg.vocab_size
    h, k, d = cfg.num_heads, cfg.kv_heads, cfg.head_size
    expected: set[str] = set()

    def take(name: str, shape: tuple[int, ...]) -> np.ndarray:
        expected.add(name)
        return common.take(tensors, name, shape, source)

    params: dict[str, Any] = {"wte": {"embedding": take("model.embed_tokens.weight", (v, e))}}
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}"
        attn = {
            "query": {
                "kernel": take(f"{p}.self_attn.q_proj.weight", (h * d, e)).T.reshape(e, h, d)
            },
            "key": {"kernel": take(f"{p}.self_attn.k_proj.weight", (k * d, e)).T.reshape(e, k, d)},
            "value": {
                "kernel": take(f"{p}.self_attn.v_proj.weight", (k * d, e)).T.reshape(e, k, d)
            },
            "out": {"kernel": take(f"{p}.self_attn.o_proj.weight", (e, h * d)).T.reshape(h, d, e)},
        }
        mlp = {
            "wi_0": {"kernel": take(f"{p}.mlp.gate_proj.weight", (f, e)).T},
            "wi_1": {"kernel": take(f"{p}.mlp.up_proj.weight", (f, e)).T},
            "wo": {"kernel": take(f"{p}.mlp.down_proj.weight", (e, f)).T},
        }
        params[f"layers_{i}"] = {
            "ln_1": {"scale": take(f"{p}.input_layernorm.weight", (e,))},
            "attn": attn,
            "ln_2": {"scale": take(f"{p}.post_attention_layernorm.weight", (e,))},
            "mlp": mlp,
        }
    params["ln_f"] = {"scale": take("model.norm.weight", (e,))}
    params["lm_head"] = {"kernel": take("lm_head.weight", (v, e)).T}
    common.check_no_unexpected(
        tensors,
        expected,
        source,
        f"{_HF_NAMES[cfg.arch][1]} with {cfg.num_layers} layers",
        _IGNORED.match,
    )
    # Contiguous copies, so that the params do not alias the transposed HF buffers.
    params = _map(params, np.ascontiguousarray)
    return cfg, params


def _map(tree: Any, fn: Any) -> Any:
    if isinstance(tree, dict):
        return {key: _map(value, fn) for key, value in tree.items()}
    return fn(tree)


def to_hf(cfg: ModelConfig, params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(config.json dict, tensors)`` loadable by ``LlamaForCausalLM`` /
    ``MistralForCausalLM.from_pretrained``."""
    e, f = cfg.d_model, cfg.d_ff
    hd, kd = cfg.num_heads * cfg.head_size, cfg.kv_heads * cfg.head_size

    def a(x: Any) -> np.ndarray:
        return np.asarray(x, np.float32)

    tensors = {
        "model.embed_tokens.weight": a(params["wte"]["embedding"]),
        "model.norm.weight": a(params["ln_f"]["scale"]),
        "lm_head.weight": a(params["lm_head"]["kernel"]).T,
    }
    for i in range(cfg.num_layers):
        lp, p = params[f"layers_{i}"], f"model.layers.{i}"
        attn, mlp = lp["attn"], lp["mlp"]
        tensors[f"{p}.input_layernorm.weight"] = a(lp["ln_1"]["scale"])
        tensors[f"{p}.post_attention_layernorm.weight"] = a(lp["ln_2"]["scale"])
        tensors[f"{p}.self_attn.q_proj.weight"] = a(attn["query"]["kernel"]).reshape(e, hd).T
        tensors[f"{p}.self_attn.k_proj.weight"] = a(attn["key"]["kernel"]).reshape(e, kd).T
        tensors[f"{p}.self_attn.v_proj.weight"] = a(attn["value"]["kernel"]).reshape(e, kd).T
        tensors[f"{p}.self_attn.o_proj.weight"] = a(attn["out"]["kernel"]).reshape(hd, e).T
        tensors[f"{p}.mlp.gate_proj.weight"] = a(mlp["wi_0"]["kernel"]).reshape(e, f).T
        tensors[f"{p}.mlp.up_proj.weight"] = a(mlp["wi_1"]["kernel"]).reshape(e, f).T
        tensors[f"{p}.mlp.down_proj.weight"] = a(mlp["wo"]["kernel"]).reshape(f, e).T
    model_type, architecture = _HF_NAMES[cfg.arch]
    hf_config = {
        "model_type": model_type,
        "architectures": [architecture],
        "vocab_size": cfg.vocab_size,
        "hidden_size": e,
        "intermediate_size": f,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_size,
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "hidden_act": cfg.activation,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "rope_theta": cfg.rope_theta,  # read by transformers < 5
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "initializer_range": cfg.initializer_range,
        "bos_token_id": _HF_BOS if cfg.vocab_size > _HF_BOS else None,
        "eos_token_id": _HF_EOS if cfg.vocab_size > _HF_EOS else None,
        "pad_token_id": cfg.pad_token_id,
        "dtype": "float32",
    }
    if cfg.arch == "mistral":
        hf_config["sliding_window"] = cfg.sliding_window
    return hf_config, {name: np.ascontiguousarray(t) for name, t in tensors.items()}
