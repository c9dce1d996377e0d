"""End-to-end training on kjv with 8 fake CPU devices.

Each family trains its own objective for 30 steps on data=8; GPT-2 also trains under
fsdp=2 x tensor=4 with the same losses (the train step, optimizer and loss code are
shared by every family; BERT's and T5's sharded forward passes are checked against
the host in test_encoder.py and test_t5.py, and a second mesh here would cost each
~25 s of compilation); a run stopped by SIGTERM at step 10
and restarted reproduces the uninterrupted run bit for bit; the gin and
ml_collections forms of one experiment give identical losses. The runs share
compilations (``steps.build`` is cached on equal configs and meshes) and one data
directory per module.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from t5x_lite import config as C
from t5x_lite import gin_config, presets, trainer
from t5x_lite.metrics import read_records

STEPS = 30
MESHES = {
    "data8": {"data": 8, "fsdp": 1, "tensor": 1},
    "fsdp2_tensor4": {"data": 1, "fsdp": 2, "tensor": 4},
    "tensor8": {"data": 1, "fsdp": 1, "tensor": 8},
    # data=8 as a hybrid mesh: 4 positions inside each process, 2 across (DCN).
    "dcn2_data8": {"data": 8, "fsdp": 1, "tensor": 1, "dcn_data": 2},
}
# One preset per family objective (causal LM, MLM + NSP, span corruption); Llama,
# ALBERT and RoBERTa share these code paths and cost ~30 s of compilation each here.
FAMILIES = ["gpt2_tiny", "bert_tiny", "t5_tiny"]


def overrides(data_dir: str, mesh: dict) -> dict:
    """The short-run settings every test here applies on top of a preset."""
    return {
        "data": {"seq_len": 64, "data_dir": data_dir},
        # At 3e-3 the float32 reduction orders of the two layouts drift apart to 1.4e-5
        # relative by step 27 for gpt2_tiny (measured); at 2e-3 they stay within 3e-7 for
        # every family while the loss still drops by more than 1 nat.
        "optimizer": {"learning_rate": 2e-3, "warmup_steps": 5},
        "train": {
            "batch_size": 16,
            "num_steps": STEPS,
            "log_every": 1,
            "eval_every": STEPS,
            "eval_batches": 1,
            "progress_bar": False,
            "plot_every": 1000,
        },
        "checkpoint": {"every_steps": 1000},
        "mesh": mesh,
    }


def preset_config(name: str, data_dir: str, mesh: dict) -> C.Config:
    values = presets.load(name).to_dict()
    for section, fields in overrides(data_dir, mesh).items():
        values[section].update(fields)
    return C.from_dict(values)


def losses_of(result: dict) -> np.ndarray:
    return np.asarray([result["losses"][s] for s in sorted(result["losses"])])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory):
    """``runs(name, mesh_key)``: the 30-step result, trained once per module."""
    cache: dict = {}

    def get(name: str, mesh_key: str) -> dict:
        if (name, mesh_key) not in cache:
            cfg = preset_config(name, data_dir, MESHES[mesh_key])
            workdir = str(tmp_path_factory.mktemp(f"{name}-{mesh_key}"))
            cache[name, mesh_key] = trainer.train(cfg, workdir, progress=False, sample=False)
        return cache[name, mesh_key]

    return get


@pytest.mark.parametrize("name", FAMILIES)
def test_each_family_trains_and_gpt2_layouts_agree(name, runs):
    a = runs(name, "data8")
    la = losses_of(a)
    assert len(la) == STEPS
    assert np.all(np.isfinite(la))
    # Decreasing smoothed loss: the last five steps well below the first five.
    assert la[-5:].mean() < la[:5].mean() - 0.5, la
    if name == "gpt2_tiny":
        b = runs(name, "fsdp2_tensor4")
        lb = losses_of(b)
        assert len(lb) == STEPS
        np.testing.assert_allclose(lb, la, rtol=1e-5)
        assert a["final_eval_loss"] == pytest.approx(b["final_eval_loss"], rel=1e-5)
    assert a["final_eval"]["perplexity"] == pytest.approx(np.exp(a["final_eval_loss"]))
    if name == "bert_tiny":
        check_sentence_metrics_by_hand(a)
    assert a["steps"] == STEPS and a["tokens_seen"] == STEPS * 16 * 64


def check_sentence_metrics_by_hand(result: dict) -> None:
    """NSP accuracy and loss of the final eval = numpy over the model's sentence logits
    on the eval batch, with the parameters of the final checkpoint."""
    from t5x_lite import checkpoints, models, partitioning, steps
    from t5x_lite.data import pipeline

    cfg, workdir = result["config"], result["workdir"]
    run = steps.for_config(cfg, partitioning.make_mesh(cfg.mesh))
    ckpt = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"), cfg.checkpoint)
    target = checkpoints.abstract_with_shardings(run.abstract_state, run.state_shardings)
    state, _, _ = ckpt.restore(STEPS, target)
    ckpt.close()
    params = jax.device_get(state.params)
    tokenizer = pipeline.get_tokenizer(cfg, workdir)
    (batch,) = pipeline.eval_batches(cfg, tokenizer, cfg.train.eval_batches)
    labels = batch["next_sentence_label"]  # [B]
    assert 0 < labels.sum() < len(labels)  # both classes present: accuracy is informative
    model = models.build(cfg.model)
    out = jax.jit(lambda p, b: model.apply({"params": p}, b, deterministic=True))(params, batch)
    logits = np.asarray(out["sentence_logits"], np.float64)  # [B, 2]
    accuracy = np.mean(np.argmax(logits, axis=-1) == labels)
    lse = np.log(np.exp(logits).sum(axis=-1))
    loss = np.mean(lse - logits[np.arange(len(labels)), labels])
    ev = result["final_eval"]
    assert ev["sentence_accuracy"] == pytest.approx(accuracy, abs=1e-9)
    assert ev["sentence_loss"] == pytest.approx(loss, rel=1e-4)


def test_workdir_holds_config_metrics_events_plots_and_checkpoint(runs):
    result = runs("gpt2_tiny", "data8")
    workdir = result["workdir"]
    with open(os.path.join(workdir, "config.json")) as f:
        saved = json.load(f)
    assert C.from_dict(saved) == result["config"]
    assert os.path.isfile(os.path.join(workdir, "tokenizer.model"))
    records = read_records(workdir)
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval_loss" in r]
    assert [r["step"] for r in train] == list(range(1, STEPS + 1))
    for key in ("loss", "learning_rate", "tokens_per_second", "mfu", "flops_per_second"):
        assert key in train[-1]
    assert train[-1]["flops_per_second"] > 0  # CPU: no peak, achieved FLOP/s instead
    assert [r["step"] for r in evals] == [STEPS]
    assert evals[0]["eval_loss"] == pytest.approx(result["final_eval_loss"])
    tb = os.listdir(os.path.join(workdir, "tensorboard"))
    assert any(f.startswith("events.out.tfevents") for f in tb)
    # The command the run prints at the end reads them (tensorboard installs with us).
    tensorboard = os.path.join(os.path.dirname(sys.executable), "tensorboard")
    shown = subprocess.run(
        [tensorboard, "--inspect", "--logdir", os.path.join(workdir, "tensorboard"),
         "--tag", "eval/loss"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    scalars = shown.stdout.split("scalars", 1)[1]
    assert f"last_step            {STEPS}" in scalars, shown.stdout[-800:]
    for plot in ("loss.png", "throughput.png"):
        with open(os.path.join(workdir, "plots", plot), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(os.path.join(workdir, "checkpoints")) == [str(STEPS)]


def test_sigterm_then_restart_reproduces_the_run_bitwise(runs, data_dir, tmp_path):
    reference = runs("gpt2_tiny", "data8")
    cfg = preset_config("gpt2_tiny", data_dir, MESHES["data8"])
    workdir = str(tmp_path / "resumed")

    def stop_at_10(step: int, metrics: dict) -> None:
        if step == 10:
            os.kill(os.getpid(), signal.SIGTERM)

    first = trainer.train(cfg, workdir, progress=False, on_step=stop_at_10, sample=False)
    assert first["preempted"] and first["steps"] == 10
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10"]
    assert signal.getsignal(signal.SIGTERM) is not None  # the handler was put back

    second = trainer.train(cfg, workdir, progress=False, sample=False)
    assert second["start_step"] == 10 and second["steps"] == STEPS
    assert second["restore_s"] is not None
    combined = {**first["losses"], **second["losses"]}
    assert sorted(combined) == list(range(1, STEPS + 1))
    for step, loss in reference["losses"].items():
        assert combined[step] == loss, (step, combined[step], loss)  # bitwise
    assert second["final_eval_loss"] == reference["final_eval_loss"]
    # metrics.jsonl has each step once, across both runs.
    steps = [r["step"] for r in read_records(workdir) if "loss" in r]
    assert steps == list(range(1, STEPS + 1))


def test_without_save_on_preemption_signals_keep_their_default(runs, data_dir, tmp_path):
    """checkpoint.save_on_preemption=False installs no handler: Ctrl-C interrupts at
    once (KeyboardInterrupt) and nothing is saved. The SIGINT handler in place at step
    2 is called as the interpreter would on Ctrl-C (in the main thread, at once: a real
    signal lands wherever the main thread is, which made the test depend on timing)."""
    runs("gpt2_tiny", "data8")  # shares its compilation and data directory
    values = C.to_dict(preset_config("gpt2_tiny", data_dir, MESHES["data8"]))
    values["checkpoint"]["save_on_preemption"] = False
    cfg = C.from_dict(values)
    workdir = tmp_path / "no_handlers"
    # A user's process starts with Python's Ctrl-C handler; a test process may have
    # inherited another (an earlier test's library can leave SIGINT ignored).
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    before = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT))
    during = {}

    def interrupt_at_2(step: int, metrics: dict) -> None:
        during[step] = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT))
        if step == 2:
            signal.getsignal(signal.SIGINT)(signal.SIGINT, None)

    try:
        with pytest.raises(KeyboardInterrupt):
            trainer.train(cfg, str(workdir), progress=False, on_step=interrupt_at_2, sample=False)
    finally:
        signal.signal(signal.SIGINT, inherited)
    assert sorted(during) == [1, 2] and during[1] == before
    assert os.listdir(workdir / "checkpoints") == []


def test_gin_and_ml_collections_forms_give_identical_losses(runs, data_dir, tmp_path):
    reference = runs("gpt2_tiny", "data8")
    bindings = []
    for section, fields in overrides(data_dir, MESHES["data8"]).items():
        for key, value in fields.items():
            bindings.append(f"{section}.{key} = {value!r}")
    cfg = gin_config.load(["gin/gpt2_tiny.gin"], bindings)
    assert cfg == reference["config"]
    result = trainer.train(cfg, str(tmp_path / "gin"), progress=False, sample=False)
    first10 = [result["losses"][s] for s in range(1, 11)]
    assert first10 == [reference["losses"][s] for s in range(1, 11)]


def test_restart_on_a_different_mesh_continues_with_the_same_next_loss(runs, data_dir, tmp_path):
    """A run checkpointed under data=8 resumes under fsdp=2 x tensor=4."""
    reference = runs("gpt2_tiny", "data8")
    runs("gpt2_tiny", "fsdp2_tensor4")  # compiled already by the family test
    workdir = str(tmp_path / "remesh")
    cfg_a = preset_config("gpt2_tiny", data_dir, MESHES["data8"])

    def stop_at_10(step: int, metrics: dict) -> None:
        if step == 10:
            os.kill(os.getpid(), signal.SIGTERM)

    trainer.train(cfg_a, workdir, progress=False, on_step=stop_at_10, sample=False)
    cfg_b = preset_config("gpt2_tiny", data_dir, MESHES["fsdp2_tensor4"])
    second = trainer.train(cfg_b, workdir, progress=False, sample=False)
    assert second["start_step"] == 10
    assert second["losses"][11] == pytest.approx(reference["losses"][11], rel=1e-5)
    devices_b = second["config"].mesh
    assert (devices_b.fsdp, devices_b.tensor) == (2, 4)
    assert jax.device_count() == 8


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _slurm_port() -> int:
    """A free port in the range JAX derives from SLURM_JOB_ID (61440 + id % 4096)."""
    import socket

    for port in range(61440 + os.getpid() % 4000, 65536):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 61440..65535")


def _two_processes(
    flags: list[str], slurm: bool = False, timeout: float = 400, sigterm_after: int = 0
) -> list[tuple[str, str]]:
    """Run ``run_train.py FLAGS`` as 2 processes x 4 CPU devices (gloo on 127.0.0.1):
    with explicit coordinator flags, or started as ``srun`` starts them (SLURM's
    environment variables on localhost, no coordinator flags). ``sigterm_after``: once
    process 0 has logged that step, process 1 (only) gets SIGTERM."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    if slurm:
        job = _slurm_port() - 61440
        env.update(SLURM_JOB_ID=str(job), SLURM_NTASKS="2", SLURM_STEP_NODELIST="localhost",
                   SLURM_STEP_NUM_NODES="1")  # fmt: skip
        launches = [({"SLURM_PROCID": str(i), "SLURM_LOCALID": str(i)}, []) for i in range(2)]
    else:
        port = _free_port()
        launches = [
            ({}, [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                  f"--process_id={i}"])
            for i in range(2)
        ]  # fmt: skip
    procs = [
        subprocess.Popen(
            [sys.executable, "run_train.py", *flags, *extra],
            cwd=root,
            env=dict(env, **more),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for more, extra in launches
    ]
    head = ""
    if sigterm_after:
        while f"step {sigterm_after}/" not in head:
            line = procs[0].stdout.readline()
            assert line, "process 0 ended before the step to signal at"
            head += line
        procs[1].send_signal(signal.SIGTERM)
    outs = [p.communicate(timeout=timeout) for p in procs]
    outs[0] = (head + outs[0][0], outs[0][1])
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    return outs


def _flags(data_dir: str, mesh: str, workdir, num_steps: int = STEPS) -> list[str]:
    flags = ["--config=configs/gpt2_tiny.py", f"--workdir={workdir}"]
    for section, fields in overrides(data_dir, MESHES[mesh]).items():
        fields = dict(fields, num_steps=num_steps) if section == "train" else fields
        flags += [f"--config.{section}.{k}={v}" for k, v in fields.items()]
    return flags


@pytest.fixture(scope="module")
def continued(runs, data_dir, tmp_path_factory):
    """The 1-process data=8 reference run continued in 1 process to STEPS + 2: losses."""
    import shutil

    reference = runs("gpt2_tiny", "data8")
    workdir = tmp_path_factory.mktemp("continued") / "run"
    shutil.copytree(reference["workdir"], workdir)
    cfg = preset_config("gpt2_tiny", data_dir, MESHES["data8"])
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, num_steps=STEPS + 2))
    out = trainer.train(cfg, str(workdir), progress=False, sample=False)
    assert out["start_step"] == STEPS
    return out["losses"], str(reference["workdir"])


@pytest.mark.parametrize("mesh", ["data8", "tensor8", "dcn2_data8"])
def test_two_processes_on_loopback_match_one_process(mesh, runs, continued, data_dir, tmp_path):
    """2 processes x 4 CPU devices (gloo over 127.0.0.1) reproduce 1 process x 8 devices:

    * data8: each process feeding half the rows, started as ``srun`` starts processes
      (SLURM's environment, no coordinator flags); SIGTERM reaches process 1 only after
      step 3: both agree on one step (JAX's preemption sync point), save it and exit 0;
      that checkpoint resumes in 1 process to step 30, ending with the uninterrupted
      run's losses and parameters, and continues as the 1-process run does;
    * tensor8: the 1-process run's checkpoint resumes in 2 processes whose tensor axis
      spans both (both feed the whole batch: the rows their devices hold; explicit
      flags), continuing as the 1-process run does;
    * dcn2_data8: 30 steps of a hybrid data=8 mesh (mesh.dcn_data=2: one ICI block of
      4 devices per process).
    """
    import shutil

    reference = runs("gpt2_tiny", "data8")  # also prepares the data dir and tokenizer
    next_two, reference_workdir = continued
    want_next = [next_two[STEPS + 1], next_two[STEPS + 2]]
    workdir = tmp_path / "multi"
    if mesh == "tensor8":  # 1 process -> 2
        shutil.copytree(reference_workdir, workdir)
        _two_processes(_flags(data_dir, mesh, workdir, STEPS + 2))
        later = {r["step"]: r["loss"] for r in read_records(str(workdir)) if "loss" in r}
        np.testing.assert_allclose([later[STEPS + 1], later[STEPS + 2]], want_next, rtol=1e-5)
        return
    steps = STEPS  # the reference's schedule (cosine over 30 steps), so the same length
    if mesh == "data8":  # SIGTERM to process 1 only; both save one step and exit 0
        outs = _two_processes(_flags(data_dir, mesh, workdir, steps), slurm=True,
                              sigterm_after=3)  # fmt: skip
        (saved,) = os.listdir(workdir / "checkpoints")
        stop = int(saved)
        assert 3 < stop < steps
        assert f"stopped at step {stop}" in outs[0][0] and "stopped at" not in outs[1][0]
        steps = stop
    else:
        outs = _two_processes(_flags(data_dir, mesh, workdir, steps))
    records = read_records(str(workdir))
    losses = {r["step"]: r["loss"] for r in records if "loss" in r}
    assert sorted(losses) == list(range(1, steps + 1))
    want = np.asarray([reference["losses"][s] for s in range(1, steps + 1)])
    np.testing.assert_allclose([losses[s] for s in range(1, steps + 1)], want, rtol=1e-5)
    assert os.listdir(workdir / "checkpoints") == [str(steps)]
    if mesh != "data8":
        return
    # 2 processes -> 1: the preempted run resumes and ends as the uninterrupted one.
    cfg = preset_config("gpt2_tiny", data_dir, MESHES["data8"])
    out = trainer.train(cfg, str(workdir), progress=False, sample=False)
    assert out["start_step"] == stop
    rest = range(stop + 1, STEPS + 1)
    np.testing.assert_allclose([out["losses"][s] for s in rest],
                               [reference["losses"][s] for s in rest], rtol=1e-5)  # fmt: skip
    assert out["final_eval_loss"] == pytest.approx(reference["final_eval_loss"], rel=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(_params_at(str(workdir), STEPS, cfg)),
                    jax.tree_util.tree_leaves(_params_at(reference_workdir, STEPS, cfg))):
        # Parameters near 0 (biases) differ by up to 1.6e-6 (measured): the two layouts'
        # reductions differ in rounding, and Adam scales tiny gradients up to ~lr.
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)  # fmt: skip
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, num_steps=STEPS + 2))
    out = trainer.train(cfg, str(workdir), progress=False, sample=False)
    np.testing.assert_allclose([out["losses"][STEPS + 1], out["losses"][STEPS + 2]], want_next,
                               rtol=1e-5)  # fmt: skip


def _params_at(workdir: str, step: int, cfg: C.Config) -> dict:
    """Host parameters of checkpoint ``step`` of ``workdir``."""
    from t5x_lite import checkpoints, partitioning, steps

    run = steps.for_config(cfg, partitioning.make_mesh(cfg.mesh))
    ckpt = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"), cfg.checkpoint)
    try:
        target = checkpoints.abstract_with_shardings(run.abstract_state, run.state_shardings)
        return jax.device_get(ckpt.restore_params(step, target.params))
    finally:
        ckpt.close()
