"""t5x_lite.load: a trained workdir (latest or chosen step) or an HF directory as one
object with config, model, params and tokenizer; one-line errors for bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
import transformers
from trained_runs import FAMILIES, KJV, SAVE_EVERY, STEPS, trained

import t5x_lite
from t5x_lite import export, loading, models
from t5x_lite.config import Config, ConfigError
from t5x_lite.data.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def workdir(kjv_root, tmp_path_factory) -> str:
    return trained(FAMILIES["decoder"], str(kjv_root), tmp_path_factory)


def _batch(tok, texts=KJV, length=8) -> dict[str, np.ndarray]:
    ids = np.asarray([tok.encode(t)[:length] for t in texts], np.int32)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def _ce(run, batch) -> float:
    """Mean next-token cross-entropy of ``batch`` under ``run``."""
    log_p = np.asarray(jax.nn.log_softmax(run.logits(batch)[:, :-1], -1))
    labels = batch["input_ids"][:, 1:, None]
    return float(-np.take_along_axis(log_p, labels, -1).mean())


def test_a_workdir_loads_its_latest_checkpoint(workdir):
    run = t5x_lite.load(workdir)
    assert run.kind == "workdir" and run.step == STEPS and run.note == ""
    assert isinstance(run.config, Config)
    assert run.config == loading.read_config(workdir)
    assert isinstance(run.model, models.BaseModel)
    assert run.model.config == run.config.model
    assert isinstance(run.tokenizer, Tokenizer)
    assert run.tokenizer.decode(run.tokenizer.encode(KJV[0])) == KJV[0]
    leaves = jax.tree_util.tree_leaves(run.params)
    assert leaves and all(x.dtype == np.float32 for x in leaves)
    assert all(x.devices() == {jax.devices()[0]} for x in leaves)
    # The tree is the model's: the same structure and shapes as a fresh init.
    fresh = models.init_params(run.config.model, jax.random.key(0))
    assert jax.tree_util.tree_structure(fresh) == jax.tree_util.tree_structure(run.params)
    assert [x.shape for x in jax.tree_util.tree_leaves(fresh)] == [x.shape for x in leaves]
    batch = _batch(run.tokenizer)
    logits = run.logits(batch)
    assert logits.shape == (*batch["input_ids"].shape, run.config.model.vocab_size)
    # The model object's scoring works on the loaded params.
    preds = run.model.predict_batch(run.params, batch)["predictions"]
    np.testing.assert_array_equal(np.asarray(preds), logits.argmax(-1))


def test_a_chosen_step_loads_that_checkpoint(workdir):
    early, late = t5x_lite.load(workdir, step=SAVE_EVERY), t5x_lite.load(workdir, step=STEPS)
    assert (early.step, late.step) == (SAVE_EVERY, STEPS)
    diffs = jax.tree_util.tree_leaves(
        jax.tree_util.tree_map(lambda a, b: float(np.abs(a - b).max()), early.params, late.params)
    )
    assert max(diffs) > 1e-4  # two more updates moved the weights
    # ... and lowered the loss on kjv text.
    batch = _batch(late.tokenizer)
    assert _ce(late, batch) < _ce(early, batch)


def test_an_exported_hf_directory_loads_with_our_tokenizer(workdir, tmp_path):
    out = str(tmp_path / "hf")
    export.export(workdir, "hf", out)
    run, hf = t5x_lite.load(workdir), t5x_lite.load(out)
    assert hf.kind == "hf" and hf.step is None and hf.note == ""
    assert hf.config.model.family == "decoder" and isinstance(hf.config, Config)
    assert isinstance(hf.tokenizer, Tokenizer)
    assert hf.tokenizer.sha256 == run.tokenizer.sha256
    batch = _batch(run.tokenizer)
    np.testing.assert_allclose(hf.logits(batch), run.logits(batch), atol=1e-5, rtol=0)


def test_a_foreign_hf_directory_loads_without_a_tokenizer(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path)
    run = t5x_lite.load(str(tmp_path))
    assert run.tokenizer is None
    assert "AutoTokenizer" in run.note and "t5x_lite" in run.note
    assert run.config.model.vocab_size == 64
    ids = np.arange(8, dtype=np.int32)[None]
    assert run.logits({"input_ids": ids}).shape == (1, 8, 64)


def _one_line(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text, text
    return text


def test_bad_inputs_are_one_line_errors(workdir, tmp_path):
    with pytest.raises(ConfigError) as e:
        t5x_lite.load(str(tmp_path / "nowhere"))
    assert "does not exist" in _one_line(e)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError) as e:
        t5x_lite.load(str(empty))
    assert "neither a t5x_lite workdir nor a Hugging Face directory" in _one_line(e)

    # A workdir that never reached its first checkpoint.
    fresh = tmp_path / "fresh"
    (fresh / "checkpoints").mkdir(parents=True)
    shutil.copy(os.path.join(workdir, "config.json"), fresh)
    with pytest.raises(ConfigError) as e:
        t5x_lite.load(str(fresh))
    assert "holds no checkpoint" in _one_line(e)

    with pytest.raises(ConfigError) as e:
        t5x_lite.load(workdir, step=3)
    assert f"no checkpoint at step 3 (saved steps: {SAVE_EVERY}, {STEPS})" in _one_line(e)

    # A config.json that no longer describes the saved weights.
    edited = tmp_path / "edited"
    shutil.copytree(workdir, edited)
    saved = json.loads((edited / "config.json").read_text())
    saved["model"]["d_ff"] *= 2
    (edited / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ConfigError) as e:
        t5x_lite.load(str(edited))
    assert f"checkpoint {edited}/checkpoints/{STEPS} does not fit" in _one_line(e)

    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ConfigError) as e:
        t5x_lite.load(str(hf_dir), step=2)
    assert "has no steps" in _one_line(e)


def test_import_t5x_lite_stays_light():
    """``t5x_lite.load`` imports the loader (jax, orbax, models) on its first call only."""
    code = (
        "import sys, t5x_lite; "
        "print(sorted(m for m in ('jax', 'orbax', 't5x_lite.loading', 'flax') if m in sys.modules))"
    )
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(t5x_lite.__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
