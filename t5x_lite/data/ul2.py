"""UL2's mixture of denoisers (Tay et al., 2022) for the encoder-decoder, packed.

Each example is a piece of the raw token stream given to one denoiser drawn from
``data.ul2_mixture`` (e.g. ``"R:0.4,S:0.2,X:0.4"``); within a kind the variants below
are equally likely. The inputs of an example start with the kind's mode token, as in
the paper:

====  ========  ==========================================================
kind  mode      variants (mean span length, noise density)
====  ========  ==========================================================
R     [NLU]     (3, 0.15), (8, 0.15): T5-like span corruption
X     [NLG]     (3, 0.5), (8, 0.5), (64, 0.15), (64, 0.5): extreme corruption
S     [S2S]     prefix LM: inputs = a random-length prefix, targets = the rest
====  ========  ==========================================================

Packing. Every encoder row (``seq_len``) and its decoder row (``target_len``) hold
several examples, each its own segment on both sides. A row's *plan* is drawn
greedily, example after example, as a pure function of ``(seed, split, row)``
(:func:`plan_rows`): draw a denoiser, give it the largest raw length that fits the
room left on both sides (at most :func:`chunk_length`, the length every denoiser fits
in an empty row, and at most the denoiser's :func:`sentinel_limit`), and stop at the
first draw that fits fewer than ``MIN_EXAMPLE`` tokens. Span counts are T5's
(:func:`~t5x_lite.data.span_corruption.noise_counts`: ``round(n * density)`` noise
tokens in ``round(noise / mean)`` spans, no cap), so a plan fixes every example's
input and target length exactly.

Sentinels. Every noise span of an example takes its own sentinel and the tokenizer has
``max_spans`` of them (100), which long extreme examples would exceed (X (3, 0.5)
makes 128 spans of 766 raw tokens). Rather than cap the spans, which would change the
denoiser's mean span length, an R or X example is never longer than the largest raw
length whose spans fit the sentinels (:func:`sentinel_limit`: 602 tokens for (3, 0.5),
2009 for (3, 0.15) with 100 sentinels); a row past that packs more examples. At
``seq_len <= 512`` no limit binds. Row ``r`` reads
``stream[offset[r] : offset[r] + consumed[r]]`` (:func:`row_offsets`); as the plans do
not depend on the epoch, neither do the offsets nor the number of rows per epoch,
while the stream's document order, the noise spans and the rows' shuffle do.
"""

from __future__ import annotations

import functools
import zlib
from typing import Any, NamedTuple

import numpy as np

from t5x_lite.config import ConfigError, objectives, parse_ul2_mixture
from t5x_lite.data import rng
from t5x_lite.data.packing import place_segments, shift_right
from t5x_lite.data.rows import Layout, RowBuilder
from t5x_lite.data.span_corruption import corrupted_lengths, noise_counts, span_corruption

VARIANTS: dict[str, tuple[tuple[float, float], ...]] = {
    "R": ((3.0, 0.15), (8.0, 0.15)),
    "X": ((3.0, 0.5), (8.0, 0.5), (64.0, 0.15), (64.0, 0.5)),
    "S": ((0.0, 0.0),),
}
MIN_EXAMPLE = 8  # raw tokens: a row ends at the first drawn example that fits fewer


def denoisers(mixture: str) -> list[tuple[str, float, float, float]]:
    """``[(kind, mean_span, density, probability)]`` of a mixture spec.

    >>> denoisers("R:1,S:1")
    [('R', 3.0, 0.15, 0.25), ('R', 8.0, 0.15, 0.25), ('S', 0.0, 0.0, 0.5)]
    """
    out = []
    for kind, weight in parse_ul2_mixture(mixture).items():
        for mean, density in VARIANTS[kind]:
            out.append((kind, mean, density, weight / len(VARIANTS[kind])))
    return [d for d in out if d[3] > 0]


def sentinel_limit(noise_density: float, mean_noise_span_length: float, max_spans: int) -> int:
    """Largest raw length whose T5 span count is at most ``max_spans`` (the sentinels).

    Span counts never decrease with the length, so every shorter example fits too.

    >>> sentinel_limit(0.5, 3.0, 100)  # 602: 301 noise in 100 spans; 603: 302 in 101
    602
    """
    if max_spans < 1:
        raise ConfigError(f"span corruption needs at least one sentinel, not {max_spans}")
    # noise ~ n * density, spans ~ noise / mean: start above the answer and walk down.
    n = int((max_spans + 1) * mean_noise_span_length / noise_density) + 2
    while n > 2 and noise_counts(n, noise_density, mean_noise_span_length)[1] > max_spans:
        n -= 1
    return n


def chunk_length(seq_len: int, target_len: int, mixture: str, max_spans: int) -> int:
    """Largest raw example every denoiser of ``mixture`` turns into rows that fit.

    Lengths only: each R and X example is further held to its :func:`sentinel_limit`
    of ``max_spans`` sentinels.
    """

    def fits(n: int) -> bool:
        for kind, mean, density, _ in denoisers(mixture):
            if kind == "S":
                # inputs [S2S] + prefix (>= 1) + EOS, targets rest (>= 1) + EOS
                if n + 1 > seq_len or n > target_len:
                    return False
            else:
                i, t = corrupted_lengths(n, density, mean)
                if i + 1 > seq_len or t > target_len:
                    return False
        return True

    n = min(seq_len, target_len)
    while n > 2 and not fits(n):
        n -= 1
    if n <= 2 or not fits(n):
        raise ConfigError(
            f"data.seq_len={seq_len} / target_len={target_len} are too short for "
            f"data.ul2_mixture={mixture!r}"
        )
    return n


class Plan(NamedTuple):
    """Examples of each row, ``[B, S]`` (S = the most examples of any row; unused = -1/0).

    ``denoiser`` indexes :func:`denoisers` (-1: no example), ``length`` is the raw
    tokens the example takes from the stream, ``split`` the prefix length of an S
    example (0 otherwise).
    """

    denoiser: np.ndarray
    length: np.ndarray
    split: np.ndarray


@functools.lru_cache(maxsize=16)
def _fit_tables(
    mixture: str, seq_len: int, target_len: int, max_spans: int
) -> tuple[int, tuple[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None, ...]]:
    """``(cap, per denoiser (in_len [L+1], tgt_len [L+1], max_n_in [seq_len+1],
    max_n_tgt [target_len+1]))`` where ``L = min(cap, sentinel_limit)`` bounds the
    denoiser's examples; ``None`` for S (its fit is closed-form)."""
    cap = chunk_length(seq_len, target_len, mixture, max_spans)
    tables = []
    for kind, mean, density, _ in denoisers(mixture):
        if kind == "S":
            tables.append(None)
            continue
        n = np.arange(min(cap, sentinel_limit(density, mean, max_spans)) + 1)
        lens = np.array([corrupted_lengths(max(int(k), 2), density, mean) for k in n])
        in_len = lens[:, 0] + 1  # the mode token
        tgt_len = lens[:, 1]
        # Largest n whose (running-max) lengths fit a room: one lookup per room size.
        top_in, top_tgt = np.maximum.accumulate(in_len), np.maximum.accumulate(tgt_len)
        max_in = np.searchsorted(top_in, np.arange(seq_len + 1), "right") - 1
        max_tgt = np.searchsorted(top_tgt, np.arange(target_len + 1), "right") - 1
        tables.append((in_len, tgt_len, max_in, max_tgt))
    return cap, tuple(tables)


def plan_rows(
    key: int, rows: np.ndarray, *, mixture: str, seq_len: int, target_len: int, max_spans: int
) -> Plan:
    """The greedy plan of each row in ``rows`` (see the module docstring).

    Every example's inputs (mode token and EOS included) and targets (EOS included)
    fit: per row, inputs sum to at most ``seq_len`` and targets to ``target_len``.
    """
    rows = np.asarray(rows, dtype=np.int64)
    table = denoisers(mixture)
    cdf = np.cumsum([d[3] for d in table])
    cap, fit = _fit_tables(mixture, seq_len, target_len, max_spans)
    b = len(rows)
    room_in = np.full(b, seq_len, dtype=np.int64)
    room_t = np.full(b, target_len, dtype=np.int64)
    active = np.ones(b, dtype=bool)
    den, length, split = [], [], []
    slot = 0
    while active.any():
        u = rng.uniform(rng.derive_key(key, "denoiser", slot), rows)
        choice = np.minimum(np.searchsorted(cdf, u, side="right"), len(table) - 1)
        n = np.zeros(b, dtype=np.int64)
        in_len = np.zeros(b, dtype=np.int64)
        t_len = np.zeros(b, dtype=np.int64)
        cut = np.zeros(b, dtype=np.int64)
        for j, tab in enumerate(fit):
            sel = np.flatnonzero(choice == j)
            if not len(sel):
                continue
            ri, rt = room_in[sel], room_t[sel]
            if tab is None:  # S: [S2S] prefix EOS | rest EOS, prefix and rest >= 1
                nj = np.where((ri >= 3) & (rt >= 2), np.minimum(cap, ri - 2 + rt - 1), 0)
                lo = np.maximum(1, nj - (rt - 1))
                hi = np.minimum(nj - 1, ri - 2)
                span = np.maximum(hi - lo + 1, 1)
                c = lo + rng.randint(rng.derive_key(key, "split", slot), rows[sel], span)
                n[sel], cut[sel] = nj, c
                in_len[sel], t_len[sel] = c + 2, nj - c + 1
            else:
                tin, ttgt, max_in, max_tgt = tab
                # <= len(tin) - 1: the cap and the sentinel limit
                nj = np.maximum(np.minimum(max_in[ri], max_tgt[rt]), 0)
                n[sel] = nj
                in_len[sel], t_len[sel] = tin[nj], ttgt[nj]
        ok = active & (n >= MIN_EXAMPLE)
        room_in -= np.where(ok, in_len, 0)
        room_t -= np.where(ok, t_len, 0)
        den.append(np.where(ok, choice, -1))
        length.append(np.where(ok, n, 0))
        split.append(np.where(ok, cut, 0))
        active = ok
        slot += 1
    if slot > 1:  # the last slot is empty in every row
        den, length, split = den[:-1], length[:-1], split[:-1]
    return Plan(*(np.stack(x, axis=1) for x in (den, length, split)))


def _used_blocks(
    key: int,
    num_tokens: int,
    block: int,
    *,
    mixture: str,
    seq_len: int,
    target_len: int,
    max_spans: int,
):
    """Raw tokens each row takes, ``block`` rows at a time, until they cover the stream."""
    total, start = 0, 0
    while total < num_tokens:
        plan = plan_rows(
            key, np.arange(start, start + block), mixture=mixture, seq_len=seq_len,
            target_len=target_len, max_spans=max_spans,
        )  # fmt: skip
        used = plan.length.sum(axis=1)
        yield used
        total += int(used.sum())
        start += block


def row_offsets(
    key: int,
    num_tokens: int,
    *,
    mixture: str,
    seq_len: int,
    target_len: int,
    max_spans: int,
    folder: str | None = None,
) -> tuple[np.ndarray, int]:
    """``(offsets [R], width)``: row ``r`` starts at ``offsets[r]`` of a stream of
    ``num_tokens`` and takes at most ``width`` tokens; ``R`` counts the rows whose
    ``width`` window lies inside the stream.

    With a ``folder`` (the token store's) the offsets are written there once, block by
    block, and memory-mapped: 8 bytes per row on disk, shared by every process and
    worker, and no ``[R]`` array built in memory.
    """
    from t5x_lite.data import parallel

    lens = dict(mixture=mixture, seq_len=seq_len, target_len=target_len, max_spans=max_spans)
    block = 1 << 15
    # The widest row bounds the window; a row never takes more than seq_len + target_len
    # raw tokens, so one pass over the plans finds it without keeping them.
    width = max(int(u.max()) for u in _used_blocks(key, num_tokens, block, **lens))

    def offsets():
        done = 0
        for used in _used_blocks(key, num_tokens, block, **lens):
            starts = done + np.concatenate([[0], np.cumsum(used)[:-1]])
            done += int(used.sum())
            yield starts[starts + width <= num_tokens]

    digest = f"{key:016x}-{num_tokens}-{mixture}-{seq_len}-{target_len}-{max_spans}"
    name = f"ul2-offsets-{zlib.crc32(digest.encode()):08x}.i64"
    return parallel.cached_blocks(folder, name, np.int64, 0, offsets), width


def ul2_rows(
    tokens: np.ndarray,
    key: int,
    rows: np.ndarray,
    plan: Plan,
    *,
    mixture: str,
    seq_len: int,
    target_len: int,
    sentinel_ids: np.ndarray,
    mode_ids: dict[str, int],
    eos_id: int,
) -> dict[str, np.ndarray]:
    """Packed encoder-decoder rows from ``[B, W]`` raw windows and their ``plan``.

    Example ([S2S] = 9, EOS = 1; a hand-made plan of two S examples, 4 raw tokens
    split 2 + 2, then 3 split 1 + 2; ``seq_len=8``, ``target_len=7``)::

        tokens              [[10, 11, 12, 13, 14, 15, 16]]
        input_ids           [[9, 10, 11, 1, 9, 14, 1, 0]]
        segment_ids         [[1, 1, 1, 1, 2, 2, 2, 0]]
        positions           [[0, 1, 2, 3, 0, 1, 2, 0]]
        labels              [[12, 13, 1, 15, 16, 1, 0]]
        decoder_input_ids   [[0, 12, 13, 0, 15, 16, 0]]
        decoder_segment_ids [[1, 1, 1, 2, 2, 2, 0]]
        decoder_positions   [[0, 1, 2, 0, 1, 2, 0]]
        loss_weights        [[1, 1, 1, 1, 1, 1, 0]]

    R and X examples are T5 span corruption of their piece (sentinels numbered from
    ``<extra_id_0>`` in every example), keyed by ``(key, denoiser, length, slot)`` and
    counted by row.
    """
    rows = np.asarray(rows, dtype=np.int64)
    table = denoisers(mixture)
    b = tokens.shape[0]
    out = {
        "input_ids": np.zeros((b, seq_len), np.int32),
        "segment_ids": np.zeros((b, seq_len), np.int32),
        "positions": np.zeros((b, seq_len), np.int32),
        "labels": np.zeros((b, target_len), np.int32),
        "decoder_segment_ids": np.zeros((b, target_len), np.int32),
        "decoder_positions": np.zeros((b, target_len), np.int32),
    }
    raw_off = np.zeros(b, dtype=np.int64)
    in_off = np.zeros(b, dtype=np.int64)
    t_off = np.zeros(b, dtype=np.int64)
    for slot in range(plan.denoiser.shape[1]):
        d, n = plan.denoiser[:, slot], plan.length[:, slot]
        for j, nn in sorted({(int(x), int(y)) for x, y in zip(d, n) if x >= 0}):
            sel = np.flatnonzero((d == j) & (n == nn))
            idx = raw_off[sel, None] + np.arange(nn)
            chunk = np.take_along_axis(tokens[sel], idx, axis=1)  # [g, nn]
            kind, mean, density, _ = table[j]
            mode = np.full((len(sel), 1), mode_ids[kind], dtype=np.int32)
            eos = np.full((len(sel), 1), eos_id, dtype=np.int32)
            if kind == "S":
                cut = plan.split[sel, slot]  # [g]
                t = np.arange(nn)
                inp = np.concatenate([mode, np.where(t < cut[:, None], chunk, eos_id), eos], 1)
                in_len = cut + 2
                rest = np.take_along_axis(chunk, np.minimum(cut[:, None] + t, nn - 1), 1)
                tgt = np.concatenate([np.where(t < (nn - cut)[:, None], rest, eos_id), eos], 1)
                t_len = nn - cut + 1
            else:
                inp, tgt, _ = span_corruption(
                    chunk,
                    rng.derive_key(key, "spans", j, nn, slot),
                    rows[sel],
                    noise_density=density,
                    mean_noise_span_length=mean,
                    sentinel_ids=sentinel_ids,
                    eos_id=eos_id,
                )
                inp = np.concatenate([mode, inp], axis=1)
                in_len = np.full(len(sel), inp.shape[1])
                t_len = np.full(len(sel), tgt.shape[1])
            place_segments(
                out["input_ids"], out["segment_ids"], out["positions"],
                sel, in_off[sel], inp, in_len, slot + 1,
            )  # fmt: skip
            place_segments(
                out["labels"], out["decoder_segment_ids"], out["decoder_positions"],
                sel, t_off[sel], tgt, t_len, slot + 1,
            )  # fmt: skip
            raw_off[sel] += nn
            in_off[sel] += in_len
            t_off[sel] += t_len
    dseg = out["decoder_segment_ids"]
    out["decoder_input_ids"] = shift_right(out["labels"], dseg)
    out["loss_weights"] = (dseg > 0).astype(np.float32)
    return out


# --------------------------------------------------------------------------- table rows


def row_lengths(data: Any) -> objectives.RowLengths:
    """``(seq_len, data.target_len or seq_len)``."""
    return objectives.RowLengths(data.seq_len, data.target_len or data.seq_len)


def _lengths(src: Any) -> dict[str, Any]:
    return {
        "mixture": src.data.ul2_mixture,
        "seq_len": src.input_len,
        "target_len": src.target_len,
        "max_spans": src.tok.num_sentinels,
    }


def _layout(data: Any, tok: Any) -> Layout:
    lengths = row_lengths(data)
    width = chunk_length(lengths.input_len, lengths.target_len, data.ul2_mixture, tok.num_sentinels)
    return Layout(prefix=(), suffix=(), width=width)


def _plan_key(src: Any) -> int:
    """Row plans are the same every epoch, so rows per epoch are too."""
    return rng.derive_key(src.data.seed, src.split, "ul2-plan")


def _row_offsets(src: Any, total: int) -> tuple[np.ndarray, int]:
    folder = getattr(src.store, "path", None)
    return row_offsets(_plan_key(src), total, **_lengths(src), folder=folder)


def _rows(src: Any, epoch: int, rows: np.ndarray, ids: np.ndarray, slot: np.ndarray):
    lens, tok = _lengths(src), src.tok
    return ul2_rows(
        ids,
        src.key(epoch, "ul2"),
        rows,
        plan_rows(_plan_key(src), rows, **lens),
        mixture=lens["mixture"],
        seq_len=src.input_len,
        target_len=src.target_len,
        sentinel_ids=tok.sentinel_ids,
        mode_ids=tok.mode_ids,
        eos_id=tok.eos_id,
    )


objectives.register(
    objectives.ObjectiveSpec(
        name="ul2",
        families=("encoder_decoder",),
        min_seq_len=16,
        fields=("ul2_mixture",),
        lengths=row_lengths,
        builder=RowBuilder(layout=_layout, rows=_rows, row_offsets=_row_offsets),
    )
)
