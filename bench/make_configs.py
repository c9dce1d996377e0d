"""Write the benchmark's JSON configs (``bench/configs/<preset>.json``) from the presets.

The GPU image has no ml_collections, which the ``configs/*.py`` presets need; the
step benchmark reads these JSON files instead (the resolved config, as
``python run_train.py --config=configs/<preset>.py --print_config`` prints it).
Rerun after changing a preset (a test checks the files match the presets)::

    python bench/make_configs.py            # rewrites bench/configs/*.json
"""

from __future__ import annotations

import json
import os
import sys

from t5x_lite import config as C
from t5x_lite import presets

# GPU figures (bench/gpu.sh) and their tiny twins for BENCH_SMOKE=1 on a CPU.
PRESETS = (
    "gpt2_small", "llama_1b", "t5_base", "bert_base",
    "gpt2_tiny", "llama_tiny", "t5_tiny", "bert_tiny",
)  # fmt: skip
HERE = os.path.dirname(os.path.abspath(__file__))


def resolved(name: str) -> str:
    """The JSON text of preset ``name``'s resolved config (``--print_config``'s)."""
    cfg = C.from_dict(presets.load(name).to_dict())
    return json.dumps(C.to_dict(cfg.validate()), indent=2, sort_keys=True) + "\n"


def main() -> None:
    out = os.path.join(HERE, "configs")
    os.makedirs(out, exist_ok=True)
    for name in PRESETS:
        path = os.path.join(out, f"{name}.json")
        with open(path, "w") as f:
            f.write(resolved(name))
        print(path, file=sys.stderr)


if __name__ == "__main__":
    main()
