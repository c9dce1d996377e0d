"""Compute-optimal planner (t5x_lite.scaling.planner): budgets 1e12..1e24 give shapes
with 6ND within 5% of the budget and N within 25% of N_opt; apply_plan rewrites a
Config; budgets the grid cannot serve are one-line errors; run_train.py applies the
plan when a run sets scaling.flops_budget and the trainer trains the config it is given."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from data_fixtures import make_cfg

from t5x_lite import flops, trainer
from t5x_lite.config import (
    Config,
    ConfigError,
    DataConfig,
    ModelConfig,
    ScalingConfig,
    TrainConfig,
    from_dict,
    to_dict,
)
from t5x_lite.scaling import FITS, apply_plan, compute_optimal, plan, save_fit

BUDGETS = [float(c) for c in np.logspace(12, 24, 25)]  # every half decade
MODELS = {
    "gpt2": ModelConfig(family="decoder", arch="gpt2", vocab_size=256, max_seq_len=128),
    "llama": ModelConfig(
        family="decoder", arch="llama", vocab_size=256, num_heads=4, num_kv_heads=2
    ),
    "bert": ModelConfig(family="encoder", arch="bert", vocab_size=256, type_vocab_size=2),
    "t5": ModelConfig(family="encoder_decoder", arch="t5", vocab_size=256),
    "t5_v1_1": ModelConfig(family="encoder_decoder", arch="t5_v1_1", vocab_size=256),
}


@pytest.mark.parametrize("fit", sorted(FITS))
@pytest.mark.parametrize("arch", sorted(MODELS))
def test_plans_hit_budget_and_n_opt(arch, fit):
    model = MODELS[arch]
    for budget in BUDGETS:
        chosen, steps, info = plan(model, budget, seq_len=128, batch_size=32, fit=fit)
        n = flops.param_counts(chosen)["total"]  # built-in fits count all parameters
        d = steps * 32 * 128
        assert 6 * n * d == pytest.approx(budget, rel=0.05), (budget, n, d)
        n_opt, _ = compute_optimal(budget, fit)
        assert n == pytest.approx(n_opt, rel=0.25), (budget, n, n_opt)
        assert (chosen.family, chosen.arch, chosen.vocab_size) == (model.family, arch, 256)
        assert chosen.d_model % chosen.num_heads == 0 and 8 <= info["aspect_ratio"] <= 512
        assert info["n_params"] == n and info["n_tokens"] == d and info["num_steps"] == steps


def test_shapes_grow_with_budget_and_keep_gqa():
    model = MODELS["llama"]
    small, _, _ = plan(model, 1e16, 128, 32)
    large, _, _ = plan(model, 1e22, 128, 32)
    assert large.d_model > small.d_model and large.num_layers > small.num_layers
    for m in (small, large):
        assert m.num_heads == 2 * m.kv_heads  # heads per kv head kept from the base config
        assert m.d_ff % 16 == 0 and abs(m.d_ff - 8 * m.d_model / 3) < 16  # SwiGLU width


def test_apply_plan_rewrites_model_and_steps():
    cfg = Config(
        model=MODELS["gpt2"],
        data=DataConfig(seq_len=128),
        train=TrainConfig(batch_size=32, num_steps=7),
        scaling=ScalingConfig(flops_budget=3e14),
    )
    new, info = apply_plan(cfg)
    n = flops.param_counts(new.model)["total"]
    assert new.train.num_steps == info["num_steps"] != 7
    assert 6 * n * new.train.num_steps * 32 * 128 == pytest.approx(3e14, rel=0.05)
    assert new.model.d_model == info["d_model"] and new.model.num_layers == info["num_layers"]
    # Everything else is kept.
    assert new.data == cfg.data and new.scaling == cfg.scaling
    assert dataclasses.replace(new.train, num_steps=7) == cfg.train
    assert info["flops_train"] > 0 and info["predicted_loss"] > FITS["hoffmann2022"].E
    # No budget: unchanged.
    same, empty = apply_plan(dataclasses.replace(cfg, scaling=ScalingConfig()))
    assert same == dataclasses.replace(cfg, scaling=ScalingConfig()) and empty == {}


def test_apply_plan_shortens_warmup_for_short_plans():
    cfg = Config(
        model=MODELS["gpt2"],
        train=TrainConfig(batch_size=256),
        scaling=ScalingConfig(flops_budget=1e12),
    )
    new, info = apply_plan(cfg)
    assert new.train.num_steps <= cfg.optimizer.warmup_steps
    assert new.optimizer.warmup_steps == new.train.num_steps // 10 == info["warmup_steps"]


def test_plan_from_a_non_embedding_fit_file(tmp_path):
    fit = dataclasses.replace(FITS["besiroglu2024"], param_kind="non_embedding", name="mine")
    path = save_fit(fit, str(tmp_path / "fit.json"))
    model = dataclasses.replace(MODELS["gpt2"], vocab_size=32000)
    chosen, steps, info = plan(model, 1e17, 128, 32, fit=path)
    n = flops.param_counts(chosen)["non_embedding"]
    assert info["param_kind"] == "non_embedding" and info["n_params"] == n
    assert n == pytest.approx(compute_optimal(1e17, fit).n_params, rel=0.25)
    # The fit picks the size; the whole model spends the budget (6 N_total D = C).
    total = flops.param_counts(chosen)["total"]
    assert 6 * total * steps * 32 * 128 == pytest.approx(1e17, rel=0.05)
    assert info["flops_6nd"] == pytest.approx(1e17, rel=0.05) and info["compute"] == "6nd"


def test_planned_compute_is_what_the_run_spends():
    """scaling.compute='flops': the plan's budget equals the training FLOPs the trainer
    reports for the run (t5_small span corruption: the decoder at its real length)."""
    from t5x_lite import presets
    from t5x_lite.scaling import apply_plan

    cfg = presets.load_typed("t5_small")
    cfg = dataclasses.replace(
        cfg, scaling=dataclasses.replace(cfg.scaling, flops_budget=1e18, compute="flops")
    )
    new, info = apply_plan(cfg)
    spent = flops.flops_per_token_of(new.model, new.data) * info["n_tokens"]
    assert spent == pytest.approx(1e18, rel=0.05) and info["flops_train"] == pytest.approx(spent)
    six = dataclasses.replace(cfg, scaling=dataclasses.replace(cfg.scaling, compute="6nd"))
    _, info6 = apply_plan(six)
    assert info6["flops_6nd"] == pytest.approx(1e18, rel=0.05)
    with pytest.raises(ConfigError, match=r"scaling.compute='6ND' is not one of 6nd, flops"):
        from_dict({"scaling": {"compute": "6ND"}})


def _one_line(match: str, *args, **kwargs):
    with pytest.raises(ConfigError, match=match) as e:
        plan(*args, **kwargs)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_bad_budgets_are_one_line_errors():
    real_vocab = dataclasses.replace(MODELS["gpt2"], vocab_size=32000)
    msg = _one_line("too small", real_vocab, 1e12, 128, 32)
    assert "scaling.flops_budget=1e+12" in msg and "smaller vocabulary" in msg
    # The budget the message suggests is accepted.
    suggested = float(msg.split(">= ")[1].split(" ")[0])
    plan(real_vocab, suggested * 1.01, 128, 32)
    _one_line("too large", MODELS["gpt2"], 1e30, 128, 32)
    _one_line(r"must be > 0", MODELS["gpt2"], 0.0, 128, 32)
    _one_line(r"must be > 0", MODELS["gpt2"], -1e18, 128, 32)
    _one_line(r"finite", MODELS["gpt2"], float("nan"), 128, 32)
    _one_line("neither a built-in fit", MODELS["gpt2"], 1e18, 128, 32, fit="nope")
    # A budget that buys less than one step of a huge batch.
    _one_line("less than one step", MODELS["gpt2"], 1e12, 128, 1_000_000)
    cfg = Config(model=MODELS["gpt2"], scaling=ScalingConfig(flops_budget=-5.0))
    assert apply_plan(cfg) == (cfg, {})  # <= 0 means "no plan"


def _planned_run_config(kjv_root):
    values = to_dict(make_cfg(kjv_root, seq_len=64, batch_size=64))
    values["scaling"]["flops_budget"] = 5e10
    values["train"].update(
        eval_every=1000, eval_batches=1, log_every=1000, progress_bar=False, plot_every=1000
    )
    values["checkpoint"]["every_steps"] = 1000
    return from_dict(values)


def test_the_entry_point_applies_the_plan(kjv_root, kjv_tokenizer, tmp_path, capsys):
    """``scaling.flops_budget`` in a run config: run_train.py applies ``apply_plan`` and
    logs it in one line; the trainer trains and records that shape and step count."""
    import run_train

    cfg = _planned_run_config(kjv_root)
    planned, info = apply_plan(cfg)
    # The plan replaces the preset's shape and step count (not a no-op here).
    assert (planned.model.num_layers, planned.model.d_model) != (
        cfg.model.num_layers,
        cfg.model.d_model,
    )
    assert planned.train.num_steps != cfg.train.num_steps
    assert 10 <= planned.train.num_steps <= 200  # a short run

    log: list[str] = []
    given = run_train.apply_scaling_plan(cfg, log=log.append)
    assert given == planned
    assert len(log) == 1 and log[0].startswith("scaling plan: "), log
    assert f"'num_steps': {info['num_steps']}" in log[0], log
    result = trainer.train(given, str(tmp_path), sample=False)
    saved = from_dict(json.loads((tmp_path / "config.json").read_text()))
    assert saved.model == planned.model
    assert saved.train.num_steps == planned.train.num_steps == info["num_steps"]
    shape = (saved.model.num_layers, saved.model.d_model, saved.model.num_heads, saved.model.d_ff)
    assert shape == (info["num_layers"], info["d_model"], info["num_heads"], info["d_ff"])
    assert flops.param_counts(saved.model)["total"] == info["n_params_total"]
    assert result["steps"] == info["num_steps"]
    assert result["tokens_seen"] == info["n_tokens"] == info["num_steps"] * 64 * 64
    # The plan is logged by the entry point only, not again by the trainer.
    assert "scaling plan" not in capsys.readouterr().out
    # No budget: nothing to plan, nothing logged.
    unplanned = dataclasses.replace(cfg, scaling=ScalingConfig())
    assert run_train.apply_scaling_plan(unplanned, log=log.append) is unplanned and len(log) == 1


def test_the_trainer_trains_the_config_it_is_given(kjv_root, kjv_tokenizer, tmp_path, capsys):
    """A config that still sets ``scaling.flops_budget`` is trained as given: the
    trainer applies no plan (that is the entry point's job)."""
    planned, info = apply_plan(_planned_run_config(kjv_root))
    given = dataclasses.replace(planned, train=dataclasses.replace(planned.train, num_steps=3))
    assert given.scaling.flops_budget > 0 and info["num_steps"] != 3
    result = trainer.train(given, str(tmp_path), sample=False)
    saved = from_dict(json.loads((tmp_path / "config.json").read_text()))
    assert saved == given and result["steps"] == 3
    assert "scaling plan" not in capsys.readouterr().out


def test_a_plan_that_repeats_the_corpus_is_refused_like_the_sweep(kjv_root, kjv_tokenizer):
    """A budget whose compute-optimal run takes more tokens than kjv's training split
    holds: one line naming both counts (or, with allow_repeats, a warning)."""
    import run_train

    values = to_dict(_planned_run_config(kjv_root))
    values["scaling"]["flops_budget"] = 3e12
    cfg = from_dict(values)
    _, info = apply_plan(cfg)
    from t5x_lite.scaling import sweep

    tokens = sweep.corpus_train_tokens(cfg)
    assert info["n_tokens"] > tokens  # the case at hand
    with pytest.raises(ConfigError) as err:
        run_train.apply_scaling_plan(cfg, log=lambda line: None, check_repeats=True)
    assert f"{info['n_tokens']:,d} tokens" in str(err.value) and f"{tokens:,d}" in str(err.value)
    assert "--allow_repeats" in str(err.value) and "\n" not in str(err.value)
    log: list[str] = []
    run_train.apply_scaling_plan(cfg, log=log.append, check_repeats=True, allow_repeats=True)
    assert "repeats data.corpus" in log[-1]
    # Within the corpus: no error, no warning.
    small = from_dict({**values, "scaling": {**values["scaling"], "flops_budget": 5e10}})
    log = []
    run_train.apply_scaling_plan(small, log=log.append, check_repeats=True)
    assert len(log) == 1
