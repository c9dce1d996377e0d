"""Token ids of a corpus split, computed once per tokenizer and memory-mapped after.

Tokenising is the only step of the pipeline that is not vectorised numpy, so it runs
once, at preparation: every document of the split is cut into sentences
(:func:`t5x_lite.data.corpora.split_sentences`), encoded, and stored as four arrays in
``<data_dir>/t5x_lite_tokens/<corpus key>/<split>-<tokenizer sha256[:16]>/``::

    tokens.npy           [N]    int32  all sentences back to back
    sentence_starts.npy  [S+1]  int64  sentence s is tokens[starts[s]:starts[s+1]]
    doc_sentences.npy    [D+1]  int64  document d is sentences doc_sentences[d]:[d+1]
    doc_starts.npy       [D+1]  int64  document d is tokens[doc_starts[d]:[d+1]]

Example: documents ``["A b. C.", "D"]`` with ``A->5, b.->6, C.->7, D->8`` give
``tokens=[5, 6, 7, 8]``, ``sentence_starts=[0, 2, 3, 4]``, ``doc_sentences=[0, 2, 3]``,
``doc_starts=[0, 3, 4]``.

Preparation streams, in bounded memory: the split is cut into *pieces* (its TFDS
shards, at most :data:`PIECE_DOCS` documents each); process ``p`` of ``P`` tokenises
pieces ``p, p+P, ...`` on its cores (:mod:`t5x_lite.data.parallel`), appending each
piece's arrays to files that are renamed when complete, with a manifest written last,
in ``.<folder>.pieces/``; process 0 then concatenates them chunk by chunk into the
folder, under a temporary name renamed when complete, while the others wait. An
interrupted run keeps its finished pieces, and a complete folder is reused.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from t5x_lite.config import ConfigError
from t5x_lite.data import parallel
from t5x_lite.data.corpora import Corpus, reopen, split_sentences
from t5x_lite.data.tokenizer import Tokenizer

_FILES = ("tokens", "sentence_starts", "doc_sentences", "doc_starts")
PIECE_DOCS = 1 << 16  # documents per piece at most
BATCH_DOCS = 1024  # documents tokenised together
COPY_ITEMS = 1 << 22  # elements per chunk when concatenating pieces
# What the last preparation in this process did: units (pieces), workers, seconds,
# bytes (of text), documents, tokens, cpu_seconds (of the pieces done here).
LAST_RUN: dict[str, float] = {}
# Raw piece files: (name, dtype) of what each document batch appends.
_PIECE_FILES = (("tokens", np.int32), ("sentence_lengths", np.int32), ("doc_counts", np.int32))


@dataclass(frozen=True)
class TokenizedSplit:
    tokens: np.ndarray  # [N] int32
    sentence_starts: np.ndarray  # [S+1] int64
    doc_sentences: np.ndarray  # [D+1] int64
    path: str = ""
    doc_starts_array: np.ndarray | None = None  # [D+1] int64 (memory-mapped when stored)

    @property
    def num_docs(self) -> int:
        return len(self.doc_sentences) - 1

    @property
    def num_tokens(self) -> int:
        return int(self.sentence_starts[-1])

    @property
    def doc_starts(self) -> np.ndarray:
        """``[D+1]`` int64: document d is ``tokens[doc_starts[d]:doc_starts[d+1]]``."""
        if self.doc_starts_array is not None:
            return self.doc_starts_array
        return np.asarray(self.sentence_starts[self.doc_sentences], dtype=np.int64)

    def document(self, d: int) -> np.ndarray:
        s = self.doc_starts
        return np.asarray(self.tokens[s[d] : s[d + 1]])


def document_subset(store: TokenizedSplit, max_tokens: int, key: int) -> TokenizedSplit:
    """Whole documents of ``store`` in a seeded random order (``key``), the fewest whose
    tokens reach ``max_tokens`` (all of them when the split holds fewer), kept in
    their original order and copied into memory (the subset is the unique data of a
    data-constrained run, so it is small by design); ``path`` is empty, so nothing
    derived from it is cached beside the full split.

    Example: documents of 3, 1 and 2 tokens and an order that draws documents 2, 0, 1:
    ``max_tokens=4`` keeps documents 0 and 2 (5 tokens; 2 alone holds too few).
    """
    if max_tokens <= 0 or max_tokens >= store.num_tokens:
        return store
    starts = np.asarray(store.doc_starts)  # [D+1]
    sizes = np.diff(starts)  # [D]
    order = np.random.default_rng(key % (2**63)).permutation(store.num_docs)
    count = int(np.searchsorted(np.cumsum(sizes[order]), max_tokens)) + 1
    keep = np.sort(order[:count])  # [K] document ids
    doc_sent = np.asarray(store.doc_sentences)  # [D+1]
    sent_starts = np.asarray(store.sentence_starts)  # [S+1]
    tokens, sent_lens, doc_counts = [], [], []
    for d in keep:
        a, b = int(doc_sent[d]), int(doc_sent[d + 1])
        tokens.append(np.asarray(store.tokens[sent_starts[a] : sent_starts[b]], np.int32))
        sent_lens.append(np.diff(sent_starts[a : b + 1]))
        doc_counts.append(b - a)
    lens = np.concatenate(sent_lens)
    sentence_starts = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    doc_sentences = np.concatenate([[0], np.cumsum(doc_counts)]).astype(np.int64)
    return TokenizedSplit(np.concatenate(tokens), sentence_starts, doc_sentences)


def _encode_docs(texts: list[str], tokenizer: Tokenizer, threads: int) -> tuple[list, list, list]:
    """``(token arrays, sentence lengths, sentence counts)`` of documents with text;
    a document without any token is dropped."""
    docs = [split_sentences(t) for t in texts]
    flat = [s for doc in docs for s in doc]
    encoded = tokenizer.encode_batch(flat, num_threads=threads) if flat else []
    tokens, sent_lens, doc_counts = [], [], []
    i = 0
    for doc in docs:
        kept = 0
        for ids in encoded[i : i + len(doc)]:
            if ids:
                tokens.append(np.asarray(ids, dtype=np.int32))
                sent_lens.append(len(ids))
                kept += 1
        i += len(doc)
        if kept:
            doc_counts.append(kept)
    return tokens, sent_lens, doc_counts


def build(texts: list[str] | object, tokenizer: Tokenizer) -> TokenizedSplit:
    """Tokenise a few documents in memory (the layout of the module docstring).

    For tests and small inputs; :func:`load_or_build` streams a corpus split to disk.
    """
    tokens, sent_lens, doc_counts = _encode_docs(list(texts), tokenizer, -1)  # type: ignore
    flat_tokens = np.concatenate(tokens) if tokens else np.zeros(0, np.int32)
    starts = np.zeros(len(sent_lens) + 1, dtype=np.int64)
    np.cumsum(sent_lens, out=starts[1:])
    docs = np.zeros(len(doc_counts) + 1, dtype=np.int64)
    np.cumsum(doc_counts, out=docs[1:])
    return TokenizedSplit(flat_tokens, starts, docs, doc_starts_array=starts[docs])


def piece_bounds(num_docs: int, shard_bounds: list[int] | None, limit: int = PIECE_DOCS):
    """Document ranges ``[(begin, end)]`` of the pieces: TFDS shards, cut to ``limit``.

    >>> piece_bounds(10, [0, 3, 10], limit=4)
    [(0, 3), (3, 7), (7, 10)]
    >>> piece_bounds(5, None, limit=4)
    [(0, 4), (4, 5)]
    """
    bounds = shard_bounds if shard_bounds and shard_bounds[-1] == num_docs else [0, num_docs]
    out = []
    for a, b in itertools.pairwise(bounds):
        out.extend((s, min(s + limit, b)) for s in range(a, b, limit))
    return out


def _token_piece(
    k: int,
    ref: tuple,
    split: str,
    begin: int,
    end: int,
    tok_path: str,
    sha: str,
    pieces: str,
    threads: int,
) -> None:
    """Tokenise documents ``[begin, end)`` into piece ``k`` (files, then manifest) with
    ``threads`` SentencePiece threads (-1: all cores)."""
    cpu0 = time.process_time()
    corpus, tok, folder = reopen(ref), Tokenizer(tok_path), Path(pieces)
    if tok.sha256 != sha:
        raise ConfigError(f"tokenizer file {tok_path} changed while preparing {folder}")
    tmp = {n: folder / f".piece-{k:05d}.{n}.{os.getpid()}.tmp" for n, _ in _PIECE_FILES}
    counts = {"documents": 0, "sentences": 0, "tokens": 0, "bad_utf8": 0}
    bad = [0]
    with contextlib.ExitStack() as stack:
        files = {n: stack.enter_context(open(tmp[n], "wb")) for n in tmp}
        batch: list[str] = []

        def flush() -> None:
            tokens, sent_lens, doc_counts = _encode_docs(batch, tok, threads)
            for t in tokens:
                files["tokens"].write(t.tobytes())
            files["sentence_lengths"].write(np.asarray(sent_lens, np.int32).tobytes())
            files["doc_counts"].write(np.asarray(doc_counts, np.int32).tobytes())
            n_tok = int(sum(sent_lens))
            counts["documents"] += len(doc_counts)
            counts["sentences"] += len(sent_lens)
            counts["tokens"] += n_tok
            parallel.report(sum(len(t) for t in batch), len(batch), n_tok)
            batch.clear()

        for text in corpus.read(split, begin, end, bad):
            batch.append(text)
            if len(batch) >= BATCH_DOCS:
                flush()
        flush()
    counts["bad_utf8"] = bad[0]
    counts["cpu_seconds"] = time.process_time() - cpu0  # threads=-1 counts all threads
    for n, _ in _PIECE_FILES:
        os.replace(tmp[n], folder / f"piece-{k:05d}.{n}")
    manifest = {"begin": begin, "end": end, "tokenizer_sha256": sha, **counts}
    parallel.write_atomic(folder / f"piece-{k:05d}.json", json.dumps(manifest))


def _write_npy(path: Path, dtype: np.dtype, n: int, chunks) -> None:
    """An ``.npy`` file of ``n`` elements written from ``chunks`` (never all in memory)."""
    written = 0
    with open(path, "wb") as f:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
                  "shape": (n,)}  # fmt: skip
        np.lib.format.write_array_header_1_0(f, header)
        for c in chunks:
            c = np.ascontiguousarray(c, dtype=dtype)
            f.write(c.tobytes())
            written += len(c)
    if written != n:
        raise ConfigError(f"{path}: wrote {written} of {n} elements (a piece file is damaged)")


def _read_chunks(path: Path, dtype: type, n: int):
    with open(path, "rb") as f:
        done = 0
        while done < n:
            c = np.fromfile(f, dtype=dtype, count=min(COPY_ITEMS, n - done))
            if not len(c):
                raise ConfigError(f"{path} is shorter than its manifest says")
            done += len(c)
            yield c


def _cumulative(chunks, start: int = 0):
    """``[start]`` then running sums of ``chunks`` (int64), chunk by chunk."""
    yield np.array([start], np.int64)
    total = start
    for c in chunks:
        out = np.cumsum(c, dtype=np.int64) + total
        total = int(out[-1]) if len(out) else total
        yield out


def _assemble(pieces: Path, manifests: list[dict], tmp: Path) -> dict:
    n_tok = sum(m["tokens"] for m in manifests)
    n_sent = sum(m["sentences"] for m in manifests)
    n_doc = sum(m["documents"] for m in manifests)

    def each(name: str, key: str, dtype: type):
        for k, m in enumerate(manifests):
            yield from _read_chunks(pieces / f"piece-{k:05d}.{name}", dtype, m[key])

    _write_npy(tmp / "tokens.npy", np.int32, n_tok, each("tokens", "tokens", np.int32))
    sent = _cumulative(each("sentence_lengths", "sentences", np.int32))
    _write_npy(tmp / "sentence_starts.npy", np.int64, n_sent + 1, sent)
    docs = _cumulative(each("doc_counts", "documents", np.int32))
    _write_npy(tmp / "doc_sentences.npy", np.int64, n_doc + 1, docs)

    def doc_tokens():  # tokens per document, one piece at a time (bounded by PIECE_DOCS)
        for k in range(len(manifests)):
            lens = np.fromfile(pieces / f"piece-{k:05d}.sentence_lengths", np.int32)
            counts = np.fromfile(pieces / f"piece-{k:05d}.doc_counts", np.int32)
            if len(counts):
                yield np.add.reduceat(lens.astype(np.int64), np.cumsum(counts) - counts)

    _write_npy(tmp / "doc_starts.npy", np.int64, n_doc + 1, _cumulative(doc_tokens()))
    return {"documents": n_doc, "sentences": n_sent, "tokens": n_tok}


def store_folder(corpus: Corpus, split: str, tokenizer: Tokenizer, root: Path) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", split)
    return root / "t5x_lite_tokens" / corpus.key / f"{slug}-{tokenizer.sha256[:16]}"


def _check_meta(folder: Path, tokenizer: Tokenizer) -> None:
    meta = parallel.read_json(folder / "meta.json")
    if meta.get("tokenizer_sha256") != tokenizer.sha256:
        raise ConfigError(
            f"token cache {folder} was made with another tokenizer (sha256 "
            f"{str(meta.get('tokenizer_sha256'))[:16]}..., not {tokenizer.sha256[:16]}... of "
            f"{tokenizer.path}); remove it"
        )


def load_or_build(
    corpus: Corpus,
    split: str,
    tokenizer: Tokenizer,
    root: Path,
    process_index: int = 0,
    process_count: int = 1,
    workers: int | None = None,
) -> TokenizedSplit:
    """The cached token ids of ``split``, prepared on first use (see the module
    docstring; pass ``jax.process_index()`` / ``jax.process_count()`` on several hosts,
    which must share ``root``)."""
    folder = store_folder(corpus, split, tokenizer, root)
    if not (folder / "meta.json").exists():
        if split not in corpus.splits() and "[" not in split:
            raise ConfigError(
                f"split {split!r} is not in data.corpus={corpus.spec!r} "
                f"(splits: {', '.join(corpus.splits())})"
            )
        _prepare(corpus, split, tokenizer, folder, process_index, process_count, workers)
    _check_meta(folder, tokenizer)
    arrays = {n: np.load(folder / f"{n}.npy", mmap_mode="r") for n in _FILES[:3]}
    starts = folder / "doc_starts.npy"
    store = TokenizedSplit(
        **arrays,
        path=str(folder),
        doc_starts_array=np.load(starts, mmap_mode="r") if starts.exists() else None,
    )
    if store.num_docs == 0:
        raise ConfigError(f"split {split!r} of data.corpus={corpus.spec!r} has no text")
    return store


def _prepare(
    corpus: Corpus,
    split: str,
    tok: Tokenizer,
    folder: Path,
    process_index: int,
    process_count: int,
    workers: int | None,
) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    pieces = folder.with_name(f".{folder.name}.pieces")
    pieces.mkdir(exist_ok=True)
    error = pieces / "error.txt"
    if process_index == 0 and error.exists():
        error.unlink()
    bounds = piece_bounds(corpus.num_documents(split), corpus.shard_bounds(split))
    manifest = [pieces / f"piece-{k:05d}.json" for k in range(len(bounds))]
    for m in manifest:
        if m.exists() and parallel.read_json(m).get("tokenizer_sha256") != tok.sha256:
            raise ConfigError(
                f"{m} was tokenised with another tokenizer than {tok.path}; remove {pieces}"
            )
    todo = [k for k in parallel.assigned(len(bounds), process_index, process_count)
            if not manifest[k].exists()]  # fmt: skip
    workers = max(1, min(workers or parallel.available_cores(), len(todo)))
    threads = -1 if workers == 1 else 1  # one process: SentencePiece's threads
    ref = corpus.ref()
    tasks = [
        (k, ref, split, b, e, tok.path, tok.sha256, str(pieces), threads)
        for k, (b, e) in enumerate(bounds)
    ]
    LAST_RUN.clear()
    LAST_RUN.update(units=0, workers=workers)
    try:
        if todo:
            stats = parallel.run(_token_piece, tasks, todo, workers=workers, desc=f"tokens {split}")
            LAST_RUN.update(units=len(todo), **stats)
            LAST_RUN["cpu_seconds"] = sum(
                parallel.read_json(manifest[k]).get("cpu_seconds", 0.0) for k in todo
            )
    except ConfigError as e:
        parallel.write_atomic(error, str(e))
        raise

    def ready(paths: list[Path]) -> bool:
        if error.exists():
            raise ConfigError(error.read_text())
        return all(p.exists() for p in paths)

    if process_index != 0:
        parallel.wait_for(lambda: ready([folder / "meta.json"]), str(folder))
        return
    parallel.wait_for(lambda: ready(manifest), f"the token pieces of {folder}")
    manifests = [parallel.read_json(m) for m in manifest]
    bad = sum(m["bad_utf8"] for m in manifests)
    if bad:
        warnings.warn(
            f"data.corpus={corpus.spec!r}: skipped {bad} record(s) of split {split!r} that "
            "are not valid UTF-8",
            stacklevel=3,
        )
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    counts = _assemble(pieces, manifests, tmp)
    meta = {
        "corpus": corpus.spec,
        "split": split,
        "tokenizer": tok.path,
        "tokenizer_sha256": tok.sha256,
        "pieces": len(manifests),
        **counts,
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    try:
        os.replace(tmp, folder)
    except OSError:  # prepared meanwhile by another process: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
        if not (folder / "meta.json").exists():
            raise ConfigError(f"{folder} exists but is no complete token cache") from None
    shutil.rmtree(pieces, ignore_errors=True)
