"""Typed, frozen configuration of a t5x_lite run.

The entry point (``run_train.py``) turns ml_collections or gin input into a plain
nested dict once and calls :func:`from_dict`; every module below receives only the
frozen section it needs (``ModelConfig`` for models, ``DataConfig`` for the input
pipeline, ...). Variants are made with :func:`dataclasses.replace`.

Validation happens here, before any array is built: each problem is reported as a
one-line :class:`ConfigError` naming the offending field, e.g.::

    >>> from_dict({"model": {"family": "decoder", "d_model": 10, "num_heads": 3}})
    Traceback (most recent call last):
    ...
    t5x_lite.config.errors.ConfigError: model.d_model=10 is not divisible by model.num_heads=3

Modules: :mod:`~.errors` (``ConfigError``), :mod:`~.archs` (the architecture table),
:mod:`~.objectives` (the objective table), :mod:`~.model`, :mod:`~.data`,
:mod:`~.run` (optimizer, train, mesh, checkpoint, scaling and the whole ``Config``),
:mod:`~.peft` (parameter-efficient tuning),
:mod:`~.io` (dict <-> config). This package imports only the standard library.
"""

from t5x_lite.config.archs import ARCHS, FAMILIES, ArchTraits, archs_of
from t5x_lite.config.data import DataConfig, parse_ul2_mixture
from t5x_lite.config.errors import ConfigError
from t5x_lite.config.io import (
    from_dict,
    model_from_dict,
    saved_config,
    section_from_dict,
    to_dict,
)
from t5x_lite.config.model import ModelConfig
from t5x_lite.config.objectives import ObjectiveSpec, RowLengths, row_lengths
from t5x_lite.config.peft import PeftConfig
from t5x_lite.config.run import (
    CheckpointConfig,
    Config,
    MeshConfig,
    OptimizerConfig,
    ScalingConfig,
    TrainConfig,
)
from t5x_lite.config.task import TaskConfig

__all__ = [
    "ARCHS",
    "FAMILIES",
    "ArchTraits",
    "CheckpointConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "MeshConfig",
    "ModelConfig",
    "ObjectiveSpec",
    "OptimizerConfig",
    "PeftConfig",
    "RowLengths",
    "ScalingConfig",
    "TaskConfig",
    "TrainConfig",
    "archs_of",
    "from_dict",
    "model_from_dict",
    "parse_ul2_mixture",
    "row_lengths",
    "saved_config",
    "section_from_dict",
    "to_dict",
]
