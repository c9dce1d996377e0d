"""Run records in the workdir: ``metrics.jsonl``, TensorBoard events, loss-curve PNGs.

``metrics.jsonl`` has one JSON object per line, two kinds::

    {"step": 10, "loss": 6.91, "learning_rate": 3e-4, "tokens_per_second": 5120.0,
     "mfu": null, "flops_per_second": 2.1e9, "grad_norm": 1.3, "accuracy": 0.04, ...}
    {"step": 100, "eval_loss": 5.2, "eval_perplexity": 181.3, "eval_accuracy": 0.12}

(``loss`` is the mean over the steps since the previous record, ``tokens_per_second``
counts the global batch and leaves evaluation and checkpoint time out; ``mfu`` is
null where the device's peak is unknown, e.g. on the CPU, while the achieved
``flops_per_second`` is always there). TensorBoard scalars go under
``<workdir>/tensorboard`` as ``train/<name>`` and ``eval/<name>`` (tensorboardX, no
TensorFlow). ``<workdir>/plots/loss.png`` (train loss, its moving average and the
eval loss against the step) and ``<workdir>/plots/throughput.png`` (learning rate
and tokens/s) are redrawn by :meth:`MetricsWriter.plot`.

Only process 0 writes (``enabled=False`` elsewhere). A resumed run first drops
records past the restored step, so a curve never has two values for one step. Paths go
through ``etils.epath``: a ``gs://`` workdir stays a GCS path (tensorboardX writes
``gs://`` itself); there ``metrics.jsonl`` is rewritten whole at each record, as
objects cannot be appended to.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from etils import epath

from t5x_lite import paths

PLOTS_DIR = "plots"
TB_DIR = "tensorboard"
METRICS_FILE = "metrics.jsonl"


def read_records(workdir: str) -> list[dict[str, Any]]:
    """All records of ``<workdir>/metrics.jsonl`` (empty if there is none)."""
    path = workdir_path(workdir, METRICS_FILE)
    if not path.exists():
        return []
    out = []
    with path.open() as f:
        for line in f:
            line = line.strip()
            if line:
                out.append(json.loads(line))
    return out


def workdir_path(workdir: str, *names: str) -> epath.Path:
    """``workdir/names...``: absolute when local, a URL (``gs://b/run``) unchanged."""
    return paths.path(workdir, *names)


def _rewrite(path: epath.Path, records: list[dict[str, Any]]) -> None:
    """``records`` as the whole of ``path`` (local: through a rename)."""
    paths.write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """Debiased exponential moving average (TensorBoard's smoothing).

    ``[4, 2]`` with weight 0.5 -> ``[4.0, 2.667]``.
    """
    out, acc, norm = [], 0.0, 0.0
    for v in values:
        acc = weight * acc + (1 - weight) * v
        norm = weight * norm + (1 - weight)
        out.append(acc / norm)
    return out


def _savefig(fig: Any, path: epath.Path) -> str:
    """Write ``fig`` as a PNG at ``path`` (any epath location); returns the path."""
    import matplotlib.pyplot as plt

    with path.open("wb") as f:
        fig.savefig(f, dpi=100, format="png")
    plt.close(fig)
    return os.fspath(path)


class MetricsWriter:
    """Appends records to ``metrics.jsonl`` and TensorBoard; draws the PNG plots."""

    def __init__(self, workdir: str, enabled: bool = True, resume_step: int | None = None):
        self.workdir = workdir
        self.enabled = enabled
        self.records: list[dict[str, Any]] = []
        self._tb = None
        if not enabled:
            return
        path = workdir_path(workdir, METRICS_FILE)
        old = read_records(workdir)
        if resume_step is not None:
            kept = [r for r in old if r.get("step", 0) <= resume_step]
            if len(kept) != len(old):
                _rewrite(path, kept)
            old = kept
        self.records = old
        self._path = path
        # An object store has no append (gcsfs would overwrite): the object is rewritten
        # whole at each record instead.
        self._file = None if paths.is_url(path) else path.open("a")  # closed in close()
        from tensorboardX import SummaryWriter

        purge = resume_step + 1 if resume_step is not None else None
        self._tb = SummaryWriter(os.fspath(workdir_path(workdir, TB_DIR)), purge_step=purge)

    def write(self, step: int, scalars: dict[str, Any]) -> None:
        """One record: train scalars, or eval scalars (keys starting with ``eval_``)."""
        if not self.enabled:
            return
        record = {"step": int(step), **{k: _clean(v) for k, v in scalars.items()}}
        self.records.append(record)
        if self._file is None:
            _rewrite(self._path, self.records)
        else:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        for key, value in scalars.items():
            if isinstance(value, int | float) and value is not None and math.isfinite(value):
                tag = f"eval/{key[5:]}" if key.startswith("eval_") else f"train/{key}"
                self._tb.add_scalar(tag, value, step)
        self._tb.flush()

    def plot(self) -> list[str]:
        """Redraw ``plots/loss.png`` and ``plots/throughput.png``; returns their paths."""
        if not self.enabled:
            return []
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        train = [r for r in self.records if r.get("loss") is not None]
        evals = [r for r in self.records if r.get("eval_loss") is not None]
        if not train and not evals:
            return []
        out_dir = workdir_path(self.workdir, PLOTS_DIR)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []

        fig, ax = plt.subplots(figsize=(7, 4.5))
        if train:
            steps = [r["step"] for r in train]
            loss = [r["loss"] for r in train]
            ax.plot(steps, loss, color="tab:blue", alpha=0.3, lw=1, label="train loss")
            ax.plot(steps, smooth(loss, 0.6), color="tab:blue", lw=2, label="train loss (EMA 0.6)")
        if evals:
            ax.plot(
                [r["step"] for r in evals],
                [r["eval_loss"] for r in evals],
                "o-",
                color="tab:orange",
                lw=2,
                label="eval loss (token CE)",
            )
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy (nats / token)")
        ax.set_title(workdir_path(self.workdir).name)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        paths.append(_savefig(fig, out_dir / "loss.png"))

        if train:
            fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.5))
            steps = [r["step"] for r in train]
            a1.plot(steps, [r.get("learning_rate") or 0.0 for r in train], color="tab:green")
            a1.set_xlabel("step")
            a1.set_ylabel("learning rate")
            a1.grid(alpha=0.3)
            a2.plot(steps, [r.get("tokens_per_second") or 0.0 for r in train], color="tab:red")
            a2.set_xlabel("step")
            a2.set_ylabel("tokens / s")
            a2.grid(alpha=0.3)
            fig.tight_layout()
            paths.append(_savefig(fig, out_dir / "throughput.png"))
        return paths

    def close(self) -> None:
        if not self.enabled:
            return
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
