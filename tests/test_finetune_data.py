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
