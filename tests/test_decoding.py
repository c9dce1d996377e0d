"""Cached decoding against full recomputation, for every decoding family.

The reference is the model's own full forward (no cache), run on each prompt alone
(no padding) and re-run on the whole row for every new token; the cached path runs
the prompts as one left-padded batch (decoders) or right-padded encoder batch (T5).
Logits are compared at every step (float32, 1e-4) and greedy tokens must agree.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from t5x_lite import decoding, models, partitioning
from t5x_lite.config import MeshConfig, ModelConfig

V = 61
N = 10  # new tokens
# Different lengths: the longest is longer than Mistral's window (4).
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17]]

_SMALL = dict(vocab_size=V, d_model=32, num_heads=4, num_layers=2, d_ff=48)
CONFIGS = {
    "gpt2": ModelConfig(family="decoder", arch="gpt2", max_seq_len=24, **_SMALL),
    "llama": ModelConfig(
        family="decoder", arch="llama", num_kv_heads=2, activation="silu", rope_theta=500.0,
        **_SMALL,
    ),
    "mistral": ModelConfig(
        family="decoder", arch="mistral", num_kv_heads=2, activation="silu", sliding_window=4,
        **_SMALL,
    ),
    "t5": ModelConfig(
        family="encoder_decoder", arch="t5", head_dim=8, activation="relu",
        relative_num_buckets=8, relative_max_distance=16, **_SMALL,
    ),
    "t5_v1_1": ModelConfig(
        family="encoder_decoder", arch="t5_v1_1", head_dim=8, activation="gelu_new",
        relative_num_buckets=8, relative_max_distance=16, **_SMALL,
    ),
}  # fmt: skip


@functools.cache
def _params(name: str):
    return models.init_params(CONFIGS[name], jax.random.key(3))


@functools.cache
def _full_forward(name: str):
    """Jitted reference: last-token logits of one unpadded row, recomputed in full.

    Decoders: ``ids [1, 24]`` right-padded, causal attention keeps the padding out of
    position ``n - 1``. T5: encoder ``[1, S]`` unpadded, decoder ``[1, N]`` right-padded.
    """
    module = models.build(CONFIGS[name])

    @jax.jit
    def f(params, batch, n):
        logits = module.apply({"params": params}, batch)["logits"]  # [1, T, V]
        return jax.lax.dynamic_index_in_dim(logits[0], n - 1, keepdims=False)  # [V]

    return f


def _reference(name: str, prompt: list[int], tokens: np.ndarray) -> np.ndarray:
    """``[N, V]``: the full forward's logits before each of ``tokens`` (teacher-forced)."""
    cfg, f = CONFIGS[name], _full_forward(name)
    out = []
    for n in range(len(tokens)):
        if cfg.family == "decoder":
            row = np.zeros((1, 24), np.int32)
            seq = [*prompt, *tokens[:n]]
            row[0, : len(seq)] = seq
            batch, length = {"input_ids": row}, len(seq)
        else:
            dec = np.zeros((1, N), np.int32)  # id 0 starts the decoder
            dec[0, 1 : n + 1] = tokens[:n]
            batch = {"input_ids": np.asarray([prompt], np.int32), "decoder_input_ids": dec}
            length = n + 1
        out.append(np.asarray(f(_params(name), batch, length)))
    return np.stack(out)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_cached_greedy_equals_full_recomputation(name):
    opts = decoding.Options(max_new_tokens=N, eos_id=-1, return_logits=True)
    allowed = np.arange(V) != 0  # never the pad id (a random T5 favours it)
    out = decoding.generate(CONFIGS[name], _params(name), PROMPTS, opts, allowed=allowed)
    assert out["tokens"].shape == (3, N) and (out["lengths"] == N).all()
    for r, prompt in enumerate(PROMPTS):
        ref = _reference(name, prompt, out["tokens"][r])  # [N, V]
        np.testing.assert_allclose(out["logits"][r], ref, atol=1e-4, rtol=0)
        np.testing.assert_array_equal(out["tokens"][r], np.where(allowed, ref, -np.inf).argmax(-1))
    # Not a degenerate comparison: the rows' continuations differ.
    assert len({tuple(t) for t in out["tokens"]}) > 1


def test_batch_rows_do_not_depend_on_each_other():
    """A prompt decodes the same alone and beside longer ones (left padding is inert)."""
    opts = decoding.Options(max_new_tokens=N, eos_id=-1, return_logits=True)
    for name in ("gpt2", "mistral"):
        both = decoding.generate(CONFIGS[name], _params(name), PROMPTS, opts)
        alone = decoding.generate(CONFIGS[name], _params(name), PROMPTS[1:2], opts)
        np.testing.assert_allclose(both["logits"][1], alone["logits"][0], atol=1e-5)


def test_stops_at_eos_and_pads_after_it():
    name = "llama"
    free = decoding.generate(
        CONFIGS[name], _params(name), PROMPTS, decoding.Options(max_new_tokens=N, eos_id=-1)
    )
    eos = int(free["tokens"][0, 3])  # row 0 emits this id at step 3 (maybe earlier)
    out = decoding.generate(
        CONFIGS[name], _params(name), PROMPTS, decoding.Options(max_new_tokens=N, eos_id=eos)
    )
    for r in range(3):
        row = free["tokens"][r]
        hits = np.flatnonzero(row == eos)
        length = int(hits[0]) + 1 if hits.size else N
        assert out["lengths"][r] == length
        np.testing.assert_array_equal(out["tokens"][r, :length], row[:length])
        assert (out["tokens"][r, length:] == 0).all()


def test_disallowed_ids_are_never_chosen():
    name = "gpt2"
    greedy = decoding.generate(
        CONFIGS[name], _params(name), PROMPTS, decoding.Options(max_new_tokens=N, eos_id=-1)
    )
    allowed = np.ones(V, bool)
    allowed[np.unique(greedy["tokens"])] = False  # ban everything greedy picked
    for opts in (
        decoding.Options(max_new_tokens=N, eos_id=-1),
        decoding.Options(max_new_tokens=N, eos_id=-1, temperature=2.0),
        decoding.Options(max_new_tokens=N, eos_id=-1, num_beams=3),
    ):
        out = decoding.generate(CONFIGS[name], _params(name), PROMPTS, opts, allowed=allowed)
        assert allowed[out["tokens"]].all(), opts


def test_sampling_is_seeded_and_top_k_1_is_greedy():
    name = "llama"
    cfg, params = CONFIGS[name], _params(name)
    greedy = decoding.generate(cfg, params, PROMPTS, decoding.Options(max_new_tokens=N, eos_id=-1))
    hot = decoding.Options(max_new_tokens=N, eos_id=-1, temperature=1.5, top_k=1)
    np.testing.assert_array_equal(decoding.generate(cfg, params, PROMPTS, hot)["tokens"],
                                  greedy["tokens"])  # fmt: skip
    warm = decoding.Options(max_new_tokens=N, eos_id=-1, temperature=1.5, top_p=0.9)
    a = decoding.generate(cfg, params, PROMPTS, warm, seed=1)["tokens"]
    b = decoding.generate(cfg, params, PROMPTS, warm, seed=1)["tokens"]
    c = decoding.generate(cfg, params, PROMPTS, warm, seed=2)["tokens"]
    np.testing.assert_array_equal(a, b)
    assert (a != c).any() and (a != greedy["tokens"]).any()


# --------------------------------------------------------------------------- filters


def _np_top_k(z: np.ndarray, k: int) -> np.ndarray:
    kth = np.sort(z, axis=-1)[:, -k][:, None]
    return z >= kth


def _np_top_p(z: np.ndarray, p: float) -> np.ndarray:
    out = np.zeros(z.shape, bool)
    for r, row in enumerate(z.astype(np.float64)):
        probs = np.exp(row - row.max())
        probs /= probs.sum()
        order = np.argsort(-row, kind="stable")
        mass = 0.0
        for i in order:  # most likely first; keep while the mass before is below p
            if mass >= p:
                break
            out[r, i] = True
            mass += probs[i]
        out[r] |= row >= row[out[r]].min()  # ties at the threshold
    return out


def test_top_k_and_top_p_masks_match_numpy():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(6, 50)).astype(np.float32) * 2
    z[0, :5] = 3.0  # ties
    for k in (1, 3, 10, 50):
        np.testing.assert_array_equal(np.asarray(decoding.top_k_mask(z, k)), _np_top_k(z, k))
    for p in (0.01, 0.3, 0.7, 0.95, 1.0):
        np.testing.assert_array_equal(np.asarray(decoding.top_p_mask(z, p)), _np_top_p(z, p))
    # The docstrings' examples.
    assert decoding.top_k_mask(jnp.asarray([[1.0, 3, 2, 0]]), 2).tolist() == [
        [False, True, True, False]
    ]
    lp = jnp.log(jnp.asarray([[0.5, 0.3, 0.2]]))
    assert decoding.top_p_mask(lp, 0.6).tolist() == [[True, True, False]]


def test_decode_mask_window_and_padding():
    m = decoding.decode_mask(jnp.asarray([[False, True, True, True]]), jnp.asarray([2]), 2)
    assert m.astype(int).tolist() == [[[[0, 1, 1, 0]]]]
    pad_query = decoding.decode_mask(jnp.asarray([[False, True]]), jnp.asarray([0]))
    assert pad_query.astype(int).tolist() == [[[[1, 0]]]]  # sees only itself


# --------------------------------------------------------------------------- beams


def _table_step(table: np.ndarray):
    """Known logits: the next-token distribution depends only on the last token."""
    log_table = jnp.log(jnp.asarray(table, jnp.float32))

    def step(tok, i, state):
        return log_table[tok], {"last": tok}

    return step


def test_beam_search_length_penalty_by_hand():
    """Vocabulary {0 pad, 1 EOS, 2 a, 3 b}; pad is not allowed.

    First token: EOS 0.4, a 0.35, b 0.25. After a: EOS 0.9; after b: EOS 0.5. With two
    beams and two new tokens the candidates that end are [EOS] (log 0.4 = -0.9163,
    length 1, penalty 1), [a EOS] (log 0.315 = -1.1552, length 2) and [b EOS]
    (log 0.125 = -2.0794). Penalty ((5 + 2) / 6) ** alpha: alpha 0 -> 1, so [EOS]
    wins; alpha 2 -> 1.3611, [a EOS] scores -0.8487 and beats [EOS].
    """
    table = np.full((4, 4), 1e-9)
    table[2] = [1e-9, 0.9, 0.05, 0.05]  # after a
    table[3] = [1e-9, 0.5, 0.25, 0.25]  # after b
    first = jnp.log(jnp.asarray([[1e-9, 0.4, 0.35, 0.25]], jnp.float32))
    allowed = jnp.asarray([False, True, True, True])
    state = {"last": jnp.zeros((1,), jnp.int32)}
    for alpha, n, beams, scores in [
        (0.0, 2, [[1, 0], [2, 1]], [-0.9163, -1.1552]),
        (2.0, 2, [[2, 1], [1, 0]], [-1.1552 / (7 / 6) ** 2, -0.9163]),
        (0.0, 5, [[1, 0, 0, 0, 0], [2, 1, 0, 0, 0]], [-0.9163, -1.1552]),  # stops early
    ]:
        opts = decoding.Options(max_new_tokens=n, eos_id=1, num_beams=2, alpha=alpha)
        out = decoding.beam_search(first, state, _table_step(table), opts, allowed)
        assert out["beams"][0].tolist() == beams, alpha
        np.testing.assert_allclose(out["scores"][0], scores, atol=1e-4)
        assert out["beam_lengths"][0].tolist() == [len([t for t in b if t]) for b in beams]
        assert out["tokens"][0].tolist() == beams[0]


def _beam_search(cfg, params, opts):
    """:func:`decoding.beam_search` from the model's prefill of ``PROMPTS`` (``generate``
    takes the sampling path for one beam, so this calls the search directly)."""
    module = models.build(decoding.decoding_config(cfg))
    width = max(map(len, PROMPTS))
    ids = np.zeros((len(PROMPTS), width), np.int32)
    if cfg.family == "decoder":  # left-padded, aux = pad slots
        aux = np.asarray([width - len(p) for p in PROMPTS], np.int32)
        for r, p in enumerate(PROMPTS):
            ids[r, aux[r] :] = p

        def start(params, ids, aux):
            return decoding._decoder_start(module, params, ids, aux, width + N, cfg.sliding_window)
    else:  # right-padded, aux = attention mask
        aux = np.zeros_like(ids)
        for r, p in enumerate(PROMPTS):
            ids[r, : len(p)], aux[r, : len(p)] = p, 1

        def start(params, ids, aux):
            return decoding._encoder_decoder_start(module, params, ids, aux, 1 + N)

    def run(params, ids, aux):
        return decoding.beam_search(*start(params, ids, aux), opts, None)

    return jax.device_get(jax.jit(run)(params, ids, aux))


@pytest.mark.parametrize("name", ["gpt2", "mistral", "t5"])
def test_one_beam_is_greedy(name):
    cfg, params = CONFIGS[name], _params(name)
    free = decoding.generate(cfg, params, PROMPTS, decoding.Options(max_new_tokens=N, eos_id=-1))
    for eos in (-1, int(free["tokens"][0, 4])):  # never, and an id row 0 meets
        greedy = decoding.generate(
            cfg, params, PROMPTS, decoding.Options(max_new_tokens=N, eos_id=eos)
        )
        opts = decoding.Options(max_new_tokens=N, eos_id=eos, num_beams=1, alpha=0.0)
        beam = _beam_search(cfg, params, opts)
        np.testing.assert_array_equal(beam["tokens"], greedy["tokens"])
        np.testing.assert_array_equal(beam["lengths"], greedy["lengths"])
        if eos == -1:  # no EOS: the length penalty divides every beam alike
            opts = decoding.Options(max_new_tokens=N, eos_id=eos, num_beams=1, alpha=0.6)
            np.testing.assert_array_equal(_beam_search(cfg, params, opts)["tokens"],
                                          greedy["tokens"])  # fmt: skip


def test_beam_scores_are_the_full_models_log_probabilities():
    """4 beams, alpha 0, no EOS: each beam's score is the summed log-probability of its
    tokens under the full (uncached) forward; beams are distinct and best first."""
    name = "llama"
    cfg, params = CONFIGS[name], _params(name)
    opts = decoding.Options(max_new_tokens=N, eos_id=-1, num_beams=4, alpha=0.0)
    out = decoding.generate(cfg, params, PROMPTS, opts)
    assert out["beams"].shape == (3, 4, N) and (out["beam_lengths"] == N).all()
    for r, prompt in enumerate(PROMPTS):
        assert len({tuple(b) for b in out["beams"][r]}) == 4
        assert (np.diff(out["scores"][r]) <= 0).all()
        for w, tokens in enumerate(out["beams"][r]):
            lp = jax.nn.log_softmax(jnp.asarray(_reference(name, prompt, tokens)), -1)
            total = float(jnp.take_along_axis(lp, jnp.asarray(tokens)[:, None], 1).sum())
            np.testing.assert_allclose(out["scores"][r, w], total, atol=1e-3)


# --------------------------------------------------------------------------- mesh


def test_cache_is_sharded_and_results_match_on_a_mesh():
    """On data=2 x tensor=2 x fsdp=2 the cache's batch is split over (data, fsdp) and its
    key/value heads over tensor; tokens equal the single-device run."""
    name = "llama"
    cfg = CONFIGS[name]
    mesh = partitioning.make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    params = jax.device_put(_params(name), models.param_shardings(cfg, mesh))
    opts = decoding.Options(max_new_tokens=N, eos_id=-1, return_logits=True)
    here = decoding.generate(cfg, _params(name), PROMPTS, opts)
    there = decoding.generate(cfg, params, PROMPTS, opts, mesh=mesh)
    np.testing.assert_array_equal(there["tokens"], here["tokens"])
    np.testing.assert_allclose(there["logits"], here["logits"], atol=1e-5)

    module = models.build(decoding.decoding_config(cfg))
    ids = np.ones((4, 5), np.int32)
    pad = np.zeros(4, np.int32)
    with jax.set_mesh(mesh), partitioning.axis_rules():
        cache = jax.jit(
            lambda p, i, q: decoding._decoder_start(module, p, i, q, 8, None)[1]["cache"]
        )(params, ids, pad)
    key = cache["layers_0"]["attn"]["cached_key"]  # [B, L, K, D]
    assert key.shape == (4, 8, 2, 8)
    want = NamedSharding(mesh, P(("data", "fsdp"), None, "tensor", None))
    assert key.sharding.is_equivalent_to(want, key.ndim), key.sharding


# --------------------------------------------------------------------------- fill-mask


def test_fill_mask_top_k_matches_the_full_logits():
    cfg = ModelConfig(family="encoder", arch="bert", type_vocab_size=2, max_seq_len=16, **_SMALL)
    params = models.init_params(cfg, jax.random.key(0))
    mask_id = 4
    ids = np.asarray([[7, 4, 9, 10, 4, 3], [4, 8, 8, 8, 8, 8]], np.int32)
    out = decoding.fill_mask(cfg, params, ids, mask_id, k=3)
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": 0 * ids}
    logits = np.asarray(models.build(cfg).apply({"params": params}, batch)["logits"], np.float64)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    assert [[pos for pos, _, _ in row] for row in out] == [[1, 4], [0]]
    for r, row in enumerate(out):
        for pos, top, p in row:
            assert top == np.argsort(-probs[r, pos])[:3].tolist()
            np.testing.assert_allclose(p, probs[r, pos][top], atol=1e-5)
