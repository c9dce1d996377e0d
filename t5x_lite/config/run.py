"""Run sections (optimizer, train, mesh, checkpoint, scaling) and the whole ``Config``."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from t5x_lite.config import objectives
from t5x_lite.config.data import DataConfig
from t5x_lite.config.errors import check as _check
from t5x_lite.config.model import ModelConfig
from t5x_lite.config.peft import PeftConfig
from t5x_lite.config.task import TaskConfig

# What each optimizer's peak learning rate is when the config leaves it unset. AdamW's is
# GPT-3's small-model range; Adafactor scales updates by each parameter's RMS
# (multiply_by_parameter_scale), so T5's 1e-2 is its equivalent: at AdamW's 3e-4 it
# barely moves (eval perplexity 1792 against AdamW's 206 on llama_tiny, 500 steps).
DEFAULT_LEARNING_RATES = {"adamw": 3e-4, "adafactor": 1e-2}


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
    # Peak learning rate; None: the optimizer's own default (DEFAULT_LEARNING_RATES:
    # AdamW 3e-4; Adafactor 1e-2, as T5, since its updates are relative to each
    # parameter's RMS), filled in when the config is built (config.json records it).
    learning_rate: float | None = None
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

    @property
    def peak_learning_rate(self) -> float:
        """``learning_rate``, or the optimizer's default when it is None."""
        if self.learning_rate is not None:
            return float(self.learning_rate)
        return DEFAULT_LEARNING_RATES.get(self.name, DEFAULT_LEARNING_RATES["adamw"])

    def resolved(self) -> OptimizerConfig:
        """This config with ``learning_rate`` filled in (:attr:`peak_learning_rate`)."""
        return dataclasses.replace(self, learning_rate=self.peak_learning_rate)

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
        lr = self.learning_rate
        _check(lr is None or lr > 0, f"optimizer.learning_rate={lr} must be > 0")
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
    # Fine-tuning: start from the weights of PATH (a t5x_lite workdir, its latest
    # checkpoint; PATH@STEP for another step; or a Hugging Face directory). Read only
    # when the workdir holds no checkpoint yet (t5x_lite.loading.initial_params).
    init_from: str = ""
    # A non-finite loss or gradient norm: stop (no save of that state; the message
    # names the step and the last good checkpoint) or skip (that batch's update is
    # dropped on the device; metrics count the skips).
    on_nonfinite: str = "stop"
    # Several processes without JAX's preemption service: agree on a stop every N steps.
    preemption_check_every: int = 10
    # Batches transferred to the devices ahead of the step that reads them.
    prefetch_depth: int = 2

    def validate(self) -> TrainConfig:
        positive = ("batch_size", "num_steps", "microbatches", "log_every", "eval_every")
        for name in (*positive, "plot_every", "preemption_check_every"):
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
        _check(
            isinstance(self.prefetch_depth, int) and self.prefetch_depth >= 0,
            f"train.prefetch_depth={self.prefetch_depth!r} must be a non-negative integer",
        )
        _check(
            self.on_nonfinite in ("stop", "skip"),
            f"train.on_nonfinite={self.on_nonfinite!r} is not one of stop, skip",
        )
        return self


@dataclass(frozen=True)
class MeshConfig:
    """Device mesh ``(data, fsdp, tensor)``; -1 fills the remaining devices.

    ``dcn_data`` / ``dcn_fsdp``: how many of the ``data`` / ``fsdp`` axis's positions
    lie across slices (multi-slice TPU) or nodes (multi-node GPU), reached over the data
    centre network, as MaxText's ``dcn_*_parallelism``; the rest of each axis, and all
    of ``tensor``, stays inside a slice or node (ICI / NVLink). Both 1: a single slice.
    """

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    dcn_data: int = 1
    dcn_fsdp: int = 1

    def dcn_shape(self, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """``(dcn_data, dcn_fsdp, 1)`` for the resolved ``shape``, or a ConfigError."""
        for name, dcn, size in (
            ("data", self.dcn_data, shape[0]),
            ("fsdp", self.dcn_fsdp, shape[1]),
        ):
            _check(isinstance(dcn, int) and dcn > 0, f"mesh.dcn_{name}={dcn!r} must be positive")
            _check(
                size % dcn == 0,
                f"mesh.dcn_{name}={dcn} does not divide mesh.{name}={size}",
            )
        return self.dcn_data, self.dcn_fsdp, 1

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
    # Keep the best checkpoint by this eval metric (e.g. "accuracy", "macro_f1",
    # "exact_match", "loss") in <workdir>/best/; "" keeps none. best_mode: max | min.
    best_metric: str = ""
    best_mode: str = "max"

    def validate(self) -> CheckpointConfig:
        for name in ("every_steps", "keep"):
            v = getattr(self, name)
            _check(
                isinstance(v, int) and v > 0, f"checkpoint.{name}={v!r} must be a positive integer"
            )
        _check(
            self.best_mode in ("max", "min"),
            f"checkpoint.best_mode={self.best_mode!r} is not one of max, min",
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
    # Data-constrained sweep (t5x_lite.scaling.repeats): instead of sizes around N_opt,
    # one run per epoch count over data.unique_tokens unique tokens at each budget
    # (D = epochs x unique tokens, N = C / 6D), e.g. (1, 2, 4, 8, 16).
    sweep_epochs: tuple[float, ...] = ()
    # Tuned small runs (t5x_lite.scaling.tuning): every planned run trained at each of
    # these peak learning rates, the best (lowest mean eval loss over seeds) kept as
    # the sweep's point; and seed replicates (train.seed = data.seed = each), whose
    # spread weights the parametric fit. Empty: optimizer.learning_rate, one seed.
    sweep_lrs: tuple[float, ...] = ()
    sweep_seeds: tuple[int, ...] = ()
    # A learning-rate rule instead of a per-size search: (lr_ref, n_ref, exponent), each
    # planned run at lr_ref * (N / n_ref) ** -exponent for its total N (one rate per
    # run). `scaling report` of a tuned sweep fits it to the best rates found there;
    # exponent 0.5 is muP's 1/width for Adam at a fixed depth (N ~ width**2).
    sweep_lr_rule: tuple[float, ...] = ()
    # What a budget counts, for the planner, the sweep and the report alike: "6nd" is
    # 6 * N_total * D (Kaplan's and Hoffmann's convention, whatever parameter kind the
    # fit uses); "flops" is the model's training FLOPs from t5x_lite.flops (attention
    # included; encoder-decoders at the decoder length the pipeline uses).
    compute: str = "6nd"

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
        for lr in self.sweep_lrs:
            _check(
                isinstance(lr, int | float) and math.isfinite(lr) and lr > 0,
                f"scaling.sweep_lrs has {lr!r}; learning rates must be > 0",
            )
        if self.sweep_lr_rule:
            rule = self.sweep_lr_rule
            _check(
                len(rule) == 3
                and all(isinstance(x, int | float) and math.isfinite(x) for x in rule),
                f"scaling.sweep_lr_rule={rule!r} must be three numbers (lr_ref, n_ref, exponent)",
            )
            _check(
                rule[0] > 0 and rule[1] > 0,
                f"scaling.sweep_lr_rule={rule!r} gives non-positive learning rates: "
                "lr_ref and n_ref must be > 0",
            )
            _check(
                not self.sweep_lrs,
                "scaling.sweep_lr_rule and scaling.sweep_lrs are both set; a sweep takes its "
                "rates from one of them",
            )
        _check(
            all(isinstance(x, int) and x >= 0 for x in self.sweep_seeds)
            and len(set(self.sweep_seeds)) == len(self.sweep_seeds),
            f"scaling.sweep_seeds={self.sweep_seeds!r} must be distinct integers >= 0",
        )
        for e in self.sweep_epochs:
            _check(
                isinstance(e, int | float) and math.isfinite(e) and e > 0,
                f"scaling.sweep_epochs has {e!r}; epoch counts must be > 0",
            )
        _check(
            self.compute in ("6nd", "flops"),
            f"scaling.compute={self.compute!r} is not one of 6nd, flops",
        )
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
    task: TaskConfig = field(default_factory=TaskConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)

    def validate(self) -> Config:
        self.task.validate(self.model)
        self.model.validate()
        self.data.validate()
        self.optimizer.validate()
        self.train.validate()
        self.checkpoint.validate()
        self.scaling.validate()
        self.peft.validate()
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
        if self.task.kind != "none":  # a fine-tuning task replaces the objective
            return
        family, objective = self.model.family, self.data.objective
        allowed = objectives.for_family(family)
        _check(
            family in objectives.spec(objective).families,
            f"data.objective={objective!r} does not train model.family={family!r} "
            f"(use one of {', '.join(allowed)})",
        )
        if family != "encoder":
            return
        sentence = self.data.sentence_objective
        if self.model.sentence_head:
            _check(
                sentence in objectives.names("sentence"),
                f"model.sentence_head=True needs data.sentence_objective='nsp' or 'sop' "
                f"(got {sentence!r}); set model.sentence_head=False for MLM alone",
            )
        else:
            _check(
                sentence == "none",
                f"data.sentence_objective={sentence!r} needs model.sentence_head=True "
                "(without it the sentence labels would be dropped)",
            )
