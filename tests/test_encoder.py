"""Encoder-only family (BERT, RoBERTa, ALBERT) against Hugging Face transformers.

Reference: randomly initialised ``transformers`` models on torch CPU (float32, eager
attention), saved with ``save_pretrained`` and read through ``t5x_lite.convert``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from t5x_lite import models, partitioning, presets
from t5x_lite.config import ConfigError, MeshConfig, ModelConfig
from t5x_lite.convert import export_hf, import_hf
from t5x_lite.hf import bert as hf_bert

B, T = 4, 12
# Real tokens per row: full, right-padded, right-padded, left-padded (the last one
# checks RoBERTa's pad-skipping positions; BERT/ALBERT count pads, as HF does).
SPANS = ((0, 12), (0, 9), (0, 5), (5, 12))
COMMON = dict(
    vocab_size=97,
    hidden_size=32,
    num_attention_heads=4,
    num_hidden_layers=2,
    intermediate_size=37,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)


def _hf_models() -> dict[str, tuple[type, object]]:
    t = transformers
    return {
        "bert_pretraining": (
            t.BertForPreTraining,
            t.BertConfig(max_position_embeddings=20, type_vocab_size=3, **COMMON),
        ),
        "bert_mlm": (
            t.BertForMaskedLM,
            t.BertConfig(max_position_embeddings=20, type_vocab_size=2, **COMMON),
        ),
        # HF's own convention: pad 1, positions start at pad + 1 = 2, one segment type.
        "roberta_mlm": (
            t.RobertaForMaskedLM,
            t.RobertaConfig(
                max_position_embeddings=22, type_vocab_size=1, pad_token_id=1, **COMMON
            ),
        ),
        # Awkward: embedding_size 24 != hidden 32; one layer group shared by 3 layers.
        "albert_pretraining": (
            t.AlbertForPreTraining,
            t.AlbertConfig(
                embedding_size=24,
                max_position_embeddings=20,
                type_vocab_size=2,
                hidden_act="gelu_new",
                **{**COMMON, "num_hidden_layers": 3},
            ),
        ),
        # Unshared: one layer group per layer (num_hidden_groups == num_hidden_layers).
        "albert_mlm": (
            t.AlbertForMaskedLM,
            t.AlbertConfig(
                embedding_size=16,
                max_position_embeddings=20,
                type_vocab_size=2,
                num_hidden_groups=2,
                **COMMON,
            ),
        ),
    }


def _batch(type_vocab: int, pad_id: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    ids = rng.integers(3, COMMON["vocab_size"], size=(B, T)).astype(np.int32)
    start, stop = np.asarray(SPANS).T[:, :, None]
    mask = ((np.arange(T)[None] >= start) & (np.arange(T)[None] < stop)).astype(np.int32)
    ids = np.where(mask == 1, ids, pad_id).astype(np.int32)
    types = rng.integers(0, type_vocab, size=(B, T)).astype(np.int32) * mask
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def _torch_out(model, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v).long() for k, v in batch.items()})
    logits = getattr(out, "prediction_logits", None)
    logits = out.logits if logits is None else logits
    sent = getattr(out, "seq_relationship_logits", None)
    sent = getattr(out, "sop_logits", None) if sent is None else sent
    return logits.numpy(), None if sent is None else sent.numpy()


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """Each reference model, with every parameter perturbed (so LayerNorm scales and
    biases are not the trivial 1 / 0 of a fresh init), saved to its own directory."""
    torch.manual_seed(0)
    out = {}
    for name, (cls, config) in _hf_models().items():
        config._attn_implementation = "eager"
        model = cls(config).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
        path = str(tmp_path_factory.mktemp(name))
        model.save_pretrained(path)
        out[name] = (cls, model, path)
    return out


@pytest.fixture(scope="module")
def imported(hf_dirs):
    """``import_hf`` of each reference directory: ``{name: (cfg, params)}``."""
    return {name: import_hf(path) for name, (_, _, path) in hf_dirs.items()}


@pytest.mark.parametrize("name", list(_hf_models()))
def test_hf_parity_and_roundtrip(name, hf_dirs, imported, tmp_path):
    cls, ref, _ = hf_dirs[name]
    cfg, params = imported[name]
    hf_cfg = ref.config
    assert cfg.family == "encoder" and cfg.arch == hf_cfg.model_type
    assert cfg.sentence_head == name.endswith("pretraining")
    if name == "albert_pretraining":
        assert cfg.embedding_dim == 24 and cfg.d_model == 32 and cfg.share_layers
    if name == "albert_mlm":
        assert cfg.embedding_dim == 16 and cfg.num_layers == 2 and not cfg.share_layers
        assert "layers_1" in params and "layer" not in params
    if name.startswith("roberta"):
        assert cfg.position_offset == 2 and cfg.max_seq_len == 20

    batch = _batch(hf_cfg.type_vocab_size, hf_cfg.pad_token_id)
    want_logits, want_sent = _torch_out(ref, batch)
    got = jax.jit(models.build(cfg).apply)({"params": params}, batch)
    real = batch["attention_mask"].astype(bool)
    assert got["logits"].dtype == jnp.float32
    err = np.abs(np.asarray(got["logits"]) - want_logits)[real].max()
    assert err < 1e-4, f"MLM logits differ from transformers by {err}"
    if cfg.sentence_head:
        # Rows whose first token is real (HF lets pad queries attend, we do not).
        first = real[:, 0]
        err = np.abs(np.asarray(got["sentence_logits"]) - want_sent)[first].max()
        assert err < 1e-4, f"NSP/SOP logits differ from transformers by {err}"
    else:
        assert "sentence_logits" not in got

    out_dir = str(tmp_path / "export")
    export_hf(cfg, params, out_dir)
    with open(os.path.join(out_dir, "config.json")) as f:
        assert json.load(f)["architectures"] == [cls.__name__]
    back, info = cls.from_pretrained(out_dir, attn_implementation="eager", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    back_logits, back_sent = _torch_out(back.eval(), batch)
    np.testing.assert_allclose(back_logits, want_logits, rtol=0, atol=1e-6)
    if cfg.sentence_head:
        np.testing.assert_allclose(back_sent, want_sent, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- packing

TINY = dict(
    family="encoder",
    vocab_size=128,
    d_model=32,
    num_heads=4,
    num_layers=2,
    d_ff=64,
    max_seq_len=16,
    type_vocab_size=2,
    sentence_head=True,
    activation="gelu",
)


@pytest.mark.parametrize("name", ["bert_pretraining", "roberta_mlm", "albert_pretraining"])
def test_packed_documents_match_each_alone(name, imported):
    """[doc A (5) | doc B (7) | pad (4)] in one row == A and B each in its own row."""
    cfg, params = imported[name]
    rng = np.random.default_rng(1)
    a = rng.integers(3, cfg.vocab_size, 5).astype(np.int32)
    b = rng.integers(3, cfg.vocab_size, 7).astype(np.int32)
    ta = np.array([0, 0, 1, 1, 1], np.int32) % cfg.type_vocab_size
    tb = np.array([0, 0, 0, 1, 1, 1, 1], np.int32) % cfg.type_vocab_size
    ids = np.concatenate([a, b, np.zeros(4, np.int32)])
    types = np.concatenate([ta, tb, np.zeros(4, np.int32)])
    packed = {
        "input_ids": ids[None],
        "token_type_ids": types[None],
        "segment_ids": np.array([[1] * 5 + [2] * 7 + [0] * 4], np.int32),
        "positions": np.array([list(range(5)) + list(range(7)) + [0] * 4], np.int32),
    }
    # Rows: A alone, B alone, and (as a control) A and B as one unpacked document.
    alone = {k: np.zeros((3, 16), np.int32) for k in ("input_ids", "token_type_ids")}
    alone["attention_mask"] = np.zeros((3, 16), np.int32)
    for row, (x, tt) in enumerate(((a, ta), (b, tb), (ids[:12], types[:12]))):
        alone["input_ids"][row, : len(x)] = x
        alone["token_type_ids"][row, : len(x)] = tt
        alone["attention_mask"][row, : len(x)] = 1
    apply = jax.jit(models.build(cfg).apply)
    got = np.asarray(apply({"params": params}, packed)["logits"])[0]
    ref = np.asarray(apply({"params": params}, alone)["logits"])
    np.testing.assert_allclose(got[:5], ref[0, :5], atol=1e-5, rtol=0)
    np.testing.assert_allclose(got[5:12], ref[1, :7], atol=1e-5, rtol=0)
    # Not trivially equal: without the segment mask, B's logits change.
    assert np.abs(ref[2, 5:12] - ref[1, :7]).max() > 1e-3


# --------------------------------------------------------------------------- sharding


def _spec(x) -> tuple:
    spec = tuple(x.sharding.spec)
    return spec + (None,) * (x.ndim - len(spec))


def test_sharded_init_and_forward(sharded_vs_host):
    cfg = ModelConfig(arch="bert", **TINY)
    mesh = partitioning.make_mesh(MeshConfig(data=1, fsdp=2, tensor=4))
    params = models.init_sharded(cfg, jax.random.key(2), mesh)
    layer = params["layers_0"]
    expected = {
        "word_embeddings": (params["word_embeddings"]["embedding"], ("tensor", "fsdp")),
        "position_embeddings": (params["position_embeddings"]["embedding"], (None, "fsdp")),
        "token_type": (params["token_type_embeddings"]["embedding"], (None, "fsdp")),
        "query": (layer["attention"]["query"]["kernel"], ("fsdp", "tensor", None)),
        "query_bias": (layer["attention"]["query"]["bias"], ("tensor", None)),
        "out": (layer["attention"]["out"]["kernel"], ("tensor", None, "fsdp")),
        "wi": (layer["mlp"]["wi"]["kernel"], ("fsdp", "tensor")),
        "wo": (layer["mlp"]["wo"]["kernel"], ("tensor", "fsdp")),
        "norm": (layer["mlp_norm"]["scale"], ("fsdp",)),
        "mlm_bias": (params["mlm_bias"], ("tensor",)),
        "pooler": (params["pooler"]["kernel"], ("fsdp", "tensor")),
        "classifier": (params["sentence_classifier"]["kernel"], ("fsdp", None)),
    }
    for name, (x, spec) in expected.items():
        assert _spec(x) == spec, (name, x.sharding.spec)
    # A sharded matrix really is split: each device holds 1/8 of the word table.
    shard = params["word_embeddings"]["embedding"].addressable_shards[0].data
    assert shard.shape == (128 // 4, 32 // 2)

    got = sharded_vs_host(models.build(cfg), params, _batch(2, 0), mesh)  # batch [4, T]
    # The activation constraints are in force: logits split over batch and vocabulary.
    assert {s.data.shape for s in got["logits"].addressable_shards} == {(4 // 2, T, 128 // 4)}


# --------------------------------------------------------------------------- counting

PRESETS = ("bert_tiny", "bert_base", "albert_tiny", "roberta_tiny")


@pytest.mark.parametrize("preset", PRESETS)
def test_count_params_matches_tree_and_transformers(preset):
    cfg = presets.to_typed(presets.load(preset)).model
    counted = models.count_params(cfg)
    shapes = jax.eval_shape(lambda: models.init_params(cfg, jax.random.key(0)))
    assert counted["total"] == sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
    # Independent count: the equivalent transformers model, built on the meta device.
    hf_config = transformers.AutoConfig.for_model(**hf_bert.hf_config_of(cfg))
    cls = getattr(transformers, hf_config.architectures[0])
    with torch.device("meta"):
        model = cls(hf_config)
    assert counted["total"] == sum(p.numel() for p in model.parameters())
    tables = sum(
        m.weight.numel()
        for n, m in model.named_modules()
        if n.endswith(("word_embeddings", "position_embeddings", "token_type_embeddings"))
    )
    assert counted["non_embedding"] == counted["total"] - tables
    if preset == "bert_base":
        assert counted["total"] == 110_106_428  # BertForPreTraining, "110M"


# --------------------------------------------------------------------------- bad input


def test_missing_tensor_names_it(hf_dirs, tmp_path):
    _, _, path = hf_dirs["bert_pretraining"]
    tensors = load_file(os.path.join(path, "model.safetensors"))
    del tensors["cls.seq_relationship.weight"]
    bad = tmp_path / "bad"
    bad.mkdir()
    save_file(tensors, str(bad / "model.safetensors"))
    with open(os.path.join(path, "config.json")) as f:
        (bad / "config.json").write_text(f.read())
    with pytest.raises(
        ConfigError, match=r"'cls\.seq_relationship\.weight' is missing from the safetensors"
    ) as err:
        import_hf(str(bad))
    assert str(bad) in str(err.value) and "\n" not in str(err.value)


def _with_tensors(hf_dirs, model: str, dst, edit) -> str:
    """A copy of ``hf_dirs[model]`` whose safetensors dict went through ``edit(tensors)``."""
    _, _, path = hf_dirs[model]
    tensors = load_file(os.path.join(path, "model.safetensors"))
    edit(tensors)
    dst.mkdir()
    save_file(tensors, str(dst / "model.safetensors"))
    with open(os.path.join(path, "config.json")) as f:
        (dst / "config.json").write_text(f.read())
    return str(dst)


@pytest.mark.parametrize(
    "model, extra",
    [
        ("bert_mlm", "classifier.weight"),  # a ...ForSequenceClassification head
        # A relative-position BERT's table, in a file whose config says 'absolute'.
        ("bert_pretraining", "bert.encoder.layer.0.attention.self.distance_embedding.weight"),
        ("roberta_mlm", "classifier.out_proj.weight"),  # RobertaForSequenceClassification
        # A third layer group for an unshared 2-layer ALBERT.
        ("albert_mlm", "albert.encoder.albert_layer_groups.2.albert_layers.0.ffn.bias"),
    ],
)
def test_unexpected_tensor_names_it(hf_dirs, tmp_path, model, extra):
    bad = _with_tensors(
        hf_dirs, model, tmp_path / "bad", lambda t: t.update({extra: np.ones((3, 4), np.float32)})
    )
    with pytest.raises(
        ConfigError, match=re.escape(f"unexpected tensor '{extra}' (1 in all)")
    ) as err:
        import_hf(bad)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)


def _add_allowed_extras(model: str, t: dict) -> None:
    """What older transformers saved: index buffers, tied decoder copies, an unused pooler."""
    p, head = {
        "bert": ("bert.", "cls.predictions."),
        "roberta": ("roberta.", "lm_head."),
        "albert": ("albert.", "predictions."),
    }[model.split("_")[0]]
    n_pos = t[p + "embeddings.position_embeddings.weight"].shape[0]
    t[p + "embeddings.position_ids"] = np.arange(n_pos, dtype=np.int64)[None]
    t[p + "embeddings.token_type_ids"] = np.zeros((1, n_pos), np.int64)
    t[head + "decoder.weight"] = t[p + "embeddings.word_embeddings.weight"].copy()
    t[head + "decoder.bias"] = t[head + "bias"].copy()
    if model.endswith("_mlm"):
        d = COMMON["hidden_size"]
        pooler = p + ("pooler." if model.startswith("albert") else "pooler.dense.")
        t[pooler + "weight"] = np.ones((d, d), np.float32)
        t[pooler + "bias"] = np.ones((d,), np.float32)


@pytest.mark.parametrize("model", list(_hf_models()))
def test_allowed_extras_still_import(hf_dirs, imported, tmp_path, model):
    path = _with_tensors(
        hf_dirs, model, tmp_path / "old", functools.partial(_add_allowed_extras, model)
    )
    cfg, params = import_hf(path)
    want_cfg, want = imported[model]  # the same weights without the extras
    assert cfg == want_cfg and not (cfg.sentence_head and model.endswith("_mlm"))
    assert jax.tree.structure(params) == jax.tree.structure(want)
    for got, ref in zip(jax.tree.leaves(params), jax.tree.leaves(want)):
        np.testing.assert_array_equal(got, ref)
    ref_model = hf_dirs[model][1]
    np.testing.assert_array_equal(
        params["word_embeddings"]["embedding"],
        ref_model.get_input_embeddings().weight.detach().numpy(),
    )


@pytest.mark.parametrize(
    "model, copy, of",
    [
        ("bert_mlm", "cls.predictions.decoder.weight", "bert.embeddings.word_embeddings.weight"),
        ("roberta_mlm", "lm_head.decoder.weight", "roberta.embeddings.word_embeddings.weight"),
        ("albert_pretraining", "predictions.decoder.bias", "predictions.bias"),
    ],
)
def test_untied_decoder_copy_is_error(hf_dirs, tmp_path, model, copy, of):
    def edit(t: dict) -> None:
        t[copy] = t[of].copy()
        t[copy][0] += 1e-3

    bad = _with_tensors(hf_dirs, model, tmp_path / "untied", edit)
    with pytest.raises(ConfigError, match=re.escape(f"'{copy}' differs from '{of}'")) as err:
        import_hf(bad)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "model, field, value",
    [
        ("bert_mlm", "position_embedding_type", "relative_key"),
        ("albert_pretraining", "inner_group_num", 2),
        ("albert_pretraining", "num_hidden_groups", 2),
        ("bert_mlm", "hidden_act", "mish"),
    ],
)
def test_unsupported_field_is_one_line_error(hf_dirs, tmp_path, model, field, value):
    _, _, path = hf_dirs[model]
    bad = tmp_path / "bad"
    bad.mkdir()
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    config[field] = value
    (bad / "config.json").write_text(json.dumps(config))
    os.symlink(os.path.join(path, "model.safetensors"), bad / "model.safetensors")
    with pytest.raises(ConfigError, match=f"{field}={value!r}") as err:
        import_hf(str(bad))
    assert "\n" not in str(err.value)


def test_bert_with_factorised_embeddings_is_rejected():
    cfg = ModelConfig(arch="bert", embed_dim=16, **TINY)
    with pytest.raises(ConfigError, match=r"model\.embed_dim=16"):
        models.count_params(cfg)


@pytest.fixture(scope="module")
def dropout_case(imported):
    """bert_pretraining with dropout: loss-and-gradient function, values without remat."""
    cfg, params = imported["bert_pretraining"]
    cfg = dataclasses.replace(cfg, dropout_rate=0.1)
    batch = _batch(cfg.type_vocab_size, 0)
    # rbg keys: same semantics as threefry for dropout, a fraction of the compile time.
    key = jax.random.key(4, impl="rbg")

    @functools.partial(jax.jit, static_argnums=1)
    def loss_and_grad(p, c):
        def loss(p):
            out = models.build(c).apply(
                {"params": p}, batch, deterministic=False, rngs={"dropout": key}
            )
            return (out["logits"] ** 2).mean(), out["logits"]

        return jax.value_and_grad(loss, has_aux=True)(p)

    det_logits = jax.jit(models.build(cfg).apply)({"params": params}, batch)["logits"]
    ref = loss_and_grad(params, cfg)
    # Dropout acts only when not deterministic.
    assert np.abs(np.asarray(ref[0][1]) - np.asarray(det_logits)).max() > 1e-3
    return cfg, params, loss_and_grad, ref


@pytest.mark.parametrize("policy", ["full", "dots"])
def test_dropout_and_remat(dropout_case, policy):
    """Remat policies leave values and gradients of a dropout forward unchanged."""
    cfg, params, loss_and_grad, ((ref_loss, ref_logits), ref_grad) = dropout_case
    (loss, logits), grad = loss_and_grad(params, dataclasses.replace(cfg, remat_policy=policy))
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    np.testing.assert_allclose(logits, ref_logits, atol=1e-5, rtol=0)
    # Recomputation reorders float32 sums: compare at each leaf's own scale, floored at
    # 1e-3 of the largest gradient: the key-bias gradient is zero in exact arithmetic
    # (softmax ignores a constant per query), so it holds only rounding noise.
    floor = 1e-3 * max(float(np.abs(g).max()) for g in jax.tree.leaves(ref_grad))
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(
            a, b, atol=1e-5 * max(float(np.abs(b).max()), floor), rtol=1e-4
        ),
        grad,
        ref_grad,
    )


@pytest.mark.parametrize("preset", ["bert_tiny", "albert_tiny"])
def test_bfloat16_param_dtype_applies_to_every_param(preset):
    cfg = dataclasses.replace(presets.to_typed(presets.load(preset)).model, param_dtype="bfloat16")
    init = jax.eval_shape(lambda: models.init_params(cfg, jax.random.key(0)))
    leaves = jax.tree_util.tree_leaves_with_path(init)
    dtypes = {jax.tree_util.keystr(k): x.dtype for k, x in leaves}
    assert any("embed_norm" in k and "bias" in k for k in dtypes)  # norms are in the tree
    assert set(dtypes.values()) == {jnp.dtype("bfloat16")}, dtypes
