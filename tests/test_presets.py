"""The one preset loader (t5x_lite.presets.load): a path or a bare name, with
variants, from any working directory, and a one-line ConfigError naming the closest
preset for a misspelt one; every command loads presets through it."""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from t5x_lite import config as C
from t5x_lite import presets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_path_and_a_name_load_the_same_preset(monkeypatch):
    monkeypatch.chdir(ROOT)
    by_path = presets.load("configs/t5_small.py").to_dict()
    assert presets.load("t5_small").to_dict() == by_path
    assert presets.load(os.path.join(ROOT, "configs", "t5_small.py")).to_dict() == by_path
    assert presets.load_typed("t5_small").model.d_model == 512


def test_variants_apply_in_order():
    plain = presets.load_typed("gpt2_tiny")
    cfg = presets.load_typed("gpt2_tiny:smoke,bf16,fsdp")
    assert cfg.train.num_steps == 20 != plain.train.num_steps
    assert cfg.model.dtype == "bfloat16" and (cfg.mesh.data, cfg.mesh.fsdp) == (1, -1)
    with pytest.raises(C.ConfigError, match=r"unknown preset variant 'big' \(known: bf16, "):
        presets.load("gpt2_tiny:big")


def test_loading_works_from_another_directory(tmp_path, monkeypatch):
    """No sys.path entry is needed: the repo's presets load by name or path from
    elsewhere, and a ./configs folder there adds its own (using its own base.py)."""
    monkeypatch.chdir(tmp_path)
    path = os.path.join(ROOT, "configs", "llama_tiny.py")
    assert presets.load("llama_tiny").to_dict() == presets.load(path).to_dict()
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "base.py").write_text("MODEL = dict(family='decoder', d_model=48)\n")
    (tmp_path / "configs" / "mine.py").write_text(
        "from t5x_lite import presets\n\n"
        "base = presets.sibling(__file__, 'base')\n\n\n"
        "def get_config(variant=None):\n"
        "    return presets.make(model=base.MODEL | dict(vocab_size=64), variant=variant)\n"
    )
    cfg = presets.load_typed("mine:bf16")
    assert (cfg.model.d_model, cfg.model.vocab_size, cfg.model.dtype) == (48, 64, "bfloat16")
    assert {"mine", "gpt2_tiny"} <= set(presets.names())
    assert "base" not in presets.names()


@pytest.mark.parametrize(
    "spec,message",
    [
        ("gpt2_tiyn", "unknown preset 'gpt2_tiyn' (did you mean gpt2_tiny?)"),
        ("t5_smal:smoke", "unknown preset 't5_smal' (did you mean t5_small?)"),
        ("base", "unknown preset 'base'"),
        ("configs/gpt2_tiyn.py",
         "config file not found: configs/gpt2_tiyn.py (did you mean configs/gpt2_tiny.py?)"),
    ],
)  # fmt: skip
def test_a_misspelt_preset_is_one_line_with_a_suggestion(spec, message, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(C.ConfigError) as err:
        presets.load(spec)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_every_preset_builds_through_the_library():
    files = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))
    shipped = {os.path.basename(p)[:-3] for p in files} - {"__init__", "base"}
    assert shipped <= set(presets.names())
    for path in files:
        if os.path.basename(path)[:-3] in shipped:
            text = Path(path).read_text()
            assert "from configs" not in text and "import configs" not in text, path


def test_nothing_edits_sys_path():
    sources = glob.glob(os.path.join(ROOT, "t5x_lite", "**", "*.py"), recursive=True)
    sources += glob.glob(os.path.join(ROOT, "configs", "*.py"))
    sources.append(os.path.join(ROOT, "run_train.py"))
    for path in sources:
        assert not re.search(r"sys\.path\s*(\.\w+\(|\[|\+?=)", Path(path).read_text()), path


def _run(*args: str, cwd: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=240
    )


def test_commands_take_a_bare_name_from_another_directory(tmp_path):
    gin = _run("-m", "t5x_lite.gin_config", "gpt2_tiny", cwd=str(tmp_path))
    assert gin.returncode == 0, gin.stderr
    with open(os.path.join(ROOT, "gin", "gpt2_tiny.gin")) as f:
        assert gin.stdout == f.read()
    run_train = os.path.join(ROOT, "run_train.py")
    shown = _run(run_train, "--config=gpt2_tiny:smoke", "--print_config", cwd=str(tmp_path))
    assert shown.returncode == 0, shown.stderr
    assert C.from_dict(json.loads(shown.stdout)) == presets.load_typed("gpt2_tiny:smoke")
    bad = _run(run_train, "--config=gpt2_tiyn", "--print_config", cwd=str(tmp_path))
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1] == (
        "error: unknown preset 'gpt2_tiyn' (did you mean gpt2_tiny?)"
    )
