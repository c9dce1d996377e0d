"""Orbax checkpoints of a run: train state + data-iterator state + metadata.

A checkpoint ``<workdir>/checkpoints/<step>/`` holds three items:

* ``state``  the :class:`~t5x_lite.train_state.TrainState` (params, optimizer state,
  step, RNG), written shard by shard by every process (``StandardSave``);
* ``data``   the JSON state of each process's training iterator,
  ``{"0": {...}, "1": {...}}`` keyed by process index;
* ``meta``   JSON ``{"step": 10, "process_count": 1, "mesh": [8, 1, 1], ...}``.

Saves are asynchronous by default: :meth:`Checkpointer.save` returns once the
arrays are copied off the devices and the files are written in a background
thread (the next save, :meth:`Checkpointer.wait` and :meth:`Checkpointer.close`
wait for it). Restoring takes an abstract state whose leaves carry the target
``NamedSharding`` s, so a checkpoint written under ``fsdp=8`` restores directly
into a ``data=2, tensor=4`` layout.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import numpy as np

from t5x_lite.config import CheckpointConfig


def _gather_json(obj: Any) -> dict[str, Any]:
    """``{str(process_index): obj}`` over all processes (obj JSON-serialisable)."""
    if jax.process_count() == 1:
        return {"0": obj}
    from jax.experimental import multihost_utils

    raw = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    length = multihost_utils.process_allgather(np.asarray([raw.size], np.int32))
    padded = np.zeros((int(np.max(length)),), np.uint8)
    padded[: raw.size] = raw
    everything = multihost_utils.process_allgather(padded)  # [P, L]
    return {
        str(i): json.loads(bytes(everything[i, : int(length[i, 0])]).decode())
        for i in range(everything.shape[0])
    }


def abstract_with_shardings(abstract: Any, shardings: Any) -> Any:
    """Tree of ``ShapeDtypeStruct`` with the target shardings (the restore target)."""
    return jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )


class Checkpointer:
    """Thin wrapper over ``orbax.checkpoint.CheckpointManager`` for one workdir."""

    def __init__(self, directory: str, cfg: CheckpointConfig, create: bool = True) -> None:
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=cfg.keep,
            enable_async_checkpointing=cfg.async_save,
            create=create,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "data", "meta")
        )
        self.last_save_blocking_s = 0.0

    # ------------------------------------------------------------------ queries
    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    # ------------------------------------------------------------------ save
    def save(self, step: int, state: Any, data_state: Any, meta: dict[str, Any]) -> bool:
        """Start saving ``step`` (returns once the loop may go on); False if it exists."""
        if step in self._manager.all_steps():
            return False
        ocp = self._ocp
        start = time.perf_counter()
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(_gather_json(data_state)),
            meta=ocp.args.JsonSave({"step": int(step), **meta}),
        )
        saved = self._manager.save(step, args=args, force=True)
        self.last_save_blocking_s = time.perf_counter() - start
        return bool(saved)

    def wait(self) -> None:
        """Block until the background save (if any) is on disk."""
        self._manager.wait_until_finished()

    # ------------------------------------------------------------------ restore
    def restore(
        self, step: int, abstract_state: Any, process_index: int = 0
    ) -> tuple[Any, Any, dict[str, Any]]:
        """``(state, this process's data-iterator state, meta)`` of checkpoint ``step``.

        ``abstract_state`` leaves are ``ShapeDtypeStruct`` s with the target shardings.
        """
        ocp = self._ocp
        out = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=ocp.args.JsonRestore(),
                meta=ocp.args.JsonRestore(),
            ),
        )
        data = out["data"]
        key = str(process_index)
        data_state = data.get(key) if isinstance(data, dict) else None
        return out["state"], data_state, dict(out["meta"])

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
