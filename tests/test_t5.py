"""Encoder-decoder family (T5, T5 v1.1) against Hugging Face transformers on torch CPU.

The reference is an independently implemented model: a randomly initialised
``T5ForConditionalGeneration`` (eager attention, float32) with every weight and norm
scale drawn at random, saved with ``save_pretrained`` and read through
:func:`t5x_lite.convert.import_hf` (the shared harness: ``hf_parity``). Shapes are
awkward on purpose: heads x d_kv != d_model, more decoder than encoder layers, and
few relative-position buckets with a short max distance so that the logarithmic
buckets and the clamp both occur.
"""

from __future__ import annotations

import dataclasses
import os

import hf_parity
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from jax.sharding import PartitionSpec as P

from t5x_lite import convert, layers, models, partitioning, presets
from t5x_lite.config import ConfigError, MeshConfig, ModelConfig
from t5x_lite.models import encoder_decoder

VOCAB = 101
B, S, T = 3, 14, 11  # batch, encoder length, decoder length
ENC_LENS, DEC_LENS = (14, 9, 5), (11, 7, 4)


def _t5(ffn: str) -> hf_parity.Spec:
    """Random T5; the gated-gelu (v1.1) model gets its own, untied ``lm_head``."""
    arch = "t5" if ffn == "relu" else "t5_v1_1"
    return hf_parity.Spec(
        transformers.T5Config,
        transformers.T5ForConditionalGeneration,
        dict(
            vocab_size=VOCAB, d_model=24, d_kv=10, num_heads=3, d_ff=40,  # 3 * 10 != 24
            num_layers=2, num_decoder_layers=3, relative_attention_num_buckets=8,
            relative_attention_max_distance=12, dropout_rate=0.0, layer_norm_epsilon=1e-3,
            feed_forward_proj=ffn, tie_word_embeddings=ffn == "relu",
        ),
        our_cfg=dict(
            family="encoder_decoder", arch=arch, vocab_size=VOCAB, d_model=24, head_size=10,
            num_layers=2, decoder_layers=3, relative_num_buckets=8, relative_max_distance=12,
            norm_eps=1e-3,
        ),
        seed=1,
        reinit=lambda name, p: (
            (1.0 if "layer_norm" in name else 0.0)
            + (1.0 if "relative_attention_bias" in name else 0.3) * torch.randn_like(p)
        ),
        untie_head=ffn != "relu",
    )  # fmt: skip


_HF = {"relu": _t5("relu"), "gated-gelu": _t5("gated-gelu")}


def _padded_batch(seed: int = 0) -> dict[str, np.ndarray]:
    """Random ids; rows padded on the right to ``ENC_LENS`` / ``DEC_LENS``."""
    rng = np.random.RandomState(seed)
    batch = {
        "input_ids": rng.randint(2, VOCAB, (B, S)).astype(np.int32),
        "decoder_input_ids": rng.randint(2, VOCAB, (B, T)).astype(np.int32),
        "attention_mask": (np.arange(S)[None] < np.array(ENC_LENS)[:, None]).astype(np.int32),
        "decoder_attention_mask": (np.arange(T)[None] < np.array(DEC_LENS)[:, None]).astype(
            np.int32
        ),
    }
    batch["input_ids"] *= batch["attention_mask"]
    batch["decoder_input_ids"] *= batch["decoder_attention_mask"]
    return batch


def _logits(cfg: ModelConfig, params, batch) -> np.ndarray:
    return hf_parity.our_outputs(cfg, params, batch)["logits"]


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> hf_parity.Cases:
    """Each reference model saved, imported and run on ``_padded_batch()``, built once."""
    return hf_parity.Cases(tmp_path_factory, _HF, lambda spec: _padded_batch())


@pytest.fixture(scope="module", params=list(_HF))
def hf_case(request, cases) -> hf_parity.Case:
    return cases[request.param]


@pytest.fixture(scope="module")
def relu_case(cases) -> hf_parity.Case:
    return cases["relu"]


@pytest.fixture(scope="module")
def gated_case(cases) -> hf_parity.Case:
    return cases["gated-gelu"]


def _preset(name: str) -> ModelConfig:
    return presets.load_typed(name).model


# --------------------------------------------------------------------------- HF parity


_BUCKET_CASES = [(bd, nb, md) for bd in (True, False) for nb, md in ((8, 12), (32, 128), (6, 7))]


def test_relative_position_buckets_match_transformers():
    rel = np.arange(-140, 141)[None, :]  # [1, 281] key - query distances
    ours = jax.jit(
        lambda r: [encoder_decoder.relative_position_bucket(r, *c) for c in _BUCKET_CASES]
    )(jnp.asarray(rel))
    for case, got in zip(_BUCKET_CASES, ours, strict=True):
        ref = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
            torch.tensor(rel), *case
        ).numpy()
        np.testing.assert_array_equal(np.asarray(got), ref, err_msg=str(case))
        assert ref.max() == case[1] - 1  # distances beyond max_distance reach the last bucket


def test_import_matches_transformers(hf_case):
    # logits on the real decoder tokens within 1e-4; the reference reaches |logit| > 1
    ours = hf_parity.check_import(hf_case, atol=1e-4)["logits"]
    assert ours.shape == (B, T, VOCAB)
    assert ("logits_dense" in hf_case.params["decoder"]) == (hf_case.arch == "t5_v1_1")


def test_encode_then_decode_match_transformers(gated_case):
    """The two halves run separately (as cached decoding will) give the same logits."""
    cfg, params, batch = gated_case.cfg, gated_case.params, gated_case.batch
    model = encoder_decoder.Model(cfg)
    encoded = jax.jit(lambda p, b: model.apply({"params": p}, b, method=model.encode))(
        params, batch
    )
    assert encoded.shape == (B, S, cfg.d_model)
    decode = jax.jit(lambda p, e, b: model.apply({"params": p}, e, b, method=model.decode))
    logits = np.asarray(decode(params, encoded, batch)["logits"])
    hf_parity.assert_outputs_close(
        {"logits": logits}, gated_case.ref, atol=1e-4, valid=gated_case.valid
    )


def test_export_loads_in_transformers_with_identical_logits(hf_case, tmp_path):
    reloaded = hf_parity.check_export(hf_case, tmp_path, atol=1e-6)
    tied = reloaded.lm_head.weight.data_ptr() == reloaded.shared.weight.data_ptr()
    assert tied == (hf_case.arch == "t5")


# --------------------------------------------------------------------------- packing


def test_packed_examples_match_examples_alone(gated_case):
    """Two (input, target) pairs in one row == each pair alone (padding masked)."""
    cfg, params = gated_case.cfg, gated_case.params
    rng = np.random.RandomState(7)
    enc_lens, dec_lens = (6, 5), (4, 5)
    enc = [rng.randint(2, VOCAB, n).astype(np.int32) for n in enc_lens]
    dec = [rng.randint(2, VOCAB, n).astype(np.int32) for n in dec_lens]

    def row(parts, length):
        ids, seg, pos = (np.zeros(length, np.int32) for _ in range(3))
        start = 0
        for k, x in enumerate(parts):
            ids[start : start + len(x)] = x
            seg[start : start + len(x)] = k + 1
            pos[start : start + len(x)] = np.arange(len(x))
            start += len(x)
        return ids, seg, pos

    ids, seg, pos = row(enc, S)  # 6 + 5 tokens, 3 pad
    dids, dseg, dpos = row(dec, T)  # 4 + 5 tokens, 2 pad
    packed = {
        "input_ids": ids[None], "segment_ids": seg[None], "positions": pos[None],
        "decoder_input_ids": dids[None], "decoder_segment_ids": dseg[None],
        "decoder_positions": dpos[None],
    }  # fmt: skip
    alone = {"input_ids": np.zeros((2, S), np.int32), "attention_mask": np.zeros((2, S), np.int32)}
    alone |= {
        "decoder_input_ids": np.zeros((2, T), np.int32),
        "decoder_attention_mask": np.zeros((2, T), np.int32),
    }
    for k in range(2):
        alone["input_ids"][k, : enc_lens[k]] = enc[k]
        alone["attention_mask"][k, : enc_lens[k]] = 1
        alone["decoder_input_ids"][k, : dec_lens[k]] = dec[k]
        alone["decoder_attention_mask"][k, : dec_lens[k]] = 1
    got = _logits(cfg, params, packed)[0]
    want = _logits(cfg, params, alone)
    np.testing.assert_allclose(got[:4], want[0, :4], atol=1e-5, rtol=0)
    np.testing.assert_allclose(got[4:9], want[1, :5], atol=1e-5, rtol=0)
    # transformers on the second example alone, unpadded, agrees too.
    torch_alone = hf_parity.hf_outputs(
        gated_case.model,
        {
            "input_ids": enc[1][None], "attention_mask": np.ones((1, 5), np.int32),
            "decoder_input_ids": dec[1][None], "decoder_attention_mask": np.ones((1, 5)),
        },
    )  # fmt: skip
    np.testing.assert_allclose(got[4:9], torch_alone["logits"][0], atol=1e-4, rtol=0)


def test_segment_positions_restart_per_segment():
    seg = jnp.array([[1, 1, 1, 2, 2, 0], [1, 2, 2, 2, 3, 3]])
    want = [[0, 1, 2, 0, 1, 0], [0, 0, 1, 2, 0, 1]]
    np.testing.assert_array_equal(np.asarray(layers.segment_positions(seg)), want)


# --------------------------------------------------------------------------- sharding

_SPECS = {
    ("token_embedder", "embedding"): P("tensor", "fsdp"),
    ("encoder", "relpos_bias", "rel_embedding"): P(None, "tensor"),
    ("encoder", "layers_0", "attention", "query", "kernel"): P("fsdp", "tensor", None),
    ("encoder", "layers_0", "attention", "out", "kernel"): P("tensor", None, "fsdp"),
    ("encoder", "layers_1", "mlp", "wi_0", "kernel"): P("fsdp", "tensor"),
    ("encoder", "layers_1", "mlp", "wo", "kernel"): P("tensor", "fsdp"),
    ("encoder", "encoder_norm", "scale"): P("fsdp"),
    ("decoder", "layers_1", "encoder_decoder_attention", "key", "kernel"): P(
        "fsdp", "tensor", None
    ),
    ("decoder", "layers_0", "pre_cross_attention_layer_norm", "scale"): P("fsdp"),
    ("decoder", "logits_dense", "kernel"): P("fsdp", "tensor"),
}


def test_sharded_init_and_forward(sharded_vs_host):
    cfg = _preset("t5_tiny")
    mesh = partitioning.make_mesh(MeshConfig(data=1, fsdp=2, tensor=4))
    params = models.init_sharded(cfg, jax.random.key(0), mesh)
    for path, spec in _SPECS.items():
        leaf = params
        for key in path:
            leaf = leaf[key]
        assert leaf.sharding.spec == spec, (path, leaf.sharding.spec)
    q = params["encoder"]["layers_0"]["attention"]["query"]["kernel"]
    assert {s.data.shape for s in q.addressable_shards} == {(32, 1, 16)}

    rng = np.random.RandomState(3)
    batch = {
        "input_ids": rng.randint(0, cfg.vocab_size, (4, 16)).astype(np.int32),
        "attention_mask": np.ones((4, 16), np.int32),
        "decoder_input_ids": rng.randint(0, cfg.vocab_size, (4, 8)).astype(np.int32),
        "decoder_attention_mask": np.ones((4, 8), np.int32),
    }
    batch["attention_mask"][1, 10:] = 0
    batch["decoder_attention_mask"][2, 5:] = 0
    sharded_vs_host(models.build(cfg), params, batch, mesh)


# --------------------------------------------------------------------------- counts


@pytest.mark.parametrize("name", ["t5_tiny", "t5_small", "t5_v1_1_small"])
def test_count_params_equals_initialised_tree(name):
    cfg = _preset(name)
    shapes = jax.eval_shape(lambda: models.init_params(cfg, jax.random.key(0)))
    sizes = {
        jax.tree_util.keystr(k): int(np.prod(x.shape))
        for k, x in jax.tree_util.tree_leaves_with_path(shapes)
    }
    counts = models.count_params(cfg)
    assert counts["total"] + counts["vocab_padding"] == sum(sizes.values())
    embedding_like = ("token_embedder", "logits_dense", "relpos_bias")
    assert counts["non_embedding"] == sum(
        n for k, n in sizes.items() if not any(e in k for e in embedding_like)
    )


@pytest.mark.parametrize("name", ["t5_small", "t5_v1_1_small"])
def test_count_params_equals_transformers(name):
    cfg = _preset(name)
    hf = transformers.T5Config(
        vocab_size=cfg.vocab_size, d_model=cfg.d_model, d_kv=cfg.head_size, d_ff=cfg.d_ff,
        num_layers=cfg.num_layers, num_decoder_layers=cfg.decoder_layers,
        num_heads=cfg.num_heads, feed_forward_proj="relu" if cfg.arch == "t5" else "gated-gelu",
        tie_word_embeddings=cfg.arch == "t5",
    )  # fmt: skip
    with torch.device("meta"):
        model = transformers.T5ForConditionalGeneration(hf)
    if cfg.arch == "t5_v1_1":  # transformers 5 ties the head unless weights differ
        model.lm_head.weight = torch.nn.Parameter(torch.empty_like(model.lm_head.weight))
    assert models.count_params(cfg)["total"] == model.num_parameters()
    if name == "t5_small":
        assert model.num_parameters() == 60_506_624


# --------------------------------------------------------------------------- training knobs


@pytest.fixture(scope="module")
def dropout_case():
    """t5_tiny with dropout: a loss-and-gradient function and its values without remat."""
    cfg = dataclasses.replace(_preset("t5_tiny"), dropout_rate=0.1)
    batch = {
        "input_ids": np.arange(2 * 8, dtype=np.int32).reshape(2, 8),
        "decoder_input_ids": np.arange(2 * 6, dtype=np.int32).reshape(2, 6) + 3,
    }
    shapes = jax.eval_shape(lambda: models.init_params(cfg, jax.random.key(0)))
    rng = np.random.RandomState(0)
    params = jax.tree_util.tree_map(
        lambda x: (0.3 * rng.standard_normal(x.shape) + (x.ndim == 1)).astype(np.float32), shapes
    )

    def loss(p, key, c):
        out = encoder_decoder.Model(c).apply(
            {"params": p}, batch, deterministic=False, rngs={"dropout": key}
        )
        return out["logits"].sum()

    grad_fn = jax.jit(jax.value_and_grad(loss), static_argnums=2)
    # rbg keys: same semantics as threefry for dropout, a fraction of the compile time.
    key, other_key = jax.random.key(5, impl="rbg"), jax.random.key(6, impl="rbg")
    ref_loss, ref_grad = grad_fn(params, key, cfg)
    other_loss, _ = grad_fn(params, other_key, cfg)
    assert abs(float(other_loss) - float(ref_loss)) > 1e-3  # dropout is active
    return cfg, params, key, grad_fn, ref_loss, ref_grad


@pytest.mark.parametrize("policy", ["full", "dots"])
def test_remat_and_dropout_keep_values_and_gradients(dropout_case, policy):
    cfg, params, key, grad_fn, ref_loss, ref_grad = dropout_case
    out_loss, out_grad = grad_fn(params, key, dataclasses.replace(cfg, remat_policy=policy))
    np.testing.assert_allclose(out_loss, ref_loss, rtol=1e-5)
    # Recomputation reorders float32 sums: compare at each leaf's own scale.
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6 * np.abs(b).max(), rtol=1e-4),
        out_grad,
        ref_grad,
    )


def test_bfloat16_param_dtype_applies_to_every_param():
    cfg = dataclasses.replace(_preset("t5_tiny"), param_dtype="bfloat16")
    init = jax.eval_shape(lambda: models.init_params(cfg, jax.random.key(0)))
    leaves = jax.tree_util.tree_leaves_with_path(init)
    dtypes = {jax.tree_util.keystr(k): x.dtype for k, x in leaves}
    assert any("decoder_norm" in k for k in dtypes)  # norms are in the tree
    assert set(dtypes.values()) == {jnp.dtype("bfloat16")}, dtypes


def test_bfloat16_compute_keeps_float32_params_and_logits(gated_case):
    cfg = dataclasses.replace(gated_case.cfg, dtype="bfloat16")
    out = _logits(cfg, gated_case.params, gated_case.batch)
    assert out.dtype == np.float32
    init = jax.eval_shape(lambda: models.init_params(cfg, jax.random.key(0)))
    assert {x.dtype for x in jax.tree_util.tree_leaves(init)} == {jnp.dtype("float32")}
    ref, valid = gated_case.ref["logits"], gated_case.valid["logits"]
    # bfloat16 keeps ~3 significant digits; these random weights amplify rounding
    # (transformers' own bfloat16 forward errs by more), so bound the mean error.
    err = np.abs(out - ref)[valid]
    assert 0 < err.mean() < 0.1 * ref[valid].std()
    # Per layer, as in test_decoder: ~2u of rms relative error (u = 2**-8, bfloat16's
    # unit roundoff) from rounding norm outputs, projection inputs and residual sums.
    # T5's attention is unscaled (1/sqrt(D) lives in the query init, which these
    # random weights do not follow), so attention logits here are O(10) and a relative
    # rounding of q and k moves them by ~10u: we allow 8u per layer of the encoder and
    # decoder plus the embedding (6 * 8u = 0.19; measured 0.092).
    layers_total = cfg.num_layers + cfg.decoder_layers + 1
    rms_rel = np.sqrt(np.mean(err**2) / np.mean(ref[valid] ** 2))
    assert rms_rel < layers_total * 8 * 2.0**-8, rms_rel


# --------------------------------------------------------------------------- bad input


def _copy_dir(src: str, dst, edits=None, drop: str | None = None, remove=()) -> str:
    """Copy of an HF directory with config.json ``edits``/``remove`` and a tensor dropped."""

    def config(hf: dict) -> None:
        hf.update(edits or {})
        for key in remove:
            hf.pop(key, None)

    tensors = None if drop is None else (lambda t: t.pop(drop))
    return hf_parity.copy_hf_dir(src, dst, tensors=tensors, config=config)


@pytest.mark.parametrize(
    "name",
    [
        "decoder.block.2.layer.1.EncDecAttention.k.weight",
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        "shared.weight",
    ],
)
def test_missing_tensor_is_named(hf_case, tmp_path, name):
    path = _copy_dir(hf_case.path, tmp_path, drop=name)
    with pytest.raises(ConfigError, match=name.replace(".", r"\.")) as err:
        convert.import_hf(path)
    assert path in str(err.value) and "\n" not in str(err.value)


def test_missing_untied_head_is_named(gated_case, tmp_path):
    path = _copy_dir(
        gated_case.path, tmp_path, {"tie_word_embeddings": False}, drop="lm_head.weight"
    )
    with pytest.raises(ConfigError, match=r"lm_head\.weight"):
        convert.import_hf(path)


@pytest.mark.parametrize(
    "edits, remove, field",
    [
        ({"feed_forward_proj": "gated-silu"}, (), "feed_forward_proj"),
        ({"feed_forward_proj": "relu", "scale_decoder_outputs": False}, (),
         "scale_decoder_outputs"),
        # the convention before transformers 5: tie_word_embeddings alone decides
        ({"feed_forward_proj": "relu", "tie_word_embeddings": False},
         ("scale_decoder_outputs",), "tie_word_embeddings"),
        ({"tie_word_embeddings": True}, ("scale_decoder_outputs",), "tie_word_embeddings"),
    ],
)  # fmt: skip
def test_unsupported_config_value_is_named(gated_case, tmp_path, edits, remove, field):
    path = _copy_dir(gated_case.path, tmp_path, edits, remove=remove)
    with pytest.raises(ConfigError, match=field) as err:
        convert.import_hf(path)
    assert "config.json" in str(err.value) and "\n" not in str(err.value)


def test_untied_original_t5_weights_are_rejected(relu_case, tmp_path):
    def untie(t: dict) -> None:
        t["lm_head.weight"] = t["shared.weight"] + 1.0

    path = hf_parity.copy_hf_dir(relu_case.path, tmp_path, tensors=untie)
    with pytest.raises(ConfigError, match=r"lm_head\.weight.*tie_word_embeddings"):
        convert.import_hf(path)


def test_export_rejects_activation_without_hf_equivalent(gated_case, tmp_path):
    cfg = dataclasses.replace(gated_case.cfg, activation="silu")
    with pytest.raises(ConfigError, match=r"model\.activation"):
        convert.export_hf(cfg, gated_case.params, str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")
