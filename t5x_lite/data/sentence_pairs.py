"""Sentence-pair rows for NSP (BERT) and SOP (ALBERT), after ``create_pretraining_data``.

Each document is cut once into *chunks* of consecutive sentences, closed as soon as
they hold ``max_tokens = seq_len - 3`` tokens (BERT's ``target_seq_length``). A chunk
makes one row per epoch: ``[CLS] A [SEP] B [SEP]`` padded to ``seq_len``, where A is
the first ``a_end`` sentences (random, at least one) and

* NSP: B is the rest of the chunk (label 0) or, with probability 1/2, sentences
  from a random other document filling the remaining length (label 1); a split of
  one document has no other document, so all its pairs are label 0;
* SOP: B is the rest of the chunk, and with probability 1/2 A and B swap (label 1).

A one-sentence chunk is split inside the sentence. The pair is truncated to
``max_tokens`` by trimming the longer side, from a random end, as BERT does. Labels
follow Hugging Face: 0 = B follows A in order, 1 = random / swapped. All draws come
from ``(key, row)`` (:mod:`t5x_lite.data.rng`), fresh each epoch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from t5x_lite.config import objectives
from t5x_lite.data import rng
from t5x_lite.data.rows import Layout, RowBuilder

NUM_DRAWS = 6  # uniforms per row


def make_chunks(
    sentence_starts: np.ndarray, doc_sentences: np.ndarray, max_tokens: int
) -> np.ndarray:
    """``[C, 3]`` int64 chunks ``(doc, first_sentence, end_sentence)``.

    Within each document, sentences are taken greedily until they hold at least
    ``max_tokens`` tokens or the document ends; a chunk of fewer than 2 tokens is
    dropped. Vectorised over documents (one numpy pass per chunk position, no Python
    loop over sentences), so it runs on billions of sentences:

    >>> make_chunks(np.array([0, 3, 6, 8, 12]), np.array([0, 3, 4]), 5).tolist()
    [[0, 0, 2], [0, 2, 3], [1, 3, 4]]
    """
    return np.concatenate(list(chunk_blocks(sentence_starts, doc_sentences, max_tokens)))


def chunk_blocks(
    sentence_starts: np.ndarray,
    doc_sentences: np.ndarray,
    max_tokens: int,
    docs_per_block: int = 1 << 16,
):
    """:func:`make_chunks` as ``[c, 3]`` blocks, ``docs_per_block`` documents at a time
    (what :func:`load_chunks` writes to disk; memory bounded by one block)."""
    num_docs = len(doc_sentences) - 1
    yield np.zeros((0, 3), np.int64)
    for lo in range(0, num_docs, docs_per_block):
        hi = min(lo + docs_per_block, num_docs)
        first = np.asarray(doc_sentences[lo : hi + 1], dtype=np.int64)
        s_lo, s_hi = int(first[0]), int(first[-1])
        # Token offsets of this block's sentences, relative to its first one: [S + 1].
        starts = np.asarray(sentence_starts[s_lo : s_hi + 1], dtype=np.int64)
        docs = np.arange(lo, hi, dtype=np.int64)
        begin, end = first[:-1] - s_lo, first[1:] - s_lo  # per document, local sentences
        active = begin < end
        docs, begin, end = docs[active], begin[active], end[active]
        rows = []
        while len(docs):
            # The chunk ends at the first sentence boundary reaching max_tokens tokens.
            stop = np.searchsorted(starts, starts[begin] + max_tokens, side="left")
            stop = np.minimum(np.maximum(stop, begin + 1), end)  # one sentence at least
            keep = starts[stop] - starts[begin] >= 2
            rows.append(np.stack([docs[keep], begin[keep] + s_lo, stop[keep] + s_lo], axis=1))
            more = stop < end
            docs, begin, end = docs[more], stop[more], end[more]
        if rows:
            block = np.concatenate(rows)
            # Found position by position; ordered by (document, first sentence).
            yield block[np.lexsort((block[:, 1], block[:, 0]))]


def load_chunks(store: Any, max_tokens: int) -> np.ndarray:
    """The split's chunks, computed once into the token store's folder and memory-mapped
    (3 x 8 bytes per chunk on disk, shared by every process and worker)."""
    from t5x_lite.data import parallel

    starts, docs = store.sentence_starts, store.doc_sentences
    return parallel.cached_blocks(
        getattr(store, "path", None),
        f"pair-chunks-{max_tokens}.i64",
        np.int64,
        3,
        lambda: chunk_blocks(starts, docs, max_tokens),
    )


def _truncate_pair(a: np.ndarray, b: np.ndarray, max_tokens: int, u: float, v: float):
    """Trim the longer of ``a``/``b`` until ``len(a) + len(b) <= max_tokens``."""
    la, lb = len(a), len(b)
    excess = la + lb - max_tokens
    if excess <= 0:
        return a, b
    cut_a = min(max(la - lb, 0), excess)
    cut_b = min(max(lb - la, 0), excess)
    rest = excess - cut_a - cut_b
    cut_a += (rest + 1) // 2
    cut_b += rest // 2

    def trim(x: np.ndarray, k: int, w: float) -> np.ndarray:
        front = int(w * (k + 1)) if k else 0
        return x[front : len(x) - (k - front)]

    return trim(a, cut_a, u), trim(b, cut_b, v)


def pair_row(
    tokens: np.ndarray,
    sentence_starts: np.ndarray,
    doc_sentences: np.ndarray,
    chunk: np.ndarray,
    u: np.ndarray,
    *,
    kind: str,
    seq_len: int,
    cls_id: int,
    sep_id: int,
) -> tuple[np.ndarray, np.ndarray, int]:
    """One row: ``(input_ids [seq_len], token_type_ids [seq_len], label)``.

    ``u`` holds :data:`NUM_DRAWS` uniforms. Example (``[CLS]=4, [SEP]=5``, chunk of two
    sentences ``[10, 11]`` and ``[12, 13, 14]``, SOP, draws that keep the order)::

        input_ids      [4, 10, 11, 5, 12, 13, 14, 5, 0, 0]
        token_type_ids [0,  0,  0, 0,  1,  1,  1, 1, 0, 0]     label 0
    """
    max_tokens = seq_len - 3
    doc, first, end = (int(x) for x in chunk)
    body = np.asarray(tokens[sentence_starts[first] : sentence_starts[end]])
    n = end - first
    if n >= 2:
        a_end = 1 + int(u[1] * (n - 1))
        split = int(sentence_starts[first + a_end] - sentence_starts[first])
    else:
        split = 1 + int(u[1] * (len(body) - 1))
    a, b = body[:split], body[split:]
    num_docs = len(doc_sentences) - 1
    # NSP needs another document for a random B: with one document every pair is the
    # true continuation (label 0), never a same-document pair labelled random.
    label = int(u[0] < 0.5 and (kind == "sop" or num_docs > 1))
    if label and kind == "sop":
        a, b = b, a
    elif label:  # NSP: B from a random other document
        other = (doc + 1 + int(u[2] * (num_docs - 1))) % num_docs
        s0, s1 = int(doc_sentences[other]), int(doc_sentences[other + 1])
        start = s0 + int(u[3] * (s1 - s0))
        need = max(max_tokens - len(a), 1)
        ends = sentence_starts[start + 1 : s1 + 1] - sentence_starts[start]
        stop = start + 1 + int(np.searchsorted(ends, need))  # first end reaching `need`
        stop = min(stop, s1)
        b = np.asarray(tokens[sentence_starts[start] : sentence_starts[stop]])
    a, b = _truncate_pair(a, b, max_tokens, u[4], u[5])
    ids = np.zeros(seq_len, dtype=np.int32)
    types = np.zeros(seq_len, dtype=np.int32)
    row = np.concatenate([[cls_id], a, [sep_id], b, [sep_id]]).astype(np.int32)
    ids[: len(row)] = row
    types[len(a) + 2 : len(row)] = 1
    return ids, types, label


def pair_rows(
    tokens: np.ndarray,
    sentence_starts: np.ndarray,
    doc_sentences: np.ndarray,
    chunks: np.ndarray,
    key: int,
    rows: np.ndarray,
    *,
    kind: str,
    seq_len: int,
    cls_id: int,
    sep_id: int,
) -> dict[str, np.ndarray]:
    """Rows ``rows`` (chunk numbers) as a batch: ``input_ids``, ``token_type_ids``,
    ``attention_mask`` ``[B, seq_len]`` and ``next_sentence_label`` ``[B]``."""
    rows = np.asarray(rows, dtype=np.int64)
    draws = rng.uniform(key, rows[:, None] * NUM_DRAWS + np.arange(NUM_DRAWS))  # [B, 6]
    out = [
        pair_row(
            tokens,
            sentence_starts,
            doc_sentences,
            chunks[r],
            draws[i],
            kind=kind,
            seq_len=seq_len,
            cls_id=cls_id,
            sep_id=sep_id,
        )
        for i, r in enumerate(rows)
    ]
    ids = np.stack([o[0] for o in out])
    return {
        "input_ids": ids,
        "token_type_ids": np.stack([o[1] for o in out]),
        "attention_mask": (ids != 0).astype(np.int32),
        "next_sentence_label": np.asarray([o[2] for o in out], dtype=np.int32),
    }


# --------------------------------------------------------------------------- table rows


def _layout(data: Any, tok: Any) -> Layout:
    return Layout(prefix=(), suffix=(), width=0)  # pairs of sentence chunks, no stream


def _chunk_rows(src: Any) -> int:
    src.chunks = load_chunks(src.store, src.data.seq_len - 3)
    return len(src.chunks)


def _pair_rows(src: Any, epoch: int, rows: np.ndarray) -> dict[str, np.ndarray]:
    from t5x_lite.data.mlm import mask_batch

    store, tok = src.store, src.tok
    pairs = pair_rows(
        store.tokens,
        np.asarray(store.sentence_starts),
        np.asarray(store.doc_sentences),
        src.chunks,
        src.key(epoch, "pairs"),
        rows,
        kind=src.data.sentence_objective,
        seq_len=src.data.seq_len,
        cls_id=tok.cls_id,
        sep_id=tok.sep_id,
    )
    return {**mask_batch(src, pairs.pop("input_ids"), epoch, rows), **pairs}


for _kind in ("nsp", "sop"):
    objectives.register(
        objectives.ObjectiveSpec(
            name=_kind,
            families=("encoder",),
            min_seq_len=8,
            kind="sentence",
            requires="mlm",
            builder=RowBuilder(
                layout=_layout, rows=_pair_rows, chunk_rows=_chunk_rows
            ),
        )
    )
