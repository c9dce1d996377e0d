"""Pipelines in the spirit of Hugging Face's: ``t5x_lite.pipeline(task, path)``.

``path`` is a workdir or an HF directory (:func:`t5x_lite.load`, latest checkpoint or
``step=N``), or an already loaded run. The pipeline is a callable taking one text or a
list of texts (a list gives a list of results) and returns HF's output shapes::

    >>> gen = t5x_lite.pipeline("text-generation", "runs/default")   # doctest: +SKIP
    >>> gen("In the beginning", max_new_tokens=8)                      # doctest: +SKIP
    [{'generated_text': 'In the beginning God created the heaven and the earth'}]

=====================  ==========  ======================================================
task                   models      output per text
=====================  ==========  ======================================================
text-generation        decoders    ``[{"generated_text"}]``: the prompt and its continuation
                                   (``return_full_text=False``: the continuation only)
text2text-generation   T5          ``[{"generated_text"}]``: the decoder's output
fill-mask              encoders    per ``[MASK]``: top-k ``{"score", "token", "token_str",
                                   "sequence"}`` (a list of such lists for several masks)
text-classification    fine-tuned  ``[{"label", "score"}]`` (:mod:`t5x_lite.task_pipelines`)
token-classification   fine-tuned  ``[{"entity", "score", "index", "word", "start", "end"}]``
question-answering     fine-tuned  ``{"answer", "score", "start", "end"}``
=====================  ==========  ======================================================

Generation keyword arguments are :func:`t5x_lite.decoding.generate`'s: ``max_new_tokens``
(32), ``temperature`` (0: greedy; HF's ``do_sample=True`` needs a temperature > 0),
``top_k``, ``top_p``, ``num_beams``, ``alpha``, ``seed``; given to :func:`pipeline` they
become defaults, given to the call they apply to it. Decoders decode with the key/value
cache from a left-padded batch of prompts. ``generated_text`` is the prompt plus what
decoding ``prompt + new ids`` adds to decoding the prompt (transformers 5 decodes the
new ids alone, which drops the word-start space of the first new SentencePiece piece:
``"... and" + "woman"`` where we give ``"... and woman"``). As HF's, every id the
tokenizer can decode may be chosen (EOS ends a row). T5's input ends with EOS, as its
pretraining rows do; an encoder's row is ``[CLS] text [SEP]`` (``add_special_tokens=False``:
the text alone).

An unknown task, a model of the wrong kind, an unknown keyword, or a prompt longer than
the model's context is a one-line :class:`~t5x_lite.config.ConfigError`.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from t5x_lite import decoding
from t5x_lite.config import ConfigError

GENERATION_DEFAULTS = {
    "max_new_tokens": 32,
    "temperature": 0.0,
    "top_k": 0,
    "top_p": 1.0,
    "num_beams": 1,
    "alpha": 0.6,
    "seed": 0,
}


class Pipeline(abc.ABC):
    """A loaded run and the defaults of one task; subclasses implement :meth:`batch`.

    ``families``: the model families the task accepts; ``head``: the
    ``model.task_head`` it needs (``"none"``: a pretrained LM head); ``options``: the
    keyword arguments it takes, with their defaults.
    """

    task: ClassVar[str] = ""
    families: ClassVar[tuple[str, ...]] = ()
    head: ClassVar[str] = "none"
    options: ClassVar[dict[str, Any]] = {}

    def __init__(self, run: Any, **defaults: Any) -> None:
        cfg = run.config.model
        if cfg.family not in self.families:
            raise ConfigError(
                f"{self.task} needs a {' or '.join(self.families)} model; {run.path} is a "
                f"{cfg.family} ({cfg.arch})"
            )
        head = getattr(cfg, "task_head", "none")
        if head != self.head:
            need = (
                "a pretrained LM head" if self.head == "none" else f"model.task_head={self.head!r}"
            )
            raise ConfigError(f"{self.task} needs {need}; {run.path} has model.task_head={head!r}")
        if run.tokenizer is None:
            raise ConfigError(f"{run.path}: {run.note}")
        self.run = run
        self.tokenizer = run.tokenizer
        self.model_config = cfg
        self.defaults = self._options(defaults)

    def _options(self, kwargs: dict[str, Any], base: dict[str, Any] | None = None) -> dict:
        unknown = sorted(set(kwargs) - set(self.options))
        if unknown:
            raise ConfigError(
                f"{self.task} got unknown argument {unknown[0]!r} (it takes "
                f"{', '.join(sorted(self.options))})"
            )
        return {**(base if base is not None else self.options), **kwargs}

    def __call__(self, inputs: str | Sequence[str], **kwargs: Any) -> Any:
        opts = self._options(kwargs, self.defaults)
        if isinstance(inputs, str):
            return self.batch([inputs], opts)[0]
        if not all(isinstance(x, str) for x in inputs):
            raise ConfigError(f"{self.task} takes a text or a list of texts")
        return self.batch(list(inputs), opts)

    @abc.abstractmethod
    def batch(self, texts: list[str], opts: dict[str, Any]) -> list[Any]:
        """One result per text."""

    @property
    def context(self) -> int:
        return int(self.model_config.max_seq_len)

    def _decodable(self) -> np.ndarray:
        """``[V]`` bool: the ids the tokenizer can decode (the model's table may be
        larger than the tokenizer's)."""
        allowed = np.zeros(self.model_config.vocab_size, bool)
        allowed[: min(int(self.tokenizer.vocab_size), len(allowed))] = True
        return allowed


# --------------------------------------------------------------------------- generation


def _generation_options(opts: dict[str, Any], eos_id: int) -> decoding.Options:
    if int(opts["max_new_tokens"]) < 1:
        raise ConfigError(f"max_new_tokens={opts['max_new_tokens']} must be positive")
    if opts.get("do_sample") and float(opts["temperature"]) <= 0:
        raise ConfigError("do_sample=True needs a temperature > 0")
    temperature = float(opts["temperature"]) if opts.get("do_sample", True) else 0.0
    return decoding.Options(
        max_new_tokens=int(opts["max_new_tokens"]),
        eos_id=eos_id,
        pad_id=0,
        temperature=temperature,
        top_k=int(opts["top_k"]),
        top_p=float(opts["top_p"]),
        num_beams=int(opts["num_beams"]),
        alpha=float(opts["alpha"]),
    )


class _Generation(Pipeline):
    options: ClassVar[dict[str, Any]] = {**GENERATION_DEFAULTS, "do_sample": None}

    @abc.abstractmethod
    def prompt_ids(self, text: str, max_new: int) -> list[int]:
        """The ids generation starts from: text-generation continues the prompt within
        the context, text2text-generation encodes it for the encoder."""

    def texts(self, texts: list[str], opts: dict[str, Any]) -> list[tuple[list[int], list[int]]]:
        """``(prompt_ids, new_ids)`` per text (EOS and what follows dropped)."""
        o = _generation_options(opts, int(self.tokenizer.eos_id))
        prompts = [self.prompt_ids(t, o.max_new_tokens) for t in texts]
        out = decoding.generate(
            self.model_config, self.run.params, prompts, o, int(opts["seed"]), self._decodable()
        )
        pairs = []
        for p, row, n in zip(prompts, out["tokens"], out["lengths"], strict=True):
            new = [int(t) for t in row[: int(n)]]
            if new and new[-1] == o.eos_id:
                new = new[:-1]
            pairs.append((p, new))
        return pairs


class TextGeneration(_Generation):
    """Decoders: ``[{"generated_text": prompt + continuation}]`` per text."""

    task = "text-generation"
    families = ("decoder",)
    options: ClassVar[dict[str, Any]] = {**_Generation.options, "return_full_text": True}

    def prompt_ids(self, text: str, max_new: int) -> list[int]:
        ids = list(self.tokenizer.encode(text))
        if not ids:
            raise ConfigError("text-generation needs a prompt of at least one token")
        if len(ids) + max_new > self.context:
            raise ConfigError(
                f"prompt has {len(ids)} tokens; with max_new_tokens={max_new} it exceeds the "
                f"model's context of {self.context} tokens"
            )
        return ids

    def batch(self, texts: list[str], opts: dict[str, Any]) -> list[Any]:
        out = []
        for text, (prompt, new) in zip(texts, self.texts(texts, opts), strict=True):
            # HF's rule: the new text is what decoding prompt + new adds to the prompt's.
            head = self.tokenizer.decode(prompt)
            added = self.tokenizer.decode(prompt + new)[len(head) :]
            out.append([{"generated_text": (text + added) if opts["return_full_text"] else added}])
        return out


class Text2TextGeneration(_Generation):
    """T5: ``[{"generated_text": the decoder's output}]`` per text."""

    task = "text2text-generation"
    families = ("encoder_decoder",)

    def prompt_ids(self, text: str, max_new: int) -> list[int]:
        ids = [*self.tokenizer.encode(text), int(self.tokenizer.eos_id)]
        if len(ids) > self.context:
            raise ConfigError(
                f"input has {len(ids)} tokens (with EOS); the model's context is {self.context}"
            )
        return ids

    def batch(self, texts: list[str], opts: dict[str, Any]) -> list[Any]:
        return [
            [{"generated_text": self.tokenizer.decode(new)}] for _, new in self.texts(texts, opts)
        ]


# --------------------------------------------------------------------------- fill-mask


class FillMask(Pipeline):
    """Encoders: the ``top_k`` most likely tokens at each ``[MASK]`` of a text, with
    probabilities over the whole vocabulary (HF's ``fill-mask`` pipeline)."""

    task = "fill-mask"
    families = ("encoder",)
    options: ClassVar[dict[str, Any]] = {"top_k": 5, "add_special_tokens": True}

    def batch(self, texts: list[str], opts: dict[str, Any]) -> list[Any]:
        tok, k = self.tokenizer, int(opts["top_k"])
        if k < 1:
            raise ConfigError(f"top_k={k} must be positive")
        rows = []
        for text in texts:
            ids = list(tok.encode(text))
            if tok.mask_id not in ids:
                raise ConfigError(f"fill-mask needs a [MASK] in the text: {text[:60]!r}")
            if opts["add_special_tokens"]:
                ids = [int(tok.cls_id), *ids, int(tok.sep_id)]
            if len(ids) > self.context:
                raise ConfigError(
                    f"text has {len(ids)} tokens; the model's context is {self.context}"
                )
            rows.append(ids)
        width = max(len(r) for r in rows)
        ids = np.zeros((len(rows), width), np.int32)
        mask = np.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, : len(r)], mask[i, : len(r)] = r, 1
        filled = decoding.fill_mask(
            self.model_config, self.run.params, ids, tok.mask_id, k, attention_mask=mask
        )
        out = []
        for r, masks in zip(rows, filled, strict=True):
            per_mask = [
                [self._candidate(r, pos, t, p) for t, p in zip(top, probs, strict=True)]
                for pos, top, probs in masks
            ]
            out.append(per_mask[0] if len(per_mask) == 1 else per_mask)
        return out

    def _candidate(self, ids: list[int], pos: int, token: int, score: float) -> dict[str, Any]:
        tok = self.tokenizer
        filled = [token if i == pos else t for i, t in enumerate(ids)]
        text = [t for i, t in enumerate(filled) if i == pos or t not in (tok.cls_id, tok.sep_id)]
        return {
            "score": float(score),
            "token": int(token),
            "token_str": tok.decode([token]),
            "sequence": tok.decode(text),
        }


# --------------------------------------------------------------------------- the registry

# The head tasks (text-classification, token-classification, question-answering) are
# added by t5x_lite.task_pipelines, imported by pipeline().
TASKS: dict[str, type[Pipeline]] = {
    p.task: p for p in (TextGeneration, Text2TextGeneration, FillMask)
}


def register(cls: type[Pipeline]) -> type[Pipeline]:
    """Add a pipeline class to :data:`TASKS` under ``cls.task`` (a decorator)."""
    TASKS[cls.task] = cls
    return cls


def pipeline(task: str, path: Any, step: int | None = None, **kwargs: Any) -> Pipeline:
    """The pipeline of ``task`` over ``path`` (a workdir, an HF directory or a loaded
    run); ``kwargs`` are the task's defaults (see the module docstring)."""
    from t5x_lite import task_pipelines  # noqa: F401  (registers the fine-tuned heads' tasks)

    if task not in TASKS:
        raise ConfigError(f"unknown pipeline task {task!r}; tasks: {', '.join(sorted(TASKS))}")
    cls = TASKS[task]
    if isinstance(path, str | os.PathLike):
        from t5x_lite.loading import load

        run = load(path, step)
    else:
        run = path
    return cls(run, **kwargs)


__all__ = ["TASKS", "FillMask", "Pipeline", "Text2TextGeneration", "TextGeneration",
           "pipeline", "register"]  # fmt: skip
