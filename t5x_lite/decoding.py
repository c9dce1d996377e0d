"""Decoding: sampling continuations from a trained decoder.

:func:`sample_ids` draws a continuation of a prompt with temperature and top-k from
the jitted, sharded logits of :class:`t5x_lite.steps.Steps`, never emitting ids the
tokenizer reserves (pad, [MASK], sentinels, mode tokens) or ids past its vocabulary.
Key/value-cached incremental decoding and beam search belong here too.
"""

from __future__ import annotations

import unicodedata
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from t5x_lite import steps
from t5x_lite.partitioning import replicated_value


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
    """Decoder only: ``(prompt_ids, new_ids)``, up to ``num_tokens`` sampled ids (no KV cache).

    Each new token re-runs the model on a fixed ``[1, seq_len]`` buffer (right-padded;
    causal attention keeps padding from affecting earlier positions) and samples the
    logits at the last filled position with ``temperature`` (0 = greedy) among the
    ``top_k`` most likely tokens. Only ids below ``tokenizer.vocab_size`` are candidates:
    a model whose embedding table is larger than the tokenizer (``model.vocab_size`` >
    ``data.tokenizer_vocab_size``) has logits for ids that decode to nothing, and those
    are masked out, and so are the tokenizer's reserved pieces (pad, [MASK], sentinels,
    ...: ``tokenizer.special_mask``) other than EOS. Sampling stops before EOS.
    """
    prompt_ids = list(tokenizer.encode(prompt))[-(seq_len - 1) :]
    ids = list(prompt_ids)
    start = len(ids)
    rng = np.random.default_rng(seed)
    limit = int(tokenizer.vocab_size)
    pad = max(getattr(tokenizer, "pad_id", 0), 0)
    reserved = ~sampleable_ids(tokenizer)  # [V_tokenizer] bool
    replicated = NamedSharding(run.mesh, PartitionSpec())
    for _ in range(num_tokens):
        window = ids[-seq_len:]
        buf = np.full((1, seq_len), pad, np.int32)
        buf[0, : len(window)] = window
        batch = {"input_ids": jax.make_array_from_process_local_data(replicated, buf)}
        # [V_model] -> [V_tokenizer]: ids past the tokenizer's vocabulary are never drawn.
        logits = replicated_value(run.run(run.logits, params, batch))[0, len(window) - 1, :limit]
        logits = np.where(reserved, -np.inf, logits.astype(np.float64))
        if temperature <= 0:
            nxt = int(np.argmax(logits))
        else:
            z = logits.astype(np.float64) / temperature
            top = np.argsort(z)[-top_k:]
            p = np.exp(z[top] - z[top].max())
            nxt = int(top[rng.choice(len(top), p=p / p.sum())])
        if nxt == tokenizer.eos_id:
            break
        ids.append(nxt)
    return prompt_ids, ids[start:]
