"""Run many command lines cheaply: one process imports the stack once, then forks a
child per command that runs it as ``python ...`` would.

``run(cases, timeout)`` starts ``python tests/cli_harness.py`` (a fresh interpreter, so
no JAX backend is initialised before the forks, whatever the calling test process did),
sends it the cases as JSON and returns one :class:`Result` per case. Each case is
``{"argv": [...], "cwd": DIR, "env": {...}, "obey_permissions": True, "watch": [DIR, ...]}`` where
``argv`` starts like a shell command: ``["run_train.py", ...]`` (a script path, run
with ``runpy.run_path``) or ``["-m", "t5x_lite.export", ...]`` (``runpy.run_module``),
both as ``__main__``; ``obey_permissions`` (optional) makes file permissions bind
the child even when it runs as root (see :func:`obey_file_permissions`); ``jax_config``
(optional) is ``jax.config.update``'d first; ``watch`` (optional)
names directories whose tree hash, taken before the first case, is compared after
this one (the roots that changed come back in ``Result.changed``).

The child behaves like the interpreter at exit: ``SystemExit(str)`` prints the string
to stderr with status 1, ``SystemExit(int)`` exits with it, and any other exception
prints ``Traceback (most recent call last):`` and the stack to stderr with status 1,
so a test that looks for ``Traceback`` sees it exactly as from a real process. Its
stdout and stderr go to files the server reads back; a child still running after
``timeout`` seconds is killed (with its process group) and reported as timed out.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Imported once by the server before any fork: what every CLI imports at the top.
PRELOAD = (
    "jax", "flax.linen", "optax", "orbax.checkpoint", "grain", "ml_collections",
    "absl.app", "numpy", "t5x_lite.config", "t5x_lite.presets", "t5x_lite.models",
    "t5x_lite.data.pipeline", "t5x_lite.loading", "t5x_lite.steps", "t5x_lite.checkpoints",
)  # fmt: skip


@dataclasses.dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool
    cpu_seconds: float = 0.0  # user + system time of the child (and what it waited for)
    changed: list[str] = dataclasses.field(default_factory=list)


def run(cases: list[dict], timeout: float = 60.0) -> list[Result]:
    """Each case run in a forked child of one fresh server process (see module doc)."""
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), str(timeout)],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout * len(cases) + 120,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"cli_harness server failed:\n{proc.stderr}")
    return [Result(**r) for r in json.loads(proc.stdout.splitlines()[-1])]


# Linux capabilities that let root ignore file permissions (capability.h).
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 1, 2


def obey_file_permissions() -> None:
    """Let file permissions bind this process although it may run as root.

    Root passes every permission check through two capabilities; dropping them keeps
    the process's user (so it still reads a checkout in a private folder it owns,
    such as one under ``mktemp -d``) while a folder of mode 0555 refuses it writes.
    Switching to ``nobody`` instead would lose the checkout itself. Without root there
    is nothing to drop."""
    import ctypes

    if os.getuid() != 0:
        return

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [(f, ctypes.c_uint32) for f in ("effective", "permitted", "inheritable")]

    libc = ctypes.CDLL(None, use_errno=True)
    header = Header(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3: two 32-bit words
    data = (Data * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    mask = ~((1 << _CAP_DAC_OVERRIDE) | (1 << _CAP_DAC_READ_SEARCH)) & 0xFFFFFFFF
    for field in ("effective", "permitted", "inheritable"):
        setattr(data[0], field, getattr(data[0], field) & mask)
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def _child(case: dict, out: str, err: str) -> None:
    """In the forked child: become ``python ARGV`` and never return."""
    import runpy
    import traceback

    os.setpgid(0, 0)
    for fd, path in ((1, out), (2, err)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(f, fd)
        os.close(f)
    sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 (lives until _exit)
    sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
    if case.get("obey_permissions"):
        obey_file_permissions()
    os.environ.update(case.get("env", {}))
    if case.get("jax_config"):  # jax read its environment at import, before the fork
        import jax

        for name, value in case["jax_config"].items():
            jax.config.update(name, value)
    os.chdir(case.get("cwd", ROOT))
    argv = list(case["argv"])
    code = 0
    try:
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = argv
            sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as e:
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:  # as the interpreter: the traceback on stderr, status 1
        traceback.print_exc()
        code = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def tree_hash(root: str) -> str:
    """sha256 over every path, mode and file's bytes under ``root`` ("" if absent)."""
    import hashlib
    import stat

    if not os.path.lexists(root):
        return ""
    h = hashlib.sha256()
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(dirs + files):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            h.update(f"{os.path.relpath(path, root)}\0{st.st_mode}\0".encode())
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    h.update(f.read())
    return h.hexdigest()


def _serve(cases: list[dict], timeout: float) -> list[dict]:
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    watched = {root: tree_hash(root) for case in cases for root in case.get("watch", ())}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, case in enumerate(cases):
            out, err = os.path.join(tmp, f"{i}.out"), os.path.join(tmp, f"{i}.err")
            t0 = time.monotonic()
            pid = os.fork()
            if pid == 0:
                _child(case, out, err)
            timed_out, status, usage = False, None, None
            while status is None:
                done, raw, usage = os.wait4(pid, os.WNOHANG)
                if done:
                    status = os.waitstatus_to_exitcode(raw)
                elif time.monotonic() - t0 > timeout:
                    timed_out = True
                    os.killpg(pid, signal.SIGKILL)
                    _, raw, usage = os.wait4(pid, 0)
                    status = os.waitstatus_to_exitcode(raw)
                else:
                    time.sleep(0.02)
            cpu = usage.ru_utime + usage.ru_stime
            seconds = time.monotonic() - t0
            with contextlib.suppress(ProcessLookupError):  # grandchildren go with it
                os.killpg(pid, signal.SIGKILL)
            texts = []
            for path in (out, err):
                with open(path, errors="replace") as f:
                    texts.append(f.read())
            changed = []
            for root, digest in watched.items():
                if tree_hash(root) != digest:
                    changed.append(root)
                    watched[root] = tree_hash(root)
            if os.environ.get("CLI_HARNESS_LOG"):  # progress, for a person watching
                with open(os.environ["CLI_HARNESS_LOG"], "a") as f:
                    f.write(f"{i} rc={status} {seconds:.1f}s cpu {cpu:.1f}s "
                            f"{' '.join(case['argv'])[:200]}\n")
            results.append(
                {"returncode": status, "stdout": texts[0], "stderr": texts[1],
                 "seconds": seconds, "timed_out": timed_out, "cpu_seconds": cpu,
                 "changed": changed}
            )  # fmt: skip
    return results


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    results = _serve(json.loads(sys.stdin.read()), float(sys.argv[1]))
    print(json.dumps(results))
