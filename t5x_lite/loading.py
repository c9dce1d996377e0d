"""Load what was trained: a run's workdir (or a Hugging Face directory) as one object.

:func:`load` returns a :class:`Loaded` with the typed ``config``, the ``model`` object
(``models.get(cfg.model)``: module, heads, ``score_batch``, ``predict_batch``), the
float32 ``params`` (an unboxed tree on the default device) and the ``tokenizer``::

    >>> run = t5x_lite.load("runs/default")               # doctest: +SKIP
    >>> ids = run.tokenizer.encode("In the beginning")     # doctest: +SKIP
    >>> run.logits({"input_ids": np.asarray([ids])}).shape # doctest: +SKIP
    (1, 3, 8192)

A **workdir** written by the trainer holds ``config.json`` (the resolved Config),
``tokenizer.model`` and ``checkpoints/<step>/`` (orbax, :mod:`t5x_lite.checkpoints`);
the latest step is loaded unless ``step`` names another. Only the parameters of the
saved train state are read (orbax's partial restore; no optimizer state), onto one
device whatever mesh wrote them (the shardings of a ``1x1x1`` mesh).

A **Hugging Face directory** (``config.json`` with a ``model_type`` +
``model.safetensors``) goes through :func:`t5x_lite.convert.import_hf`; its config is
a Config whose only meaningful section is ``model``. Its tokenizer is ours when the
directory was written by ``python -m t5x_lite.export --format=hf`` (which leaves
``t5x_lite_tokenizer.json`` next to ``tokenizer.model``); any other directory loads with
``tokenizer=None`` and a ``note`` saying to use ``transformers.AutoTokenizer``.

Bad input is a one-line :class:`~t5x_lite.config.ConfigError`: a missing path, a
directory that is neither, a workdir without a checkpoint, a step that does not exist
(naming the steps that do).

**Fine-tuning from a base** (``train.init_from``): :func:`check_init_from` loads the
base named by ``PATH`` or ``PATH@STEP`` (``PATH@best``: the best checkpoint) and
checks its model against the new one; :func:`initial_params` puts the base's weights
into a freshly initialised tree, keeping the fresh values only for what the base lacks
(a new head)::

    >>> base = check_init_from(cfg.model, "runs/bert@400")          # doctest: +SKIP
    >>> params, fresh = initial_params(cfg.model, base, init_params)  # doctest: +SKIP
    >>> fresh                                                      # doctest: +SKIP
    ['classifier/bias', 'classifier/kernel']
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any

import jax
import numpy as np

from t5x_lite import checkpoints, convert, models, partitioning, paths
from t5x_lite.config import (
    Config,
    ConfigError,
    DataConfig,
    MeshConfig,
    ModelConfig,
    from_dict,
    saved_config,
)
from t5x_lite.data.tokenizer import Tokenizer
from t5x_lite.hf.tokenizer import MARKER_FILE, read_marker
from t5x_lite.preflight import (
    BEST_DIR,
    CHECKPOINT_DIR,
    CONFIG_FILE,
    RUNTIME_MODEL_FIELDS,
    TOKENIZER_FILE,
)

# The objective a model-only Config carries (any valid one of the family will do).
_OBJECTIVE_OF = {"decoder": "causal_lm", "encoder": "mlm", "encoder_decoder": "span_corruption"}


@dataclasses.dataclass(frozen=True)
class Loaded:
    """A trained model ready to use.

    ``config``: the run's Config (a model-only one for a Hugging Face directory);
    ``model``: ``models.get(config.model)``; ``params``: float32 unboxed tree on the
    default device; ``tokenizer``: ``encode``/``decode`` (a
    :class:`~t5x_lite.data.tokenizer.Tokenizer`) or None; ``step``: the checkpoint
    step (None for a Hugging Face directory); ``kind``: ``"workdir"`` or ``"hf"``;
    ``note``: why the tokenizer is None, else empty.
    """

    config: Config
    model: models.BaseModel
    params: Any
    tokenizer: Tokenizer | None
    step: int | None
    path: str
    kind: str
    note: str = ""

    @functools.cached_property
    def _logits_fn(self) -> Any:
        model = self.model
        return jax.jit(lambda p, b: model.apply(p, b)["logits"].astype(np.float32))

    def logits(self, batch: dict[str, Any]) -> np.ndarray:
        """``[B, T, V]`` float32 logits of a batch of Hugging Face-named numpy arrays."""
        batch = {k: np.asarray(v) for k, v in batch.items()}
        return np.asarray(self._logits_fn(self.params, batch), np.float32)


# --------------------------------------------------------------------------- workdirs


def _read_json(path: Any) -> Any:
    try:
        return json.loads(paths.path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None


def is_workdir(path: str) -> bool:
    """Whether ``path`` looks like a t5x_lite workdir (our config.json, not an HF one)."""
    cfg_file = paths.path(path, CONFIG_FILE)
    if not cfg_file.is_file():
        return False
    saved = _read_json(cfg_file)
    return isinstance(saved, dict) and "model" in saved and "model_type" not in saved


def read_config(workdir: str) -> Config:
    """The typed Config a workdir's ``config.json`` holds (one-line error otherwise)."""
    cfg_file = paths.path(workdir, CONFIG_FILE)
    if not cfg_file.is_file():
        raise ConfigError(f"{cfg_file}: missing; {workdir} is not a t5x_lite workdir")
    saved = _read_json(cfg_file)
    if not isinstance(saved, dict):
        raise ConfigError(f"{cfg_file}: not a t5x_lite config.json")
    try:
        return from_dict(saved_config(saved))
    except ConfigError as e:
        raise ConfigError(f"{cfg_file}: {e}") from None


def checkpoint_steps(workdir: str, folder: str = CHECKPOINT_DIR) -> list[int]:
    """Steps saved under ``workdir/folder`` (sorted; empty when there are none): the
    step directories orbax finalised (a save still being written, or killed, is a
    temporary directory locally and lacks its commit marker on ``gs://``)."""
    import orbax.checkpoint as ocp

    directory = paths.path(workdir, folder)
    if not directory.is_dir():
        return []
    return sorted(
        int(step.name)
        for step in directory.iterdir()
        if step.name.isdigit() and step.is_dir() and ocp.utils.is_checkpoint_finalized(step)
    )


def choose_step(workdir: str, step: int | None) -> int:
    """``step`` if saved in ``workdir`` (the latest one when None), else a ConfigError."""
    saved = checkpoint_steps(workdir)
    if not saved:
        raise ConfigError(f"{workdir} holds no checkpoint (nothing under {CHECKPOINT_DIR}/)")
    if step is None:
        return saved[-1]
    if step not in saved:
        raise ConfigError(
            f"{workdir} has no checkpoint at step {step} (saved steps: "
            f"{', '.join(str(s) for s in saved)})"
        )
    return int(step)


def restore_params(cfg: Config, workdir: str, step: int, folder: str = CHECKPOINT_DIR) -> Any:
    """The float32 params of checkpoint ``step`` (under ``workdir/folder``: the
    ``checkpoints`` or the ``best`` one), restored onto the default device."""
    device = jax.devices()[0]
    mesh = partitioning.make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), [device])
    abstract = jax.eval_shape(lambda: models.init_params(cfg.model, jax.random.key(0)))
    target = checkpoints.abstract_with_shardings(abstract, models.param_shardings(cfg.model, mesh))
    ckpt = checkpoints.Checkpointer(
        os.fspath(paths.path(workdir, folder)), cfg.checkpoint, create=False
    )
    try:
        params = ckpt.restore_params(step, target)
    except (ValueError, KeyError, TypeError) as e:  # tree or shape mismatch
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(
            f"checkpoint {ckpt.directory}/{step} does not fit {workdir}/{CONFIG_FILE} "
            f"({first[:200]})"
        ) from None
    finally:
        ckpt.close()
    # Plain single-device arrays, free of the restore mesh.
    return jax.device_put(jax.tree_util.tree_map(np.asarray, params), device)


def _load_workdir(path: str, step: int | str | None) -> Loaded:
    cfg = read_config(path)
    folder = CHECKPOINT_DIR
    if step == "best":
        folder = BEST_DIR
        saved = checkpoint_steps(path, BEST_DIR)
        if not saved:
            raise ConfigError(f"{path} holds no best checkpoint (nothing under {BEST_DIR}/)")
        chosen = saved[-1]
    else:
        chosen = choose_step(path, step)  # type: ignore[arg-type]
    tok_file = paths.path(path, TOKENIZER_FILE)
    tokenizer = Tokenizer(tok_file) if tok_file.is_file() else None
    note = "" if tokenizer else f"{tok_file} is missing"
    params = restore_params(cfg, path, chosen, folder)
    return Loaded(cfg, models.get(cfg.model), params, tokenizer, chosen, path, "workdir", note)


# --------------------------------------------------------------------------- HF dirs


def model_only_config(model: ModelConfig) -> Config:
    """A valid Config around ``model`` (data defaults of its family, rows that fit)."""
    seq_len = min(DataConfig.seq_len, model.max_seq_len)
    data = DataConfig(objective=_OBJECTIVE_OF[model.family], seq_len=seq_len)
    return Config(model=model, data=data)


def _load_hf(path: str, step: int | None) -> Loaded:
    if step is not None:
        raise ConfigError(f"{path} is a Hugging Face directory: it has no steps (drop step)")
    model_cfg, params = convert.import_hf(path)
    cfg = model_only_config(model_cfg)
    params = jax.device_put(
        jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), params), jax.devices()[0]
    )
    marker = read_marker(path)
    tokenizer, note = None, ""
    if marker is not None:
        tokenizer = Tokenizer(os.path.join(path, marker["model_file"]))
    else:
        note = (
            f"{path} holds no tokenizer written by t5x_lite ({MARKER_FILE}); "
            "use transformers.AutoTokenizer.from_pretrained on it"
        )
    return Loaded(cfg, models.get(model_cfg), params, tokenizer, None, path, "hf", note)


def load(path: str | os.PathLike, step: int | str | None = None) -> Loaded:
    """A trained model from a t5x_lite workdir (latest, ``step``, or ``"best"``: the
    best checkpoint of a fine-tuning run) or an HF directory; ``path`` may be a URL
    (``gs://bucket/run``: a workdir; HF directories are read from local disk)."""
    root = paths.path(path)
    path = os.fspath(root)
    paths.check_url(path, "path")
    if not root.exists():
        raise ConfigError(f"{path} does not exist")
    if not root.is_dir():
        raise ConfigError(f"{path} is not a directory (expected a workdir or an HF directory)")
    if is_workdir(path):
        from t5x_lite import peft_run  # a PEFT run: its base with the trained parameters

        if peft_run.is_peft_workdir(path):
            return peft_run.load_workdir(path, step)
        return _load_workdir(path, step)
    if (root / CONFIG_FILE).is_file():
        if paths.is_url(path):
            raise ConfigError(
                f"{path} is a Hugging Face directory in an object store; copy it to a local "
                "directory first (safetensors files are read from local disk)"
            )
        return _load_hf(path, step)
    if checkpoint_steps(path):
        raise ConfigError(f"{root / CONFIG_FILE}: missing; cannot rebuild the model")
    raise ConfigError(
        f"{path} is neither a t5x_lite workdir nor a Hugging Face directory (no {CONFIG_FILE})"
    )


# --------------------------------------------------------------------------- init_from

# Model fields a fine-tuned model may set apart from its base: runtime settings, the
# heads (a new task head, dropping NSP/SOP) and how fresh parameters are drawn.
FREE_MODEL_FIELDS = (
    *RUNTIME_MODEL_FIELDS,
    "task_head",
    "num_labels",
    "sentence_head",
    "initializer_range",
    "param_dtype",
)


def parse_init_from(spec: str) -> tuple[str, int | str | None]:
    """``"runs/bert@400"`` -> ``("runs/bert", 400)``; ``"runs/bert@best"`` ->
    ``("runs/bert", "best")``; ``"runs/bert"`` -> ``("runs/bert", None)`` (latest)."""
    path, sep, step = spec.rpartition("@")
    if not sep or "/" in step:
        return spec, None
    if step == "best":
        return path, "best"
    if not step.isdigit():
        raise ConfigError(
            f"train.init_from={spec!r}: the part after @ must be a step number or 'best'"
        )
    return path, int(step)


def check_init_from(model: ModelConfig, init_from: str) -> Loaded:
    """The base named by ``init_from``, checked against ``model`` (one-line errors).

    A missing path, a workdir without that checkpoint, or a base whose model differs
    from ``model`` in a field outside :data:`FREE_MODEL_FIELDS` (``train.init_from=
    runs/gpt2: the base has model.d_model=64, this config has model.d_model=128``) is a
    ConfigError. Only reads files.
    """
    path, step = parse_init_from(init_from)
    try:
        base = load(path, step)
    except ConfigError as e:
        raise ConfigError(f"train.init_from={init_from!r}: {e}") from None
    have, want = dataclasses.asdict(base.config.model), dataclasses.asdict(model)
    for key in want:
        if key in FREE_MODEL_FIELDS or have.get(key) == want[key]:
            continue
        raise ConfigError(
            f"train.init_from={init_from!r}: the base has model.{key}={have.get(key)!r}, "
            f"this config has model.{key}={want[key]!r}"
        )
    return base


def _flat(tree: Any) -> dict[str, Any]:
    from flax import traverse_util

    return {"/".join(k): v for k, v in traverse_util.flatten_dict(tree).items()}


def initial_params(model: ModelConfig, base: Loaded, fresh: Any) -> tuple[Any, list[str]]:
    """``(params, fresh_names)``: ``fresh`` (the new model's initialised params, any
    sharding) with every leaf the base also has replaced by the base's value, in the
    fresh leaf's dtype and sharding; ``fresh_names`` lists the leaves kept fresh (the
    new heads). Base leaves the new model lacks (an MLM or NSP head) are dropped.

    E.g. a BERT base into ``task_head='sequence'``: everything from the base except
    ``classifier/{kernel,bias}`` (and ``pooler/*`` when the base had no NSP head).
    A leaf whose shape differs is a ConfigError naming it.
    """
    from flax import traverse_util

    have = _flat(base.params)
    out, kept = {}, []
    for name, leaf in _flat(fresh).items():
        if name not in have:
            out[name] = leaf
            kept.append(name)
            continue
        host = np.asarray(have[name], dtype=leaf.dtype)
        if host.shape != tuple(leaf.shape):
            raise ConfigError(
                f"train.init_from={base.path}: parameter {name} has shape {host.shape} in the "
                f"base and {tuple(leaf.shape)} in model (family {model.family!r})"
            )
        sharding = getattr(leaf, "sharding", None)
        if sharding is None:
            out[name] = jax.numpy.asarray(host)
        else:
            out[name] = jax.make_array_from_callback(host.shape, sharding, lambda i, h=host: h[i])
    nested = traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in out.items()})
    return nested, sorted(kept)
