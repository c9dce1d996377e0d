"""Multi-process start-up (t5x_lite.cluster): cluster detection from the environment,
flag consistency, and a coordinator that never answers (one line, no hang). The
loopback runs under SLURM's environment and explicit flags are in test_train."""

from __future__ import annotations

import re
import socket
import threading
import time

import pytest

from t5x_lite import cluster
from t5x_lite.config import ConfigError

SLURM = {"SLURM_JOB_ID": "12", "SLURM_NTASKS": "4", "SLURM_PROCID": "1", "SLURM_LOCALID": "1",
         "SLURM_STEP_NODELIST": "gpu[01-02]"}  # fmt: skip


@pytest.mark.parametrize(
    "env, want",
    [
        (SLURM, "slurm"),
        ({**SLURM, "SLURM_NTASKS": "1"}, None),  # one task: a single process
        ({k: v for k, v in SLURM.items() if k != "SLURM_STEP_NODELIST"}, None),  # salloc shell
        ({"OMPI_MCA_orte_hnp_uri": "1531576320.0;tcp://10.96.0.1:34911"}, "ompi"),
        ({"PMIX_RANK": "0", "OMPI_COMM_WORLD_SIZE": "8"}, "ompi"),
        ({"TPU_WORKER_HOSTNAMES": "t1k-w-0,t1k-w-1,t1k-w-2,t1k-w-3"}, "tpu"),
        ({"TPU_WORKER_HOSTNAMES": "localhost"}, None),  # a single-host TPU VM
        ({"JOBSET_NAME": "train", "KUBERNETES_SERVICE_HOST": "10.0.0.1"}, "k8s"),
        ({}, None),
    ],
)
def test_detect(env, want):
    assert cluster.detect(env) == want


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(coordinator_address="h:1", num_processes=2), "go together"),
        (dict(cluster="pbs"), "--cluster='pbs' is not one of auto, none, explicit, slurm"),
        (dict(cluster="explicit"), "--cluster=explicit needs --coordinator_address"),
        (dict(cluster="slurm", coordinator_address="h:1", num_processes=2, process_id=0),
         "--cluster=slurm takes no --coordinator_address flags"),
        (dict(coordinator_address="h:1", num_processes=2, process_id=2),
         "--process_id=2 is outside [0, 2)"),
    ],
)  # fmt: skip
def test_inconsistent_flags_are_one_line(kwargs, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        cluster.initialize(**kwargs)


def test_no_cluster_starts_nothing(monkeypatch):
    for k in ("SLURM_JOB_ID", "OMPI_MCA_orte_hnp_uri", "PMIX_RANK", "TPU_WORKER_HOSTNAMES",
              "JOBSET_NAME"):  # fmt: skip
        monkeypatch.delenv(k, raising=False)
    assert cluster.initialize() == "none" and cluster.initialize("none") == "none"


def test_waiting_for_the_coordinator_times_out_in_one_line():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as e:
        cluster.wait_for_coordinator(f"127.0.0.1:{closed}", 1.0)
    assert 1.0 <= time.monotonic() - t0 < 5.0
    assert str(e.value).startswith(f"no coordinator answered at 127.0.0.1:{closed} within 1.0 s")
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="is not HOST:PORT"):
        cluster.wait_for_coordinator("localhost", 1.0)


def test_waiting_for_the_coordinator_returns_once_it_listens():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def listen_later():
        time.sleep(0.5)
        server.listen()

    threading.Thread(target=listen_later, daemon=True).start()
    try:
        cluster.wait_for_coordinator(f"127.0.0.1:{port}", 10.0)
    finally:
        server.close()
