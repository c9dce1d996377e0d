"""Presets: the builder the files in ``configs/`` call, and the one loader of them.

A preset is a Python file whose ``get_config(variant=None)`` returns :func:`make` of
its sections; defaults come from the typed dataclasses in :mod:`t5x_lite.config`, so a
preset lists only what differs. Fields whose default is ``None`` become typed
placeholders so that ``--config.model.head_dim=64`` works from the command line.

Every command loads presets through :func:`load`, from a path or a bare name, with
an optional comma-separated list of :data:`VARIANTS` applied in order::

    >>> load("configs/gpt2_tiny.py:smoke,bf16").train.num_steps
    20
    >>> to_typed(load("gpt2_tiny")).model.d_model   # configs/gpt2_tiny.py
    64

A bare name is looked up in ``./configs`` and then in the ``configs/`` folder of the
checkout this package lives in; a misspelt one is a one-line ConfigError with the
closest name (``unknown preset 'gpt2_tiyn' (did you mean gpt2_tiny?)``). Files are
executed by path (no ``sys.path`` entry is needed); a preset reaches the shared
sections of its folder with :func:`sibling`.

ml_collections is imported only when a ConfigDict is built, so this module imports
with the standard library and :mod:`t5x_lite.config` alone.
"""

from __future__ import annotations

import dataclasses
import difflib
import glob
import hashlib
import importlib.util
import os
import typing
from types import ModuleType
from typing import TYPE_CHECKING, Any

from t5x_lite import config as C

if TYPE_CHECKING:
    import ml_collections

# Named variants a preset can be loaded with (``<preset>:<variant>[,<variant>]``).
def _at_most(limit: int) -> Any:
    """A variant value that caps a field: ``_at_most(128)(1024) == 128``."""
    return lambda value: min(value, limit)


# A shape every preset runs in on a 2-core, 24 GiB CPU machine (the published
# architecture unchanged; batch and row length shrunk).
_CPU_SHAPE = {"batch_size": 8, "microbatches": 1}
VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    # A quick end-to-end check of a preset: 20 steps, small evaluations, the CPU shape.
    "smoke": {
        "train": {
            "num_steps": 20, "log_every": 5, "eval_every": 10, "eval_batches": 1, **_CPU_SHAPE
        },
        "data": {"seq_len": _at_most(128)},
        "checkpoint": {"every_steps": 10},
    },
    # The preset's run on a CPU machine: batch 8, rows of at most 256 tokens, every
    # layer rematerialised.
    "cpu": {
        "train": dict(_CPU_SHAPE),
        "data": {"seq_len": _at_most(256)},
        "model": {"remat_policy": "full"},
    },
    # bfloat16 compute with float32 master params (accelerators).
    "bf16": {"model": {"dtype": "bfloat16"}},
    # All devices on fsdp: parameters and optimizer state sharded ZeRO-3 style.
    "fsdp": {"mesh": {"data": 1, "fsdp": -1, "tensor": 1}},
    # Megatron-style model parallelism on every device.
    "tensor": {"mesh": {"data": 1, "fsdp": 1, "tensor": -1}},
    # Rematerialise each layer (trade compute for activation memory).
    "remat": {"model": {"remat_policy": "full"}},
}

# Files of a presets folder that are not presets.
NOT_PRESETS = ("__init__", "base")
# The ``configs/`` folder next to this package in a checkout (absent in a wheel).
REPO_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


# --------------------------------------------------------------------------- building


def apply_variant(cfg: ml_collections.ConfigDict, variant: str | None) -> None:
    """Apply ``variant`` (comma-separated names from :data:`VARIANTS`) to ``cfg`` in place."""
    for name in filter(None, (variant or "").split(",")):
        if name not in VARIANTS:
            raise C.ConfigError(
                f"unknown preset variant {name!r} (known: {', '.join(sorted(VARIANTS))})"
            )
        for section, values in VARIANTS[name].items():
            for key, value in values.items():
                cfg[section][key] = value(cfg[section][key]) if callable(value) else value


def _section(cls: type, overrides: dict[str, Any] | None) -> ml_collections.ConfigDict:
    import ml_collections
    from ml_collections import config_dict

    hints = typing.get_type_hints(cls)
    out = ml_collections.ConfigDict()
    overrides = dict(overrides or {})
    names = {f.name for f in dataclasses.fields(cls)}
    for key in overrides:
        if key not in names:
            raise C.ConfigError(f"unknown config field {cls.__name__}.{key}")
    defaults = C.to_dict(cls())
    for f in dataclasses.fields(cls):
        value = overrides.get(f.name, defaults[f.name])
        if value is None:
            inner = [a for a in typing.get_args(hints[f.name]) if a is not type(None)]
            out[f.name] = config_dict.placeholder(inner[0] if inner else str)
        elif isinstance(value, list | tuple):
            out[f.name] = tuple(value)
        else:
            out[f.name] = value
    return out


def make(
    model: dict[str, Any],
    data: dict[str, Any] | None = None,
    optimizer: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
    mesh: dict[str, Any] | None = None,
    checkpoint: dict[str, Any] | None = None,
    scaling: dict[str, Any] | None = None,
    variant: str | None = None,
    task: dict[str, Any] | None = None,
) -> ml_collections.ConfigDict:
    """A locked ConfigDict with all eight sections (unknown fields are errors).

    ``variant`` names entries of :data:`VARIANTS` applied after the preset's values.
    """
    import ml_collections

    cfg = ml_collections.ConfigDict()
    cfg.model = _section(C.ModelConfig, model)
    cfg.data = _section(C.DataConfig, data)
    cfg.optimizer = _section(C.OptimizerConfig, optimizer)
    cfg.train = _section(C.TrainConfig, train)
    cfg.mesh = _section(C.MeshConfig, mesh)
    cfg.checkpoint = _section(C.CheckpointConfig, checkpoint)
    cfg.scaling = _section(C.ScalingConfig, scaling)
    cfg.task = _section(C.TaskConfig, task)
    apply_variant(cfg, variant)
    cfg.lock()
    return cfg


def to_typed(cfg: ml_collections.ConfigDict) -> C.Config:
    """The validated typed :class:`t5x_lite.config.Config` of a preset ConfigDict."""
    return C.from_dict(cfg.to_dict())


# --------------------------------------------------------------------------- loading


def search_dirs() -> list[str]:
    """Folders a bare preset name is looked up in, in order (existing ones only)."""
    out: list[str] = []
    for d in (os.path.abspath("configs"), REPO_CONFIGS):
        if os.path.isdir(d) and all(not os.path.samefile(d, o) for o in out):
            out.append(d)
    return out


def names() -> list[str]:
    """Every preset name :func:`find` resolves, sorted."""
    found = {
        os.path.basename(p)[:-3] for d in search_dirs() for p in glob.glob(os.path.join(d, "*.py"))
    }
    return sorted(found - set(NOT_PRESETS))


def _suggest(name: str, known: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        return f" (did you mean {prefix}{close[0]}?)"
    return f" (known: {', '.join(known)})" if known else ""


def split(spec: str) -> tuple[str, str | None]:
    """``"configs/gpt2_tiny.py:smoke,bf16"`` -> ``("configs/gpt2_tiny.py", "smoke,bf16")``."""
    target, sep, variant = spec.partition(":")
    return target, (variant if sep else None)


def find(target: str) -> str:
    """The file of a preset path (``configs/gpt2_tiny.py``) or bare name (``gpt2_tiny``).

    A path is taken as given (relative to the working directory); a name is looked
    up in :func:`search_dirs`. Either, when missing, is a one-line ConfigError that
    names the closest preset.
    """
    if not target:
        raise C.ConfigError("empty preset name; give configs/<name>.py or <name>")
    if target.endswith(".py") or os.sep in target or "/" in target:
        if os.path.isfile(target):
            return target
        folder, base = os.path.split(target)
        known = sorted(
            os.path.basename(p)
            for p in glob.glob(os.path.join(folder or ".", "*.py"))
            if os.path.basename(p)[:-3] not in NOT_PRESETS
        )
        prefix = os.path.join(folder, "") if folder else ""
        hint = _suggest(base, known, prefix) if known else ""
        raise C.ConfigError(f"config file not found: {target}{hint}")
    for d in search_dirs():
        path = os.path.join(d, f"{target}.py")
        if target not in NOT_PRESETS and os.path.isfile(path):
            return path
    raise C.ConfigError(f"unknown preset {target!r}{_suggest(target, names())}")


_MODULES: dict[str, ModuleType] = {}


def load_module(path: str) -> ModuleType:
    """Execute the Python file ``path`` as a fresh module (not entered in sys.modules).

    A missing package (a preset needs ml_collections) is a one-line ConfigError.
    """
    digest = hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:8]
    stem = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(f"t5x_lite_preset_{stem}_{digest}", path)
    if spec is None or spec.loader is None:
        raise C.ConfigError(f"{path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ModuleNotFoundError as e:
        raise C.ConfigError(
            f"{path} needs the {e.name!r} package (presets build ml_collections "
            "ConfigDicts): install it, or use a JSON config (run_train.py --print_config)"
        ) from None
    return module


def sibling(file: str, name: str) -> ModuleType:
    """The module ``<name>.py`` next to ``file`` (loaded once): a preset's shared sections.

    ``base = presets.sibling(__file__, "base")`` in ``configs/t5_small.py`` is
    ``configs/base.py``, wherever the process runs and however the preset is loaded.
    """
    path = os.path.realpath(os.path.join(os.path.dirname(os.path.abspath(file)), f"{name}.py"))
    if path not in _MODULES:
        _MODULES[path] = load_module(path)
    return _MODULES[path]


def load(spec: str) -> ml_collections.ConfigDict:
    """The locked ConfigDict of ``spec``: ``PATH_OR_NAME[:variant[,variant]]``.

    E.g. ``load("configs/t5_small.py")``, ``load("t5_small:smoke")``; raises
    ConfigError for an unknown file, name or variant.
    """
    target, variant = split(spec)
    path = find(target)
    module = load_module(path)
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise C.ConfigError(f"{path} has no get_config(); it is not a preset")
    return get_config(variant)


def load_typed(spec: str) -> C.Config:
    """``to_typed(load(spec))``: the typed, validated Config of a preset."""
    return to_typed(load(spec))


def resolve_flag(argv: list[str], flag: str = "config") -> list[str]:
    """``argv`` with ``--<flag>=NAME[:variant]`` replaced by the preset's file path.

    Lets commands whose ``--config`` is an ml_collections config file accept a bare
    preset name (``--config=gpt2_tiny:smoke``); an existing path, a
    ``--config.<field>`` override and anything else pass unchanged. An unknown name
    or a missing file is a ConfigError (see :func:`find`).
    """
    out = []
    prefix = f"--{flag}="
    for arg in argv:
        if arg.startswith(prefix):
            target, variant = split(arg[len(prefix) :])
            arg = prefix + find(target) + ("" if variant is None else f":{variant}")
        out.append(arg)
    return out
