"""Decoder-only family (GPT-2, Llama) against Hugging Face transformers on torch CPU.

The reference is an independently implemented model: a randomly initialised
``GPT2LMHeadModel`` / ``LlamaForCausalLM`` (eager attention, float32) with every
weight, norm scale and bias drawn at random, saved with ``save_pretrained`` and
read through :func:`t5x_lite.convert.import_hf` (the shared harness: ``hf_parity``).
Another architecture joins every test that takes ``hf_case`` with one row in ``_HF``.
"""

from __future__ import annotations

import dataclasses
import functools
import json

import hf_parity
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from jax.sharding import PartitionSpec as P
from safetensors.numpy import save_file

from t5x_lite import convert, models, partitioning, presets
from t5x_lite.config import ConfigError, MeshConfig, ModelConfig
from t5x_lite.models import decoder

VOCAB = 97
B, T = 3, 13

# Tiny, awkward shapes; non-default eps / RoPE base so that their mapping matters.
_HF = {
    "gpt2": hf_parity.Spec(
        transformers.GPT2Config,
        transformers.GPT2LMHeadModel,
        dict(
            vocab_size=VOCAB, n_embd=48, n_layer=2, n_head=4, n_positions=24, n_inner=80,
            layer_norm_epsilon=1e-3, bos_token_id=None, eos_token_id=None,
        ),
        our_cfg=dict(
            family="decoder", arch="gpt2", vocab_size=VOCAB, norm_eps=1e-3, d_ff=80,
            max_seq_len=24,
        ),
        seed=1,
    ),
    "llama": hf_parity.Spec(
        transformers.LlamaConfig,
        transformers.LlamaForCausalLM,
        dict(
            vocab_size=VOCAB, hidden_size=48, intermediate_size=72, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16,  # 4 * 16 != 48
            max_position_embeddings=64, rms_norm_eps=1e-3, rope_theta=500.0,
            bos_token_id=None, eos_token_id=None,
        ),
        our_cfg=dict(
            family="decoder", arch="llama", vocab_size=VOCAB, norm_eps=1e-3, num_heads=4,
            kv_heads=2, head_size=16, d_ff=72, rope_theta=500.0,
        ),
        seed=1,
    ),
    # Llama + sliding-window attention: a window shorter than the rows, so it matters.
    "mistral": hf_parity.Spec(
        transformers.MistralConfig,
        transformers.MistralForCausalLM,
        dict(
            vocab_size=VOCAB, hidden_size=48, intermediate_size=72, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            max_position_embeddings=64, rms_norm_eps=1e-3, rope_theta=500.0,
            sliding_window=5, bos_token_id=None, eos_token_id=None,
        ),
        our_cfg=dict(
            family="decoder", arch="mistral", vocab_size=VOCAB, norm_eps=1e-3, num_heads=4,
            kv_heads=2, head_size=16, d_ff=72, rope_theta=500.0, sliding_window=5,
        ),
        seed=2,
    ),
}  # fmt: skip


def _batch(spec: hf_parity.Spec | None = None) -> dict[str, np.ndarray]:
    """Random ids with right padding in rows 1 and 2."""
    ids = np.random.RandomState(0).randint(0, VOCAB, (B, T)).astype(np.int32)
    mask = np.ones((B, T), np.int32)
    mask[1, 9:] = 0
    mask[2, 4:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _logits(cfg: ModelConfig, params, batch) -> np.ndarray:
    return hf_parity.our_outputs(cfg, params, batch)["logits"]


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> hf_parity.Cases:
    """Each reference model saved, imported and run on ``_batch()``, built once."""
    return hf_parity.Cases(tmp_path_factory, _HF, _batch)


@pytest.fixture(scope="module", params=list(_HF))
def hf_case(request, cases) -> hf_parity.Case:
    return cases[request.param]


@pytest.fixture(scope="module")
def llama_case(cases) -> hf_parity.Case:
    return cases["llama"]


# --------------------------------------------------------------------------- HF parity


def test_import_matches_transformers(hf_case):
    logits = hf_parity.check_import(hf_case, atol=1e-4)["logits"]
    assert logits.shape == (B, T, VOCAB)


def test_export_loads_in_transformers_with_identical_logits(hf_case, tmp_path):
    loaded = hf_parity.check_export(hf_case, tmp_path, atol=0.0)  # bit for bit
    if hf_case.arch == "llama":
        assert loaded.config.num_key_value_heads == 2 and loaded.config.head_dim == 16
    if hf_case.arch == "gpt2":
        # Tied head: the exported file has no lm_head, transformers ties it to wte.
        assert loaded.lm_head.weight.data_ptr() == loaded.transformer.wte.weight.data_ptr()


def test_llama_without_grouped_kv_both_ways(tmp_path):
    """One call, as a new architecture's parity test is: plain multi-head attention
    (as many KV heads as heads, head_dim = hidden / heads)."""
    hf_parity.check_both_ways(
        hf_config_cls=transformers.LlamaConfig,
        hf_model_cls=transformers.LlamaForCausalLM,
        hf_config=dict(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=40, num_hidden_layers=1,
            num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
            bos_token_id=None, eos_token_id=None,
        ),
        our_cfg={"arch": "llama", "num_heads": 2, "kv_heads": 2, "head_size": 16},
        batch=_batch(),
        tmp_path=tmp_path,
    )  # fmt: skip


# --------------------------------------------------------------------------- masks


def test_packed_documents_match_documents_alone(hf_case):
    cfg, params = hf_case.cfg, hf_case.params
    rng = np.random.RandomState(1)
    doc_a = rng.randint(0, VOCAB, 6).astype(np.int32)
    doc_b = rng.randint(0, VOCAB, 5).astype(np.int32)
    packed = {
        "input_ids": np.concatenate([doc_a, doc_b, [7, 7]])[None],
        "segment_ids": np.array([[1] * 6 + [2] * 5 + [0] * 2], np.int32),
        "positions": np.array([list(range(6)) + list(range(5)) + [0, 0]], np.int32),
    }
    out = _logits(cfg, params, packed)[0]
    alone_a = _logits(cfg, params, {"input_ids": doc_a[None]})[0]
    alone_b = _logits(cfg, params, {"input_ids": doc_b[None]})[0]
    assert np.abs(alone_a[:5] - alone_b).max() > 1e-2  # the two documents differ
    np.testing.assert_allclose(out[:6], alone_a, atol=1e-5, rtol=0)
    np.testing.assert_allclose(out[6:11], alone_b, atol=1e-5, rtol=0)


def test_prefix_lm_mask(hf_case):
    """Prefix tokens (0..3) see each other both ways; nothing sees past its own position."""
    cfg, params = hf_case.cfg, hf_case.params
    ids = np.random.RandomState(2).randint(0, VOCAB, (1, 8)).astype(np.int32)
    prefix = np.array([[True] * 4 + [False] * 4])

    def run(token_ids, with_prefix=True):
        batch = {"input_ids": token_ids}
        if with_prefix:
            batch["prefix_mask"] = prefix
        return _logits(cfg, params, batch)[0]

    def changed(pos):
        other = ids.copy()
        other[0, pos] = (other[0, pos] + 1) % VOCAB
        return other

    base_out = run(ids)
    # A later prefix token (3) changes earlier prefix positions (0..2) ...
    diff = np.abs(run(changed(3)) - base_out).max(-1)
    assert (diff[:3] > 1e-3).all()
    # ... which a plain causal mask forbids.
    causal = run(ids, with_prefix=False)
    diff = np.abs(run(changed(3), with_prefix=False) - causal).max(-1)
    np.testing.assert_array_equal(diff[:3], 0.0)
    assert np.abs(causal[0] - base_out[0]).max() > 1e-3
    # The first target token (4) is invisible to the whole prefix, visible after it.
    diff = np.abs(run(changed(4)) - base_out).max(-1)
    np.testing.assert_array_equal(diff[:4], 0.0)
    assert (diff[4:] > 1e-3).all()


# --------------------------------------------------------------------------- sharding


def _preset(name: str) -> ModelConfig:
    return presets.load_typed(name).model


# On tensor=4 the kv_heads axis needs num_kv_heads % 4 == 0, so the Llama case here
# uses 8 heads sharing 4 KV heads (llama_tiny's 2 KV heads fit tensor <= 2).
_SHARDED = {
    "gpt2": (
        _preset("gpt2_tiny"),
        {
            ("wte", "embedding"): P("tensor", "fsdp"),
            ("wpe", "embedding"): P(None, "fsdp"),
            ("layers_0", "attn", "query", "kernel"): P("fsdp", "tensor", None),
            ("layers_0", "attn", "query", "bias"): P("tensor", None),
            ("layers_1", "attn", "out", "kernel"): P("tensor", None, "fsdp"),
            ("layers_1", "mlp", "wi", "kernel"): P("fsdp", "tensor"),
            ("layers_1", "mlp", "wo", "kernel"): P("tensor", "fsdp"),
            ("ln_f", "scale"): P("fsdp"),
        },
    ),
    "llama": (
        dataclasses.replace(_preset("llama_tiny"), num_heads=8, num_kv_heads=4),
        {
            ("wte", "embedding"): P("tensor", "fsdp"),
            ("layers_0", "attn", "key", "kernel"): P("fsdp", "tensor", None),
            ("layers_0", "mlp", "wi_0", "kernel"): P("fsdp", "tensor"),
            ("layers_0", "mlp", "wo", "kernel"): P("tensor", "fsdp"),
            ("lm_head", "kernel"): P("fsdp", "tensor"),
        },
    ),
}


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_sharded_init_and_forward(arch, sharded_vs_host):
    cfg, expected = _SHARDED[arch]
    mesh = partitioning.make_mesh(MeshConfig(data=1, fsdp=2, tensor=4))
    params = models.init_sharded(cfg, jax.random.key(0), mesh)
    for path, spec in expected.items():
        leaf = params
        for key in path:
            leaf = leaf[key]
        assert leaf.sharding.spec == spec, (path, leaf.sharding.spec)
    k = params["wte"]["embedding"]
    assert {s.data.shape for s in k.addressable_shards} == {(cfg.vocab_size // 4, cfg.d_model // 2)}

    ids = np.random.RandomState(3).randint(0, cfg.vocab_size, (4, 16)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 10:] = 0
    sharded_vs_host(decoder.Model(cfg), params, {"input_ids": ids, "attention_mask": mask}, mesh)


# --------------------------------------------------------------------------- counts


@pytest.mark.parametrize("name", ["gpt2_tiny", "gpt2_small", "llama_tiny"])
def test_count_params_equals_initialised_tree(name):
    cfg = _preset(name)
    shapes = jax.eval_shape(lambda: models.init_params(cfg, jax.random.key(0)))
    n = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes))
    counts = models.count_params(cfg)
    assert counts["total"] + counts["vocab_padding"] == n  # padded rows are stored
    if name == "gpt2_small":
        assert counts["total"] == 124_439_808  # OpenAI GPT-2 small
        assert counts["vocab_padding"] == (50304 - 50257) * 768


def test_non_embedding_count_by_hand():
    # gpt2_tiny: E=64, F=256, 2 layers, vocab 2048, 128 positions.
    # per layer: 2 LayerNorms 4*64 + attention 4*64*64 + 4*64 + MLP 2*64*256 + 256 + 64
    per_layer = 256 + (16384 + 256) + (32768 + 320)
    non_embedding = 2 * per_layer + 2 * 64  # + final LayerNorm
    assert models.count_params(_preset("gpt2_tiny")) == {
        "total": non_embedding + (2048 + 128) * 64,
        "non_embedding": non_embedding,
        "vocab_padding": 0,  # 2048 is a multiple of 128
    }
    # llama_tiny: E=64, 4 heads x 16, 2 KV heads, F=172; untied head is "embedding" too.
    per_layer = 2 * 64 + (64 * 64 + 2 * 64 * 32 + 64 * 64) + 3 * 64 * 172
    non_embedding = 2 * per_layer + 64
    assert models.count_params(_preset("llama_tiny")) == {
        "total": non_embedding + 2 * 2048 * 64,
        "non_embedding": non_embedding,
        "vocab_padding": 0,
    }


# --------------------------------------------------------------------------- training knobs


@pytest.fixture(scope="module")
def dropout_case():
    """llama_tiny with dropout: a loss-and-gradient function and its values without remat."""
    cfg = dataclasses.replace(_preset("llama_tiny"), dropout_rate=0.1)
    batch = {"input_ids": np.arange(2 * 8, dtype=np.int32).reshape(2, 8)}
    params = jax.jit(functools.partial(models.init_params, cfg))(jax.random.key(0))
    # rbg keys: same semantics as threefry for dropout, a fraction of the compile time.
    key = jax.random.key(5, impl="rbg")

    @functools.partial(jax.jit, static_argnums=1)
    def loss_and_grad(p, c):
        def loss(p):
            out = decoder.Model(c).apply(
                {"params": p}, batch, deterministic=False, rngs={"dropout": key}
            )
            return jnp.mean(out["logits"] ** 2)

        return jax.value_and_grad(loss)(p)

    ref_loss, ref_grad = loss_and_grad(params, cfg)
    eval_loss = np.mean(_logits(cfg, params, batch) ** 2)
    assert abs(float(eval_loss) - float(ref_loss)) > 1e-4 * float(ref_loss)  # dropout is active
    return cfg, params, loss_and_grad, ref_loss, ref_grad


@pytest.mark.parametrize("policy", ["full", "dots"])
def test_remat_and_dropout_keep_values_and_gradients(dropout_case, policy):
    cfg, params, loss_and_grad, ref_loss, ref_grad = dropout_case
    out_loss, out_grad = loss_and_grad(params, dataclasses.replace(cfg, remat_policy=policy))
    np.testing.assert_allclose(out_loss, ref_loss, rtol=1e-5)
    # Recomputation reorders float sums: compare each gradient at its own scale.
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5 * np.abs(b).max(), rtol=1e-4),
        out_grad,
        ref_grad,
    )


def test_bfloat16_compute_keeps_float32_params_and_logits(hf_case):
    cfg = dataclasses.replace(hf_case.cfg, dtype="bfloat16")
    batch = hf_case.batch
    params = hf_case.params
    out = _logits(cfg, params, batch)
    assert out.dtype == jnp.float32
    init = jax.eval_shape(lambda: models.init_params(cfg, jax.random.key(0)))
    assert {x.dtype for x in jax.tree_util.tree_leaves(init)} == {jnp.dtype("float32")}
    valid = batch["attention_mask"].astype(bool)
    ref = hf_case.ref["logits"]
    assert hf_parity.max_abs_diff(out, ref, valid) < 0.1 * np.abs(ref).max()
    # bfloat16 keeps 8 significant bits: each rounding errs by at most u = 2**-8
    # relative. A block rounds its norm outputs, projection inputs and residual sum,
    # independent errors of ~u each that add in quadrature inside the block (~2u) and
    # at most linearly across blocks; the embedding adds one more term (the float32
    # head adds none). So the logits' rms relative error is at most (L + 1) * 2u
    # (2 layers: 0.023; measured 0.010 for GPT-2, 0.013 for Llama).
    err = np.abs(np.asarray(out) - ref)[valid]
    rms_rel = np.sqrt(np.mean(err**2) / np.mean(ref[valid] ** 2))
    assert 0 < rms_rel < (cfg.num_layers + 1) * 2 * 2.0**-8, rms_rel


@pytest.mark.parametrize("name", ["gpt2_tiny", "llama_tiny"])
def test_bfloat16_param_dtype_applies_to_every_param(name):
    cfg = dataclasses.replace(_preset(name), param_dtype="bfloat16")
    init = jax.eval_shape(lambda: models.init_params(cfg, jax.random.key(0)))
    dtypes = {
        jax.tree_util.keystr(k): x.dtype for k, x in jax.tree_util.tree_leaves_with_path(init)
    }
    assert any("ln_f" in k and "scale" in k for k in dtypes)  # norms are in the tree
    assert set(dtypes.values()) == {jnp.dtype("bfloat16")}, dtypes


def test_llama_activation_is_configurable(llama_case, tmp_path):
    """``model.activation`` reaches the gated MLP; the export carries it as hidden_act."""
    hf_case = llama_case
    cfg = dataclasses.replace(hf_case.cfg, activation="gelu")
    batch, valid = hf_case.batch, hf_case.batch["attention_mask"].astype(bool)
    ours = _logits(cfg, hf_case.params, batch)
    assert hf_parity.max_abs_diff(ours, hf_case.ref["logits"], valid) > 1e-2  # silu vs gelu
    out = str(tmp_path / "gelu")
    convert.export_hf(cfg, hf_case.params, out)
    loaded = transformers.LlamaForCausalLM.from_pretrained(out, attn_implementation="eager")
    assert loaded.config.hidden_act == "gelu"
    ref = hf_parity.hf_outputs(loaded.eval(), batch)
    hf_parity.assert_outputs_close({"logits": ours}, ref, atol=1e-4, valid=hf_case.valid)
    assert convert.import_hf(out)[0] == cfg


# --------------------------------------------------------------------------- bad input


def test_missing_tensor_is_named(hf_case, tmp_path):
    name = "transformer.h.1.mlp.c_fc.bias" if hf_case.arch == "gpt2" else "lm_head.weight"
    path = hf_parity.copy_hf_dir(hf_case.path, tmp_path, tensors=lambda t: t.pop(name))
    with pytest.raises(ConfigError, match=name.replace(".", r"\.")) as err:
        convert.import_hf(path)
    assert "\n" not in str(err.value) and path in str(err.value)


@pytest.mark.parametrize(
    "arch, field, value",
    [
        ("gpt2", "scale_attn_by_inverse_layer_idx", True),
        ("gpt2", "tie_word_embeddings", False),
        ("llama", "rope_parameters", {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}),
        ("llama", "attention_bias", True),
    ],
)
def test_unsupported_config_value_is_named(tmp_path, arch, field, value):
    _HF[arch].hf_config_obj().to_json_file(str(tmp_path / "config.json"))
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg[field] = value
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    save_file({"x": np.zeros(1, np.float32)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ConfigError, match=field) as err:
        convert.import_hf(str(tmp_path))
    assert "\n" not in str(err.value)


def test_unsupported_model_type(tmp_path):
    # Mistral and Qwen2 became supported (the mistral and qwen2 archs); GPT-NeoX
    # (parallel attention and MLP, partial rotary) is not.
    transformers.GPTNeoXConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4,
    ).to_json_file(str(tmp_path / "config.json"))  # fmt: skip
    with pytest.raises(ConfigError, match="model_type='gpt_neox' is not supported"):
        convert.import_hf(str(tmp_path))
