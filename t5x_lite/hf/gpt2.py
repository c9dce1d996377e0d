"""GPT-2 (``GPT2LMHeadModel``) <-> t5x_lite ``decoder`` / ``gpt2`` parameters.

Hugging Face GPT-2 stores its projections as ``Conv1D`` weights ``[in, out]`` and
the attention input projection fused as ``c_attn`` ``[E, 3E]`` (q | k | v). Our
tree splits it into ``[E, H, D]`` kernels::

    transformer.wte.weight             [V, E]    wte/embedding
    transformer.wpe.weight             [P, E]    wpe/embedding
    transformer.h.N.ln_1.{weight,bias} [E]       layers_N/ln_1/{scale,bias}
    transformer.h.N.attn.c_attn.weight [E, 3E]   layers_N/attn/{query,key,value}/kernel [E, H, D]
    transformer.h.N.attn.c_attn.bias   [3E]      layers_N/attn/{query,key,value}/bias   [H, D]
    transformer.h.N.attn.c_proj.weight [E, E]    layers_N/attn/out/kernel               [H, D, E]
    transformer.h.N.ln_2.{weight,bias} [E]       layers_N/ln_2/{scale,bias}
    transformer.h.N.mlp.c_fc.weight    [E, F]    layers_N/mlp/wi/kernel
    transformer.h.N.mlp.c_proj.weight  [F, E]    layers_N/mlp/wo/kernel
    transformer.ln_f.{weight,bias}     [E]       ln_f/{scale,bias}
    lm_head.weight                     [V, E]    tied to wte (often absent from the file)

Everything here is numpy: a missing or misshapen tensor is a one-line ConfigError
raised before any JAX array exists.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from t5x_lite.config import ConfigError, ModelConfig
from t5x_lite.hf import common, heads

MODEL_TYPES = ("gpt2",)
ARCHS = ("gpt2",)

_ACT_IN = common.ACTIVATIONS_IN
# ModelConfig.activation -> HF activation_function.
_ACT_OUT = {"gelu_new": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu"}
# Non-parameter buffers older checkpoints carry; the tied head duplicates wte.
_IGNORED = re.compile(r"^(transformer\.h\.\d+\.attn\.(bias|masked_bias)|lm_head\.weight)$")
_HF_BOS_EOS = 50256


def _config(hf: dict[str, Any], source: str) -> ModelConfig:
    where = f"{source}/config.json"

    def bad(field: str, value: Any, want: str) -> ConfigError:
        return ConfigError(f"{where}: {field}={value!r} is not supported ({want})")

    act = hf.get("activation_function", "gelu_new")
    if act not in _ACT_IN:
        raise bad("activation_function", act, f"one of {sorted(_ACT_IN)}")
    checks = {
        "scale_attn_weights": (True, "attention is always scaled by 1/sqrt(head_dim)"),
        "scale_attn_by_inverse_layer_idx": (False, "needs false"),
        "add_cross_attention": (False, "needs false"),
        "tie_word_embeddings": (True, "GPT-2 ties its LM head to wte"),
    }
    for field, (want, why) in checks.items():
        value = hf.get(field, want)
        if value != want:
            raise bad(field, value, why)
    e = int(hf.get("n_embd", 768))
    return common.model_config(
        where,
        lambda: ModelConfig(
            family="decoder",
            arch="gpt2",
            vocab_size=int(hf.get("vocab_size", 50257)),
            d_model=e,
            num_heads=int(hf.get("n_head", 12)),
            num_layers=int(hf.get("n_layer", 12)),
            d_ff=int(hf.get("n_inner") or 4 * e),
            max_seq_len=int(hf.get("n_positions", 1024)),
            norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
            activation=_ACT_IN[act],
            pad_token_id=int(hf.get("pad_token_id") or 0),
            dropout_rate=float(hf.get("resid_pdrop", 0.1)),
            initializer_range=float(hf.get("initializer_range", 0.02)),
        ),
    )


def from_hf(
    hf_config: dict[str, Any], tensors: dict[str, np.ndarray], source: str
) -> tuple[ModelConfig, dict[str, Any]]:
    """``(ModelConfig, params)`` of a GPT2LMHeadModel; params are float32 numpy."""
    cfg = _config(hf_config, source)
    e, f, h, d, v = cfg.d_model, cfg.d_ff, cfg.num_heads, cfg.head_size, cfg.vocab_size

    def take(name: str, shape: tuple[int, ...]) -> np.ndarray:
        return common.take(tensors, name, shape, source)

    def ln(prefix: str) -> dict[str, np.ndarray]:
        return {"scale": take(f"{prefix}.weight", (e,)), "bias": take(f"{prefix}.bias", (e,))}

    expected = set()
    params: dict[str, Any] = {
        "wte": {"embedding": take("transformer.wte.weight", (v, e))},
        "wpe": {"embedding": take("transformer.wpe.weight", (cfg.max_seq_len, e))},
    }
    expected |= {"transformer.wte.weight", "transformer.wpe.weight"}
    for i in range(cfg.num_layers):
        p = f"transformer.h.{i}"
        w_qkv = take(f"{p}.attn.c_attn.weight", (e, 3 * e))  # [E, 3E] = [E, (q|k|v)]
        b_qkv = take(f"{p}.attn.c_attn.bias", (3 * e,))
        attn = {
            name: {
                "kernel": w_qkv[:, j * e : (j + 1) * e].reshape(e, h, d),
                "bias": b_qkv[j * e : (j + 1) * e].reshape(h, d),
            }
            for j, name in enumerate(("query", "key", "value"))
        }
        attn["out"] = {
            "kernel": take(f"{p}.attn.c_proj.weight", (e, e)).reshape(h, d, e),
            "bias": take(f"{p}.attn.c_proj.bias", (e,)),
        }
        mlp = {
            "wi": {
                "kernel": take(f"{p}.mlp.c_fc.weight", (e, f)),
                "bias": take(f"{p}.mlp.c_fc.bias", (f,)),
            },
            "wo": {
                "kernel": take(f"{p}.mlp.c_proj.weight", (f, e)),
                "bias": take(f"{p}.mlp.c_proj.bias", (e,)),
            },
        }
        params[f"layers_{i}"] = {
            "ln_1": ln(f"{p}.ln_1"),
            "attn": attn,
            "ln_2": ln(f"{p}.ln_2"),
            "mlp": mlp,
        }
        expected |= {
            f"{p}.{n}.{k}"
            for n in ("ln_1", "ln_2", "attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
            for k in ("weight", "bias")
        }
    params["ln_f"] = ln("transformer.ln_f")
    expected |= {"transformer.ln_f.weight", "transformer.ln_f.bias"}
    common.check_no_unexpected(
        tensors, expected, source, f"GPT-2 with {cfg.num_layers} layers", _IGNORED.match
    )
    return cfg, common.pad_vocab(cfg, params)


def to_hf(cfg: ModelConfig, params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(config.json dict, tensors)`` loadable by ``GPT2LMHeadModel.from_pretrained``."""
    params = common.real_vocab(cfg, params)  # the padded rows stay behind
    e, f = cfg.d_model, cfg.d_ff
    if cfg.num_heads * cfg.head_size != e:
        raise ConfigError(
            f"model.head_dim={cfg.head_dim}: GPT-2 needs num_heads * head_dim == d_model={e}"
        )

    def a(x: Any) -> np.ndarray:
        return np.asarray(x, np.float32)

    tensors = {
        "transformer.wte.weight": a(params["wte"]["embedding"]),
        "transformer.wpe.weight": a(params["wpe"]["embedding"]),
        "transformer.ln_f.weight": a(params["ln_f"]["scale"]),
        "transformer.ln_f.bias": a(params["ln_f"]["bias"]),
    }
    for i in range(cfg.num_layers):
        lp, p = params[f"layers_{i}"], f"transformer.h.{i}"
        attn = lp["attn"]
        qkv = ("query", "key", "value")
        tensors[f"{p}.attn.c_attn.weight"] = np.concatenate(
            [a(attn[n]["kernel"]).reshape(e, e) for n in qkv], axis=1
        )
        tensors[f"{p}.attn.c_attn.bias"] = np.concatenate(
            [a(attn[n]["bias"]).reshape(e) for n in qkv]
        )
        tensors[f"{p}.attn.c_proj.weight"] = a(attn["out"]["kernel"]).reshape(e, e)
        tensors[f"{p}.attn.c_proj.bias"] = a(attn["out"]["bias"])
        for n in ("ln_1", "ln_2"):
            tensors[f"{p}.{n}.weight"] = a(lp[n]["scale"])
            tensors[f"{p}.{n}.bias"] = a(lp[n]["bias"])
        tensors[f"{p}.mlp.c_fc.weight"] = a(lp["mlp"]["wi"]["kernel"]).reshape(e, f)
        tensors[f"{p}.mlp.c_fc.bias"] = a(lp["mlp"]["wi"]["bias"])
        tensors[f"{p}.mlp.c_proj.weight"] = a(lp["mlp"]["wo"]["kernel"]).reshape(f, e)
        tensors[f"{p}.mlp.c_proj.bias"] = a(lp["mlp"]["wo"]["bias"])
    special = _HF_BOS_EOS if cfg.vocab_size > _HF_BOS_EOS else None
    hf_config = {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.max_seq_len,
        "n_embd": e,
        "n_layer": cfg.num_layers,
        "n_head": cfg.num_heads,
        "n_inner": f,
        "activation_function": _ACT_OUT[cfg.activation],
        "layer_norm_epsilon": cfg.norm_eps,
        "initializer_range": cfg.initializer_range,
        "resid_pdrop": cfg.dropout_rate,
        "embd_pdrop": cfg.dropout_rate,
        "attn_pdrop": cfg.dropout_rate,  # one rate: residuals, embeddings, attention
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
        "bos_token_id": special,
        "eos_token_id": special,
        "pad_token_id": cfg.pad_token_id,
        "dtype": "float32",
    }
    if cfg.task_head != "none":  # GPT2For...: the head replaces the tied LM head
        hf_config.update(heads.config_fields(cfg))
        tensors.update(heads.tensors(cfg, params))
    return hf_config, tensors
