"""The per-epoch document order of a packed stream, in constant memory per document.

A split's ``D`` documents are dealt into *groups* of :data:`GROUP_DOCS` by a fixed
bijection ``pi`` of ``[0, D)`` that spreads each group over the corpus (:func:`spread`):
group ``g`` holds documents ``pi(g*K), ..., pi(g*K + K - 1)``. The stream of epoch
``e`` is group 0, group 1, ... in that order, each group's documents in an order
``rho_{e,g}`` drawn afresh every epoch (a keyed Feistel permutation, :func:`permute`),
so every epoch lays the documents out anew and a row packs documents drawn from the
whole corpus. Stream slot ``j`` (the ``j``-th
document of the epoch) is document ``pi(g*K + rho_{e,g}(j - g*K))`` with
``g = j // K``.

Where each group starts in the stream does not depend on the epoch: ``group_tokens``
(``[G+1]`` int64, cumulative token counts of the groups, ``G = ceil(D / K)``) is
computed once per split and seed, saved beside the token store and memory-mapped.
Reading rows then touches only the groups their tokens fall in, ``K`` documents each,
computed on the fly (the :data:`_CACHE` most recent ones kept, 4 MB), found through a
coarse index of ``G / 256`` group starts: no ``[D]`` (or ``[G]``) array per epoch,
process or worker, and no work per batch that grows with ``D``.

    >>> doc_starts = np.array([0, 2, 3, 7])           # documents of 2, 1 and 4 tokens
    >>> o = DocumentOrder(doc_starts, key=5, group_docs=2)
    >>> o.group_tokens.tolist()                       # groups {2, 1} and {0}
    [0, 5, 7]
    >>> order, cum_end = o.layout(epoch=0, wrap=1)    # doc + EOS
    >>> sorted(order.tolist()), int(cum_end[-1])      # every document once, 7 + 3 tokens
    ([0, 1, 2], 10)
"""

from __future__ import annotations

import functools
import math
import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from t5x_lite.data import rng

GROUP_DOCS = 256
_ROUNDS = 6
_CHUNK = 1 << 20
_CACHE = 1024  # (epoch, group) orders kept: 4 KB each, 4 MB per process
_STRIDE = 256  # groups per entry of the in-memory coarse index of group starts


def permute(key: int, x: np.ndarray, n: int, family: np.ndarray | None = None) -> np.ndarray:
    """A pseudo-random bijection of ``[0, n)`` applied to ``x`` (int64), keyed by ``key``
    (and per element by ``family``: each value of it selects its own bijection).

    A balanced Feistel network on ``2h`` bits (``4**h >= n``) with SplitMix64 round
    functions, cycle-walked back into ``[0, n)``; vectorised, no state, no table.

    >>> p = permute(7, np.arange(10), 10)
    >>> sorted(p.tolist()) == list(range(10)), p.tolist() == permute(7, np.arange(10), 10).tolist()
    (True, True)
    """
    x = np.asarray(x, dtype=np.uint64)
    if n <= 1:
        return np.zeros(x.shape, np.int64)
    half = max(1, (int(n - 1).bit_length() + 1) // 2)
    mask = np.uint64((1 << half) - 1)
    shift = np.uint64(half)
    keys = _round_keys(key)
    fam = None if family is None else np.asarray(family, dtype=np.uint64) << shift

    def once(v: np.ndarray, f: np.ndarray | None) -> np.ndarray:
        left, right = v >> shift, v & mask
        for k in keys:
            mixed = right if f is None else right | f
            left, right = right, left ^ (rng.bits(k, mixed) & mask)
        return (left << shift) | right

    out = once(x, fam)
    bad = np.flatnonzero(out >= np.uint64(n))
    while len(bad):  # cycle walking: each step stays a bijection of [0, 4**h)
        out[bad] = once(out[bad], None if fam is None else fam[bad])
        bad = bad[out[bad] >= np.uint64(n)]
    return out.astype(np.int64)


@functools.lru_cache(maxsize=4096)
def _round_keys(key: int) -> tuple[int, ...]:
    return tuple(rng.derive_key(key, "feistel", r) for r in range(_ROUNDS))


def spread(key: int, x: np.ndarray, n: int) -> np.ndarray:
    """The fixed bijection ``pi`` of ``[0, n)`` that deals documents into groups:
    ``j -> (a*j + b) mod n`` with ``a`` the integer nearest ``0.618 n`` coprime to ``n``
    and ``b`` from ``key``, so consecutive members of a group lie ``a`` apart and every
    group spans the whole corpus (no cycle walking: O(1) per document; ``n < 3e9``).

    >>> spread(0, np.arange(5), 5).tolist()
    [0, 3, 1, 4, 2]
    """
    if n <= 1:
        return np.zeros(np.shape(x), np.int64)
    a = max(1, round(0.6180339887498949 * n))
    while math.gcd(a, n) != 1:
        a += 1
    return (np.asarray(x, dtype=np.int64) * a + key % n) % n


def group_tokens(doc_starts: np.ndarray, key: int, group_docs: int) -> np.ndarray:
    """``[G+1]`` cumulative token counts of the groups (raw documents, no wrapping)."""
    d = len(doc_starts) - 1
    g = -(-d // group_docs)
    sums = np.zeros(g, dtype=np.int64)
    for begin in range(0, d, _CHUNK):  # O(chunk) memory whatever D
        j = np.arange(begin, min(begin + _CHUNK, d), dtype=np.int64)
        doc = spread(key, j, d)
        length = np.asarray(doc_starts[doc + 1]) - np.asarray(doc_starts[doc])
        np.add.at(sums, j // group_docs, length)
    out = np.zeros(g + 1, dtype=np.int64)
    np.cumsum(sums, out=out[1:])
    return out


def load_or_compute_groups(
    folder: str | os.PathLike, doc_starts: np.ndarray, key: int, group_docs: int
) -> np.ndarray:
    """:func:`group_tokens`, saved in ``folder`` once (renamed into place) and
    memory-mapped; computed in memory when ``folder`` is empty or not writable."""
    if not folder:
        return group_tokens(doc_starts, key, group_docs)
    path = Path(folder) / f"order-{key:016x}-{group_docs}.npy"
    if not path.exists():
        groups = group_tokens(doc_starts, key, group_docs)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                np.save(f, groups)
            os.replace(tmp, path)
        except OSError:
            return groups
    return np.load(path, mmap_mode="r")


class DocumentOrder:
    """Epoch streams of one split (see the module docstring).

    ``doc_starts`` ``[D+1]`` (memory-mapped is fine), ``key`` the split's order seed;
    ``group_tokens`` precomputed (e.g. by :func:`load_or_compute_groups`) or computed.
    Finding the groups of a row reads ``group_tokens`` through a coarse in-memory index
    of every :data:`_STRIDE`-th group start (``G / 256`` entries, one per 65,536
    documents), so a batch costs the same whatever the number of documents.
    """

    def __init__(
        self,
        doc_starts: np.ndarray,
        key: int,
        group_docs: int = GROUP_DOCS,
        groups: np.ndarray | None = None,
    ):
        self.doc_starts = doc_starts
        self.num_docs = len(doc_starts) - 1
        self.key = key
        self.group_docs = group_docs
        self.group_tokens = group_tokens(doc_starts, key, group_docs) if groups is None else groups
        self.num_groups = len(self.group_tokens) - 1
        # Plain views of the (memory-mapped) arrays: np.memmap's Python-level indexing
        # costs more than the gathers themselves at a batch's sizes.
        self._doc_starts = np.asarray(doc_starts)
        self._group_tokens = np.asarray(self.group_tokens)
        self._coarse: dict[int, np.ndarray] = {}
        self._epoch_keys: dict[int, int] = {}
        self._cache: OrderedDict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    def group(self, epoch: int, g: int) -> tuple[np.ndarray, np.ndarray]:
        """``(docs [n], lengths [n])`` of group ``g`` in epoch ``epoch``'s order."""
        return self.groups(epoch, [g])[0]

    def _epoch_key(self, epoch: int) -> int:
        key = self._epoch_keys.get(epoch)
        if key is None:
            key = self._epoch_keys[epoch] = rng.derive_key(self.key, "epoch", int(epoch))
            if len(self._epoch_keys) > _CACHE:
                self._epoch_keys.pop(next(iter(self._epoch_keys)))
        return key

    def groups(self, epoch: int, gs: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`group` of each of ``gs``, the ones not cached computed together."""
        with self._lock:
            hits = {g: self._cache.get((epoch, g)) for g in gs}
            for g, hit in hits.items():
                if hit is not None:
                    self._cache.move_to_end((epoch, g))
        missing = [g for g, hit in hits.items() if hit is None]
        if missing:
            k, d = self.group_docs, self.num_docs
            sizes = np.minimum(k, d - np.asarray(missing, dtype=np.int64) * k)
            fam = np.repeat(np.asarray(missing, dtype=np.int64), sizes)
            idx = np.arange(len(fam)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
            ekey = self._epoch_key(epoch)
            if (sizes == k).all():
                inner = permute(ekey, idx, k, family=fam)
            else:
                inner = np.empty(len(fam), dtype=np.int64)
                full = np.repeat(sizes == k, sizes)
                inner[full] = permute(ekey, idx[full], k, family=fam[full])
                for g, n in zip(missing, sizes.tolist()):  # the last, smaller group
                    if n != k:
                        sel = fam == g
                        inner[sel] = permute(rng.derive_key(ekey, int(g)), idx[sel], n)
            docs = spread(self.key, fam * k + inner, d)
            lengths = self._doc_starts[docs + 1] - self._doc_starts[docs]
            bounds = np.cumsum(sizes) - sizes
            with self._lock:
                for g, b, n in zip(missing, bounds.tolist(), sizes.tolist()):
                    hits[g] = (docs[b : b + n], lengths[b : b + n].astype(np.int64))
                    self._cache[(epoch, g)] = hits[g]
                while len(self._cache) > _CACHE:
                    self._cache.popitem(last=False)
        return [hits[g] for g in gs]  # type: ignore[misc]

    def wrapped_starts(self, wrap: int) -> np.ndarray:
        """``[G+1]`` stream offsets of the groups when every document carries ``wrap``
        extra ids (prefix + suffix); O(G), for inspection (rows use :meth:`group_of`)."""
        return self._starts(np.arange(self.num_groups + 1), wrap)

    def _starts(self, g: np.ndarray, wrap: int) -> np.ndarray:
        """Stream offsets of groups ``g`` (any shape, values in ``[0, G]``)."""
        counts = np.minimum(g * self.group_docs, self.num_docs)
        return self._group_tokens[g] + wrap * counts

    def group_of(self, pos: np.ndarray, wrap: int) -> np.ndarray:
        """``[B]`` the group whose stream span holds each position of ``pos`` ``[B]``:
        ``searchsorted(wrapped_starts(wrap), pos, side="right") - 1`` without the O(G)
        array, through the coarse index then ``_STRIDE`` starts per position."""
        coarse = self._coarse.get(wrap)
        if coarse is None:
            coarse = self._coarse[wrap] = self._starts(
                np.arange(0, self.num_groups + 1, _STRIDE), wrap
            )
        pos = np.asarray(pos, dtype=np.int64)
        base = (np.searchsorted(coarse, pos, side="right") - 1) * _STRIDE  # [B]
        cand = np.minimum(base[:, None] + np.arange(_STRIDE), self.num_groups)  # [B, S]
        below = (self._starts(cand, wrap) <= pos[:, None]).sum(axis=1)
        return np.minimum(base + below - 1, self.num_groups)

    def window(
        self, epoch: int, starts: np.ndarray, width: int, wrap: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(order [U], cum_end [U], slot_of [U])`` covering stream positions
        ``[s, s + width)`` of every ``s`` in ``starts``: the documents of the groups
        those positions fall in, their cumulative wrapped ends in the epoch's stream
        and their stream slots (the input :func:`t5x_lite.data.packing.stream_window`
        takes, for just those groups)."""
        s = np.asarray(starts, dtype=np.int64)
        first = self.group_of(s, wrap)
        last = np.minimum(self.group_of(s + width - 1, wrap), self.num_groups - 1)
        n = np.maximum(last - first + 1, 0)
        spans = np.repeat(first, n) + np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
        touched = np.unique(spans)  # [T] groups
        parts = self.groups(epoch, touched.tolist())
        order = np.concatenate([docs for docs, _ in parts])  # [U]
        lengths = np.concatenate([lens for _, lens in parts])  # [U]
        sizes = np.array([len(docs) for docs, _ in parts], dtype=np.int64)  # [T]
        begin = np.cumsum(sizes) - sizes
        within = np.cumsum(lengths + wrap)  # [U] running ends, restarted per group below
        before = np.concatenate([[0], within])[begin]  # [T]
        cum_end = within + np.repeat(self._starts(touched, wrap) - before, sizes)
        slot_of = np.repeat(touched * self.group_docs - begin, sizes) + np.arange(len(order))
        return order, cum_end, slot_of

    def layout(self, epoch: int, wrap: int) -> tuple[np.ndarray, np.ndarray]:
        """``(order [D], cum_end [D])`` of the whole epoch stream (O(D): for
        inspection and tests; reading rows uses :meth:`window`)."""
        gstart = self.wrapped_starts(wrap)
        orders, ends = [], []
        every = list(range(self.num_groups))
        for g, (docs, lengths) in zip(every, self.groups(epoch, every)):
            orders.append(docs)
            ends.append(gstart[g] + np.cumsum(lengths + wrap))
        if not orders:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(orders), np.concatenate(ends)
