"""Decoding: key/value-cached generation, beam search and fill-mask.

:func:`generate` continues a batch of prompts with a key/value cache, jitted end to
end (one prefill, then a ``lax.while_loop`` of one-token steps), for the decoder
(GPT-2, Llama, Mistral) and encoder-decoder (T5, T5 v1.1) families: greedy,
temperature, top-k, top-p, or beam search with T5X's length penalty
``((5 + len) / 6) ** alpha``. :func:`fill_mask` predicts an encoder's [MASK] tokens.
:func:`sample_ids` is the trainer's end-of-run sampler on the same cached path.

The cache is the Flax ``"cache"`` collection of
:class:`t5x_lite.attention.MultiHeadAttention`, passed in and out of
``module.apply(..., mutable=["cache"])``, so
the models stay pure functions. Per self-attention layer it holds ``cached_key``
and ``cached_value`` ``[B, L, K, D]`` (``K`` key/value heads: grouped-query attention
stores only those) and ``cache_index`` (the next slot); T5's cross-attention stores the
encoder's keys/values ``[B, S, K, D]`` once, at the prefill. Cached keys/values carry the
logical names ``(batch, act_length, act_kv_heads, act_kv)``, so on a mesh the batch
is split over ``data`` x ``fsdp`` and key/value heads over ``tensor``.

Decoder prompts are **left-padded** to a common length ``P``: row ``b`` with ``pad[b]``
pad slots has its tokens at slots ``pad[b] .. P - 1``, its ``n``-th new token at slot
``P + n`` and position ``slot - pad[b]``; a query sees the real slots up to its own
(and, with a sliding window ``W``, only the ``W - 1`` before it). Every row's next
token is therefore predicted at the same slot. T5 prompts are the encoder's input
(right-padded, with ``attention_mask``); its decoder starts at id 0 (pad, T5's
``decoder_start_token_id``) and slot ``j`` holds decoder position ``j``.
"""

from __future__ import annotations

import dataclasses
import functools
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from t5x_lite import models, partitioning, steps
from t5x_lite.config import ModelConfig
from t5x_lite.partitioning import replicated_value

Array = jax.Array
State = dict[str, Any]
StepFn = Callable[[Array, Array, State], tuple[Array, State]]
NEG_INF = -1e30  # stands for -inf in float32 arithmetic (no inf - inf = nan)


# --------------------------------------------------------------------------- vocabulary


def sampleable_ids(tokenizer: Any) -> np.ndarray:
    """``[tokenizer.vocab_size]`` bool: ids a text continuation may contain.

    Reserved pieces (pad, BOS, [CLS], [SEP], [MASK], UL2 mode tokens, sentinels) and
    the byte pieces of control characters are excluded; EOS stays, since sampling it
    ends the continuation.
    """
    allowed = ~np.asarray(tokenizer.special_mask, bool)[: int(tokenizer.vocab_size)].copy()
    # Byte-fallback pieces of control bytes (<0x00> ... <0x1F> but tab and newline,
    # <0x7F>) decode to characters a terminal cannot show.
    for i in np.flatnonzero(allowed):
        piece = tokenizer.id_to_piece(int(i))
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            byte = int(piece[3:5], 16)
            allowed[i] = byte in (0x09, 0x0A) or 0x20 <= byte < 0x7F or byte >= 0x80
    allowed[tokenizer.eos_id] = True
    return allowed


def allowed_ids(tokenizer: Any, model_vocab: int) -> np.ndarray:
    """``[model_vocab]`` bool: :func:`sampleable_ids`, False for ids past the tokenizer."""
    allowed = np.zeros(model_vocab, bool)
    ok = sampleable_ids(tokenizer)[:model_vocab]
    allowed[: len(ok)] = ok
    return allowed


def printable(text: str) -> str:
    """``text`` with characters a terminal cannot show escaped (control and format
    characters other than newline and tab, lone surrogates):
    ``printable("a\x00b\tc")`` -> ``'a\\x00b\tc'``."""
    out = []
    for ch in text:
        if ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co", "Cn"):
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape", "backslashreplace").decode("ascii"))
    return "".join(out)


# --------------------------------------------------------------------------- masks


def decode_mask(valid: Array, q_slots: Array, window: int | None = None) -> Array:
    """Cached self-attention mask ``[B, 1, T, L]`` bool.

    ``valid [B, L]``: slots holding a real token (left padding False; future slots may
    be True, causality excludes them); ``q_slots [T]``: the slots of this call's
    queries. Query ``q`` sees slot ``j`` iff ``valid[j]``, ``j <= q`` and, with a
    ``window`` W, ``q - j < W``; every query also sees its own slot, so a padding
    query has one key instead of none. E.g. ``valid [[0, 1, 1, 1]]``, ``q_slots [2]``,
    ``window 2`` -> ``[[[[0, 1, 1, 0]]]]``.
    """
    j = jnp.arange(valid.shape[1])[None, :]  # [1, L]
    q = q_slots[:, None]  # [T, 1]
    sees = j <= q
    if window is not None:
        sees = sees & (q - j < window)
    mask = (valid[:, None, :] & sees[None]) | (j == q)[None]  # [B, T, L]
    return mask[:, None]


def top_k_mask(logits: Array, k: int) -> Array:
    """``[B, V]`` bool: ids whose logit is at least the ``k``-th largest of its row
    (ties at the threshold kept). ``[[1, 3, 2, 0]]``, ``k=2`` -> ``[[F, T, T, F]]``."""
    kth = jax.lax.top_k(logits, min(k, logits.shape[-1]))[0][..., -1:]  # [B, 1]
    return logits >= kth


def top_p_mask(logits: Array, p: float) -> Array:
    """``[B, V]`` bool: the nucleus, the most likely ids whose probabilities sum to at
    least ``p`` (an id is kept when the mass of the ids more likely than it is below
    ``p``; the most likely id is always kept; ties at the threshold kept).
    Probabilities ``[0.5, 0.3, 0.2]``, ``p=0.6`` -> ``[T, T, F]``."""
    desc = -jnp.sort(-logits, axis=-1)  # [B, V] largest first
    probs = jax.nn.softmax(desc, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly more likely
    keep = before < p
    threshold = jnp.min(jnp.where(keep, desc, jnp.inf), axis=-1, keepdims=True)  # [B, 1]
    return logits >= threshold


def length_penalty(length: Array, alpha: float) -> Array:
    """T5X's brevity penalty ``((5 + length) / 6) ** alpha`` (Wu et al. 2016)."""
    return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


# --------------------------------------------------------------------------- search


@dataclasses.dataclass(frozen=True)
class Options:
    """How to choose tokens. ``temperature`` 0 is greedy; ``top_k`` 0 and ``top_p`` 1
    disable those filters; ``num_beams > 1`` is beam search with length penalty
    ``alpha`` (temperature, top-k and top-p are then unused)."""

    max_new_tokens: int
    eos_id: int
    pad_id: int = 0
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    num_beams: int = 1
    alpha: float = 0.6
    return_logits: bool = False


def _masked(logits: Array, allowed: Array | None) -> Array:
    """``[B, V]`` float32 with disallowed ids at :data:`NEG_INF`."""
    logits = logits.astype(jnp.float32)
    return logits if allowed is None else jnp.where(allowed, logits, NEG_INF)


def choose(logits: Array, rng: Array, opts: Options) -> Array:
    """``[B, V]`` (already masked) -> ``[B]`` int32: argmax, or a draw from the
    temperature-scaled logits restricted to the top-k and the top-p nucleus."""
    if opts.temperature <= 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    z = logits / opts.temperature
    if opts.top_k > 0:
        z = jnp.where(top_k_mask(z, opts.top_k), z, NEG_INF)
    if opts.top_p < 1.0:
        z = jnp.where(top_p_mask(z, opts.top_p), z, NEG_INF)
    return jax.random.categorical(rng, z, axis=-1).astype(jnp.int32)


def sample_loop(
    logits: Array, state: State, step: StepFn, rng: Array, opts: Options, allowed: Array | None
) -> dict[str, Array]:
    """Greedy / sampled generation from the prefill's ``logits [B, V]``.

    ``step(tokens [B], i, state) -> (logits [B, V], state)`` feeds the ``i``-th new
    token. Stops when every row has emitted ``opts.eos_id`` or after
    ``max_new_tokens``. Returns ``tokens [B, N]`` (EOS included, ``pad_id`` after it),
    ``lengths [B]`` (new tokens including EOS) and, with ``return_logits``, the logits
    ``[B, N, V]`` each token was chosen from (before masking).
    """
    b, v = logits.shape
    n = opts.max_new_tokens
    out = {
        "tokens": jnp.full((b, n), opts.pad_id, jnp.int32),
        "lengths": jnp.zeros((b,), jnp.int32),
    }
    if opts.return_logits:
        out["logits"] = jnp.zeros((b, n, v), jnp.float32)

    def cond(c: tuple) -> Array:
        i, _, _, done, _, _ = c
        return (i < n) & ~jnp.all(done)

    def body(c: tuple) -> tuple:
        i, logits, state, done, rng, out = c
        rng, key = jax.random.split(rng)
        tok = jnp.where(done, opts.pad_id, choose(_masked(logits, allowed), key, opts))
        out = dict(out)
        out["tokens"] = out["tokens"].at[:, i].set(tok)
        out["lengths"] = out["lengths"] + (~done).astype(jnp.int32)
        if opts.return_logits:
            out["logits"] = out["logits"].at[:, i].set(logits.astype(jnp.float32))
        done = done | (tok == opts.eos_id)
        logits, state = step(tok, i, state)
        return i + 1, logits, state, done, rng, out

    init = (jnp.int32(0), logits, state, jnp.zeros((b,), bool), rng, out)
    return jax.lax.while_loop(cond, body, init)[-1]


def _gather_rows(tree: Any, rows: Array, n: int) -> Any:
    """Rows ``rows [n]`` of every leaf whose leading dim is ``n`` (scalars, e.g. the
    ``cache_index``, unchanged)."""
    return jax.tree_util.tree_map(
        lambda x: x[rows] if (x.ndim and x.shape[0] == n) else x, tree
    )


def beam_search(
    logits: Array, state: State, step: StepFn, opts: Options, allowed: Array | None
) -> dict[str, Array]:
    """T5X-style beam search over ``W = opts.num_beams`` beams.

    ``logits [B, V]`` and ``state`` (rows ``[B, ...]``) come from the prefill; both are
    repeated per beam (row ``b * W + w``). Each step extends every alive beam by every
    id, keeps the ``2W`` best by summed log-probability, moves those ending in EOS to
    the finished pool (score = log-prob / :func:`length_penalty` of their length,
    EOS included) and keeps the ``W`` best others alive. It stops after
    ``max_new_tokens`` or when no alive beam can beat the worst of ``W`` finished
    ones (its log-prob over the penalty of the maximal length, ``alpha >= 0``).
    Beams alive at the end join the pool with their own length. Returns ``beams
    [B, W, N]`` (best first; pad after EOS), ``scores [B, W]``, ``lengths [B, W]``,
    and the best beam as ``tokens [B, N]`` / ``lengths [B]``.
    """
    b, v = logits.shape
    w, n = opts.num_beams, opts.max_new_tokens
    rows = jnp.repeat(jnp.arange(b), w)  # [B*W]
    logits = logits[rows]
    state = _gather_rows(state, rows, b)
    seqs = jnp.full((b, w, n), opts.pad_id, jnp.int32)
    alive_lp = jnp.where(jnp.arange(w) == 0, 0.0, NEG_INF)[None].repeat(b, 0)  # [B, W]
    fin = (seqs, jnp.full((b, w), NEG_INF), jnp.zeros((b, w), jnp.int32))  # seqs, score, len
    max_penalty = length_penalty(n, opts.alpha)

    def cond(c: tuple) -> Array:
        i, _, _, _, alive_lp, (_, fin_score, _) = c
        # alpha >= 0: an alive beam's best final score is its log-prob / penalty(N).
        hopeless = jnp.max(alive_lp, axis=1) / max_penalty < jnp.min(fin_score, axis=1)
        return (i < n) & ~jnp.all(hopeless)

    def body(c: tuple) -> tuple:
        i, logits, state, seqs, alive_lp, fin = c
        lp = jax.nn.log_softmax(_masked(logits, allowed), axis=-1).reshape(b, w, v)
        cand = (alive_lp[..., None] + lp).reshape(b, w * v)  # [B, W*V]
        top_lp, top_idx = jax.lax.top_k(cand, 2 * w)  # [B, 2W]
        parent, tok = top_idx // v, (top_idx % v).astype(jnp.int32)
        cand_seqs = jnp.take_along_axis(seqs, parent[..., None], axis=1)  # [B, 2W, N]
        cand_seqs = cand_seqs.at[:, :, i].set(tok)
        eos = tok == opts.eos_id
        # Finished pool: the W best of (old finished, candidates ending in EOS).
        fin_seqs, fin_score, fin_len = fin
        new_score = jnp.where(eos, top_lp / length_penalty(i + 1, opts.alpha), NEG_INF)
        pool_score = jnp.concatenate([fin_score, new_score], axis=1)  # [B, 3W]
        pool_seqs = jnp.concatenate([fin_seqs, cand_seqs], axis=1)
        pool_len = jnp.concatenate([fin_len, jnp.full((b, 2 * w), i + 1, jnp.int32)], axis=1)
        fin_score, keep = jax.lax.top_k(pool_score, w)
        fin = (
            jnp.take_along_axis(pool_seqs, keep[..., None], axis=1),
            fin_score,
            jnp.take_along_axis(pool_len, keep, axis=1),
        )
        # Alive: the W best candidates not ending in EOS.
        alive_lp, keep = jax.lax.top_k(jnp.where(eos, NEG_INF, top_lp), w)  # [B, W]
        seqs = jnp.take_along_axis(cand_seqs, keep[..., None], axis=1)
        src = jnp.take_along_axis(parent, keep, axis=1)  # [B, W] beam each came from
        flat = (jnp.arange(b)[:, None] * w + src).reshape(-1)  # [B*W]
        state = _gather_rows(state, flat, b * w)
        tok = jnp.take_along_axis(tok, keep, axis=1).reshape(-1)
        logits, state = step(tok, i, state)
        return i + 1, logits, state, seqs, alive_lp, fin

    init = (jnp.int32(0), logits, state, seqs, alive_lp, fin)
    i, _, _, seqs, alive_lp, (fin_seqs, fin_score, fin_len) = jax.lax.while_loop(
        cond, body, init
    )
    alive_score = jnp.where(
        alive_lp > NEG_INF / 2, alive_lp / length_penalty(i, opts.alpha), NEG_INF
    )
    pool_score = jnp.concatenate([fin_score, alive_score], axis=1)  # [B, 2W]
    pool_seqs = jnp.concatenate([fin_seqs, seqs], axis=1)
    pool_len = jnp.concatenate([fin_len, jnp.full((b, w), i, jnp.int32)], axis=1)
    scores, keep = jax.lax.top_k(pool_score, w)
    beams = jnp.take_along_axis(pool_seqs, keep[..., None], axis=1)
    lengths = jnp.take_along_axis(pool_len, keep, axis=1)
    return {
        "beams": beams,
        "scores": scores,
        "beam_lengths": lengths,
        "tokens": beams[:, 0],
        "lengths": lengths[:, 0],
    }


# --------------------------------------------------------------------------- models


def decoding_config(cfg: ModelConfig) -> ModelConfig:
    """``cfg`` for inference: no rematerialisation (the cache is a mutable
    collection), no dropout."""
    return dataclasses.replace(cfg, remat_policy="none", dropout_rate=0.0)


def _decoder_start(
    module: Any, params: Any, ids: Array, pad: Array, length: int, window: int | None
) -> tuple[Array, State, StepFn]:
    """Decoder-only prefill of left-padded ``ids [B, P]`` (``pad [B]`` pad slots) into
    a cache of ``length`` slots: ``(next-token logits [B, V], state, step)``."""
    p = ids.shape[1]
    valid = jnp.arange(length)[None, :] >= pad[:, None]  # [B, L]
    slots = jnp.arange(p)
    batch = {
        "input_ids": ids,
        "positions": jnp.maximum(slots[None, :] - pad[:, None], 0),  # [B, P]
        "decode_mask": decode_mask(valid, slots, window),  # [B, 1, P, L]
    }
    out, var = module.apply({"params": params}, batch, mutable=["cache"])
    state = {"cache": var["cache"], "valid": valid, "pad": pad}

    def step(tok: Array, i: Array, state: State) -> tuple[Array, State]:
        slot = p + i  # the new token's slot
        batch = {
            "input_ids": tok[:, None],
            "positions": (slot - state["pad"])[:, None],  # [B, 1]
            "decode_mask": decode_mask(state["valid"], slot[None], window),  # [B, 1, 1, L]
        }
        out, var = module.apply(
            {"params": params, "cache": state["cache"]}, batch, mutable=["cache"]
        )
        return out["logits"][:, -1], {**state, "cache": var["cache"]}

    return out["logits"][:, -1], state, step


def _encoder_decoder_start(
    module: Any, params: Any, ids: Array, attention_mask: Array, length: int
) -> tuple[Array, State, StepFn]:
    """T5: encode ``ids [B, S]`` once, prefill the decoder's start token (id 0) into a
    cache of ``length`` slots: ``(logits [B, V], state, step)``."""
    b = ids.shape[0]
    enc = {"input_ids": ids, "attention_mask": attention_mask}
    encoded = module.apply({"params": params}, enc, method=module.encode)  # [B, S, E]
    valid = jnp.ones((b, length), bool)

    def run(tok: Array, slot: Array, cache: Any, encoded: Array, mask: Array) -> tuple:
        batch = {
            "input_ids": ids,  # shape only: the cross mask's keys come from attention_mask
            "attention_mask": mask,
            "decoder_input_ids": tok[:, None],
            "decoder_positions": jnp.broadcast_to(slot, (b, 1)).astype(jnp.int32),
            "decode_mask": decode_mask(valid, slot[None]),
        }
        variables = {"params": params} if cache is None else {"params": params, "cache": cache}
        out, var = module.apply(variables, encoded, batch, method=module.decode, mutable=["cache"])
        return out["logits"][:, -1], var["cache"]

    start = jnp.zeros((b,), jnp.int32)
    logits, cache = run(start, jnp.int32(0), None, encoded, attention_mask)
    state = {"cache": cache, "encoded": encoded, "attention_mask": attention_mask}

    def step(tok: Array, i: Array, state: State) -> tuple[Array, State]:
        logits, cache = run(tok, i + 1, state["cache"], state["encoded"], state["attention_mask"])
        return logits, {**state, "cache": cache}

    return logits, state, step


def _generate(
    cfg: ModelConfig,
    opts: Options,
    params: Any,
    ids: Array,
    aux: Array,
    rng: Array,
    allowed: Array,
) -> dict[str, Array]:
    """The jitted body of :func:`generate` (``aux``: decoder ``pad [B]`` or T5's
    ``attention_mask [B, S]``)."""
    module = models.build(decoding_config(cfg))
    if cfg.family == "decoder":
        length = ids.shape[1] + opts.max_new_tokens
        logits, state, step = _decoder_start(module, params, ids, aux, length, cfg.sliding_window)
    else:
        logits, state, step = _encoder_decoder_start(
            module, params, ids, aux, 1 + opts.max_new_tokens
        )
    if opts.num_beams > 1:
        return beam_search(logits, state, step, opts, allowed)
    return sample_loop(logits, state, step, rng, opts, allowed)


@functools.lru_cache(maxsize=16)
def _jitted(
    cfg: ModelConfig, opts: Options, mesh: jax.sharding.Mesh | None
) -> Callable[..., dict[str, Array]]:
    # On a mesh the (small) outputs come back replicated, readable on every process.
    out = None if mesh is None else NamedSharding(mesh, PartitionSpec())
    return jax.jit(functools.partial(_generate, cfg, opts), out_shardings=out)


def _batch_multiple(mesh: jax.sharding.Mesh | None) -> int:
    if mesh is None:
        return 1
    spec = partitioning.logical_to_mesh_spec(("batch",))[0]
    axes = (spec,) if isinstance(spec, str) else tuple(spec or ())
    return int(np.prod([mesh.shape[a] for a in axes]))


def generate(
    cfg: ModelConfig,
    params: Any,
    prompts: Sequence[Sequence[int]],
    opts: Options,
    seed: int = 0,
    allowed: np.ndarray | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> dict[str, np.ndarray]:
    """Continue ``prompts`` (lists of ids, any lengths) with the cached model.

    Decoder prompts are left-padded (see the module docstring); T5 prompts are the
    encoder's inputs, right-padded with an ``attention_mask``. ``allowed [V]`` bool
    restricts the ids that may be chosen (:func:`allowed_ids`). On a ``mesh`` the
    batch is padded to a multiple of the batch's mesh axes (``data`` x ``fsdp``) and
    run under the logical-axis rules, so the cache is sharded as its names say.
    Returns host arrays: ``tokens [B, N]``, ``lengths [B]`` (new tokens including EOS)
    and, for beam search, ``beams [B, W, N]``, ``scores [B, W]``, ``beam_lengths``;
    with ``opts.return_logits`` (sampling only) ``logits [B, N, V]``.
    """
    if cfg.family not in ("decoder", "encoder_decoder"):
        raise ValueError(f"generate needs a decoder or encoder_decoder model, not {cfg.family}")
    n = len(prompts)
    rows = -(-n // _batch_multiple(mesh)) * _batch_multiple(mesh)
    lengths = [len(p) for p in prompts]
    width = max(max(lengths), 1)
    ids = np.full((rows, width), opts.pad_id, np.int32)
    if cfg.family == "decoder":
        if min(lengths) == 0:
            raise ValueError("every decoder prompt needs at least one token")
        if cfg.traits.positions == "learned" and width + opts.max_new_tokens > cfg.max_seq_len:
            raise ValueError(
                f"prompt ({width} tokens) + max_new_tokens ({opts.max_new_tokens}) exceeds the "
                f"model's context of {cfg.max_seq_len} positions"
            )
        aux = np.zeros(rows, np.int32)
        for r in range(rows):
            p = prompts[r % n]
            ids[r, width - len(p) :] = p
            aux[r] = width - len(p)
    else:
        aux = np.zeros((rows, width), np.int32)
        for r in range(rows):
            p = prompts[r % n]
            ids[r, : len(p)] = p
            aux[r, : len(p)] = 1
    if allowed is None:
        allowed = np.ones(cfg.vocab_size, bool)
    fn = _jitted(cfg, opts, mesh)
    args = (params, ids, aux, jax.random.key(seed), np.asarray(allowed, bool))
    if mesh is None:
        out = fn(*args)
    else:
        with jax.set_mesh(mesh), partitioning.axis_rules():
            out = fn(*args)
    return {k: np.asarray(replicated_value(v))[:n] for k, v in out.items()}


# --------------------------------------------------------------------------- fill-mask


@functools.lru_cache(maxsize=8)
def _fill_mask_fn(cfg: ModelConfig, k: int) -> Callable[..., tuple[Array, Array]]:
    module = models.build(decoding_config(cfg))

    def fn(params: Any, batch: dict[str, Array], allowed: Array) -> tuple[Array, Array]:
        logits = module.apply({"params": params}, batch)["logits"]  # [B, T, V]
        logits = jnp.where(allowed, logits.astype(jnp.float32), NEG_INF)
        probs, ids = jax.lax.top_k(jax.nn.softmax(logits, axis=-1), k)  # [B, T, k]
        return ids, probs

    return jax.jit(fn)


def fill_mask(
    cfg: ModelConfig,
    params: Any,
    ids: np.ndarray,
    mask_id: int,
    k: int = 5,
    attention_mask: np.ndarray | None = None,
    allowed: np.ndarray | None = None,
) -> list[list[tuple[int, list[int], list[float]]]]:
    """Encoders: the top-``k`` predictions at every ``mask_id`` of ``ids [B, T]``.

    Returns per row a list of ``(position, ids [k], probabilities [k])``, most likely
    first (probabilities over the ``allowed`` ids, default all).
    """
    if cfg.family != "encoder":
        raise ValueError(f"fill_mask needs an encoder model, not {cfg.family}")
    ids = np.asarray(ids, np.int32)
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids) if attention_mask is None
             else np.asarray(attention_mask, np.int32)}  # fmt: skip
    if cfg.type_vocab_size:
        batch["token_type_ids"] = np.zeros_like(ids)
    allowed = np.ones(cfg.vocab_size, bool) if allowed is None else np.asarray(allowed, bool)
    top_ids, top_p = (np.asarray(a) for a in _fill_mask_fn(cfg, k)(params, batch, allowed))
    out = []
    for r, row in enumerate(ids):
        positions = np.flatnonzero(row == mask_id)
        out.append([(int(t), top_ids[r, t].tolist(), top_p[r, t].tolist()) for t in positions])
    return out


# --------------------------------------------------------------------------- trainer's sampler


def sample_ids(
    run: steps.Steps,
    params: Any,
    tokenizer: Any,
    prompt: str,
    num_tokens: int,
    seq_len: int,
    temperature: float = 0.8,
    top_k: int = 40,
    seed: int = 0,
) -> tuple[list[int], list[int]]:
    """Decoder only: ``(prompt_ids, new_ids)``, up to ``num_tokens`` sampled ids.

    Cached decoding (:func:`generate`) on ``run``'s mesh, within a context of
    ``seq_len`` tokens: the prompt keeps its last ``seq_len - 1`` ids and at most
    ``seq_len - len(prompt_ids)`` ids are drawn, with ``temperature`` (0 = greedy)
    among the ``top_k`` most likely. Only ids below ``tokenizer.vocab_size`` are
    candidates: a model whose embedding table is larger than the tokenizer
    (``model.vocab_size`` > ``data.tokenizer_vocab_size``) has logits for ids that
    decode to nothing, and those are masked out, and so are the tokenizer's reserved
    pieces (pad, [MASK], sentinels, ...: ``tokenizer.special_mask``) other than EOS.
    Sampling stops before EOS.
    """
    cfg = run.model.config
    prompt_ids = list(tokenizer.encode(prompt))[-(seq_len - 1) :]
    n = min(num_tokens, seq_len - len(prompt_ids))
    if n <= 0 or not prompt_ids:
        return prompt_ids, []
    opts = Options(
        max_new_tokens=n,
        eos_id=int(tokenizer.eos_id),
        pad_id=max(int(getattr(tokenizer, "pad_id", 0)), 0),
        temperature=float(temperature),
        top_k=int(top_k),
    )
    allowed = allowed_ids(tokenizer, cfg.vocab_size)
    out = generate(cfg, params, [prompt_ids], opts, seed=seed, allowed=allowed, mesh=run.mesh)
    new = out["tokens"][0, : int(out["lengths"][0])].tolist()
    if new and new[-1] == tokenizer.eos_id:
        new = new[:-1]
    return prompt_ids, new


__all__ = [
    "Options",
    "allowed_ids",
    "beam_search",
    "choose",
    "decode_mask",
    "fill_mask",
    "generate",
    "length_penalty",
    "printable",
    "sample_ids",
    "sample_loop",
    "sampleable_ids",
    "top_k_mask",
    "top_p_mask",
]

