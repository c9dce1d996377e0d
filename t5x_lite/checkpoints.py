"""Orbax checkpoints of a run: train state + data-iterator state + metadata.

A checkpoint ``<workdir>/checkpoints/<step>/`` holds three items:

* ``state``  the :class:`~t5x_lite.train_state.TrainState` (params, optimizer state,
  step, RNG), written shard by shard by every process (``StandardSave``);
* ``data``   the JSON state of each process's training iterator,
  ``{"0": {...}, "1": {...}}`` keyed by process index;
* ``meta``   JSON ``{"step": 10, "process_count": 1, "mesh": [8, 1, 1], ...}``.

Saves are asynchronous by default (``checkpoint.async_save``), through orbax's own
asynchronous path on any number of processes: :meth:`Checkpointer.save` returns once
the arrays are copied to host memory (no second copy of the state stays on the
device), and the files are written in the background, into a temporary directory that
is renamed to ``<step>/`` only when complete. A process killed mid-save leaves no
``<step>/`` behind, so a restart resumes from the last complete checkpoint.
:meth:`Checkpointer.wait` and :meth:`Checkpointer.close` wait for the save in flight.

A checkpoint that cannot be read (truncated or corrupted on disk) is skipped by
:meth:`Checkpointer.restore_latest` when an earlier one restores: it is moved aside to
``<workdir>/checkpoints_unreadable/<step>/`` (nothing is deleted) and the message
names both steps.

Paths go through ``etils.epath`` (as orbax's do), so ``gs://bucket/run/checkpoints``
stays a GCS path.

Restoring takes an abstract state whose leaves carry the target ``NamedSharding`` s,
so a checkpoint written under ``fsdp=8`` restores directly into a ``data=2,
tensor=4`` layout.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import numpy as np

from t5x_lite import paths
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


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def abstract_with_shardings(abstract: Any, shardings: Any) -> Any:
    """Tree of ``ShapeDtypeStruct`` with the target shardings (the restore target)."""
    return jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )


UNREADABLE_DIR = "checkpoints_unreadable"  # beside checkpoints/: steps that failed to restore


def resolve(path: str | os.PathLike) -> str:
    """``path`` made absolute when local; a URL (``gs://b/x``) is returned unchanged.

    >>> resolve("gs://bucket/run/checkpoints")
    'gs://bucket/run/checkpoints'
    """
    return os.fspath(paths.path(path))


class Checkpointer:
    """Thin wrapper over ``orbax.checkpoint.CheckpointManager`` for one workdir."""

    def __init__(self, directory: str, cfg: CheckpointConfig, create: bool = True) -> None:
        import orbax.checkpoint as ocp
        from etils import epath

        self._ocp = ocp
        self.directory = resolve(directory)
        self._path = epath.Path(self.directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=cfg.keep,
            enable_async_checkpointing=cfg.async_save,
            create=create,
            # Temporary directories of saves killed before their commit.
            cleanup_tmp_directories=create,
        )
        self._manager = ocp.CheckpointManager(
            self._path, options=options, item_names=("state", "data", "meta")
        )
        # Steps on disk or being written (listing the directory on every save costs ms).
        self._steps = set(self._manager.all_steps())
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

        With ``async_save`` it returns when the arrays are on the host: ``state`` may
        be donated to the next step right away. A previous save still writing is
        waited for first.
        """
        if step in self._steps:
            return False
        start = time.perf_counter()
        self.wait()
        data = _gather_json(data_state)  # a collective: every process, main thread
        meta = {"step": int(step), **meta}
        self._steps.add(step)
        ocp = self._ocp
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data),
            meta=ocp.args.JsonSave(meta),
        )
        self._manager.save(step, args=args, force=True)
        self.last_save_blocking_s = time.perf_counter() - start
        return True

    def wait(self) -> None:
        """Block until the save in flight (if any) is on disk; re-raise its error."""
        self._manager.wait_until_finished()

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

    def restore_latest(
        self, abstract_state: Any, process_index: int = 0, log: Any = print
    ) -> tuple[int, Any, Any, dict[str, Any]] | None:
        """``(step, state, data state, meta)`` of the newest checkpoint that restores.

        None when there is no checkpoint. A newer checkpoint that fails while an older
        one restores is unreadable (the config check before this rules out another
        model): it is moved to ``<workdir>/checkpoints_unreadable/<step>`` and ``log``
        gets one line naming both steps. When none restores, a ConfigError names the
        latest and its error, and nothing is moved.
        """
        from t5x_lite.config import ConfigError

        failed: list[tuple[int, str]] = []
        for step in sorted(self.all_steps(), reverse=True):
            try:
                state, data, meta = self.restore(step, abstract_state, process_index)
            except ConfigError:
                raise  # a data-iterator state this run cannot continue from
            except Exception as e:  # orbax / tensorstore / JSON errors of a bad step
                failed.append((step, _first_line(e)))
                continue
            for bad, why in failed:
                moved = self._move_aside(bad)
                log(
                    f"checkpoint step {bad} in {self.directory} cannot be read ({why[:160]});"
                    f" moved it to {moved}, resuming from step {step}"
                )
            return step, state, data, meta
        if failed:
            step, why = failed[0]
            raise ConfigError(
                f"checkpoint {self.directory}/{step} cannot be restored into this run's "
                f"train state ({why[:200]}) and no earlier checkpoint can; choose another "
                "--workdir"
            )
        return None

    def _move_aside(self, step: int) -> str:
        """Rename ``<dir>/<step>`` to ``<dir>/../checkpoints_unreadable/<step>[.N]``."""
        target_dir = self._path.parent / UNREADABLE_DIR
        target = target_dir / str(step)
        if jax.process_index() == 0:
            target_dir.mkdir(parents=True, exist_ok=True)
            n = 1
            while target.exists():
                target, n = target_dir / f"{step}.{n}", n + 1
            (self._path / str(step)).rename(target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"t5x_lite_move_aside_{step}")
        self._manager.reload()
        self._steps = set(self._manager.all_steps())
        return str(target)

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
