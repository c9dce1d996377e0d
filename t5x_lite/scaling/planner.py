"""Compute-optimal planner: a FLOP budget -> a concrete model shape and a step count.

Given ``C`` (``scaling.flops_budget``) and a fit (``scaling.fit``), the planner takes
``N_opt`` from :func:`~t5x_lite.scaling.fits.compute_optimal`, picks from a grid of
shapes of the config's family and arch the one whose parameter count (of the fit's
``param_kind``) is nearest ``N_opt``, and sets ``train.num_steps`` so that
``6 N D = C`` with ``D = num_steps x batch_size x seq_len`` tokens (input tokens for
encoder-decoders)::

    >>> cfg = Config(model=ModelConfig(vocab_size=256), scaling=ScalingConfig(flops_budget=1e15))
    >>> new, info = apply_plan(cfg)
    >>> new.model.num_layers, new.model.d_model, new.train.num_steps
    (8, 192, 10977)

The shape grid (:func:`shape_grid`): ``d_model`` in steps of 16 below 256, 64 below
1024, 128 below 4096 and 256 above; head size 64 from ``d_model`` 256, else 32 (or
16); ``d_ff = 4 d_model`` (``8/3 d_model`` rounded up to a multiple of 16 for gated
MLPs: llama, t5_v1_1); 1 to 256 layers (encoder and decoder stacks alike for T5);
aspect ratio ``d_model / num_layers`` between 8 and 512. Among shapes within 10% of
``N_opt`` the one closest to a target aspect ratio (:func:`target_aspect`: 16 for
tiny models, 64 at GPT-2 small's size, 128 from 100B like GPT-3) is chosen; if none
is that close, the nearest. Grouped-query llama configs keep their heads-per-kv-head
ratio (widths whose head count it does not divide are left out of their grid); ALBERT
keeps its ``embed_dim``, and since its shared layers do not add parameters, its depth
is set by the aspect ratio alone (budgets above ~1e22 are beyond its grid).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

from t5x_lite import flops as flops_lib
from t5x_lite.config import Config, ConfigError, ModelConfig, ScalingConfig, row_lengths  # noqa: F401
from t5x_lite.scaling.fits import ChinchillaFit, compute_optimal, load_fit

MAX_LAYERS = 256
ASPECT_RANGE = (8.0, 512.0)
WITHIN = 0.10  # prefer the target aspect ratio among shapes this close to N_opt
TOLERANCE = 0.25  # N must be within this of N_opt, or the budget is refused


def d_model_grid() -> list[int]:
    """Widths the planner considers, 16 ... 32768."""
    return (
        list(range(16, 256, 16))
        + list(range(256, 1024, 64))
        + list(range(1024, 4096, 128))
        + list(range(4096, 32768 + 1, 256))
    )


def shape_for_width(base: ModelConfig, d_model: int, num_layers: int) -> ModelConfig:
    """``base`` with width ``d_model`` and depth ``num_layers`` (heads and d_ff derived).

    >>> m = shape_for_width(ModelConfig(), 768, 12)
    >>> m.num_heads, m.head_size, m.d_ff
    (12, 64, 3072)
    """
    head = 64 if d_model >= 256 else 32 if d_model % 32 == 0 and d_model >= 64 else 16
    heads = d_model // head
    if base.traits.gated_mlp:
        d_ff = 16 * math.ceil(8 * d_model / 3 / 16)
    else:
        d_ff = 4 * d_model
    kv = None
    if base.num_kv_heads is not None and base.traits.grouped_kv:
        group = base.num_heads // base.kv_heads
        kv = heads // group if heads % group == 0 else None
    return dataclasses.replace(
        base,
        d_model=d_model,
        num_layers=num_layers,
        num_heads=heads,
        head_dim=None,
        num_kv_heads=kv,
        num_decoder_layers=None,
        d_ff=d_ff,
    )


def _count(cfg: ModelConfig, kind: str) -> int:
    return flops_lib.param_counts(cfg)[kind]


def target_aspect(n_params: float) -> float:
    """Preferred ``d_model / num_layers``, log-linear in ``N`` between anchors.

    16 up to 1e6 parameters (tiny models are deep for their width), 64 at 1e8 (GPT-2
    small: 768 / 12), 128 from 1e11 (GPT-3 175B: 12288 / 96).

    >>> [round(target_aspect(n)) for n in (1e5, 1e7, 1.24e8, 1.3e9, 1e12)]
    [16, 32, 65, 83, 128]
    """
    x = math.log10(max(n_params, 1.0))
    if x <= 8.0:
        return 16.0 * 2.0 ** min(max(x - 6.0, 0.0), 2.0)
    return 64.0 * 2.0 ** min((x - 8.0) / 3.0, 1.0)


@functools.lru_cache(maxsize=64)
def shape_grid(base: ModelConfig, kind: str = "total") -> list[tuple[int, int, float]]:
    """All ``(d_model, num_layers, N)`` of the grid, ``N`` the ``kind`` parameter count.

    The count is affine in depth for a fixed width, so two counts per width suffice.
    Cached per ``(base, kind)``: treat the returned list as read-only.
    """
    out = []
    gqa = base.traits.grouped_kv and base.kv_heads != base.num_heads
    for d in d_model_grid():
        if gqa and shape_for_width(base, d, 1).num_kv_heads is None:
            continue  # heads not divisible by the base's heads per kv head
        n1 = _count(shape_for_width(base, d, 1), kind)
        per_layer = _count(shape_for_width(base, d, 2), kind) - n1
        lo = max(1, math.ceil(d / ASPECT_RANGE[1]))
        hi = min(MAX_LAYERS, math.floor(d / ASPECT_RANGE[0]))
        for layers in range(lo, hi + 1):
            out.append((d, layers, float(n1 + per_layer * (layers - 1))))
    return out


def nearest_shape(
    base: ModelConfig, n_target: float, kind: str = "total", grid: list | None = None
) -> ModelConfig:
    """The grid shape whose ``kind`` parameter count is nearest ``n_target`` (see module doc)."""
    grid = shape_grid(base, kind) if grid is None else grid
    log_t = math.log(n_target)
    dist = [abs(math.log(n) - log_t) for _, _, n in grid]
    close = [i for i, x in enumerate(dist) if x <= math.log1p(WITHIN)]
    if close:
        aim = math.log(target_aspect(n_target))
        best = min(close, key=lambda i: (abs(math.log(grid[i][0] / grid[i][1]) - aim), dist[i]))
    else:
        best = min(range(len(grid)), key=dist.__getitem__)
    d, layers, _ = grid[best]
    return shape_for_width(base, d, layers).validate()


def min_budget(n_min: float, fit: ChinchillaFit) -> float:
    """Smallest ``C`` whose ``N_opt`` is within :data:`TOLERANCE` of ``n_min`` from below."""
    return 6.0 * (n_min / (1 + TOLERANCE) / fit.G) ** (1.0 / fit.a)


def plan(
    model: ModelConfig,
    flops_budget: float,
    seq_len: int,
    batch_size: int,
    fit: str | ChinchillaFit = "hoffmann2022",
    target_len: int | None = None,
    compute: str = "6nd",
    unique_tokens: int = 0,
) -> tuple[ModelConfig, int, dict[str, Any]]:
    """``(model, num_steps, info)`` spending ``flops_budget`` compute-optimally.

    With ``unique_tokens > 0`` the data are limited to that many unique tokens: the
    shape is the grid's one of lowest predicted loss under the data-constrained law
    (:mod:`t5x_lite.scaling.repeats`: repeated epochs decay with ``R_D*``, the fit's
    own or Muennighoff et al.'s), which trades parameters for fewer epochs; ``info``
    adds ``unique_tokens``, ``epochs``, ``effective_tokens``, ``r_star`` and its
    source, and the unconstrained choice's size for comparison.

    The steps make the run spend the budget as ``compute`` counts it
    (:func:`step_compute`), whichever parameter kind the fit's ``N`` is: a
    non-embedding fit picks the size, the whole model spends the compute.

    ``info`` describes the choice (budget, fit, ``n_opt``, ``d_opt``, the chosen
    shape, its parameter counts, tokens, ``6ND``, the trainer's FLOP count and the
    fit's predicted loss). One-line ConfigError when the budget is not a positive
    number or is too small (or too large) for the shape grid.
    """
    if not (isinstance(flops_budget, int | float) and math.isfinite(flops_budget)):
        raise ConfigError(f"scaling.flops_budget={flops_budget!r} must be a finite number")
    if flops_budget <= 0:
        raise ConfigError(f"scaling.flops_budget={flops_budget!r} must be > 0")
    f = load_fit(fit)
    kind = f.param_kind
    n_opt, d_opt = compute_optimal(float(flops_budget), f)
    grid = shape_grid(model, kind)
    n_min = min(n for _, _, n in grid)
    n_max = max(n for _, _, n in grid)
    fit_name = f.name or str(fit)
    if n_opt * (1 + TOLERANCE) < n_min:
        raise ConfigError(
            f"scaling.flops_budget={flops_budget:.3g} is too small: its compute-optimal size "
            f"({fit_name}) is {n_opt:.3g} {kind} parameters but the smallest "
            f"{model.arch} shape (vocab {model.vocab_size}) has {n_min:.3g}; use a budget "
            f">= {min_budget(n_min, f):.3g} or a smaller vocabulary"
        )
    if n_opt > n_max * (1 + TOLERANCE):
        raise ConfigError(
            f"scaling.flops_budget={flops_budget:.3g} is too large: N_opt={n_opt:.3g} exceeds "
            f"the largest shape in the grid ({n_max:.3g} parameters)"
        )
    chosen = nearest_shape(model, n_opt, kind, grid)
    constrained: dict[str, Any] = {}
    if unique_tokens:
        chosen, constrained = _data_constrained_shape(
            model, grid, f, flops_budget, seq_len, batch_size, compute, target_len,
            unique_tokens, chosen,
        )
    counts = flops_lib.param_counts(chosen)
    n = counts[kind]
    tokens_per_step = batch_size * seq_len
    per_step = step_compute(chosen, seq_len, batch_size, compute, target_len)
    num_steps = round(flops_budget / per_step)
    if num_steps < 1:
        raise ConfigError(
            f"scaling.flops_budget={flops_budget:.3g} buys less than one step of "
            f"{tokens_per_step} tokens for a {n:.3g}-parameter model"
        )
    n_tokens = num_steps * tokens_per_step
    per_token = flops_lib.train_flops_per_token(chosen, seq_len, target_len)
    info = {
        "flops_budget": float(flops_budget),
        "fit": fit_name,
        "param_kind": kind,
        "n_opt": n_opt,
        "d_opt": d_opt,
        "num_layers": chosen.num_layers,
        "d_model": chosen.d_model,
        "num_heads": chosen.num_heads,
        "d_ff": chosen.d_ff,
        "aspect_ratio": chosen.d_model / chosen.num_layers,
        "n_params": n,
        "n_params_total": counts["total"],
        "n_params_non_embedding": counts["non_embedding"],
        "num_steps": num_steps,
        "n_tokens": n_tokens,
        "tokens_per_param": n_tokens / n,
        "compute": compute,
        "flops_6nd": 6.0 * counts["total"] * n_tokens,
        "flops_train": per_token * n_tokens,
        "flops_train_per_step": per_token * tokens_per_step,
        "predicted_loss": float(f.predict(n, n_tokens)),
    }
    if constrained:
        from t5x_lite.scaling import repeats

        info.update(constrained)
        info["epochs"] = n_tokens / unique_tokens
        info["effective_tokens"] = float(
            repeats.effective_tokens(n_tokens, unique_tokens, constrained["r_star"])
        )
        info["predicted_loss"] = float(repeats.predict(f, n, n_tokens, unique_tokens))
    return chosen, num_steps, info


def _data_constrained_shape(
    model: ModelConfig,
    grid: list[tuple[int, int, float]],
    fit: ChinchillaFit,
    flops_budget: float,
    seq_len: int,
    batch_size: int,
    compute: str,
    target_len: int | None,
    unique_tokens: int,
    unconstrained: ModelConfig,
) -> tuple[ModelConfig, dict[str, Any]]:
    """The grid shape of lowest data-constrained predicted loss at ``flops_budget``.

    Candidates lie between the unconstrained choice (repeating data never argues for a
    smaller model) and 2x the size whose tokens are exactly the unique ones (a larger
    model would not repeat at all, and the unique-data law then prefers the smaller).
    """
    from t5x_lite.scaling import repeats

    if not (isinstance(unique_tokens, int) and unique_tokens > 0):
        raise ConfigError(f"data.unique_tokens={unique_tokens!r} must be a positive integer")
    r_star, source = repeats.r_star_of(fit)
    kind = fit.param_kind
    n_free = flops_lib.param_counts(unconstrained)[kind]
    n_top = 2.0 * max(n_free, flops_budget / (6.0 * unique_tokens))
    best: tuple[float, int, int] | None = None
    tokens_per_step = batch_size * seq_len
    for d, layers, n in grid:
        if not n_free / (1 + TOLERANCE) <= n <= n_top:
            continue
        m = shape_for_width(model, d, layers)
        steps = round(flops_budget / step_compute(m, seq_len, batch_size, compute, target_len))
        if steps < 1:
            continue
        loss = float(repeats.predict(fit, n, steps * tokens_per_step, unique_tokens))
        if best is None or loss < best[0]:
            best = (loss, d, layers)
    if best is None:
        raise ConfigError(
            f"scaling.flops_budget={flops_budget:.3g} buys no step of any "
            f"{model.arch} shape of the grid"
        )
    chosen = shape_for_width(model, best[1], best[2]).validate()
    return chosen, {
        "unique_tokens": unique_tokens,
        "r_star": r_star,
        "r_star_source": source,
        "n_params_unconstrained": flops_lib.param_counts(unconstrained)[kind],
    }


COMPUTE_LABELS = {
    "6nd": "C = 6·N·D, N total",
    "flops": "C = training FLOPs (t5x_lite.flops)",
}


def step_compute(
    model: ModelConfig,
    seq_len: int,
    batch_size: int,
    compute: str = "6nd",
    target_len: int | None = None,
) -> float:
    """FLOPs one training step of ``batch_size`` rows of ``seq_len`` counts as:
    ``6 * N_total * tokens`` (``compute="6nd"``) or the model's training FLOPs per
    token times tokens (``"flops"``, :func:`t5x_lite.flops.train_flops_per_token`;
    ``target_len`` the decoder length of an encoder-decoder).

    >>> m = ModelConfig(vocab_size=256, d_model=64, num_heads=2, num_layers=2, d_ff=256)
    >>> step_compute(m, 64, 8) == 6 * flops_lib.param_counts(m)["total"] * 64 * 8
    True
    """
    tokens = batch_size * seq_len
    if compute == "6nd":
        return 6.0 * flops_lib.param_counts(model)["total"] * tokens
    if compute == "flops":
        return flops_lib.train_flops_per_token(model, seq_len, target_len) * tokens
    raise ConfigError(f"scaling.compute={compute!r} is not one of 6nd, flops")


def apply_plan(cfg: Config) -> tuple[Config, dict[str, Any]]:
    """``cfg`` with the planned model shape and ``train.num_steps`` (and a log dict).

    Unchanged (and an empty dict) when ``cfg.scaling.flops_budget <= 0``. When the
    plan has fewer steps than ``optimizer.warmup_steps``, warmup becomes a tenth of
    the steps (recorded as ``warmup_steps`` in the dict).
    """
    if cfg.scaling.flops_budget <= 0:
        return cfg, {}
    model, num_steps, info = plan(
        cfg.model,
        cfg.scaling.flops_budget,
        cfg.data.seq_len,
        cfg.train.batch_size,
        cfg.scaling.fit,
        row_lengths(cfg.data).target_len if cfg.model.family == "encoder_decoder" else None,
        cfg.scaling.compute,
        cfg.data.unique_tokens,
    )
    optimizer = cfg.optimizer
    if optimizer.warmup_steps >= num_steps:
        optimizer = dataclasses.replace(optimizer, warmup_steps=num_steps // 10)
        info["warmup_steps"] = optimizer.warmup_steps
    train = dataclasses.replace(cfg.train, num_steps=num_steps)
    new = dataclasses.replace(cfg, model=model, train=train, optimizer=optimizer)
    return new.validate(), info
