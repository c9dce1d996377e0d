"""Starting the multi-controller runtime: explicit flags, or the cluster JAX detects.

Every process of a multi-host run calls :func:`initialize` before JAX touches a
device. Three ways in, in this order:

* explicit: ``--coordinator_address=HOST:PORT --num_processes=N --process_id=I`` on
  every process (any machine; loopback for tests);
* a cluster that launched the processes, found from its environment by
  :func:`detect`: SLURM (``srun``: ``SLURM_JOB_ID``, ``SLURM_NTASKS`` > 1, ...), Open
  MPI (``mpirun``: ``OMPI_MCA_orte_hnp_uri`` / ``PMIX_RANK``), a multi-host Cloud TPU
  slice (``TPU_WORKER_HOSTNAMES`` naming several workers, as on TPU VMs and GKE) or a
  Kubernetes JobSet (``JOBSET_NAME``, with the ``kubernetes`` package JAX uses);
  ``jax.distributed.initialize()`` then reads coordinator, count and index itself;
* none: a single process.

``--cluster=NAME`` forces one of these (``none`` disables detection). A coordinator
that never answers, or a process that never starts (so that the others wait at the
rendezvous), ends in one line after ``--init_timeout`` seconds, not a hang or an abort.

    >>> detect({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "2", "SLURM_PROCID": "0",
    ...         "SLURM_LOCALID": "0", "SLURM_STEP_NODELIST": "node[1-2]"})
    'slurm'
    >>> detect({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) is None  # one task
    True
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Mapping

from t5x_lite.config import ConfigError

CLUSTERS = ("auto", "none", "explicit", "slurm", "ompi", "tpu", "k8s")
# JAX's own rendezvous time-out is the user's plus this margin: JAX aborts the process
# (SIGABRT, no exception) when it passes before every process registered, and the
# watchdog of initialize() should speak first, in one line.
_JAX_TIMEOUT_MARGIN_S = 60
_SLURM = ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_STEP_NODELIST")


def detect(env: Mapping[str, str] | None = None) -> str | None:
    """The multi-process cluster this process was launched by, or None."""
    env = os.environ if env is None else env
    if all(k in env for k in _SLURM) and int(env["SLURM_NTASKS"]) > 1:
        return "slurm"
    if "OMPI_MCA_orte_hnp_uri" in env or (
        "PMIX_RANK" in env and int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
    ):
        return "ompi"
    hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
    if len(hosts) > 1:
        return "tpu"
    if "JOBSET_NAME" in env and "KUBERNETES_SERVICE_HOST" in env:
        return "k8s"
    return None


def initialize(
    cluster: str = "auto",
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    timeout_s: int = 300,
) -> str:
    """Start ``jax.distributed`` as the arguments say; returns how (``explicit``, a
    cluster name, or ``none``). One-line ConfigErrors for inconsistent flags and for
    a coordinator that cannot be reached."""
    if cluster not in CLUSTERS:
        raise ConfigError(f"--cluster={cluster!r} is not one of {', '.join(CLUSTERS)}")
    given = [v is not None for v in (coordinator_address, num_processes, process_id)]
    if any(given) and not all(given):
        raise ConfigError("--coordinator_address, --num_processes and --process_id go together")
    if all(given):
        if cluster not in ("auto", "explicit"):
            raise ConfigError(f"--cluster={cluster} takes no --coordinator_address flags")
        how = "explicit"
        if not 0 <= process_id < num_processes:
            raise ConfigError(f"--process_id={process_id} is outside [0, {num_processes})")
    elif cluster == "auto":
        how = detect() or "none"
    elif cluster == "explicit":
        raise ConfigError(
            "--cluster=explicit needs --coordinator_address, --num_processes and --process_id"
        )
    else:
        how = cluster
    if how == "none":
        return how
    import jax

    # CPU collectives across processes (no effect on GPU / TPU backends).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = dict(initialization_timeout=timeout_s + _JAX_TIMEOUT_MARGIN_S)
    if how == "explicit":
        kwargs.update(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
        )
    if how == "explicit" and process_id != 0:
        # The runtime aborts the process (no exception) when the coordinator never
        # answers; wait for its port here instead, and fail in one line.
        wait_for_coordinator(coordinator_address, timeout_s)
    where = coordinator_address or f"the {how} cluster's coordinator"
    done = threading.Event()
    threading.Thread(
        target=_watchdog, args=(done, timeout_s, where, num_processes, process_id), daemon=True
    ).start()
    try:
        jax.distributed.initialize(**kwargs)
    except Exception as e:  # a bad address, a second initialisation, ...
        first = " ".join(str(e).split())[:200]
        raise ConfigError(
            f"could not start the distributed runtime with {where} "
            f"({type(e).__name__}: {first})"
        ) from None
    finally:
        done.set()
    return how


def _watchdog(
    done: threading.Event,
    timeout_s: float,
    where: str,
    num_processes: int | None,
    process_id: int | None,
) -> None:
    """End the process in one line when ``jax.distributed.initialize`` has not returned
    after ``timeout_s`` seconds: the usual cause is a process that never started, which
    leaves every other one waiting at the rendezvous. (``initialize`` releases the GIL
    while it waits, so this thread runs.)"""
    if done.wait(timeout_s):
        return
    who = "this process" if process_id is None else f"process {process_id}"
    if num_processes is not None:
        who += f" of {num_processes}"
    sys.stderr.write(
        f"error: {who}: the other processes did not join the distributed runtime at "
        f"{where} within {timeout_s:g} s; start every process (each with its own "
        "--process_id) or raise --init_timeout\n"
    )
    sys.stderr.flush()
    os._exit(1)


def wait_for_coordinator(address: str, timeout_s: float) -> None:
    """Return once ``HOST:PORT`` accepts a TCP connection; a one-line ConfigError after
    ``timeout_s`` seconds without one."""
    import socket
    import time

    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"--coordinator_address={address!r} is not HOST:PORT")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise ConfigError(
                    f"no coordinator answered at {address} within {timeout_s} s ({e}); is "
                    "process 0 running, and is the address reachable from this host?"
                ) from None
            time.sleep(0.25)
