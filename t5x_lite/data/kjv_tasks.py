"""Two classification tasks built from the embedded King James Bible, and their
bag-of-words baseline.

* ``bigram_shift`` (SentEval's probing task, Conneau et al. 2018): half of the verses
  have two adjacent words swapped (``"God created the heaven"`` -> ``"God the created
  heaven"``), labels ``original`` / ``shifted``. Both versions hold the same words,
  so a bag of words is at chance by construction; only word order tells them apart.
* ``testament``: which testament a verse comes from (``old`` / ``new``); vocabulary
  alone is a strong signal here.

Splits follow the corpus's (:func:`t5x_lite.data.corpora.validation_indices`): the
validation verses come from the 24 held-out chapters a ``data.corpus=kjv``
pretraining run never trains on; the training verses (``--train_verses``, sampled
with ``--seed``) from the other chapters. Verses of fewer than 4 words are skipped; the
swap never involves the last word (so final punctuation stays in place)::

    python -m t5x_lite.data.kjv_tasks build --task=bigram_shift --out=runs/tasks/bigram_shift
    python -m t5x_lite.data.kjv_tasks baseline --dir=runs/tasks/bigram_shift

``build`` writes ``train.jsonl`` and ``validation.jsonl`` (``{"text", "label"}`` per
line) and refuses an ``--out`` that already holds them; ``baseline`` fits scikit-learn's
``CountVectorizer`` (unigrams) + ``LogisticRegression`` on train and prints the
validation accuracy, macro-F1 and chance (the majority class) as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import numpy as np

from t5x_lite.config import ConfigError
from t5x_lite.config.errors import ArgumentParser
from t5x_lite.data.corpora import kjv_chapters, validation_indices

TASKS = {"bigram_shift": ("original", "shifted"), "testament": ("old", "new")}
OLD_TESTAMENT_BOOKS = 39


def _verses() -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """``(train, validation)`` lists of ``(verse, book index)``."""
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


def records(task: str, verses: list[tuple[str, int]], rng: np.random.Generator) -> list[dict]:
    """``[{"text", "label"}]`` of ``task`` for ``verses`` (see the module docstring)."""
    out = []
    for verse, book in verses:
        words = verse.split()
        if len(words) < 4:
            continue
        if task == "testament":
            out.append({"text": verse, "label": "old" if book < OLD_TESTAMENT_BOOKS else "new"})
        elif rng.random() < 0.5:
            out.append({"text": " ".join(shift(words, rng)), "label": "shifted"})
        else:
            out.append({"text": verse, "label": "original"})
    return out


def build(task: str, out: str, train_verses: int, seed: int) -> dict[str, Any]:
    """Write ``out/train.jsonl`` and ``out/validation.jsonl``; returns their sizes."""
    if task not in TASKS:
        raise ConfigError(f"--task={task!r} is not one of {', '.join(TASKS)}")
    paths = {s: os.path.join(out, f"{s}.jsonl") for s in ("train", "validation")}
    if any(os.path.exists(p) for p in paths.values()):
        raise ConfigError(
            f"{out} already holds train.jsonl/validation.jsonl; refusing to overwrite"
        )
    rng = np.random.default_rng(seed)
    train, validation = _verses()
    pick = np.sort(rng.permutation(len(train))[:train_verses])
    split = {
        "train": records(task, [train[i] for i in pick], rng),
        "validation": records(task, validation, rng),
    }
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
    return [r["text"] for r in rows], [str(r["label"]) for r in rows]


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
    args = p.parse_args(argv)
    try:
        if args.command == "build":
            result = build(args.task, args.out, args.train_verses, args.seed)
        else:
            result = baseline(args.dir)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
