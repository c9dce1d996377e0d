"""Plain nested dicts <-> frozen config sections (unknown fields are errors)."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from t5x_lite.config.errors import check as _check
from t5x_lite.config.model import ModelConfig
from t5x_lite.config.run import Config


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Coerce a plain value (from ml_collections/gin/JSON) to the field's annotated type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if origin is tuple:
        _check(
            isinstance(value, list | tuple), f"{where}={value!r} must be a list of {args[0]}"
        )
        return tuple(_coerce(v, args[0], where) for v in value)
    if annotation is bool:
        _check(isinstance(value, bool), f"{where}={value!r} must be true or false")
        return value
    if annotation is int:
        _check(
            (isinstance(value, int) and not isinstance(value, bool))
            or (isinstance(value, float) and value.is_integer()),
            f"{where}={value!r} must be an integer",
        )
        return int(value)
    if annotation is float:
        _check(
            isinstance(value, int | float) and not isinstance(value, bool),
            f"{where}={value!r} must be a number",
        )
        return float(value)
    if annotation is str:
        _check(isinstance(value, str), f"{where}={value!r} must be a string")
        return value
    return value


# Renamed fields: the old key of a section (saved config.json files, older presets or
# flags) -> its new name.
RENAMED = {("model", "attention_impl"): "attention"}


def section_from_dict(cls: type, values: dict[str, Any], prefix: str) -> Any:
    """Build one frozen section from a dict, rejecting unknown fields by name."""
    for (section, old), new in RENAMED.items():
        if section == prefix and old in values:
            values = {(new if k == old else k): v for k, v in values.items()}
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        _check(key in names, f"unknown config field {prefix}.{key}")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}") for k, v in values.items()}
    return cls(**kwargs)


def saved_config(values: dict[str, Any]) -> dict[str, Any]:
    """A ``config.json`` written by an earlier version, read as it was run: a model
    saved without ``vocab_pad_multiple`` had unpadded tables (1); renamed keys are
    read by :func:`section_from_dict`."""
    model = dict(values.get("model") or {})
    model.setdefault("vocab_pad_multiple", 1)
    return {**values, "model": model}


def from_dict(values: dict[str, Any]) -> Config:
    """A validated :class:`Config` from a nested dict; unknown fields are errors."""
    hints = typing.get_type_hints(Config)
    for key in values:
        _check(key in hints, f"unknown config section {key!r}")
    sections = {
        name: section_from_dict(hints[name], dict(values.get(name) or {}), name) for name in hints
    }
    sections["optimizer"] = sections["optimizer"].resolved()
    return Config(**sections).validate()


def model_from_dict(values: dict[str, Any]) -> ModelConfig:
    """A validated :class:`ModelConfig` from a flat dict (e.g. a preset's model section)."""
    return section_from_dict(ModelConfig, values, "model").validate()


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config (tuples become lists), e.g. for config.json."""
    out = dataclasses.asdict(cfg)

    def fix(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: fix(v) for k, v in x.items()}
        if isinstance(x, tuple | list):
            return [fix(v) for v in x]
        return x

    return fix(out)
