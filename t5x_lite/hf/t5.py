"""T5 (``T5ForConditionalGeneration``) <-> t5x_lite ``encoder_decoder`` parameters.

``feed_forward_proj`` picks the arch: ``"relu"`` is the original T5 (``t5``: ReLU
MLP, head tied to ``shared`` and scaled by ``d_model**-0.5``), ``"gated-gelu"`` is
T5 v1.1 (``t5_v1_1``: gated-GELU, unscaled untied head). Torch ``Linear`` weights
are ``[out, in]``; our kernels are ``[in, out]`` with heads split out
(``enc`` = ``encoder.block.i.layer``, ``dec`` = ``decoder.block.i.layer``)::

    shared.weight                           [V, E]   token_embedder/embedding
    {enc,dec}.0.SelfAttention
      .relative_attention_bias.weight       [N, H]   {encoder,decoder}/relpos_bias/rel_embedding
                                                     (block 0 only; shared by all layers)
    enc.0.layer_norm.weight                 [E]      encoder/layers_i/pre_attention_layer_norm
    enc.0.SelfAttention.{q,k,v}.weight      [HD, E]  .../attention/{query,key,value} [E, H, D]
    enc.0.SelfAttention.o.weight            [E, HD]  .../attention/out               [H, D, E]
    enc.1.layer_norm.weight                 [E]      .../pre_mlp_layer_norm
    enc.1.DenseReluDense.wi.weight          [F, E]   .../mlp/wi [E, F] (wi_0, wi_1 when gated)
    enc.1.DenseReluDense.wo.weight          [E, F]   .../mlp/wo [F, E]
    encoder.final_layer_norm.weight         [E]      encoder/encoder_norm
    dec.0.{layer_norm,SelfAttention}                 decoder/layers_i/pre_self_attention_layer_norm,
                                                     self_attention
    dec.1.{layer_norm,EncDecAttention}               .../pre_cross_attention_layer_norm,
                                                     encoder_decoder_attention
    dec.2.{layer_norm,DenseReluDense}                .../pre_mlp_layer_norm, mlp
    decoder.final_layer_norm.weight         [E]      decoder/decoder_norm
    lm_head.weight                          [V, E]   decoder/logits_dense [E, V] (t5_v1_1 only)

(norms hold ``scale``, projections ``kernel``.)

Head tying: transformers 5 writes ``tie_word_embeddings: true`` for every T5 and
records the head scaling in ``scale_decoder_outputs``; older files only carry
``tie_word_embeddings`` (true = tied and scaled). A file without ``lm_head.weight``
whose config says the head is tied uses ``shared.weight`` as the head.

Everything here is numpy: a missing or misshapen tensor is a one-line ConfigError
raised before any JAX array exists.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from t5x_lite.config import ConfigError, ModelConfig
from t5x_lite.hf import common

MODEL_TYPES = ("t5",)
ARCHS = ("t5", "t5_v1_1")

# feed_forward_proj -> (arch, activation), and back.
_FFN_IN = {"relu": ("t5", "relu"), "gated-gelu": ("t5_v1_1", "gelu_new")}
_FFN_OUT = {v: k for k, v in _FFN_IN.items()}
# Copies of shared.weight that some writers store, and a tensor HF itself ignores.
_IGNORED = {
    "encoder.embed_tokens.weight",
    "decoder.embed_tokens.weight",
    "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",
}


def _layout(cfg: ModelConfig) -> list[tuple[str, tuple[str, ...], str, tuple[int, ...]]]:
    """``(hf_name, our_path, kind, hf_shape)`` for every tensor except the embeddings.

    ``kind``: ``copy`` (same layout), ``dense`` (``[out, in]`` <-> ``[in, out]``),
    ``qkv`` (``[H*D, E]`` <-> ``[E, H, D]``), ``out`` (``[E, H*D]`` <-> ``[H, D, E]``).
    """
    e, f, h, d = cfg.d_model, cfg.d_ff, cfg.num_heads, cfg.head_size
    gated = cfg.arch == "t5_v1_1"
    rows: list[tuple[str, tuple[str, ...], str, tuple[int, ...]]] = []

    def attention(hf: str, ours: tuple[str, ...]) -> None:
        for a, b in (("q", "query"), ("k", "key"), ("v", "value")):
            rows.append((f"{hf}.{a}.weight", (*ours, b, "kernel"), "qkv", (h * d, e)))
        rows.append((f"{hf}.o.weight", (*ours, "out", "kernel"), "out", (e, h * d)))

    def norm(hf: str, ours: tuple[str, ...]) -> None:
        rows.append((f"{hf}.weight", (*ours, "scale"), "copy", (e,)))

    def mlp(hf: str, ours: tuple[str, ...]) -> None:
        for wi in ("wi_0", "wi_1") if gated else ("wi",):
            rows.append((f"{hf}.{wi}.weight", (*ours, wi, "kernel"), "dense", (f, e)))
        rows.append((f"{hf}.wo.weight", (*ours, "wo", "kernel"), "dense", (e, f)))

    relpos = (cfg.relative_num_buckets, h)
    for stack, n_layers in (("encoder", cfg.num_layers), ("decoder", cfg.decoder_layers)):
        rows.append(
            (
                f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                (stack, "relpos_bias", "rel_embedding"),
                "copy",
                relpos,
            )
        )
        for i in range(n_layers):
            p, o = f"{stack}.block.{i}.layer", (stack, f"layers_{i}")
            if stack == "encoder":
                norm(f"{p}.0.layer_norm", (*o, "pre_attention_layer_norm"))
                attention(f"{p}.0.SelfAttention", (*o, "attention"))
                norm(f"{p}.1.layer_norm", (*o, "pre_mlp_layer_norm"))
                mlp(f"{p}.1.DenseReluDense", (*o, "mlp"))
            else:
                norm(f"{p}.0.layer_norm", (*o, "pre_self_attention_layer_norm"))
                attention(f"{p}.0.SelfAttention", (*o, "self_attention"))
                norm(f"{p}.1.layer_norm", (*o, "pre_cross_attention_layer_norm"))
                attention(f"{p}.1.EncDecAttention", (*o, "encoder_decoder_attention"))
                norm(f"{p}.2.layer_norm", (*o, "pre_mlp_layer_norm"))
                mlp(f"{p}.2.DenseReluDense", (*o, "mlp"))
        norm(f"{stack}.final_layer_norm", (stack, f"{stack}_norm"))
    return rows


def _to_ours(x: np.ndarray, kind: str, cfg: ModelConfig) -> np.ndarray:
    e, h, d = cfg.d_model, cfg.num_heads, cfg.head_size
    if kind == "dense":
        return np.ascontiguousarray(x.T)
    if kind == "qkv":
        return np.ascontiguousarray(x.T).reshape(e, h, d)
    if kind == "out":
        return np.ascontiguousarray(x.T).reshape(h, d, e)
    return x


def _to_hf(x: np.ndarray, kind: str, cfg: ModelConfig) -> np.ndarray:
    e, h, d = cfg.d_model, cfg.num_heads, cfg.head_size
    if kind == "dense":
        return np.ascontiguousarray(x.T)
    if kind == "qkv":
        return np.ascontiguousarray(x.reshape(e, h * d).T)
    if kind == "out":
        return np.ascontiguousarray(x.reshape(h * d, e).T)
    return x


def _head_flags(hf: dict[str, Any]) -> tuple[bool, str, bool]:
    """``(scaled, field that says so, head tied to shared in the file)``."""
    tied = hf.get("tie_word_embeddings", True) is not False
    if "scale_decoder_outputs" in hf:
        return bool(hf["scale_decoder_outputs"]), "scale_decoder_outputs", tied
    return tied, "tie_word_embeddings", tied


def _config(hf: dict[str, Any], source: str) -> ModelConfig:
    where = f"{source}/config.json"
    ffn = hf.get("feed_forward_proj", "relu")
    if ffn not in _FFN_IN:
        raise ConfigError(
            f"{where}: feed_forward_proj={ffn!r} is not supported (one of {sorted(_FFN_IN)})"
        )
    arch, act = _FFN_IN[ffn]
    scaled, field, _ = _head_flags(hf)
    if scaled != (arch == "t5"):
        want = "tied and scaled" if arch == "t5" else "untied and unscaled"
        raise ConfigError(
            f"{where}: {field}={hf.get(field)!r} is not supported with "
            f"feed_forward_proj={ffn!r} (arch {arch} has a {want} LM head)"
        )
    return common.model_config(
        where,
        lambda: ModelConfig(
            family="encoder_decoder",
            arch=arch,
            vocab_size=int(hf.get("vocab_size", 32128)),
            d_model=int(hf.get("d_model", 512)),
            num_heads=int(hf.get("num_heads", 8)),
            head_dim=int(hf.get("d_kv", 64)),
            num_layers=int(hf.get("num_layers", 6)),
            num_decoder_layers=int(hf.get("num_decoder_layers") or hf.get("num_layers", 6)),
            d_ff=int(hf.get("d_ff", 2048)),
            max_seq_len=int(hf.get("n_positions", 512)),
            norm_eps=float(hf.get("layer_norm_epsilon", 1e-6)),
            activation=act,
            relative_num_buckets=int(hf.get("relative_attention_num_buckets", 32)),
            relative_max_distance=int(hf.get("relative_attention_max_distance", 128)),
            pad_token_id=int(hf.get("pad_token_id") or 0),
            dropout_rate=float(hf.get("dropout_rate", 0.1)),
        ),
    )


def _set(tree: dict[str, Any], path: tuple[str, ...], value: np.ndarray) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get(tree: Any, path: tuple[str, ...]) -> np.ndarray:
    for key in path:
        tree = tree[key]
    return np.asarray(tree, np.float32)


def from_hf(
    hf_config: dict[str, Any], tensors: dict[str, np.ndarray], source: str
) -> tuple[ModelConfig, dict[str, Any]]:
    """``(ModelConfig, params)`` of a T5ForConditionalGeneration; params are float32 numpy."""
    cfg = _config(hf_config, source)
    v, e = cfg.vocab_size, cfg.d_model
    # Some writers store only the per-stack copies of the shared table.
    emb_name = next(
        (
            n
            for n in ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
            if n in tensors
        ),
        "shared.weight",
    )
    shared = common.take(tensors, emb_name, (v, e), source)
    params: dict[str, Any] = {"token_embedder": {"embedding": shared}}
    expected = {emb_name}
    for hf_name, path, kind, shape in _layout(cfg):
        _set(params, path, _to_ours(common.take(tensors, hf_name, shape, source), kind, cfg))
        expected.add(hf_name)

    _, _, tied_in_file = _head_flags(hf_config)
    if cfg.arch == "t5":
        if "lm_head.weight" in tensors:
            head = common.take(tensors, "lm_head.weight", (v, e), source)
            if not np.array_equal(head, shared):
                raise ConfigError(
                    f"{source}: tensor 'lm_head.weight' differs from {emb_name!r}; an untied "
                    "original T5 (feed_forward_proj='relu') is not supported "
                    "(tie_word_embeddings)"
                )
    else:
        if "lm_head.weight" in tensors or not tied_in_file:
            head = common.take(tensors, "lm_head.weight", (v, e), source)
        else:
            head = shared  # transformers 5 ties the head when the file has none
        _set(params, ("decoder", "logits_dense", "kernel"), np.ascontiguousarray(head.T))
    expected.add("lm_head.weight")

    common.check_no_unexpected(
        tensors,
        expected,
        source,
        f"T5 with {cfg.num_layers}+{cfg.decoder_layers} layers",
        _IGNORED.__contains__,
    )
    return cfg, common.pad_vocab(cfg, params)


def to_hf(cfg: ModelConfig, params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(config.json dict, tensors)`` loadable by ``T5ForConditionalGeneration``."""
    params = common.real_vocab(cfg, params)  # the padded rows stay behind
    key = (cfg.arch, cfg.activation)
    if key not in _FFN_OUT:
        want = dict(_FFN_IN.values())[cfg.arch]
        raise ConfigError(
            f"model.activation={cfg.activation!r} has no Hugging Face T5 equivalent for arch "
            f"{cfg.arch!r} (needs {want!r})"
        )
    tied = cfg.arch == "t5"
    shared = _get(params, ("token_embedder", "embedding"))
    tensors = {"shared.weight": shared}
    for hf_name, path, kind, _ in _layout(cfg):
        tensors[hf_name] = _to_hf(_get(params, path), kind, cfg)
    if not tied:  # a tied head is shared.weight itself (transformers ties it on load)
        head = _get(params, ("decoder", "logits_dense", "kernel"))  # [E, V]
        tensors["lm_head.weight"] = np.ascontiguousarray(head.T)
    hf_config = {
        "model_type": "t5",
        "architectures": ["T5ForConditionalGeneration"],
        "vocab_size": cfg.vocab_size,
        "d_model": cfg.d_model,
        "d_kv": cfg.head_size,
        "d_ff": cfg.d_ff,
        "num_layers": cfg.num_layers,
        "num_decoder_layers": cfg.decoder_layers,
        "num_heads": cfg.num_heads,
        "relative_attention_num_buckets": cfg.relative_num_buckets,
        "relative_attention_max_distance": cfg.relative_max_distance,
        "dropout_rate": cfg.dropout_rate,
        "layer_norm_epsilon": cfg.norm_eps,
        "initializer_factor": 1.0,
        "feed_forward_proj": _FFN_OUT[key],
        "is_encoder_decoder": True,
        "tie_word_embeddings": tied,
        "scale_decoder_outputs": tied,
        "n_positions": cfg.max_seq_len,
        "pad_token_id": cfg.pad_token_id,
        "eos_token_id": 1,
        "decoder_start_token_id": cfg.pad_token_id,
        "use_cache": True,
        "dtype": "float32",
    }
    return hf_config, tensors
