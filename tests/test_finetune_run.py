"""A short fine-tune end to end: a task file, init_from a tiny trained GPT-2, the
full-split task metrics in metrics.jsonl, the best checkpoint in best/ restorable with
t5x_lite.load(workdir, "best"); and T5 label words scored through the same loop."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest
from trained_runs import FAMILIES, preset_config, trained

import t5x_lite
from t5x_lite import evaluation, models, partitioning, steps, task_metrics, trainer
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
