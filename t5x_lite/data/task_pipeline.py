"""The fine-tuning input pipeline: a task's rows as training batches and a full,
padded validation split (what :mod:`t5x_lite.data.pipeline` is for pretraining).

``load(cfg, tokenizer) -> TaskData`` reads the task through TFDS
(:func:`t5x_lite.data.tasks.open_task`) and encodes both splits
(:func:`t5x_lite.data.task_rows.encode_split`). ``TaskData.train_iterator(p, P)`` is
an infinite, checkpointable stream (grain: rows reshuffled every epoch with
``data.seed``, global batch ``k`` = rows ``[kB, (k+1)B)``, process ``p`` its slice);
``TaskData.eval_batches(p, P)`` covers every validation row once, the last batch
padded with rows of weight 0 (``class_weights``, ``tag_weights``, ``span_weights``,
``loss_weights`` all 0), so metrics are over the full split.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from t5x_lite.config import Config, ConfigError
from t5x_lite.data import tasks
from t5x_lite.data.iterator_state import DataIterator
from t5x_lite.data.pipeline import row_index_dataset
from t5x_lite.data.task_rows import TaskSplit, encode_split
from t5x_lite.data.tokenizer import Tokenizer

WEIGHT_KEYS = ("class_weights", "tag_weights", "span_weights", "loss_weights")


class _Gather:
    """``(epochs [b], rows [b]) -> {key: array[rows]}``."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays

    def __call__(self, batch: tuple[np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
        rows = np.asarray(batch[1], np.int64)
        return {k: v[rows] for k, v in self.arrays.items()}


@dataclasses.dataclass
class TaskData:
    cfg: Config
    tokenizer: Tokenizer
    train: TaskSplit
    validation: TaskSplit

    def fingerprint(self) -> dict[str, Any]:
        t = self.cfg.task
        return {
            "task.kind": t.kind,
            "task.key": tasks.task_key(t),
            "data.seq_len": self.cfg.data.seq_len,
            "data.seed": self.cfg.data.seed,
            "train.batch_size": self.cfg.train.batch_size,
            "tokenizer_sha256": self.tokenizer.sha256,
        }

    def train_iterator(self, process_index: int = 0, process_count: int = 1) -> DataIterator:
        from t5x_lite.data import rng

        seed = rng.derive_key(self.cfg.data.seed, "task", "rows") % (2**32)
        rows = row_index_dataset(
            len(self.train),
            seed,
            self.cfg.train.batch_size // process_count,
            process_index,
            process_count,
        )
        return DataIterator(
            rows.map(_Gather(self.train.arrays)).to_iter_dataset(), self.fingerprint()
        )

    def eval_batches(
        self, process_index: int = 0, process_count: int = 1
    ) -> list[dict[str, np.ndarray]]:
        """Every validation row once, in order; the last global batch padded."""
        b = self.cfg.train.batch_size
        n = len(self.validation)
        total = -(-n // b) * b
        out = []
        for start in range(0, total, b):
            idx = np.arange(start, start + b)
            real = idx < n
            batch = {k: v[np.minimum(idx, n - 1)] for k, v in self.validation.arrays.items()}
            for k in WEIGHT_KEYS:
                if k in batch:
                    shape = (b,) + (1,) * (batch[k].ndim - 1)
                    batch[k] = batch[k] * real.reshape(shape).astype(batch[k].dtype)
            per = b // process_count
            out.append(
                {k: v[process_index * per : (process_index + 1) * per] for k, v in batch.items()}
            )
        return out


def load(cfg: Config, tokenizer: Tokenizer) -> TaskData:
    """Both splits of ``cfg.task`` encoded with ``tokenizer`` (one-line errors)."""
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise ConfigError(
            f"model.vocab_size={cfg.model.vocab_size} is smaller than the vocabulary of "
            f"{tokenizer.path} ({tokenizer.vocab_size})"
        )
    records = tasks.open_task(cfg.task, cfg.data)
    target_len = cfg.data.target_len or 8
    splits = {
        name: encode_split(
            records[name],
            cfg.task.kind,
            cfg.model.family,
            tokenizer,
            cfg.data.seq_len,
            cfg.task.labels,
            target_len,
        )
        for name in ("train", "validation")
    }
    return TaskData(cfg, tokenizer, splits["train"], splits["validation"])
