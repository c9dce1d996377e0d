"""PEFT through the trainer: a LoRA run on a trained gpt2_tiny base (train.init_from).

Its checkpoint holds only the trainable tree (a small fraction of the base's bytes on
disk) and ``peft.json`` references the base by path and fingerprint; resuming on a
different base is refused in one line with the workdir untouched; ``t5x_lite.load``
gives the merged model, whose logits equal the base combined with the restored LoRA
factors.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np
import pytest
from trained_runs import FAMILIES, KJV, SAVE_EVERY, preset_config, trained

import t5x_lite
from t5x_lite import checkpoints, loading, models, peft, trainer
from t5x_lite.config import ConfigError, PeftConfig


def _dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def _lora_cfg(base_dir: str, data_dir: str, init_from: str, steps: int = 3):
    cfg = preset_config(FAMILIES["decoder"], data_dir)
    return dataclasses.replace(
        cfg,
        train=dataclasses.replace(cfg.train, num_steps=steps, init_from=init_from),
        checkpoint=dataclasses.replace(cfg.checkpoint, every_steps=steps),
        peft=PeftConfig(method="lora", rank=2, targets=("query", "value")),
    ).validate()


@pytest.fixture(scope="module")
def base_dir(kjv_root, tmp_path_factory) -> str:
    return trained(FAMILIES["decoder"], str(kjv_root), tmp_path_factory)


def test_lora_run_saves_only_deltas_and_loads_merged(base_dir, kjv_root, tmp_path, capsys):
    work = str(tmp_path / "lora")
    cfg = _lora_cfg(base_dir, str(kjv_root), base_dir)
    out = trainer.train(cfg, work, devices=jax.devices()[:1], progress=True, sample=True)
    assert out["steps"] == 3 and out["sample"]
    printed = capsys.readouterr()
    assert "trainable " in printed.out + printed.err

    with open(os.path.join(work, "peft.json")) as f:
        manifest = json.load(f)
    base = t5x_lite.load(base_dir)
    assert manifest["base"]["path"] == base.path
    assert manifest["base"]["fingerprint"] == peft.fingerprint(base.config.model, base.params)
    counts = models.count_params(cfg.model)
    n_base = counts["total"] + counts["vocab_padding"]  # as stored
    # 1 layer x 2 targets x (A [E, 2] + B [2, H, D]) with E = H * D.
    e = cfg.model.d_model
    assert manifest["trainable"] == 2 * 4 * e and manifest["total"] == n_base + 8 * e

    # On disk: the PEFT checkpoint (LoRA + Adam moments) against the base's (all
    # params + Adam moments), step for step.
    peft_bytes = _dir_bytes(os.path.join(work, "checkpoints", "3"))
    base_bytes = _dir_bytes(os.path.join(base_dir, "checkpoints", str(SAVE_EVERY)))
    assert peft_bytes < 0.1 * base_bytes, (peft_bytes, base_bytes)

    # t5x_lite.load: the base with the restored LoRA merged in.
    run = t5x_lite.load(work)
    assert run.step == 3 and "lora" in run.note
    ids = np.asarray([run.tokenizer.encode(KJV[0])], np.int32)
    added = peft.Peft(cfg.peft, cfg.model)
    ckpt = checkpoints.Checkpointer(os.path.join(work, "checkpoints"), cfg.checkpoint, False)
    trained_lora = ckpt.restore_params(3, jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype), added.abstract()))  # fmt: skip
    ckpt.close()
    assert float(np.abs(trained_lora["layers_0"]["attn"]["query"]["lora_b"]).max()) > 0
    want = base.model.apply(added.combine(base.params, trained_lora), {"input_ids": ids})
    np.testing.assert_allclose(run.logits({"input_ids": ids}), want["logits"], atol=1e-5)
    assert np.max(np.abs(run.logits({"input_ids": ids}) - base.logits({"input_ids": ids}))) > 0

    # Resuming on another base (the same run's earlier step) is one line; nothing moves.
    before = {f: os.path.getmtime(os.path.join(work, f)) for f in ("peft.json", "config.json")}
    longer = _lora_cfg(base_dir, str(kjv_root), f"{base_dir}@{SAVE_EVERY}", steps=4)
    with pytest.raises(ConfigError) as e:
        trainer.train(longer, work, devices=jax.devices()[:1], progress=False, sample=False)
    msg = str(e.value)
    assert "\n" not in msg and "is not the base" in msg and "fingerprint" in msg
    assert before == {f: os.path.getmtime(os.path.join(work, f)) for f in before}
    assert loading.checkpoint_steps(work) == [3]


def test_peft_without_init_from_is_one_line(kjv_root, tmp_path):
    cfg = _lora_cfg("", str(kjv_root), "")
    with pytest.raises(ConfigError, match=r"^peft.method='lora' trains on a frozen base: set "):
        trainer.train(cfg, str(tmp_path / "w"), devices=jax.devices()[:1], progress=False)
    assert not os.path.exists(tmp_path / "w")
