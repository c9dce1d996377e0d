"""Fine-tuning task files (CSV / TSV / JSONL) read, checked and prepared as TFDS.

:func:`read_records` turns one file into canonical records (one-line errors naming the
file, the line and the field); :func:`prepare` writes the train and validation records
once as a TFDS ``array_record`` dataset under ``<data_dir>/t5x_lite_tasks/`` (keyed by
a hash of the files' bytes and the task settings, so an edited file gives a new
dataset and never overwrites the old one) and :func:`open_task` reads them back.

Formats (field names from ``task.*_field``):

* ``classification``: ``text``, optional ``text_pair`` (used when the first record
  has it; then every record must), ``label`` (a name in ``task.labels``, or an int
  index into it). Canonical: ``{"text": ..., "text_pair": ..., "label": 1}``.
* ``token_classification``: ``tokens`` and ``tags``, lists in JSONL or
  space-separated strings in CSV, of equal length; tags in ``task.labels``.
  Canonical: ``{"tokens": ["In", "the"], "tags": [0, 0]}``.
* ``span_qa``: ``question``, ``context``, ``answer`` and ``answer_start`` (character
  offset of the answer in the context, checked). Canonical: the same four fields.

Example, a JSONL classification file with ``task.labels=("old", "new")``::

    {"text": "In the beginning God created", "label": "old"}
    {"text": "Jesus wept.", "label": 1}

gives ``[{"text": "In the beginning God created", "label": 0}, {"text": "Jesus wept.",
"label": 1}]``. Without ``task.validation_file`` a fraction ``task.validation_fraction``
of the training records (at least one) is held out, chosen by a permutation seeded with
``task.split_seed``, the rest kept in file order.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from t5x_lite.config import ConfigError, DataConfig, TaskConfig
from t5x_lite.data.corpora import _prepare, data_dir_of

SUFFIXES = (".csv", ".tsv", ".jsonl")


def _rows(path: str) -> list[tuple[int, dict[str, Any]]]:
    """``[(line, raw record)]`` of a CSV / TSV (header row) or JSONL file."""
    if not os.path.isfile(path):
        raise ConfigError(f"task file {path} does not exist")
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise ConfigError(f"task file {path}: unknown format (expected {', '.join(SUFFIXES)})")
    out: list[tuple[int, dict[str, Any]]] = []
    with open(path, encoding="utf-8", newline="") as f:
        if suffix == ".jsonl":
            for i, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ConfigError(f"{path} line {i}: not valid JSON ({e.msg})") from None
                if not isinstance(value, dict):
                    raise ConfigError(f"{path} line {i}: a JSON object per line expected")
                out.append((i, value))
        else:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            for row in reader:
                out.append((reader.line_num, {k: v for k, v in row.items() if k is not None}))
    if not out:
        raise ConfigError(f"task file {path} is empty (no records)")
    return out


def _field(path: str, line: int, raw: dict[str, Any], name: str, option: str) -> Any:
    value = raw.get(name)
    if value is None or value == "":
        raise ConfigError(f"{path} line {line}: missing field {name!r} (task.{option})")
    return value


def _label(path: str, line: int, value: Any, labels: tuple[str, ...], field: str) -> int:
    if isinstance(value, str) and value in labels:
        return labels.index(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(labels):
        return value
    if isinstance(value, str) and value.isdigit() and int(value) < len(labels):
        return int(value)
    raise ConfigError(
        f"{path} line {line}: {field} {value!r} is not one of task.labels "
        f"({', '.join(labels)}) nor an index into them"
    )


def _words(path: str, line: int, value: Any, name: str) -> list[str]:
    if isinstance(value, str):
        value = value.split()
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{path} line {line}: field {name!r} must be a non-empty list")
    return [str(v) for v in value]


def read_records(path: str, task: TaskConfig) -> list[dict[str, Any]]:
    """The canonical records of ``path`` (see the module docstring)."""
    rows = _rows(path)
    out: list[dict[str, Any]] = []
    pair = task.kind == "classification" and rows[0][1].get(task.text_pair_field) is not None
    for line, raw in rows:
        if task.kind == "classification":
            rec = {"text": str(_field(path, line, raw, task.text_field, "text_field"))}
            if pair:
                rec["text_pair"] = str(
                    _field(path, line, raw, task.text_pair_field, "text_pair_field")
                )
            value = _field(path, line, raw, task.label_field, "label_field")
            rec["label"] = _label(path, line, value, task.labels, "label")
        elif task.kind == "token_classification":
            tokens = _words(
                path,
                line,
                _field(path, line, raw, task.tokens_field, "tokens_field"),
                task.tokens_field,
            )
            tags = _words(
                path, line, _field(path, line, raw, task.tags_field, "tags_field"), task.tags_field
            )
            if len(tags) != len(tokens):
                raise ConfigError(
                    f"{path} line {line}: {len(tokens)} {task.tokens_field} but {len(tags)} "
                    f"{task.tags_field}"
                )
            rec = {
                "tokens": tokens,
                "tags": [_label(path, line, t, task.labels, "tag") for t in tags],
            }
        else:  # span_qa
            rec = {
                "question": str(_field(path, line, raw, task.question_field, "question_field")),
                "context": str(_field(path, line, raw, task.context_field, "context_field")),
                "answer": str(_field(path, line, raw, task.answer_field, "answer_field")),
            }
            start = _field(path, line, raw, task.answer_start_field, "answer_start_field")
            try:
                start = int(start)
            except (TypeError, ValueError):
                start = -1
            if rec["context"][start : start + len(rec["answer"])] != rec["answer"] or start < 0:
                raise ConfigError(
                    f"{path} line {line}: {task.answer_field} {rec['answer'][:40]!r} is not at "
                    f"character {raw.get(task.answer_start_field)!r} of {task.context_field}"
                )
            rec["answer_start"] = start
        out.append(rec)
    return out


def split_records(
    task: TaskConfig,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(train, validation)`` records of ``task`` (validation file or held-out part)."""
    train = read_records(task.train_file, task)
    if task.validation_file:
        return train, read_records(task.validation_file, task)
    if len(train) < 2:
        raise ConfigError(
            f"task file {task.train_file} has {len(train)} record; holding out a validation "
            "part needs at least 2 (or set task.validation_file)"
        )
    k = min(len(train) - 1, max(1, round(len(train) * task.validation_fraction)))
    held = set(np.random.default_rng(task.split_seed).permutation(len(train))[:k].tolist())
    return (
        [r for i, r in enumerate(train) if i not in held],
        [r for i, r in enumerate(train) if i in held],
    )


class TaskRecords(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Canonical task records (one JSON string per example), train and validation."""

    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, *, records: dict[str, list[dict]] | None = None, **kwargs: Any) -> None:
        self._records = records or {}
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict({"record": tfds.features.Text()}),
            disable_shuffling=True,  # records stay in file order
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
        return {name: self._generate_examples(recs) for name, recs in self._records.items()}

    def _generate_examples(self, records: list[dict]) -> Any:
        for i, rec in enumerate(records):
            yield i, {"record": json.dumps(rec, sort_keys=True)}


def task_key(task: TaskConfig) -> str:
    """Hash of the task files' bytes and the settings that shape their records."""
    h = hashlib.sha256()
    for name in (task.train_file, task.validation_file):
        h.update(name.encode() + b"\0")
        if name and os.path.isfile(name):
            h.update(Path(name).read_bytes())
    fields = {k: v for k, v in vars(task).items() if not k.startswith("_")}
    h.update(json.dumps(fields, sort_keys=True, default=list).encode())
    return h.hexdigest()[:16]


def prepare(task: TaskConfig, data: DataConfig) -> Path:
    """The folder of the prepared dataset of ``task`` (read and checked, then written
    once as array_record; an existing one is reused)."""
    folder = data_dir_of(data) / "t5x_lite_tasks" / f"{task.kind}-{task_key(task)}"
    builder = TaskRecords(data_dir=str(folder), file_format="array_record")
    if not builder.is_prepared():
        train, validation = split_records(task)  # every check before anything is written
        builder = TaskRecords(
            records={"train": train, "validation": validation},
            data_dir=str(folder),
            file_format="array_record",
        )
        _prepare(builder)
    return folder


def open_task(task: TaskConfig, data: DataConfig) -> dict[str, list[dict[str, Any]]]:
    """``{"train": [...], "validation": [...]}`` canonical records, read from the
    prepared TFDS dataset (prepared first when needed)."""
    folder = prepare(task, data)
    builder = TaskRecords(data_dir=str(folder), file_format="array_record")
    out = {}
    for split in ("train", "validation"):
        source = builder.as_data_source(split=split)
        items = source.__getitems__(list(range(len(source))))
        out[split] = [json.loads(r["record"]) for r in items]
    return out
