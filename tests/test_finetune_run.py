"""A short fine-tune end to end: a task file, init_from a tiny trained GPT-2, the
full-split task metrics in metrics.jsonl, the best checkpoint in best/ restorable with
t5x_lite.load(workdir, "best"); and T5 label words scored through the same loop."""

from __future__ import annotations

import dataclasses
import json
import string
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
import transformers
from trained_runs import FAMILIES, preset_config, trained

import t5x_lite
from t5x_lite import evaluation, export, models, partitioning, steps, task_metrics, trainer
from t5x_lite.config import ConfigError, TaskConfig
from t5x_lite.data import task_pipeline

VERSES = [
    "In the beginning God created the heaven and the earth",
    "And God said Let there be light and there was light",
    "The LORD is my shepherd I shall not want",
    "Jesus wept and the Jews said Behold how he loved him",
    "Blessed are the meek for they shall inherit the earth",
    "For God so loved the world that he gave his only begotten Son",
]


def _task_files(tmp_path) -> tuple[str, str]:
    rng = np.random.default_rng(0)
    out = []
    for name, n in (("train", 48), ("validation", 12)):
        path = tmp_path / f"{name}.jsonl"
        with open(path, "w") as f:
            for i in range(n):
                words = VERSES[i % len(VERSES)].split()
                label = "new" if i % 3 else "old"
                if label == "new":
                    j = int(rng.integers(len(words) - 2))
                    words[j], words[j + 1] = words[j + 1], words[j]
                f.write(json.dumps({"text": " ".join(words), "label": label}) + "\n")
        out.append(str(path))
    return out[0], out[1]


def _finetune_cfg(base_cfg, train_file, validation_file, **model):
    return dataclasses.replace(
        base_cfg,
        model=dataclasses.replace(base_cfg.model, **model),
        task=TaskConfig(
            kind="classification",
            train_file=train_file,
            validation_file=validation_file,
            labels=("old", "new"),
        ),
        train=dataclasses.replace(base_cfg.train, num_steps=4, eval_every=2, log_every=2),
        checkpoint=dataclasses.replace(base_cfg.checkpoint, best_metric="accuracy", every_steps=4),
    ).validate()


def test_a_short_finetune_keeps_a_restorable_best_checkpoint(kjv_root, tmp_path_factory, tmp_path):
    base = trained(FAMILIES["decoder"], str(kjv_root), tmp_path_factory)
    train_file, validation_file = _task_files(tmp_path)
    cfg = preset_config(FAMILIES["decoder"], str(kjv_root))
    cfg = _finetune_cfg(cfg, train_file, validation_file, task_head="sequence", num_labels=2)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, init_from=base))
    work = tmp_path / "ft"
    out = trainer.train(cfg, str(work), devices=jax.devices()[:1], progress=False)
    evals = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in evals if "eval_macro_f1" in e]
    assert [e["step"] for e in evals] == [2, 4]
    best = json.loads((work / "best.json").read_text())
    assert best["metric"] == "accuracy"
    assert best["value"] == max(e["eval_accuracy"] for e in evals)
    assert (work / "best" / str(best["step"])).is_dir()
    assert (work / "checkpoints" / "4").is_dir()  # the latest stays for resuming
    # The best params give the logged accuracy on the whole validation split again.
    run = t5x_lite.load(str(work), "best")
    assert run.step == best["step"]
    data = task_pipeline.load(out["config"], run.tokenizer)
    logits = [
        np.asarray(run.model.apply(run.params, b)["class_logits"]) for b in data.eval_batches()
    ]
    pred = np.argmax(np.concatenate(logits)[: len(data.validation)], -1)
    gold = data.validation.arrays["class_labels"]
    assert len(gold) == 12
    assert task_metrics.accuracy(gold, pred) == pytest.approx(best["value"])
    # Its HF export (GPT2ForSequenceClassification, labels named) gives the same logits,
    # and transformers' text-classification pipeline on the raw texts our labels.
    hf_dir = tmp_path / "hf"
    export.export(str(work), "hf", str(hf_dir), step="best")
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(hf_dir).eval()
    assert type(hf).__name__ == "GPT2ForSequenceClassification"
    assert hf.config.id2label == {0: "old", 1: "new"}
    np.testing.assert_allclose(
        _hf(hf, data.validation.arrays).logits.numpy(),
        np.concatenate(logits)[: len(gold)],
        atol=1e-4,
        rtol=0,
    )
    texts = [json.loads(line)["text"] for line in Path(validation_file).read_text().splitlines()]
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    row, mask = data.validation.arrays["input_ids"][0], data.validation.arrays["attention_mask"][0]
    assert tok(texts[0]).input_ids == row[: mask.sum()].tolist()  # text + EOS, as our rows
    got = transformers.pipeline("text-classification", model=str(hf_dir), device="cpu")(texts)
    assert [g["label"] for g in got] == [("old", "new")[p] for p in pred]
    # Fine-tune from its own best checkpoint: PATH@best.
    again = dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, init_from=f"{work}@best", num_steps=1)
    )
    with pytest.raises(ConfigError, match=r"checkpoint\.best_metric='bleu'"):
        bad = dataclasses.replace(cfg.checkpoint, best_metric="bleu")
        trainer.train(
            dataclasses.replace(again, checkpoint=bad),
            str(tmp_path / "x"),
            devices=jax.devices()[:1],
            progress=False,
        )
    assert not (tmp_path / "x").exists()


def _hf(model, arrays):
    keys = ("input_ids", "attention_mask")
    with torch.no_grad():
        return model(**{k: torch.from_numpy(arrays[k].astype(np.int64)) for k, v in arrays.items()
                        if k in keys})  # fmt: skip


def _squad(text: str) -> list[str]:
    """SQuAD's answer normalisation: lowercase, no punctuation or articles, words."""
    text = "".join(c for c in text.lower() if c not in string.punctuation)
    return [w for w in text.split() if w not in ("a", "an", "the")]


def _f1(pred: str, gold: str) -> float:
    p, g = _squad(pred), _squad(gold)
    common = sum(min(p.count(w), g.count(w)) for w in set(p))
    return 0.0 if not common else 2 * common / (len(p) + len(g))


TOKEN_AND_SPAN = {
    "names": ("token_classification", "token", ("O", "NAME"), "macro_f1"),
    "relations": ("span_qa", "span", (), "f1"),
}


@pytest.mark.parametrize("task", list(TOKEN_AND_SPAN))
def test_token_and_span_tasks_finetune_evaluate_and_export(task, kjv_root, tmp_path_factory,
                                                           tmp_path, capsys):  # fmt: skip
    """The kjv_tasks names (token tags) and relations (span QA) files, a short fine-tune
    of the tiny GPT-2, its best checkpoint exported to HF (GPT2ForTokenClassification /
    GPT2ForQuestionAnswering): the logged metrics of the best step are recomputed from
    the HF model's logits over all 13 validation rows (two eval batches, the last
    padded) with scikit-learn (tags) or a brute-force best span and SQuAD's EM / F1."""
    from sklearn.metrics import accuracy_score, f1_score

    from t5x_lite.data import kjv_tasks

    kind, head, labels, metric = TOKEN_AND_SPAN[task]
    base = trained(FAMILIES["decoder"], str(kjv_root), tmp_path_factory)
    kjv_tasks.build(task, str(tmp_path / "files"), train_verses=48, seed=0)
    files = {}
    for split, n in (("train", 48), ("validation", 13)):
        lines = (tmp_path / "files" / f"{split}.jsonl").read_text().splitlines(True)[:n]
        files[split] = tmp_path / f"{split}.jsonl"
        files[split].write_text("".join(lines))
    cfg = preset_config(FAMILIES["decoder"], str(kjv_root))
    cfg = dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, task_head=head, num_labels=len(labels)),
        data=dataclasses.replace(cfg.data, seq_len=64),
        task=TaskConfig(kind=kind, train_file=str(files["train"]),
                        validation_file=str(files["validation"]), labels=labels),
        train=dataclasses.replace(cfg.train, num_steps=4, eval_every=2, log_every=2,
                                  init_from=base),
        checkpoint=dataclasses.replace(cfg.checkpoint, best_metric=metric, every_steps=4),
    ).validate()  # fmt: skip
    work = tmp_path / "ft"
    trainer.train(cfg, str(work), devices=jax.devices()[:1], progress=None, sample=False)
    # The end-of-run summary as run_train.py prints it (span QA logs no plain loss).
    printed = capsys.readouterr().out
    assert "eval at step 4: " in printed and f"{metric} " in printed
    assert f"best checkpoint: {work / 'best'}" in printed
    logged = map(json.loads, (work / "metrics.jsonl").read_text().splitlines())
    evals = {e["step"]: e for e in logged if f"eval_{metric}" in e}
    assert sorted(evals) == [2, 4]
    best = json.loads((work / "best.json").read_text())
    assert best["value"] == max(e[f"eval_{metric}"] for e in evals.values())
    hf_dir = tmp_path / "hf"
    export.export(str(work), "hf", str(hf_dir), step="best")
    run = t5x_lite.load(str(work), "best")
    val = task_pipeline.load(cfg, run.tokenizer).validation
    assert len(val) == 13
    ours = run.model.apply(run.params, val.arrays)
    if head == "token":
        hf = transformers.AutoModelForTokenClassification.from_pretrained(hf_dir).eval()
        assert type(hf).__name__ == "GPT2ForTokenClassification"
        assert hf.config.id2label == {0: "O", 1: "NAME"}
        logits = _hf(hf, val.arrays).logits.numpy()
        real = val.arrays["attention_mask"].astype(bool)
        np.testing.assert_allclose(logits[real], np.asarray(ours["tag_logits"])[real], atol=1e-4)
        keep = val.arrays["tag_weights"] > 0
        gold, pred = val.arrays["tag_labels"][keep], logits.argmax(-1)[keep]
        assert keep.sum() > 13 and set(gold.tolist()) == {0, 1}
        assert best["value"] == pytest.approx(f1_score(gold, pred, average="macro"))
        assert evals[best["step"]]["eval_accuracy"] == pytest.approx(accuracy_score(gold, pred))
        return
    hf = transformers.AutoModelForQuestionAnswering.from_pretrained(hf_dir).eval()
    assert type(hf).__name__ == "GPT2ForQuestionAnswering"
    out = _hf(hf, val.arrays)
    start, end = out.start_logits.numpy(), out.end_logits.numpy()
    real = val.arrays["attention_mask"].astype(bool)
    np.testing.assert_allclose(start[real], np.asarray(ours["start_logits"])[real], atol=1e-4)
    np.testing.assert_allclose(end[real], np.asarray(ours["end_logits"])[real], atol=1e-4)
    # The StableHLO export of a span head returns the pair of logits.
    shlo = tmp_path / "shlo"
    export.export(str(work), "stablehlo", str(shlo), step="best")
    exp = jax.export.deserialize((shlo / "forward.jax_export").read_bytes())
    meta, w = json.loads((shlo / "export.json").read_text()), np.load(shlo / "params.npz")
    assert meta["outputs"] == ["start_logits", "end_logits"]
    got = exp.call([w[n] for n in meta["params"]], *[val.arrays[n] for n in meta["inputs"]])
    for mine, key in zip(got, meta["outputs"], strict=True):
        np.testing.assert_allclose(np.asarray(mine), np.asarray(ours[key]), atol=1e-5, rtol=0)
    em, f1 = [], []
    for i, gold in enumerate(val.meta["answers"]):
        word = val.meta["token_word"][i]
        ctx = np.flatnonzero(word >= 0)
        spans = [(start[i, a] + end[i, b], a, b) for a in ctx for b in ctx
                 if a <= b < a + cfg.task.max_answer_len]  # fmt: skip
        _, a, b = max(spans)
        text = " ".join(val.meta["words"][i][word[a] : word[b] + 1])
        em.append(float(_squad(text) == _squad(gold)))
        f1.append(_f1(text, gold))
    assert best["value"] == pytest.approx(np.mean(f1))
    assert evals[best["step"]]["eval_exact_match"] == pytest.approx(np.mean(em))


def test_t5_label_words_are_scored_for_accuracy(kjv_root, kjv_tokenizer, tmp_path):
    """evaluation.task_metrics on a T5 (random weights): accuracy and macro-F1 of the
    label word with the highest summed log-likelihood, recomputed from the logits."""
    train_file, validation_file = _task_files(tmp_path)
    cfg = preset_config("t5_tiny", str(kjv_root))
    cfg = _finetune_cfg(cfg, train_file, validation_file)
    cfg = dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, tokenizer=kjv_tokenizer.path, target_len=4)
    )
    run = steps.for_config(cfg, partitioning.make_mesh(cfg.mesh, jax.devices()[:1]))
    params = models.init_params(cfg.model, jax.random.key(3))
    data = task_pipeline.load(cfg, kjv_tokenizer)
    batches = [partitioning.to_global(b, run.batch_sharding) for b in data.eval_batches()]
    got = evaluation.task_metrics(run, params, batches, data.validation, "classification")
    scores = []
    for i in range(2):  # numpy log-softmax of each label word's logits
        rows = {
            **data.validation.arrays,
            **{k: np.repeat(v[i : i + 1], 12, 0) for k, v in data.validation.candidates.items()},
        }
        logits = np.asarray(run.model.apply(params, rows)["logits"], np.float64)
        log_p = (
            logits
            - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
            - logits.max(-1, keepdims=True)
        )
        token = np.take_along_axis(log_p, rows["labels"][..., None], -1)[..., 0]
        scores.append((token * rows["loss_weights"]).sum(-1))
    pred = np.argmax(np.stack(scores, 1), 1)
    gold = data.validation.arrays["class_labels"]
    assert got["accuracy"] == pytest.approx(task_metrics.accuracy(gold, pred))
    assert got["macro_f1"] == pytest.approx(task_metrics.macro_f1(gold, pred))
    margin = scores[0] - scores[1]
    assert np.ptp(margin) > 1e-4  # the rows' inputs move the label words' scores
    assert evaluation.metric_names("classification", "encoder_decoder")[-1] == "macro_f1"
