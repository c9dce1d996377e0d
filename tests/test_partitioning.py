"""The logical-axis rules table and mesh construction on 8 fake CPU devices."""

import dataclasses

import jax
import pytest
from jax.sharding import PartitionSpec as P

from t5x_lite import partitioning
from t5x_lite.config import ConfigError, MeshConfig


def test_mesh_shape_and_axis_types():
    mesh = partitioning.make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    mesh = partitioning.make_mesh(MeshConfig(data=-1, fsdp=1, tensor=4))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 1, "tensor": 4}


def test_mesh_product_must_match_devices():
    with pytest.raises(ConfigError, match="differs from the 8 available devices"):
        partitioning.make_mesh(MeshConfig(data=3, fsdp=1, tensor=1))


@pytest.mark.parametrize(
    "logical, spec",
    [
        (("vocab", "embed"), P("tensor", "fsdp")),
        (("embed", "mlp"), P("fsdp", "tensor")),
        (("embed", "heads", "kv"), P("fsdp", "tensor", None)),
        (("heads", "kv", "embed"), P("tensor", None, "fsdp")),
        (("batch", "act_length", "act_embed"), P(("data", "fsdp"), None, None)),
        (("relpos_buckets", "heads"), P(None, "tensor")),
    ],
)
def test_rules(logical, spec):
    assert partitioning.logical_to_mesh_spec(logical) == spec


def test_batch_sharding_splits_rows_over_data_and_fsdp():
    mesh = partitioning.make_mesh(MeshConfig(data=2, fsdp=4, tensor=1))
    x = jax.device_put(jax.numpy.zeros((16, 5)), partitioning.batch_sharding(mesh, 2))
    assert {s.data.shape for s in x.addressable_shards} == {(2, 5)}


def test_indivisible_dimensions_are_replicated():
    mesh = partitioning.make_mesh(MeshConfig(data=1, fsdp=2, tensor=4))
    spec = partitioning.divisible_spec(P("fsdp", "tensor", None), (64, 2, 16), mesh)
    assert spec == P("fsdp", None, None)
    assert partitioning.divisible_spec(P(("data", "fsdp"), None), (6, 3), mesh) == P(
        ("data", "fsdp"), None
    )
    assert partitioning.divisible_spec(P("tensor"), (6,), mesh) == P(None)


def test_llama_tiny_kv_heads_on_tensor4_initialise_sharded():
    from t5x_lite import models, presets

    cfg = presets.load_typed("llama_tiny").model
    assert cfg.kv_heads % 4 != 0
    mesh = partitioning.make_mesh(MeshConfig(data=1, fsdp=2, tensor=4))
    shardings = models.param_shardings(cfg, mesh)
    specs = {
        jax.tree_util.keystr(path): s.spec
        for path, s in jax.tree_util.tree_flatten_with_path(shardings)[0]
    }
    key_spec = next(v for k, v in specs.items() if "key" in k and "kernel" in k)
    query_spec = next(v for k, v in specs.items() if "query" in k and "kernel" in k)
    assert key_spec == P("fsdp", None, None)
    assert query_spec == P("fsdp", "tensor", None)
    params = models.init_sharded(cfg, jax.random.key(0), mesh)
    batch = models.example_batch(cfg, 8, 16)
    with mesh, partitioning.axis_rules():
        sharded = jax.jit(lambda p, b: models.build(cfg).apply({"params": p}, b))(params, batch)
    plain = models.build(cfg).apply({"params": jax.device_get(params)}, batch)
    assert jax.numpy.allclose(sharded["logits"], plain["logits"], atol=1e-5)


def test_embedding_gather_on_data_fsdp_tensor_mesh_compiles_without_full_remat(capfd):
    """The token lookup on a 2x2x2 mesh: no replicate-then-repartition fallback.

    Gathering from the ``[vocab, embed]`` table as sharded (``P('tensor', 'fsdp')``)
    gives rows split over ``embed`` on fsdp while the batch also uses fsdp, which
    XLA's SPMD partitioner can only resolve by replicating the activation, with an
    "Involuntary full rematerialization" warning on stderr. Forward and gradient
    of gpt2_tiny are compiled here and stderr (the C++ log, file descriptor 2) is
    read back.
    """
    from t5x_lite import models, presets

    cfg = presets.load_typed("gpt2_tiny").model
    mesh = partitioning.make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    params = models.init_sharded(cfg, jax.random.key(0), mesh)
    batch = models.example_batch(cfg, 8, 16)
    model = models.build(cfg)

    def loss(p, b):
        return model.apply({"params": p}, b)["logits"].mean()

    capfd.readouterr()
    with jax.set_mesh(mesh), partitioning.axis_rules():
        b = jax.device_put(batch, partitioning.batch_sharding(mesh))
        jax.jit(jax.value_and_grad(loss)).lower(params, b).compile()
    err = capfd.readouterr().err
    assert "Involuntary full rematerialization" not in err, err[:2000]


def test_mesh_is_topology_ordered_and_dcn_axes_are_checked():

    mesh = partitioning.make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert mesh.devices.ravel().tolist() == jax.devices()  # the CPU's order, unchanged
    with pytest.raises(ConfigError, match=r"mesh.dcn_data=3 does not divide mesh.data=8"):
        partitioning.make_mesh(MeshConfig(data=8, dcn_data=3))
    with pytest.raises(ConfigError, match=r"= 2 differs from the 1 processes holding"):
        partitioning.make_mesh(MeshConfig(data=8, dcn_data=2))
    with pytest.raises(ConfigError, match=r"mesh.dcn_fsdp=0 must be positive"):
        partitioning.make_mesh(MeshConfig(data=8, dcn_fsdp=0))


def test_replication_fallback_is_logged_once_naming_axis_size_and_mesh(caplog):
    """2 key/value heads and an unpadded vocabulary of 1002 on tensor=8: replicated,
    each said once (the second call logs nothing new)."""
    from t5x_lite import models
    from t5x_lite.config import ModelConfig

    cfg = ModelConfig(family="decoder", arch="llama", vocab_size=1002, vocab_pad_multiple=1,
                      d_model=64, num_heads=8, num_kv_heads=2, num_layers=2, d_ff=64)  # fmt: skip
    mesh = partitioning.make_mesh(MeshConfig(data=1, fsdp=1, tensor=8))
    partitioning._WARNED.clear()  # once per process: forget earlier tests' warnings
    with caplog.at_level("WARNING", logger="t5x_lite.partitioning"):
        shardings = models.param_shardings(cfg, mesh)
        models.param_shardings(cfg, mesh)
    lines = [r.getMessage() for r in caplog.records]
    assert sorted(lines) == [
        "logical axis 'kv_heads' of size 2 is not divisible by mesh axis tensor=8: that "
        "dimension is replicated (every device holds all of it)",
        "logical axis 'vocab' of size 1002 is not divisible by mesh axis tensor=8: that "
        "dimension is replicated (every device holds all of it)",
    ]
    assert shardings["wte"]["embedding"].spec == P(None, "fsdp")
    padded = models.param_shardings(dataclasses.replace(cfg, vocab_pad_multiple=128), mesh)
    assert padded["wte"]["embedding"].spec == P("tensor", "fsdp")  # 1024 rows divide
