"""A ``gs://`` workdir end to end, offline: train, resume, load and export through GCS.

A Cloud Storage emulator (``gcp-storage-emulator``, in memory) serves the GCS JSON API
on loopback, and both clients a run uses speak to it: epath (config, tokenizer,
metrics, plots, best.json; through fsspec's ``gcsfs``, ``STORAGE_EMULATOR_HOST``) and
TensorStore (orbax's arrays; ``TENSORSTORE_GCS_HTTP_URL``). So the objects land in a
bucket with GCS's semantics (no directories, no rename: orbax commits a step with its
``commit_success.txt``), and a path that slipped out of the path layer would not be
found there.

One-layer GPT-2 on one device: preempted at step 2 of 4 in ``gs://``, resumed to 4,
then compared with the same 4 steps trained without a stop in a local workdir. Every
local-file call (``open``, ``os.path.exists`` / ``isfile`` / ``isdir`` / ``abspath``,
``os.makedirs``, ``os.replace``, ``os.listdir``, ``shutil.copyfile``) is watched while
the run trains and loads: none may see a ``gs://`` path.
"""

from __future__ import annotations

import builtins
import dataclasses
import json
import os
import shutil
import signal
import socket
import traceback

import jax
import numpy as np
import pytest
from trained_runs import FAMILIES, STEPS, preset_config, trained

from t5x_lite import export, loading, paths, preflight, trainer
from t5x_lite.config import ConfigError

BUCKET = "t5x-lite-test"  # GCS bucket names have 3-63 characters


def _keep_gcs_preconditions(mp: pytest.MonkeyPatch) -> None:
    """Give the emulator GCS's generation semantics, on which TensorStore's caches rely.

    ``gcp-storage-emulator`` ignores ``ifGenerationMatch`` / ``ifGenerationNotMatch``
    and sends no ``x-goog-generation`` with an object's bytes. TensorStore revalidates
    its cached OCDBT manifest with ``ifGenerationNotMatch=<generation it wrote>``:
    GCS answers 304, the emulator resent the bytes without a generation, and the next
    conditional write failed with "Malformed StorageGeneration", whenever a revalidation
    fell between two manifest writes (on a loaded machine, about 1 run in 4). Here
    media reads and uploads check both preconditions as GCS does (304 / 412; generation
    0 means "no such object"), reads carry the generation headers, and each read or
    upload runs under one lock, so bytes and generation always belong together.
    """
    import threading
    from http import HTTPStatus

    from gcp_storage_emulator import server as server_mod
    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    lock = threading.Lock()
    real_download, real_insert = objects.download, objects.insert

    def generation(storage, bucket_name, name) -> str:
        try:
            return str(storage.get_file_obj(bucket_name, name)["generation"])
        except NotFound:
            return "0"

    def failed(request, current: str) -> HTTPStatus | None:
        match = request.query.get("ifGenerationMatch")
        if match and match[0] != current:
            return HTTPStatus.PRECONDITION_FAILED
        not_match = request.query.get("ifGenerationNotMatch")
        if not_match and not_match[0] == current:
            return HTTPStatus.NOT_MODIFIED if request.method == "GET" else (
                HTTPStatus.PRECONDITION_FAILED)  # fmt: skip
        return None

    def download(request, response, storage, *args, **kwargs):
        with lock:
            bucket_name, name = request.params["bucket_name"], request.params["object_id"]
            current = generation(storage, bucket_name, name)
            status = failed(request, current) if current != "0" else None
            if status is not None:
                response.status = status
                return
            real_download(request, response, storage, *args, **kwargs)
            if response.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
                obj = storage.get_file_obj(bucket_name, name)
                response["x-goog-generation"] = str(obj["generation"])
                response["x-goog-metageneration"] = str(obj["metageneration"])

    def insert(request, response, storage, *args, **kwargs):
        with lock:
            name = (request.query.get("name") or [None])[0]
            if name is not None:
                status = failed(request, generation(storage, request.params["bucket_name"], name))
                if status is not None:
                    response.status = status
                    return
            real_insert(request, response, storage, *args, **kwargs)

    mp.setattr(objects, "download", download)  # objects.get calls it for alt=media
    mp.setattr(objects, "insert", insert)
    for _, handlers in server_mod.HANDLERS:
        for method, fn in list(handlers.items()):
            if fn in (real_download, real_insert):
                mp.setitem(handlers, method, download if fn is real_download else insert)


@pytest.fixture(scope="module")
def bucket():
    """``gs://t5x-lite-test`` served from memory on a loopback port for this module."""
    server_mod = pytest.importorskip("gcp_storage_emulator.server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STORAGE_EMULATOR_HOST", url)  # gcsfs (and google-cloud-storage)
        mp.setenv("TENSORSTORE_GCS_HTTP_URL", url)  # orbax's TensorStore GCS driver
        mp.setenv("GOOGLE_AUTH_TOKEN_FOR_TESTING", "offline")  # TensorStore: no credentials
        mp.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")  # no bucket-layout lookup
        mp.setenv("NO_GCE_CHECK", "true")  # google-auth: no metadata-server probe
        _keep_gcs_preconditions(mp)
        server = server_mod.create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
        server.start()
        try:
            yield f"gs://{BUCKET}"
        finally:
            server.stop()
            # tensorboardX closes its writers once more at exit (an atexit hook), which
            # on gs:// uploads the events again: to a stopped emulator, 2 minutes of
            # retries. Those late uploads are dropped; the test read the events before.
            from tensorboardX.record_writer import GCSRecordWriter

            GCSRecordWriter.flush = lambda self: None


def _watch_local_io(monkeypatch, seen: list[str]) -> None:
    """Record every local-file call given a ``gs:/`` path (with its caller)."""

    def guard(module, name):
        real = getattr(module, name)

        def call(*args, **kwargs):
            for a in args[:2]:
                if isinstance(a, str | os.PathLike) and "gs:/" in os.fspath(a):
                    where = traceback.extract_stack(limit=3)[0]
                    seen.append(f"{name}({os.fspath(a)!r}) at {where.filename}:{where.lineno}")
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, call)

    guard(builtins, "open")
    for name in ("exists", "isfile", "isdir", "abspath"):
        guard(os.path, name)
    for name in ("makedirs", "replace", "listdir"):
        guard(os, name)
    guard(shutil, "copyfile")


def test_a_gs_workdir_trains_resumes_loads_and_exports(
    bucket, kjv_root, tmp_path, tmp_path_factory, monkeypatch
):
    # The same run trained in one go in a local workdir (shared with test_load/test_export).
    local = loading.load(trained(FAMILIES["decoder"], str(kjv_root), tmp_path_factory))
    workdir = f"{bucket}/runs/gpt2"
    monkeypatch.chdir(tmp_path)  # a path that fell back to the local disk would land here
    seen: list[str] = []
    _watch_local_io(monkeypatch, seen)
    one = jax.devices()[:1]

    preflight.check_writable(workdir)
    cfg = preset_config(FAMILIES["decoder"], str(kjv_root))
    # A record at each of steps 2 and 4 (logging leaves the numerics alone): the second
    # is added to an object that cannot be appended to.
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, log_every=2))

    def preempt_at_2(step, *_):
        if step == STEPS // 2:  # as SIGTERM would: save at this step and return
            signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)

    out = trainer.train(cfg, workdir, devices=one, progress=False, sample=False,
                        on_step=preempt_at_2)  # fmt: skip
    assert out["preempted"]
    names = {p.name for p in paths.path(workdir).iterdir()}
    assert {"config.json", "tokenizer.model", "checkpoints", "tensorboard"} <= names, names
    assert loading.checkpoint_steps(workdir) == [STEPS // 2]
    saved = json.loads(paths.path(workdir, "config.json").read_text())
    assert preflight.check_workdir(cfg, workdir) == saved
    assert preflight.finished_message(cfg, workdir) is None  # not finished: resumes
    out = trainer.train(cfg, workdir, devices=one, progress=False, sample=False)
    assert not out["preempted"] and loading.checkpoint_steps(workdir) == [2, 4]
    assert "metrics.jsonl" in {p.name for p in paths.path(workdir).iterdir()}
    assert "finished at step 4" in preflight.finished_message(cfg, workdir)
    records = [
        json.loads(line) for line in paths.path(workdir, "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in records if "loss" in r] == [2, 4]

    run = loading.load(workdir)
    assert run.step == STEPS and run.path == workdir
    assert run.tokenizer.path == f"{workdir}/tokenizer.model"
    assert run.tokenizer.sha256 == local.tokenizer.sha256
    # Stopped at 2 and resumed from gs:// = trained in one go locally, bit for bit.
    for a, b in zip(jax.tree_util.tree_leaves(run.params), jax.tree_util.tree_leaves(local.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    out_dir = tmp_path / "hf"
    files = export.export(workdir, "hf", str(out_dir))
    assert "model.safetensors" in files and (out_dir / "tokenizer.model").read_bytes() == (
        paths.path(workdir, "tokenizer.model").read_bytes()
    )
    assert not seen, seen
    assert not os.path.exists(tmp_path / "gs:"), "a gs:// path was written to the local disk"


def test_a_gs_workdir_that_cannot_be_reached_is_one_line(bucket):
    with pytest.raises(ConfigError, match=r"bucket gs://no-such-bucket does not exist"):
        preflight.check_writable("gs://no-such-bucket/run")
    with pytest.raises(ConfigError, match=r"--out=gs://.*local directory"):
        export.export(f"{bucket}/runs/gpt2", "hf", f"{bucket}/exported")
    with pytest.raises(ConfigError, match=r"xyz:// is not a supported store"):
        preflight.check_writable("xyz://b/run")
