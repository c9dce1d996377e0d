"""The input pipeline the trainer calls: tokenizer, training iterator, eval batches.

API (``cfg`` is a validated :class:`t5x_lite.config.Config`):

``get_tokenizer(cfg, workdir=None) -> Tokenizer``
    ``cfg.data.tokenizer`` when set (an existing ``.model``), else a SentencePiece
    model of :func:`tokenizer_size` ids (``data.tokenizer_vocab_size``, default
    ``model.vocab_size``) trained on the corpus's train split and cached in the data
    dir (keyed by corpus, split, type and size). With ``workdir`` the model is copied
    to ``workdir/tokenizer.model``; an existing different file there is a ConfigError
    when ``data.tokenizer`` names another file, and is the run's tokenizer otherwise
    (resuming never retrains; its size must be the requested one). Never overwritten.
    The tokenizer may have fewer ids than the model's embedding table (never more): the
    extra rows are unused, as in nanoGPT's GPT-2 padded from 50257 to 50304 ids. Every
    id a batch holds (MLM's random replacements, T5's sentinels at the top of the
    *tokenizer's* vocabulary) is below ``tokenizer.vocab_size``; the end-of-run sampler
    masks the other logits. Losses and eval metrics keep the softmax over all
    ``model.vocab_size`` logits, as nanoGPT does: the unused ids are never targets, so
    training drives their probability toward zero, and an argmax on one is a miss.
``train_iterator(cfg, tokenizer, process_index=0, process_count=1, shard=None) -> DataIterator``
    Infinite iterator of this process's numpy batches (``cfg.train.batch_size //
    count`` rows for ``shard=(index, count)``, by default ``(process_index,
    process_count)``; processes whose devices hold the same rows of the global batch,
    e.g. when a model axis spans hosts, pass the same shard and get identical rows),
    with ``get_state() -> dict`` (JSON-serialisable) and
    ``set_state(state)``: a restored iterator yields exactly the batches the
    uninterrupted one would have. A split not yet tokenised is prepared first, each
    process doing its share.
``eval_batches(cfg, tokenizer, num_batches, process_index=0, process_count=1, shard=None)``
    ``list`` of batches from ``cfg.data.eval_split``; the same on every call.
``lengths(cfg) -> Lengths(input_len, target_len)``
    Row lengths; ``target_len`` is the decoder length of encoder-decoder objectives
    (``data.target_len`` or derived, see below) and ``seq_len`` otherwise.

How a batch is made (grain ``MapDataset``, everything keyed by index):

1. Rows. Packed objectives cut one *stream* per epoch (documents in a seeded
   per-epoch order computed on the fly, :mod:`t5x_lite.data.order`; packing in
   :mod:`t5x_lite.data.packing`) into ``R`` rows; NSP/SOP make
   one row per sentence chunk (:mod:`t5x_lite.data.sentence_pairs`). ``R`` is the same
   every epoch.
2. ``MapDataset.range(R).shuffle(seed).repeat()``: grain reshuffles the rows each
   epoch; global row ``g`` is row ``shuffle_e(g mod R)`` of epoch ``e = g // R``.
3. ``.batch(B/S)[index::S]`` for ``shard=(index, S)``: global batch ``k`` is the
   global rows ``[k*B, (k+1)*B)``, and shard ``i`` holds the slice ``[i*B/S,
   (i+1)*B/S)`` of it. The shards are disjoint and concatenate to the single-process
   batch, whatever the process count
   (:func:`t5x_lite.partitioning.data_shard` finds a process's shard on its mesh).
4. ``.map(...)``: the objective turns the rows into arrays, vectorised over the
   batch. Its random draws are counter-based (:mod:`t5x_lite.data.rng`), keyed by
   ``(seed, split, epoch)`` and counted by row: a fresh mask every epoch, identical
   after a restore and on any process layout.

The iterator state is grain's (the number of batches consumed) plus a fingerprint of
the settings that shape the stream; restoring under different settings is a
ConfigError naming the field.

Batch keys per objective (all ``[B, T]`` unless noted; see the project's batch
contract): causal_lm ``input_ids labels loss_weights segment_ids positions`` (prefix_lm
adds ``prefix_mask``); mlm ``input_ids labels loss_weights segment_ids positions
token_type_ids``, or with nsp/sop ``input_ids labels loss_weights attention_mask
token_type_ids next_sentence_label [B]``; span_corruption / ul2 ``input_ids segment_ids
positions decoder_input_ids decoder_segment_ids decoder_positions labels loss_weights``
(decoder arrays ``[B, target_len]``).

Span corruption derives ``target_len`` with T5's ``random_spans_helper`` so that rows
are full (seq_len 512 -> 568 raw tokens, 114 targets); UL2 uses ``target_len =
seq_len`` unless set and packs several denoiser examples per row, one segment each on
both sides (:mod:`t5x_lite.data.ul2`): its rows take a varying number of stream tokens,
at offsets fixed once per split.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from t5x_lite import paths
from t5x_lite.config import Config, ConfigError, DataConfig, RowLengths, objectives, row_lengths
from t5x_lite.data import order as order_lib
from t5x_lite.data import packing, parallel, rng
from t5x_lite.data.corpora import data_dir_of, open_corpus, split_sentences
from t5x_lite.data.iterator_state import DataIterator, fingerprint
from t5x_lite.data.token_store import TokenizedSplit, document_subset, load_or_build
from t5x_lite.data.tokenizer import Tokenizer, train_sentencepiece


def lengths(cfg: Config) -> RowLengths:
    """``(input_len, target_len)`` of the rows ``cfg`` produces (the objective table's
    :func:`t5x_lite.config.row_lengths`)."""
    return row_lengths(cfg.data)


# --------------------------------------------------------------------------- tokenizer


def _training_sentences(corpus: Any, split: str):
    for text in corpus.texts(split):
        yield from split_sentences(text)


def tokenizer_size(cfg: Config) -> tuple[int, str]:
    """``(ids, field)``: the size of the tokenizer trained for ``cfg`` and its field.

    >>> from t5x_lite.config import ModelConfig
    >>> tokenizer_size(Config(model=ModelConfig(vocab_size=50257)))
    (50257, 'model.vocab_size')
    >>> tokenizer_size(Config(model=ModelConfig(vocab_size=50257),
    ...                       data=DataConfig(tokenizer_vocab_size=8192)))
    (8192, 'data.tokenizer_vocab_size')
    """
    if cfg.data.tokenizer_vocab_size is not None:
        return cfg.data.tokenizer_vocab_size, "data.tokenizer_vocab_size"
    return cfg.model.vocab_size, "model.vocab_size"


def get_tokenizer(
    cfg: Config,
    workdir: str | None = None,
    process_index: int = 0,
    process_count: int = 1,
) -> Tokenizer:
    """The run's tokenizer (see the module docstring). On several hosts (sharing the
    data dir) pass ``jax.process_index()`` / ``jax.process_count()``: they prepare the
    corpus together, and process 0 trains the tokenizer while the others wait."""
    data = cfg.data
    vocab = cfg.model.vocab_size
    size, field = tokenizer_size(cfg)
    if size > vocab:  # Config.validate says so too; callers may skip it
        raise ConfigError(f"{field}={size} exceeds model.vocab_size={vocab}")
    run_copy = paths.path(workdir, "tokenizer.model") if workdir else None
    if data.tokenizer:
        path = paths.path(data.tokenizer)  # local or a URL (gs://...)
        if not path.is_file():
            raise ConfigError(f"data.tokenizer={data.tokenizer!r} does not exist")
        tok = Tokenizer(path)
    elif run_copy is not None and run_copy.is_file():
        tok = Tokenizer(run_copy)  # resuming: the run keeps the tokenizer it started with
        if tok.vocab_size != size:
            raise ConfigError(
                f"{run_copy} has {tok.vocab_size} ids but {field}={size}; "
                "use another workdir or set data.tokenizer"
            )
        return tok
    else:
        corpus = open_corpus(data, process_index, process_count)
        slug = data.train_split.replace("/", "_")
        name = f"{corpus.key}-{slug}-{data.tokenizer_type}-{size}.model"
        path = data_dir_of(data) / "t5x_lite_tokenizers" / name
        if not path.is_file() and process_index != 0:
            parallel.wait_for(path.is_file, str(path))
        if not path.is_file():
            train_sentencepiece(
                _training_sentences(corpus, data.train_split),
                size,
                data.tokenizer_type,
                path,
                data.corpus,
                field,
            )
        tok = Tokenizer(path)
    if tok.vocab_size > vocab:
        raise ConfigError(
            f"model.vocab_size={vocab} is smaller than the vocabulary of {tok.path} "
            f"({tok.vocab_size} ids, reserved ids included); use a larger model.vocab_size "
            "or another data.tokenizer"
        )
    if run_copy is None:
        return tok
    return _copy_into_workdir(tok, run_copy, process_index)


def _copy_into_workdir(tok: Tokenizer, run_copy: Any, process_index: int) -> Tokenizer:
    """The run's byte-identical copy of ``tok`` at ``run_copy`` (an epath Path: local or
    ``gs://``), never overwriting one that differs (a ConfigError naming both).

    A local copy is written by every process (each host may have its own disk) through
    a rename; an object-store copy by process 0 alone (one shared object, written
    whole), the others keep reading ``tok``, whose bytes it holds.
    """
    data = paths.path(tok.path).read_bytes()
    if run_copy.exists():
        if run_copy.read_bytes() != data:
            raise ConfigError(
                f"{run_copy} exists and differs from data.tokenizer={tok.path!r}; "
                "refusing to overwrite it"
            )
    elif paths.is_url(run_copy) and process_index != 0:
        return tok
    else:
        paths.write_new_bytes(run_copy, data)
    return Tokenizer(run_copy)


# --------------------------------------------------------------------------- rows -> batch


class BatchSource:
    """Rows of one split for one objective, materialised a batch at a time.

    ``rows_per_epoch`` rows per epoch; calling it with ``(epochs [B], rows [B])``
    returns the numpy batch of those rows.
    """

    def __init__(self, data: DataConfig, tok: Tokenizer, store: TokenizedSplit, split: str):
        self.data, self.tok, self.store, self.split = data, tok, store, split
        spec = objectives.spec(
            data.objective if data.sentence_objective == "none" else data.sentence_objective
        )
        self.builder = spec.builder
        self.input_len, self.target_len = row_lengths(data)
        self.prefix, self.suffix, self.width, self.extra = self.builder.layout(data, tok)
        self.row_starts: np.ndarray | None = None
        self.wrap = len(self.prefix) + len(self.suffix)
        if self.width:
            self.doc_starts = store.doc_starts  # [D+1], memory-mapped
            key, k = rng.derive_key(data.seed, split, "order"), order_lib.GROUP_DOCS
            groups = order_lib.load_or_compute_groups(store.path, self.doc_starts, key, k)
            self.order = order_lib.DocumentOrder(self.doc_starts, key, k, groups)
            total = store.num_tokens + self.wrap * store.num_docs
            self.rows_per_epoch = max((total - self.extra) // self.width, 0)
            self.tokens_per_epoch = total
            if self.builder.row_offsets is not None:
                self.row_starts, self.width = self.builder.row_offsets(self, total)
                self.rows_per_epoch = len(self.row_starts)
        else:
            self.rows_per_epoch = self.builder.chunk_rows(self)
            self.tokens_per_epoch = store.num_tokens
        if self.rows_per_epoch == 0:
            raise ConfigError(
                f"split {split!r} of data.corpus={data.corpus!r} ({store.num_tokens} tokens) "
                f"is too small for one row of data.seq_len={data.seq_len}"
            )
        self.shuffle_seed = rng.derive_key(data.seed, split, "rows") % (2**32)

    def __reduce__(self) -> tuple:
        # grain worker processes rebuild the source from its settings (memory maps reopen).
        return (_source, (self.data, self.tok.path, self.tok.sha256, self.split))

    def key(self, epoch: int, purpose: str) -> int:
        return rng.derive_key(self.data.seed, self.split, int(epoch), purpose)

    def layout(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """``(order [D], cum_end [D])`` of the epoch's whole document stream: O(D), for
        inspection; rows are read through :meth:`stream` (:mod:`t5x_lite.data.order`)."""
        return self.order.layout(epoch, self.wrap)

    def stream(self, epoch: int, starts: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
        """``(ids [B, width], slot [B, width])``: the epoch stream from each of ``starts``
        (``slot``: the stream slot, i.e. which document of the epoch, of each token)."""
        order, cum_end, slot_of = self.order.window(epoch, starts, width, self.wrap)
        ids, slot = packing.stream_window(  # plain views: np.memmap's indexing is slow
            np.asarray(self.store.tokens), np.asarray(self.doc_starts), order, cum_end,
            starts, width, self.prefix, self.suffix,
        )  # fmt: skip
        return ids, slot_of[slot]

    def __call__(self, batch: tuple[np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
        epochs, rows = (np.asarray(x, dtype=np.int64) for x in batch)
        parts = []
        for e in np.unique(epochs):
            idx = np.flatnonzero(epochs == e)
            parts.append((idx, self.rows(int(e), rows[idx])))
        if len(parts) == 1:
            return parts[0][1]
        out = {}
        for k, v in parts[0][1].items():
            out[k] = np.empty((len(rows), *v.shape[1:]), dtype=v.dtype)
        for idx, part in parts:
            for k, v in part.items():
                out[k][idx] = v
        return out

    def rows(self, epoch: int, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The batch of ``rows`` of ``epoch`` (the objective's row builder)."""
        if not self.width:
            return self.builder.rows(self, epoch, rows)
        starts = rows * self.width if self.row_starts is None else self.row_starts[rows]
        ids, slot = self.stream(epoch, starts, self.width + self.extra)
        return self.builder.rows(self, epoch, rows, ids, slot)


@functools.lru_cache(maxsize=8)
def _source(data: DataConfig, tok_path: str, tok_sha: str, split: str) -> BatchSource:
    tok = Tokenizer(tok_path)
    corpus = open_corpus(data)
    store = load_or_build(corpus, split, tok, data_dir_of(data))
    if data.unique_tokens and split == data.train_split:
        store = document_subset(store, data.unique_tokens, rng.derive_key(data.seed, "unique"))
    return BatchSource(data, tok, store, split)


def batch_source(
    cfg: Config,
    tokenizer: Tokenizer,
    split: str,
    process_index: int = 0,
    process_count: int = 1,
) -> BatchSource:
    """The (cached) :class:`BatchSource` of ``split`` under ``cfg``; a split not yet
    tokenised is prepared first, process ``process_index`` of ``process_count`` doing
    its share (:func:`t5x_lite.data.token_store.load_or_build`)."""
    families = objectives.spec(cfg.data.objective).families
    if cfg.model.family not in families:
        raise ConfigError(
            f"data.objective={cfg.data.objective!r} feeds model.family={families[0]!r}, "
            f"not {cfg.model.family!r}"
        )
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise ConfigError(
            f"model.vocab_size={cfg.model.vocab_size} is smaller than the vocabulary of "
            f"{tokenizer.path} ({tokenizer.vocab_size})"
        )
    lengths(cfg)  # target_len check
    if process_count > 1:
        corpus = open_corpus(cfg.data, process_index, process_count)
        load_or_build(corpus, split, tokenizer, data_dir_of(cfg.data), process_index, process_count)
    return _source(cfg.data, tokenizer.path, tokenizer.sha256, split)


# --------------------------------------------------------------------------- iterators


def _dataset(
    cfg: Config,
    tokenizer: Tokenizer,
    split: str,
    process_index: int,
    process_count: int,
    shard: tuple[int, int] | None = None,
) -> Any:
    if not 0 <= process_index < process_count:
        raise ConfigError(f"process_index={process_index} outside [0, {process_count})")
    index, count = shard if shard is not None else (process_index, process_count)
    if not 0 <= index < count:
        raise ConfigError(f"data shard {index} outside [0, {count})")
    if cfg.train.batch_size % count:
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} is not divisible by the {count} "
            f"{'processes' if shard is None else 'data shards'}"
        )
    source = batch_source(cfg, tokenizer, split, process_index, process_count)
    rows = row_index_dataset(
        source.rows_per_epoch, source.shuffle_seed, cfg.train.batch_size // count, index, count
    )
    return rows.map(source)


def row_index_dataset(
    rows_per_epoch: int,
    shuffle_seed: int,
    rows_per_process: int,
    process_index: int = 0,
    process_count: int = 1,
) -> Any:
    """grain ``MapDataset`` of this process's batches of ``(epochs [b], rows [b])``.

    Global row ``g`` is row ``shuffle_e(g mod R)`` of epoch ``e = g // R``; global batch
    ``k`` holds global rows ``[k*B, (k+1)*B)`` and process ``p`` its ``p``-th slice.
    """
    import grain

    # A finite repeat (2**62 rows, as good as infinite): grain's infinite repeat has
    # length sys.maxsize, which batch(1) cannot slice (an OverflowError at batch size 1).
    epochs = max(1, 2**62 // rows_per_epoch)
    ds = grain.MapDataset.range(rows_per_epoch).shuffle(seed=shuffle_seed).repeat(epochs)
    ds = ds.map_with_index(_EpochRow(rows_per_epoch))
    return ds.batch(rows_per_process)[process_index::process_count]


class _EpochRow:
    """``(global index, row) -> (epoch, row)``."""

    def __init__(self, rows_per_epoch: int):
        self.rows_per_epoch = rows_per_epoch

    def __call__(self, index: int, row: int) -> tuple[int, int]:
        return index // self.rows_per_epoch, row


def train_iterator(
    cfg: Config,
    tokenizer: Tokenizer,
    process_index: int = 0,
    process_count: int = 1,
    shard: tuple[int, int] | None = None,
) -> DataIterator:
    """This process's infinite stream of training batches (see the module docstring)."""
    import grain

    ds = _dataset(cfg, tokenizer, cfg.data.train_split, process_index, process_count, shard)
    prefetch = cfg.data.prefetch_batches
    options = grain.ReadOptions(num_threads=1 if prefetch else 0, prefetch_buffer_size=prefetch)
    it_ds = ds.to_iter_dataset(options)
    if cfg.data.num_workers:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # grain's workers read absl flags (defaults suffice)
            flags.FLAGS.mark_as_parsed()
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.data.num_workers))
    return DataIterator(it_ds, fingerprint(cfg, tokenizer))


def eval_batches(
    cfg: Config,
    tokenizer: Tokenizer,
    num_batches: int,
    process_index: int = 0,
    process_count: int = 1,
    shard: tuple[int, int] | None = None,
) -> list[dict[str, np.ndarray]]:
    """The first ``num_batches`` batches of the eval split (deterministic)."""
    ds = _dataset(cfg, tokenizer, cfg.data.eval_split, process_index, process_count, shard)
    return [ds[k] for k in range(num_batches)]
