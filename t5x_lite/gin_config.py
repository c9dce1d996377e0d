"""T5X-style gin files for the entry point, turned into the same nested dict as presets.

gin stays here, at the boundary: seven plain configurables named after the config
sections (``model``, ``data``, ``optimizer``, ``train``, ``mesh``, ``checkpoint``,
``scaling``) whose keyword parameters are exactly the fields of the matching
dataclass in :mod:`t5x_lite.config`. A gin file binds them::

    # gin/gpt2_tiny.gin
    model.family = "decoder"
    model.d_model = 64
    train.batch_size = 16

and :func:`parse` returns ``{"model": {"family": "decoder", "d_model": 64}, "train":
{"batch_size": 16}, ...}`` (only what was bound), which
:func:`t5x_lite.config.from_dict` completes with the defaults. An unknown field is a
one-line ConfigError (``unknown config field model.d_modle (gin)``); so is a
missing file. Command-line bindings ``--gin.train.num_steps=50`` are rewritten by
:func:`rewrite_argv` into ``--gin_bindings=train.num_steps = 50``; a bare word
value such as ``--gin.model.arch=llama`` is taken as a string.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

from t5x_lite import config as C

SECTIONS: dict[str, type] = {
    "model": C.ModelConfig,
    "data": C.DataConfig,
    "optimizer": C.OptimizerConfig,
    "train": C.TrainConfig,
    "mesh": C.MeshConfig,
    "checkpoint": C.CheckpointConfig,
    "scaling": C.ScalingConfig,
    "task": C.TaskConfig,
}
_CONFIGURABLES: dict[str, Callable[..., dict[str, Any]]] = {}


def _register() -> dict[str, Callable[..., dict[str, Any]]]:
    """One gin configurable per section; calling it returns the bound fields."""
    if _CONFIGURABLES:
        return _CONFIGURABLES
    import gin

    for name, cls in SECTIONS.items():

        def section(**bound: Any) -> dict[str, Any]:
            return dict(bound)

        section.__name__ = name
        section.__qualname__ = name
        section.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [
                inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None)
                for f in dataclasses.fields(cls)
            ]
        )
        _CONFIGURABLES[name] = gin.external_configurable(section, name=name)
    return _CONFIGURABLES


def _one_line(err: Exception, where: str) -> C.ConfigError:
    text = str(err).strip()
    first = text.splitlines()[0] if text else type(err).__name__
    m = re.search(r"Configurable '(\w+)' doesn't have a parameter named '(\w+)'", first)
    if m:
        return C.ConfigError(f"unknown config field {m.group(1)}.{m.group(2)} ({where})")
    m = re.search(r"No configurable matching '([\w.]+)'", first)
    if m:
        return C.ConfigError(f"unknown config section {m.group(1)!r} ({where})")
    location = re.search(r"In (?:file|bindings string) .*line \d+", text)
    suffix = f"; {location.group(0)}" if location else ""
    return C.ConfigError(f"gin ({where}): {first}{suffix}")


def parse(gin_files: Sequence[str], bindings: Sequence[str] = ()) -> dict[str, Any]:
    """Nested dict of the fields bound by ``gin_files`` then ``bindings``."""
    import gin

    fns = _register()
    for path in gin_files:
        if not os.path.isfile(path):
            raise C.ConfigError(f"gin file not found: {path}")
    gin.clear_config()
    where = ", ".join(gin_files) or "gin bindings"
    try:
        gin.parse_config_files_and_bindings(list(gin_files), list(bindings))
        out = {name: fn() for name, fn in fns.items()}
    except C.ConfigError:
        raise
    except Exception as e:  # gin raises ValueError / SyntaxError / KeyError subclasses
        raise _one_line(e, where) from None
    finally:
        gin.clear_config()
    return {k: v for k, v in out.items() if v}


def load(gin_files: Sequence[str], bindings: Sequence[str] = ()) -> C.Config:
    """The validated typed Config of gin files + bindings."""
    return C.from_dict(parse(gin_files, bindings))


def _literal(value: str) -> str:
    """A gin literal for a command-line value: ``llama`` -> ``'llama'``, ``64`` -> ``64``."""
    stripped = value.strip()
    if stripped.startswith(("@", "%")):
        return stripped
    try:
        ast.literal_eval(stripped)
        return stripped
    except (ValueError, SyntaxError):
        return repr(value)


def rewrite_argv(argv: Sequence[str]) -> list[str]:
    """``--gin.train.num_steps=50`` -> ``--gin_bindings=train.num_steps = 50``."""
    out = []
    for arg in argv:
        if arg.startswith("--gin.") and "=" in arg:
            key, value = arg[len("--gin.") :].split("=", 1)
            out.append(f"--gin_bindings={key} = {_literal(value)}")
        else:
            out.append(arg)
    return out


def _gin_value(value: Any) -> str:
    if isinstance(value, tuple | list):
        inner = ", ".join(_gin_value(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


# Fields written even when they equal the defaults, so a gin file reads on its own.
ALWAYS_WRITTEN = {
    "model": (
        "family",
        "arch",
        "vocab_size",
        "d_model",
        "num_heads",
        "num_layers",
        "d_ff",
        "max_seq_len",
    ),
    "data": ("corpus", "objective", "seq_len"),
    "train": ("batch_size", "num_steps"),
}


def to_gin(cfg: C.Config, header: str = "") -> str:
    """gin text binding the main fields of ``cfg`` and every other non-default one."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for name, cls in SECTIONS.items():
        section = getattr(cfg, name)
        default = cls()
        always = ALWAYS_WRITTEN.get(name, ())
        changed = [
            f
            for f in dataclasses.fields(cls)
            if f.name in always or getattr(section, f.name) != getattr(default, f.name)
        ]
        if not changed:
            continue
        lines.append("")
        for f in changed:
            lines.append(f"{name}.{f.name} = {_gin_value(getattr(section, f.name))}")
    return "\n".join(lines).lstrip("\n") + "\n"


def preset_to_gin(name: str) -> str:
    """gin text of preset ``name`` (``configs/<name>.py``; its docstring's first line as
    the header)."""
    from t5x_lite import presets

    path = presets.find(name)
    name = os.path.splitext(os.path.basename(path))[0]
    module = presets.load_module(path)
    cfg = presets.to_typed(module.get_config())
    doc = (module.__doc__ or "").strip().splitlines()
    header = (
        f"{doc[0] if doc else name}\n"
        f"gin form of configs/{name}.py (the same typed Config; tests check they agree).\n"
        f"Regenerate: python -m t5x_lite.gin_config {name} > gin/{name}.gin"
    )
    return to_gin(cfg, header)


if __name__ == "__main__":
    import sys

    for arg in sys.argv[1:]:
        sys.stdout.write(preset_to_gin(arg))
