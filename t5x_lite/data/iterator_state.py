"""The data iterator and its checkpointable state.

The state is grain's (the number of batches consumed) plus a fingerprint of the
settings that shape the stream; restoring under different settings is a ConfigError
naming the field, e.g. ``data iterator state was saved with data.seq_len=128, the
config has 256``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from t5x_lite.config import Config, ConfigError, objectives, row_lengths
from t5x_lite.data.tokenizer import Tokenizer

STATE_FORMAT = 1
# Settings added after states were first saved, with the value such a state had.
_DEFAULTED = {"data.unique_tokens": 0}


def _later_keys() -> frozenset[str]:
    """Keys that states saved before they were recorded lack: a missing one is "not
    recorded" and not checked (every other key must be present and equal). They are
    ``data.text_key`` and every objective's own fields (from the objective table)."""
    fields = {f for n in objectives.names() for f in objectives.spec(n).fields}
    return frozenset({"data.text_key"} | {f"data.{f}" for f in fields})


def fingerprint(cfg: Config, tokenizer: Tokenizer) -> dict[str, Any]:
    """The settings that shape the training stream, keyed by config path.

    Left out: data_dir (a cache location), eval_split, on_bad_utf8 (skip or stop, never
    other rows), prefetch_batches, tokenizer paths and sizes (tokenizer_sha256 covers
    them). E.g. a ul2 config gives ``{"data.corpus": "kjv", ..., "data.ul2_mixture":
    "R:0.4,S:0.2,X:0.4", "train.batch_size": 16, "tokenizer_sha256": "ab12..."}``.
    """
    d = cfg.data
    # Settings each objective's rows depend on beyond the common ones (fields another
    # objective ignores stay out, so changing them does not block a restore).
    extra = {f"data.{f}": getattr(d, f) for f in objectives.spec(d.objective).fields}
    return {
        "data.corpus": d.corpus,
        "data.text_key": d.text_key,
        "data.objective": d.objective,
        "data.sentence_objective": d.sentence_objective,
        "data.seq_len": d.seq_len,
        "data.target_len": row_lengths(d).target_len,
        "data.seed": d.seed,
        "data.train_split": d.train_split,
        "data.num_workers": d.num_workers,  # grain's state layout depends on it
        "data.unique_tokens": d.unique_tokens,
        "train.batch_size": cfg.train.batch_size,
        "tokenizer_sha256": tokenizer.sha256,
        **extra,
    }


class DataIterator:
    """Infinite iterator of numpy batches with a checkpointable state."""

    def __init__(self, dataset: Any, fingerprint: dict[str, Any]):
        self._iter = dataset.__iter__()
        self._fingerprint = fingerprint

    def __iter__(self) -> DataIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._iter)

    def get_state(self) -> dict[str, Any]:
        """JSON-serialisable state: grain's position plus the stream's settings."""
        return {"format": STATE_FORMAT, "grain": self._iter.get_state(), **self._fingerprint}

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (from :meth:`get_state` of a matching config)."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ConfigError(f"data iterator state has an unknown format: {str(state)[:80]}")
        later = _later_keys()
        for k, v in self._fingerprint.items():
            if k in later and k not in state:
                continue  # saved before this setting was recorded
            if k in _DEFAULTED and k not in state and v == _DEFAULTED[k]:
                continue  # saved before this setting existed, when it had its default
            if state.get(k) != v:
                raise ConfigError(
                    f"data iterator state was saved with {k}={state.get(k)!r}, the config has {v!r}"
                )
        self._iter.set_state(state["grain"])
