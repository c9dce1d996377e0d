"""Llama (``LlamaForCausalLM``), Mistral (``MistralForCausalLM``) and Qwen2
(``Qwen2ForCausalLM``) <-> t5x_lite ``decoder`` / ``llama`` | ``mistral`` | ``qwen2``
parameters.

Mistral is Llama with sliding-window attention (HF ``sliding_window`` <->
``model.sliding_window``): the tensors and their names are the same. Qwen2 adds
``q_proj`` / ``k_proj`` / ``v_proj`` biases (``[H*D]``, ``[K*D]`` <->
``attn/{query,key,value}/bias`` ``[H, D]``, ``[K, D]``). ``tie_word_embeddings``
(Llama 3.2-1B, Qwen2-0.5B) <-> ``model.tie_word_embeddings``: no ``lm_head``, the
logits use ``wte``. Llama 3.1's ``rope_type: "llama3"`` (``factor``,
``low_freq_factor``, ``high_freq_factor``, ``original_max_position_embeddings``) <->
``model.rope_type`` and ``model.rope_*``; any other rope type is a one-line error.

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
from t5x_lite.hf import heads as hf_heads

MODEL_TYPES = ("llama", "mistral", "qwen2")
ARCHS = ("llama", "mistral", "qwen2")
# Our arch -> (HF model_type, HF architecture class).
_HF_NAMES = {
    "llama": ("llama", "LlamaForCausalLM"),
    "mistral": ("mistral", "MistralForCausalLM"),
    "qwen2": ("qwen2", "Qwen2ForCausalLM"),
}

# Non-parameter buffers that older checkpoints carry.
_IGNORED = re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")
_HF_BOS, _HF_EOS = 1, 2
# HF rope_parameters keys of rope_type "llama3" -> ModelConfig fields.
_LLAMA3_FIELDS = {
    "factor": "rope_factor",
    "low_freq_factor": "rope_low_freq_factor",
    "high_freq_factor": "rope_high_freq_factor",
    "original_max_position_embeddings": "rope_original_max_len",
}


def _rope(hf: dict[str, Any], where: str) -> dict[str, Any]:
    """ModelConfig ``rope_*`` fields from ``rope_parameters`` (transformers v5) or
    ``rope_theta`` / ``rope_scaling``: default RoPE or Llama 3.1's ``llama3`` rescaling."""
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    field = "rope_parameters" if hf.get("rope_parameters") else "rope_scaling"
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in ("default", "llama3"):
        raise ConfigError(
            f"{where}: {field}.rope_type={kind!r} is not supported (only default, llama3)"
        )
    factor = rope.get("partial_rotary_factor", hf.get("partial_rotary_factor")) or 1.0
    if factor != 1.0:
        raise ConfigError(f"{where}: partial_rotary_factor={factor!r} is not supported (only 1.0)")
    out: dict[str, Any] = {
        "rope_theta": float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
        "rope_type": kind,
    }
    if kind == "llama3":
        for key, name in _LLAMA3_FIELDS.items():
            if key not in rope:
                raise ConfigError(
                    f"{where}: {field}.{key} is missing (rope_type 'llama3' needs it)"
                )
            value = rope[key]
            out[name] = int(value) if name == "rope_original_max_len" else float(value)
    return out


def _config(hf: dict[str, Any], source: str) -> ModelConfig:
    where = f"{source}/config.json"
    act = hf.get("hidden_act", "silu")
    if act not in common.ACTIVATIONS_IN:
        raise ConfigError(
            f"{where}: hidden_act={act!r} is not supported (one of {sorted(common.ACTIVATIONS_IN)})"
        )
    model_type = hf.get("model_type")
    checks = {
        "attention_bias": (False, "Llama projections have no biases"),
        "mlp_bias": (False, "Llama projections have no biases"),
        "attention_dropout": (0.0, "attention-probability dropout is not implemented"),
    }
    if model_type == "qwen2":
        # Qwen2 always has q/k/v biases; its sliding window is off unless asked for.
        checks = {
            "attention_dropout": checks["attention_dropout"],
            "use_sliding_window": (False, "Qwen2's per-layer sliding window is not implemented"),
        }
    for field, (want, why) in checks.items():
        value = hf.get(field, want)
        if value != want:
            raise ConfigError(f"{where}: {field}={value!r} is not supported ({why})")
    rope = _rope(hf, where)
    arch = model_type if model_type in ("mistral", "qwen2") else "llama"
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
            pad_token_id=int(hf.get("pad_token_id") or 0),
            dropout_rate=0.0,
            initializer_range=float(hf.get("initializer_range", 0.02)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            **rope,
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
        attn: dict[str, Any] = {}
        for ours, hf_name, heads in (("query", "q", h), ("key", "k", k), ("value", "v", k)):
            w = take(f"{p}.self_attn.{hf_name}_proj.weight", (heads * d, e))
            attn[ours] = {"kernel": w.T.reshape(e, heads, d)}
            if cfg.traits.qkv_bias:
                bias = take(f"{p}.self_attn.{hf_name}_proj.bias", (heads * d,))
                attn[ours]["bias"] = bias.reshape(heads, d)
        attn["out"] = {
            "kernel": take(f"{p}.self_attn.o_proj.weight", (e, h * d)).T.reshape(h, d, e)
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
    if cfg.tied_head:
        _check_tied(tensors, params["wte"]["embedding"], source)
    else:
        params["lm_head"] = {"kernel": take("lm_head.weight", (v, e)).T}
    common.check_no_unexpected(
        tensors,
        expected,
        source,
        f"{_HF_NAMES[cfg.arch][1]} with {cfg.num_layers} layers",
        lambda name: bool(_IGNORED.match(name)) or (cfg.tied_head and name == "lm_head.weight"),
    )
    # Contiguous copies, so that the params do not alias the transposed HF buffers.
    params = _map(params, np.ascontiguousarray)
    return cfg, common.pad_vocab(cfg, params)


def _check_tied(tensors: dict[str, np.ndarray], embedding: np.ndarray, source: str) -> None:
    """A tied checkpoint may still store ``lm_head.weight``; it must equal the embedding."""
    head = tensors.get("lm_head.weight")
    if head is not None and not np.array_equal(np.asarray(head, np.float32), embedding):
        raise ConfigError(
            f"{source}: tensor 'lm_head.weight' differs from 'model.embed_tokens.weight' "
            "but config.json has tie_word_embeddings=true"
        )


def _map(tree: Any, fn: Any) -> Any:
    if isinstance(tree, dict):
        return {key: _map(value, fn) for key, value in tree.items()}
    return fn(tree)


def to_hf(cfg: ModelConfig, params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(config.json dict, tensors)`` loadable by ``LlamaForCausalLM`` /
    ``MistralForCausalLM.from_pretrained``."""
    params = common.real_vocab(cfg, params)  # the padded rows stay behind
    e, f = cfg.d_model, cfg.d_ff
    hd, kd = cfg.num_heads * cfg.head_size, cfg.kv_heads * cfg.head_size

    def a(x: Any) -> np.ndarray:
        return np.asarray(x, np.float32)

    tensors = {
        "model.embed_tokens.weight": a(params["wte"]["embedding"]),
        "model.norm.weight": a(params["ln_f"]["scale"]),
    }
    if not cfg.tied_head and cfg.task_head == "none":  # tied: transformers re-ties it
        tensors["lm_head.weight"] = a(params["lm_head"]["kernel"]).T
    for i in range(cfg.num_layers):
        lp, p = params[f"layers_{i}"], f"model.layers.{i}"
        attn, mlp = lp["attn"], lp["mlp"]
        tensors[f"{p}.input_layernorm.weight"] = a(lp["ln_1"]["scale"])
        tensors[f"{p}.post_attention_layernorm.weight"] = a(lp["ln_2"]["scale"])
        tensors[f"{p}.self_attn.q_proj.weight"] = a(attn["query"]["kernel"]).reshape(e, hd).T
        tensors[f"{p}.self_attn.k_proj.weight"] = a(attn["key"]["kernel"]).reshape(e, kd).T
        tensors[f"{p}.self_attn.v_proj.weight"] = a(attn["value"]["kernel"]).reshape(e, kd).T
        tensors[f"{p}.self_attn.o_proj.weight"] = a(attn["out"]["kernel"]).reshape(hd, e).T
        if cfg.traits.qkv_bias:
            for ours, hf_name, width in (("query", "q", hd), ("key", "k", kd), ("value", "v", kd)):
                tensors[f"{p}.self_attn.{hf_name}_proj.bias"] = a(attn[ours]["bias"]).reshape(width)
        tensors[f"{p}.mlp.gate_proj.weight"] = a(mlp["wi_0"]["kernel"]).reshape(e, f).T
        tensors[f"{p}.mlp.up_proj.weight"] = a(mlp["wi_1"]["kernel"]).reshape(e, f).T
        tensors[f"{p}.mlp.down_proj.weight"] = a(mlp["wo"]["kernel"]).reshape(f, e).T
    model_type, architecture = _HF_NAMES[cfg.arch]
    rope: dict[str, Any] = {"rope_type": cfg.rope_type, "rope_theta": cfg.rope_theta}
    if cfg.rope_type == "llama3":
        rope.update({key: getattr(cfg, name) for key, name in _LLAMA3_FIELDS.items()})
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
        "rope_parameters": rope,
        "rope_theta": cfg.rope_theta,  # read by transformers < 5
        "attention_dropout": 0.0,
        "tie_word_embeddings": cfg.tied_head,
        "initializer_range": cfg.initializer_range,
        "bos_token_id": _HF_BOS if cfg.vocab_size > _HF_BOS else None,
        "eos_token_id": _HF_EOS if cfg.vocab_size > _HF_EOS else None,
        "pad_token_id": cfg.pad_token_id,
        "dtype": "float32",
    }
    if cfg.arch == "mistral":
        hf_config["sliding_window"] = cfg.sliding_window
    if cfg.arch == "qwen2":
        hf_config["use_sliding_window"] = False
    else:
        hf_config.update(attention_bias=False, mlp_bias=False)
    if cfg.rope_type == "llama3":
        hf_config["rope_scaling"] = rope  # read by transformers < 5
    if cfg.task_head != "none":  # LlamaFor...: the head replaces the LM head
        hf_config.update(hf_heads.config_fields(cfg))
        tensors = {hf_heads.backbone_name(cfg, n): t for n, t in tensors.items()}
        tensors.update(hf_heads.tensors(cfg, params))
    return hf_config, {name: np.ascontiguousarray(t) for name, t in tensors.items()}
