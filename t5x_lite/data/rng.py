"""Stateless, counter-based randomness for the data transforms.

Every random decision of the pipeline is a pure function of ``(key, counter)``: the
key names the run seed, the split, the epoch and the purpose; the counter names the
element (``row * row_length + position``). A row therefore gets the same mask on every
process and after every restore, and a fresh one in the next epoch (a new key), without
any generator state to save. The bits come from SplitMix64 (Steele et al., 2014), which
passes BigCrush on consecutive counters.

    >>> k = derive_key(0, "mlm", 3)
    >>> u = uniform(k, np.arange(4))          # [4] float64 in [0, 1)
    >>> bool(np.all((u >= 0) & (u < 1))), uniform(k, np.arange(4)).tolist() == u.tolist()
    (True, True)
"""

from __future__ import annotations

import hashlib

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


def derive_key(*parts: int | str) -> int:
    """A 64-bit key from any mix of ints and strings, e.g. ``(seed, "mlm", epoch)``."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def bits(key: int, counters: np.ndarray) -> np.ndarray:
    """SplitMix64 output for each counter: uint64 array shaped like ``counters``."""
    x = np.asarray(counters).astype(np.uint64)  # a copy, updated in place (no temporaries)
    t = np.empty_like(x)
    with np.errstate(over="ignore"):
        x += np.uint64(1)
        x *= _GOLDEN
        x += np.uint64(key)
        for shift, mult in ((_S30, _M1), (_S27, _M2)):
            np.right_shift(x, shift, out=t)
            x ^= t
            x *= mult
        np.right_shift(x, _S31, out=t)
        x ^= t
    return x


def uniform(key: int, counters: np.ndarray) -> np.ndarray:
    """Uniform float64 in [0, 1), one per counter (53 random bits each)."""
    return (bits(key, counters) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def randint(key: int, counters: np.ndarray, n: int | np.ndarray) -> np.ndarray:
    """Integers uniform in ``[0, n)`` (``n`` may be an array broadcast with counters)."""
    out = np.floor(uniform(key, counters) * n).astype(np.int64)
    return np.minimum(out, np.asarray(n, dtype=np.int64) - 1)


def numpy_rng(*parts: int | str) -> np.random.Generator:
    """A numpy Generator seeded from ``parts`` (for per-epoch permutations)."""
    return np.random.default_rng(derive_key(*parts))
