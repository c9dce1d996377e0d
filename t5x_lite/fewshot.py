"""Zero- and few-shot multiple choice by log-likelihood (GPT-3 style), from local JSONL.

    python -m t5x_lite.fewshot --workdir=runs/default --task=tasks/books.jsonl --shots=3 \\
        [--train=tasks/books_train.jsonl --seed=0 --batch_size=16 --step=N \\
         --context_field=query --choices_field=choices --gold_field=gold \\
         --predictions=preds.jsonl]

Each line of the task file is one example, ``{"query": "...", "choices": ["...", ...],
"gold": i}`` (the context field may be named ``context`` or ``query``, or anything
``--context_field`` names). With ``--shots=K`` every example is preceded by ``K``
demonstrations drawn without replacement from ``--train`` (default: the task file
itself, never the example being asked), seeded by ``(seed, example index)`` so a run is
reproducible whatever the batch size. The prompt, as lm-eval builds it::

    >>> doc = {"query": "Q: 1+1?", "choices": ["1", "2"], "gold": 1}
    >>> demo = {"query": "Q: 2+2?", "choices": ["4", "5"], "gold": 0}
    >>> prompt(doc, [demo], "query", "choices", "gold")
    'Q: 2+2? 4\\n\\nQ: 1+1?'

and each choice is scored as the continuation ``" " + choice`` of that prompt
(:class:`t5x_lite.scoring.Scorer`: summed log-likelihood of its tokens; a T5 scores the
choice as its target given the prompt as input). ``acc``: the highest log-likelihood
is the gold choice; ``acc_norm``: the highest log-likelihood per character of the
choice (lm-eval's ``acc_norm``). The result is one JSON line: ``acc``, ``acc_norm``,
``n``, ``shots``, ``truncated`` (prompts that lost their left end to the context).

Bad input (a missing file, a line that is not a JSON object, a missing field, a
``gold`` outside the choices, more shots than demonstrations, an encoder-only model)
is a one-line error naming the file, line and field.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from t5x_lite.config import ConfigError
from t5x_lite.config.errors import ArgumentParser
from t5x_lite.scoring import Scorer, encode_pair

FEWSHOT_DELIMITER = "\n\n"
TARGET_DELIMITER = " "
CONTEXT_FIELDS = ("context", "query")


# --------------------------------------------------------------------------- task files


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """The JSON objects of ``path``, one per non-empty line (one-line errors)."""
    if not os.path.isfile(path):
        raise ConfigError(f"task file {path} does not exist")
    docs = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(doc, dict):
                raise ConfigError(f"{path}:{n}: expected a JSON object, got {type(doc).__name__}")
            docs.append(doc)
    if not docs:
        raise ConfigError(f"task file {path} holds no examples")
    return docs


def context_field_of(docs: Sequence[dict[str, Any]], path: str, field: str | None) -> str:
    """``field``, or the first of ``context`` / ``query`` the first example has."""
    if field:
        return field
    for name in CONTEXT_FIELDS:
        if name in docs[0]:
            return name
    raise ConfigError(f"{path}:1: no 'context' or 'query' field (set --context_field)")


def check_docs(
    docs: Sequence[dict[str, Any]], path: str, context: str, choices: str, gold: str
) -> None:
    """Every example has a string ``context``, a non-empty list of string ``choices``
    and an int ``gold`` indexing them; else a ConfigError naming line and field."""
    for n, doc in enumerate(docs, 1):
        for name in (context, choices, gold):
            if name not in doc:
                raise ConfigError(f"{path}:{n}: missing field {name!r} (has {sorted(doc)})")
        if not isinstance(doc[context], str):
            raise ConfigError(f"{path}:{n}: field {context!r} must be a string")
        c = doc[choices]
        if not (isinstance(c, list) and c and all(isinstance(x, str) and x for x in c)):
            raise ConfigError(f"{path}:{n}: field {choices!r} must be a list of non-empty strings")
        g = doc[gold]
        if isinstance(g, bool) or not isinstance(g, int) or not 0 <= g < len(c):
            raise ConfigError(
                f"{path}:{n}: field {gold!r} = {g!r} is not an index of its {len(c)} choices"
            )


# --------------------------------------------------------------------------- prompts


def prompt(
    doc: dict[str, Any], demos: Sequence[dict[str, Any]], context: str, choices: str, gold: str
) -> str:
    """Demonstrations (``context + " " + gold choice``) joined by a blank line, then the
    example's context (see the module docstring's worked example)."""
    shots = [d[context] + TARGET_DELIMITER + d[choices][d[gold]] for d in demos]
    return FEWSHOT_DELIMITER.join([*shots, doc[context]])


def draw_demos(
    pool: Sequence[dict[str, Any]], k: int, seed: int, index: int, exclude: int | None
) -> list[dict[str, Any]]:
    """``k`` examples of ``pool`` without replacement, seeded by ``(seed, index)``,
    never ``pool[exclude]`` (the example itself when the pool is the task file)."""
    candidates = [i for i in range(len(pool)) if i != exclude]
    picks = np.random.default_rng([seed, index]).choice(len(candidates), size=k, replace=False)
    return [pool[candidates[int(i)]] for i in picks]


# --------------------------------------------------------------------------- evaluation


def evaluate(
    run: Any,
    task: str,
    shots: int = 0,
    train: str | None = None,
    seed: int = 0,
    batch_size: int = 16,
    context_field: str | None = None,
    choices_field: str = "choices",
    gold_field: str = "gold",
    max_length: int | None = None,
) -> dict[str, Any]:
    """Score ``task`` (a JSONL file) under ``run`` (:func:`t5x_lite.load`).

    Returns ``{"acc", "acc_norm", "n", "shots", "truncated", "predictions"}``, where
    ``predictions`` holds per example the choices' log-likelihoods (``loglikelihoods``),
    ``pred`` and ``pred_norm``.
    """
    if shots < 0:
        raise ConfigError(f"shots={shots} must be >= 0")
    if run.tokenizer is None:
        raise ConfigError(f"{run.path}: {run.note}")
    scorer = Scorer(run, batch_size=batch_size, max_length=max_length)
    docs = read_jsonl(task)
    ctx = context_field_of(docs, task, context_field)
    check_docs(docs, task, ctx, choices_field, gold_field)
    same = train is None or os.path.abspath(train) == os.path.abspath(task)
    pool = docs if same else read_jsonl(train)
    if not same:
        check_docs(pool, train, ctx, choices_field, gold_field)
    available = len(pool) - 1 if same else len(pool)
    if shots > available:
        raise ConfigError(f"shots={shots} but {train or task} has only {available} demonstrations")

    seq2seq = scorer.family == "encoder_decoder"
    pairs, owner = [], []
    for i, doc in enumerate(docs):
        demos = draw_demos(pool, shots, seed, i, i if same else None) if shots else []
        text = prompt(doc, demos, ctx, choices_field, gold_field)
        for choice in doc[choices_field]:
            c, t = encode_pair(run.tokenizer.encode, text, TARGET_DELIMITER + choice, seq2seq)
            if not c and not seq2seq:  # an empty prompt conditions on EOS, as lm-eval's
                c = [scorer.eos_id]
            pairs.append((c, t))
            owner.append(i)
    scores = scorer.score(pairs)
    truncated = {owner[j] for j, p in enumerate(pairs) if scorer.truncated(p)}

    preds, acc, acc_norm, at = [], 0, 0, 0
    for doc in docs:
        choices = doc[choices_field]
        lls = np.asarray([s for s, _ in scores[at : at + len(choices)]])
        at += len(choices)
        lengths = np.asarray([float(len(c)) for c in choices])
        pred, pred_norm = int(np.argmax(lls)), int(np.argmax(lls / lengths))
        acc += pred == doc[gold_field]
        acc_norm += pred_norm == doc[gold_field]
        preds.append(
            {
                "loglikelihoods": lls.tolist(),
                "pred": pred,
                "pred_norm": pred_norm,
                "gold": doc[gold_field],
            }
        )
    n = len(docs)
    return {
        "acc": acc / n,
        "acc_norm": acc_norm / n,
        "n": n,
        "shots": shots,
        "truncated": len(truncated),
        "predictions": preds,
    }


# --------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(
        prog="python -m t5x_lite.fewshot", description=__doc__.split("\n")[0]
    )
    p.add_argument("--workdir", required=True, help="a run's workdir or an HF directory")
    p.add_argument("--task", required=True, help="JSONL file of examples")
    p.add_argument("--shots", type=int, default=0)
    p.add_argument("--train", default=None, help="JSONL file of demonstrations (default: --task)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--max_length", type=int, default=None, help="default: model.max_seq_len")
    p.add_argument("--context_field", default=None, help="default: context or query")
    p.add_argument("--choices_field", default="choices")
    p.add_argument("--gold_field", default="gold")
    p.add_argument("--predictions", default=None, help="write per-example JSONL here (new file)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        if args.predictions and os.path.exists(args.predictions):
            raise ConfigError(f"--predictions={args.predictions} already exists; not overwriting")
        if args.predictions and not os.path.isdir(os.path.dirname(args.predictions) or "."):
            raise ConfigError(f"--predictions={args.predictions}: its directory does not exist")
        # The task files first: a bad line is one error before any parameter is read.
        docs = read_jsonl(args.task)
        ctx = context_field_of(docs, args.task, args.context_field)
        for path in dict.fromkeys(p for p in (args.task, args.train) if p):
            check_docs(read_jsonl(path), path, ctx, args.choices_field, args.gold_field)
        from t5x_lite.loading import load

        run = load(args.workdir, args.step)
        result = evaluate(
            run,
            args.task,
            args.shots,
            args.train,
            args.seed,
            args.batch_size,
            args.context_field,
            args.choices_field,
            args.gold_field,
            args.max_length,
        )
    except ConfigError as e:
        sys.exit(f"error: {e}")
    preds = result.pop("predictions")
    if args.predictions:
        with open(args.predictions, "x", encoding="utf-8") as f:
            f.writelines(json.dumps(p) + "\n" for p in preds)
    print(json.dumps({"task": args.task, **result}))


if __name__ == "__main__":
    main()
