"""``DataConfig``: corpus, tokenizer, objective and packing of the input pipeline."""

from __future__ import annotations

from dataclasses import dataclass

from t5x_lite.config import objectives
from t5x_lite.config.errors import check as _check


@dataclass(frozen=True)
class DataConfig:
    """Input pipeline: corpus, tokenizer, objective, packing (see :mod:`t5x_lite.data`).

    Objectives and the model family that consumes them: ``causal_lm`` and ``prefix_lm``
    (decoder), ``mlm`` with ``sentence_objective`` none | nsp | sop (encoder),
    ``span_corruption`` and ``ul2`` (encoder-decoder); each is a row of the objective
    table (:mod:`t5x_lite.config.objectives`) declared by its module in ``data/``.
    """

    # kjv | a directory of .txt/.jsonl files | tfds:NAME (a prepared array_record dataset)
    corpus: str = "kjv"
    # Where TFDS datasets, trained tokenizers and token caches live
    # (None: ~/.cache/t5x_lite/tfds).
    data_dir: str | None = None
    # Text feature of a tfds:NAME dataset or of .jsonl records.
    text_key: str = "text"
    train_split: str = "train"
    eval_split: str = "validation"
    # Existing SentencePiece .model; None trains one on the corpus (cached in data_dir).
    tokenizer: str | None = None
    # Size of the tokenizer trained on the corpus (None: model.vocab_size). It may be
    # smaller than model.vocab_size, as nanoGPT pads GPT-2's 50257 ids to 50304: the
    # model keeps its embedding rows and ids >= this size are never fed, targeted or
    # sampled. Ignored when data.tokenizer names a file (its own size counts).
    tokenizer_vocab_size: int | None = None
    tokenizer_type: str = "bpe"  # bpe | unigram
    # causal_lm | prefix_lm | mlm | span_corruption | ul2
    objective: str = "causal_lm"
    # Encoders: none | nsp | sop
    sentence_objective: str = "none"
    seq_len: int = 128
    # Encoder-decoder target length; None derives it (span_corruption: T5's
    # random_spans_helper arithmetic, so that rows are full; ul2: seq_len).
    target_len: int | None = None
    mlm_probability: float = 0.15
    mask_token_rate: float = 0.8
    random_token_rate: float = 0.1
    whole_word_masking: bool = False
    noise_density: float = 0.15
    mean_noise_span_length: float = 3.0
    # UL2 mixture of denoiser kinds R | S | X with weights, e.g. "R:0.5,S:0.25,X:0.25"
    # (see t5x_lite.data.ul2).
    ul2_mixture: str = "R:0.4,S:0.2,X:0.4"
    # prefix LM: prefix length as a fraction of the row (0 => uniform random per row).
    prefix_fraction: float = 0.0
    # Non-UTF-8 input: skip (counted warning) | error.
    on_bad_utf8: str = "skip"
    seed: int = 0
    # Batches prepared ahead by a background thread (0: computed on demand).
    prefetch_batches: int = 2
    # grain worker processes (0: in the training process).
    num_workers: int = 0
    # Unique-token budget of the training split (0: all of it): training reads only a
    # seeded random subset of whole documents holding at least this many tokens, and
    # repeats it epoch after epoch (data-constrained runs; t5x_lite.scaling.repeats).
    unique_tokens: int = 0

    def validate(self) -> DataConfig:
        token_objectives = objectives.names("token")
        sentence_objectives = ("none", *objectives.names("sentence"))
        _check(
            self.objective in token_objectives,
            f"data.objective={self.objective!r} is not one of {', '.join(token_objectives)}",
        )
        _check(
            self.sentence_objective in sentence_objectives,
            f"data.sentence_objective={self.sentence_objective!r} is not one of "
            f"{', '.join(sentence_objectives)}",
        )
        if self.sentence_objective != "none":
            needs = objectives.spec(self.sentence_objective).requires
            _check(
                self.objective == needs,
                f"data.sentence_objective={self.sentence_objective!r} needs data.objective="
                f"{needs!r} (got {self.objective!r})",
            )
        key = self.objective if self.sentence_objective == "none" else self.sentence_objective
        # Smallest seq_len the objective can fill with at least one real token of content.
        minimum = objectives.spec(key).min_seq_len
        _check(
            isinstance(self.seq_len, int) and self.seq_len >= minimum,
            f"data.seq_len={self.seq_len} is below the minimum {minimum} of objective {key!r}",
        )
        _check(
            self.target_len is None or self.target_len >= 2,
            f"data.target_len={self.target_len} must be >= 2 (or None to derive it)",
        )
        _check(bool(self.corpus), "data.corpus is empty (kjv, a directory, or tfds:NAME)")
        _check(bool(self.text_key), "data.text_key is empty")
        _check(
            self.tokenizer_type in ("bpe", "unigram"),
            f"data.tokenizer_type={self.tokenizer_type!r} is not one of bpe, unigram",
        )
        _check(
            self.tokenizer_vocab_size is None
            or (isinstance(self.tokenizer_vocab_size, int) and self.tokenizer_vocab_size > 0),
            f"data.tokenizer_vocab_size={self.tokenizer_vocab_size!r} must be a positive integer "
            "(or None for model.vocab_size)",
        )
        _check(
            self.on_bad_utf8 in ("skip", "error"),
            f"data.on_bad_utf8={self.on_bad_utf8!r} is not one of skip, error",
        )
        _check(
            0.0 < self.mlm_probability < 1.0,
            f"data.mlm_probability={self.mlm_probability} must be in (0, 1)",
        )
        _check(
            self.mask_token_rate >= 0
            and self.random_token_rate >= 0
            and self.mask_token_rate + self.random_token_rate <= 1.0,
            f"data.mask_token_rate={self.mask_token_rate} and data.random_token_rate="
            f"{self.random_token_rate} must be >= 0 with a sum <= 1",
        )
        _check(
            0.0 < self.noise_density < 1.0,
            f"data.noise_density={self.noise_density} must be in (0, 1)",
        )
        _check(
            self.mean_noise_span_length >= 1.0,
            f"data.mean_noise_span_length={self.mean_noise_span_length} must be >= 1",
        )
        _check(
            0.0 <= self.prefix_fraction < 1.0,
            f"data.prefix_fraction={self.prefix_fraction} must be in [0, 1)",
        )
        parse_ul2_mixture(self.ul2_mixture)
        for name in ("prefetch_batches", "num_workers", "unique_tokens"):
            v = getattr(self, name)
            _check(isinstance(v, int) and v >= 0, f"data.{name}={v!r} must be >= 0")
        return self


def parse_ul2_mixture(spec: str) -> dict[str, float]:
    """``"R:0.4,S:0.2,X:0.4"`` -> ``{"R": 0.4, "S": 0.2, "X": 0.4}`` (weights normalised).

    Kinds: R (regular span corruption), X (extreme: long spans or high density),
    S (sequential: prefix LM). A malformed spec is a one-line ConfigError.
    """
    out: dict[str, float] = {}
    for part in spec.split(","):
        name, sep, weight = part.strip().partition(":")
        name = name.strip().upper()
        try:
            w = float(weight)
        except ValueError:
            w = -1.0
        _check(
            bool(sep) and name in ("R", "S", "X") and name not in out and w >= 0,
            f"data.ul2_mixture={spec!r}: expected comma-separated KIND:WEIGHT with KIND in "
            "R, S, X (each once) and WEIGHT >= 0",
        )
        out[name] = w
    total = sum(out.values())
    _check(total > 0, f"data.ul2_mixture={spec!r}: weights sum to 0")
    return {k: v / total for k, v in out.items()}
