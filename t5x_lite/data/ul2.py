"""UL2's mixture of denoisers (Tay et al., 2022) for the encoder-decoder.

Every row is one chunk of ``chunk_length`` raw tokens, given to one denoiser drawn
from ``data.ul2_mixture`` (e.g. ``"R:0.4,S:0.2,X:0.4"``); within a kind the variants
below are equally likely. The inputs start with the kind's mode token, as in the paper:

====  ========  ==========================================================
kind  mode      variants (mean span length, noise density)
====  ========  ==========================================================
R     [NLU]     (3, 0.15), (8, 0.15): T5-like span corruption
X     [NLG]     (3, 0.5), (8, 0.5), (64, 0.15), (64, 0.5): extreme corruption
S     [S2S]     prefix LM: inputs = a random-length prefix, targets = the rest
====  ========  ==========================================================

``chunk_length`` is the largest length for which every variant fits the encoder
(``seq_len``) and decoder (``target_len``) rows; the denoisers differ in their
input/target ratios, so a row's padding depends on its denoiser (the inspection CLI
reports it).
"""

from __future__ import annotations

import numpy as np

from t5x_lite.config import ConfigError, parse_ul2_mixture
from t5x_lite.data import rng
from t5x_lite.data.packing import pad_to
from t5x_lite.data.span_corruption import corrupted_lengths, span_corruption

VARIANTS: dict[str, tuple[tuple[float, float], ...]] = {
    "R": ((3.0, 0.15), (8.0, 0.15)),
    "X": ((3.0, 0.5), (8.0, 0.5), (64.0, 0.15), (64.0, 0.5)),
    "S": ((0.0, 0.0),),
}


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


def chunk_length(seq_len: int, target_len: int, mixture: str, max_spans: int) -> int:
    """Largest raw chunk every denoiser of ``mixture`` turns into rows that fit."""

    def fits(n: int) -> bool:
        for kind, mean, density, _ in denoisers(mixture):
            if kind == "S":
                # inputs [S2S] + prefix (>= 1) + EOS, targets rest (>= 1) + EOS
                if n + 1 > seq_len or n > target_len:
                    return False
            else:
                i, t = corrupted_lengths(n, density, mean, max_spans)
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


def ul2_rows(
    chunks: np.ndarray,
    key: int,
    rows: np.ndarray,
    *,
    mixture: str,
    seq_len: int,
    target_len: int,
    sentinel_ids: np.ndarray,
    mode_ids: dict[str, int],
    eos_id: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Denoise ``[B, n]`` raw chunks: ``(inputs [B, seq_len], targets [B, target_len],
    denoiser index [B])``, padded with 0.

    Example (S denoiser, ``[S2S]`` = 9, EOS = 1, a prefix of 2 drawn)::

        chunk [[10, 11, 12, 13]] -> inputs [[9, 10, 11, 1, 0, ...]], targets [[12, 13, 1, 0, ...]]
    """
    rows = np.asarray(rows, dtype=np.int64)
    table = denoisers(mixture)
    cdf = np.cumsum([d[3] for d in table])
    choice = np.minimum(
        np.searchsorted(cdf, rng.uniform(rng.derive_key(key, "denoiser"), rows), side="right"),
        len(table) - 1,
    )
    b, n = chunks.shape
    inputs = np.zeros((b, seq_len), dtype=np.int32)
    targets = np.zeros((b, target_len), dtype=np.int32)
    for j, (kind, mean, density, _) in enumerate(table):
        sel = np.flatnonzero(choice == j)
        if not len(sel):
            continue
        mode = np.full((len(sel), 1), mode_ids[kind], dtype=np.int32)
        if kind == "S":
            split = 1 + rng.randint(rng.derive_key(key, "split"), rows[sel], n - 1)  # [b']
            t = np.arange(n)
            pre = np.where(t[None, :] < split[:, None], chunks[sel], 0)
            inp = np.concatenate([mode, pre, np.zeros_like(mode)], axis=1)
            inp[np.arange(len(sel)), split + 1] = eos_id
            # targets: chunk[split:] + EOS, left-aligned
            idx = np.minimum(split[:, None] + t[None, :], n - 1)
            rest = np.take_along_axis(chunks[sel], idx, 1)
            tgt = np.where(t[None, :] < (n - split)[:, None], rest, 0)
            tgt = np.concatenate([tgt, np.zeros_like(mode)], axis=1)
            tgt[np.arange(len(sel)), n - split] = eos_id
            inputs[sel] = pad_to(inp[:, :seq_len], seq_len)
            targets[sel] = pad_to(tgt[:, :target_len], target_len)
        else:
            inp, tgt, _ = span_corruption(
                chunks[sel],
                rng.derive_key(key, "spans", j),
                rows[sel],
                noise_density=density,
                mean_noise_span_length=mean,
                sentinel_ids=sentinel_ids,
                eos_id=eos_id,
            )
            inputs[sel] = pad_to(np.concatenate([mode, inp], axis=1), seq_len)
            targets[sel] = pad_to(tgt, target_len)
    return inputs, targets, choice
