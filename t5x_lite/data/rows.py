"""How an objective cuts rows: the row-builder type of the objective table.

Each objective module registers an :class:`~t5x_lite.config.objectives.ObjectiveSpec`
whose ``builder`` is a :class:`RowBuilder`; :class:`t5x_lite.data.pipeline.BatchSource`
calls it without knowing which objective it serves:

* ``layout(data, tok) -> Layout``: how the document stream is cut. A stream objective
  wraps each document in ``prefix`` / ``suffix`` ids and reads ``width + extra``
  stream tokens per row (``extra = 1``: the next-token label of the last position).
  ``width = 0`` means the objective does not read a packed stream (NSP/SOP pairs).
* ``rows(src, epoch, rows, ids, slot) -> batch``: the numpy batch of the given rows
  from their stream windows ``ids [B, width + extra]`` / ``slot [B, width + extra]``
  (document slot per token, 0 = padding); ``src`` is the ``BatchSource`` (its
  ``data``, ``tok``, ``store``, ``key(epoch, purpose)``, ``input_len``, ``target_len``).
* optional ``row_offsets(src, total) -> (starts [R], width)``: variable stream offsets
  of each row (UL2), fixed once per split.
* objectives without a stream (``width = 0``, NSP/SOP) give ``chunk_rows(src) -> R``
  (rows per epoch) and take ``rows(src, epoch, rows) -> batch``.

This module imports only the standard library.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple


class Layout(NamedTuple):
    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    width: int
    extra: int = 0


@dataclass(frozen=True)
class RowBuilder:
    layout: Callable[[Any, Any], Layout]
    rows: Callable[..., dict[str, Any]]
    row_offsets: Callable[[Any, int], tuple[Any, int]] | None = None
    chunk_rows: Callable[[Any], int] | None = None
