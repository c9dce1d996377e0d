"""Evaluation of a train state on a fixed list of global batches, and the metrics of
a fine-tuning task on its full validation split (:func:`task_metrics`)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from t5x_lite import losses, steps
from t5x_lite import task_metrics as tm
from t5x_lite.partitioning import replicated_value, to_global


def evaluate(run: steps.Steps, params: Any, batches: list[dict[str, jax.Array]]) -> dict:
    """Mean token CE (``loss``), ``perplexity``, ``accuracy`` (+ sentence metrics)."""
    total: dict[str, float] = {}
    for batch in batches:
        sums = replicated_value(run.run(run.eval, params, batch))
        for k, v in sums.items():
            total[k] = total.get(k, 0.0) + float(v)
    return losses.summarize(total) if total else {}


# --------------------------------------------------------------------------- tasks

# The metrics each fine-tuning task reports (besides the heads' loss / accuracy), the
# names checkpoint.best_metric may take.
TASK_METRICS = {
    "classification": ("accuracy", "macro_f1"),
    "token_classification": ("accuracy", "macro_f1"),
    "span_qa": ("exact_match", "f1"),
}


def metric_names(kind: str, family: str) -> tuple[str, ...]:
    """Every eval metric name of a run (what ``checkpoint.best_metric`` may name)."""
    if kind == "span_qa":
        return ("start_loss", "end_loss", "start_accuracy", "end_accuracy", *TASK_METRICS[kind])
    names = ("loss", "accuracy", "perplexity")
    return names + TASK_METRICS.get(kind, ())


# Jitted task forwards per Steps object (keyed by id; the Steps is kept alive with it).
_JITTED: dict[tuple[int, str], tuple[steps.Steps, Any]] = {}


def _jitted(run: steps.Steps, what: str) -> Any:
    """``model.apply`` (``"forward"``) or ``model.score_batch`` (``"scores"``), jitted
    with the run's shardings and replicated outputs."""
    key = (id(run), what)
    if key not in _JITTED:
        model = run.model
        fn = model.score_batch if what == "scores" else (lambda p, b: model.apply(p, b))
        jitted = jax.jit(
            fn,
            in_shardings=(run.state_shardings.params, run.batch_sharding),
            out_shardings=NamedSharding(run.mesh, PartitionSpec()),
        )
        _JITTED[key] = (run, jitted)
    return _JITTED[key][1]


def _label_word_predictions(run: steps.Steps, params: Any, batches: list, candidates: dict) -> Any:
    """``[rows]``: the label whose words score highest (summed log-likelihood)."""
    preds = []
    for batch in batches:
        scores = []
        local = batch["input_ids"].shape[0] // jax.process_count()
        for i in range(candidates["labels"].shape[0]):
            rows = {k: np.repeat(v[i : i + 1], local, axis=0) for k, v in candidates.items()}
            one = {**batch, **to_global(rows, run.batch_sharding)}
            scores.append(np.asarray(run.run(_jitted(run, "scores"), params, one)))
        preds.append(np.argmax(np.stack(scores, axis=1), axis=1))
    return np.concatenate(preds)


def task_metrics(
    run: steps.Steps,
    params: Any,
    batches: list[dict[str, jax.Array]],
    validation: Any,
    kind: str,
    max_answer_len: int = 30,
) -> dict[str, float]:
    """Metrics of a fine-tuning task on the full validation split.

    ``batches``: the global eval batches covering ``validation`` (a
    :class:`t5x_lite.data.task_rows.TaskSplit`) in order, the last one padded.
    Classification: ``accuracy``, ``macro_f1`` over rows (label words: the best-scoring
    label); token classification: the same over the labelled first pieces; span QA:
    SQuAD ``exact_match`` and ``f1`` of the best span's words (``t5x_lite.task_metrics``).
    """
    arrays, n = validation.arrays, len(validation)
    if kind == "classification" and validation.candidates is not None:
        pred = _label_word_predictions(run, params, batches, validation.candidates)[:n]
        gold = arrays["class_labels"]
        return {"accuracy": tm.accuracy(gold, pred), "macro_f1": tm.macro_f1(gold, pred)}
    forward = _jitted(run, "forward")
    outs = [jax.tree_util.tree_map(np.asarray, run.run(forward, params, b)) for b in batches]
    out = {k: np.concatenate([o[k] for o in outs])[:n] for k in outs[0]}
    if kind == "classification":
        pred, gold = np.argmax(out["class_logits"], -1), arrays["class_labels"]
        return {"accuracy": tm.accuracy(gold, pred), "macro_f1": tm.macro_f1(gold, pred)}
    if kind == "token_classification":
        keep = arrays["tag_weights"] > 0
        pred = np.argmax(out["tag_logits"], -1)[keep]
        gold = arrays["tag_labels"][keep]
        return {"accuracy": tm.accuracy(gold, pred), "macro_f1": tm.macro_f1(gold, pred)}
    em, f1 = [], []
    token_word, words = validation.meta["token_word"], validation.meta["words"]
    for i, gold in enumerate(validation.meta["answers"]):
        s, e = tm.best_span(out["start_logits"][i], out["end_logits"][i], token_word[i] >= 0,
                            max_answer_len)  # fmt: skip
        text = "" if s < 0 else " ".join(words[i][token_word[i][s] : token_word[i][e] + 1])
        em.append(tm.exact_match(text, gold))
        f1.append(tm.token_f1(text, gold))
    return {"exact_match": float(np.mean(em)), "f1": float(np.mean(f1))}
