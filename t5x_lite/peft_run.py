"""PEFT runs on disk: the frozen base a run trains on, its reference, and loading one.

A PEFT workdir is an ordinary workdir whose checkpoints hold only the trainable
tree (added parameters, new heads) and its optimizer state, plus ``peft.json``::

    {"method": "lora", "base": {"init_from": "runs/bert_tiny", "path": "/abs/runs/bert_tiny",
     "step": 4, "fingerprint": "3f0c9a1d2b4e5f60"}, "trainable": 12288, "total": 958720}

``fingerprint`` is :func:`t5x_lite.peft.fingerprint` of the base as loaded (its model
config, leaf shapes and a strided sample of its weights). Resuming, or loading the run,
recomputes it from ``train.init_from`` and refuses a different base in one line.

:func:`load_workdir` (what ``t5x_lite.load`` does for such a workdir) restores the
trainable params, loads the base and returns the merged model: LoRA folded into the
kernels, adapters and prefixes as leaves of the one params tree.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np

from t5x_lite import checkpoints, loading, models, partitioning, paths, peft, peft_steps
from t5x_lite.config import Config, ConfigError, MeshConfig
from t5x_lite.data.tokenizer import Tokenizer
from t5x_lite.preflight import BEST_DIR, CHECKPOINT_DIR, TOKENIZER_FILE

MANIFEST = "peft.json"


def manifest_path(workdir: str) -> str:
    return os.fspath(paths.path(workdir, MANIFEST))


def is_peft_workdir(path: str) -> bool:
    return paths.path(manifest_path(path)).is_file()


def _read(path: str) -> dict[str, Any]:
    try:
        out = json.loads(paths.path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: not a PEFT manifest ({e})") from None
    if not isinstance(out, dict) or "base" not in out:
        raise ConfigError(f"{path}: not a PEFT manifest (no 'base')")
    return out


def base_of(cfg: Config, workdir: str, base: loading.Loaded | None = None) -> loading.Loaded:
    """The frozen base of a PEFT run (``train.init_from``, on every start: it is not in
    the checkpoints), checked against ``workdir``'s ``peft.json`` when there is one.

    One-line errors: no ``train.init_from``; a base whose fingerprint differs from the
    one the run was trained on. Only reads files.
    """
    if not cfg.train.init_from:
        raise ConfigError(
            f"peft.method={cfg.peft.method!r} trains on a frozen base: set train.init_from "
            "to a workdir or Hugging Face directory"
        )
    if base is None:
        base = loading.check_init_from(cfg.model, cfg.train.init_from)
    if is_peft_workdir(workdir):
        saved = _read(manifest_path(workdir))["base"]
        have = peft.fingerprint(base.config.model, base.params)
        if saved.get("fingerprint") != have:
            raise ConfigError(
                f"train.init_from={cfg.train.init_from!r} (fingerprint {have}) is not the base "
                f"{workdir} was trained on ({saved.get('path')}, fingerprint "
                f"{saved.get('fingerprint')})"
            )
    return base


def build_steps(
    cfg: Config, mesh: jax.sharding.Mesh, base: loading.Loaded
) -> tuple[peft_steps.PeftSteps, dict[str, Any]]:
    """``(steps, manifest)``: the base's params placed in a fresh tree of ``cfg.model``
    (new heads initialised, and trained with the added parameters) and the steps
    training them; the manifest :func:`write_manifest` stores."""
    fresh = models.init_sharded(cfg.model, jax.random.key(cfg.train.seed), mesh)
    full_base, new = loading.initial_params(cfg.model, base, fresh)
    run = peft_steps.build(cfg, mesh, full_base, extra_trainable=new)
    trained = peft.count(run.abstract_state.params)
    saved = list(run.added.saved_paths)
    heads = peft.count([peft.at_path(full_base, p) for p in saved])  # counted in both trees
    total = peft.count(full_base) + trained - heads
    manifest = {
        "method": cfg.peft.method,
        "base": {
            "init_from": cfg.train.init_from,
            "path": base.path,
            "step": base.step,
            "fingerprint": peft.fingerprint(base.config.model, base.params),
        },
        "trainable": trained,
        "total": total,
        "trainable_paths": ["/".join(p) for p in saved],
    }
    return run, manifest


def trainable_line(manifest: dict[str, Any]) -> str:
    """``"trainable 1.28% (12,288 of 958,720 parameters)"``."""
    t, n = manifest["trainable"], manifest["total"]
    return f"trainable {100.0 * t / n:.2f}% ({t:,} of {n:,} parameters)"


def start_line(manifest: dict[str, Any]) -> str:
    """``"lora on the frozen base /runs/default (step 600); trainable 1.53% (...)"``."""
    base = manifest["base"]
    step = f" (step {base['step']})" if base.get("step") is not None else ""
    return f"{manifest['method']} on the frozen base {base['path']}{step}; " + trainable_line(
        manifest
    )


def write_manifest(workdir: str, manifest: dict[str, Any]) -> None:
    paths.write_text(paths.path(manifest_path(workdir)), json.dumps(manifest, indent=2))


def load_workdir(path: str, step: int | str | None = None) -> loading.Loaded:
    """A PEFT workdir as a :class:`~t5x_lite.loading.Loaded`: its base (from
    ``peft.json``, fingerprint checked) with the trained parameters merged in."""
    cfg = loading.read_config(path)
    manifest = _read(manifest_path(path))
    ref = manifest["base"]
    base = loading.load(ref["path"], ref.get("step"))
    have = peft.fingerprint(base.config.model, base.params)
    if have != ref.get("fingerprint"):
        raise ConfigError(
            f"{path}: its base {ref['path']} has changed (fingerprint {have}, trained on "
            f"{ref.get('fingerprint')}); it cannot be loaded onto a different base"
        )
    folder = BEST_DIR if step == "best" else CHECKPOINT_DIR
    if step == "best":
        saved = loading.checkpoint_steps(path, BEST_DIR)
        if not saved:
            raise ConfigError(f"{path} holds no best checkpoint (nothing under {BEST_DIR}/)")
        chosen = saved[-1]
    else:
        chosen = loading.choose_step(path, step)  # type: ignore[arg-type]
    device = jax.devices()[0]
    mesh = partitioning.make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), [device])
    fresh = models.init_params(cfg.model, jax.random.key(cfg.train.seed))
    full_base, new = loading.initial_params(cfg.model, base, fresh)
    added = peft.Peft(cfg.peft, cfg.model, new)
    target = checkpoints.abstract_with_shardings(added.abstract(), added.shardings(mesh))
    directory = os.fspath(paths.path(path, folder))
    ckpt = checkpoints.Checkpointer(directory, cfg.checkpoint, create=False)
    try:
        trainable = ckpt.restore_params(chosen, target)
    except (ValueError, KeyError, TypeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(
            f"checkpoint {ckpt.directory}/{chosen} does not fit {path}'s PEFT config "
            f"({first[:200]})"
        ) from None
    finally:
        ckpt.close()
    trainable = jax.device_put(jax.tree_util.tree_map(np.asarray, trainable), device)
    params = added.merge(full_base, trainable)
    tok_file = paths.path(path, TOKENIZER_FILE)
    tokenizer = Tokenizer(tok_file) if tok_file.is_file() else base.tokenizer
    return loading.Loaded(
        cfg, models.get(cfg.model), params, tokenizer, chosen, path, "workdir",
        f"PEFT ({manifest['method']}) on {ref['path']}",
    )  # fmt: skip
