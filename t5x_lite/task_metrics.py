"""Task metrics on the host (numpy): accuracy, macro-F1, SQuAD exact match and F1,
and the best answer span.

``macro_f1`` follows scikit-learn's ``f1_score(average="macro")``: the mean F1 over
the labels present in either the gold or the predicted labels (a label with no true
or predicted positive has F1 0)::

    >>> macro_f1([0, 0, 1, 1], [0, 1, 1, 1])
    0.7333333333333334

SQuAD's answer normalisation (lower case, drop punctuation, the articles a/an/the and
extra whitespace), then exact match and bag-of-tokens F1::

    >>> exact_match("The Lord!", "lord"), round(token_f1("the lord my shepherd", "my lord"), 3)
    (1.0, 0.8)
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Sequence

import numpy as np

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def accuracy(gold: Sequence[int], pred: Sequence[int]) -> float:
    gold, pred = np.asarray(gold), np.asarray(pred)
    return float(np.mean(gold == pred)) if gold.size else 0.0


def macro_f1(gold: Sequence[int], pred: Sequence[int]) -> float:
    """Unweighted mean of per-label F1 over the labels seen in ``gold`` or ``pred``."""
    gold, pred = np.asarray(gold), np.asarray(pred)
    if not gold.size:
        return 0.0
    scores = []
    for label in np.union1d(gold, pred):
        tp = np.sum((pred == label) & (gold == label))
        fp = np.sum((pred == label) & (gold != label))
        fn = np.sum((pred != label) & (gold == label))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def normalize_answer(text: str) -> str:
    """SQuAD v1.1's ``normalize_answer``: ``"The  Lord's!"`` -> ``"lords"``."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """SQuAD's F1 over the normalised tokens of ``prediction`` and ``gold``."""
    p, g = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = collections.Counter(p) & collections.Counter(g)
    same = sum(common.values())
    if not p or not g:
        return float(p == g)
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def best_span(
    start_logits: np.ndarray, end_logits: np.ndarray, valid: np.ndarray, max_len: int
) -> tuple[int, int]:
    """``(s, e)`` maximising ``start[s] + end[e]`` over valid positions with
    ``s <= e < s + max_len`` (the seeds' BERT recipe); ``(-1, -1)`` if none is valid.

    >>> best_span(np.array([0., 5, 1]), np.array([9., 0, 2]), np.array([0, 1, 1]), 2)
    (1, 2)
    """
    t = len(start_logits)
    s_idx, e_idx = np.meshgrid(np.arange(t), np.arange(t), indexing="ij")
    ok = (s_idx <= e_idx) & (e_idx < s_idx + max_len) & valid[:, None] & valid[None, :]
    if not ok.any():
        return -1, -1
    score = np.where(ok, start_logits[:, None] + end_logits[None, :], -np.inf)
    s, e = np.unravel_index(int(np.argmax(score)), score.shape)
    return int(s), int(e)
