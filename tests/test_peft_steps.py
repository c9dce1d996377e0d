"""Training only the added parameters on a frozen base (t5x_lite.peft_steps).

A few LoRA steps on the 8 fake CPU devices (``data=2, fsdp=2, tensor=2``) against the
same steps on one device; the base's bytes before and after; the optimizer state's
bytes against the trainable tree's (Adam: two moments per trainable leaf, nothing
for the base).
"""

from __future__ import annotations

import hashlib

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from t5x_lite import models, partitioning, peft, peft_steps, steps
from t5x_lite.config import MeshConfig, from_dict
from t5x_lite.train_state import bytes_per_device

V, T, B = 64, 16, 8


def _cfg(method: str = "lora", **peft_fields):
    return from_dict(
        {
            "model": dict(
                family="decoder",
                arch="llama",
                vocab_size=V,
                d_model=32,
                num_heads=4,
                num_kv_heads=2,
                num_layers=1,
                d_ff=64,
                max_seq_len=T,
                activation="silu",
            ),
            "data": {"seq_len": T},
            "optimizer": {"learning_rate": 1e-2, "warmup_steps": 0, "weight_decay": 0.0},
            "train": {"batch_size": B, "num_steps": 3},
            "peft": {
                "method": method,
                "rank": 4,
                "targets": ["query", "value", "mlp_out"],
                **peft_fields,
            },
        }
    )


def _batches(n: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        ids = rng.integers(1, V, size=(B, T + 1)).astype(np.int32)
        out.append(
            {
                "input_ids": ids[:, :-1],
                "labels": ids[:, 1:],
                "loss_weights": np.ones((B, T), np.float32),
            }
        )
    return out


def _digest(tree) -> str:
    h = hashlib.sha256()
    for x in jax.tree_util.tree_leaves(tree):
        h.update(np.asarray(x).tobytes())
    return h.hexdigest()


def _train(cfg, devices, base, batches):
    mesh = partitioning.make_mesh(cfg.mesh, devices)
    run = peft_steps.build(cfg, mesh, base)
    state = run.run(run.init, jax.random.key(1))
    losses = []
    for b in batches:
        state, m = run.run(run.train, state, partitioning.to_global(b, run.batch_sharding))
        losses.append(float(m["loss"]))
    return run, state, losses


def test_lora_step_sharded_equals_one_device_and_moves_only_added_params():
    cfg = _cfg()
    base = models.init_params(cfg.model, jax.random.key(0))
    before = _digest(base)
    batches = _batches(3)
    sharded_cfg = cfg.__class__(**{**cfg.__dict__, "mesh": MeshConfig(data=2, fsdp=2, tensor=2)})
    run, state, losses = _train(sharded_cfg, jax.devices()[:8], base, batches)
    one_cfg = cfg.__class__(**{**cfg.__dict__, "mesh": MeshConfig(data=1, fsdp=1, tensor=1)})
    _, state1, losses1 = _train(one_cfg, jax.devices()[:1], base, batches)

    np.testing.assert_allclose(losses, losses1, rtol=1e-5)
    assert losses[-1] < losses[0]
    for a, b in zip(jax.tree_util.tree_leaves(state.params),
                    jax.tree_util.tree_leaves(state1.params), strict=True):  # fmt: skip
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)

    # The train state holds only the added leaves, sharded by their logical axes.
    q = state.params["layers_0"]["attn"]["query"]
    assert set(q) == {"lora_a", "lora_b"}
    assert q["lora_a"].sharding.spec == P("fsdp", None)  # [E, r]: embed on fsdp
    assert q["lora_b"].sharding.spec == P(None, "tensor", None)  # [r, H, D]: heads on tensor
    assert float(np.abs(np.asarray(q["lora_b"])).max()) > 0  # B left zero: it trained
    # The base is untouched (bit for bit) and sits on its usual shardings.
    assert _digest(base) == before
    full = run.run(run.full_params, state.params)
    kernel = full["layers_0"]["attn"]["query"]["kernel"]
    assert kernel.sharding.spec == P("fsdp", "tensor", None)
    np.testing.assert_array_equal(np.asarray(kernel), base["layers_0"]["attn"]["query"]["kernel"])


def _state_bytes(tree) -> int:
    return int(sum(np.asarray(x).nbytes for x in jax.tree_util.tree_leaves(tree)))


@pytest.mark.parametrize(
    ("method", "fields"),
    [("lora", {}), ("adapter", {"adapter_size": 4}), ("prefix", {"prefix_hidden": 16})],
)
def test_optimizer_state_holds_only_trainable_leaves(method, fields):
    cfg = _cfg(method, **fields)
    mesh = partitioning.make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    base = models.init_params(cfg.model, jax.random.key(0))
    run = peft_steps.build(cfg, mesh, base)
    state = run.abstract_state
    trainable = _state_bytes(jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype),
                                                    state.params))  # fmt: skip
    opt = sum(int(np.prod(s.shape)) * s.dtype.itemsize
              for s in jax.tree_util.tree_leaves(state.opt_state))  # fmt: skip
    # Adam's mu and nu per trainable leaf, plus two int32 step counts (Adam's and the
    # learning-rate schedule's); gradient clipping keeps no state.
    assert opt == 2 * trainable + 8
    full = steps.build(cfg.model, cfg.optimizer, 3, 1, 0, mesh).abstract_state
    full_opt = sum(int(np.prod(s.shape)) * s.dtype.itemsize
                   for s in jax.tree_util.tree_leaves(full.opt_state))  # fmt: skip
    assert opt < full_opt / 10
    line = peft.Peft(cfg.peft, cfg.model).trainable_line()
    assert line.startswith("trainable ") and "of " in line
    # On the devices, too: the live state's bytes are the trainable tree's three times.
    live = run.run(run.init, jax.random.key(1))
    assert sum(bytes_per_device(live.opt_state).values()) == opt
    # Two steps move every trainable leaf (B / up-projections start at zero) and the
    # combined tree's base leaves not at all.
    start = jax.tree_util.tree_map(np.asarray, live.params)
    for b in _batches(2):
        live, m = run.run(run.train, live, partitioning.to_global(b, run.batch_sharding))
        assert np.isfinite(float(m["loss"]))
    for a, b in zip(jax.tree_util.tree_leaves(start), jax.tree_util.tree_leaves(live.params),
                    strict=True):  # fmt: skip
        assert not np.array_equal(a, np.asarray(b))
    assert _digest(base) == _digest(models.init_params(cfg.model, jax.random.key(0)))
