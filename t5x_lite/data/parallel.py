"""Preparation split into units of work: across hosts, over cores, resumable, with progress.

A preparation (text shards of a corpus, token pieces of a split) is a list of units
numbered ``0..U-1``. Process ``p`` of ``P`` does units ``u`` with ``u % P == p`` (hosts
share the data dir, so each does a disjoint part), on up to ``workers`` processes of
its own (``spawn``ed, one unit each at a time). A unit writes its files under temporary
names, renames them when complete and writes its manifest last: a unit with a manifest
is done and never redone, a half-written one leaves only temporary files, which the
next attempt overwrites. One process (index 0) then assembles the units' output while
the others wait for the result.

    >>> assigned(6, process_index=1, process_count=2)
    [1, 3, 5]

Progress: a ``tqdm`` bar (on a terminal) with bytes, documents and tokens per second,
fed by the units through :func:`report`.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import queue
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from t5x_lite.config import ConfigError

_SINK: Callable[[tuple[int, int, int]], None] | None = None
WAIT_TIMEOUT_S = 24 * 3600.0


def available_cores() -> int:
    """Cores this process may use (``T5X_LITE_PREP_WORKERS`` overrides)."""
    if os.environ.get("T5X_LITE_PREP_WORKERS"):
        return max(1, int(os.environ["T5X_LITE_PREP_WORKERS"]))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def assigned(num_units: int, process_index: int = 0, process_count: int = 1) -> list[int]:
    """The units process ``process_index`` of ``process_count`` prepares."""
    if not 0 <= process_index < process_count:
        raise ConfigError(f"process_index={process_index} outside [0, {process_count})")
    return list(range(process_index, num_units, process_count))


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write ``path`` under a temporary name, then rename it (never seen half-written)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def report(num_bytes: int = 0, docs: int = 0, tokens: int = 0) -> None:
    """Count work done toward the progress bar (from a unit, in any process)."""
    if _SINK is not None:
        _SINK((num_bytes, docs, tokens))


class Progress:
    """Progress of a preparation: bytes, documents and tokens, each per second.

    On a terminal a ``tqdm`` bar of bytes (its rate in B/s) with ``units u/U, N docs/s,
    M tokens/s`` after it; elsewhere (a job's log) one plain line every ``every_s``
    seconds and at the end::

        tokens train: units 3/8, 1.12GB (20.4MB/s), 40,960 documents (730/s), 101M tokens
        (1.81M/s), 00:56

    ``disable=True`` shows nothing. Totals are kept in ``.counts`` (bytes, documents,
    tokens).
    """

    def __init__(
        self,
        desc: str,
        total_units: int,
        disable: bool | None = None,
        file: Any = None,
        every_s: float = 30.0,
    ):
        from tqdm.auto import tqdm

        self.desc = desc
        self.counts = [0, 0, 0]
        self.units = 0
        self.total_units = total_units
        self.t0 = self.last_line = time.perf_counter()
        self.file = sys.stderr if file is None else file
        tty = bool(getattr(self.file, "isatty", lambda: False)())
        self.plain = disable is None and not tty
        self.every_s = every_s
        self.bar = tqdm(
            desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=self.file,
            disable=(not tty) if disable is None else disable, mininterval=0.5,
            dynamic_ncols=True,
        )  # fmt: skip

    def __call__(self, delta: tuple[int, int, int]) -> None:
        for i, v in enumerate(delta):
            self.counts[i] += v
        self.bar.update(delta[0])
        dt = max(time.perf_counter() - self.t0, 1e-9)
        self.bar.set_postfix_str(
            f"units {self.units}/{self.total_units}, {self.counts[1] / dt:,.0f} docs/s, "
            f"{self.counts[2] / dt:,.0f} tokens/s",
            refresh=False,
        )
        self._maybe_line()

    def unit_done(self) -> None:
        self.units += 1
        self._maybe_line()

    def line(self) -> str:
        """The plain progress line (see the class docstring)."""
        from tqdm import tqdm

        size, dt = tqdm.format_sizeof, max(time.perf_counter() - self.t0, 1e-9)
        b, d, t = self.counts
        return (
            f"{self.desc}: units {self.units}/{self.total_units}, {size(b, 'B', 1024)} "
            f"({size(b / dt, 'B', 1024)}/s), {d:,} documents ({d / dt:,.0f}/s), {size(t)} tokens "
            f"({size(t / dt)}/s), {tqdm.format_interval(dt)}"
        )

    def _maybe_line(self) -> None:
        now = time.perf_counter()
        if self.plain and now - self.last_line >= self.every_s:
            self.last_line = now
            print(self.line(), file=self.file, flush=True)

    def close(self, summary: bool = True) -> None:
        self.bar.close()
        if self.plain and summary:
            print(self.line(), file=self.file, flush=True)


def _init_worker(q: Any) -> None:
    global _SINK
    _SINK = q.put


def run(
    fn: Callable[..., Any],
    tasks: Sequence[tuple],
    todo: Sequence[int],
    *,
    workers: int,
    desc: str,
) -> dict[str, float]:
    """Run ``fn(*tasks[u])`` for each ``u`` in ``todo`` on up to ``workers`` processes.

    ``fn`` must be a module-level function (workers are spawned and import it). A
    failing unit stops the others and its exception (a ConfigError, say) is re-raised
    here. Returns ``{"seconds", "bytes", "documents", "tokens"}`` done by this call.
    """
    global _SINK
    progress = Progress(desc, len(todo))
    workers = max(1, min(workers, len(todo)))
    try:
        if workers == 1:
            _SINK = progress
            try:
                for u in todo:
                    fn(*tasks[u])
                    progress.unit_done()
            finally:
                _SINK = None
        else:
            ctx = mp.get_context("spawn")
            q = ctx.Queue()
            with ctx.Pool(workers, initializer=_init_worker, initargs=(q,)) as pool:
                pending = [pool.apply_async(fn, tasks[u]) for u in todo]
                while pending:
                    try:
                        while True:
                            progress(q.get(timeout=0.1))
                    except queue.Empty:
                        pass
                    for r in [r for r in pending if r.ready()]:
                        r.get()  # re-raises the unit's error; the pool is terminated on exit
                        pending.remove(r)
                        progress.unit_done()
                try:
                    while True:
                        progress(q.get_nowait())
                except queue.Empty:
                    pass
    except BaseException:
        progress.close(summary=False)  # the error is the last line a user sees
        raise
    progress.close()
    b, d, t = progress.counts
    return {"seconds": time.perf_counter() - progress.t0, "bytes": b, "documents": d, "tokens": t}


def wait_for(ready: Callable[[], bool], what: str, timeout: float = WAIT_TIMEOUT_S) -> None:
    """Poll until ``ready()`` (another process prepares ``what``); ConfigError after
    ``timeout`` seconds."""
    t0 = time.monotonic()
    delay = 0.05
    while not ready():
        if time.monotonic() - t0 > timeout:
            raise ConfigError(f"waited {timeout:.0f} s for another process to prepare {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 2.0)


def cached_blocks(
    folder: str | os.PathLike | None,
    name: str,
    dtype: Any,
    width: int,
    blocks: Callable[[], Any],
) -> Any:
    """A ``[N, width]`` array (``[N]`` when ``width`` is 0) of ``dtype`` written to
    ``folder/name`` from the arrays ``blocks()`` yields, block by block (memory bounded
    by one block), renamed into place, and returned memory-mapped read-only; every
    process and grain worker then shares the page cache instead of its own copy.
    Without a writable ``folder`` the blocks are concatenated in memory.

    >>> import numpy as np
    >>> blocks = lambda: iter([np.arange(2), np.array([5])])
    >>> cached_blocks(None, "x.bin", np.int64, 0, blocks).tolist()  # in memory: no folder
    [0, 1, 5]
    """
    import numpy as np

    shape = (-1, width) if width else (-1,)
    if folder:
        path = Path(folder) / name
        if not path.exists():
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            try:
                with open(tmp, "wb") as f:
                    for block in blocks():
                        f.write(np.ascontiguousarray(block, dtype=dtype).tobytes())
                os.replace(tmp, path)
            except OSError:
                tmp.unlink(missing_ok=True)
                path = None
        if path is not None:
            if path.stat().st_size == 0:
                return np.zeros((0, width) if width else (0,), dtype)
            return np.memmap(path, dtype=dtype, mode="r").reshape(shape)
    parts = [np.asarray(b, dtype=dtype).reshape(shape) for b in blocks()]
    return np.concatenate(parts) if parts else np.zeros((0, width) if width else (0,), dtype)
