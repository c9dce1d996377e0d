"""Canonical task records (:mod:`t5x_lite.data.tasks`) as fixed-length numpy rows.

:func:`encode_split` maps records to arrays ``[N, T]`` (``T = data.seq_len``) with
Hugging Face key names plus the labels of the task head, and keeps what the metrics
need on the host (:class:`TaskSplit`). Layouts (``tok`` ids; pad id 0):

=====================  ==============  ==============================================
kind                   family          row
=====================  ==============  ==============================================
classification         encoder         ``[CLS] a [SEP] (b [SEP])``; ``class_labels [N]``
classification         decoder         ``a ([SEP] b) [EOS]``: the head reads [EOS]
classification         encoder_decoder inputs ``a (b) [EOS]``; targets the label's
                                       word(s) + [EOS] (``labels``, ``loss_weights``)
token_classification   encoder         ``[CLS] pieces [SEP]``; the first piece of each
                                       word carries its tag (``tag_weights`` 1), the
                                       others weight 0
token_classification   decoder         ``pieces [EOS]`` (same weights)
span_qa                encoder         ``[CLS] question [SEP] context [SEP]``
span_qa                decoder         ``question [SEP] context [EOS]``
=====================  ==============  ==============================================

Pairs and long texts are truncated to fit (the longer side first); token
classification drops the words past the row. A span whose answer was truncated away
keeps ``span_weights`` 0. Worked example (encoder classification, ``T = 8``,
``[CLS]=2, [SEP]=3``, text ids ``[7, 8]``, label 1)::

    input_ids      [2, 7, 8, 3, 0, 0, 0, 0]
    attention_mask [1, 1, 1, 1, 0, 0, 0, 0]
    token_type_ids [0, 0, 0, 0, 0, 0, 0, 0]
    class_labels   1,  class_weights 1.0
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np

from t5x_lite.data.tokenizer import Tokenizer

_WORD = re.compile(r"\S+")


@dataclasses.dataclass
class TaskSplit:
    """``arrays``: ``{key: [N, ...]}``; ``meta``: host-side per-row data for metrics
    (span QA: ``words`` (context words), ``token_word [N, T]`` (-1 outside the
    context), ``answers``); ``candidates``: label-word targets ``{key: [L, Tt]}`` of an
    encoder-decoder classification task (None otherwise)."""

    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]
    candidates: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))


def _fit(a: list[int], b: list[int], budget: int) -> tuple[list[int], list[int]]:
    """Truncate the longer of ``a``, ``b`` until both fit ``budget`` ids.

    >>> _fit([1, 2, 3, 4], [5, 6], 4)
    ([1, 2], [5, 6])
    """
    a, b = list(a), list(b)
    while len(a) + len(b) > budget:
        if len(a) >= len(b):
            a.pop()
        else:
            b.pop()
    return a, b


def _pad(rows: list[list[int]], length: int) -> np.ndarray:
    out = np.zeros((len(rows), length), np.int32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r[:length]
    return out


def _mask(rows: list[list[int]], length: int) -> np.ndarray:
    """``[N, length]`` int32: 1 over each row's ids, 0 over its padding."""
    return (np.arange(length)[None, :] < np.asarray([len(r) for r in rows])[:, None]).astype(
        np.int32
    )


def _frame(tok: Tokenizer, family: str, a: list[int], b: list[int] | None, length: int):
    """``(ids, types, b_offset)``: one row of ``a`` (+ ``b``) framed for ``family``."""
    if family == "encoder":
        extra = 3 if b is not None else 2
        a, bb = _fit(a, b or [], length - extra)
        ids = [tok.cls_id, *a, tok.sep_id]
        types = [0] * len(ids)
        offset = len(ids)
        if b is not None:
            ids += [*bb, tok.sep_id]
            types += [1] * (len(bb) + 1)
        return ids, types, offset
    extra = 2 if b is not None else 1  # decoder / encoder-decoder inputs end with EOS
    a, bb = _fit(a, b or [], length - extra)
    ids = list(a)
    offset = len(ids) + 1
    if b is not None:
        ids += [tok.sep_id, *bb]
    return [*ids, tok.eos_id], [0] * (len(ids) + 1), offset


def _classification(recs, tok, family, length, labels, target_len) -> TaskSplit:
    ids, types = [], []
    for r in recs:
        b = tok.encode(r["text_pair"]) if "text_pair" in r else None
        row, ty, _ = _frame(tok, family, tok.encode(r["text"]), b, length)
        ids.append(row)
        types.append(ty)
    x = _pad(ids, length)
    arrays = {"input_ids": x, "attention_mask": _mask(ids, length)}
    if family == "encoder":
        arrays["token_type_ids"] = _pad(types, length)
    y = np.asarray([r["label"] for r in recs], np.int32)
    arrays["class_labels"] = y
    arrays["class_weights"] = np.ones(len(recs), np.float32)
    candidates = None
    if family == "encoder_decoder":
        candidates = label_targets(tok, labels, target_len)
        for k, v in candidates.items():
            arrays[k] = v[y]
    return TaskSplit(arrays, {}, candidates)


def label_targets(tok: Tokenizer, labels: tuple[str, ...], length: int) -> dict[str, np.ndarray]:
    """Decoder arrays ``[L, length]`` of each label word + EOS (T5 text-to-text):
    ``decoder_input_ids`` (shifted right, starting at pad 0), ``decoder_attention_mask``,
    ``labels``, ``loss_weights``. E.g. label ids ``[9]``, EOS 1, length 4:
    ``decoder_input_ids [0, 9, 0, 0]``, ``labels [9, 1, 0, 0]``, weights ``[1, 1, 0, 0]``."""
    targets = [[*tok.encode(w)[: length - 1], tok.eos_id] for w in labels]
    y = _pad(targets, length)
    inputs = np.zeros_like(y)
    inputs[:, 1:] = y[:, :-1]
    weights = (y != 0).astype(np.float32)
    return {
        "decoder_input_ids": inputs,
        "decoder_attention_mask": (weights > 0).astype(np.int32) | (np.arange(length) == 0),
        "labels": y,
        "loss_weights": weights,
    }


def _tokens(recs, tok, family, length) -> TaskSplit:
    ids, tags, weights = [], [], []
    budget = length - 2 if family == "encoder" else length - 1
    for r in recs:
        row, tg, w = [], [], []
        for word, tag in zip(r["tokens"], r["tags"]):
            pieces = tok.encode(word) or [tok.unk_id]
            if len(row) + len(pieces) > budget:
                break
            row += pieces
            tg += [tag] + [0] * (len(pieces) - 1)
            w += [1.0] + [0.0] * (len(pieces) - 1)
        if family == "encoder":
            row, tg, w = [tok.cls_id, *row, tok.sep_id], [0, *tg, 0], [0.0, *w, 0.0]
        else:
            row, tg, w = [*row, tok.eos_id], [*tg, 0], [*w, 0.0]
        ids.append(row)
        tags.append(tg)
        weights.append(w)
    x = _pad(ids, length)
    wt = np.zeros((len(recs), length), np.float32)
    for i, w in enumerate(weights):
        wt[i, : len(w)] = w
    arrays = {
        "input_ids": x,
        "attention_mask": _mask(ids, length),
        "tag_labels": _pad(tags, length),
        "tag_weights": wt,
    }
    if family == "encoder":
        arrays["token_type_ids"] = np.zeros_like(x)
    return TaskSplit(arrays, {})


def _spans(recs, tok, family, length) -> TaskSplit:
    ids, types, word_of, starts, ends, weights, words_all = [], [], [], [], [], [], []
    for r in recs:
        q = tok.encode(r["question"])
        words = [(m.start(), m.end(), m.group()) for m in _WORD.finditer(r["context"])]
        pieces = [tok.encode(w) or [tok.unk_id] for _, _, w in words]
        ctx = [p for ps in pieces for p in ps]
        ctx_word = [j for j, ps in enumerate(pieces) for _ in ps]
        row, ty, offset = _frame(tok, family, q, ctx, length)
        kept = len(row) - offset - 1  # context ids that fit (before the closing id)
        tw = np.full(length, -1, np.int32)
        tw[offset : offset + kept] = ctx_word[:kept]
        a0, a1 = r["answer_start"], r["answer_start"] + len(r["answer"])
        inside = [j for j, (s, e, _) in enumerate(words) if s < a1 and e > a0]
        first = ctx_word.index(inside[0]) if inside else -1
        last = (len(ctx_word) - 1 - ctx_word[::-1].index(inside[-1])) if inside else -1
        ok = inside and last < kept
        starts.append(offset + first if ok else 0)
        ends.append(offset + last if ok else 0)
        weights.append(1.0 if ok else 0.0)
        ids.append(row)
        types.append(ty)
        word_of.append(tw)
        words_all.append([w for _, _, w in words])
    x = _pad(ids, length)
    arrays = {
        "input_ids": x,
        "attention_mask": _mask(ids, length),
        "start_positions": np.asarray(starts, np.int32),
        "end_positions": np.asarray(ends, np.int32),
        "span_weights": np.asarray(weights, np.float32),
    }
    if family == "encoder":
        arrays["token_type_ids"] = _pad(types, length)
    meta = {
        "words": words_all,
        "token_word": np.stack(word_of),
        "answers": [r["answer"] for r in recs],
    }
    return TaskSplit(arrays, meta)


def encode_split(
    records: list[dict[str, Any]],
    kind: str,
    family: str,
    tok: Tokenizer,
    length: int,
    labels: tuple[str, ...] = (),
    target_len: int = 8,
) -> TaskSplit:
    """Rows of ``records`` for ``kind`` on ``family`` (see the module docstring)."""
    if kind == "classification":
        return _classification(records, tok, family, length, labels, target_len)
    if kind == "token_classification":
        return _tokens(records, tok, family, length)
    return _spans(records, tok, family, length)
