"""The train-state pytree and its shardings on a mesh.

``TrainState(step, params, opt_state, rng)`` is everything a step reads and writes,
and everything a checkpoint stores besides the data-iterator state:

* ``step``      int32 scalar, the number of updates applied so far;
* ``params``    float32 master weights (the model casts them to ``model.dtype``);
* ``opt_state`` the optax state (Adam moments, Adafactor factored moments, ...);
* ``rng``       ``uint32 [2]`` raw key data; step ``s`` uses ``fold_in(rng, s)``,
  so a resumed run draws the same dropout masks as an uninterrupted one.

Optimizer-state shardings **follow the parameters**: each optimizer leaf that sits
under a parameter's path takes that parameter's ``PartitionSpec`` when it has the
parameter's shape (Adam's ``mu``/``nu``), the spec with one dimension dropped when
one dimension was factored away (Adafactor's ``v_row``/``v_col``), and is
replicated otherwise (counts, scalars). So ``fsdp=8`` splits the parameters and
both Adam moments 8 ways: a ``[64, 256]`` kernel with spec ``("fsdp", "tensor")``
gives ``mu``/``nu`` the same spec; an Adafactor ``v_row`` of shape ``[64]`` gets
``("fsdp",)``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec


@struct.dataclass
class TrainState:
    step: jax.Array  # int32 []
    params: Any
    opt_state: Any
    rng: jax.Array  # uint32 [2]

    def apply_gradients(self, grads: Any, tx: optax.GradientTransformation) -> TrainState:
        updates, opt_state = tx.update(grads, self.opt_state, self.params)
        params = optax.apply_updates(self.params, updates)
        return self.replace(step=self.step + 1, params=params, opt_state=opt_state)


def create(params: Any, tx: optax.GradientTransformation, seed: int) -> TrainState:
    """A fresh state at step 0 (call inside ``jit`` to build it already sharded)."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        # Dropout stream: the second half of a split of the seed's key, so it differs
        # from the key the trainer initialises the parameters with.
        rng=jax.random.split(jax.random.PRNGKey(seed))[1].astype(jnp.uint32),
    )


def _keys(path: tuple[Any, ...]) -> tuple[str, ...]:
    """Dict keys of a pytree path: ``(SequenceKey(0), GetAttrKey('mu'), DictKey('a'))``
    -> ``("a",)``; only ``DictKey`` entries name parameters."""
    return tuple(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def _spec_like(
    leaf_shape: tuple[int, ...],
    param_shape: tuple[int, ...],
    spec: PartitionSpec,
) -> PartitionSpec | None:
    """``spec`` adapted to a leaf derived from a parameter, or None (replicate).

    A leaf one dimension short takes the spec without the dropped dimension (found by
    shape; for a square matrix either choice is a valid layout).
    """
    full = tuple(spec) + (None,) * (len(param_shape) - len(spec))
    if tuple(leaf_shape) == tuple(param_shape):
        return PartitionSpec(*full)
    if len(leaf_shape) == len(param_shape) - 1:
        for drop in range(len(param_shape) - 1, -1, -1):
            if param_shape[:drop] + param_shape[drop + 1 :] == tuple(leaf_shape):
                return PartitionSpec(*(full[:drop] + full[drop + 1 :]))
    return None


def opt_state_shardings(
    mesh: Mesh, abstract_opt_state: Any, abstract_params: Any, param_shardings: Any
) -> Any:
    """Shardings of an optimizer-state tree that follow ``param_shardings`` (see above)."""
    by_path: dict[tuple[str, ...], tuple[tuple[int, ...], PartitionSpec]] = {}
    for (path, p), (_, s) in zip(
        jax.tree_util.tree_flatten_with_path(abstract_params)[0],
        jax.tree_util.tree_flatten_with_path(param_shardings)[0],
        strict=True,
    ):
        by_path[_keys(path)] = (tuple(p.shape), s.spec)
    replicated = NamedSharding(mesh, PartitionSpec())

    def pick(path: tuple[Any, ...], leaf: Any) -> NamedSharding:
        keys = _keys(path)
        # The parameter path is the longest suffix of the leaf's dict keys that names one.
        for start in range(len(keys)):
            hit = by_path.get(keys[start:])
            if hit is not None:
                spec = _spec_like(tuple(leaf.shape), *hit)
                return NamedSharding(mesh, spec) if spec is not None else replicated
        return replicated

    return jax.tree_util.tree_map_with_path(pick, abstract_opt_state)


def state_shardings(mesh: Mesh, abstract_state: TrainState, param_shardings: Any) -> TrainState:
    """``TrainState`` of NamedShardings: params per the rules, opt state following them."""
    replicated = NamedSharding(mesh, PartitionSpec())
    return TrainState(
        step=replicated,
        params=param_shardings,
        opt_state=opt_state_shardings(
            mesh, abstract_state.opt_state, abstract_state.params, param_shardings
        ),
        rng=replicated,
    )


def bytes_per_device(tree: Any) -> dict[Any, int]:
    """Bytes of ``tree``'s arrays held by each device (from the addressable shards)."""
    out: dict[Any, int] = {}
    for leaf in jax.tree_util.tree_leaves(tree):
        for shard in leaf.addressable_shards:
            n = int(shard.data.size) * shard.data.dtype.itemsize
            out[shard.device] = out.get(shard.device, 0) + n
    return out
