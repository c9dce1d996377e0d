"""Make the data and config stacks unimportable, as on the GPU image.

With this folder first on ``PYTHONPATH`` (``BENCH_SMOKE=1 bash bench/gpu.sh`` puts it
there), ``import grain`` (or tensorflow_datasets, tensorflow, gin, ml_collections)
raises ImportError in every Python process, so a smoke run on a CPU shows the
benchmark path needs none of them.
"""

import sys

BLOCKED = ("tensorflow_datasets", "tensorflow", "grain", "gin", "ml_collections")
for _name in BLOCKED:
    sys.modules[_name] = None  # "import of <name> halted; None in sys.modules"
