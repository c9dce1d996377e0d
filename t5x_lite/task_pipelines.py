"""The pipelines of fine-tuned heads: text-classification, token-classification and
question-answering (registered in :data:`t5x_lite.pipelines.TASKS`).

They need a run fine-tuned with a task (``model.task_head``, ``task.labels``; see
:mod:`t5x_lite.models.heads` and :mod:`t5x_lite.data.task_rows`), and frame their inputs
with the same :func:`t5x_lite.data.task_rows.encode_split` the fine-tuning rows came
from, so inference sees what training saw (an encoder's ``[CLS] a [SEP] (b [SEP])``, a
decoder's ``a ([SEP] b) [EOS]``, ...). Rows are padded to the model's context
(``model.max_seq_len``) and batches to a power of two, so the jitted forward compiles
once per batch size; an input longer than the context is a one-line error.

* ``text-classification`` (``task_head="sequence"``; T5: label words): per text a list of
  the ``top_k`` (1) most likely ``{"label", "score"}`` (softmax over the classes; a T5
  scores each label word + EOS as its target, :class:`t5x_lite.scoring.Scorer`, and
  normalises over the labels). A ``(text, text_pair)`` tuple is a pair.
* ``token-classification`` (``"token"``): the text is split into words at whitespace and
  each word takes its first piece's tag (as in training): ``[{"entity", "score",
  "index", "word", "start", "end"}]`` (word index, character offsets), words tagged with
  one of ``ignore_labels`` (``("O",)``, HF's default) left out.
* ``question-answering`` (``"span"``): ``qa(question=..., context=...)`` or
  ``qa({"question", "context"})``: ``{"answer", "score", "start", "end"}``, the span of
  context words maximising ``start + end`` logits with at most ``task.max_answer_len``
  tokens (:func:`t5x_lite.task_metrics.best_span`); ``score`` is
  ``p_start(s) * p_end(e)`` with softmaxes over the context's tokens.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any, ClassVar

import jax
import numpy as np

from t5x_lite import task_metrics
from t5x_lite.config import ConfigError
from t5x_lite.data import task_rows
from t5x_lite.pipelines import Pipeline, register
from t5x_lite.scoring import Scorer

_WORD = re.compile(r"\S+")


@functools.lru_cache(maxsize=8)
def _forward(model: Any) -> Any:
    return jax.jit(lambda params, batch: model.apply(params, batch))


def _softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    z = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return z / np.sum(z, axis=axis, keepdims=True)


class _Head(Pipeline):
    """A fine-tuned head: ``kind`` of ``task.kind``, rows by ``task_rows``."""

    kind: ClassVar[str] = ""

    def __init__(self, run: Any, **defaults: Any) -> None:
        super().__init__(run, **defaults)
        task = getattr(run.config, "task", None)
        if task is None or task.kind != self.kind:
            got = getattr(task, "kind", "none")
            raise ConfigError(f"{self.task} needs a run fine-tuned with task.kind={self.kind!r}; "
                              f"{run.path} has task.kind={got!r}")  # fmt: skip
        self.task_config = task
        self.labels = tuple(task.labels)

    def rows(self, records: list[dict[str, Any]]) -> task_rows.TaskSplit:
        """``task_rows.encode_split`` of ``records`` at the model's context; an input that
        the rows would truncate is a ConfigError."""
        family, tok, n = self.model_config.family, self.tokenizer, self.context
        wide = task_rows.encode_split(records, self.kind, family, tok, 4 * n, self.labels)
        lengths = wide.arrays["attention_mask"].sum(-1)
        if int(lengths.max()) > n:
            raise ConfigError(
                f"{self.task}: an input has {int(lengths.max())} tokens; the model's context is {n}"
            )
        return task_rows.encode_split(records, self.kind, family, tok, n, self.labels)

    def outputs(self, split: task_rows.TaskSplit) -> dict[str, np.ndarray]:
        """The head's outputs on ``split``'s rows, the batch padded to a power of two."""
        arrays = {k: v for k, v in split.arrays.items() if k in _INPUT_KEYS}
        n = len(split)
        rows = 1 << max(n - 1, 0).bit_length()
        batch = {k: np.concatenate([v, np.zeros((rows - n, *v.shape[1:]), v.dtype)])
                 for k, v in arrays.items()}  # fmt: skip
        out = _forward(self.run.model)(self.run.params, batch)
        return {k: np.asarray(v)[:n] for k, v in out.items()}


_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


@register
class TextClassification(_Head):
    task = "text-classification"
    families = ("encoder", "decoder", "encoder_decoder")
    kind = "classification"
    options: ClassVar[dict[str, Any]] = {"top_k": 1}

    def __init__(self, run: Any, **defaults: Any) -> None:
        # T5 classifies with label words through its LM head (task_head "none").
        self.head = "none" if run.config.model.family == "encoder_decoder" else "sequence"
        super().__init__(run, **defaults)

    def _records(self, texts: Sequence[Any]) -> list[dict[str, Any]]:
        out = []
        for t in texts:
            if isinstance(t, tuple | list) and len(t) == 2:
                out.append({"text": str(t[0]), "text_pair": str(t[1]), "label": 0})
            else:
                out.append({"text": str(t), "label": 0})
        return out

    def __call__(self, inputs: Any, **kwargs: Any) -> Any:
        opts = self._options(kwargs, self.defaults)
        if isinstance(inputs, str | tuple):
            return self.batch([inputs], opts)[0]
        return self.batch(list(inputs), opts)

    def batch(self, texts: list[Any], opts: dict[str, Any]) -> list[Any]:
        k = int(opts["top_k"])
        if not 1 <= k <= len(self.labels):
            raise ConfigError(f"top_k={k} must be in [1, {len(self.labels)}]")
        records = self._records(texts)
        split = self.rows(records)
        if self.model_config.family == "encoder_decoder":
            probs = self._label_words(split)
        else:
            probs = _softmax(self.outputs(split)["class_logits"].astype(np.float64))
        out = []
        for p in probs:
            order = np.argsort(-p, kind="stable")[:k]
            out.append([{"label": self.labels[i], "score": float(p[i])} for i in order])
        return out

    def _label_words(self, split: task_rows.TaskSplit) -> np.ndarray:
        """``[N, L]``: each label word + EOS scored as the T5 target, softmaxed."""
        tok = self.tokenizer
        targets = [[*tok.encode(w), int(tok.eos_id)] for w in self.labels]
        pairs = []
        for ids, mask in zip(split.arrays["input_ids"], split.arrays["attention_mask"]):
            context = [int(t) for t in ids[: int(mask.sum()) - 1]]  # t5_rows adds the EOS
            pairs += [(context, t) for t in targets]
        scores = Scorer(self.run).score(pairs)  # fixed batch: one compile per bucket
        lls = np.asarray([s for s, _ in scores]).reshape(len(split), len(self.labels))
        return _softmax(lls)


@register
class TokenClassification(_Head):
    task = "token-classification"
    families = ("encoder", "decoder")
    head = "token"
    kind = "token_classification"
    options: ClassVar[dict[str, Any]] = {"ignore_labels": ("O",)}

    def batch(self, texts: list[str], opts: dict[str, Any]) -> list[Any]:
        words = [list(_WORD.finditer(t)) for t in texts]
        if not all(words):
            raise ConfigError("token-classification needs at least one word per text")
        records = [{"tokens": [m.group() for m in w], "tags": [0] * len(w)} for w in words]
        split = self.rows(records)
        probs = _softmax(self.outputs(split)["tag_logits"].astype(np.float64))  # [N, T, C]
        out = []
        for i, ms in enumerate(words):
            firsts = np.flatnonzero(split.arrays["tag_weights"][i] > 0)  # a word's first piece
            found = []
            for j, (m, t) in enumerate(zip(ms, firsts, strict=True)):
                c = int(np.argmax(probs[i, t]))
                if self.labels[c] in opts["ignore_labels"]:
                    continue
                found.append({"entity": self.labels[c], "score": float(probs[i, t, c]),
                              "index": j, "word": m.group(), "start": m.start(),
                              "end": m.end()})  # fmt: skip
            out.append(found)
        return out


@register
class QuestionAnswering(_Head):
    task = "question-answering"
    families = ("encoder", "decoder")
    head = "span"
    kind = "span_qa"
    options: ClassVar[dict[str, Any]] = {"max_answer_len": None}

    def __call__(self, inputs: Any = None, question: Any = None, context: Any = None,
                 **kwargs: Any) -> Any:  # fmt: skip
        opts = self._options(kwargs, self.defaults)
        if inputs is None:
            if question is None or context is None:
                raise ConfigError("question-answering needs question=... and context=...")
            one = isinstance(question, str)
            qs = [question] if one else list(question)
            cs = [context] if one else list(context)
            inputs = [{"question": q, "context": c} for q, c in zip(qs, cs, strict=True)]
            inputs = inputs[0] if one else inputs
        single = isinstance(inputs, dict)
        items = [inputs] if single else list(inputs)
        for x in items:
            if not (isinstance(x, dict) and {"question", "context"} <= set(x)):
                raise ConfigError("question-answering takes {'question': ..., 'context': ...}")
        out = self.batch(items, opts)
        return out[0] if single else out

    def batch(self, items: list[dict[str, str]], opts: dict[str, Any]) -> list[Any]:
        records = [{"question": x["question"], "context": x["context"], "answer": "",
                    "answer_start": 0} for x in items]  # fmt: skip
        split = self.rows(records)
        out_all = self.outputs(split)
        max_len = int(opts["max_answer_len"] or self.task_config.max_answer_len)
        results = []
        for i, x in enumerate(items):
            token_word = split.meta["token_word"][i]  # [T] context word of each token, or -1
            valid = token_word >= 0
            start = out_all["start_logits"][i].astype(np.float64)
            end = out_all["end_logits"][i].astype(np.float64)
            s, e = task_metrics.best_span(start, end, valid, max_len)
            if s < 0:
                results.append({"answer": "", "score": 0.0, "start": 0, "end": 0})
                continue
            p_start = _softmax(np.where(valid, start, -np.inf))
            p_end = _softmax(np.where(valid, end, -np.inf))
            spans = [(m.start(), m.end()) for m in _WORD.finditer(x["context"])]
            a, b = spans[int(token_word[s])][0], spans[int(token_word[e])][1]
            results.append({"answer": x["context"][a:b], "score": float(p_start[s] * p_end[e]),
                            "start": a, "end": b})  # fmt: skip
        return results


__all__ = ["QuestionAnswering", "TextClassification", "TokenClassification"]
