"""The logical-axis rules table and mesh construction on 8 fake CPU devices."""

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
