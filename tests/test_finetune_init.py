"""train.init_from: a base's weights (a trained workdir or an HF directory) go into
the new model exactly, new heads are freshly initialised, bad bases are one-line
errors before anything is compiled or written."""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np
import pytest
import torch
import transformers
from trained_runs import FAMILIES, preset_config, trained

import t5x_lite
from t5x_lite import loading, models, trainer
from t5x_lite.config import ConfigError


@pytest.fixture(scope="module")
def gpt2_run(kjv_root, tmp_path_factory) -> str:
    return trained(FAMILIES["decoder"], str(kjv_root), tmp_path_factory)


def _flat(tree):
    return {"/".join(k): np.asarray(v) for k, v in _items(tree)}


def _items(tree, prefix=()):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _items(v, (*prefix, k))
        else:
            yield (*prefix, k), v


def test_a_trained_workdir_fills_everything_but_the_new_head(gpt2_run):
    base = t5x_lite.load(gpt2_run)
    head = dataclasses.replace(base.config.model, task_head="sequence", num_labels=3)
    checked = loading.check_init_from(head, gpt2_run)
    fresh = models.init_params(head, jax.random.key(7))
    params, new = loading.initial_params(head, checked, fresh)
    assert new == ["score/kernel"]
    got, want, init = _flat(params), _flat(base.params), _flat(fresh)
    assert "lm_head/kernel" not in got and "wte/embedding" in got
    for name, value in got.items():
        if name == "score/kernel":
            np.testing.assert_array_equal(value, init[name])
        else:
            np.testing.assert_array_equal(value, want[name])
    # Earlier step: PATH@STEP.
    at2 = loading.check_init_from(head, f"{gpt2_run}@2")
    assert at2.step == 2


def test_an_hf_directory_fills_the_pooler_from_bert_pretraining(tmp_path):
    hf_cfg = transformers.BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        type_vocab_size=2,
    )
    torch.manual_seed(0)
    hf = transformers.BertForPreTraining(hf_cfg).eval()
    hf.save_pretrained(tmp_path)
    cfg, _ = t5x_lite.convert.import_hf(str(tmp_path))
    head = dataclasses.replace(cfg, task_head="sequence", num_labels=2, sentence_head=False)
    base = loading.check_init_from(head, str(tmp_path))
    fresh = models.init_params(head, jax.random.key(1))
    params, new = loading.initial_params(head, base, fresh)
    assert new == ["classifier/bias", "classifier/kernel"]
    sd = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    got = _flat(params)
    np.testing.assert_array_equal(got["pooler/kernel"], sd["bert.pooler.dense.weight"].T)
    np.testing.assert_array_equal(got["pooler/bias"], sd["bert.pooler.dense.bias"])
    # The table is padded to model.vocab_pad_multiple rows; the real 64 are HF's.
    table = got["word_embeddings/embedding"]
    assert table.shape[0] == cfg.padded_vocab_size == 128
    np.testing.assert_array_equal(table[:64], sd["bert.embeddings.word_embeddings.weight"])
    q = sd["bert.encoder.layer.0.attention.self.query.weight"].T.reshape(16, 2, 8)
    np.testing.assert_array_equal(got["layers_0/attention/query/kernel"], q)
    assert not any(k.startswith("mlm_") or k.startswith("sentence_") for k in got)
    # A foreign HF directory has no t5x_lite tokenizer: the trainer asks for one.
    assert base.tokenizer is None


def test_the_trainer_starts_from_the_base(gpt2_run, kjv_root, tmp_path):
    cfg = preset_config(FAMILIES["decoder"], str(kjv_root))
    cfg = dataclasses.replace(
        cfg,
        train=dataclasses.replace(cfg.train, num_steps=1, init_from=gpt2_run),
        optimizer=dataclasses.replace(cfg.optimizer, learning_rate=1e-9, warmup_steps=0),
    )
    out = trainer.train(cfg, str(tmp_path), devices=jax.devices()[:1], progress=False, sample=False)
    assert out["config"].data.tokenizer == os.path.join(gpt2_run, "tokenizer.model")
    tuned, base = t5x_lite.load(str(tmp_path)), t5x_lite.load(gpt2_run)
    for name, value in _flat(tuned.params).items():  # one step of lr 1e-9 moves nothing
        np.testing.assert_allclose(value, _flat(base.params)[name], atol=1e-6, err_msg=name)


def test_bad_bases_are_one_line_errors(gpt2_run, kjv_root, tmp_path):
    model = t5x_lite.load(gpt2_run).config.model
    wider = dataclasses.replace(model, d_model=128)
    cases = {
        str(tmp_path / "nowhere"): "does not exist",
        f"{gpt2_run}@3": "no checkpoint at step 3",
        f"{gpt2_run}@x": "must be a step number or 'best'",
    }
    for spec, message in cases.items():
        with pytest.raises(ConfigError, match=message) as e:
            loading.check_init_from(model, spec)
        assert "\n" not in str(e.value) and "train.init_from=" in str(e.value)
    with pytest.raises(
        ConfigError,
        match=r"the base has model\.d_model=64, this config "
        r"has model\.d_model=128",
    ):
        loading.check_init_from(wider, gpt2_run)
    # Through the trainer: refused before the workdir is created.
    cfg = preset_config(FAMILIES["decoder"], str(kjv_root))
    cfg = dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, d_ff=128),
        train=dataclasses.replace(cfg.train, init_from=gpt2_run),
    )
    work = tmp_path / "refused"
    with pytest.raises(ConfigError, match=r"model\.d_ff"):
        trainer.train(cfg, str(work), devices=jax.devices()[:1], progress=False, sample=False)
    assert not work.exists()
