"""Hugging Face BERT, RoBERTa and ALBERT <-> :mod:`t5x_lite.models.encoder`.

Reads ``BertForMaskedLM`` / ``BertForPreTraining``, ``RobertaForMaskedLM`` and
``AlbertForMaskedLM`` / ``AlbertForPreTraining`` checkpoints; writes the
``...ForPreTraining`` class when ``sentence_head`` is set, else ``...ForMaskedLM``.

One table per architecture (:func:`_table`) lists ``(our path, HF name, layout)``
and drives both directions, so import and export cannot drift apart. Layouts::

    dense  torch Linear weight [out, in]      <-> kernel [in, out]
    qkv    query/key/value weight [H*D, E]    <-> kernel [E, H, D]  (bias [H*D] <-> [H, D])
    out    attention output weight [E, H*D]   <-> kernel [H, D, E]
    copy   embeddings, LayerNorm, biases      <-> same array

RoBERTa keeps HF's position table (``pad_token_id + 1`` leading rows), so its
``position_offset`` is ``pad_token_id + 1`` and ``max_seq_len`` is
``max_position_embeddings - position_offset``. ALBERT is read with
``num_hidden_groups`` = 1 (one shared layer, ``share_layers``) or = ``num_layers``
(unshared); ``inner_group_num`` must be 1.

A tensor in the file that the encoder does not read is a one-line ConfigError
(e.g. ``classifier.weight`` of a sequence-classification file, or the
``distance_embedding`` table of a relative-position variant), except the extras
real checkpoints carry that we legitimately drop (:func:`_tolerated`): index
buffers, the tied decoder and its bias when they equal what we read, and an
unused pooler.

Everything here is numpy: a missing or misshapen tensor is a one-line ConfigError
naming it, raised before any JAX array is built.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from t5x_lite.config import ConfigError, ModelConfig
from t5x_lite.hf import common, heads

MODEL_TYPES = ("bert", "roberta", "albert")
ARCHS = ("bert", "roberta", "albert")

_PREFIX = {"bert": "bert.", "roberta": "roberta.", "albert": "albert."}
_HEAD = {"bert": "cls.predictions.", "roberta": "lm_head.", "albert": "predictions."}
_NAME = {"bert": "BERT", "roberta": "RoBERTa", "albert": "ALBERT"}
_ACT_FROM_HF = common.ACTIVATIONS_IN

Entry = tuple[tuple[str, ...], str, str, tuple[int, ...]]  # (ours, hf name, layout, hf shape)


# --------------------------------------------------------------------------- name table


def _linear(ours: tuple[str, ...], hf: str, n_in: int, n_out: int) -> list[Entry]:
    return [
        ((*ours, "kernel"), hf + ".weight", "dense", (n_out, n_in)),
        ((*ours, "bias"), hf + ".bias", "copy", (n_out,)),
    ]


def _norm(ours: tuple[str, ...], hf: str, d: int) -> list[Entry]:
    return [
        ((*ours, "scale"), hf + ".weight", "copy", (d,)),
        ((*ours, "bias"), hf + ".bias", "copy", (d,)),
    ]


def _attention(
    ours: tuple[str, ...], q: str, k: str, v: str, o: str, e: int, hd: int
) -> list[Entry]:
    out: list[Entry] = []
    for name, hf in (("query", q), ("key", k), ("value", v)):
        out += [
            ((*ours, name, "kernel"), hf + ".weight", "qkv", (hd, e)),
            ((*ours, name, "bias"), hf + ".bias", "qkv_bias", (hd,)),
        ]
    out += [
        ((*ours, "out", "kernel"), o + ".weight", "out", (e, hd)),
        ((*ours, "out", "bias"), o + ".bias", "copy", (e,)),
    ]
    return out


def _layer(cfg: ModelConfig, ours: tuple[str, ...], hf: str) -> list[Entry]:
    e, f, hd = cfg.d_model, cfg.d_ff, cfg.num_heads * cfg.head_size
    att = (*ours, "attention")
    if cfg.arch == "albert":
        a = hf + "attention."
        return (
            _attention(att, a + "query", a + "key", a + "value", a + "dense", e, hd)
            + _norm((*ours, "attention_norm"), a + "LayerNorm", e)
            + _linear((*ours, "mlp", "wi"), hf + "ffn", e, f)
            + _linear((*ours, "mlp", "wo"), hf + "ffn_output", f, e)
            + _norm((*ours, "mlp_norm"), hf + "full_layer_layer_norm", e)
        )
    s = hf + "attention.self."
    return (
        _attention(att, s + "query", s + "key", s + "value", hf + "attention.output.dense", e, hd)
        + _norm((*ours, "attention_norm"), hf + "attention.output.LayerNorm", e)
        + _linear((*ours, "mlp", "wi"), hf + "intermediate.dense", e, f)
        + _linear((*ours, "mlp", "wo"), hf + "output.dense", f, e)
        + _norm((*ours, "mlp_norm"), hf + "output.LayerNorm", e)
    )


def _table(cfg: ModelConfig) -> list[Entry]:
    """Every parameter of ``cfg``'s encoder with its HF name, layout and HF shape."""
    p = _PREFIX[cfg.arch]
    e, em, v = cfg.d_model, cfg.embedding_dim, cfg.vocab_size
    emb = p + "embeddings."
    t: list[Entry] = [
        (("word_embeddings", "embedding"), emb + "word_embeddings.weight", "copy", (v, em)),
        (
            ("position_embeddings", "embedding"),
            emb + "position_embeddings.weight",
            "copy",
            (cfg.max_seq_len + cfg.position_offset, em),
        ),
    ]
    if cfg.type_vocab_size:
        t.append(
            (
                ("token_type_embeddings", "embedding"),
                emb + "token_type_embeddings.weight",
                "copy",
                (cfg.type_vocab_size, em),
            )
        )
    t += _norm(("embed_norm",), emb + "LayerNorm", em)
    if cfg.arch == "albert":
        enc = p + "encoder."
        t += _linear(("embed_proj",), enc + "embedding_hidden_mapping_in", em, e)
        if cfg.share_layers:
            t += _layer(cfg, ("layer",), enc + "albert_layer_groups.0.albert_layers.0.")
        else:
            for i in range(cfg.num_layers):
                t += _layer(
                    cfg, (f"layers_{i}",), enc + f"albert_layer_groups.{i}.albert_layers.0."
                )
    else:
        for i in range(cfg.num_layers):
            t += _layer(cfg, (f"layers_{i}",), f"{p}encoder.layer.{i}.")
    if cfg.task_head != "none":  # a fine-tuning head replaces the MLM head
        return t + heads.entries(cfg)
    head = _HEAD[cfg.arch]
    dense = head + ("transform.dense" if cfg.arch == "bert" else "dense")
    norm = (
        head
        + {"bert": "transform.LayerNorm", "roberta": "layer_norm", "albert": "LayerNorm"}[cfg.arch]
    )
    t += _linear(("mlm_dense",), dense, e, em)
    t += _norm(("mlm_norm",), norm, em)
    t.append((("mlm_bias",), head + "bias", "copy", (v,)))
    if cfg.sentence_head:
        pooler = p + ("pooler" if cfg.arch == "albert" else "pooler.dense")
        cls = "sop_classifier.classifier" if cfg.arch == "albert" else "cls.seq_relationship"
        t += _linear(("pooler",), pooler, e, e)
        t += _linear(("sentence_classifier",), cls, e, 2)
    return t


def _aliases(name: str) -> Iterator[str]:
    """HF names a tensor may be stored under (tied decoder bias; TF-era gamma/beta)."""
    yield name
    for head in ("cls.predictions.bias", "lm_head.bias", "predictions.bias"):
        if name == head:
            yield head[: -len("bias")] + "decoder.bias"
    if "LayerNorm." in name or "layer_norm." in name:
        if name.endswith(".weight"):
            yield name[: -len("weight")] + "gamma"
        elif name.endswith(".bias"):
            yield name[: -len("bias")] + "beta"


# --------------------------------------------------------------------------- layouts


def _to_ours(x: np.ndarray, layout: str, cfg: ModelConfig) -> np.ndarray:
    h, d = cfg.num_heads, cfg.head_size
    if layout == "dense":
        return x.T
    if layout == "qkv":  # [H*D, E] -> [E, H, D]
        return x.T.reshape(x.shape[1], h, d)
    if layout == "qkv_bias":  # [H*D] -> [H, D]
        return x.reshape(h, d)
    if layout == "out":  # [E, H*D] -> [H, D, E]
        return x.T.reshape(h, d, x.shape[0])
    return x


def _to_hf(x: np.ndarray, layout: str) -> np.ndarray:
    if layout == "dense":
        return x.T
    if layout == "qkv":  # [E, H, D] -> [H*D, E]
        return x.reshape(x.shape[0], -1).T
    if layout == "qkv_bias":
        return x.reshape(-1)
    if layout == "out":  # [H, D, E] -> [E, H*D]
        return x.reshape(-1, x.shape[-1]).T
    return x


# --------------------------------------------------------------------------- import


def _field(hf: Mapping[str, Any], name: str, source: str, default: Any = None) -> Any:
    if name not in hf and default is None:
        raise ConfigError(f"{os.path.join(source, 'config.json')}: missing field {name!r}")
    return hf.get(name, default)


def _config_from_hf(hf: Mapping[str, Any], tensors: Mapping[str, Any], source: str) -> ModelConfig:
    where = os.path.join(source, "config.json")
    arch = hf.get("model_type")
    if arch not in MODEL_TYPES:
        raise ConfigError(f"{where}: model_type={arch!r} is not one of {MODEL_TYPES}")

    def unsupported(name: str, value: Any, why: str) -> ConfigError:
        return ConfigError(f"{where}: {name}={value!r} is not supported ({why})")

    pet = hf.get("position_embedding_type", "absolute")
    if pet != "absolute":
        raise unsupported("position_embedding_type", pet, "only 'absolute'")
    for name in ("is_decoder", "add_cross_attention"):
        if hf.get(name, False):
            raise unsupported(name, hf[name], "encoder-only models")
    if not hf.get("tie_word_embeddings", True):
        raise unsupported("tie_word_embeddings", False, "the MLM decoder is tied")
    act = _field(hf, "hidden_act", source, "gelu")
    if act not in _ACT_FROM_HF:
        raise unsupported("hidden_act", act, f"one of {sorted(_ACT_FROM_HF)}")
    layers_ = int(_field(hf, "num_hidden_layers", source))
    embed_dim = None
    share = False
    if arch == "albert":
        groups = int(hf.get("num_hidden_groups", 1))
        if groups not in (1, layers_):
            raise unsupported("num_hidden_groups", groups, f"1 or num_hidden_layers={layers_}")
        if int(hf.get("inner_group_num", 1)) != 1:
            raise unsupported("inner_group_num", hf["inner_group_num"], "only 1")
        share = groups == 1
        embed_dim = int(hf.get("embedding_size", 128))
    pad = int(
        hf.get("pad_token_id")
        if hf.get("pad_token_id") is not None
        else (1 if arch == "roberta" else 0)
    )
    offset = pad + 1 if arch == "roberta" else 0
    max_pos = int(_field(hf, "max_position_embeddings", source))
    if max_pos <= offset:
        raise unsupported("max_position_embeddings", max_pos, f"must exceed {offset}")
    # The NSP/SOP head is read for a ...ForPreTraining class, or whenever its classifier
    # is in the file (bert-base-uncased says BertForMaskedLM but ships the NSP head).
    sentence = any(a.endswith("ForPreTraining") for a in hf.get("architectures") or []) or any(
        k in tensors for k in ("cls.seq_relationship.weight", "sop_classifier.classifier.weight")
    )
    cfg = ModelConfig(
        family="encoder",
        arch=arch,
        vocab_size=int(_field(hf, "vocab_size", source)),
        d_model=int(_field(hf, "hidden_size", source)),
        num_heads=int(_field(hf, "num_attention_heads", source)),
        num_layers=layers_,
        d_ff=int(_field(hf, "intermediate_size", source)),
        max_seq_len=max_pos - offset,
        embed_dim=embed_dim,
        share_layers=share,
        type_vocab_size=int(hf.get("type_vocab_size", 2)),
        position_offset=offset,
        pad_token_id=pad,
        norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
        activation=_ACT_FROM_HF[act],
        sentence_head=sentence and arch != "roberta",
        dropout_rate=float(hf.get("hidden_dropout_prob", 0.0)),
        initializer_range=float(hf.get("initializer_range", 0.02)),
    )
    return cfg.validate()


def from_hf(
    hf_config: Mapping[str, Any], tensors: Mapping[str, Any], source: str
) -> tuple[ModelConfig, dict[str, Any]]:
    """``(ModelConfig, params)`` (numpy float32 tree) from an HF config dict + tensors.

    E.g. a ``BertForPreTraining`` directory with hidden 32, 4 heads, 1 layer gives
    ``cfg.arch == "bert"``, ``cfg.sentence_head`` and
    ``params["layers_0"]["attention"]["query"]["kernel"].shape == (32, 4, 8)``.
    """
    cfg = _config_from_hf(hf_config, tensors, source)
    params: dict[str, Any] = {}
    expected: set[str] = set()
    for ours, name, layout, shape in _table(cfg):
        found = next((a for a in _aliases(name) if a in tensors), name)
        x = common.take(tensors, found, shape, source)
        expected.add(found)
        node = params
        for key in ours[:-1]:
            node = node.setdefault(key, {})
        node[ours[-1]] = np.ascontiguousarray(_to_ours(x, layout, cfg))
    tolerated = _tolerated(cfg, tensors, params, source)
    what = f"{_NAME[cfg.arch]} with {cfg.num_layers} layers" + (
        "" if cfg.sentence_head else " and no sentence head"
    )
    common.check_no_unexpected(tensors, expected, source, what, tolerated.__contains__)
    return cfg, common.pad_vocab(cfg, params)


def _tolerated(
    cfg: ModelConfig, tensors: Mapping[str, Any], params: Mapping[str, Any], source: str
) -> set[str]:
    """Names real HF checkpoints carry that ``cfg``'s encoder legitimately does not read.

    The allow-list (``P`` = ``bert.`` / ``roberta.`` / ``albert.``, ``H`` = the MLM
    head, ``cls.predictions.`` / ``lm_head.`` / ``predictions.``):

    * ``P embeddings.position_ids``, ``P embeddings.token_type_ids``: index buffers
      that transformers < 4.31 saved (bert-base-uncased, roberta-base, albert-base-v2);
    * ``H decoder.weight`` [V, E_emb]: the tied MLM decoder, saved by older
      transformers; it must equal the word embeddings, else the file is untied (a
      one-line ConfigError: we cannot represent it);
    * ``H decoder.bias`` [V]: a copy of ``H bias``; must equal it (when ``H bias``
      is absent the decoder bias is what :func:`from_hf` reads, see :func:`_aliases`);
    * the pooler (``P pooler.dense.*``, ALBERT ``P pooler.*``) when the model has no
      sentence head: only the NSP/SOP classifier uses it, and roberta-base's
      ``RobertaForMaskedLM`` file ships one.

    E.g. an old ``bert-base-cased`` BertForMaskedLM file gives
    ``{"bert.embeddings.position_ids", "cls.predictions.decoder.weight", ...}``.
    transformers 5 saves none of these (checked for every class read here).
    """
    p, head = _PREFIX[cfg.arch], _HEAD[cfg.arch]
    ok = {p + "embeddings.position_ids", p + "embeddings.token_type_ids"}
    if not cfg.sentence_head:
        pooler = p + ("pooler." if cfg.arch == "albert" else "pooler.dense.")
        ok |= {pooler + "weight", pooler + "bias"}
    copies = {
        head + "decoder.weight": (
            p + "embeddings.word_embeddings.weight",
            params["word_embeddings"]["embedding"],
        ),
        head + "decoder.bias": (head + "bias", params["mlm_bias"]),
    }
    for name, (of, value) in copies.items():
        if name in tensors and of in tensors:
            copy = common.take(tensors, name, value.shape, source)
            if not np.array_equal(copy, value):
                raise ConfigError(
                    f"{source}: tensor {name!r} differs from {of!r}; only a tied MLM "
                    "decoder (an exact copy) is supported"
                )
            ok.add(name)
    return ok


# --------------------------------------------------------------------------- export


def _hf_class(cfg: ModelConfig) -> str:
    if cfg.task_head != "none":
        return heads.hf_class(cfg)
    base = {"bert": "Bert", "roberta": "Roberta", "albert": "Albert"}[cfg.arch]
    return base + ("ForPreTraining" if cfg.sentence_head else "ForMaskedLM")


def _check_exportable(cfg: ModelConfig) -> None:
    def bad(name: str, why: str) -> ConfigError:
        return ConfigError(
            f"model.{name}={getattr(cfg, name)!r} cannot be written as an HF "
            f"{cfg.arch} checkpoint ({why})"
        )

    if cfg.head_size * cfg.num_heads != cfg.d_model:
        raise bad("head_dim", "HF uses d_model // num_heads")
    expected = cfg.pad_token_id + 1 if cfg.arch == "roberta" else 0
    if cfg.position_offset != expected:
        raise bad("position_offset", f"HF {cfg.arch} needs {expected}")
    if cfg.arch == "roberta" and cfg.sentence_head:
        raise bad("sentence_head", "transformers has no RoBERTa class with an NSP head")


def to_hf(cfg: ModelConfig, params: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(config.json dict, {HF name: array})`` that ``transformers`` loads.

    A model without segment embeddings (``type_vocab_size=0``) is written with a
    one-row zero table (HF's ``type_vocab_size=1``), which adds nothing.
    """
    params = common.real_vocab(cfg, params)  # the padded rows stay behind
    cfg.validate()
    _check_exportable(cfg)
    tensors: dict[str, np.ndarray] = {}
    used: set[tuple[str, ...]] = set()
    for ours, name, layout, shape in _table(cfg):
        node = params
        for key in ours:
            if not isinstance(node, Mapping) or key not in node:
                raise ConfigError(f"params: missing {'/'.join(ours)} for {cfg.arch} export")
            node = node[key]
        x = _to_hf(np.asarray(node, dtype=np.float32), layout)
        if x.shape != shape:
            raise ConfigError(f"params: {'/'.join(ours)} has HF shape {x.shape}, expected {shape}")
        tensors[name] = x
        used.add(ours)
    extra = sorted("/".join(p) for p in _leaf_paths(params) if p not in used)
    if extra:
        raise ConfigError(f"params: {extra[0]} has no place in an HF {cfg.arch} checkpoint")
    if not cfg.type_vocab_size:
        emb = _PREFIX[cfg.arch] + "embeddings.token_type_embeddings.weight"
        tensors[emb] = np.zeros((1, cfg.embedding_dim), np.float32)
    return hf_config_of(cfg), tensors


def hf_config_of(cfg: ModelConfig) -> dict[str, Any]:
    """The ``config.json`` dict of ``cfg``'s HF class (e.g. ``BertForPreTraining``)."""
    hf: dict[str, Any] = {
        "architectures": [_hf_class(cfg)],
        "model_type": cfg.arch,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "intermediate_size": cfg.d_ff,
        "hidden_act": cfg.activation,
        "hidden_dropout_prob": cfg.dropout_rate,
        "attention_probs_dropout_prob": cfg.dropout_rate,
        "max_position_embeddings": cfg.max_seq_len + cfg.position_offset,
        "type_vocab_size": max(cfg.type_vocab_size, 1),
        "initializer_range": cfg.initializer_range,
        "layer_norm_eps": cfg.norm_eps,
        "pad_token_id": cfg.pad_token_id,
        "tie_word_embeddings": True,
    }
    if cfg.task_head != "none":
        hf.update(heads.config_fields(cfg))
    if cfg.arch == "albert":
        hf["embedding_size"] = cfg.embedding_dim
        hf["num_hidden_groups"] = 1 if cfg.share_layers else cfg.num_layers
        hf["inner_group_num"] = 1
    else:
        hf["position_embedding_type"] = "absolute"
    return hf


def _leaf_paths(tree: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            yield from _leaf_paths(v, (*prefix, str(k)))
    else:
        yield prefix
