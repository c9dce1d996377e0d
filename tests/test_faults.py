"""Faults a long run meets, injected on a one-layer GPT (one CPU device, 6 steps):

* SIGKILL while an asynchronous save is being written (a child process killed
  after the save's files are written but before orbax commits the step): the
  restart resumes from the last complete checkpoint and ends bit for bit where an
  uninterrupted run ends;
* the latest checkpoint truncated on disk: one line naming the step, the step moved
  aside (not deleted), the run resumes from the previous one, again bit for bit;
* a NaN in one batch: ``train.on_nonfinite=stop`` stops at that step naming the last
  good checkpoint and saves nothing after it, even at a save between two logs;
  ``skip`` drops that batch's update on the device and ends with the parameters of
  a loop that never applied it;
* a ``gs://`` workdir keeps its scheme through the path layer (GCS itself cannot be
  reached here: what is checked is the path up to the point where I/O starts).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from trained_runs import preset_config

from t5x_lite import checkpoints, loop, metrics, partitioning, steps, trainer
from t5x_lite.data import pipeline
from t5x_lite.metrics import read_records

NUM_STEPS, EVERY = 6, 2
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fault_config(data_dir: str, **train) -> object:
    cfg = preset_config("gpt2_tiny", data_dir)
    tc = dataclasses.replace(cfg.train, **{"num_steps": NUM_STEPS, "log_every": 3, **train})
    ck = dataclasses.replace(cfg.checkpoint, every_steps=EVERY, async_save=True)
    return dataclasses.replace(cfg, train=tc, checkpoint=ck)


def one_device_train(cfg, workdir: str) -> dict:
    return trainer.train(cfg, workdir, devices=jax.devices()[:1], progress=False, sample=False)


def saved_params(workdir: str, step: int, cfg) -> dict:
    """Host copy of the parameters of ``workdir``'s checkpoint ``step``."""
    run = steps.for_config(cfg, partitioning.make_mesh(cfg.mesh, jax.devices()[:1]))
    ckpt = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"), cfg.checkpoint)
    try:
        target = checkpoints.abstract_with_shardings(run.abstract_state, run.state_shardings)
        return jax.device_get(ckpt.restore_params(step, target.params))
    finally:
        ckpt.close()


def assert_trees_equal(a, b) -> None:
    for (path, x), y in zip(
        jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_leaves(b), strict=True
    ):
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def reference(kjv_root, tmp_path_factory):
    """The uninterrupted run: its losses and final parameters."""
    cfg = fault_config(str(kjv_root))
    workdir = str(tmp_path_factory.mktemp("reference"))
    out = one_device_train(cfg, workdir)
    return cfg, out["losses"], saved_params(workdir, NUM_STEPS, cfg), out


# Run in a child process: training whose save of step 4 hangs after its files are
# written, just before orbax commits it (the rename of its temporary directory).
_CHILD = """
import asyncio, dataclasses, os, sys
sys.path.insert(0, {tests!r})
from orbax.checkpoint._src.path import atomicity
import jax
from test_faults import fault_config, one_device_train

commit = atomicity.AtomicRenameTemporaryPath.finalize

async def hang_before_commit(self):
    if self._final_path.name == "4":
        open({marker!r}, "w").close()
        await asyncio.sleep(600)
    await commit(self)

atomicity.AtomicRenameTemporaryPath.finalize = hang_before_commit
one_device_train(fault_config({data!r}), {workdir!r})
"""


def test_sigkill_mid_save_then_a_truncated_latest_both_resume_bitwise(
    reference, kjv_root, tmp_path, capsys
):
    cfg, want_losses, want_params, _ = reference
    workdir, marker = str(tmp_path / "run"), str(tmp_path / "saving")
    script = _CHILD.format(
        tests=os.path.join(ROOT, "tests"), marker=marker, data=str(kjv_root), workdir=workdir
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    child = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while not os.path.exists(marker):
        assert child.poll() is None, child.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "the child never reached the save of step 4"
        time.sleep(0.2)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)
    child.stderr.close()
    ckpt_dir = os.path.join(workdir, "checkpoints")
    left = sorted(os.listdir(ckpt_dir))
    assert left[0] == "2" and len(left) == 2 and left[1].startswith("4.orbax-checkpoint-tmp")

    resumed = one_device_train(cfg, workdir)
    assert resumed["start_step"] == 2
    assert sorted(os.listdir(ckpt_dir)) == ["2", "4", "6"]  # the half-written 4 is gone
    for step in range(3, NUM_STEPS + 1):
        assert resumed["losses"][step] == want_losses[step], step
    assert_trees_equal(saved_params(workdir, NUM_STEPS, cfg), want_params)

    # Truncate the largest file of the latest checkpoint's train state.
    files = [
        os.path.join(d, f)
        for d, _, names in os.walk(os.path.join(ckpt_dir, "6", "state"))
        for f in names
    ]
    biggest = max(files, key=os.path.getsize)
    with open(biggest, "r+b") as f:
        f.truncate(os.path.getsize(biggest) // 2)
    capsys.readouterr()
    again = one_device_train(cfg, workdir)
    lines = [x for x in capsys.readouterr().out.splitlines() if "cannot be read" in x]
    aside = os.path.join(workdir, "checkpoints_unreadable", "6")
    assert len(lines) == 1 and "checkpoint step 6" in lines[0], lines
    assert f"moved it to {aside}" in lines[0] and "resuming from step 4" in lines[0]
    assert os.path.isdir(aside)  # kept for the user, outside the run's checkpoints
    assert again["start_step"] == 4
    assert [again["losses"][s] for s in (5, 6)] == [want_losses[5], want_losses[6]]
    assert_trees_equal(saved_params(workdir, NUM_STEPS, cfg), want_params)


class _Poisoned:
    """The training stream with a NaN loss weight in its ``at``-th batch (1-based)."""

    def __init__(self, inner, at: int) -> None:
        self.inner, self.at, self.n = inner, at, 0

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batch = next(self.inner)
        self.n += 1
        if self.n == self.at:
            weights = np.array(batch["loss_weights"])
            weights[0, 0] = np.nan
            batch = dict(batch, loss_weights=weights)
        return batch

    def get_state(self):
        return self.inner.get_state()

    def set_state(self, state) -> None:
        self.inner.set_state(state)


@pytest.fixture
def poison_batch_3(monkeypatch):
    real = pipeline.train_iterator
    monkeypatch.setattr(pipeline, "train_iterator", lambda *a, **k: _Poisoned(real(*a, **k), 3))


def test_nan_batch_stops_before_any_save_of_a_nonfinite_state(
    reference, kjv_root, tmp_path, poison_batch_3
):
    cfg = fault_config(str(kjv_root), log_every=NUM_STEPS)  # no log fetch before step 6
    workdir = str(tmp_path / "nan")
    with pytest.raises(trainer.NonFiniteError) as e:
        one_device_train(cfg, workdir)
    message = str(e.value)
    assert "\n" not in message and "at step 3" in message
    assert f"the last good checkpoint is {os.path.join(workdir, 'checkpoints')}/2" in message
    # The save of step 4 came between two log fetches and was refused.
    assert os.listdir(os.path.join(workdir, "checkpoints")) == ["2"]
    params = saved_params(workdir, 2, cfg)
    assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(params))


def test_nan_batch_skipped_on_device_keeps_the_state(reference, kjv_root, tmp_path,
                                                     poison_batch_3):  # fmt: skip
    cfg = fault_config(str(kjv_root), on_nonfinite="skip")
    workdir = str(tmp_path / "skip")
    out = one_device_train(cfg, workdir)
    assert out["skipped_steps"] == 1 and np.isnan(out["losses"][3])
    records = [r for r in read_records(workdir) if "loss" in r]
    assert [r["skipped_steps"] for r in records] == [1, 1]
    # A loop that never applies batch 3's update: the same step function, batch 3 not fed.
    run = steps.for_config(cfg, partitioning.make_mesh(cfg.mesh, jax.devices()[:1]))
    tokenizer = pipeline.get_tokenizer(cfg, workdir)
    clean = pipeline.train_iterator(cfg, tokenizer).inner  # the stream without the NaN
    state = run.run(run.init, jax.random.key(cfg.train.seed))
    for i in range(1, NUM_STEPS + 1):
        batch = next(clean)
        if i == 3:
            state = state.replace(step=state.step + 1)
            continue
        state, _ = run.run(run.train, state, partitioning.to_global(batch, run.batch_sharding))
    assert_trees_equal(saved_params(workdir, NUM_STEPS, cfg), jax.device_get(state.params))


def test_async_saves_keep_no_second_copy_of_the_state_on_the_device(reference):
    """Live device bytes right after a save returns (its files still being written)
    stay within 10% of those at the logs in between, and the run reports them."""
    out = reference[3]
    assert out["memory_source"] == "live_arrays"  # the CPU keeps no peak counter
    steady, during = out["live_bytes"]["steady"], out["live_bytes"]["during_save"]
    assert steady > 0 and during <= 1.1 * steady, out["live_bytes"]
    assert out["peak_memory_bytes"] == max(steady, during)
    records = [r for r in read_records(reference[3]["workdir"]) if "loss" in r]
    assert all(r["peak_memory_bytes"] > 0 for r in records)


def test_a_gs_workdir_keeps_its_scheme_through_the_path_layer():
    assert checkpoints.resolve("gs://bucket/run/checkpoints") == "gs://bucket/run/checkpoints"
    assert trainer._join("gs://bucket/run", "checkpoints") == "gs://bucket/run/checkpoints"
    assert checkpoints.resolve("rel/dir") == os.path.abspath("rel/dir")
    assert os.fspath(metrics.workdir_path("gs://bucket/run", "plots")) == "gs://bucket/run/plots"


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("prefetch_depth", -1, "train.prefetch_depth=-1 must be a non-negative integer"),
        ("on_nonfinite", "ignore", "train.on_nonfinite='ignore' is not one of stop, skip"),
        ("preemption_check_every", 0, "train.preemption_check_every=0 must be a positive"),
    ],
)
def test_loop_settings_out_of_range_are_one_line_errors(field, value, message):
    from t5x_lite import config as C

    with pytest.raises(C.ConfigError) as e:
        C.from_dict({"train": {field: value}})
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


@pytest.mark.parametrize("service", [False, True])
def test_two_process_stop_checks_cost_no_collective_per_step(service, monkeypatch):
    """Without JAX's preemption service the processes' flags are gathered only every
    train.preemption_check_every steps; with it, its sync point decides (a local check)."""
    from jax.experimental import multihost_utils

    gathered: list[int] = []
    stop = loop.StopFlag(enabled=True, check_every=10)
    try:
        monkeypatch.setattr(jax, "process_count", lambda: 2)
        stop.service = service

        def allgather(x):
            gathered.append(step)
            return np.stack([x, x])

        monkeypatch.setattr(multihost_utils, "process_allgather", allgather)
        monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point",
                            lambda at: service and at == 17)  # fmt: skip
        answers = {}
        for step in range(1, 26):
            if step == 12 and not service:
                stop.signum = signal.SIGTERM  # this process's signal, after step 12
            answers[step] = stop.requested(step)
            if answers[step]:
                break
    finally:
        stop.restore()
    # Gathered at multiples of 10 only, nothing at the steps in between.
    assert gathered == ([10] if service else [10, 20])
    assert [s for s, a in answers.items() if a] == ([17] if service else [20])
