"""Example fine-tuning tasks built from the embedded King James Bible, and the
bag-of-words baseline of the classification ones.

Classification (``{"text", "label"}`` per line):

* ``word_order`` (the example of ``make finetune``): in half the training verses the
  words before the last are shuffled (:func:`shuffle`), labels ``original`` /
  ``shuffled``; validation holds every verse twice, original and shuffled, so it is
  exactly balanced and a bag of words (the same bag for both) is at chance.
* ``bigram_shift`` (SentEval's probing task, Conneau et al. 2018): half of the verses
  have two adjacent words swapped (``"God created the heaven"`` -> ``"God the created
  heaven"``), labels ``original`` / ``shifted``. Both versions hold the same words,
  so a bag of words is at chance by construction; only word order tells them apart.
* ``testament``: which testament a verse comes from (``old`` / ``new``); vocabulary
  alone is a strong signal here.

Token classification, ``names`` (``{"tokens", "tags"}``): each word of a verse tagged
``NAME`` or ``O`` by :func:`is_name` (capitalised, and its lowercase form never occurs
lowercase in the KJV). Span QA, ``relations`` (``{"question", "context", "answer",
"answer_start"}``): the first of :data:`RELATIONS` a verse states between two names
(``"Joshua the son of Nun"`` -> ``"Whose son is Joshua?"``, answer ``Nun``).

Splits follow the corpus's (:func:`t5x_lite.data.corpora.validation_indices`): the
validation verses come from the 24 held-out chapters a ``data.corpus=kjv``
pretraining run never trains on; the training verses (``--train_verses``, sampled
with ``--seed``) from the other chapters. ``relations`` is the exception: the held-out
chapters hold 39 of its 1060 verses, so a seeded quarter of all of them is its
validation. Verses of fewer than 4 words are skipped; the swap and the shuffle never
move the last word (so final punctuation stays in place)::

    python -m t5x_lite.data.kjv_tasks build --task=word_order --out=runs/tasks/word_order
    python -m t5x_lite.data.kjv_tasks baseline --dir=runs/tasks/word_order
    python -m t5x_lite.data.kjv_tasks interval --accuracy=0.9577 --n=1370

``build`` writes ``train.jsonl`` and ``validation.jsonl`` and refuses an ``--out`` that
already holds them; ``baseline`` fits scikit-learn's ``CountVectorizer`` (unigrams) +
``LogisticRegression`` on train and prints the validation accuracy (with its 95%
Wilson interval), macro-F1 and chance (the majority class) as JSON; ``interval`` prints
the Wilson interval of any accuracy over ``n`` rows.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import sys
from collections.abc import Set
from typing import Any

import numpy as np

from t5x_lite.config import ConfigError
from t5x_lite.config.errors import ArgumentParser
from t5x_lite.data.corpora import kjv_chapters, validation_indices

TASKS = {
    "bigram_shift": ("original", "shifted"),
    "testament": ("old", "new"),
    "word_order": ("original", "shuffled"),
    "names": ("O", "NAME"),  # token classification
    "relations": (),  # span QA
}
OLD_TESTAMENT_BOOKS = 39
_LETTERS = re.compile(r"[^A-Za-z]")
_NAME = r"([A-Z][a-z]+)"
# Span QA: (relation in the verse, question about its first name; the answer is the second).
RELATIONS = (
    (re.compile(_NAME + r" the son of " + _NAME), "Whose son is {}?"),
    (re.compile(_NAME + r" the daughter of " + _NAME), "Whose daughter is {}?"),
    (re.compile(_NAME + r" begat " + _NAME), "Whom did {} beget?"),
    (re.compile(_NAME + r",? (?:the )?king of " + _NAME), "Of what was {} king?"),
)
RELATIONS_VALIDATION = 0.25  # of the verses holding a relation


@functools.lru_cache(maxsize=1)
def _verses() -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """``(train, validation)`` lists of ``(verse, book index)`` (never modified)."""
    chapters = kjv_chapters()
    held = validation_indices(len(chapters))
    books: list[str] = []
    train, validation = [], []
    for i, (title, verses) in enumerate(chapters):
        book = title.rsplit(" ", 1)[0]
        if not books or books[-1] != book:
            books.append(book)
        side = validation if i in held else train
        side.extend((v, len(books) - 1) for v in verses)
    return train, validation


def shift(words: list[str], rng: np.random.Generator) -> list[str]:
    """``words`` with two adjacent ones (never the last) swapped, at a random place
    where they differ.

    >>> shift("God created the heaven".split(), np.random.default_rng(0))
    ['God', 'the', 'created', 'heaven']
    """
    places = [i for i in range(len(words) - 2) if words[i] != words[i + 1]]
    i = int(places[rng.integers(len(places))])
    out = list(words)
    out[i], out[i + 1] = out[i + 1], out[i]
    return out


def shuffle(words: list[str], rng: np.random.Generator) -> list[str]:
    """``words`` with all but the last in a new random order (the same bag of words).

    >>> shuffle("In the beginning God created the heaven".split(), np.random.default_rng(0))
    ['God', 'beginning', 'the', 'created', 'In', 'the', 'heaven']
    """
    head = list(words[:-1])
    while True:
        order = [head[i] for i in rng.permutation(len(head))]
        if order != head:
            return [*order, words[-1]]


def records(
    task: str, verses: list[tuple[str, int]], rng: np.random.Generator, paired: bool = False
) -> list[dict]:
    """``[{"text", "label"}]`` of ``task`` for ``verses`` (see the module docstring);
    ``paired``: ``word_order`` writes every verse twice, original and shuffled."""
    out = []
    for verse, book in verses:
        words = verse.split()
        if len(words) < 4:
            continue
        if task == "testament":
            out.append({"text": verse, "label": "old" if book < OLD_TESTAMENT_BOOKS else "new"})
            continue
        changed = TASKS[task][1]  # "shifted" / "shuffled"
        change = shuffle if task == "word_order" else shift
        if task == "word_order" and paired:
            out.append({"text": verse, "label": "original"})
            out.append({"text": " ".join(change(words, rng)), "label": changed})
        elif rng.random() < 0.5:
            out.append({"text": " ".join(change(words, rng)), "label": changed})
        else:
            out.append({"text": verse, "label": "original"})
    return out


def lowercase_words(verses: list[str]) -> set[str]:
    """Every word (letters only, lowercased) that occurs starting lowercase in ``verses``."""
    out = set()
    for verse in verses:
        for word in verse.split():
            w = _LETTERS.sub("", word)
            if w and w[0].islower():
                out.add(w.lower())
    return out


def is_name(word: str, lower: Set[str]) -> bool:
    """A capitalised word (letters only) whose lowercase form never occurs lowercase in
    the KJV (``lower``: :func:`lowercase_words`); ``I`` and ``O`` are not names.

    >>> lower = {"let", "god", "lord"}
    >>> [is_name(w, lower) for w in ["Moses,", "Abraham’s", "Let", "God", "LORD", "I"]]
    [True, True, False, False, False, False]
    """
    w = _LETTERS.sub("", word)
    return bool(w) and w[0].isupper() and w.lower() not in lower and w not in ("I", "O")


def name_records(verses: list[tuple[str, int]], lower: Set[str]) -> list[dict]:
    """``[{"tokens", "tags"}]``: each verse's words, tagged ``NAME`` (:func:`is_name`)
    or ``O``. E.g. ``"And Enos lived ninety years"`` -> tags ``O NAME O O O``."""
    out = []
    for verse, _ in verses:
        words = verse.split()
        if len(words) >= 4:
            tags = ["NAME" if is_name(w, lower) else "O" for w in words]
            out.append({"tokens": words, "tags": tags})
    return out


def relation_records(verses: list[str], lower: Set[str]) -> list[dict]:
    """``[{"question", "context", "answer", "answer_start"}]``: the first relation of
    :data:`RELATIONS` in each verse whose two words are names; the context is the verse.

    >>> relation_records(["And Joshua the son of Nun sent men."], set())[0]["question"]
    'Whose son is Joshua?'
    """
    out = []
    for verse in verses:
        for pattern, question in RELATIONS:
            m = pattern.search(verse)
            if m and is_name(m.group(1), lower) and is_name(m.group(2), lower):
                out.append(
                    {
                        "question": question.format(m.group(1)),
                        "context": verse,
                        "answer": m.group(2),
                        "answer_start": m.start(2),
                    }
                )
                break
    return out


@functools.lru_cache(maxsize=1)
def _kjv_lowercase() -> frozenset[str]:
    train, validation = _verses()
    return frozenset(lowercase_words([v for v, _ in train + validation]))


def _split(task: str, train_verses: int, rng: np.random.Generator) -> dict[str, list[dict]]:
    train, validation = _verses()
    if task == "relations":  # too few in the held-out chapters: a seeded share of all
        lower = _kjv_lowercase()
        recs = relation_records([v for v, _ in train + validation], lower)
        held = set(rng.permutation(len(recs))[: round(len(recs) * RELATIONS_VALIDATION)].tolist())
        return {
            "train": [r for i, r in enumerate(recs) if i not in held],
            "validation": [r for i, r in enumerate(recs) if i in held],
        }
    pick = np.sort(rng.permutation(len(train))[:train_verses])
    if task == "names":
        lower = _kjv_lowercase()
        return {
            "train": name_records([train[i] for i in pick], lower),
            "validation": name_records(validation, lower),
        }
    return {
        "train": records(task, [train[i] for i in pick], rng),
        "validation": records(task, validation, rng, paired=True),
    }


def build(task: str, out: str, train_verses: int, seed: int) -> dict[str, Any]:
    """Write ``out/train.jsonl`` and ``out/validation.jsonl``; returns their sizes."""
    if task not in TASKS:
        raise ConfigError(f"--task={task!r} is not one of {', '.join(TASKS)}")
    paths = {s: os.path.join(out, f"{s}.jsonl") for s in ("train", "validation")}
    if any(os.path.exists(p) for p in paths.values()):
        raise ConfigError(
            f"{out} already holds train.jsonl/validation.jsonl; refusing to overwrite"
        )
    split = _split(task, train_verses, np.random.default_rng(seed))
    os.makedirs(out, exist_ok=True)
    for name, recs in split.items():
        tmp = paths[name] + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            for r in recs:
                f.write(json.dumps(r) + "\n")
        os.replace(tmp, paths[name])
    return {"task": task, "out": out, **{s: len(r) for s, r in split.items()}}


def _read(path: str) -> tuple[list[str], list[str]]:
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    if not rows or not all("text" in r and "label" in r for r in rows):
        raise ConfigError(f"{path}: not a classification file (text and label on every line)")
    return [r["text"] for r in rows], [str(r["label"]) for r in rows]


def wilson(accuracy: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95% for ``z=1.96``) of an accuracy over ``n`` rows.

    >>> [round(x, 4) for x in wilson(0.5, 1370)]
    [0.4736, 0.5264]
    """
    if n <= 0:
        raise ConfigError(f"--n={n} must be positive")
    centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(centre - half), float(centre + half)


def baseline(folder: str) -> dict[str, Any]:
    """Bag-of-words logistic regression on ``folder``'s files (validation metrics)."""
    for name in ("train.jsonl", "validation.jsonl"):  # before sklearn's slow import
        if not os.path.isfile(os.path.join(folder, name)):
            raise ConfigError(
                f"--dir={folder} holds no {name} (write it with: python -m "
                f"t5x_lite.data.kjv_tasks build --task=NAME --out={folder})"
            )
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    x_train, y_train = _read(os.path.join(folder, "train.jsonl"))
    x_val, y_val = _read(os.path.join(folder, "validation.jsonl"))
    vec = CountVectorizer(lowercase=True)
    clf = LogisticRegression(max_iter=2000).fit(vec.fit_transform(x_train), y_train)
    pred = clf.predict(vec.transform(x_val))
    labels, counts = np.unique(y_val, return_counts=True)
    return {
        "dir": folder,
        "validation_rows": len(y_val),
        "bow_accuracy": float(accuracy_score(y_val, pred)),
        "bow_macro_f1": float(f1_score(y_val, pred, average="macro")),
        "bow_accuracy_95ci": wilson(float(accuracy_score(y_val, pred)), len(y_val)),
        "chance_accuracy": float(counts.max() / counts.sum()),
        "majority_label": str(labels[np.argmax(counts)]),
    }


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(
        prog="python -m t5x_lite.data.kjv_tasks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="write train.jsonl and validation.jsonl")
    b.add_argument("--task", required=True, choices=sorted(TASKS))
    b.add_argument("--out", required=True)
    b.add_argument("--train_verses", type=int, default=8000)
    b.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("baseline", help="bag-of-words logistic regression")
    s.add_argument("--dir", required=True)
    w = sub.add_parser("interval", help="95%% Wilson interval of an accuracy over n rows")
    w.add_argument("--accuracy", type=float, required=True)
    w.add_argument("--n", type=int, required=True)
    args = p.parse_args(argv)
    try:
        if args.command == "build":
            result = build(args.task, args.out, args.train_verses, args.seed)
        elif args.command == "interval":
            result = {"accuracy": args.accuracy, "n": args.n,
                      "95ci": wilson(args.accuracy, args.n)}  # fmt: skip
        else:
            result = baseline(args.dir)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
