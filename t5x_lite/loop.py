"""The training loop's parts that keep the device busy and a run safe.

* :class:`StopFlag`: when every process stops for SIGTERM / SIGINT, agreed without a
  collective per step (JAX's preemption sync point, or a gather every N steps);
* :class:`Prefetch`: batches put on the devices ahead of the step that reads them,
  with the data-iterator state after the last *consumed* batch (what a checkpoint
  stores);
* :class:`Window`: loop time between two logs, evaluations and saves paused out;
* device memory: :func:`peak_device_memory` (the backend's counter) and
  :func:`live_bytes_per_device` (live ``jax.Array`` buffers, each once);
* :func:`state_finite` and :class:`NonFiniteError`: no non-finite state is saved.
"""

from __future__ import annotations

import collections
import dataclasses
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from t5x_lite.config import ConfigError
from t5x_lite.partitioning import replicated_value


class NonFiniteError(ConfigError):
    """A non-finite loss or gradient under ``train.on_nonfinite=stop`` (one line, naming
    the step and the last good checkpoint; a ConfigError so every entry point prints it
    as ``error: ...``: the levers are config fields)."""


def preemption_service() -> bool:
    """Whether JAX's preemption sync manager runs (several processes under
    ``jax.distributed`` with ``jax_enable_preemption_service``): it then owns SIGTERM."""
    if jax.process_count() == 1:
        return False
    from jax._src import distributed

    return distributed.global_state.preemption_sync_manager is not None


class StopFlag:
    """When to stop for SIGTERM / SIGINT, agreed by every process, with no per-step
    collective.

    * one process: the handler's flag, read after each step;
    * several processes under JAX's preemption service: SIGTERM is the service's (its
      notice reaches every process; ``reached_preemption_sync_point(step)``, a local
      check, turns true at the same step everywhere); SIGINT sets a local flag;
    * the local flag of several processes is agreed by an allgather every
      ``check_every`` steps (``train.preemption_check_every``).

    A second SIGINT (Ctrl-C twice) raises KeyboardInterrupt without saving.
    """

    def __init__(self, enabled: bool, check_every: int) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}
        self.enabled = enabled
        self.check_every = check_every
        self.service = enabled and preemption_service()
        if enabled and threading.current_thread() is threading.main_thread():
            ours = (signal.SIGINT,) if self.service else (signal.SIGTERM, signal.SIGINT)
            for sig in ours:
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.signum = signum

    def requested(self, step: int) -> bool:
        """Whether every process stops after ``step`` (call it after every step)."""
        if not self.enabled:
            return False
        local = self.signum is not None
        if jax.process_count() == 1:
            return local
        from jax.experimental import multihost_utils

        if self.service and multihost_utils.reached_preemption_sync_point(step):
            self.signum = self.signum or int(signal.SIGTERM)
            return True
        if step % self.check_every:
            return False
        flags = multihost_utils.process_allgather(np.asarray([local], np.int32))
        if np.any(flags) and self.signum is None:
            self.signum = int(signal.SIGTERM)  # another process's signal
        return bool(np.any(flags))

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old = {}


class Prefetch:
    """Batches put on the devices ahead of the step that reads them.

    :meth:`pop` returns ``(global batch, iterator state after it)``; :meth:`fill`
    (called while a step runs) reads and transfers up to ``depth`` more. The state
    that goes into a checkpoint is the one after the last *consumed* batch, so a
    resumed run continues with the batch the queue held next.
    """

    def __init__(self, iterator: Any, put: Callable[[Any], Any], depth: int) -> None:
        self._it, self._put, self.depth = iterator, put, depth
        self._queue: collections.deque = collections.deque()
        self.consumed_state = iterator.get_state()  # position after the last popped batch

    def _pull(self) -> tuple[Any, Any]:
        local = next(self._it)
        return self._put(local), self._it.get_state()

    def pop(self) -> Any:
        batch, self.consumed_state = self._queue.popleft() if self._queue else self._pull()
        return batch

    def fill(self) -> None:
        while len(self._queue) < self.depth:
            self._queue.append(self._pull())


@dataclasses.dataclass
class Window:
    """Loop time and steps since the last log (evaluations, saves and plots paused out);
    the losses of the steps fetched in it."""

    seconds: float = 0.0
    steps: int = 0
    losses: list[float] = dataclasses.field(default_factory=list)
    started: float | None = None

    def start(self) -> None:
        self.started = time.perf_counter()

    def pause(self) -> None:
        if self.started is not None:
            self.seconds += time.perf_counter() - self.started
            self.started = None


def live_bytes_per_device() -> int:
    """The largest per-device total of live ``jax.Array`` buffer bytes on this process.

    Each device buffer counts once: single-device views of a sharded array (what a save
    reads shard by shard) share their buffers with it.
    """
    per: dict[Any, int] = collections.defaultdict(int)
    seen: set[tuple[Any, int]] = set()
    for x in jax.live_arrays():
        try:
            shards = [(s.device, s.data) for s in x.addressable_shards]
            for device, data in shards:
                key = (device, data.unsafe_buffer_pointer())
                if key not in seen:
                    seen.add(key)
                    per[device] += int(data.size) * data.dtype.itemsize
        except Exception:  # deleted or donated while listed
            continue
    return max(per.values(), default=0)


def peak_device_memory(devices: list[jax.Device]) -> tuple[int | None, str]:
    """``(bytes, source)``: ``memory_stats()["peak_bytes_in_use"]`` of the local devices
    where the backend keeps it, else (None, "live_arrays") for the caller to sample."""
    peaks = []
    for d in devices:
        if d.process_index != jax.process_index():
            continue
        stats = d.memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            peaks.append(int(stats["peak_bytes_in_use"]))
    return (max(peaks), "memory_stats") if peaks else (None, "live_arrays")


def memory_now(devices: list[jax.Device], live: dict[str, int]) -> int:
    """Peak device bytes so far: the backend's counter, else the largest live sample."""
    peak, _ = peak_device_memory(devices)
    return peak if peak is not None else max(live.values())


def state_finite(run: Any) -> Callable[[Any], bool]:
    """A jitted check that every float leaf of params and optimizer state is finite."""

    def all_finite(tree: Any) -> jax.Array:
        leaves = [
            jnp.all(jnp.isfinite(x))
            for x in jax.tree_util.tree_leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)
        ]
        return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)

    fn = jax.jit(all_finite)
    return lambda state: bool(
        replicated_value(run.run(fn, (state.params, state.opt_state)))
    )
