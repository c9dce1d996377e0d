"""Task files (CSV / JSONL) to records and rows, their one-line errors, and the task
metrics against scikit-learn and hand-computed SQuAD values."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import f1_score

from t5x_lite import task_metrics as tm
from t5x_lite.config import ConfigError, DataConfig, TaskConfig
from t5x_lite.data import task_rows, tasks

LABELS = ("old", "new")


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _read(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _task(path, **kw) -> TaskConfig:
    return TaskConfig(
        kind=kw.pop("kind", "classification"),
        train_file=path,
        labels=kw.pop("labels", LABELS),
        **kw,
    )


def test_classification_files_give_canonical_records(tmp_path):
    path = _jsonl(
        tmp_path / "a.jsonl",
        [{"text": "In the beginning", "label": "old"}, {"text": "Jesus wept.", "label": 1}],
    )
    assert tasks.read_records(path, _task(path)) == [
        {"text": "In the beginning", "label": 0},
        {"text": "Jesus wept.", "label": 1},
    ]
    csv = tmp_path / "b.csv"
    csv.write_text('sentence,other,y\n"Let there be light, said he",x,new\nAmen,y,old\n')
    got = tasks.read_records(
        str(csv), _task(str(csv), text_field="sentence", text_pair_field="other", label_field="y")
    )
    assert got == [
        {"text": "Let there be light, said he", "text_pair": "x", "label": 1},
        {"text": "Amen", "text_pair": "y", "label": 0},
    ]


def test_token_and_span_files(tmp_path):
    tok = _jsonl(tmp_path / "t.jsonl", [{"tokens": ["Moses", "spake"], "tags": ["PER", "O"]}])
    task = _task(tok, kind="token_classification", labels=("O", "PER"))
    assert tasks.read_records(tok, task) == [{"tokens": ["Moses", "spake"], "tags": [1, 0]}]
    qa = _jsonl(
        tmp_path / "q.jsonl",
        [{"question": "Who wept?", "context": "Jesus wept.", "answer": "Jesus", "answer_start": 0}],
    )
    recs = tasks.read_records(qa, _task(qa, kind="span_qa", labels=()))
    assert recs[0]["answer_start"] == 0


def test_bad_task_files_are_one_line_errors_naming_file_line_and_field(tmp_path):
    good = {"text": "a b", "label": "old"}
    cases = [
        ([good, {"text": "c", "label": "neither"}], {}, r"line 2: label 'neither' is not one of"),
        ([good, {"label": "old"}], {}, r"line 2: missing field 'text' \(task.text_field\)"),
        ([good, {"text": "x", "label": 5}], {}, "line 2: label 5 is not one of"),
        (
            [{"tokens": ["a", "b"], "tags": ["O"]}],
            {"kind": "token_classification"},
            "line 1: 2 tokens but 1 tags",
        ),
        (
            [{"question": "q", "context": "abc", "answer": "z", "answer_start": 1}],
            {"kind": "span_qa", "labels": ()},
            "line 1: answer 'z' is not at character 1",
        ),
    ]
    for i, (rows, kw, message) in enumerate(cases):
        path = _jsonl(tmp_path / f"bad{i}.jsonl", rows)
        if kw.get("kind") == "token_classification":
            kw["labels"] = ("O", "PER")
        with pytest.raises(ConfigError, match=message) as e:
            tasks.read_records(path, _task(path, **kw))
        assert path in str(e.value) and "\n" not in str(e.value)
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    with pytest.raises(ConfigError, match="is empty"):
        tasks.read_records(str(empty), _task(str(empty)))
    with pytest.raises(ConfigError, match="does not exist"):
        tasks.read_records(str(tmp_path / "none.jsonl"), _task("x"))
    bad_json = tmp_path / "j.jsonl"
    bad_json.write_text('{"text": "a", "label": "old"}\n{"text": \n')
    with pytest.raises(ConfigError, match="line 2: not valid JSON"):
        tasks.read_records(str(bad_json), _task(str(bad_json)))


def test_the_held_out_split_is_seeded_and_prepared_once_through_tfds(tmp_path):
    rows = [{"text": f"verse {i}", "label": LABELS[i % 2]} for i in range(20)]
    path = _jsonl(tmp_path / "a.jsonl", rows)
    task = _task(path, validation_fraction=0.25, split_seed=3)
    train, val = tasks.split_records(task)
    assert len(val) == 5 and len(train) == 15
    assert sorted(r["text"] for r in train + val) == sorted(r["text"] for r in rows)
    assert tasks.split_records(task) == (train, val)
    assert tasks.split_records(_task(path, validation_fraction=0.25, split_seed=4))[1] != val
    data = DataConfig(data_dir=str(tmp_path / "dd"))
    assert tasks.open_task(task, data) == {"train": train, "validation": val}
    folder = tasks.prepare(task, data)
    assert list(folder.rglob("*.array_record*"))


def test_rows_follow_the_worked_examples(kjv_tokenizer):
    tok = kjv_tokenizer
    recs = [{"text": "God created", "label": 1}]
    enc = task_rows.encode_split(recs, "classification", "encoder", tok, 8)
    ids = tok.encode("God created")
    assert enc.arrays["input_ids"][0].tolist() == [tok.cls_id, *ids, tok.sep_id] + [0] * (
        6 - len(ids)
    )
    assert enc.arrays["class_labels"].tolist() == [1]
    dec = task_rows.encode_split(recs, "classification", "decoder", tok, 8)
    n = len(ids) + 1
    assert dec.arrays["input_ids"][0, :n].tolist() == [*ids, tok.eos_id]
    assert dec.arrays["attention_mask"][0].tolist() == [1] * n + [0] * (8 - n)
    # Token classification: the first piece of a word carries its tag.
    words = ["Jehoshaphat", "slept"]
    pieces = [tok.encode(w) for w in words]
    assert len(pieces[0]) > 1
    rows = task_rows.encode_split(
        [{"tokens": words, "tags": [1, 0]}], "token_classification", "encoder", tok, 16
    )
    w = rows.arrays["tag_weights"][0]
    assert w[1] == 1 and w[1 + len(pieces[0])] == 1 and w.sum() == 2
    assert rows.arrays["tag_labels"][0, 1] == 1
    # Span QA: the answer's first and last pieces, and their context words.
    qa = [
        {
            "question": "Who wept?",
            "context": "Then Jesus wept sore.",
            "answer": "Jesus wept",
            "answer_start": 5,
        }
    ]
    sp = task_rows.encode_split(qa, "span_qa", "encoder", tok, 32)
    s, e = sp.arrays["start_positions"][0], sp.arrays["end_positions"][0]
    tw = sp.meta["token_word"][0]
    assert tw[s] == 1 and tw[e] == 2 and sp.arrays["span_weights"][0] == 1
    # T5 label words: shifted right from pad 0, EOS closing.
    t = task_rows.label_targets(tok, ("old", "new"), 4)
    old = tok.encode("old")
    assert t["labels"][0, : len(old) + 1].tolist() == [*old, tok.eos_id]
    assert t["decoder_input_ids"][0, : len(old) + 1].tolist() == [0, *old]


def test_macro_f1_matches_scikit_learn():
    rng = np.random.default_rng(0)
    for _ in range(20):
        gold, pred = rng.integers(0, 4, 30), rng.integers(0, 5, 30)
        assert tm.macro_f1(gold, pred) == pytest.approx(f1_score(gold, pred, average="macro"))
    assert tm.accuracy([1, 2, 3], [1, 2, 0]) == pytest.approx(2 / 3)


def test_squad_exact_match_and_f1_by_hand():
    assert tm.normalize_answer("The  Lord's  anointed!") == "lords anointed"
    assert tm.exact_match("the Lord", "Lord.") == 1.0
    assert tm.exact_match("Lord God", "Lord") == 0.0
    # "lord god of israel" vs "god of israel": 3 common; P = 3/4, R = 1 -> 6/7.
    assert tm.token_f1("the Lord God of Israel", "God of Israel") == pytest.approx(6 / 7)
    assert tm.token_f1("Moses", "Aaron") == 0.0
    assert tm.best_span(
        np.array([0.0, 5, 1, 9]), np.array([9.0, 0, 2, 1]), np.array([0, 1, 1, 1], bool), 2
    ) == (3, 3)


def test_task_metrics_of_token_and_span_outputs(kjv_tokenizer):
    from t5x_lite import evaluation

    tok = kjv_tokenizer
    words = ["Moses", "and", "Aaron"]
    split = task_rows.encode_split(
        [{"tokens": words, "tags": [1, 0, 1]}], "token_classification", "encoder", tok, 16
    )
    logits = np.zeros((1, 16, 2), np.float32)
    logits[0, :, 1] = 1.0  # every position says tag 1: 2 of the 3 labelled pieces right
    got = evaluation.metrics_of_outputs({"tag_logits": logits}, split, "token_classification")
    assert got["accuracy"] == pytest.approx(2 / 3)
    assert got["macro_f1"] == pytest.approx(f1_score([1, 0, 1], [1, 1, 1], average="macro"))
    qa = [
        {
            "question": "Who?",
            "context": "Then the LORD spake unto Moses",
            "answer": "Moses",
            "answer_start": 25,
        }
    ]
    split = task_rows.encode_split(qa, "span_qa", "encoder", tok, 32)
    start = np.full((1, 32), -5.0, np.float32)
    end = np.full((1, 32), -5.0, np.float32)
    tw = split.meta["token_word"][0]
    lord = int(np.flatnonzero(tw == 2)[0])  # predict "LORD spake unto Moses"
    start[0, lord] = 3.0
    end[0, int(np.flatnonzero(tw == 5)[-1])] = 3.0
    start[0, 0] = end[0, 0] = 9.0  # [CLS] is outside the context: never chosen
    got = evaluation.metrics_of_outputs(
        {"start_logits": start, "end_logits": end}, split, "span_qa", max_answer_len=30
    )
    # "lord spake unto moses" vs "moses": P = 1/4, R = 1 -> F1 = 0.4.
    assert got == {"exact_match": 0.0, "f1": pytest.approx(0.4)}
    short = evaluation.metrics_of_outputs(
        {"start_logits": start, "end_logits": end}, split, "span_qa", max_answer_len=1
    )
    assert short["f1"] in (0.0, 1.0)  # one token: a single word


def test_the_finetune_presets_load_and_keep_their_base_model():
    import dataclasses
    import glob
    import os

    from t5x_lite import presets
    from t5x_lite.loading import FREE_MODEL_FIELDS

    root = os.path.join(os.path.dirname(__file__), "..", "configs")
    bases = {"gpt2": "default", "bert": "bert_tiny", "t5": "t5_tiny"}
    files = sorted(glob.glob(os.path.join(root, "finetune", "kjv_*.py")))
    assert len(files) == 6
    kinds = {"names": ("token_classification", "macro_f1"), "relations": ("span_qa", "f1")}
    for path in files:
        cfg = presets.load_typed(path)
        base = presets.load_typed(bases[path.rsplit("_", 1)[1][:-3]]).model
        diff = {k for k, v in dataclasses.asdict(cfg.model).items() if getattr(base, k) != v} - set(
            FREE_MODEL_FIELDS
        )
        assert not diff, (path, diff)
        task = os.path.basename(path)[len("kjv_") :].rsplit("_", 1)[0]
        kind, best = kinds.get(task, ("classification", "accuracy"))
        assert (cfg.task.kind, cfg.checkpoint.best_metric) == (kind, best), path
        assert cfg.task.train_file == f"runs/tasks/{task}/train.jsonl"


def test_the_kjv_example_tasks(tmp_path):
    """word_order: every validation verse twice, original and shuffled with the same bag
    of words (a bag of words is at chance by construction); names: tags by the rule of
    kjv_tasks.is_name; relations: the answer is the span at answer_start. Files are
    refused when they exist."""
    import doctest

    from t5x_lite.data import kjv_tasks
    from t5x_lite.hf import heads

    for module in (kjv_tasks, heads):
        result = doctest.testmod(module)
        assert result.failed == 0
    assert doctest.testmod(kjv_tasks).attempted >= 6
    got = kjv_tasks.build("word_order", str(tmp_path / "wo"), train_verses=200, seed=0)
    assert got["validation"] == 1370 and got["train"] == 200
    val = _read(tmp_path / "wo" / "validation.jsonl")
    for a, b in zip(val[0::2], val[1::2], strict=True):
        assert (a["label"], b["label"]) == ("original", "shuffled")
        assert a["text"] != b["text"] and sorted(a["text"].split()) == sorted(b["text"].split())
        assert a["text"].split()[-1] == b["text"].split()[-1]
    with pytest.raises(ConfigError, match=r"already holds train\.jsonl"):
        kjv_tasks.build("word_order", str(tmp_path / "wo"), train_verses=10, seed=0)
    kjv_tasks.build("names", str(tmp_path / "names"), train_verses=50, seed=0)
    first = _read(tmp_path / "names" / "validation.jsonl")[0]
    # Genesis 25:1 (the first held-out chapter's first verse).
    assert first["tokens"][:4] == ["Then", "again", "Abraham", "took"]
    assert [w for w, t in zip(first["tokens"], first["tags"]) if t == "NAME"] == [
        "Abraham", "Keturah."
    ]  # fmt: skip
    with pytest.raises(ConfigError, match=r"train\.jsonl: not a classification file"):
        kjv_tasks.baseline(str(tmp_path / "names"))
    assert kjv_tasks.main(["interval", "--accuracy=0.9", "--n=0"]) == 2
    kjv_tasks.build("relations", str(tmp_path / "rel"), train_verses=0, seed=0)
    rows = [r for f in ("train", "validation") for r in _read(tmp_path / "rel" / f"{f}.jsonl")]
    assert len(rows) > 1000
    for r in rows:
        assert r["context"][r["answer_start"] :].startswith(r["answer"])
        asked = [w for w in r["question"].rstrip("?").split()[1:] if w[0].isupper()]
        assert len(asked) == 1 and asked[0] in r["context"], r
