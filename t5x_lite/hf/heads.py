"""Fine-tuning heads (:mod:`t5x_lite.models.heads`) <-> Hugging Face task classes.

A fine-tuned model (``model.task_head`` set) has no LM / MLM head; it is written as
the HF class that holds its head, the backbone named as in the pretraining class:

========  ============  ===============================  =====================================
arch      task_head     HF class                         our head -> HF tensors
========  ============  ===============================  =====================================
bert      sequence      BertForSequenceClassification    pooler -> bert.pooler.dense,
                                                         classifier -> classifier
roberta   sequence      RobertaForSequenceClassification pooler -> classifier.dense,
                                                         classifier -> classifier.out_proj
albert    sequence      AlbertForSequenceClassification  pooler -> albert.pooler,
                                                         classifier -> classifier
encoders  token / span  ...ForTokenClassification /      classifier -> classifier /
                        ...ForQuestionAnswering          qa_outputs -> qa_outputs
gpt2      sequence      GPT2ForSequenceClassification    score -> score (no bias)
gpt2      token / span  GPT2ForTokenClassification /     classifier -> classifier /
                        GPT2ForQuestionAnswering         qa_outputs -> qa_outputs
llama,    sequence      LlamaForSequenceClassification   score -> score (no bias)
mistral,  token         ...ForTokenClassification        classifier -> score (with bias)
qwen2     span          ...ForQuestionAnswering          qa_outputs -> qa_outputs; the
                                                         backbone is ``transformer.*``
                                                         (Mistral's: ``model.*``)
========  ============  ===============================  =====================================

RoBERTa's ``RobertaClassificationHead`` is ``out_proj(tanh(dense(x[:, 0])))`` at
inference, which is our pooled ``[CLS]`` + ``classifier``. Kernels ``[E, C]`` are
written as torch ``Linear`` weights ``[C, E]``. T5 classifies by label words and keeps
``T5ForConditionalGeneration``. A head without an HF class is a one-line ConfigError
naming the head and the architecture. Everything here is numpy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from t5x_lite.config import ConfigError, ModelConfig

_STEM = {
    "bert": "Bert",
    "roberta": "Roberta",
    "albert": "Albert",
    "gpt2": "GPT2",
    "llama": "Llama",
    "mistral": "Mistral",
    "qwen2": "Qwen2",
}
_SUFFIX = {
    "sequence": "ForSequenceClassification",
    "token": "ForTokenClassification",
    "span": "ForQuestionAnswering",
}
_LLAMA_LIKE = ("llama", "mistral", "qwen2")
_QA_TRANSFORMER = ("llama", "qwen2")  # their ...ForQuestionAnswering name it "transformer"
# Entry: (our path, HF name, layout, HF shape); layouts "dense" (kernel [in, out] <->
# weight [out, in]) and "copy" (biases).
Entry = tuple[tuple[str, ...], str, str, tuple[int, ...]]


def hf_class(cfg: ModelConfig) -> str:
    """The HF class of ``cfg``'s task head, e.g. ``"GPT2ForSequenceClassification"``."""
    if cfg.arch not in _STEM or cfg.task_head not in _SUFFIX:
        raise ConfigError(
            f"model.task_head={cfg.task_head!r} on model.arch={cfg.arch!r} has no Hugging Face "
            "class to export to; use --format=stablehlo"
        )
    return _STEM[cfg.arch] + _SUFFIX[cfg.task_head]


def _linear(ours: str, hf: str, n_in: int, n_out: int, bias: bool = True) -> list[Entry]:
    out: list[Entry] = [((ours, "kernel"), f"{hf}.weight", "dense", (n_out, n_in))]
    if bias:
        out.append(((ours, "bias"), f"{hf}.bias", "copy", (n_out,)))
    return out


def entries(cfg: ModelConfig) -> list[Entry]:
    """The head's parameters with their HF names (see the module table)."""
    hf_class(cfg)
    e, c, head, arch = cfg.d_model, cfg.num_labels, cfg.task_head, cfg.arch
    if head == "span":
        return _linear("qa_outputs", "qa_outputs", e, 2)
    if head == "token":
        return _linear("classifier", "score" if arch in _LLAMA_LIKE else "classifier", e, c)
    if cfg.family == "decoder":
        return _linear("score", "score", e, c, bias=False)
    pooler, classifier = {
        "bert": ("bert.pooler.dense", "classifier"),
        "roberta": ("classifier.dense", "classifier.out_proj"),
        "albert": ("albert.pooler", "classifier"),
    }[arch]
    return _linear("pooler", pooler, e, e) + _linear("classifier", classifier, e, c)


def backbone_name(cfg: ModelConfig, name: str) -> str:
    """``name`` of a pretraining-class tensor as the head class stores it (Llama's and
    Qwen2's question-answering classes keep their backbone under ``transformer.``,
    Mistral's under ``model.``)."""
    if cfg.task_head == "span" and cfg.arch in _QA_TRANSFORMER and name.startswith("model."):
        return "transformer." + name[len("model.") :]
    return name


def tensors(cfg: ModelConfig, params: dict[str, Any]) -> dict[str, np.ndarray]:
    """``{HF name: array}`` of the head's parameters in ``params`` (decoders' maps)."""
    out = {}
    for path, name, layout, shape in entries(cfg):
        node: Any = params
        for key in path:
            if not isinstance(node, dict) or key not in node:
                raise ConfigError(
                    f"params: missing {'/'.join(path)} for the {hf_class(cfg)} export"
                )
            node = node[key]
        x = np.asarray(node, np.float32)
        x = x.T if layout == "dense" else x
        if x.shape != shape:
            raise ConfigError(f"params: {'/'.join(path)} has HF shape {x.shape}, expected {shape}")
        out[name] = np.ascontiguousarray(x)
    return out


def config_fields(cfg: ModelConfig, labels: tuple[str, ...] = ()) -> dict[str, Any]:
    """``config.json`` fields of the head class: ``architectures`` and, for the
    classifying heads, ``id2label`` / ``label2id`` (``labels`` in id order; HF's
    ``LABEL_i`` names when empty). E.g. labels ``("old", "new")``: ``id2label
    {"0": "old", "1": "new"}``, ``label2id {"old": 0, "new": 1}``."""
    fields: dict[str, Any] = {"architectures": [hf_class(cfg)]}
    if cfg.task_head != "span":
        names = list(labels) or [f"LABEL_{i}" for i in range(cfg.num_labels)]
        if len(names) != cfg.num_labels:
            raise ConfigError(
                f"task.labels has {len(names)} names, model.num_labels={cfg.num_labels}"
            )
        fields["id2label"] = {str(i): n for i, n in enumerate(names)}
        fields["label2id"] = {n: i for i, n in enumerate(names)}
    return fields
