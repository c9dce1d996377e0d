"""Typed, frozen configuration of a t5x_lite run.

The entry point (``run_train.py``) turns ml_collections or gin input into a plain
nested dict once and calls :func:`from_dict`; every module below receives only the
frozen section it needs (``ModelConfig`` for models, ``DataConfig`` for the input
pipeline, ...). Variants are made with :func:`dataclasses.replace`.

Validation happens here, before any array is built: each problem is reported as a
one-line :class:`ConfigError` naming the offending field, e.g.::

    >>> from_dict({"model": {"family": "decoder", "d_model": 10, "num_heads": 3}})
    Traceback (most recent call last):
    ...
    t5x_lite.config.ConfigError: model.d_model=10 is not divisible by model.num_heads=3

This module imports only the standard library.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any

FAMILIES = ("encoder", "decoder", "encoder_decoder")
ARCHS = {
    "encoder": ("bert", "roberta", "albert"),
    "decoder": ("gpt2", "llama"),
    "encoder_decoder": ("t5", "t5_v1_1"),
}

# Objectives each model family trains on (see DataConfig).
FAMILY_OBJECTIVES = {
    "decoder": ("causal_lm", "prefix_lm"),
    "encoder": ("mlm",),
    "encoder_decoder": ("span_corruption", "ul2"),
}


class ConfigError(ValueError):
    """A one-line error naming the config field (or file) at fault."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one Transformer.

    ``family`` picks the stack (encoder | decoder | encoder_decoder); ``arch`` picks
    the published variant whose layout and Hugging Face names we follow:

    =========  ===============  =================================================
    family     arch             what it means
    =========  ===============  =================================================
    encoder    bert, roberta    post-LN, GELU, learned positions, tied MLM head
    encoder    albert           bert + factorised ``embed_dim`` + shared layers
    decoder    gpt2             pre-LN, learned positions, tied LM head
    decoder    llama            RMSNorm, RoPE, SwiGLU, GQA, untied head
    enc_dec    t5               ReLU, relative bias, tied head * d_model**-0.5
    enc_dec    t5_v1_1          gated-GELU, relative bias, untied head
    =========  ===============  =================================================
    """

    family: str = "decoder"
    arch: str = "gpt2"
    vocab_size: int = 32128
    d_model: int = 128
    num_heads: int = 4
    num_layers: int = 2
    d_ff: int = 512
    max_seq_len: int = 512
    # Per-head width; None means d_model // num_heads (T5 allows heads*head_dim != d_model).
    head_dim: int | None = None
    # Grouped-query attention (llama); None means num_heads (multi-head attention).
    num_kv_heads: int | None = None
    # T5 decoder depth; None means num_layers.
    num_decoder_layers: int | None = None
    # ALBERT factorised embedding width; None means d_model.
    embed_dim: int | None = None
    # ALBERT cross-layer parameter sharing (one layer applied num_layers times).
    share_layers: bool = False
    # BERT segment (token type) vocabulary; 0 disables segment embeddings.
    type_vocab_size: int = 0
    # RoBERTa: learned positions start at pad_token_id + 1 (HF's padding_idx offset).
    position_offset: int = 0
    pad_token_id: int = 0
    norm_eps: float = 1e-5
    activation: str = "gelu_new"  # gelu | gelu_new (tanh) | relu | silu
    rope_theta: float = 10000.0
    relative_num_buckets: int = 32
    relative_max_distance: int = 128
    # Encoders: pooler + 2-way head for NSP / SOP.
    sentence_head: bool = False
    dropout_rate: float = 0.0
    initializer_range: float = 0.02
    # Compute dtype of activations and matmuls; params stay in param_dtype.
    dtype: str = "float32"
    param_dtype: str = "float32"
    # Implementation passed to jax.nn.dot_product_attention: xla | cudnn (cudnn needs
    # dtype bfloat16 or float16).
    attention_impl: str = "xla"
    # Rematerialisation of each layer (t5x_lite.layers.remat), one meaning for every
    # family: none | full (recompute the whole layer in the backward pass) | dots (save
    # the outputs of matmuls without batch dimensions, i.e. the weight projections, and
    # recompute attention and elementwise ops:
    # jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims).
    remat_policy: str = "none"

    # ---- derived quantities (never stored separately) ----
    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def head_size(self) -> int:
        return self.head_dim or self.d_model // self.num_heads

    @property
    def decoder_layers(self) -> int:
        return self.num_decoder_layers or self.num_layers

    @property
    def embedding_dim(self) -> int:
        return self.embed_dim or self.d_model

    def validate(self) -> ModelConfig:
        _check(self.family in FAMILIES, f"model.family={self.family!r} is not one of {FAMILIES}")
        _check(
            self.arch in ARCHS[self.family],
            f"model.arch={self.arch!r} is not one of {ARCHS[self.family]} for family "
            f"{self.family!r}",
        )
        for name in ("vocab_size", "d_model", "num_heads", "num_layers", "d_ff", "max_seq_len"):
            v = getattr(self, name)
            _check(isinstance(v, int) and v > 0, f"model.{name}={v!r} must be a positive integer")
        if self.head_dim is None:
            _check(
                self.d_model % self.num_heads == 0,
                f"model.d_model={self.d_model} is not divisible by model.num_heads="
                f"{self.num_heads}",
            )
        else:
            _check(self.head_dim > 0, f"model.head_dim={self.head_dim} must be positive")
            _check(
                self.arch in ("t5", "t5_v1_1", "llama")
                or self.num_heads * self.head_dim == self.d_model,
                f"model.head_dim={self.head_dim} x model.num_heads={self.num_heads} != "
                f"model.d_model={self.d_model}; only arch t5, t5_v1_1 and llama allow that",
            )
        _check(
            self.num_heads % self.kv_heads == 0,
            f"model.num_heads={self.num_heads} is not divisible by model.num_kv_heads="
            f"{self.kv_heads}",
        )
        _check(
            self.kv_heads == self.num_heads or self.arch == "llama",
            f"model.num_kv_heads={self.num_kv_heads} needs arch 'llama' (grouped-query)",
        )
        _check(
            self.embedding_dim == self.d_model or self.arch == "albert",
            f"model.embed_dim={self.embed_dim} differs from d_model; only arch 'albert' "
            "factorises embeddings",
        )
        _check(
            not self.share_layers or self.arch == "albert",
            "model.share_layers=True needs arch 'albert'",
        )
        _check(
            self.activation in ("gelu", "gelu_new", "relu", "silu"),
            f"model.activation={self.activation!r} is not one of gelu, gelu_new, relu, silu",
        )
        for name in ("dtype", "param_dtype"):
            v = getattr(self, name)
            _check(
                v in ("float32", "bfloat16", "float16"),
                f"model.{name}={v!r} is not one of float32, bfloat16, float16",
            )
        _check(
            self.attention_impl in ("xla", "cudnn"),
            f"model.attention_impl={self.attention_impl!r} is not one of xla, cudnn",
        )
        _check(
            self.attention_impl != "cudnn" or self.dtype in ("bfloat16", "float16"),
            f"model.attention_impl='cudnn' needs model.dtype bfloat16 or float16 "
            f"(got {self.dtype!r})",
        )
        _check(
            self.remat_policy in ("none", "full", "dots"),
            f"model.remat_policy={self.remat_policy!r} is not one of none, full, dots",
        )
        _check(
            0.0 <= self.dropout_rate < 1.0,
            f"model.dropout_rate={self.dropout_rate} must be in [0, 1)",
        )
        return self


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class DataConfig:
    """Input pipeline: corpus, tokenizer, objective, packing (see :mod:`t5x_lite.data`).

    Objectives and the model family that consumes them: ``causal_lm`` and ``prefix_lm``
    (decoder), ``mlm`` with ``sentence_objective`` none | nsp | sop (encoder),
    ``span_corruption`` and ``ul2`` (encoder-decoder).
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

    # Smallest seq_len each objective can fill with at least one real token of content.
    MIN_SEQ_LEN: typing.ClassVar[dict[str, int]] = {
        "causal_lm": 2,
        "prefix_lm": 3,
        "mlm": 4,
        "nsp": 8,
        "sop": 8,
        "span_corruption": 8,
        "ul2": 16,
    }

    def validate(self) -> DataConfig:
        _check(
            self.objective in ("causal_lm", "prefix_lm", "mlm", "span_corruption", "ul2"),
            f"data.objective={self.objective!r} is not one of causal_lm, prefix_lm, mlm, "
            "span_corruption, ul2",
        )
        _check(
            self.sentence_objective in ("none", "nsp", "sop"),
            f"data.sentence_objective={self.sentence_objective!r} is not one of none, nsp, sop",
        )
        _check(
            self.sentence_objective == "none" or self.objective == "mlm",
            f"data.sentence_objective={self.sentence_objective!r} needs data.objective='mlm' "
            f"(got {self.objective!r})",
        )
        key = self.objective if self.sentence_objective == "none" else self.sentence_objective
        minimum = self.MIN_SEQ_LEN[key]
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
        for name in ("prefetch_batches", "num_workers"):
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


# --------------------------------------------------------------------------- optimizer


@dataclass(frozen=True)
class OptimizerConfig:
    """Optimizer chain and learning-rate schedule (see :mod:`t5x_lite.optim`).

    Which fields each choice reads:

    * ``b1``, ``b2``, ``eps``: AdamW only. Adafactor uses T5's fixed settings
      (second-moment decay ``1 - t**-0.8``, epsilon 1e-30, no momentum, update
      clipping at RMS 1, relative step size) and ignores them.
    * ``min_lr_ratio``: the ``cosine`` and ``linear`` schedules (their value at
      ``train.num_steps``); ``inverse_sqrt`` and ``constant`` ignore it.
    * ``warmup_steps``, ``weight_decay`` (decoupled, masked by ``no_decay``),
      ``grad_clip_norm``, ``z_loss``, ``label_smoothing``: both optimizers.
    """

    name: str = "adamw"  # adamw | adafactor
    learning_rate: float = 3e-4
    schedule: str = "cosine"  # cosine | inverse_sqrt | constant | linear
    warmup_steps: int = 100
    # cosine / linear end at learning_rate * min_lr_ratio at train.num_steps (the
    # inverse_sqrt and constant schedules ignore it).
    min_lr_ratio: float = 0.1
    # AdamW moments and epsilon (adafactor ignores these three; see the docstring).
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    # Parameters whose path contains one of these names are not decayed.
    no_decay: tuple[str, ...] = ("bias", "scale", "embedding")
    grad_clip_norm: float = 1.0  # 0 disables
    z_loss: float = 0.0
    label_smoothing: float = 0.0

    def validate(self) -> OptimizerConfig:
        _check(
            self.name in ("adamw", "adafactor"),
            f"optimizer.name={self.name!r} is not one of adamw, adafactor",
        )
        _check(
            self.schedule in ("cosine", "inverse_sqrt", "constant", "linear"),
            f"optimizer.schedule={self.schedule!r} is not one of cosine, inverse_sqrt, "
            "constant, linear",
        )
        _check(self.learning_rate > 0, f"optimizer.learning_rate={self.learning_rate} must be > 0")
        _check(self.warmup_steps >= 0, f"optimizer.warmup_steps={self.warmup_steps} must be >= 0")
        _check(
            0.0 <= self.label_smoothing < 1.0,
            f"optimizer.label_smoothing={self.label_smoothing} must be in [0, 1)",
        )
        for name in ("weight_decay", "grad_clip_norm", "z_loss", "eps"):
            v = getattr(self, name)
            _check(v >= 0, f"optimizer.{name}={v} must be >= 0")
        _check(
            0.0 <= self.min_lr_ratio <= 1.0,
            f"optimizer.min_lr_ratio={self.min_lr_ratio} must be in [0, 1]",
        )
        for name in ("b1", "b2"):
            v = getattr(self, name)
            _check(0.0 <= v < 1.0, f"optimizer.{name}={v} must be in [0, 1)")
        return self


# --------------------------------------------------------------------------- train


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 32  # global, in rows
    num_steps: int = 1000
    # Gradient accumulation: batch_size rows are split into this many microbatches.
    microbatches: int = 1
    log_every: int = 10
    eval_every: int = 200
    eval_batches: int = 8
    seed: int = 0
    # Peak FLOP/s per device for MFU: a name from t5x_lite.flops.PEAK_FLOPS, a number, or auto.
    peak_flops: str = "auto"
    # Prompt sampled at the end of a decoder run.
    sample_prompt: str = "In the beginning"
    sample_tokens: int = 40
    progress_bar: bool = True
    plot_every: int = 100

    def validate(self) -> TrainConfig:
        positive = ("batch_size", "num_steps", "microbatches", "log_every", "eval_every")
        for name in (*positive, "plot_every"):
            v = getattr(self, name)
            _check(isinstance(v, int) and v > 0, f"train.{name}={v!r} must be a positive integer")
        _check(
            self.batch_size % self.microbatches == 0,
            f"train.batch_size={self.batch_size} is not divisible by train.microbatches="
            f"{self.microbatches}",
        )
        _check(
            isinstance(self.eval_batches, int) and self.eval_batches >= 0,
            f"train.eval_batches={self.eval_batches!r} must be a non-negative integer",
        )
        return self


@dataclass(frozen=True)
class MeshConfig:
    """Device mesh ``(data, fsdp, tensor)``; -1 fills the remaining devices."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1

    def resolve(self, num_devices: int) -> tuple[int, int, int]:
        """Concrete mesh shape for ``num_devices``, or a one-line ConfigError."""
        dims = {"data": self.data, "fsdp": self.fsdp, "tensor": self.tensor}
        free = [k for k, v in dims.items() if v == -1]
        _check(len(free) <= 1, f"mesh: only one of data/fsdp/tensor may be -1, got {free}")
        for k, v in dims.items():
            _check(v == -1 or v > 0, f"mesh.{k}={v} must be positive or -1")
        fixed = math.prod(v for v in dims.values() if v != -1)
        if free:
            _check(
                num_devices % fixed == 0,
                f"mesh: {dims} cannot fill {num_devices} devices ({num_devices} % {fixed} != 0)",
            )
            dims[free[0]] = num_devices // fixed
        total = math.prod(dims.values())
        _check(
            total == num_devices,
            f"mesh: data*fsdp*tensor = {dims['data']}*{dims['fsdp']}*{dims['tensor']} = {total} "
            f"differs from the {num_devices} available devices",
        )
        return dims["data"], dims["fsdp"], dims["tensor"]


@dataclass(frozen=True)
class CheckpointConfig:
    every_steps: int = 500
    keep: int = 3
    async_save: bool = True
    # Save a checkpoint at the current step on SIGTERM / SIGINT, then exit.
    save_on_preemption: bool = True

    def validate(self) -> CheckpointConfig:
        for name in ("every_steps", "keep"):
            v = getattr(self, name)
            _check(
                isinstance(v, int) and v > 0, f"checkpoint.{name}={v!r} must be a positive integer"
            )
        return self


@dataclass(frozen=True)
class ScalingConfig:
    """Compute-optimal planning (``flops_budget``) and IsoFLOP sweeps (``sweep_*``).

    See :mod:`t5x_lite.scaling`: ``python -m t5x_lite.scaling sweep`` trains, for each
    budget in ``sweep_budgets``, ``sweep_sizes`` models whose parameter counts are
    log-spaced over ``N_opt / sweep_spread ... N_opt * sweep_spread`` around the
    ``fit``'s optimum.
    """

    # When > 0, the planner picks the model shape and train.num_steps from this budget.
    flops_budget: float = 0.0
    # A built-in fit name (hoffmann2022 | besiroglu2024) or a path to a fit JSON file.
    fit: str = "hoffmann2022"
    # IsoFLOP sweep: budgets in FLOPs (C = 6 N D), model sizes per budget, size spread.
    sweep_budgets: tuple[float, ...] = ()
    sweep_sizes: int = 5
    sweep_spread: float = 4.0

    def validate(self) -> ScalingConfig:
        _check(
            math.isfinite(self.flops_budget) and self.flops_budget >= 0,
            f"scaling.flops_budget={self.flops_budget} must be >= 0 (0 disables planning)",
        )
        for b in self.sweep_budgets:
            _check(
                math.isfinite(b) and b > 0, f"scaling.sweep_budgets has {b}; budgets must be > 0"
            )
        _check(self.sweep_sizes >= 1, f"scaling.sweep_sizes={self.sweep_sizes} must be >= 1")
        _check(
            math.isfinite(self.sweep_spread) and self.sweep_spread >= 1.0,
            f"scaling.sweep_spread={self.sweep_spread} must be >= 1",
        )
        return self


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)

    def validate(self) -> Config:
        self.model.validate()
        self.data.validate()
        self.optimizer.validate()
        self.train.validate()
        self.checkpoint.validate()
        self.scaling.validate()
        for name in ("data", "fsdp", "tensor"):
            v = getattr(self.mesh, name)
            _check(v == -1 or v > 0, f"mesh.{name}={v} must be positive or -1")
        self._check_objective_fits_model()
        # Learned position tables (GPT-2, BERT, RoBERTa after its offset) hold
        # max_seq_len positions; T5 (relative) and Llama (RoPE) keep the same bound as
        # their documented context length.
        _check(
            self.data.seq_len <= self.model.max_seq_len,
            f"data.seq_len={self.data.seq_len} exceeds model.max_seq_len={self.model.max_seq_len}",
        )
        if self.data.tokenizer_vocab_size is not None:
            _check(
                self.data.tokenizer_vocab_size <= self.model.vocab_size,
                f"data.tokenizer_vocab_size={self.data.tokenizer_vocab_size} exceeds "
                f"model.vocab_size={self.model.vocab_size}",
            )
        if self.data.target_len is not None:
            _check(
                self.data.target_len <= self.model.max_seq_len,
                f"data.target_len={self.data.target_len} exceeds model.max_seq_len="
                f"{self.model.max_seq_len}",
            )
        return self

    def _check_objective_fits_model(self) -> None:
        """``data.objective`` feeds ``model.family``; NSP/SOP iff ``model.sentence_head``.

        E.g. ``model.family='decoder'`` with ``data.objective='mlm'`` -> "data.objective='mlm'
        does not train model.family='decoder' (use one of causal_lm, prefix_lm)".
        """
        family, objective = self.model.family, self.data.objective
        allowed = FAMILY_OBJECTIVES.get(family, ())
        _check(
            objective in allowed,
            f"data.objective={objective!r} does not train model.family={family!r} "
            f"(use one of {', '.join(allowed)})",
        )
        if family != "encoder":
            return
        sentence = self.data.sentence_objective
        if self.model.sentence_head:
            _check(
                sentence in ("nsp", "sop"),
                f"model.sentence_head=True needs data.sentence_objective='nsp' or 'sop' "
                f"(got {sentence!r}); set model.sentence_head=False for MLM alone",
            )
        else:
            _check(
                sentence == "none",
                f"data.sentence_objective={sentence!r} needs model.sentence_head=True "
                "(without it the sentence labels would be dropped)",
            )


# --------------------------------------------------------------------------- dict <-> config


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Coerce a plain value (from ml_collections/gin/JSON) to the field's annotated type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if origin is tuple:
        _check(
            isinstance(value, list | tuple), f"{where}={value!r} must be a list of {args[0]}"
        )
        return tuple(_coerce(v, args[0], where) for v in value)
    if annotation is bool:
        _check(isinstance(value, bool), f"{where}={value!r} must be true or false")
        return value
    if annotation is int:
        _check(
            (isinstance(value, int) and not isinstance(value, bool))
            or (isinstance(value, float) and value.is_integer()),
            f"{where}={value!r} must be an integer",
        )
        return int(value)
    if annotation is float:
        _check(
            isinstance(value, int | float) and not isinstance(value, bool),
            f"{where}={value!r} must be a number",
        )
        return float(value)
    if annotation is str:
        _check(isinstance(value, str), f"{where}={value!r} must be a string")
        return value
    return value


def section_from_dict(cls: type, values: dict[str, Any], prefix: str) -> Any:
    """Build one frozen section from a dict, rejecting unknown fields by name."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        _check(key in names, f"unknown config field {prefix}.{key}")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}") for k, v in values.items()}
    return cls(**kwargs)


def from_dict(values: dict[str, Any]) -> Config:
    """A validated :class:`Config` from a nested dict; unknown fields are errors."""
    hints = typing.get_type_hints(Config)
    for key in values:
        _check(key in hints, f"unknown config section {key!r}")
    sections = {
        name: section_from_dict(hints[name], dict(values.get(name) or {}), name) for name in hints
    }
    return Config(**sections).validate()


def model_from_dict(values: dict[str, Any]) -> ModelConfig:
    """A validated :class:`ModelConfig` from a flat dict (e.g. a preset's model section)."""
    return section_from_dict(ModelConfig, values, "model").validate()


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config (tuples become lists), e.g. for config.json."""
    out = dataclasses.asdict(cfg)

    def fix(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: fix(v) for k, v in x.items()}
        if isinstance(x, tuple | list):
            return [fix(v) for v in x]
        return x

    return fix(out)
