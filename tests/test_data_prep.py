"""Corpus preparation at scale: formats, sharded and resumable preparation, several
processes, the per-epoch document order, bad input. Corpora are tiny and generated."""

from __future__ import annotations

import doctest
import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from t5x_lite.config import ConfigError, DataConfig
from t5x_lite.data import corpora, order, packing, parallel, sources, token_store
from t5x_lite.data.tokenizer import train_sentencepiece

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]


def _docs(n: int, seed: int = 0) -> list[str]:
    r = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        sents = [" ".join(r.choice(WORDS, r.integers(3, 9))).capitalize() + "." for _ in range(3)]
        out.append(" ".join(sents))
    return out


def _jsonl(docs: list[str], key: str = "text") -> bytes:
    return "".join(json.dumps({key: d, "id": i}) + "\n" for i, d in enumerate(docs)).encode()


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tok.model"
    sentences = [s for d in _docs(300, seed=9) for s in corpora.split_sentences(d)]
    return train_sentencepiece(sentences, 400, "bpe", path, "generated")


def _texts(corpus, split="train"):
    return list(corpus.texts(split)) if split in corpus.splits() else []


def _all_texts(corpus):
    return sorted(_texts(corpus, "train") + _texts(corpus, "validation"))


# --------------------------------------------------------------------------- formats


def test_parquet_arrow_compressed_jsonl_and_globs(tmp_path):
    docs = _docs(40)
    src = tmp_path / "src"
    (src / "pq").mkdir(parents=True)
    table = pa.table({"id": list(range(10)), "content": docs[:10]})
    pq.write_table(table, src / "pq" / "part-0.parquet", row_group_size=3)
    schema = pa.schema([("content", pa.string())])
    with pa.ipc.new_stream(src / "data-00000-of-00001.arrow", schema) as w:  # HF's layout
        w.write_table(pa.table({"content": docs[10:20]}), max_chunksize=4)
    (src / "c.jsonl.gz").write_bytes(gzip.compress(_jsonl(docs[20:30], "content")))
    zst = zstandard.ZstdCompressor().compress(_jsonl(docs[30:40], "content"))
    (src / "d.jsonl.zst").write_bytes(zst)
    root = tmp_path / "tfds"
    corpus = corpora.open_corpus(
        DataConfig(corpus=str(src), data_dir=str(root), text_key="content")
    )
    assert _all_texts(corpus) == sorted(docs)
    assert corpus.num_documents("validation") == 1  # one unit: 2% of 40, evenly spaced
    # A glob takes only what it matches; the text column is chosen by name.
    only = corpora.open_corpus(
        DataConfig(corpus=str(src / "*.jsonl.*"), data_dir=str(root), text_key="content")
    )
    assert _all_texts(only) == sorted(docs[20:40])
    deep = corpora.open_corpus(
        DataConfig(corpus=str(src / "**" / "*.parquet"), data_dir=str(root), text_key="content")
    )
    assert _all_texts(deep) == sorted(docs[:10])


def test_hugging_face_save_to_disk(tmp_path):
    import datasets  # the real save_to_disk layout

    docs = _docs(12)
    datasets.Dataset.from_dict({"text": docs, "n": list(range(12))}).save_to_disk(
        str(tmp_path / "hf")
    )
    assert (tmp_path / "hf" / "state.json").exists()
    corpus = corpora.open_corpus(
        DataConfig(corpus=str(tmp_path / "hf"), data_dir=str(tmp_path / "t"))
    )
    assert _all_texts(corpus) == sorted(docs)


def _arrow_stream(bad_row: int = -1) -> bytes:
    """An Arrow IPC stream (``save_to_disk``'s format) of three record batches of 10
    rows; row ``bad_row`` (0-based) holds bytes that are not UTF-8."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, pa.schema([("text", pa.string())])) as w:
        for k in range(3):
            values = [d.encode() for d in _docs(10, seed=k)]
            if 0 <= bad_row - 10 * k < 10:
                values[bad_row - 10 * k] = b"caf\xe9"
            w.write_batch(pa.record_batch([pa.array(values, pa.binary()).view(pa.string())],
                                          names=["text"]))  # fmt: skip
    return sink.getvalue().to_pybytes()


@pytest.mark.parametrize(
    "make, pattern",
    [
        (
            lambda d: pq.write_table(pa.table({"body": ["x"]}), d / "a.parquet"),
            r"a\.parquet has no column data\.text_key='text' \(columns: body\)",
        ),
        (
            lambda d: (d / "b.jsonl.gz").write_bytes(gzip.compress(_jsonl(_docs(200)))[:-40]),
            r"b\.jsonl\.gz is truncated or corrupt",
        ),
        (
            lambda d: (d / "c.jsonl.zst").write_bytes(
                zstandard.ZstdCompressor().compress(_jsonl(_docs(200)))[:-40]
            ),
            r"c\.jsonl\.zst is truncated or corrupt",
        ),
        (  # cut inside a record batch's body
            lambda d: (d / "f.arrow").write_bytes(_arrow_stream()[:-100]),
            r"f\.arrow is truncated",
        ),
        (  # cut between two record batches: a shorter stream, but no end marker
            lambda d: (d / "g.arrow").write_bytes(_arrow_stream()[:-8]),
            r"g\.arrow is truncated \(an Arrow IPC stream ends with",
        ),
        (  # a string value that is not UTF-8: one bad record, named (on_bad_utf8="error")
            lambda d: (d / "h.arrow").write_bytes(_arrow_stream(bad_row=12)),
            r"h\.arrow:13 is not valid UTF-8",
        ),
        (
            lambda d: (d / "d.parquet").write_bytes(b"PAR1 not really"),
            r"d\.parquet is not a readable Parquet file",
        ),
        (
            lambda d: (d / "e.jsonl").write_text('{"text": "  "}\n{"text": ""}\n'),
            r"has no readable documents",
        ),
    ],
)
def test_bad_files_are_one_line_errors_naming_them(tmp_path, make, pattern):
    src = tmp_path / "src"
    src.mkdir()
    make(src)
    data = DataConfig(corpus=str(src), data_dir=str(tmp_path / "tfds"), on_bad_utf8="error")
    with pytest.raises(ConfigError, match=pattern) as err:
        corpora.open_corpus(data)
    assert "\n" not in str(err.value)
    assert not list((tmp_path / "tfds").rglob("dataset_info.json"))


def test_glob_matching_nothing(tmp_path):
    spec = str(tmp_path / "*.jsonl.gz")
    with pytest.raises(ConfigError, match=r"matches no .* files") as err:
        corpora.open_corpus(DataConfig(corpus=spec, data_dir=str(tmp_path / "tfds")))
    assert spec in str(err.value) and "\n" not in str(err.value)


# --------------------------------------------------------------------------- preparation


def _corpus_dir(path: Path, files: int = 6, docs: int = 30) -> Path:
    path.mkdir(parents=True)
    for f in range(files):
        (path / f"part-{f:02d}.jsonl").write_bytes(_jsonl(_docs(docs, seed=f)))
    return path


def _prepared_files(root: Path) -> dict[str, bytes]:
    """Every shard and token file under ``root`` (metadata with paths left out)."""
    out = {}
    for p in root.rglob("*"):
        if p.is_file() and (".array_record-" in p.name or p.suffix == ".npy"):
            out[str(p.relative_to(root))] = p.read_bytes()
    return out


_PREPARE = """
import json, sys
from pathlib import Path
from t5x_lite.config import DataConfig
from t5x_lite.data import corpora, token_store
from t5x_lite.data.tokenizer import Tokenizer
src, root, tok, p, n = sys.argv[1:6]
data = DataConfig(corpus=src, data_dir=root)
builder = corpora.TextFiles(spec=src, text_key="text", data_dir=root, file_format="array_record")
done = corpora.prepare_files(
    builder, "skip", int(p), int(n), workers=1, unit_bytes=1, shard_bytes=2000
)
corpus = corpora.open_corpus(data)
stats = token_store.load_or_build(corpus, "train", Tokenizer(tok), Path(root), int(p), int(n), 1)
print(json.dumps({"text": done, "tokens": token_store.LAST_RUN}))
"""


def _run_prepare(src, root, tok, p, n):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-c", _PREPARE, str(src), str(root), tok.path, str(p), str(n)]
    return subprocess.Popen(
        args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_two_processes_prepare_the_same_shards_as_one_each_doing_half(tmp_path, tok):
    src = _corpus_dir(tmp_path / "src")
    procs = [_run_prepare(src, tmp_path / "two", tok, p, 2) for p in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for proc, (_, err) in zip(procs, outs):
        assert proc.returncode == 0, err[-2000:]
    work = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert [w["text"]["units"] for w in work] == [3, 3]  # 6 files, one unit each
    assert [w["text"]["documents"] for w in work] == [90, 90]
    pieces = [w["tokens"]["units"] for w in work]
    assert sum(pieces) >= 6 and abs(pieces[0] - pieces[1]) <= 1
    one = _run_prepare(src, tmp_path / "one", tok, 0, 1)
    out, err = one.communicate(timeout=300)
    assert one.returncode == 0, err[-2000:]
    assert json.loads(out.strip().splitlines()[-1])["text"]["units"] == 6
    a, b = _prepared_files(tmp_path / "two"), _prepared_files(tmp_path / "one")
    assert len(a) >= 10 and a.keys() == b.keys()
    assert all(a[k] == b[k] for k in a)


def test_interrupted_preparation_resumes_without_redoing_finished_units(tmp_path, tok, monkeypatch):
    src = _corpus_dir(tmp_path / "src")
    root = tmp_path / "tfds"

    def builder():
        return corpora.TextFiles(spec=str(src), text_key="text", data_dir=str(root),
                                 file_format="array_record")  # fmt: skip

    # Process 0 of 2 does units 0, 2, 4 and gives up waiting for the other half.
    monkeypatch.setattr(parallel, "WAIT_TIMEOUT_S", 0.2)
    monkeypatch.setattr(parallel.wait_for, "__defaults__", (0.2,))
    with pytest.raises(ConfigError, match="waited"):
        corpora.prepare_files(builder(), "skip", 0, 2, workers=1, unit_bytes=1)
    work = Path(builder().data_dir).with_name(f".{Path(builder().data_dir).name}.incomplete")
    assert sorted(p.name for p in work.glob("unit-*.json")) == [
        "unit-00000.json",
        "unit-00002.json",
        "unit-00004.json",
    ]
    assert not builder().is_prepared()
    # A half-written shard of unit 1 (no manifest) never counts as finished.
    (work / "unit-00001-train-00000.array_record").write_bytes(b"half written")
    (work / ".unit-00001-train-00000.array_record.999.tmp").write_bytes(b"half written")
    # ... nor does a shard the redo will not write (an attempt under another shard size).
    (work / "unit-00001-train-00099.array_record").write_bytes(b"from another attempt")
    done = corpora.prepare_files(builder(), "skip", 0, 1, workers=1, unit_bytes=1)
    assert done["units"] == 3  # 1, 3, 5 only
    assert builder().is_prepared() and not work.exists()
    assert not list(Path(builder().data_dir).glob("*unit-*"))  # nothing of the attempts left
    fresh = tmp_path / "fresh"
    corpora.prepare_files(
        corpora.TextFiles(spec=str(src), text_key="text", data_dir=str(fresh),
                          file_format="array_record"),
        "skip", workers=1, unit_bytes=1,
    )  # fmt: skip
    assert _prepared_files(root) == _prepared_files(fresh)
    corpus = corpora.open_corpus(DataConfig(corpus=str(src), data_dir=str(root)))
    assert len(_all_texts(corpus)) == 180


def test_token_pieces_resume_and_match_the_in_memory_build(tmp_path, tok, monkeypatch):
    src = _corpus_dir(tmp_path / "src", files=3)
    root = tmp_path / "tfds"
    b = corpora.TextFiles(spec=str(src), text_key="text", data_dir=str(root),
                          file_format="array_record")  # fmt: skip
    corpora.prepare_files(b, "skip", workers=1, unit_bytes=1, shard_bytes=1500)
    corpus = corpora.open_corpus(DataConfig(corpus=str(src), data_dir=str(root)))
    assert len(corpus.shard_bounds("train")) > 4
    monkeypatch.setattr(parallel.wait_for, "__defaults__", (0.2,))
    with pytest.raises(ConfigError, match="waited"):
        token_store.load_or_build(corpus, "train", tok, root, 0, 2, 1)
    first = token_store.LAST_RUN["units"]
    # Piece 1 half-written (its files, no manifest) never counts as finished.
    folder = token_store.store_folder(corpus, "train", tok, root)
    pieces = folder.with_name(f".{folder.name}.pieces")
    assert (pieces / "piece-00000.json").exists() and not (pieces / "piece-00001.json").exists()
    for name in ("tokens", "sentence_lengths", "doc_counts"):
        (pieces / f"piece-00001.{name}").write_bytes(b"\x07" * 12)
    store = token_store.load_or_build(corpus, "train", tok, root, 0, 1, 1)
    assert first + token_store.LAST_RUN["units"] == len(corpus.shard_bounds("train")) - 1
    ref = token_store.build(list(corpus.texts("train")), tok)
    for name in ("tokens", "sentence_starts", "doc_sentences", "doc_starts"):
        np.testing.assert_array_equal(getattr(store, name), getattr(ref, name), err_msg=name)
    assert isinstance(store.doc_starts, np.memmap)
    # The pool of worker processes gives the same files.
    other = tmp_path / "pool"
    shutil_copy = corpora.TextFiles(spec=str(src), text_key="text", data_dir=str(other),
                                    file_format="array_record")  # fmt: skip
    corpora.prepare_files(shutil_copy, "skip", workers=2, unit_bytes=1, shard_bytes=1500)
    pooled = token_store.load_or_build(
        corpora.open_corpus(DataConfig(corpus=str(src), data_dir=str(other))), "train", tok,
        other, workers=2,
    )  # fmt: skip
    np.testing.assert_array_equal(pooled.tokens, store.tokens)
    np.testing.assert_array_equal(pooled.doc_starts, store.doc_starts)


def test_preparation_memory_does_not_grow_with_the_corpus(tmp_path, tok, monkeypatch):
    """Peak Python allocation (tracemalloc, numpy's arrays included) of preparing the text
    shards, then of the token store, in this process: four times the corpus, the same
    peaks within 25%. Read chunks, pieces, tokenising batches and copy chunks are shrunk
    so that the bounds bind at this size (a preparation holding every document, every
    token array or a whole piece file grows past it)."""
    import tracemalloc

    monkeypatch.setattr(sources, "CHUNK_BYTES", 1 << 14)
    monkeypatch.setattr(token_store, "PIECE_DOCS", 256)
    monkeypatch.setattr(token_store, "COPY_ITEMS", 1 << 10)
    monkeypatch.setattr(token_store, "BATCH_DOCS", 128)

    def prepare(name: str, files: int, docs: int = 800) -> np.ndarray:
        """Peak bytes of the text phase and of the token phase."""
        src = _corpus_dir(tmp_path / name, files=files, docs=docs)
        root = tmp_path / f"{name}-data"
        tracemalloc.start()
        try:
            b = corpora.TextFiles(spec=str(src), text_key="text", data_dir=str(root),
                                  file_format="array_record")  # fmt: skip
            corpora.prepare_files(b, "skip", workers=1, shard_bytes=30_000)
            text = tracemalloc.get_traced_memory()[1]
            tracemalloc.reset_peak()
            corpus = corpora.open_corpus(DataConfig(corpus=str(src), data_dir=str(root)))
            store = token_store.load_or_build(corpus, "train", tok, root, workers=1)
            assert store.num_docs == docs * files - corpus.num_documents("validation")
            return np.array([text, tracemalloc.get_traced_memory()[1]])
        finally:
            tracemalloc.stop()

    prepare("warm", 1, docs=50)  # lazy imports and first-use caches
    small, large = prepare("small", 1), prepare("large", 4)
    assert (large < 1.25 * small).all(), (small, large)


def test_units_run_in_several_worker_processes_at_once(tmp_path):
    """Each unit waits until both have started, so run() must hold them in two worker
    processes at the same time (one after the other, the first would time out)."""
    import prep_workers

    tasks = [(str(tmp_path), u, 2) for u in range(2)]
    stats = parallel.run(prep_workers.meet, tasks, [0, 1], workers=2, desc="meet")
    pids = {p.read_text() for p in tmp_path.glob("*.pid")}
    assert len(pids) == 2 and str(os.getpid()) not in pids
    assert (stats["bytes"], stats["documents"], stats["tokens"]) == (20, 2, 6)  # via the queue


def test_progress_shows_bytes_documents_and_tokens_per_second():
    import io

    bar = io.StringIO()  # a bar, as on a terminal
    progress = parallel.Progress("tokens train", 4, disable=False, file=bar)
    progress((3 << 20, 500, 20_000))
    progress.t0 -= 10.0  # 10 s in: 50 documents/s, 2,000 tokens/s
    progress.unit_done()
    progress((0, 0, 0))
    progress.close()
    assert "tokens train: 3.00MB [" in bar.getvalue()
    assert re.search(r"B/s, units 1/4, 50 docs/s, (1,99\d|2,000) tokens/s\]", bar.getvalue())
    log = io.StringIO()  # not a terminal (a job's log): plain lines, the last at the end
    progress = parallel.Progress("text corpus", 2, file=log, every_s=3600.0)
    progress((2 << 30, 400, 0))
    progress.t0 -= 100.0
    progress.unit_done()
    assert log.getvalue() == ""  # none before every_s
    progress.close()
    line = log.getvalue().strip()
    assert "\n" not in line and line.startswith("text corpus: units 1/2, 2.00GB (20.5MB/s), ")
    assert "400 documents (4/s), 0.00 tokens (0.00/s), 01:40" in line


def test_a_token_cache_from_another_tokenizer_is_refused(tmp_path, tok):
    src = _corpus_dir(tmp_path / "src", files=1)
    root = tmp_path / "tfds"
    corpus = corpora.open_corpus(DataConfig(corpus=str(src), data_dir=str(root)))
    store = token_store.load_or_build(corpus, "train", tok, root)
    sentences = [s for d in _docs(200, seed=3) for s in corpora.split_sentences(d)]
    other = train_sentencepiece(sentences, 400, "unigram", tmp_path / "other.model", "generated")
    # The other tokenizer's folder name now holds this one's cache (copied or moved).
    Path(store.path).rename(token_store.store_folder(corpus, "train", other, root))
    with pytest.raises(ConfigError, match=r"was made with another tokenizer") as err:
        token_store.load_or_build(corpus, "train", other, root)
    assert "\n" not in str(err.value) and "t5x_lite_tokens" in str(err.value)
    # Pieces left by another tokenizer are refused too, naming the piece.
    folder = token_store.store_folder(corpus, "train", tok, root)
    pieces = folder.with_name(f".{folder.name}.pieces")
    pieces.mkdir()
    (pieces / "piece-00000.json").write_text(json.dumps({"tokenizer_sha256": "0" * 64}))
    with pytest.raises(ConfigError, match=r"piece-00000\.json was tokenised with another"):
        token_store.load_or_build(corpus, "train", tok, root)


# --------------------------------------------------------------------------- document order


def test_feistel_permutation_is_a_bijection_for_any_size():
    for n in (1, 2, 3, 5, 17, 256, 1000, 4097):
        p = order.permute(123, np.arange(n), n)
        assert sorted(p.tolist()) == list(range(n)), n
    a, b = order.permute(1, np.arange(1000), 1000), order.permute(2, np.arange(1000), 1000)
    assert (a != b).mean() > 0.9


def test_epoch_windows_agree_with_the_full_layout_and_change_every_epoch():
    r = np.random.default_rng(0)
    lengths = r.integers(1, 40, size=1500)
    doc_starts = np.concatenate([[0], np.cumsum(lengths)])
    tokens = r.integers(10, 999, size=doc_starts[-1]).astype(np.int32)
    o = order.DocumentOrder(doc_starts, key=7, group_docs=64)
    assert o.num_groups == 24 and len(o.group_tokens) == 25
    total = int(doc_starts[-1]) + 1500
    for epoch in (0, 1):
        full_order, cum_end = o.layout(epoch, wrap=1)
        assert sorted(full_order.tolist()) == list(range(1500)) and cum_end[-1] == total
        bounds = o.wrapped_starts(1)[1:6]  # rows across group boundaries, and random ones
        starts = np.concatenate([bounds - 10, bounds - 99, r.integers(0, total - 100, size=32)])
        want = packing.stream_window(tokens, doc_starts, full_order, cum_end, starts, 100)
        for rows in (np.arange(len(starts)), *np.arange(len(starts))[:, None]):  # all; each
            part = o.window(epoch, starts[rows], 100, wrap=1)
            got = packing.stream_window(tokens, doc_starts, part[0], part[1], starts[rows], 100)
            np.testing.assert_array_equal(got[0], want[0][rows])
            np.testing.assert_array_equal(part[2][got[1]], want[1][rows])  # stream slots
    assert (o.layout(0, 1)[0] != o.layout(1, 1)[0]).mean() > 0.9
    # 750 groups of 2: rows are found through several blocks of the coarse index.
    o = order.DocumentOrder(doc_starts, key=7, group_docs=2)
    for wrap in (0, 2):
        every = o.wrapped_starts(wrap)  # [751]
        pos = np.concatenate([every - 1, every, every + 1, [every[-1] + 50]])[1:]
        np.testing.assert_array_equal(
            o.group_of(pos, wrap), np.searchsorted(every, pos, side="right") - 1
        )
        full_order, cum_end = o.layout(0, wrap)
        starts = np.clip(np.concatenate([every[250:260] - 3, r.integers(0, every[-1], 40)]), 0,
                         every[-1] - 100)  # fmt: skip
        part = o.window(0, starts, 100, wrap)
        ends = ((3,), (4,)) if wrap else ((), ())  # [CLS] doc [SEP]-like, or bare
        want = packing.stream_window(tokens, doc_starts, full_order, cum_end, starts, 100, *ends)
        got = packing.stream_window(tokens, doc_starts, part[0], part[1], starts, 100, *ends)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(part[2][got[1]], want[1])


def test_batch_source_holds_no_per_document_arrays(kjv_root, kjv_tokenizer):
    from data_fixtures import make_cfg

    from t5x_lite.data import pipeline

    source = pipeline.batch_source(make_cfg(kjv_root), kjv_tokenizer, "train")
    assert isinstance(source.doc_starts, np.memmap)
    assert isinstance(source.order.group_tokens, np.memmap)
    d = source.store.num_docs
    big = [k for k, v in vars(source).items() if isinstance(v, np.ndarray)
           and not isinstance(v, np.memmap) and v.size >= d]  # fmt: skip
    assert big == []


# --------------------------------------------------------------------------- training


def test_a_parquet_directory_saved_by_datasets_trains_gpt2_tiny(tmp_path):
    """The Hub's layout (``data/train-0000i-of-00002.parquet``), written by ``datasets``
    itself (``Dataset.to_parquet``: its schema metadata, its row groups)."""
    import datasets
    import jax

    from t5x_lite import presets, trainer

    src = tmp_path / "pq"
    (src / "data").mkdir(parents=True)
    docs = _docs(400, seed=5)
    ds = datasets.Dataset.from_dict({"text": docs, "id": list(range(400))})
    for i in range(2):
        ds.shard(2, i, contiguous=True).to_parquet(src / "data" / f"train-{i:05d}-of-00002.parquet")
    assert b"huggingface" in pq.read_schema(next((src / "data").iterdir())).metadata
    cfg = presets.load("gpt2_tiny")
    cfg.data.corpus = str(src)
    cfg.data.data_dir = str(tmp_path / "tfds")
    cfg.data.seq_len = 32
    cfg.data.tokenizer_vocab_size = 400
    cfg.data.prefetch_batches = 0
    cfg.model.max_seq_len = 32
    cfg.model.vocab_size = 512
    cfg.model.num_layers, cfg.model.d_model, cfg.model.d_ff = 1, 32, 64
    cfg.train.batch_size = 8
    cfg.train.num_steps = 2
    cfg.train.log_every = 1
    cfg.train.eval_every = 2
    cfg.train.eval_batches = 1
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 1, 1, 1
    out = trainer.train(presets.to_typed(cfg), str(tmp_path / "run"), devices=jax.devices()[:1],
                        progress=False, handle_signals=False, sample=False)  # fmt: skip
    assert out["steps"] == 2 and np.isfinite(out["final_train_loss"])
    assert np.isfinite(out["final_eval_loss"])
    trained_on = corpora.open_corpus(DataConfig(corpus=str(src), data_dir=str(tmp_path / "tfds")))
    assert _all_texts(trained_on) == sorted(docs)  # every row of both files, once


# --------------------------------------------------------------------------- examples


@pytest.mark.parametrize("module", [sources, parallel, order, token_store, corpora])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_cli_prepare_two_processes(tmp_path, tok):
    src = _corpus_dir(tmp_path / "src", files=2)
    args = [
        sys.executable, "-m", "t5x_lite.data", "--config=configs/gpt2_tiny.py", "--prepare",
        f"--config.data.corpus={src}/*.jsonl", f"--config.data.data_dir={tmp_path / 'd'}",
        f"--config.data.tokenizer={tok.path}", "--config.data.seq_len=16", "--process_count=2",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "T5X_LITE_PREP_WORKERS": "1"}
    procs = [
        subprocess.Popen([*args, f"--process_index={p}"], cwd=ROOT, env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for p in range(2)
    ]  # fmt: skip
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][1][-2000:] + outs[1][1][-2000:]
    got = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert got[0] == {**got[1], "seconds": got[0]["seconds"]}
    assert got[0]["train"]["documents"] + got[0]["validation"]["documents"] == 60
