"""Pure train / eval steps and their jitted, sharded forms on a mesh.

:func:`train_step` maps ``(TrainState, batch) -> (TrainState, metrics)`` with no side
effects; :func:`build` jits it with explicit ``in_shardings`` / ``out_shardings``
(parameters and optimizer state from the logical-axis rules, batch rows split over
``data`` x ``fsdp``) and donates the state. With ``train.microbatches = M`` the
global batch ``[B, ...]`` is regrouped as ``[M, B / M, ...]`` (microbatch ``m`` takes
rows ``m, m + M, m + 2M, ...``, so every device keeps its own rows) and gradients are
accumulated with ``lax.scan``; losses are divided by the *global* token count, so
the update equals the one of a single ``B``-row batch up to float rounding.

Metrics of a step (float32 scalars) are the model's (:meth:`t5x_lite.models.base.
BaseModel.metrics`): ``loss`` (the optimised objective: mean token loss incl. label
smoothing and z-loss, plus the sentence loss for NSP/SOP encoders), ``ce`` (mean
token cross-entropy), ``accuracy`` and, for encoders with a sentence head,
``sentence_loss`` and ``sentence_accuracy``; plus ``grad_norm`` and ``learning_rate``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from t5x_lite import models, optim, partitioning
from t5x_lite import train_state as ts
from t5x_lite.config import Config, ModelConfig, OptimizerConfig

Array = jax.Array
Batch = dict[str, Array]


def _tree_add(a: Any, b: Any) -> Any:
    return jax.tree_util.tree_map(jnp.add, a, b)


def split_microbatches(batch: Batch, microbatches: int) -> Batch:
    """``[B, ...] -> [M, B / M, ...]``, microbatch ``m`` = rows ``m, m + M, ...``.

    E.g. rows ``[0..7]`` with ``M = 2`` -> ``[[0, 2, 4, 6], [1, 3, 5, 7]]``: with rows
    laid out contiguously over devices, each microbatch keeps rows on every device.
    """

    def one(x: Array) -> Array:
        b = x.shape[0]
        x = x.reshape((b // microbatches, microbatches, *x.shape[1:]))
        return jnp.swapaxes(x, 0, 1)

    return jax.tree_util.tree_map(one, batch)


def train_step(
    state: ts.TrainState,
    batch: Batch,
    *,
    model: models.BaseModel,
    tx: optax.GradientTransformation,
    schedule: optim.Schedule,
    opt_cfg: OptimizerConfig,
    microbatches: int = 1,
    dropout: bool = False,
    grad_constraint: Callable[[Any], Any] = lambda g: g,
    micro_constraint: Callable[[Batch], Batch] = lambda b: b,
    skip_nonfinite: bool = False,
) -> tuple[ts.TrainState, dict[str, Array]]:
    """One optimizer update on a global batch; see the module docstring.

    ``metrics["nonfinite"]`` is 1.0 when the loss or the gradient norm is NaN / Inf;
    with ``skip_nonfinite`` such a step keeps the parameters and optimizer state as
    they were (only ``step`` advances: the batch is consumed, its update dropped).
    """
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    denominators = model.denominators(batch)  # global token weight (and rows)

    def loss_fn(params: Any, mb: Batch, key: Array) -> tuple[Array, dict[str, Array]]:
        outputs = model.apply(params, mb, deterministic=not dropout, rngs={"dropout": key})
        sums = model.loss_sums(outputs, mb, opt_cfg.label_smoothing, opt_cfg.z_loss)
        return model.loss(sums, denominators), sums

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if microbatches == 1:
        (_, sums), grads = grad_fn(state.params, batch, rng)
        grads = grad_constraint(grads)
    else:
        mbs = micro_constraint(split_microbatches(batch, microbatches))  # [M, B/M, ...]
        first = jax.tree_util.tree_map(lambda x: x[0], mbs)
        sums_shape = jax.eval_shape(lambda: loss_fn(state.params, first, rng)[1])
        zeros = (
            grad_constraint(jax.tree_util.tree_map(jnp.zeros_like, state.params)),
            jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), sums_shape),
        )

        def body(carry: Any, xs: Any) -> tuple[Any, None]:
            g_acc, s_acc = carry
            mb, i = xs
            (_, s), g = grad_fn(state.params, mb, jax.random.fold_in(rng, i))
            return (grad_constraint(_tree_add(g_acc, g)), _tree_add(s_acc, s)), None

        (grads, sums), _ = jax.lax.scan(body, zeros, (mbs, jnp.arange(microbatches)))

    metrics = {
        **model.metrics(sums, denominators),
        "grad_norm": optax.global_norm(grads),
        "learning_rate": schedule(state.step),
    }
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
    metrics["nonfinite"] = 1.0 - finite.astype(jnp.float32)
    new = state.apply_gradients(grads, tx)
    if skip_nonfinite:
        kept = jax.tree_util.tree_map(
            lambda n, o: jnp.where(finite, n, o),
            (new.params, new.opt_state),
            (state.params, state.opt_state),
        )
        new = new.replace(params=kept[0], opt_state=kept[1])
    return new, metrics


def eval_step(params: Any, batch: Batch, *, model: models.BaseModel) -> dict[str, Array]:
    """Sums of every head's CE / hits / weight on one batch."""
    return model.loss_sums(model.apply(params, batch), batch)


@dataclasses.dataclass(frozen=True)
class Steps:
    """The jitted, sharded functions of one (model, optimizer, mesh) combination.

    Call them only through :meth:`run`, which activates the mesh and the logical
    axis rules for the model's activation constraints.
    """

    mesh: Mesh
    model: models.BaseModel
    tx: optax.GradientTransformation
    schedule: optim.Schedule
    abstract_state: ts.TrainState
    state_shardings: ts.TrainState
    batch_sharding: NamedSharding
    init: Callable[[Array], ts.TrainState]
    train: Callable[[ts.TrainState, Batch], tuple[ts.TrainState, dict[str, Array]]]
    eval: Callable[[Any, Batch], dict[str, Array]]
    logits: Callable[[Any, Batch], Array]
    copy: Callable[[ts.TrainState], ts.TrainState]
    # The tree the model is applied to, from the state's params: the params themselves,
    # or the frozen base combined with the added parameters (t5x_lite.peft_steps).
    full_params: Callable[[Any], Any] = lambda params: params

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        with jax.set_mesh(self.mesh), partitioning.axis_rules():
            return fn(*args)


def copy_fn(shardings: Any) -> Any:
    """A jitted on-device copy of a train state laid out by ``shardings`` (what an
    asynchronous save reads while the live state is donated to the next step)."""
    return jax.jit(
        lambda s: jax.tree_util.tree_map(jnp.copy, s),
        in_shardings=(shardings,),
        out_shardings=shardings,
    )


@functools.lru_cache(maxsize=8)
def build(
    model_cfg: ModelConfig,
    opt_cfg: OptimizerConfig,
    num_steps: int,
    microbatches: int,
    seed: int,
    mesh: Mesh,
    skip_nonfinite: bool = False,
) -> Steps:
    """Jitted, sharded steps (cached: equal configs on the same mesh reuse compilations)."""
    model = models.get(model_cfg)
    tx, schedule = optim.make_optimizer(opt_cfg, num_steps)
    param_shardings = models.param_shardings(model_cfg, mesh)

    def fresh(rng: Array) -> ts.TrainState:
        params = models.init_params(model_cfg, rng)
        return ts.create(params, tx, seed)

    abstract = jax.eval_shape(fresh, jax.random.key(0))
    shardings = ts.state_shardings(mesh, abstract, param_shardings)
    replicated = NamedSharding(mesh, PartitionSpec())
    batch_sharding = partitioning.logical_sharding(mesh, ("batch",))
    micro_sharding = NamedSharding(mesh, PartitionSpec(None, *batch_sharding.spec))

    def grad_constraint(g: Any) -> Any:
        return jax.lax.with_sharding_constraint(g, param_shardings)

    def micro_constraint(mbs: Batch) -> Batch:
        return jax.tree_util.tree_map(
            lambda x: jax.lax.with_sharding_constraint(x, micro_sharding), mbs
        )

    step = functools.partial(
        train_step,
        model=model,
        tx=tx,
        schedule=schedule,
        opt_cfg=opt_cfg,
        microbatches=microbatches,
        dropout=model_cfg.dropout_rate > 0,
        grad_constraint=grad_constraint,
        micro_constraint=micro_constraint,
        skip_nonfinite=skip_nonfinite,
    )
    train_jit = jax.jit(
        step,
        in_shardings=(shardings, batch_sharding),
        out_shardings=(shardings, replicated),
        donate_argnums=(0,),
    )
    init_jit = jax.jit(fresh, out_shardings=shardings)
    eval_jit = jax.jit(
        functools.partial(eval_step, model=model),
        in_shardings=(param_shardings, batch_sharding),
        out_shardings=replicated,
    )
    logits_jit = jax.jit(
        lambda p, b: model.apply(p, b)["logits"],
        in_shardings=(param_shardings, replicated),
        out_shardings=replicated,
    )
    copy_jit = copy_fn(shardings)
    return Steps(
        mesh=mesh,
        model=model,
        tx=tx,
        schedule=schedule,
        abstract_state=abstract,
        state_shardings=shardings,
        batch_sharding=batch_sharding,
        init=init_jit,
        train=train_jit,
        eval=eval_jit,
        logits=logits_jit,
        copy=copy_jit,
    )


def for_config(cfg: Config, mesh: Mesh) -> Steps:
    """:func:`build` for a full run config."""
    return build(
        cfg.model, cfg.optimizer, cfg.train.num_steps, cfg.train.microbatches, cfg.train.seed, mesh,
        cfg.train.on_nonfinite == "skip",
    )  # fmt: skip
