"""Shared fixtures of the data tests: kjv prepared once per test session in a tmp dir.

Import the fixtures into a test module (``from data_fixtures import kjv_root,
kjv_tokenizer``) to use them; ``make_cfg`` builds a validated Config whose model family
matches the objective.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from t5x_lite import config as C

ARCH = {"decoder": "gpt2", "encoder": "bert", "encoder_decoder": "t5"}
FAMILY = {
    "causal_lm": "decoder",
    "prefix_lm": "decoder",
    "mlm": "encoder",
    "span_corruption": "encoder_decoder",
    "ul2": "encoder_decoder",
}


def make_cfg(
    root: Path | str,
    objective: str = "causal_lm",
    sentence: str = "none",
    seq_len: int = 128,
    batch_size: int = 16,
    vocab_size: int = 2048,
    **data: object,
) -> C.Config:
    family = FAMILY[objective]
    return C.from_dict(
        {
            "model": {
                "family": family,
                "arch": ARCH[family],
                "vocab_size": vocab_size,
                "max_seq_len": max(seq_len, 512),
                # NSP / SOP labels are consumed by the encoder's sentence head.
                "sentence_head": sentence != "none",
            },
            "data": {
                "corpus": "kjv",
                "data_dir": str(root),
                "objective": objective,
                "sentence_objective": sentence,
                "seq_len": seq_len,
                "prefetch_batches": 0,
                **data,
            },
            "train": {"batch_size": batch_size},
        }
    )


@pytest.fixture(scope="session")
def kjv_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kjv_data")


@pytest.fixture(scope="session")
def kjv_tokenizer(kjv_root: Path):
    from t5x_lite.data import pipeline

    return pipeline.get_tokenizer(make_cfg(kjv_root))
