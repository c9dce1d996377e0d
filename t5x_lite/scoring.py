"""Log-likelihood of continuations: the one scoring path of few-shot evaluation,
the lm-eval adapter and the pipelines.

A request is a pair of token lists ``(context, continuation)``; its score is the summed
log-probability of the continuation's tokens given the context, and whether greedy
decoding would have produced them (lm-eval's ``(logprob, is_greedy)``). Both come from
the model object's own :meth:`~t5x_lite.models.BaseModel.score_batch` and
:meth:`~t5x_lite.models.BaseModel.predict_batch` in one jitted function (XLA shares
their forward pass), so there is no second model path.

**Decoders** (GPT-2, Llama, ...): a row is ``(context + continuation)[-(L + 1):]``
(``L`` = :attr:`Scorer.max_length`, the model's context; left truncation, as
lm-eval's), shifted by one::

    >>> decoder_row([5, 6], [7, 8], max_length=8)
    ([5, 6, 7], [6, 7, 8], [0, 1, 1])

(``input_ids``, ``labels``, ``loss_weights``: the continuation's two tokens are scored.)

**Encoder-decoders** (T5): the context is the encoder's input, ended by EOS as T5's
pretraining rows are; the continuation is the decoder's target, fed from T5's start
id 0 (teacher forcing)::

    >>> t5_rows([5, 6], [7, 8], eos_id=1, max_length=8)
    ([5, 6, 1], [0, 7], [7, 8])

(``input_ids``, ``decoder_input_ids``, ``labels``.) Rows are right-padded to the next
**bucket** (a power of two from 16, at most ``L``) and batches to ``batch_size`` rows
(padding rows weigh 0), so a task with many lengths compiles once per bucket, not per
example. Encoder-only models have no continuation likelihood: a one-line ConfigError.

:func:`encode_pair` splits text as lm-eval does, so our scorer and the adapter see
the same tokens.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from t5x_lite import models
from t5x_lite.config import ConfigError

Pair = tuple[Sequence[int], Sequence[int]]
MIN_BUCKET = 16


def encode_pair(
    encode: Callable[[str], list[int]], context: str, continuation: str, seq2seq: bool
) -> tuple[list[int], list[int]]:
    """``(context_ids, continuation_ids)`` as lm-eval's ``TemplateLM._encode_pair``.

    Trailing spaces of the context move to the continuation; a decoder encodes the
    whole text and takes the continuation as what follows the context's ids; T5
    encodes both parts apart. E.g. ``("Q: 2+2? A: ", "4")`` becomes the texts
    ``"Q: 2+2? A:"`` and ``" 4"``.
    """
    spaces = len(context) - len(context.rstrip())
    if spaces:
        continuation = context[-spaces:] + continuation
        context = context[:-spaces]
    context_ids = list(encode(context))
    if seq2seq:
        return context_ids, list(encode(continuation))
    whole = list(encode(context + continuation))
    return context_ids, whole[len(context_ids) :]


def bucket(length: int, max_length: int) -> int:
    """Padded length of a row of ``length`` tokens: the next power of two from
    :data:`MIN_BUCKET`, capped at ``max_length`` (``bucket(17, 48) == 32``,
    ``bucket(40, 48) == 48``)."""
    b = MIN_BUCKET
    while b < length:
        b *= 2
    return max(min(b, max_length), length)


def decoder_row(
    context: Sequence[int], continuation: Sequence[int], max_length: int
) -> tuple[list[int], list[int], list[int]]:
    """``(input_ids, labels, loss_weights)`` of one decoder request (see the module
    docstring); at most ``max_length`` tokens, the continuation's last ones scored."""
    whole = (list(context) + list(continuation))[-(max_length + 1) :]
    scored = min(len(continuation), len(whole) - 1)
    inputs, labels = whole[:-1], whole[1:]
    weights = [0] * (len(labels) - scored) + [1] * scored
    return inputs, labels, weights


def t5_rows(
    context: Sequence[int], continuation: Sequence[int], eos_id: int, max_length: int
) -> tuple[list[int], list[int], list[int]]:
    """``(input_ids, decoder_input_ids, labels)`` of one T5 request: the context's last
    ``max_length - 1`` ids + EOS, the continuation's first ``max_length`` ids."""
    inputs = [*list(context)[-(max_length - 1) :], eos_id]
    labels = list(continuation)[:max_length]
    return inputs, [0, *labels[:-1]], labels


@functools.lru_cache(maxsize=8)
def _score_fn(model: models.BaseModel) -> Callable[..., tuple[jax.Array, jax.Array]]:
    def fn(params: Any, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        logp = model.score_batch(params, batch)  # [B]
        pred = model.predict_batch(params, batch)["predictions"]  # [B, T]
        w = batch["loss_weights"] > 0
        greedy = jnp.all((pred == batch["labels"]) | ~w, axis=-1)  # [B]
        return logp, greedy

    return jax.jit(fn)


class Scorer:
    """Batched, bucketed log-likelihoods under a loaded run (:func:`t5x_lite.load`).

    ``Scorer(run).score([(context_ids, continuation_ids), ...])`` -> list of
    ``(logprob, is_greedy)``, in request order. ``max_length`` caps the rows (default
    and maximum: ``model.max_seq_len``); ``batch_size`` rows per call.
    """

    def __init__(self, run: Any, batch_size: int = 16, max_length: int | None = None):
        cfg = run.config.model
        if cfg.family not in ("decoder", "encoder_decoder"):
            raise ConfigError(
                f"log-likelihood scoring needs a decoder or encoder-decoder model; "
                f"{run.path} is a {cfg.family} ({cfg.arch})"
            )
        if batch_size < 1:
            raise ConfigError(f"batch_size={batch_size} must be at least 1")
        limit = int(cfg.max_seq_len)
        if max_length is not None and not 2 <= max_length <= limit:
            raise ConfigError(
                f"max_length={max_length} must be in [2, {limit}] (model.max_seq_len)"
            )
        self.run = run
        self.family = cfg.family
        self.max_length = int(max_length or limit)
        self.batch_size = int(batch_size)
        self.eos_id = int(run.tokenizer.eos_id) if run.tokenizer is not None else 1
        self.fn = _score_fn(run.model)

    # ------------------------------------------------------------------ rows

    def _rows(self, pair: Pair) -> dict[str, list[int]]:
        context, continuation = pair
        if not continuation:
            raise ConfigError("a continuation encodes to no tokens; nothing to score")
        if self.family == "decoder":
            if not context:
                raise ConfigError("a decoder needs at least one context token (e.g. EOS)")
            ids, labels, weights = decoder_row(context, continuation, self.max_length)
            return {"input_ids": ids, "labels": labels, "loss_weights": weights}
        ids, dec, labels = t5_rows(context, continuation, self.eos_id, self.max_length)
        return {
            "input_ids": ids,
            "decoder_input_ids": dec,
            "labels": labels,
            "loss_weights": [1] * len(labels),
        }

    def _batch(self, rows: list[dict[str, list[int]]]) -> dict[str, np.ndarray]:
        """Right-padded ``[batch_size, bucket]`` arrays (+ masks) of ``rows``."""
        n = self.batch_size
        enc = bucket(max(len(r["input_ids"]) for r in rows), self.max_length)
        out = {"input_ids": np.zeros((n, enc), np.int32)}
        out["attention_mask"] = np.zeros((n, enc), np.int32)
        dec = enc
        if self.family == "encoder_decoder":
            dec = bucket(max(len(r["labels"]) for r in rows), self.max_length)
            out["decoder_input_ids"] = np.zeros((n, dec), np.int32)
            out["decoder_attention_mask"] = np.zeros((n, dec), np.int32)
        out["labels"] = np.zeros((n, dec), np.int32)
        out["loss_weights"] = np.zeros((n, dec), np.float32)
        for i, r in enumerate(rows):
            out["input_ids"][i, : len(r["input_ids"])] = r["input_ids"]
            out["attention_mask"][i, : len(r["input_ids"])] = 1
            out["labels"][i, : len(r["labels"])] = r["labels"]
            out["loss_weights"][i, : len(r["labels"])] = r["loss_weights"]
            if "decoder_input_ids" in r:
                out["decoder_input_ids"][i, : len(r["labels"])] = r["decoder_input_ids"]
                out["decoder_attention_mask"][i, : len(r["labels"])] = 1
        return out

    # ------------------------------------------------------------------ scoring

    def truncated(self, pair: Pair) -> bool:
        """Whether ``pair`` loses context tokens to the ``max_length`` window."""
        context, continuation = pair
        if self.family == "decoder":
            return len(context) + len(continuation) > self.max_length + 1
        return len(context) + 1 > self.max_length or len(continuation) > self.max_length

    def score(self, pairs: Sequence[Pair]) -> list[tuple[float, bool]]:
        """``(logprob, is_greedy)`` of every ``(context_ids, continuation_ids)``."""
        rows = [self._rows(p) for p in pairs]
        key = [bucket(len(r["input_ids"]), self.max_length) for r in rows]
        if self.family == "encoder_decoder":
            key = [(k, bucket(len(r["labels"]), self.max_length)) for k, r in zip(key, rows)]
        order = sorted(range(len(rows)), key=lambda i: (key[i], i))
        out: list[tuple[float, bool]] = [(0.0, False)] * len(rows)
        start = 0
        while start < len(order):
            # One batch: up to batch_size requests of the same bucket.
            end = start
            while end < len(order) and end - start < self.batch_size:
                if key[order[end]] != key[order[start]]:
                    break
                end += 1
            chunk = order[start:end]
            logp, greedy = self.fn(self.run.params, self._batch([rows[i] for i in chunk]))
            logp, greedy = np.asarray(logp), np.asarray(greedy)
            for j, i in enumerate(chunk):
                out[i] = (float(logp[j]), bool(greedy[j]))
            start = end
        return out


__all__ = ["MIN_BUCKET", "Scorer", "bucket", "decoder_row", "encode_pair", "t5_rows"]
