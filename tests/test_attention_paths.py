"""Every attention backend against a numpy softmax-attention transcription with
explicit masks (causal, padded, packed, prefix LM, sliding window), and no dense
``[B, 1, T, T]`` mask in a whole model's forward for causal or padded attention."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_lite import attention, masks, models
from t5x_lite.config import ConfigError, ModelConfig

B, T, H, K, D = 2, 64, 4, 2, 16


def _qkv(seed=0, t=T):
    r = np.random.default_rng(seed)
    q, k, v = (r.standard_normal((B, t, h, D)).astype(np.float32) for h in (H, K, K))
    return q, k, v


def _reference(q, k, v, allowed):
    """numpy, float64: ``softmax(q kᵀ / sqrt(D))`` over the keys ``allowed [B, T, S]``
    marks, key/value heads repeated; outputs ``[B, T, H, D]``."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    k, v = np.repeat(k, H // K, axis=2), np.repeat(v, H // K, axis=2)
    logits = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(D)
    logits = np.where(allowed[:, None], logits, -np.inf)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhts,bshd->bthd", p, v)


def cases(t: int) -> dict:
    """name -> (mask, allowed [B, T, S], query rows compared [B, T]) at length ``t``:
    row 1 has ``t - 23`` real tokens (trailing padding), packed rows 2 and 3 segments
    (row 1 ends in 17 pads), prefixes of 10 and 25 tokens."""
    i, j = np.arange(t)[:, None], np.arange(t)[None, :]
    causal = np.broadcast_to(j <= i, (B, t, t))
    real = np.arange(t)[None, None, :] < np.array([t, t - 23])[:, None, None]  # [B, 1, S]
    n = t - 64
    segments = np.array(
        [[1] * 30 + [2] * (34 + n), [1] * 20 + [2] * 15 + [3] * (12 + n) + [0] * 17]
    )
    same = segments[:, :, None] == segments[:, None, :]
    prefix = np.arange(t)[None, :] < np.array([[10], [25]])  # [B, T]
    both = prefix[:, :, None] & prefix[:, None, :]
    every, non_pad = np.ones((B, t), bool), segments > 0
    kv_valid = jnp.asarray(real[:, 0])
    return {
        "causal": (masks.AttentionMask(causal=True), causal, every),
        "padded": (masks.AttentionMask(kv_valid=kv_valid), np.broadcast_to(real, (B, t, t)), every),
        "causal_padded": (
            masks.AttentionMask(causal=True, kv_valid=kv_valid), causal & real, every
        ),
        "window": (masks.AttentionMask(causal=True, window=8), causal & (i - j < 8), every),
        "packed": (
            masks.AttentionMask(causal=True, q_segments=segments, kv_segments=segments),
            causal & same,
            non_pad,
        ),
        "packed_bidirectional": (
            masks.AttentionMask(q_segments=segments, kv_segments=segments), same, non_pad
        ),
        "prefix": (
            masks.AttentionMask(causal=True, prefix=jnp.asarray(prefix)), causal | both, every
        ),
    }  # fmt: skip


CASES = cases(T)


@pytest.mark.parametrize("name", list(CASES))
def test_xla_path_and_dense_mask_match_numpy(name):
    mask, allowed, rows = CASES[name]
    q, k, v = _qkv()
    want = _reference(q, k, v, allowed)
    got = np.asarray(attention.dot_product_attention(q, k, v, mask, implementation="xla"))
    np.testing.assert_allclose(got[rows], want[rows], atol=2e-5, rtol=0)
    dense = np.asarray(mask.dense(T, T))  # [B|1, 1, T, S]
    np.testing.assert_array_equal(np.broadcast_to(dense[:, 0], (B, T, T)), allowed)


@pytest.mark.parametrize("name", ["causal", "padded", "causal_padded", "window"])
def test_cudnn_arguments_mean_the_same_mask(name):
    """The arguments the cuDNN path passes (is_causal, key_value_seq_lengths,
    local_window_size: no mask array), run through jax's own XLA implementation."""
    mask, allowed, rows = CASES[name]
    kw = attention.fused_mask_arguments(mask, T, T)
    assert "mask" not in kw
    q, k, v = _qkv(1)
    got = np.asarray(jax.nn.dot_product_attention(q, k, v, implementation="xla", **kw))
    np.testing.assert_allclose(got[rows], _reference(q, k, v, allowed)[rows], atol=2e-5, rtol=0)


@pytest.mark.parametrize("name", ["causal_padded", "window", "packed", "packed_bidirectional"])
def test_splash_in_interpret_mode_matches_numpy(name):
    mask, allowed, rows = cases(128)[name]  # splash blocks are 128 keys wide
    q, k, v = _qkv(2, 128)
    with attention.splash_interpret():
        slots = masks.explicit(jnp.ones((1, 1, T, T), bool))  # the decoding cache's mask
        assert attention.resolve("splash", q, k, slots, None) == "xla"
        got = np.asarray(attention.dot_product_attention(q, k, v, mask, implementation="splash"))
    np.testing.assert_allclose(got[rows], _reference(q, k, v, allowed)[rows], atol=2e-5, rtol=0)


def test_backend_choice_and_refusals():
    q, k, v = _qkv()
    causal = masks.AttentionMask(causal=True)
    assert attention.resolve("auto", q, k, causal, None) == "xla"  # this CPU
    for name, device in (("splash", "TPU"), ("cudnn", "GPU")):
        want = f"model.attention='{name}' needs {device} devices"
        with pytest.raises(ConfigError, match=want):
            attention.dot_product_attention(q, k, v, causal, implementation=name)
    with attention.splash_interpret():
        assert attention.resolve("splash", q, k, causal, None) == "xla"  # 64 keys: not splash
        q2, k2, _ = _qkv(0, 128)
        assert attention.resolve("splash", q2, k2, causal, None) == "splash"
        # T5's relative-position bias is not a splash input: that call runs on xla
        assert attention.resolve("splash", q2, k2, causal, jnp.zeros((1, H, 128, 128))) == "xla"


def _shapes(jaxpr) -> set[tuple[tuple[int, ...], str]]:
    """(shape, dtype) of every variable of a closed jaxpr and its sub-jaxprs."""
    out = set()

    def walk(jp):
        for eqn in jp.eqns:
            for var in [*eqn.invars, *eqn.outvars]:
                aval = getattr(var, "aval", None)
                if hasattr(aval, "shape"):
                    out.add((tuple(aval.shape), str(aval.dtype)))
            for sub in jax.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jaxpr.jaxpr)
    return out


@pytest.mark.parametrize(
    "kw, key",
    [
        (dict(family="decoder", arch="gpt2"), None),
        (dict(family="decoder", arch="llama", num_kv_heads=2), "attention_mask"),
        (dict(family="encoder", arch="bert", type_vocab_size=2), "attention_mask"),
    ],
)
def test_no_dense_mask_in_a_model_forward(kw, key):
    """Causal (GPT-2), causal + padding (Llama, grouped-query) and padding (BERT):
    no ``[B, 1, T, T]`` or ``[B, T, T]`` array anywhere in the forward's jaxpr."""
    b, t = 2, 16
    cfg = ModelConfig(vocab_size=96, d_model=32, num_heads=4, num_layers=1, d_ff=64, **kw)
    batch = {"input_ids": jnp.ones((b, t), jnp.int32)}
    if key is not None:
        batch[key] = jnp.asarray(np.arange(t)[None] < np.array([[t], [9]]), jnp.int32)
    module = models.build(cfg.validate())
    params = jax.eval_shape(lambda: models.init_params(cfg, jax.random.key(0), batch))
    shapes = _shapes(jax.make_jaxpr(lambda p: module.apply({"params": p}, batch))(params))
    dense = {s for s, _ in shapes if s in ((b, 1, t, t), (b, t, t))}
    assert not dense, dense
    assert ((b, 4, t, t), "float32") in shapes  # the logits are there: the walk sees them


def test_splash_gradients_match_xla():
    """Training runs the splash kernel's backward pass: packed causal rows, d(q, k, v)."""
    packed, _, _ = cases(128)["packed"]
    seg = packed.q_segments[1:]  # one row: three segments and padding
    mask = masks.AttentionMask(causal=True, q_segments=seg, kv_segments=seg)
    q, k, v = (x[1:] for x in _qkv(3, 128))

    def loss(impl):
        def f(*qkv):
            return (attention.dot_product_attention(*qkv, mask, implementation=impl) ** 2).sum()

        return f

    with attention.splash_interpret():
        got = jax.grad(loss("splash"), argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(loss("xla"), argnums=(0, 1, 2))(q, k, v)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=2e-4, rtol=0)


def test_splash_under_a_mesh_runs_in_shard_map():
    """Rows on ``data``, heads on ``tensor`` (XLA cannot partition a Pallas call)."""
    from t5x_lite import partitioning
    from t5x_lite.config import MeshConfig

    mask, allowed, rows = cases(128)["causal_padded"]
    q, k, v = _qkv(4, 128)
    mesh = partitioning.make_mesh(MeshConfig(data=2, fsdp=1, tensor=4))
    run = jax.jit(lambda *a: attention.dot_product_attention(*a, mask, implementation="splash"))
    with attention.splash_interpret(), jax.set_mesh(mesh):
        got = run(q, k, v)
    assert got.sharding.spec == jax.sharding.PartitionSpec("data", None, "tensor")
    want = _reference(q, k, v, allowed)
    np.testing.assert_allclose(np.asarray(got)[rows], want[rows], atol=2e-5, rtol=0)
