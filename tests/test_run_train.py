"""The command line: every shipped config parses, gin == ml_collections, one-line errors
that leave workdirs untouched, and a real SIGTERM to a real training process followed
by a resume."""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from t5x_lite import config as C
from t5x_lite import gin_config, presets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESETS = sorted(
    os.path.basename(p)[:-3]
    for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
    if os.path.basename(p) not in ("__init__.py", "base.py")
)
GIN_FILES = sorted(glob.glob(os.path.join(ROOT, "gin", "*.gin")))


def cli(*args: str, timeout: float = 240, **popen) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run(
        [sys.executable, "run_train.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **popen,
    )


def snapshot(directory: str) -> dict[str, tuple[bytes, int]]:
    out = {}
    for dirpath, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[path] = (f.read(), os.stat(path).st_mtime_ns)
    return out


# --------------------------------------------------------------------------- configs


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_parses_to_a_typed_config(name):
    cfg = presets.load_typed(name)
    assert isinstance(cfg, C.Config)
    assert cfg.data.seq_len <= cfg.model.max_seq_len


def test_every_gin_file_parses_and_matches_its_preset():
    missing = set(PRESETS) - {os.path.basename(p)[:-4] for p in GIN_FILES}
    assert not missing, f"write them: python -m t5x_lite.gin_config NAME > gin/NAME.gin {missing}"
    for path in GIN_FILES:
        name = os.path.basename(path)[:-4]
        assert gin_config.load([path]) == presets.load_typed(name), name


@pytest.mark.parametrize("name", PRESETS)
def test_count_params_equals_the_initialised_tree(name):
    """The analytic count of every preset (+ its padded vocabulary rows) = the element
    count of its (abstract) init."""
    import jax

    from t5x_lite import models

    cfg = presets.load_typed(name).model
    tree = jax.eval_shape(lambda: models.init_params(cfg, jax.random.key(0)))
    elements = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree))
    counts = models.count_params(cfg)
    assert counts["total"] + counts["vocab_padding"] == elements


def test_published_shapes_of_the_base_presets():
    from t5x_lite import models

    counts = {
        "gpt2_medium": 354_823_168,  # HF gpt2-medium
        "llama_1b": 1_100_048_384,  # TinyLlama-1.1B
        "roberta_base": 124_697_433,  # HF RobertaForMaskedLM roberta-base
        "t5_base": 222_903_552,  # HF t5-base
    }
    for name, want in counts.items():
        assert models.count_params(presets.load_typed(name).model)["total"] == want, name


def test_gin_errors_are_one_line():
    with pytest.raises(C.ConfigError, match=r"unknown config field model\.d_modle"):
        gin_config.load([os.path.join(ROOT, "gin", "gpt2_tiny.gin")], ["model.d_modle = 3"])
    with pytest.raises(C.ConfigError, match=r"gin file not found: nope\.gin"):
        gin_config.load(["nope.gin"])


def test_cli_gin_and_config_forms_resolve_to_the_same_config():
    mlc = cli(
        "--config=configs/llama_tiny.py",
        "--config.train.num_steps=7",
        "--config.model.num_layers=3",
        "--config.data.seq_len=64",
        "--print_config",
    )
    gin = cli(
        "--gin_file=gin/llama_tiny.gin",
        "--gin.train.num_steps=7",
        "--gin.model.num_layers=3",
        "--gin.data.seq_len=64",
        "--print_config",
    )
    assert mlc.returncode == 0, mlc.stderr
    assert gin.returncode == 0, gin.stderr
    a, b = json.loads(mlc.stdout), json.loads(gin.stdout)
    assert a == b
    assert a["train"]["num_steps"] == 7 and a["model"]["num_layers"] == 3
    assert a["model"]["arch"] == "llama"
    default = cli("--print_config")
    assert json.loads(default.stdout) == C.to_dict(presets.load_typed("default"))


# --------------------------------------------------------------------------- bad input


def assert_one_line_error(proc: subprocess.CompletedProcess, message: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, proc.stderr


# Bad input on the command line (one-line errors, no workdir created): the table of
# tests/test_bad_input_catalogue.py, which runs these cases and the other commands'.


def test_preset_variants_apply_in_order():
    proc = cli("--config=configs/gpt2_tiny.py:smoke,bf16,fsdp", "--print_config")
    assert proc.returncode == 0, proc.stderr
    printed = C.from_dict(json.loads(proc.stdout))
    preset = presets.load_typed("gpt2_tiny")
    assert preset.train.num_steps != 20 and preset.model.dtype == "float32"
    assert printed.train.num_steps == 20 and printed.checkpoint.every_steps == 10
    assert printed.model.dtype == "bfloat16"
    assert (printed.mesh.data, printed.mesh.fsdp, printed.mesh.tensor) == (1, -1, 1)
    assert printed.model == dataclasses.replace(preset.model, dtype="bfloat16")


def test_print_config_shows_the_scaling_plan():
    from t5x_lite.scaling import apply_plan

    proc = cli("--config=configs/gpt2_tiny.py", "--config.scaling.flops_budget=1e13",
               "--print_config")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    printed = C.from_dict(json.loads(proc.stdout))
    preset = presets.load_typed("gpt2_tiny")
    planned, _ = apply_plan(dataclasses.replace(preset, scaling=printed.scaling))
    assert printed == planned
    # The plan changed what is trained (not the preset's shape and steps).
    assert (printed.model, printed.train.num_steps) != (preset.model, preset.train.num_steps)


def test_workdir_of_another_model_is_refused_untouched(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    other = C.to_dict(presets.load_typed("gpt2_tiny"))
    other["model"]["num_layers"] = 3
    (workdir / "config.json").write_text(json.dumps(other))
    (workdir / "metrics.jsonl").write_text('{"step": 1, "loss": 5.0}\n')
    before = snapshot(str(workdir))
    proc = cli("--config=configs/gpt2_tiny.py", f"--workdir={workdir}")
    assert_one_line_error(proc, "holds a model with model.num_layers=3")
    assert snapshot(str(workdir)) == before
    # Another family and architecture is named as such, before any differing size.
    bert = C.to_dict(presets.load_typed("bert_tiny"))
    (workdir / "config.json").write_text(json.dumps(bert))
    before = snapshot(str(workdir))
    proc = cli("--config=configs/gpt2_tiny.py", f"--workdir={workdir}")
    assert_one_line_error(proc, "holds a model with model.family='encoder'; the requested ")
    assert snapshot(str(workdir)) == before


def test_workdir_with_another_tokenizer_is_refused_untouched(tmp_path):
    from t5x_lite.data import pipeline

    def tokenizer_path(vocab: int) -> str:
        values = presets.load("gpt2_tiny").to_dict()
        values["data"]["data_dir"] = str(tmp_path / "data")
        values["model"]["vocab_size"] = vocab
        return pipeline.get_tokenizer(C.from_dict(values)).path

    requested, other = tokenizer_path(2048), tokenizer_path(1024)
    workdir = tmp_path / "run"
    workdir.mkdir()
    with open(other, "rb") as f:
        (workdir / "tokenizer.model").write_bytes(f.read())
    before = snapshot(str(workdir))
    proc = cli(
        "--config=configs/gpt2_tiny.py", f"--config.data.tokenizer={requested}",
        f"--workdir={workdir}",
    )  # fmt: skip
    assert_one_line_error(proc, "tokenizer.model exists and differs from data.tokenizer")
    assert snapshot(str(workdir)) == before


# --------------------------------------------------------------------------- vocabulary


def test_training_with_a_tokenizer_smaller_than_the_model(tmp_path):
    """A 4096-row GPT-2 with a 2048-id kjv tokenizer (as the base presets do at full
    size): trains, evaluates, and samples only ids the tokenizer can decode."""
    import numpy as np

    from t5x_lite import trainer
    from t5x_lite.data.tokenizer import Tokenizer

    values = presets.load("gpt2_tiny").to_dict()
    values["model"]["vocab_size"] = 4096
    values["data"].update(
        tokenizer_vocab_size=2048, seq_len=32, data_dir=str(tmp_path / "data"), prefetch_batches=0
    )
    values["train"].update(
        batch_size=8, num_steps=3, log_every=1, eval_every=3, eval_batches=1, sample_tokens=24
    )
    values["checkpoint"]["every_steps"] = 1000
    cfg = C.from_dict(values)
    workdir = tmp_path / "run"
    out = trainer.train(cfg, str(workdir), progress=False)
    assert out["steps"] == 3 and all(np.isfinite(v) for v in out["losses"].values())
    assert np.isfinite(out["final_eval"]["loss"]) and 0 <= out["final_eval"]["accuracy"] <= 1
    assert Tokenizer(workdir / "tokenizer.model").vocab_size == 2048
    # At 3 steps the unused rows 2048..4095 hold about half of the top logits; the
    # sampler must skip them all (each would otherwise be drawn with p ~ 1/2).
    assert len(out["sample_ids"]) >= 16
    assert max(out["sample_ids"]) < 2048
    tok = Tokenizer(workdir / "tokenizer.model")
    allowed = trainer.sampleable_ids(tok)
    assert allowed.shape == (2048,) and all(allowed[i] for i in out["sample_ids"])
    assert allowed[tok.eos_id] and allowed[tok.encode("LORD")[0]]
    for i in (tok.pad_id, tok.bos_id, tok.cls_id, tok.sep_id, tok.mask_id, tok.sentinel_id(0),
              tok.sentinel_id(99), *tok.mode_ids.values()):  # fmt: skip
        assert not allowed[i], i
    assert out["sample"].startswith("In the beginning")


# --------------------------------------------------------------------------- signals


def tensorboard_scalars(command: str, tag: str, timeout: float = 90) -> list:
    """``[[wall_time, step, value], ...]`` of ``tag`` from TensorBoard started by the
    shell command ``command`` (a free port added), with this interpreter's folder left
    off ``PATH`` as in a shell where the venv is not active."""
    import socket
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    here = os.path.dirname(sys.executable)
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != here)
    proc = subprocess.Popen(
        [*shlex.split(command), f"--port={port}", "--host=127.0.0.1"],
        cwd=ROOT,
        env=dict(os.environ, PATH=path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/data/plugin/scalars/scalars?run=.&tag={tag}"
    try:
        deadline = time.time() + timeout
        while True:
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    return json.loads(response.read())
            except OSError:  # not serving yet, or the events not loaded yet (HTTP 400)
                assert time.time() < deadline, f"TensorBoard served no {tag} in {timeout} s"
                time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_sigterm_saves_and_the_same_command_resumes(tmp_path):
    workdir = tmp_path / "run"
    args = [
        "--config=configs/gpt2_tiny.py",
        "--config.model.num_layers=1",
        "--config.data.seq_len=64",
        f"--config.data.data_dir={tmp_path / 'data'}",
        "--config.train.log_every=1",
        "--config.train.eval_batches=1",
        "--config.checkpoint.every_steps=1000",
        f"--workdir={workdir}",
    ]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    proc = subprocess.Popen(
        [sys.executable, "run_train.py", *args, "--config.train.num_steps=1000"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1]
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    stopped = json.loads(metrics.read_text().splitlines()[-1])["step"]
    assert f"saving a checkpoint at step {stopped}" in out
    assert os.listdir(workdir / "checkpoints") == [str(stopped)]
    assert "run the same command again to resume" in out

    again = cli(*args, f"--config.train.num_steps={stopped + 2}", "--config.train.sample_tokens=5")
    assert again.returncode == 0, again.stderr
    assert f"resumed from {workdir / 'checkpoints'}/{stopped}" in again.stdout
    assert f"eval at step {stopped + 2}" in again.stdout
    assert "sample: 'In the beginning" in again.stdout
    assert f"plot: {workdir / 'plots' / 'loss.png'}" in again.stdout
    assert "mesh data=8 fsdp=1 tensor=1 on 8 cpu devices (1 process)" in again.stdout
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == list(range(1, stopped + 3))
    # The printed TensorBoard command works as printed, in a shell without the venv
    # on PATH (as after `make train`), and serves the losses of metrics.jsonl.
    (line,) = [ln for ln in again.stdout.splitlines() if ln.startswith("tensorboard: ")]
    served = tensorboard_scalars(line[len("tensorboard: ") :], "train/loss")
    assert [step for _, step, _ in served] == steps
    want = [r["loss"] for r in records if "loss" in r]
    np.testing.assert_allclose([value for _, _, value in served], want, rtol=1e-6)
    # The same command once more: the run is finished, so it says so and does nothing.
    before = snapshot(str(workdir))
    done = cli(*args, f"--config.train.num_steps={stopped + 2}", "--config.train.sample_tokens=5")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        f"{workdir} already holds this run, finished at step {stopped + 2} (train.num_steps="
        f"{stopped + 2}): nothing to train; raise --config.train.num_steps to continue it, "
        "or pass another --workdir"
    )
    assert snapshot(str(workdir)) == before
