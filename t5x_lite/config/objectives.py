"""The objective table: what each ``data.objective`` is, declared by its own module.

Each objective module in :mod:`t5x_lite.data` (``lm``, ``mlm``, ``sentence_pairs``,
``span_corruption``, ``ul2``) calls :func:`register` with an :class:`ObjectiveSpec`:
its name, the model families it trains, its minimum ``seq_len``, the ``DataConfig``
fields its rows depend on, its row lengths and its row builder. Config validation,
the input pipeline, FLOP counting, the step benchmark and the scaling planner all
read this one table; adding an objective is one module plus its ``register`` call.

The table is filled when :mod:`t5x_lite` is imported (its ``__init__`` imports the
light objective modules, which need only numpy), so this module, in the config
layer, never imports the data layer::

    >>> import t5x_lite
    >>> spec("span_corruption").families
    ('encoder_decoder',)
    >>> from t5x_lite.config import DataConfig
    >>> row_lengths(DataConfig(objective="span_corruption", seq_len=512))
    RowLengths(input_len=512, target_len=114)

This module imports only the standard library.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from t5x_lite.config.errors import ConfigError


class RowLengths(NamedTuple):
    """Tokens per row: ``input_len`` (encoder / decoder-only rows) and ``target_len``
    (the decoder rows of an encoder-decoder; ``input_len`` elsewhere)."""

    input_len: int
    target_len: int


@dataclass(frozen=True)
class ObjectiveSpec:
    """One row of the objective table.

    ``kind``: ``token`` (``data.objective``) or ``sentence`` (``data.sentence_objective``,
    an addition to a token objective named in ``requires``). ``fields``: the
    ``DataConfig`` fields its rows read beyond the common ones (they enter the data
    iterator's fingerprint, so resuming under another value is an error).
    ``lengths(data) -> RowLengths``. ``builder``: the data layer's row builder
    (see :mod:`t5x_lite.data.pipeline`), opaque here.
    """

    name: str
    families: tuple[str, ...]
    min_seq_len: int
    fields: tuple[str, ...] = ()
    kind: str = "token"
    requires: str | None = None
    lengths: Callable[[Any], RowLengths] | None = None
    builder: Any = None


_TABLE: dict[str, ObjectiveSpec] = {}


def register(objective: ObjectiveSpec) -> ObjectiveSpec:
    """Add ``objective`` to the table (re-registering the same name replaces it)."""
    _TABLE[objective.name] = objective
    return objective


def names(kind: str = "token") -> tuple[str, ...]:
    """Registered objective names of ``kind`` in registration order."""
    return tuple(n for n, s in _TABLE.items() if s.kind == kind)


def spec(name: str) -> ObjectiveSpec:
    """The registered spec of ``name`` (a one-line ConfigError for an unknown one)."""
    if name not in _TABLE:
        raise ConfigError(f"data.objective={name!r} is not one of {', '.join(names())}")
    return _TABLE[name]


def for_family(family: str) -> tuple[str, ...]:
    """Token objectives that train ``family``: ``for_family("decoder")`` ->
    ``("causal_lm", "prefix_lm")``."""
    return tuple(n for n in names() if family in _TABLE[n].families)


def row_lengths(data: Any) -> RowLengths:
    """Row lengths of ``data`` (a ``DataConfig``): the one definition used by the
    pipeline, the trainer, FLOP counting, the step benchmark and the planner."""
    s = spec(data.objective)
    if s.lengths is None:
        return RowLengths(data.seq_len, data.seq_len)
    return s.lengths(data)
