"""Token ids of a corpus split, computed once per tokenizer and memory-mapped after.

Tokenising is the only step of the pipeline that is not vectorised numpy, so it runs
once, at preparation: every document of the split is cut into sentences
(:func:`t5x_lite.data.corpora.split_sentences`), encoded, and stored as three arrays in
``<data_dir>/t5x_lite_tokens/<corpus key>/<split>-<tokenizer sha256[:16]>/``::

    tokens.npy           [N]    int32  all sentences back to back
    sentence_starts.npy  [S+1]  int64  sentence s is tokens[starts[s]:starts[s+1]]
    doc_sentences.npy    [D+1]  int64  document d is sentences doc_sentences[d]:[d+1]

Example: documents ``["A b. C.", "D"]`` with ``A->5, b.->6, C.->7, D->8`` give
``tokens=[5, 6, 7, 8]``, ``sentence_starts=[0, 2, 3, 4]``, ``doc_sentences=[0, 2, 3]``.

The folder is written under a temporary name and renamed when complete, so an
interrupted run leaves nothing that counts as prepared; a complete folder is reused.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from t5x_lite.config import ConfigError
from t5x_lite.data.corpora import Corpus, split_sentences
from t5x_lite.data.tokenizer import Tokenizer

_FILES = ("tokens", "sentence_starts", "doc_sentences")


@dataclass(frozen=True)
class TokenizedSplit:
    tokens: np.ndarray  # [N] int32
    sentence_starts: np.ndarray  # [S+1] int64
    doc_sentences: np.ndarray  # [D+1] int64
    path: str = ""

    @property
    def num_docs(self) -> int:
        return len(self.doc_sentences) - 1

    @property
    def num_tokens(self) -> int:
        return int(self.sentence_starts[-1])

    @property
    def doc_starts(self) -> np.ndarray:
        """``[D+1]`` int64: document d is ``tokens[doc_starts[d]:doc_starts[d+1]]``."""
        return np.asarray(self.sentence_starts[self.doc_sentences], dtype=np.int64)

    def document(self, d: int) -> np.ndarray:
        s = self.doc_starts
        return np.asarray(self.tokens[s[d] : s[d + 1]])


def build(texts: list[str] | object, tokenizer: Tokenizer) -> TokenizedSplit:
    """Tokenise documents in memory (see the module docstring for the layout)."""
    tokens: list[np.ndarray] = []
    sent_lens: list[int] = []
    doc_counts: list[int] = []
    batch: list[list[str]] = []

    def flush() -> None:
        flat = [s for doc in batch for s in doc]
        encoded = tokenizer.encode_batch(flat) if flat else []
        i = 0
        for doc in batch:
            kept = 0
            for ids in encoded[i : i + len(doc)]:
                if ids:
                    tokens.append(np.asarray(ids, dtype=np.int32))
                    sent_lens.append(len(ids))
                    kept += 1
            i += len(doc)
            if kept:
                doc_counts.append(kept)
        batch.clear()

    for text in texts:  # type: ignore[attr-defined]
        batch.append(split_sentences(text))
        if len(batch) >= 1024:
            flush()
    flush()
    flat_tokens = np.concatenate(tokens) if tokens else np.zeros(0, np.int32)
    starts = np.zeros(len(sent_lens) + 1, dtype=np.int64)
    np.cumsum(sent_lens, out=starts[1:])
    docs = np.zeros(len(doc_counts) + 1, dtype=np.int64)
    np.cumsum(doc_counts, out=docs[1:])
    return TokenizedSplit(flat_tokens, starts, docs)


def load_or_build(corpus: Corpus, split: str, tokenizer: Tokenizer, root: Path) -> TokenizedSplit:
    """The cached token ids of ``split``, built on first use."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", split)
    folder = root / "t5x_lite_tokens" / corpus.key / f"{slug}-{tokenizer.sha256[:16]}"
    if not (folder / "meta.json").exists():
        if split not in corpus.splits() and "[" not in split:
            raise ConfigError(
                f"split {split!r} is not in data.corpus={corpus.spec!r} "
                f"(splits: {', '.join(corpus.splits())})"
            )
        store = build(corpus.texts(split), tokenizer)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for name in _FILES:
            np.save(tmp / f"{name}.npy", getattr(store, name))
        meta = {
            "corpus": corpus.spec,
            "split": split,
            "tokenizer": tokenizer.path,
            "tokenizer_sha256": tokenizer.sha256,
            "documents": store.num_docs,
            "sentences": len(store.sentence_starts) - 1,
            "tokens": store.num_tokens,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.replace(tmp, folder)
        except OSError:  # prepared meanwhile by another process: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
            if not (folder / "meta.json").exists():
                raise ConfigError(f"{folder} exists but is no complete token cache") from None
    arrays = {n: np.load(folder / f"{n}.npy", mmap_mode="r") for n in _FILES}
    store = TokenizedSplit(**arrays, path=str(folder))
    if store.num_docs == 0:
        raise ConfigError(f"split {split!r} of data.corpus={corpus.spec!r} has no text")
    return store
