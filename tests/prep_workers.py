"""Units for :func:`t5x_lite.data.parallel.run` in the preparation tests (importable by
its spawned workers, which import nothing heavier than this module)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from t5x_lite.data import parallel


def meet(folder: str, unit: int, count: int, timeout_s: float = 60.0) -> None:
    """Record this process's id, report one document, then wait until ``count`` units
    have started: the units must be running at the same time, in different processes."""
    (Path(folder) / f"{unit}.pid").write_text(str(os.getpid()))
    parallel.report(num_bytes=10, docs=1, tokens=3)
    t0 = time.monotonic()
    while len(list(Path(folder).glob("*.pid"))) < count:
        if time.monotonic() - t0 > timeout_s:
            raise RuntimeError(f"unit {unit} ran alone for {timeout_s:.0f} s")
        time.sleep(0.01)
