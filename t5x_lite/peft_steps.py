"""Jitted, sharded steps that train only the added parameters of :mod:`t5x_lite.peft`.

:func:`build` returns the same :class:`t5x_lite.steps.Steps` the trainer uses for full
fine-tuning, with one difference: the train state's ``params`` are the **trainable
tree** (LoRA factors, adapters or prefixes, plus ``peft.modules_to_save``), so the
optimizer state (Adam's ``mu`` / ``nu``) exists for those leaves only. The frozen base
is a constant **argument** of every jitted function (not a closure constant baked
into the program), on its usual shardings (``models.param_shardings``), and is never
donated or updated; the trainable leaves are sharded by their own logical axes::

    train(state, batch)  = train_jit(state, base, batch)     # state: trainable only
    eval(params, batch)  = eval_jit(base, params, batch)
    full_params(params)  = combine(base, params)             # for decoding, export

Gradients flow only into the trainable tree (``jax.value_and_grad`` of the loss with
respect to it); the base's bytes are the same after any number of steps.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from t5x_lite import models, optim, partitioning, peft, steps
from t5x_lite import train_state as ts
from t5x_lite.config import Config

Array = jax.Array


class Bound:
    """The model object with a frozen base bound: ``apply(trainable, batch)`` applies
    the model to ``peft.combine(base, trainable)``; losses and metrics are the
    model's (they never read parameters)."""

    def __init__(self, model: models.BaseModel, added: peft.Peft, base: Any) -> None:
        self._model, self._peft, self._base = model, added, base

    def apply(
        self, params: Any, batch: dict[str, Array], deterministic: bool = True, rngs: Any = None
    ) -> dict[str, Array]:
        full = self._peft.combine(self._base, params)
        return self._model.apply(full, batch, deterministic=deterministic, rngs=rngs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


@dataclasses.dataclass(frozen=True)
class PeftSteps(steps.Steps):
    """:class:`t5x_lite.steps.Steps` of the trainable tree, plus ``added`` (the
    :class:`t5x_lite.peft.Peft`) and ``inference``: a Steps view whose params are the
    combined trees ``full_params`` returns (the model object, their shardings), for
    code that applies the model itself (task metrics, decoding)."""

    added: Any = None
    inference: Any = None


def build(cfg: Config, mesh: Mesh, base: Any, extra_trainable: Sequence[str] = ()) -> PeftSteps:
    """Steps training ``peft.Peft(cfg.peft, cfg.model, extra_trainable)``'s parameters
    on ``base`` (moved onto its shardings on ``mesh`` first); see the module docstring."""
    model_cfg, opt_cfg = cfg.model, cfg.optimizer
    model = models.get(model_cfg)
    added = peft.Peft(cfg.peft, model_cfg, extra_trainable)
    tx, schedule = optim.make_optimizer(opt_cfg, cfg.train.num_steps)
    base_shardings = models.param_shardings(model_cfg, mesh)
    base = jax.device_put(base, base_shardings)
    trainable_shardings = added.shardings(mesh)
    seed = cfg.train.seed

    def fresh(rng: Array, base: Any) -> ts.TrainState:
        return ts.create(added.init(rng, base), tx, seed)

    abstract = jax.eval_shape(fresh, jax.random.key(0), base)
    shardings = ts.state_shardings(mesh, abstract, trainable_shardings)
    replicated = NamedSharding(mesh, PartitionSpec())
    batch_sharding = partitioning.logical_sharding(mesh, ("batch",))
    micro_sharding = NamedSharding(mesh, PartitionSpec(None, *batch_sharding.spec))

    def train(state: ts.TrainState, base: Any, batch: dict[str, Array]) -> Any:
        return steps.train_step(
            state,
            batch,
            model=Bound(model, added, base),
            tx=tx,
            schedule=schedule,
            opt_cfg=opt_cfg,
            microbatches=cfg.train.microbatches,
            dropout=model_cfg.dropout_rate > 0,
            grad_constraint=lambda g: jax.lax.with_sharding_constraint(g, trainable_shardings),
            micro_constraint=lambda mbs: jax.tree_util.tree_map(
                lambda x: jax.lax.with_sharding_constraint(x, micro_sharding), mbs
            ),
            skip_nonfinite=cfg.train.on_nonfinite == "skip",
        )

    train_jit = jax.jit(
        train,
        in_shardings=(shardings, base_shardings, batch_sharding),
        out_shardings=(shardings, replicated),
        donate_argnums=(0,),
    )
    init_jit = jax.jit(fresh, in_shardings=(None, base_shardings), out_shardings=shardings)
    eval_jit = jax.jit(
        lambda b, p, batch: steps.eval_step(p, batch, model=Bound(model, added, b)),
        in_shardings=(base_shardings, trainable_shardings, batch_sharding),
        out_shardings=replicated,
    )
    logits_jit = jax.jit(
        lambda b, p, batch: Bound(model, added, b).apply(p, batch)["logits"],
        in_shardings=(base_shardings, trainable_shardings, replicated),
        out_shardings=replicated,
    )
    full_shardings = _full_shardings(added, base, abstract.params, base_shardings,
                                     trainable_shardings, replicated)  # fmt: skip
    combine_jit = jax.jit(
        added.combine,
        in_shardings=(base_shardings, trainable_shardings),
        out_shardings=full_shardings,
    )
    copy_jit = steps.copy_fn(shardings)
    run = PeftSteps(
        mesh=mesh,
        model=model,
        tx=tx,
        schedule=schedule,
        abstract_state=abstract,
        state_shardings=shardings,
        batch_sharding=batch_sharding,
        init=lambda rng: init_jit(rng, base),
        train=functools.partial(_with_base, train_jit, base),
        eval=lambda params, batch: eval_jit(base, params, batch),
        logits=lambda params, batch: logits_jit(base, params, batch),
        copy=copy_jit,
        full_params=lambda params: combine_jit(base, params),
        added=added,
    )
    view = ts.TrainState(step=replicated, params=full_shardings, opt_state=None, rng=replicated)
    inference = dataclasses.replace(
        run, state_shardings=view, full_params=lambda params: params, inference=None
    )
    return dataclasses.replace(run, inference=inference)


def _full_shardings(
    added: peft.Peft,
    base: Any,
    trainable: Any,
    base_shardings: Any,
    trainable_shardings: Any,
    replicated: NamedSharding,
) -> Any:
    """Shardings of ``added.combine(base, trainable)``: a base leaf keeps the base's, a
    trainable leaf its own; derived leaves (LoRA scales, computed prefixes) are
    replicated."""
    shape = jax.eval_shape(added.combine, base, trainable)
    by_path = {}
    for tree in (base_shardings, trainable_shardings):  # trainable wins, as in combine
        for path, s in jax.tree_util.tree_flatten_with_path(tree)[0]:
            by_path[jax.tree_util.keystr(path)] = s
    return jax.tree_util.tree_map_with_path(
        lambda path, _: by_path.get(jax.tree_util.keystr(path), replicated), shape
    )


def _with_base(train_jit: Any, base: Any, state: ts.TrainState, batch: Any) -> Any:
    return train_jit(state, base, batch)
