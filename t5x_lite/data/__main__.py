"""Inspect what a config feeds the model.

    python -m t5x_lite.data --config=configs/bert_tiny.py --stats --num_batches=50
    python -m t5x_lite.data --config=configs/t5_tiny.py --config.data.seq_len=512 \\
        --config.model.max_seq_len=512 --show=2

``--stats`` prints one JSON line: ``non_pad_fraction``, ``tokens_per_second`` (row
slots ``B*T`` of the encoder input, or decoder input for decoders, per second of
iterating; preparation excluded), ``non_pad_tokens_per_second``,
``tokens_per_cpu_second`` (slots per second of this process's CPU time, steadier on a
shared machine), and per objective ``mask_rate``, ``mask_token_fraction``,
``random_token_fraction``, ``unchanged_fraction`` (MLM), ``noise_density``,
``mean_noise_span_length`` (span corruption, UL2), ``positive_fraction`` (NSP/SOP).
``--show=N`` prints N decoded rows of the first batch.
``--prepare`` only prepares: the corpus, the tokenizer and the token stores of the train
and eval splits, printing one JSON line of counts; with ``--process_index=p
--process_count=P`` (hosts sharing ``data.data_dir``) each process does its share::

    python -m t5x_lite.data --config=configs/gpt2_small.py --prepare \
        --config.data.corpus='/data/web/*.jsonl.zst' --process_index=0 --process_count=4

Bad input is one line on stderr and exit status 2.
"""

from __future__ import annotations

import json
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from t5x_lite import presets
from t5x_lite.config import ConfigError

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    presets.find("gpt2_tiny"),
    "Preset configs/<name>.py or <name>, [:variant]; fields via --config.<field>=.",
)
_STATS = flags.DEFINE_bool("stats", False, "Print statistics of --num_batches batches as JSON.")
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 20, "Batches to read for --stats.")
_SHOW = flags.DEFINE_integer("show", 0, "Print this many decoded rows of the first batch.")
_SPLIT = flags.DEFINE_enum("split", "train", ["train", "eval"], "Which stream to read.")
_PREPARE = flags.DEFINE_bool("prepare", False, "Only prepare corpus, tokenizer, token stores.")
_PINDEX = flags.DEFINE_integer("process_index", 0, "This process's index (--prepare).")
_PCOUNT = flags.DEFINE_integer("process_count", 1, "Processes preparing together (--prepare).")


def main(argv: list[str]) -> None:
    del argv
    from absl import logging

    from t5x_lite.data import pipeline, stats

    logging.set_verbosity(logging.WARNING)  # TFDS logs every dataset it opens at INFO
    try:
        cfg = presets.to_typed(_CONFIG.value)
        if _PREPARE.value:
            print(json.dumps(_prepare(cfg, _PINDEX.value, _PCOUNT.value)))
            return
        t0 = time.perf_counter()
        tok = pipeline.get_tokenizer(cfg)
        n = max(_NUM_BATCHES.value if _STATS.value else 1, 1)
        if _SPLIT.value == "eval":
            t1, c1 = time.perf_counter(), time.process_time()
            batches = pipeline.eval_batches(cfg, tok, n)
        else:
            it = pipeline.train_iterator(cfg, tok)
            t1, c1 = time.perf_counter(), time.process_time()
            batches = [next(it) for _ in range(n)]
        t2 = time.perf_counter()
        cpu = time.process_time() - c1
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    for i in range(min(_SHOW.value, len(batches[0]["input_ids"]))):
        print(stats.show_row(batches[0], i, tok, cfg.data.sentence_objective))
    if _STATS.value:
        slots = sum(b["input_ids"].size for b in batches)
        real = sum(int(stats.non_pad_mask(b).sum()) for b in batches)
        out = {
            "config": flags.FLAGS["config"].config_filename,
            "objective": cfg.data.objective,
            "sentence_objective": cfg.data.sentence_objective,
            "corpus": cfg.data.corpus,
            "split": _SPLIT.value,
            "seq_len": cfg.data.seq_len,
            "target_len": pipeline.lengths(cfg).target_len,
            "batch_size": cfg.train.batch_size,
            "num_batches": n,
            "tokens_per_second": slots / (t2 - t1),
            "non_pad_tokens_per_second": real / (t2 - t1),
            "tokens_per_cpu_second": slots / cpu,
            "setup_seconds": t1 - t0,
            **stats.batch_stats(batches, tok),
        }
        print(json.dumps(out))


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, ``--config=NAME[:variant]`` resolved to its preset file."""
    try:
        argv = presets.resolve_flag(argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    return app.parse_flags_with_usage(argv)


def _prepare(cfg, process_index: int, process_count: int) -> dict:
    from t5x_lite.data import pipeline

    t0 = time.perf_counter()
    tok = pipeline.get_tokenizer(cfg, None, process_index, process_count)
    out = {"corpus": cfg.data.corpus, "tokenizer": tok.path}
    for split in dict.fromkeys((cfg.data.train_split, cfg.data.eval_split)):
        source = pipeline.batch_source(cfg, tok, split, process_index, process_count)
        out[split] = {"documents": source.store.num_docs, "tokens": source.store.num_tokens,
                      "path": source.store.path}  # fmt: skip
    out["seconds"] = time.perf_counter() - t0
    return out


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
