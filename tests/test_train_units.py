"""Trainer building blocks against independent references (torch, hand-computed values).

Schedules, the AdamW chain against ``torch.optim.AdamW``, cross-entropy with label
smoothing against ``torch.nn.functional.cross_entropy``, microbatch accumulation,
optimizer-state sharding under FSDP, checkpoint restore onto another mesh, and the
layout / workdir checks that run before anything is compiled.
"""

from __future__ import annotations

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from t5x_lite import checkpoints, losses, models, optim, partitioning, steps, trainer
from t5x_lite import config as C
from t5x_lite import train_state as ts

MODEL = dict(
    family="decoder", arch="gpt2", vocab_size=128, d_model=64, num_heads=4, num_layers=2,
    d_ff=128, max_seq_len=32,
)  # fmt: skip


def small_cfg(**mesh) -> C.Config:
    return C.from_dict(
        {
            "model": MODEL,
            "data": {"seq_len": 16},
            "optimizer": {"learning_rate": 1e-2, "warmup_steps": 2},
            "train": {"batch_size": 16, "num_steps": 50},
            "mesh": {"data": 1, "fsdp": 1, "tensor": 1, **mesh},
        }
    )


def random_batch(seed: int, rows: int = 16, length: int = 16, vocab: int = 128) -> dict:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, (rows, length + 1)).astype(np.int32)
    weights = (rng.random((rows, length)) > 0.2).astype(np.float32)
    return {"input_ids": ids[:, :-1], "labels": ids[:, 1:], "loss_weights": weights}


# --------------------------------------------------------------------------- schedules


def test_cosine_schedule_matches_the_documented_values():
    cfg = C.OptimizerConfig(learning_rate=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    lr = optim.make_schedule(cfg, num_steps=110)
    got = [float(lr(s)) for s in (0, 4, 9, 10, 60, 110, 500)]
    want = [1e-4, 5e-4, 1e-3, 1e-3, 5.5e-4, 1e-4, 1e-4]
    np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize(
    "schedule,step,want",
    [
        ("inverse_sqrt", 40, 1e-3 * math.sqrt(10 / 40)),
        ("inverse_sqrt", 10, 1e-3),
        ("linear", 60, 1e-3 + (1e-4 - 1e-3) * 0.5),
        ("constant", 100, 1e-3),
        ("constant", 4, 5e-4),
    ],
)
def test_other_schedules(schedule, step, want):
    cfg = C.OptimizerConfig(
        learning_rate=1e-3, warmup_steps=10, min_lr_ratio=0.1, schedule=schedule
    )
    assert float(optim.make_schedule(cfg, num_steps=110)(step)) == pytest.approx(want, rel=1e-5)


def test_decay_mask_skips_biases_norms_and_embeddings():
    from t5x_lite import models

    cfg = small_cfg()
    params = models.init_params(cfg.model, jax.random.key(0))
    mask = optim.decay_mask(params, cfg.optimizer.no_decay)
    flat = {
        "/".join(str(k.key) for k in path): v
        for path, v in jax.tree_util.tree_flatten_with_path(mask)[0]
    }
    assert flat["layers_0/attn/query/kernel"] is True
    assert flat["layers_0/mlp/wi/kernel"] is True
    assert flat["layers_0/attn/query/bias"] is False
    assert flat["layers_0/ln_1/scale"] is False
    assert flat["wte/embedding"] is False
    assert flat["wpe/embedding"] is False


def test_adamw_chain_matches_torch_adamw():
    """Clipping + AdamW + masked decoupled decay + warmup, 5 steps, vs torch."""
    cfg = C.OptimizerConfig(
        learning_rate=1e-2, warmup_steps=3, schedule="constant", b1=0.9, b2=0.95, eps=1e-8,
        weight_decay=0.1, grad_clip_norm=0.5,
    )  # fmt: skip
    tx, schedule = optim.make_optimizer(cfg, num_steps=10)
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(4, 3)).astype(np.float32)
    b0 = rng.normal(size=(3,)).astype(np.float32)
    grads = [
        (rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(3,)).astype(np.float32))
        for _ in range(5)
    ]
    params = {"dense": {"kernel": jnp.asarray(w0), "bias": jnp.asarray(b0)}}
    state = tx.init(params)
    for gw, gb in grads:
        g = {"dense": {"kernel": jnp.asarray(gw), "bias": jnp.asarray(gb)}}
        updates, state = tx.update(g, state, params)
        params = optax.apply_updates(params, updates)

    tw = torch.nn.Parameter(torch.tensor(w0))
    tb = torch.nn.Parameter(torch.tensor(b0))
    opt = torch.optim.AdamW(
        [{"params": [tw], "weight_decay": 0.1}, {"params": [tb], "weight_decay": 0.0}],
        lr=1e-2, betas=(0.9, 0.95), eps=1e-8,
    )  # fmt: skip
    for step, (gw, gb) in enumerate(grads):
        lr = float(schedule(step))
        for group in opt.param_groups:
            group["lr"] = lr
        tw.grad, tb.grad = torch.tensor(gw), torch.tensor(gb)
        norm = math.sqrt(float((tw.grad**2).sum() + (tb.grad**2).sum()))
        if norm > 0.5:  # optax clip_by_global_norm: g * max_norm / norm
            tw.grad *= 0.5 / norm
            tb.grad *= 0.5 / norm
        opt.step()
    np.testing.assert_allclose(params["dense"]["kernel"], tw.detach().numpy(), rtol=1e-5)
    np.testing.assert_allclose(params["dense"]["bias"], tb.detach().numpy(), rtol=1e-5)
    assert not np.allclose(params["dense"]["kernel"], w0)


def _adafactor_reference(params: dict, grads: list[dict], lr: list[float]) -> dict:
    """Adafactor (Shazeer & Stern 2018, Alg. 4/5) in numpy with T5's settings.

    Second-moment decay ``beta_t = 1 - t^-0.8``, ``eps1 = 1e-30`` added to ``g^2``,
    factored moments for matrices whose two dims are >= 128 (``V = r c^T / mean(r)``),
    update clipping at RMS 1, relative step ``lr_t * max(1e-3, RMS(W))``, no momentum.
    """
    w = {k: np.asarray(v, np.float64) for k, v in params.items()}
    state: dict = {}
    for t, (g_tree, rate) in enumerate(zip(grads, lr), start=1):
        beta = 1.0 - t**-0.8
        for k, g in g_tree.items():
            g = np.asarray(g, np.float64)
            g2 = g * g + 1e-30
            if g.ndim == 2 and min(g.shape) >= 128:
                r, c = state.get(k, (np.zeros(g.shape[0]), np.zeros(g.shape[1])))
                r = beta * r + (1 - beta) * g2.mean(axis=1)
                c = beta * c + (1 - beta) * g2.mean(axis=0)
                state[k] = (r, c)
                v = np.outer(r, c) / r.mean()
            else:
                v = beta * state.get(k, np.zeros_like(g)) + (1 - beta) * g2
                state[k] = v
            u = g / np.sqrt(v)
            u = u / max(1.0, np.sqrt(np.mean(u * u)))
            w[k] = w[k] - rate * max(1e-3, np.sqrt(np.mean(w[k] ** 2))) * u
    return w


def test_adafactor_chain_matches_optax_adafactor_and_a_numpy_reference():
    """Our adafactor (no clipping, no decay) = optax.adafactor = the paper, 4 steps."""
    cfg = C.OptimizerConfig(
        name="adafactor", learning_rate=1e-2, warmup_steps=2, schedule="constant",
        weight_decay=0.0, grad_clip_norm=0.0,
    )  # fmt: skip
    tx, schedule = optim.make_optimizer(cfg, num_steps=10)
    ref_tx = optax.adafactor(learning_rate=schedule, decay_rate=0.8, clipping_threshold=1.0)
    rng = np.random.default_rng(3)
    shapes = {"factored": (256, 128), "small": (64, 32), "bias": (128,)}
    p0 = {k: rng.normal(size=s).astype(np.float32) * 0.05 for k, s in shapes.items()}
    grads = [
        {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()} for _ in range(4)
    ]
    ours = {k: jnp.asarray(v) for k, v in p0.items()}
    theirs = dict(ours)
    s_ours, s_theirs = tx.init(ours), ref_tx.init(theirs)
    for g in grads:
        g = {k: jnp.asarray(v) for k, v in g.items()}
        u, s_ours = tx.update(g, s_ours, ours)
        ours = optax.apply_updates(ours, u)
        u, s_theirs = ref_tx.update(g, s_theirs, theirs)
        theirs = optax.apply_updates(theirs, u)
    # The [256, 128] kernel keeps factored moments (a row and a column vector).
    assert s_ours[0].v_row["factored"].shape in ((256,), (128,))
    assert s_ours[0].v["factored"].shape == (1,)
    hand = _adafactor_reference(p0, grads, [float(schedule(s)) for s in range(4)])
    for k in shapes:
        np.testing.assert_allclose(ours[k], theirs[k], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(ours[k], hand[k], rtol=1e-5, atol=1e-6)
        assert not np.allclose(ours[k], p0[k])


# --------------------------------------------------------------------------- losses


def test_token_cross_entropy_matches_torch_with_label_smoothing():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 5, 11)).astype(np.float32) * 3
    labels = rng.integers(0, 11, (2, 5)).astype(np.int32)
    loss, ce = losses.token_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), 0.1, 0.0)
    t_logits = torch.tensor(logits).reshape(-1, 11)
    t_labels = torch.tensor(labels, dtype=torch.long).reshape(-1)
    want_ce = torch.nn.functional.cross_entropy(t_logits, t_labels, reduction="none")
    want_ls = torch.nn.functional.cross_entropy(
        t_logits, t_labels, reduction="none", label_smoothing=0.1
    )
    np.testing.assert_allclose(np.asarray(ce).reshape(-1), want_ce.numpy(), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(loss).reshape(-1), want_ls.numpy(), rtol=1e-5)


def test_z_loss_and_weighted_sums_by_hand():
    # logits [0, 0] -> ce = log 2; logsumexp = log 2; z-loss adds c * log(2)^2.
    logits = jnp.zeros((1, 2, 2))
    labels = jnp.asarray([[1, 0]], jnp.int32)
    loss, ce = losses.token_cross_entropy(logits, labels, 0.0, 1e-2)
    np.testing.assert_allclose(ce, [[math.log(2)] * 2], rtol=1e-6)
    np.testing.assert_allclose(loss, [[math.log(2) + 1e-2 * math.log(2) ** 2] * 2], rtol=1e-6)

    outputs = {
        "logits": jnp.asarray([[[2.0, 0.0], [0.0, 1.0]]]),  # argmax 0, 1
        "sentence_logits": jnp.asarray([[0.0, 0.0], [3.0, 0.0]]),
    }
    batch = {
        "labels": jnp.asarray([[0, 0]], jnp.int32),
        "loss_weights": jnp.asarray([[1.0, 0.5]]),
        "next_sentence_label": jnp.asarray([1, 0], jnp.int32),
    }
    bert = C.ModelConfig(
        family="encoder",
        arch="bert",
        vocab_size=2,
        d_model=8,
        num_heads=2,
        num_layers=1,
        d_ff=8,
        max_seq_len=4,
        sentence_head=True,
    )
    model = models.get(bert)
    sums = model.loss_sums(outputs, batch)
    ce0 = math.log(1 + math.exp(-2.0))
    ce1 = math.log(1 + math.exp(1.0))
    assert float(sums["ce"]) == pytest.approx(ce0 + 0.5 * ce1, rel=1e-6)
    assert float(sums["correct"]) == pytest.approx(1.0)
    assert float(sums["weight"]) == pytest.approx(1.5)
    s_ce = math.log(2) + math.log(1 + math.exp(-3.0))
    assert float(sums["sentence_loss"]) == pytest.approx(s_ce, rel=1e-6)
    assert float(sums["sentence_correct"]) == pytest.approx(1.0)  # row 0 ties -> argmax 0
    total = model.loss(sums, {"weight": sums["weight"], "sentence_weight": jnp.asarray(2.0)})
    assert float(total) == pytest.approx((ce0 + 0.5 * ce1) / 1.5 + s_ce / 2, rel=1e-6)
    summary = losses.summarize(jax.device_get(sums))
    assert summary["perplexity"] == pytest.approx(math.exp(summary["loss"]))


# --------------------------------------------------------------------------- steps


@pytest.fixture(scope="module")
def fsdp8():
    # A large Adam eps keeps the first update a smooth function of the gradient (with
    # eps=1e-8 it is ~lr * sign(g), which flips on rounding noise where g ~ 0), so the
    # microbatch test can compare parameters tightly.
    values = C.to_dict(small_cfg(fsdp=8))
    values["optimizer"]["eps"] = 1e-3
    cfg = C.from_dict(values)
    run = steps.for_config(cfg, partitioning.make_mesh(cfg.mesh))
    return cfg, run


def test_microbatches_give_the_single_batch_update(fsdp8):
    cfg, run = fsdp8
    values = C.to_dict(cfg)
    values["train"]["microbatches"] = 2
    run2 = steps.for_config(C.from_dict(values), run.mesh)
    batch = random_batch(0)
    s1, m1 = run.run(run.train, run.run(run.init, jax.random.key(0)), batch)
    s2, m2 = run2.run(run2.train, run2.run(run2.init, jax.random.key(0)), batch)
    assert float(m1["loss"]) == pytest.approx(float(m2["loss"]), rel=1e-6)
    assert float(m1["grad_norm"]) == pytest.approx(float(m2["grad_norm"]), rel=1e-5)
    moved = 0.0
    for a, b, p0 in zip(
        jax.tree_util.tree_leaves(s1.params),
        jax.tree_util.tree_leaves(s2.params),
        jax.tree_util.tree_leaves(jax.device_get(run.run(run.init, jax.random.key(0)).params)),
    ):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-7)
        moved = max(moved, float(np.max(np.abs(np.asarray(a) - p0))))
    assert moved > 1e-5  # the update itself is 100x the tolerance


def test_fsdp8_holds_an_eighth_of_params_and_adam_state(fsdp8):
    _, run = fsdp8
    state = run.run(run.init, jax.random.key(0))
    for tree in (state.params, state.opt_state):
        total = sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree))
        per_device = ts.bytes_per_device(tree)
        assert len(per_device) == 8
        for held in per_device.values():
            # Matrices split 8 ways; only the MLP biases [d_ff] stay whole (~3%).
            assert held <= total / 8 * 1.1, (held, total)
    # Adam's moments take exactly the parameter's shard shape.
    mu = state.opt_state[1].mu  # chain: (clip, adam, decay, lr)
    kernel = state.params["layers_0"]["mlp"]["wi"]["kernel"]  # [64, 128]
    assert kernel.addressable_shards[0].data.shape == (8, 128)
    assert mu["layers_0"]["mlp"]["wi"]["kernel"].sharding == kernel.sharding


def test_adafactor_factored_moments_follow_the_parameter_sharding():
    cfg = C.from_dict(
        {
            **C.to_dict(small_cfg(fsdp=8)),
            "model": {**MODEL, "d_model": 128, "d_ff": 256},
            "optimizer": {"name": "adafactor"},
        }
    )
    mesh = partitioning.make_mesh(cfg.mesh)
    from t5x_lite import models

    tx, _ = optim.make_optimizer(cfg.optimizer, 10)
    # Factored when the second-largest dim is >= 128: the [256, 128] MLP output kernel.
    params = jax.eval_shape(lambda: models.init_params(cfg.model, jax.random.key(0)))
    opt = jax.eval_shape(tx.init, params)
    shardings = ts.opt_state_shardings(mesh, opt, params, models.param_shardings(cfg.model, mesh))
    fac = shardings[1]  # scale_by_factored_rms state
    wo = models.param_shardings(cfg.model, mesh)["layers_0"]["mlp"]["wo"]["kernel"]
    assert wo.spec == jax.sharding.PartitionSpec("tensor", "fsdp")  # [mlp 256, embed 128]
    # The factored moments of the [256, 128] kernel are vectors [128] and [256]; each
    # keeps the mesh axis of the dimension it still has.
    row = fac.v_row["layers_0"]["mlp"]["wo"]["kernel"]
    col = fac.v_col["layers_0"]["mlp"]["wo"]["kernel"]
    assert opt[1].v_row["layers_0"]["mlp"]["wo"]["kernel"].shape == (128,)
    assert row.spec == jax.sharding.PartitionSpec("fsdp")
    assert opt[1].v_col["layers_0"]["mlp"]["wo"]["kernel"].shape == (256,)
    assert col.spec == jax.sharding.PartitionSpec("tensor")
    # Unfactored leaves: full shape -> the parameter's spec; (1,) placeholders replicated.
    assert fac.v["layers_0"]["mlp"]["wo"]["bias"].spec == jax.sharding.PartitionSpec("fsdp")
    assert fac.v["layers_0"]["mlp"]["wo"]["kernel"].spec == jax.sharding.PartitionSpec()


def test_checkpoint_restores_onto_another_mesh(fsdp8, tmp_path):
    cfg, run = fsdp8
    state = run.run(run.init, jax.random.key(0))
    state, _ = run.run(run.train, state, random_batch(0))
    saved = jax.device_get(state)
    ckpt = checkpoints.Checkpointer(str(tmp_path / "ckpt"), cfg.checkpoint)
    ckpt.save(1, state, {"position": 7}, {"mesh": [1, 8, 1]})
    ckpt.wait()
    # The reference next step, on the original mesh.
    _, m_ref = run.run(run.train, state, random_batch(1))

    cfg2 = C.from_dict({**C.to_dict(cfg), "mesh": {"data": 2, "fsdp": 1, "tensor": 4}})
    run2 = steps.for_config(cfg2, partitioning.make_mesh(cfg2.mesh))
    fresh = jax.device_get(run2.run(run2.init, jax.random.key(1)))
    target = checkpoints.abstract_with_shardings(run2.abstract_state, run2.state_shardings)
    restored, data_state, meta = ckpt.restore(ckpt.latest_step(), target)
    ckpt.close()
    assert data_state == {"position": 7} and meta["step"] == 1
    leaves_saved = jax.tree_util.tree_leaves(saved)
    leaves_fresh = jax.tree_util.tree_leaves(fresh)
    assert any(not np.array_equal(a, b) for a, b in zip(leaves_saved, leaves_fresh))
    for a, b in zip(leaves_saved, jax.tree_util.tree_leaves(jax.device_get(restored))):
        np.testing.assert_array_equal(a, b)
    kernel = restored.params["layers_0"]["mlp"]["wi"]["kernel"]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    assert kernel.sharding.mesh.shape == {"data": 2, "fsdp": 1, "tensor": 4}
    _, m2 = run2.run(run2.train, restored, random_batch(1))
    assert float(m2["loss"]) == pytest.approx(float(m_ref["loss"]), rel=1e-6)


@pytest.mark.parametrize("async_save", [True, False])
def test_checkpoint_keep_holds_only_the_last_k_steps(async_save, tmp_path):
    cfg = C.CheckpointConfig(keep=2, async_save=async_save)
    directory = tmp_path / "ckpt"
    ckpt = checkpoints.Checkpointer(str(directory), cfg)
    for step in range(1, 6):
        state = {"w": jnp.full((4,), float(step))}
        ckpt.save(step, state, {"position": step}, {"mesh": [1, 1, 1]})
    ckpt.close()
    assert sorted(os.listdir(directory)) == ["4", "5"]
    again = checkpoints.Checkpointer(str(directory), cfg, create=False)
    assert again.all_steps() == [4, 5]
    target = {"w": jax.ShapeDtypeStruct((4,), jnp.float32)}
    restored, data_state, meta = again.restore(4, target)
    again.close()
    np.testing.assert_array_equal(restored["w"], np.full((4,), 4.0, np.float32))
    assert data_state == {"position": 4} and meta["step"] == 4


# --------------------------------------------------------------------------- checks


@pytest.mark.parametrize(
    "mesh,batch,micro,message",
    [
        ({"data": 3}, 24, 1, "differs from the 8 available devices"),
        ({"data": 4, "tensor": 2}, 6, 1, "train.batch_size=6 is not divisible by mesh data*fsdp"),
        ({"data": 8}, 16, 4, "rows per microbatch is not divisible by mesh data*fsdp = 8"),
    ],
)
def test_layout_errors_are_one_line(mesh, batch, micro, message):
    cfg = C.from_dict(
        {
            "model": MODEL,
            "data": {"seq_len": 16},
            "train": {"batch_size": batch, "microbatches": micro},
            "mesh": {"data": 1, "fsdp": 1, "tensor": 1, **mesh},
        }
    )
    with pytest.raises(C.ConfigError, match=message.replace("*", r"\*")) as e:
        trainer.check_layout(cfg, 8)
    assert "\n" not in str(e.value)


def test_seq_len_above_max_seq_len_is_rejected():
    with pytest.raises(C.ConfigError, match=r"data\.seq_len=64 exceeds model\.max_seq_len=32"):
        C.from_dict({"model": MODEL, "data": {"seq_len": 64}})


def test_workdir_with_another_model_is_rejected_untouched(tmp_path):
    cfg = small_cfg()
    path = tmp_path / "config.json"
    saved = C.to_dict(cfg)
    saved["model"]["d_model"] = 32
    path.write_text(json.dumps(saved))
    before = (path.read_bytes(), os.stat(path).st_mtime_ns)
    with pytest.raises(C.ConfigError, match=r"model\.d_model=32; the requested config has model"):
        trainer.check_workdir(cfg, str(tmp_path))
    assert (path.read_bytes(), os.stat(path).st_mtime_ns) == before
    # A runtime-only difference (compute dtype) is allowed on resume.
    saved["model"]["d_model"] = 64
    saved["model"]["dtype"] = "bfloat16"
    path.write_text(json.dumps(saved))
    assert trainer.check_workdir(cfg, str(tmp_path))["model"]["dtype"] == "bfloat16"


def test_data_state_moves_between_process_counts():
    """Saved data positions count global batches, so another process count resumes
    from them; positions that disagree are refused in one line naming both counts."""
    a = {"format": 1, "grain": {"next_index": 7}}
    b = {"format": 1, "grain": {"next_index": 5}}
    meta = {"process_count": 2}
    assert checkpoints._data_state({"0": a, "1": a}, 0, 30, meta) == a  # 2 -> 1 process
    assert checkpoints._data_state({"0": a}, 0, 30, {"process_count": 1}) == a
    assert checkpoints._data_state({}, 0, 30, meta) is None
    with pytest.raises(C.ConfigError) as e:
        checkpoints._data_state({"0": a, "1": b}, 0, 30, meta)
    assert str(e.value) == (
        "checkpoint 30 was saved by 2 processes at different data positions; it cannot "
        "resume on 1 processes (resume it on 2)"
    )
