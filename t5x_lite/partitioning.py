"""Device mesh and the one logical-axis rules table.

Parameters and activations are annotated with *logical* axis names (what a dimension
is); :data:`LOGICAL_AXIS_RULES` says where each name lives on the mesh
``(data, fsdp, tensor)``:

* ``data``   pure data parallelism: batch split, parameters replicated;
* ``fsdp``   batch split *and* parameters / optimizer state split along ``embed``
  (ZeRO-3 style: each device holds 1/fsdp of every large matrix);
* ``tensor`` Megatron-style model parallelism: heads, MLP hidden units and the
  vocabulary are split.

Parameter names: ``vocab, embed, heads, kv_heads, kv, mlp, layers, relpos_buckets,
type_vocab, position, classes``. Activation names carry an ``act_`` prefix so a
parameter's ``embed`` (sharded on fsdp) and an activation's embedding dimension
(replicated, since the batch already uses fsdp) can live in different places.

This module imports only jax, flax and the config.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from t5x_lite.config import MeshConfig

MESH_AXES = ("data", "fsdp", "tensor")

_log = logging.getLogger(__name__)
_WARNED: set[tuple[str, int, tuple[str, ...], int]] = set()

# logical name -> mesh axis (or axes, or None for replicated)
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    # parameters
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("kv", None),
    ("mlp", "tensor"),
    ("layers", None),
    ("relpos_buckets", None),
    ("type_vocab", None),
    ("position", None),
    ("classes", None),
    # activations
    ("batch", ("data", "fsdp")),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_kv", None),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``Mesh`` with axes ``(data, fsdp, tensor)`` over ``devices`` (default: all).

    ``-1`` in the config fills the remaining devices; a product that differs from
    the device count is a one-line ConfigError raised before anything is compiled.
    The device order is JAX's topology-aware one (``mesh_utils.create_device_mesh``:
    neighbouring TPU chips on the inner axes); with ``mesh.dcn_data`` / ``dcn_fsdp`` >
    1 it is a hybrid mesh (``create_hybrid_device_mesh``): each slice (TPU) or process
    (GPU, CPU) holds one block of ``(data/dcn_data, fsdp/dcn_fsdp, tensor)`` devices
    and the DCN positions index the blocks.
    """
    from jax.experimental import mesh_utils

    devices = list(devices if devices is not None else jax.devices())
    shape = cfg.resolve(len(devices))
    dcn = cfg.dcn_shape(shape)
    axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    if dcn == (1, 1, 1):
        dev_array = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
        return Mesh(dev_array, MESH_AXES, axis_types=axis_types)
    from t5x_lite.config import ConfigError

    ici = tuple(s // d for s, d in zip(shape, dcn))
    # TPU slices are the granules; elsewhere (GPU nodes, CPU) each process is one.
    by_slice = all(
        d.platform == "tpu" and getattr(d, "slice_index", None) is not None for d in devices
    )
    granules = len({d.slice_index if by_slice else d.process_index for d in devices})
    if granules != math.prod(dcn):
        kind = "slices" if by_slice else "processes"
        raise ConfigError(
            f"mesh.dcn_data*dcn_fsdp = {dcn[0]}*{dcn[1]} = {math.prod(dcn)} differs from "
            f"the {granules} {kind} holding the devices"
        )
    dev_array = mesh_utils.create_hybrid_device_mesh(
        ici, dcn, devices, process_is_granule=not by_slice, allow_split_physical_axes=True
    )
    return Mesh(dev_array, MESH_AXES, axis_types=axis_types)


def logical_to_mesh_spec(logical: Sequence[str | None]) -> PartitionSpec:
    """PartitionSpec for a tuple of logical names under the rules table."""
    return nn.logical_to_mesh_axes(tuple(logical), LOGICAL_AXIS_RULES)


def logical_sharding(mesh: Mesh, logical: Sequence[str | None]) -> NamedSharding:
    return NamedSharding(mesh, logical_to_mesh_spec(logical))


def param_shardings(mesh: Mesh, abstract_boxed_params: Any) -> Any:
    """NamedShardings for a (possibly abstract) tree of ``nn.LogicallyPartitioned`` params.

    Unboxed leaves (no logical names) are replicated.
    A dimension that the mesh axes of its rule do not divide evenly (e.g. 2 key/value
    heads on ``tensor=4``) is replicated instead of failing: the rule is a
    preference, the shapes decide. :func:`divisible_spec` does that per leaf.
    """
    specs = nn.get_partition_spec(abstract_boxed_params)
    shapes = nn.meta.unbox(abstract_boxed_params)

    def one(spec: PartitionSpec, leaf: Any) -> PartitionSpec:
        wanted = nn.logical_to_mesh_axes(tuple(spec), LOGICAL_AXIS_RULES)
        got = divisible_spec(wanted, leaf.shape, mesh)
        warn_replicated(tuple(spec), wanted, got, leaf.shape, mesh)
        return got

    mesh_specs = jax.tree.map(
        one, specs, shapes, is_leaf=lambda x: isinstance(x, PartitionSpec)
    )
    return jax.tree.map(
        lambda spec: NamedSharding(mesh, spec),
        mesh_specs,
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )


def warn_replicated(
    logical: Sequence[Any],
    wanted: PartitionSpec,
    got: PartitionSpec,
    shape: Sequence[int],
    mesh: Mesh,
) -> None:
    """Log once per (logical axis, size, mesh axes) that a dimension the rules shard
    is replicated because the mesh does not divide it, e.g. ``logical axis 'kv_heads'
    of size 2 is not divisible by mesh axis tensor=4: that dimension is replicated
    (every device holds all of it)``."""
    for i, (w, g) in enumerate(zip(tuple(wanted), tuple(got), strict=False)):
        if w is None or g is not None:
            continue
        axes = (w,) if isinstance(w, str) else tuple(w)
        size = math.prod(mesh.shape[a] for a in axes)
        name = str(logical[i]) if i < len(logical) else "?"
        key = (name, int(shape[i]), axes, size)
        if size > 1 and key not in _WARNED:
            _WARNED.add(key)
            where = " x ".join(f"{a}={mesh.shape[a]}" for a in axes)
            _log.warning(
                "logical axis %r of size %d is not divisible by mesh axis %s: that "
                "dimension is replicated (every device holds all of it)",
                name, shape[i], where,
            )  # fmt: skip


def divisible_spec(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """``spec`` with every entry whose mesh size does not divide its dimension set to None.

    >>> # kv_heads=2 on tensor=4: PartitionSpec('fsdp', 'tensor', None) -> ('fsdp', None, None)
    """
    entries = []
    for i, entry in enumerate(tuple(spec) + (None,) * (len(shape) - len(spec))):
        axes = (entry,) if isinstance(entry, str) else tuple(entry or ())
        size = 1
        for a in axes:
            size *= mesh.shape[a]
        entries.append(entry if shape[i] % size == 0 else None)
    return PartitionSpec(*entries)


def logical_axes(boxed_params: Any) -> Any:
    """Tree of logical-name tuples (``PartitionSpec`` of names) of boxed params."""
    return nn.get_partition_spec(boxed_params)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Rows split over ``data`` x ``fsdp``; the remaining dims replicated."""
    return logical_sharding(mesh, ("batch",) + (None,) * (ndim - 1))


def axis_rules():
    """Context manager that activates the rules for ``nn.with_logical_constraint``."""
    return nn.logical_axis_rules(LOGICAL_AXIS_RULES)


# --------------------------------------------------------------------------- host <-> global


def replicated_value(tree: Any) -> Any:
    """Host numpy copy of replicated arrays (also when they span several processes)."""
    return jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_data(0)), tree)


def data_shard(sharding: Any, global_rows: int) -> tuple[int, int]:
    """``(index, count)``: which of ``count`` equal row blocks of a ``[global_rows,
    ...]`` batch laid out by ``sharding`` this process's devices hold.

    Processes whose devices hold the same rows (a model axis spanning hosts, e.g.
    ``tensor=8`` on 2 hosts x 4 devices) get the same index and must feed the same
    rows; with the data axes spread over all processes it is ``(process_index,
    process_count)``. A layout in which a process holds non-contiguous or uneven rows
    is a ConfigError.
    """
    from t5x_lite.config import ConfigError

    local = {d.id for d in jax.local_devices()}
    spans = {
        (s.start or 0, global_rows if s.stop is None else s.stop)
        for d, (s, *_) in sharding.devices_indices_map((global_rows,)).items()
        if d.id in local
    }
    lo, hi = min(a for a, _ in spans), max(b for _, b in spans)
    covered = np.zeros(global_rows, bool)
    for a, b in spans:
        covered[a:b] = True
    rows = hi - lo
    if not covered[lo:hi].all() or global_rows % rows or lo % rows:
        raise ConfigError(
            f"process {jax.process_index()} holds rows {sorted(spans)} of the "
            f"{global_rows}-row batch: not one equal block; order the mesh so that each "
            "process's devices hold consecutive rows"
        )
    return lo // rows, global_rows // rows


def to_global(
    local: dict[str, np.ndarray], sharding: Any, global_rows: int | None = None
) -> dict[str, jax.Array]:
    """Per-process rows ``[b, ...]`` -> global arrays ``[global_rows, ...]`` split by
    ``sharding`` (``global_rows`` defaults to ``b * process_count``: disjoint rows per
    process; pass it when processes share rows, see :func:`data_shard`)."""
    n = jax.process_count()
    return {
        k: jax.make_array_from_process_local_data(
            sharding,
            np.asarray(v),
            (global_rows if global_rows is not None else v.shape[0] * n, *v.shape[1:]),
        )
        for k, v in local.items()
    }
