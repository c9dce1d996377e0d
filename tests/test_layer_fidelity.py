"""Layers as BERT, T5 and Hugging Face define them, checked against hand computations.

- attention dropout drops attention *probabilities* (BERT's
  ``attention_probs_dropout_prob``, T5's dropout on the softmax weights): the
  fraction dropped is the rate, the kept ones are scaled by ``1 / (1 - rate)``, and the
  output equals a numpy computation with the same mask;
- the LM heads return float32 logits that were never rounded to bfloat16;
- packed rows without explicit ``positions`` get per-segment positions in every
  family, so each packed document gives the logits it gives alone;
- NSP on a one-document split never labels a same-document pair as random.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import linen as nn

from t5x_lite import attention, masks, models
from t5x_lite.config import ModelConfig
from t5x_lite.data import sentence_pairs

# --------------------------------------------------------------------------- dropout

RATE = 0.3


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _dropped_fraction_is_rate(dropped: np.ndarray, allowed: np.ndarray, rate: float) -> None:
    """Among the ``n`` attendable entries, the zeroed fraction is ``rate`` within 4.5
    binomial standard deviations ``sqrt(rate (1 - rate) / n)``."""
    n = int(allowed.sum())
    frac = float((dropped[allowed] == 0).mean())
    assert abs(frac - rate) < 4.5 * math.sqrt(rate * (1 - rate) / n), (frac, rate, n)


def test_attention_dropout_is_on_the_probabilities_by_hand():
    """One grouped-query attention layer (4 query heads, 2 KV heads, biases, causal mask)
    with dropout and a fixed rng, against numpy with the mask the layer drew."""
    b, t, e, h, k, d = 2, 16, 32, 4, 2, 8
    mha = attention.MultiHeadAttention(num_heads=h, head_dim=d, num_kv_heads=k, dropout_rate=RATE)
    x = jax.random.normal(jax.random.key(0), (b, t, e))
    mask = masks.AttentionMask(causal=True)
    params = nn.meta.unbox(mha.init(jax.random.key(1), x, mask=mask)["params"])
    params = jax.tree_util.tree_map(  # biases nonzero, so their placement counts
        lambda p: p + 0.1 * jax.random.normal(jax.random.key(2), p.shape), params
    )
    out, state = mha.apply(
        {"params": params},
        x,
        mask=mask,
        deterministic=False,
        rngs={"dropout": jax.random.key(3)},
        mutable=["intermediates"],
    )
    (dropped,) = state["intermediates"]["dropped_probabilities"]  # [B, H, T, S]
    dropped = np.asarray(dropped, np.float64)

    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    xn = np.asarray(x, np.float64)
    q = np.einsum("bte,ehd->bthd", xn, p["query"]["kernel"]) + p["query"]["bias"]
    kk = np.einsum("bte,ehd->bthd", xn, p["key"]["kernel"]) + p["key"]["bias"]
    vv = np.einsum("bte,ehd->bthd", xn, p["value"]["kernel"]) + p["value"]["bias"]
    kk, vv = np.repeat(kk, h // k, axis=2), np.repeat(vv, h // k, axis=2)  # [B, S, H, D]
    allowed = np.broadcast_to(np.tril(np.ones((t, t), bool)), (b, h, t, t))
    logits = np.einsum("bthd,bshd->bhts", q, kk) / math.sqrt(d)
    probs = _softmax(np.where(allowed, logits, -np.inf))  # [B, H, T, S]

    assert (dropped[~allowed] == 0).all()
    _dropped_fraction_is_rate(dropped, allowed, RATE)
    keep = dropped != 0
    hand = probs * keep / (1 - RATE)
    np.testing.assert_allclose(dropped, hand, atol=1e-6, rtol=0)
    context = np.einsum("bhts,bshd->bthd", hand, vv)
    want = np.einsum("bthd,hde->bte", context, p["out"]["kernel"]) + p["out"]["bias"]
    np.testing.assert_allclose(np.asarray(out), want, atol=1e-5, rtol=0)

    # Deterministic: the fused kernel, equal to the same computation without dropout.
    det = mha.apply({"params": params}, x, mask=mask)
    context = np.einsum("bhts,bshd->bthd", probs, vv)
    want = np.einsum("bthd,hde->bte", context, p["out"]["kernel"]) + p["out"]["bias"]
    np.testing.assert_allclose(np.asarray(det), want, atol=1e-5, rtol=0)


def _tiny(family: str, arch: str, **kw) -> ModelConfig:
    base = dict(
        family=family, arch=arch, vocab_size=67, d_model=32, num_heads=4, num_layers=1,
        d_ff=48, max_seq_len=32,
    )  # fmt: skip
    if family == "encoder_decoder":
        base["activation"] = "relu" if arch == "t5" else "gelu_new"
    return ModelConfig(**{**base, **kw}).validate()


@pytest.mark.parametrize(
    "cfg, sites",
    [
        (_tiny("encoder", "bert", dropout_rate=0.2), [("layers_0", "attention")]),
        (_tiny("decoder", "gpt2", dropout_rate=0.2), [("layers_0", "attn")]),
        (
            _tiny("encoder_decoder", "t5_v1_1", dropout_rate=0.2),
            [
                ("encoder", "layers_0", "attention"),
                ("decoder", "layers_0", "self_attention"),
                ("decoder", "layers_0", "encoder_decoder_attention"),
            ],
        ),
    ],
    ids=["bert", "gpt2", "t5"],
)
def test_models_drop_attention_probabilities_at_the_rate(cfg, sites):
    """BERT's, GPT-2's (attn_pdrop) and T5's attentions (self, causal self, cross) each
    drop ~rate of their probabilities in training; evaluation drops nothing and sows
    nothing."""
    ids = np.random.RandomState(0).randint(0, cfg.vocab_size, (4, 24)).astype(np.int32)
    batch = {"input_ids": ids}
    if cfg.family == "encoder_decoder":
        batch["decoder_input_ids"] = ids[:, :16]
    module = models.build(cfg)
    params = nn.meta.unbox(module.init(jax.random.key(0), batch)["params"])
    _, state = module.apply(
        {"params": params},
        batch,
        deterministic=False,
        rngs={"dropout": jax.random.key(1)},
        mutable=["intermediates"],
    )
    for site in sites:
        node = state["intermediates"]
        for key in site:
            node = node[key]
        (dropped,) = node["dropped_probabilities"]
        dropped = np.asarray(dropped)
        allowed = np.ones(dropped.shape, bool)
        if site[-1] in ("self_attention", "attn"):  # causal
            allowed &= np.tril(np.ones(dropped.shape[-2:], bool))
        assert (dropped[~allowed] == 0).all(), site
        _dropped_fraction_is_rate(dropped, allowed, cfg.dropout_rate)
        # Kept probabilities are scaled by 1 / (1 - rate), so rows still sum to 1 on
        # average (unscaled they would sum to 1 - rate = 0.8).
        np.testing.assert_allclose(dropped.sum(-1).mean(), 1.0, rtol=0.05)
    _, state = module.apply({"params": params}, batch, mutable=["intermediates"])
    assert not state.get("intermediates")


# --------------------------------------------------------------------------- float32 logits

_HEADS = [
    _tiny("decoder", "gpt2", dtype="bfloat16"),  # tied
    _tiny("decoder", "llama", dtype="bfloat16"),  # untied lm_head
    _tiny("decoder", "llama", dtype="bfloat16", tie_word_embeddings=True),
    _tiny("encoder", "bert", dtype="bfloat16"),  # tied + float32 bias
    _tiny("encoder_decoder", "t5", dtype="bfloat16"),  # tied, scaled
    _tiny("encoder_decoder", "t5_v1_1", dtype="bfloat16"),  # untied logits_dense
]


@pytest.mark.parametrize("cfg", _HEADS, ids=lambda c: f"{c.arch}-tied{c.tied_head}")
def test_bfloat16_logits_are_float32_not_rounded(cfg):
    """With bfloat16 compute, the head's product accumulates in float32 and stays
    there: a logit rounded to bfloat16 has its 16 low mantissa bits zero, which an
    unrounded float32 logit has with probability 2**-16."""
    ids = np.random.RandomState(0).randint(0, cfg.vocab_size, (2, 12)).astype(np.int32)
    batch = {"input_ids": ids}
    if cfg.family == "encoder_decoder":
        batch["decoder_input_ids"] = ids[:, :8]
    module = models.build(cfg)
    params = module.init(jax.random.key(0), batch)["params"]
    logits = np.asarray(jax.jit(module.apply)({"params": params}, batch)["logits"])
    assert logits.dtype == np.float32
    on_grid = logits == logits.astype(ml_dtypes.bfloat16).astype(np.float32)
    assert on_grid.mean() < 0.01, on_grid.mean()


# --------------------------------------------------------------------------- packed positions

_PACKED = [
    _tiny("decoder", "gpt2"),
    _tiny("decoder", "llama", num_kv_heads=2),
    _tiny("encoder", "bert", type_vocab_size=2),
    _tiny("encoder", "roberta", position_offset=2, pad_token_id=1),
    _tiny("encoder", "albert", embed_dim=16),
    _tiny("encoder_decoder", "t5_v1_1", head_dim=8),
]


def _randomised(params, seed: int):
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return tree.unflatten([x + 0.2 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


@pytest.mark.parametrize("cfg", _PACKED, ids=lambda c: c.arch)
def test_packed_rows_without_positions_match_documents_alone(cfg):
    """``segment_ids`` without ``positions``: each document restarts at position 0, so
    the packed logits equal those with explicit positions and those of the document
    alone (for RoBERTa also with an ``attention_mask`` present)."""
    rng = np.random.RandomState(1)
    lens = (7, 5)
    docs = [rng.randint(3, cfg.vocab_size, n).astype(np.int32) for n in lens]
    seg = np.array([[1] * 7 + [2] * 5 + [0] * 2], np.int32)
    pos = np.array([list(range(7)) + list(range(5)) + [0, 0]], np.int32)
    ids = np.concatenate([*docs, [0, 0]])[None].astype(np.int32)
    enc_dec = cfg.family == "encoder_decoder"
    packed = {"input_ids": ids, "segment_ids": seg}
    if enc_dec:
        packed.update(decoder_input_ids=ids, decoder_segment_ids=seg)
    module = models.build(cfg)
    params = _randomised(module.init(jax.random.key(0), packed)["params"], 2)
    run = jax.jit(module.apply)

    def logits(batch):
        return np.asarray(run({"params": params}, batch)["logits"])[0]

    out = logits(packed)
    explicit = dict(packed, positions=pos)
    if enc_dec:
        explicit["decoder_positions"] = pos
    np.testing.assert_allclose(out, logits(explicit), atol=1e-5, rtol=0)
    if cfg.traits.pad_skipping_positions:
        masked = dict(packed, attention_mask=(seg > 0).astype(np.int32))
        np.testing.assert_allclose(out, logits(masked), atol=1e-5, rtol=0)
    start = 0
    for doc in docs:
        alone = {"input_ids": doc[None]}
        if enc_dec:
            alone["decoder_input_ids"] = doc[None]
        want = logits(alone)
        np.testing.assert_allclose(out[start : start + len(doc)], want, atol=1e-4, rtol=0)
        start += len(doc)
    # Learned positions: the second document's positions matter (RoPE and T5's buckets
    # see only differences inside a document), so shifted positions change its logits.
    if cfg.traits.positions == "learned":
        shifted = dict(explicit, positions=np.arange(14, dtype=np.int32)[None])
        assert np.abs(logits(shifted)[7:12] - out[7:12]).max() > 1e-3


# --------------------------------------------------------------------------- NSP


def _one_document(num_docs: int):
    """``num_docs`` documents of six 3-token sentences each."""
    n_sent = 6 * num_docs
    starts = np.arange(0, 3 * n_sent + 1, 3, dtype=np.int64)
    tokens = np.arange(10, 10 + 3 * n_sent, dtype=np.int32)
    doc_sentences = np.arange(0, n_sent + 1, 6, dtype=np.int64)
    return tokens, starts, doc_sentences


def test_nsp_one_document_never_labels_same_document_pairs_random():
    tokens, starts, docs = _one_document(1)
    chunk = np.array([0, 0, 6])
    u = np.array([0.1, 0.5, 0.3, 0.7, 0.2, 0.8])  # u[0] < 0.5 would draw "random"
    ids, _, label = sentence_pairs.pair_row(
        tokens, starts, docs, chunk, u, kind="nsp", seq_len=24, cls_id=1, sep_id=2
    )
    assert label == 0
    # B is the true continuation: A (3 sentences) then the chunk's rest, in order.
    body = ids[(ids != 1) & (ids != 2) & (ids != 0)]
    np.testing.assert_array_equal(body, tokens[:18])
    chunks = sentence_pairs.make_chunks(starts, docs, 21)
    rows = np.arange(len(chunks)).repeat(50)  # many epochs' worth of draws
    batch = sentence_pairs.pair_rows(
        tokens, starts, docs, chunks[rows % len(chunks)], 7, np.arange(len(rows)),
        kind="nsp", seq_len=24, cls_id=1, sep_id=2,
    )  # fmt: skip
    assert (batch["next_sentence_label"] == 0).all()
    # Two documents: random pairs come back, about half of the rows.
    tokens, starts, docs = _one_document(2)
    chunks = sentence_pairs.make_chunks(starts, docs, 21)
    rows = np.arange(200)
    batch = sentence_pairs.pair_rows(
        tokens, starts, docs, chunks[rows % len(chunks)], 7, rows,
        kind="nsp", seq_len=24, cls_id=1, sep_id=2,
    )  # fmt: skip
    assert 0.3 < batch["next_sentence_label"].mean() < 0.7


def test_softmax_of_fully_masked_row_matches_fused_kernel():
    """A query that sees no key (padding) gets the same output on both attention paths."""
    q = jax.random.normal(jax.random.key(0), (1, 3, 2, 4))
    k = jax.random.normal(jax.random.key(1), (1, 5, 2, 4))
    v = jax.random.normal(jax.random.key(2), (1, 5, 2, 4))
    mask = jnp.ones((1, 1, 3, 5), bool).at[:, :, 1].set(False).at[:, :, 2, 3:].set(False)
    fused = jax.nn.dot_product_attention(q, k, v, mask=mask)
    ours = masks.explicit(mask)
    explicit = attention.attend_with_probabilities(attention.attention_probabilities(q, k, ours), v)
    np.testing.assert_allclose(np.asarray(explicit), np.asarray(fused), atol=1e-6, rtol=0)
