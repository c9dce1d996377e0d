"""The import contracts of pyproject.toml ([tool.importlinter], run by ``make lint``):
they hold for the code as it is, and an import against the direction of
ARCHITECTURE.md (here the models importing the trainer) breaks them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINT_IMPORTS = os.path.join(os.path.dirname(sys.executable), "lint-imports")

def lint_imports(root: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [LINT_IMPORTS, "--no-cache", "--no-logo"],
        cwd=root,
        env={**os.environ, "PYTHONPATH": root},
        capture_output=True,
        text=True,
        timeout=120,
    )


def copy_tree(dst: str) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("t5x_lite", "configs"):
        shutil.copytree(os.path.join(ROOT, name), os.path.join(dst, name), ignore=ignore)
    shutil.copy(os.path.join(ROOT, "pyproject.toml"), dst)


def test_the_contracts_hold():
    proc = lint_imports(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


@pytest.mark.parametrize(
    "module,line,broken",
    [
        # An upward import: the models reaching for the trainer.
        ("t5x_lite/models/decoder.py", "import t5x_lite.trainer",
         "t5x_lite.models is not allowed to import t5x_lite.trainer"),
        # The trainer applying the scaling plan itself (the entry point's job).
        ("t5x_lite/trainer.py", "from t5x_lite import scaling",
         "t5x_lite.trainer is not allowed to import t5x_lite.scaling"),
        # Model code needing a package the GPU benchmark image lacks.
        ("t5x_lite/layers.py", "import ml_collections",
         "t5x_lite.layers is not allowed to import ml_collections"),
        # Data importing the models.
        ("t5x_lite/data/lm.py", "from t5x_lite import models",
         "t5x_lite.data is not allowed to import t5x_lite.models"),
        # The one scoring path reaching up to a command that uses it.
        ("t5x_lite/scoring.py", "from t5x_lite import fewshot",
         "t5x_lite.scoring is not allowed to import t5x_lite.fewshot"),
        # The library importing the presets folder, which is not installed.
        ("t5x_lite/gin_config.py", "import configs.base",
         "t5x_lite is not allowed to import configs"),
    ],
)  # fmt: skip
def test_an_import_against_the_direction_breaks_a_contract(tmp_path, module, line, broken):
    copy_tree(str(tmp_path))
    with open(tmp_path / module, "a") as f:
        f.write(f"\n{line}  # noqa\n")
    proc = lint_imports(str(tmp_path))
    assert proc.returncode != 0, proc.stdout
    assert broken in proc.stdout, proc.stdout
