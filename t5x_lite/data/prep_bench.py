"""Measure corpus preparation: peak memory and throughput on a synthetic corpus.

    python -m t5x_lite.data.prep_bench --mb 100 --dir /tmp/prep_bench
    python -m t5x_lite.data.prep_bench --mb 1000 --dir /tmp/prep_bench --workers 2

Writes ``--mb`` MB of synthetic text (Zipf-distributed words, 32 MB ``.jsonl`` files;
not timed), trains a SentencePiece tokenizer on its first file once (not timed), then
prepares it in a child process (text shards, then the token store of ``train``) and
prints one JSON line: seconds and bytes / documents / tokens per second of each phase,
tokens per second per core (wall clock) and per CPU-second of the tokenising workers
(steady on a shared machine), and peak memory of the preparation, both the largest
single process (``ru_maxrss`` of the children) and the sum over the process tree
(sampled from ``/proc`` every 50 ms; page cache is not counted, memory-mapped output
pages are).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

FILE_MB = 32


def write_corpus(folder: Path, mb: int, seed: int = 0) -> None:
    """``mb`` MB of ``{"text": ...}`` lines in files of :data:`FILE_MB` MB: documents of
    50-800 Zipf-distributed words from a 20,000-word vocabulary, one in 15 words ending
    a sentence."""
    folder.mkdir(parents=True, exist_ok=True)
    r = np.random.default_rng(seed)
    letters = np.array(list("etaoinshrdlcumwfgypbvkjxqz"))
    vocab = ["".join(r.choice(letters, r.integers(2, 9))) for _ in range(20000)]
    words = np.array(vocab + [w + "." for w in vocab], dtype=object)
    cdf = np.cumsum(1.0 / np.arange(1, len(vocab) + 1))
    cdf /= cdf[-1]
    left, f = mb * 10**6, 0
    while left > 0:
        lines, size = [], 0
        while size < min(FILE_MB * 10**6, left):
            lengths = r.integers(50, 800, size=1000)
            idx = np.searchsorted(cdf, r.random(int(lengths.sum())))
            idx += len(vocab) * (r.random(len(idx)) < 1 / 15)
            for doc in np.split(words[idx], np.cumsum(lengths)[:-1]):
                line = json.dumps({"text": " ".join(doc)})
                lines.append(line)
                size += len(line) + 1
                if size >= min(FILE_MB * 10**6, left):
                    break
        (folder / f"part-{f:05d}.jsonl").write_text("\n".join(lines) + "\n")
        left -= size
        f += 1


_CHILD = """
import json, sys, time
from pathlib import Path
from t5x_lite.config import DataConfig
from t5x_lite.data import corpora, token_store
from t5x_lite.data.tokenizer import Tokenizer
src, root, tok, workers = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
data = DataConfig(corpus=src, data_dir=root)
builder = corpora.TextFiles(spec=src, text_key="text", data_dir=root, file_format="array_record")
t0 = time.perf_counter()
text = corpora.prepare_files(builder, "error", workers=workers)
t1 = time.perf_counter()
corpus = corpora.open_corpus(data)
store = token_store.load_or_build(corpus, "train", Tokenizer(tok), Path(root), workers=workers)
t2 = time.perf_counter()
print(json.dumps({"text": text, "text_total_s": t1 - t0, "tokens": dict(token_store.LAST_RUN),
                  "tokens_total_s": t2 - t1, "documents": store.num_docs,
                  "num_tokens": store.num_tokens}))
"""


def _tree_rss(pid: int) -> int:
    """Resident bytes (anonymous + file-backed mapped) of ``pid`` and its descendants."""
    total = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--dir", default="/tmp/t5x_lite_prep_bench")
    ap.add_argument("--workers", type=int, default=0, help="0: all cores")
    ap.add_argument("--vocab", type=int, default=8192)
    args = ap.parse_args()
    base = Path(args.dir)
    src = base / f"corpus-{args.mb}mb"
    if not (src / ".complete").exists():
        shutil.rmtree(src, ignore_errors=True)
        write_corpus(src, args.mb)
        (src / ".complete").write_text("")
    tok_path = base / f"tok-{args.vocab}.model"
    if not tok_path.exists():
        from t5x_lite.data.corpora import split_sentences
        from t5x_lite.data.tokenizer import train_sentencepiece

        first = sorted(src.glob("*.jsonl"))[0]
        texts = (json.loads(line)["text"] for line in first.open())
        sentences = (s for t in texts for s in split_sentences(t))
        train_sentencepiece(sentences, args.vocab, "bpe", tok_path, str(src))
    root = base / f"data-{args.mb}mb"
    shutil.rmtree(root, ignore_errors=True)
    workers = args.workers or len(os.sched_getaffinity(0))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    cmd = [sys.executable, "-c", _CHILD, str(src), str(root), str(tok_path), str(workers)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    peak_tree = 0
    while proc.poll() is None:
        peak_tree = max(peak_tree, _tree_rss(proc.pid))
        time.sleep(0.05)
    out = proc.stdout.read() if proc.stdout else ""
    if proc.returncode:
        sys.exit(f"preparation failed ({proc.returncode})")
    wall = time.perf_counter() - t0
    r = json.loads(out.strip().splitlines()[-1])
    text_bytes = sum(p.stat().st_size for p in src.glob("*.jsonl"))
    tok = r["tokens"]
    result = {
        "corpus_bytes": text_bytes,
        "documents": r["documents"],
        "tokens": r["num_tokens"],
        "workers": workers,
        "wall_s": wall,
        "text_s": r["text_total_s"],
        "text_mb_per_s": text_bytes / r["text_total_s"] / 1e6,
        "tokenize_s": r["tokens_total_s"],
        "tokens_per_s": r["num_tokens"] / r["tokens_total_s"],
        "tokens_per_s_per_core": r["num_tokens"] / tok["seconds"] / tok["workers"],
        "tokens_per_cpu_s": r["num_tokens"] / tok["cpu_seconds"],
        "documents_per_s": r["documents"] / r["tokens_total_s"],
        "peak_rss_largest_process_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        / 1024,
        "peak_rss_process_tree_mb": peak_tree / 2**20,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
