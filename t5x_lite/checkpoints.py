"""Orbax checkpoints of a run: train state + data-iterator state + metadata.

A checkpoint ``<workdir>/checkpoints/<step>/`` holds three items:

* ``state``  the :class:`~t5x_lite.train_state.TrainState` (params, optimizer state,
  step, RNG), written shard by shard by every process (``StandardSave``);
* ``data``   the JSON state of each process's training iterator,
  ``{"0": {...}, "1": {...}}`` keyed by process index;
* ``meta``   JSON ``{"step": 10, "process_count": 1, "mesh": [8, 1, 1], ...}``.

Saves are asynchronous by default (``checkpoint.async_save``):

* one process: :meth:`Checkpointer.save` hands the state to a background thread
  that runs orbax's save, so the state passed must not be donated or deleted until
  the save is done (:attr:`Checkpointer.needs_copy`): the trainer passes an
  on-device copy (``Steps.copy``: one extra state-sized buffer while the save runs)
  and donates the live state to the next step. The loop blocks only for
  dispatching that copy and for a previous save still in flight;
* several processes: orbax's own asynchronous save, called from the training
  thread (its barriers must run in the same order on every process); it returns
  once the arrays are on the host, and files are written in the background.

:meth:`Checkpointer.wait` and :meth:`Checkpointer.close` wait for the save in flight
and re-raise its error, if any.

Restoring takes an abstract state whose leaves carry the target ``NamedSharding`` s,
so a checkpoint written under ``fsdp=8`` restores directly into a ``data=2,
tensor=4`` layout.
"""

from __future__ import annotations

import json
import os
import threading
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
        # One process: asynchrony from our own thread; several: orbax's (see above).
        self._threaded = cfg.async_save and jax.process_count() == 1
        options = ocp.CheckpointManagerOptions(
            max_to_keep=cfg.keep,
            enable_async_checkpointing=cfg.async_save and not self._threaded,
            create=create,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "data", "meta")
        )
        # Steps on disk or being written (listing the directory on every save costs ms).
        self._steps = set(self._manager.all_steps())
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.last_save_blocking_s = 0.0

    # ------------------------------------------------------------------ queries
    def latest_step(self) -> int | None:
        self.wait()
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        self.wait()
        self._manager.reload()
        self._steps = set(self._manager.all_steps())
        return sorted(self._steps)

    # ------------------------------------------------------------------ save
    def save(self, step: int, state: Any, data_state: Any, meta: dict[str, Any]) -> bool:
        """Save ``step``; returns once the loop may go on (False if it already exists).

        With ``async_save`` the arrays of ``state`` are read after this returns: pass
        a copy that nothing donates (see the module docstring).
        """
        if step in self._steps:
            return False
        start = time.perf_counter()
        self.wait()
        data = _gather_json(data_state)  # a collective: every process, main thread
        meta = {"step": int(step), **meta}
        self._steps.add(step)
        if not self._threaded:
            self._save_now(step, state, data, meta, wait=False)
            self.last_save_blocking_s = time.perf_counter() - start
            return True
        self._thread = threading.Thread(
            target=self._save_in_background, args=(step, state, data, meta), daemon=False
        )
        self._thread.start()
        self.last_save_blocking_s = time.perf_counter() - start
        return True

    @property
    def needs_copy(self) -> bool:
        """Whether :meth:`save` reads the state after returning (pass a copy then)."""
        return self._threaded

    def _save_now(
        self, step: int, state: Any, data: Any, meta: dict[str, Any], wait: bool = True
    ) -> None:
        ocp = self._ocp
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data),
            meta=ocp.args.JsonSave(meta),
        )
        self._manager.save(step, args=args, force=True)
        if wait:
            self._manager.wait_until_finished()

    def _save_in_background(self, step: int, state: Any, data: Any, meta: dict) -> None:
        try:
            self._save_now(step, state, data, meta)
        except BaseException as e:  # re-raised by wait() in the training thread
            self._error = e

    def wait(self) -> None:
        """Block until the background save (if any) is on disk; re-raise its error."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._manager.wait_until_finished()
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    # ------------------------------------------------------------------ restore
    def restore(
        self, step: int, abstract_state: Any, process_index: int = 0
    ) -> tuple[Any, Any, dict[str, Any]]:
        """``(state, this process's data-iterator state, meta)`` of checkpoint ``step``.

        ``abstract_state`` leaves are ``ShapeDtypeStruct`` s with the target shardings.
        """
        ocp = self._ocp
        self.wait()
        out = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=ocp.args.JsonRestore(),
                meta=ocp.args.JsonRestore(),
            ),
        )
        meta = dict(out["meta"])
        return out["state"], _data_state(out["data"], process_index, step, meta), meta

    def restore_params(self, step: int, abstract_params: Any) -> Any:
        """Only the ``params`` of checkpoint ``step`` (no optimizer state is read).

        ``abstract_params`` leaves are ``ShapeDtypeStruct`` s with the target shardings;
        orbax's partial restore reads just that subtree of the saved train state.
        """
        ocp = self._ocp
        self.wait()
        target = {"params": abstract_params}
        restore_args = jax.tree_util.tree_map(
            lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding), target
        )
        out = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(
                    item=target, restore_args=restore_args, partial_restore=True
                )
            ),
        )
        return out["state"]["params"]

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._manager.close()


def _data_state(saved: Any, process_index: int, step: int, meta: dict[str, Any]) -> Any:
    """This process's data-iterator state from the states every process saved.

    Each state is a position in the global batch sequence (grain's ``next_index``
    counts global batches, whatever the process's shard), so on another process
    count every process resumes from the same saved position; states that disagree
    cannot be mapped and are refused in one line naming both counts.
    """
    from t5x_lite.config import ConfigError

    if not isinstance(saved, dict) or not saved:
        return None
    if str(process_index) in saved and len(saved) == jax.process_count():
        return saved[str(process_index)]
    states = list(saved.values())
    if any(s != states[0] for s in states[1:]):
        raise ConfigError(
            f"checkpoint {step} was saved by {meta.get('process_count', len(saved))} "
            f"processes at different data positions; it cannot resume on "
            f"{jax.process_count()} processes (resume it on "
            f"{meta.get('process_count', len(saved))})"
        )
    return states[0]
