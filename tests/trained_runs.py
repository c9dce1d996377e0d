"""Tiny trained runs shared by the loading and export tests.

``trained(name, data_dir, tmp_path_factory)`` trains preset ``name`` (``gpt2_tiny``,
``llama_tiny``, ``bert_tiny``, ``t5_tiny``) for :data:`STEPS` steps on kjv (batch 8,
32-token rows, one device, checkpoints at steps 2 and 4) once per test process and returns its
workdir: both test modules reuse the same runs.
"""

from __future__ import annotations

import jax
import pytest

from t5x_lite import config as C
from t5x_lite import presets, trainer

STEPS = 4
SAVE_EVERY = 2
FAMILIES = {"decoder": "gpt2_tiny", "encoder": "bert_tiny", "encoder_decoder": "t5_tiny"}
KJV = [
    "In the beginning God created the heaven and the earth.",
    "And God said, Let there be light: and there was light.",
    "  Jesus wept. Then said the Jews, Behold how he loved him!\n",
    "The LORD is my shepherd; I shall not want. 23:1",
]

_RUNS: dict[str, str] = {}


def preset_config(name: str, data_dir: str) -> C.Config:
    values = presets.load(name).to_dict()
    # One layer (each stack of T5): compiling, not stepping, is what these runs cost.
    values["model"].update({"num_layers": 1})
    if "num_decoder_layers" in values["model"]:
        values["model"]["num_decoder_layers"] = 1
    values["data"].update({"seq_len": 32, "data_dir": data_dir})
    values["optimizer"].update({"learning_rate": 3e-3, "warmup_steps": 1})
    values["train"].update(
        {
            "batch_size": 8,
            "num_steps": STEPS,
            "log_every": STEPS,
            "eval_every": 1000,
            "eval_batches": 0,
            "progress_bar": False,
            "plot_every": 1000,
        }
    )
    values["checkpoint"].update({"every_steps": SAVE_EVERY, "async_save": False})
    return C.from_dict(values)


def trained(name: str, data_dir: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The workdir of preset ``name`` trained for ``STEPS`` steps (once per process)."""
    if name not in _RUNS:
        workdir = str(tmp_path_factory.mktemp(f"run-{name}"))
        cfg = preset_config(name, data_dir)
        # One device: a fraction of the 8-device compile time (loading restores onto
        # one device whatever the mesh; test_train covers the sharded layouts).
        trainer.train(cfg, workdir, devices=jax.devices()[:1], progress=False, sample=False)
        _RUNS[name] = workdir
    return _RUNS[name]
