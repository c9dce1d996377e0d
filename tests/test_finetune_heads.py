"""The fine-tuning heads against Hugging Face's classes on the same weights (torch CPU,
float32, 1e-4): BertForSequenceClassification, GPT2ForSequenceClassification,
BertForTokenClassification, BertForQuestionAnswering.

Each case builds a tiny HF pretraining model with random weights, imports it with
``convert.import_hf``, copies its backbone into the HF task class and the HF head's
weights into our head parameters (``kernel = weight.T``), and compares the logits on
a right-padded batch."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
import torch
import transformers

from t5x_lite import convert, models
from t5x_lite.models.heads import last_token_index

BERT = dict(
    vocab_size=64,
    hidden_size=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=32,
    max_position_embeddings=16,
    type_vocab_size=2,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)
GPT2 = dict(
    vocab_size=64,
    n_embd=16,
    n_layer=1,
    n_head=2,
    n_positions=16,
    resid_pdrop=0.0,
    embd_pdrop=0.0,
    attn_pdrop=0.0,
    pad_token_id=0,
)


def _batch(with_types: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 64, size=(3, 10)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 6:] = 0  # right padding
    mask[2, 3:] = 0
    ids = ids * mask
    batch = {"input_ids": ids, "attention_mask": mask}
    if with_types:
        batch["token_type_ids"] = (np.arange(10)[None] >= 4).astype(np.int32) * mask
    return batch


def _ours(tmp_path, pretrain, task_head: str, num_labels: int, **free):
    torch.manual_seed(0)
    pretrain.save_pretrained(tmp_path)
    cfg, params = convert.import_hf(str(tmp_path))
    cfg = dataclasses.replace(
        cfg, task_head=task_head, num_labels=num_labels, sentence_head=False, **free
    )
    fresh = models.init_params(cfg, jax.random.key(0))
    keep = {k: v for k, v in params.items() if k in fresh}
    return cfg, {**fresh, **keep}


def _dense(weight: torch.nn.Module) -> dict[str, np.ndarray]:
    out = {"kernel": weight.weight.detach().numpy().T.copy()}
    if weight.bias is not None:
        out["bias"] = weight.bias.detach().numpy().copy()
    return out


def _torch(batch):
    return {k: torch.as_tensor(v, dtype=torch.long) for k, v in batch.items()}


def _bert(tmp_path, cls, task_head, num_labels):
    hf_cfg = transformers.BertConfig(**BERT, num_labels=num_labels)
    torch.manual_seed(1)
    pretrain = transformers.BertForPreTraining(hf_cfg).eval()
    task = cls(hf_cfg).eval()
    missing = task.load_state_dict(pretrain.state_dict(), strict=False).missing_keys
    assert all(not k.startswith("bert.") or "pooler" in k for k in missing), missing
    cfg, params = _ours(tmp_path, pretrain, task_head, num_labels)
    return hf_cfg, task, cfg, params


def test_bert_sequence_classification_matches_hf(tmp_path):
    _, hf, cfg, params = _bert(tmp_path, transformers.BertForSequenceClassification, "sequence", 3)
    params["classifier"] = _dense(hf.classifier)
    batch = _batch(with_types=True)
    ours = np.asarray(models.get(cfg).apply(params, batch)["class_logits"])
    with torch.no_grad():
        ref = hf(**_torch(batch)).logits.numpy()
    assert ours.shape == (3, 3)
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_bert_token_classification_matches_hf(tmp_path):
    _, hf, cfg, params = _bert(tmp_path, transformers.BertForTokenClassification, "token", 5)
    params["classifier"] = _dense(hf.classifier)
    batch = _batch(with_types=True)
    ours = np.asarray(models.get(cfg).apply(params, batch)["tag_logits"])
    with torch.no_grad():
        ref = hf(**_torch(batch)).logits.numpy()
    real = batch["attention_mask"].astype(bool)
    np.testing.assert_allclose(ours[real], ref[real], atol=1e-4)


def test_bert_question_answering_matches_hf(tmp_path):
    _, hf, cfg, params = _bert(tmp_path, transformers.BertForQuestionAnswering, "span", 2)
    params["qa_outputs"] = _dense(hf.qa_outputs)
    batch = _batch(with_types=True)
    out = models.get(cfg).apply(params, batch)
    with torch.no_grad():
        ref = hf(**_torch(batch))
    real = batch["attention_mask"].astype(bool)
    np.testing.assert_allclose(
        np.asarray(out["start_logits"])[real], ref.start_logits.numpy()[real], atol=1e-4
    )
    np.testing.assert_allclose(
        np.asarray(out["end_logits"])[real], ref.end_logits.numpy()[real], atol=1e-4
    )


def test_gpt2_sequence_classification_reads_the_last_real_token_as_hf(tmp_path):
    hf_cfg = transformers.GPT2Config(**GPT2, num_labels=3)
    torch.manual_seed(2)
    pretrain = transformers.GPT2LMHeadModel(hf_cfg).eval()
    hf = transformers.GPT2ForSequenceClassification(hf_cfg).eval()
    hf.load_state_dict(pretrain.state_dict(), strict=False)
    cfg, params = _ours(tmp_path, pretrain, "sequence", 3)
    assert "lm_head" not in params
    params["score"] = _dense(hf.score)
    batch = _batch(with_types=False)
    ours = np.asarray(models.get(cfg).apply(params, batch)["class_logits"])
    with torch.no_grad():
        ref = hf(**_torch(batch)).logits.numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-4)


@pytest.mark.parametrize(
    "mask,last", [([1, 1, 1, 0], 2), ([0, 1, 1, 1], 3), ([1, 0, 0, 0], 0), ([1, 1, 1, 1], 3)]
)
def test_the_extract_token_is_the_last_real_one(mask, last):
    got = last_token_index({"attention_mask": np.asarray([mask])}, 4)
    assert int(got[0]) == last
