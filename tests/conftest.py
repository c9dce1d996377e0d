"""Test setup: 8 fake CPU devices, set before JAX is imported anywhere."""

import os
import sys

import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
if "--xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent XLA compilation cache per test run, shared by the xdist workers and
# every subprocess they start (the command-line, multi-process, resume and README tests
# compile the same tiny programs again and again; a cache hit halves a small run's CPU
# time). Compiled programs, not results, are cached: what a test checks is computed
# anew. A fresh directory per run (xdist's run id), so no run sees another's entries.
_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"pid{os.getpid()}"
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(os.environ.get("TMPDIR", "/tmp"), f"t5x_lite-tests-xla-cache-{_RUN}"),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")


def _remove_old_caches(days: float = 1.0) -> None:
    """Caches of runs that ended more than ``days`` ago (each run leaves its own)."""
    import glob
    import shutil
    import time

    pattern = os.path.join(os.environ.get("TMPDIR", "/tmp"), "t5x_lite-tests-xla-cache-*")
    for path in glob.glob(pattern):
        try:
            if time.time() - os.path.getmtime(path) > days * 86400:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass


_remove_old_caches()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Data-layer session fixtures (kjv prepared once per session in a tmp dir).
from data_fixtures import kjv_root, kjv_tokenizer  # noqa: E402, F401

# --------------------------------------------------------------------------- model helpers


def check_sharded_matches_host(model, params, batch, mesh, atol=1e-5):
    """Forward of ``model`` with sharded params and batch == with host copies.

    ``params`` live in their shardings on ``mesh`` (``models.init_sharded``); the
    batch is placed with ``partitioning.batch_sharding`` and the jitted forward runs
    under the mesh and the logical-axis rules. The reference is the same forward on
    host numpy copies, outside any mesh. Every output (``logits``, ...) must agree
    within ``atol``; returns the sharded outputs for further checks.
    """
    import jax
    import numpy as np

    from t5x_lite import partitioning

    def forward(p, b):
        return model.apply({"params": p}, b)

    with jax.set_mesh(mesh), partitioning.axis_rules():
        sharded = jax.jit(forward)(params, jax.device_put(batch, partitioning.batch_sharding(mesh)))
    host = jax.jit(forward)(jax.tree.map(np.asarray, params), batch)
    assert sorted(sharded) == sorted(host)
    for key in host:
        np.testing.assert_allclose(
            np.asarray(sharded[key]), np.asarray(host[key]), atol=atol, rtol=0, err_msg=key
        )
    return sharded


@pytest.fixture(scope="session")
def sharded_vs_host():
    """:func:`check_sharded_matches_host`, for tests of every model family."""
    return check_sharded_matches_host
