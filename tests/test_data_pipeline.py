"""The grain pipeline on kjv: acceptance statistics, determinism, restore, sharding, CLI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from data_fixtures import make_cfg

from t5x_lite import config as C
from t5x_lite.data import corpora, pipeline, stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _take(it, n):
    return [next(it) for _ in range(n)]


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- acceptance


@pytest.mark.parametrize("objective", ["causal_lm", "mlm", "span_corruption"])
def test_acceptance_statistics_at_seq_len_512(kjv_root, kjv_tokenizer, objective):
    cfg = make_cfg(kjv_root, objective, seq_len=512, batch_size=32)
    batches = _take(pipeline.train_iterator(cfg, kjv_tokenizer), 10)
    s = stats.batch_stats(batches, kjv_tokenizer)
    assert s["non_pad_fraction"] >= 0.95
    b = batches[0]
    if objective == "causal_lm":
        assert set(b) == {"input_ids", "labels", "loss_weights", "segment_ids", "positions"}
        assert b["input_ids"].shape == (32, 512)
        np.testing.assert_array_equal(b["labels"][:, :-1], b["input_ids"][:, 1:])
        # loss only where the next token is in the same document: never after EOS
        eos = b["input_ids"] == kjv_tokenizer.eos_id
        assert eos.any() and (b["loss_weights"][eos] == 0).all()
        assert (b["loss_weights"][~eos] == 1).all()
    elif objective == "mlm":
        assert s["selected_tokens"] >= 20_000
        assert abs(s["mask_rate"] - 0.15) <= 0.005
        assert abs(s["mask_token_fraction"] - 0.8) <= 0.015
        assert abs(s["random_token_fraction"] - 0.1) <= 0.015
        assert abs(s["unchanged_fraction"] - 0.1) <= 0.015
        assert s["special_selected"] == 0
        # Documents are [CLS] doc [SEP]; only a row's first segment may start mid-document.
        inner = (b["positions"] == 0) & (np.arange(512) > 0)
        assert inner.sum() >= 10
        assert (b["labels"][inner] == kjv_tokenizer.cls_id).all()
        assert (b["labels"][:, :-1][inner[:, 1:]] == kjv_tokenizer.sep_id).all()
    else:
        assert pipeline.lengths(cfg) == (512, 114)
        assert b["input_ids"].shape == (32, 512) and b["labels"].shape == (32, 114)
        assert s["target_non_pad_fraction"] >= 0.95
        assert s["noise_tokens"] >= 20_000
        assert abs(s["noise_density"] - 0.15) <= 0.01
        assert abs(s["mean_noise_span_length"] - 3.0) <= 0.3
        np.testing.assert_array_equal(b["decoder_input_ids"][:, 1:], b["labels"][:, :-1])
        assert (b["decoder_input_ids"][:, 0] == 0).all()


def test_ul2_packed_rows_at_seq_len_512(kjv_root, kjv_tokenizer):
    from test_data_objectives import _reconstruct

    tok = kjv_tokenizer
    cfg = make_cfg(kjv_root, "ul2", seq_len=512, batch_size=32)
    batches = _take(pipeline.train_iterator(cfg, tok), 10)
    s = stats.batch_stats(batches, tok)
    assert s["non_pad_fraction"] >= 0.9 and s["target_non_pad_fraction"] >= 0.4
    assert s["examples_per_row"] >= 1.5
    assert min(s["denoiser_fractions"].values()) > 0.1
    # Rows of epoch 0 against the stream they read: every segment starts with a mode
    # token and its inputs + targets give back its piece of the stream, in order.
    source = pipeline.batch_source(cfg, tok, cfg.data.train_split)
    rows = np.arange(0, source.rows_per_epoch, source.rows_per_epoch // 24)
    b = source((np.zeros_like(rows), rows))
    order, cum_end = source.layout(0)
    ids, _ = pipeline.packing.stream_window(
        source.store.tokens,
        source.doc_starts,
        order,
        cum_end,
        source.row_starts[rows],
        source.width,
    )
    modes, sent = set(tok.mode_ids.values()), set(tok.sentinel_ids.tolist())
    for r in range(len(rows)):
        seg, dseg = b["segment_ids"][r], b["decoder_segment_ids"][r]
        pieces = []
        for i in range(1, seg.max() + 1):
            inp = b["input_ids"][r][seg == i].tolist()
            out = b["labels"][r][dseg == i].tolist()
            assert inp[0] in modes and b["decoder_input_ids"][r][dseg == i][0] == 0
            if inp[0] == tok.mode_ids["S"]:
                pieces += inp[1:-1] + out[:-1]
            else:
                pieces += _reconstruct(inp[1:], out, sent)
        assert pieces == ids[r, : len(pieces)].tolist()
        if r + 1 < len(rows) and rows[r + 1] == rows[r] + 1:
            assert source.row_starts[rows[r]] + len(pieces) == source.row_starts[rows[r + 1]]
    used = np.diff(source.row_starts)
    assert (used > 0).all() and used.max() <= source.width
    print(f"ul2 512: inputs {s['non_pad_fraction']:.3f} targets {s['target_non_pad_fraction']:.3f}")


@pytest.mark.parametrize("kind", ["nsp", "sop"])
def test_sentence_pairs_positives_and_layout(kjv_root, kjv_tokenizer, kind):
    cfg = make_cfg(kjv_root, "mlm", kind, seq_len=64, batch_size=256)
    batches = _take(pipeline.train_iterator(cfg, kjv_tokenizer), 40)
    s = stats.batch_stats(batches, kjv_tokenizer)
    assert s["rows"] >= 10_000
    assert abs(s["positive_fraction"] - 0.5) <= 0.02
    assert abs(s["mask_rate"] - 0.15) <= 0.005 and s["special_selected"] == 0
    b = batches[0]
    ids, types = b["input_ids"], b["token_type_ids"]
    assert (ids[:, 0] == kjv_tokenizer.cls_id).all()
    labels = b["labels"]  # unmasked text
    for row in range(len(ids)):
        seps = np.flatnonzero(labels[row] == kjv_tokenizer.sep_id)
        assert len(seps) == 2 and seps[0] >= 2 and seps[1] > seps[0] + 1
        assert (types[row, : seps[0] + 1] == 0).all() and (
            types[row, seps[0] + 1 : seps[1] + 1] == 1
        ).all()
        assert (b["attention_mask"][row] == (np.arange(64) <= seps[1])).all()
    assert s["non_pad_fraction"] > 0.85  # chunks are filled close to seq_len


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_batches_other_seed_differs(kjv_root, kjv_tokenizer):
    cfg = make_cfg(kjv_root, "mlm", seq_len=128)
    a = _take(pipeline.train_iterator(cfg, kjv_tokenizer), 3)
    b = _take(pipeline.train_iterator(cfg, kjv_tokenizer), 3)
    assert all(_equal(x, y) for x, y in zip(a, b))
    other = make_cfg(kjv_root, "mlm", seq_len=128, seed=1)
    c = _take(pipeline.train_iterator(other, kjv_tokenizer), 1)
    assert not np.array_equal(a[0]["input_ids"], c[0]["input_ids"])


@pytest.mark.parametrize(
    "objective, sentence, seq_len, prefetch",
    [("causal_lm", "none", 512, 0), ("mlm", "nsp", 128, 2), ("span_corruption", "none", 512, 0),
     ("ul2", "none", 256, 3)],
)  # fmt: skip
def test_restored_iterator_yields_the_uninterrupted_batches(
    kjv_root, kjv_tokenizer, objective, sentence, seq_len, prefetch
):
    # The small validation split as training data: the 10 batches cross epoch boundaries;
    # with prefetch > 0 a background thread runs ahead of the consumer.
    cfg = make_cfg(
        kjv_root, objective, sentence, seq_len, batch_size=32, train_split="validation",
        prefetch_batches=prefetch,
    )  # fmt: skip
    source = pipeline.batch_source(cfg, kjv_tokenizer, "validation")
    assert source.rows_per_epoch < 7 * 32
    full = _take(pipeline.train_iterator(cfg, kjv_tokenizer), 10)
    it = pipeline.train_iterator(cfg, kjv_tokenizer)
    _take(it, 3)
    state = json.loads(json.dumps(it.get_state()))
    restored = pipeline.train_iterator(cfg, kjv_tokenizer)
    restored.set_state(state)
    rest = _take(restored, 7)
    assert all(_equal(x, y) for x, y in zip(rest, full[3:]))
    assert not _equal(full[3], full[4])
    mismatched = make_cfg(
        kjv_root, objective, sentence, seq_len // 2, batch_size=32, train_split="validation"
    )
    with pytest.raises(C.ConfigError, match=r"saved with data.seq_len=\d+, the config has"):
        pipeline.train_iterator(mismatched, kjv_tokenizer).set_state(state)


def test_restore_under_another_ul2_mixture_is_a_config_error(kjv_root, kjv_tokenizer):
    cfg = make_cfg(kjv_root, "ul2", seq_len=64, batch_size=8)
    other = make_cfg(kjv_root, "ul2", seq_len=64, batch_size=8, ul2_mixture="R:1.0")
    it = pipeline.train_iterator(cfg, kjv_tokenizer)
    first, second = _take(it, 2)
    state = json.loads(json.dumps(it.get_state()))
    third = next(it)
    assert state["data.ul2_mixture"] == "R:0.4,S:0.2,X:0.4"
    # The other mixture gives other rows, so a silent restore would change the data.
    assert not _equal(first, next(pipeline.train_iterator(other, kjv_tokenizer)))
    with pytest.raises(C.ConfigError) as err:
        pipeline.train_iterator(other, kjv_tokenizer).set_state(state)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg == (
        "data iterator state was saved with data.ul2_mixture='R:0.4,S:0.2,X:0.4', "
        "the config has 'R:1.0'"
    )
    # Settings the ul2 rows do not depend on are not recorded and do not block a restore.
    assert "data.mlm_probability" not in state and "data.prefetch_batches" not in state
    unrelated = make_cfg(kjv_root, "ul2", seq_len=64, batch_size=8, mlm_probability=0.3)
    restored = pipeline.train_iterator(unrelated, kjv_tokenizer)
    restored.set_state(state)
    assert _equal(next(restored), third)
    # A state saved before the mixture and text_key were recorded still restores.
    old = {k: v for k, v in state.items() if k not in ("data.ul2_mixture", "data.text_key")}
    old_restored = pipeline.train_iterator(cfg, kjv_tokenizer)
    old_restored.set_state(old)
    assert _equal(next(old_restored), third) and not _equal(third, second)
    # ... but a key recorded from the start may not be missing.
    with pytest.raises(C.ConfigError, match=r"saved with data.seed=None, the config has 0"):
        pipeline.train_iterator(cfg, kjv_tokenizer).set_state(
            {k: v for k, v in state.items() if k != "data.seed"}
        )


@pytest.mark.parametrize("objective, sentence", [("mlm", "none"), ("mlm", "sop")])
def test_processes_are_disjoint_and_union_the_single_stream(
    kjv_root, kjv_tokenizer, objective, sentence
):
    cfg = make_cfg(kjv_root, objective, sentence, 128, batch_size=16, train_split="validation")
    per_epoch = pipeline.batch_source(cfg, kjv_tokenizer, "validation").rows_per_epoch
    first = per_epoch // 16  # whole batches inside epoch 0; one more crosses into epoch 1
    single = _take(pipeline.train_iterator(cfg, kjv_tokenizer), first + 1)
    p0 = _take(pipeline.train_iterator(cfg, kjv_tokenizer, 0, 2), first + 1)
    p1 = _take(pipeline.train_iterator(cfg, kjv_tokenizer, 1, 2), first + 1)
    for s, a, b in zip(single, p0, p1):
        assert a["input_ids"].shape[0] == b["input_ids"].shape[0] == 8
        assert _equal(s, {k: np.concatenate([a[k], b[k]]) for k in s})
    # The rows themselves: disjoint between processes, their union the single stream.
    source = pipeline.batch_source(cfg, kjv_tokenizer, "validation")

    def pairs(index, count, n):
        ds = pipeline.row_index_dataset(per_epoch, source.shuffle_seed, 16 // count, index, count)
        return [(int(e), int(r)) for k in range(n) for e, r in zip(*ds[k])]

    whole = pairs(0, 1, first + 1)
    assert len(set(whole[:per_epoch])) == per_epoch  # each row once per epoch
    part0, part1 = pairs(0, 2, first + 1), pairs(1, 2, first + 1)
    assert not set(part0) & set(part1) and sorted(part0 + part1) == sorted(whole)
    # A state saved under two processes restores the same global stream on one.
    it = pipeline.train_iterator(cfg, kjv_tokenizer, 1, 2)
    _take(it, 5)
    one = pipeline.train_iterator(cfg, kjv_tokenizer)
    one.set_state(it.get_state())
    assert _equal(next(one), single[5])


def test_masks_are_fresh_each_epoch_and_reproducible(kjv_root, kjv_tokenizer):
    cfg = make_cfg(kjv_root, "mlm", "sop", 128)
    source = pipeline.batch_source(cfg, kjv_tokenizer, "train")
    rows = np.arange(64)
    e0 = source.rows(0, rows)
    again = source.rows(0, rows)
    e1 = source.rows(1, rows)
    assert _equal(e0, again)
    # The same sentence chunks in the next epoch get other masks (and split points).
    differs = [(e0["loss_weights"][i] != e1["loss_weights"][i]).any() for i in range(64)]
    assert np.mean(differs) > 0.9


def test_eval_batches_are_fixed_and_from_validation(kjv_root, kjv_tokenizer):
    cfg = make_cfg(kjv_root, "causal_lm", seq_len=128, batch_size=8)
    a = pipeline.eval_batches(cfg, kjv_tokenizer, 3)
    b = pipeline.eval_batches(cfg, kjv_tokenizer, 3)
    assert len(a) == 3 and all(_equal(x, y) for x, y in zip(a, b))
    assert a[0]["input_ids"].shape == (8, 128)
    half = pipeline.eval_batches(cfg, kjv_tokenizer, 3, process_index=1, process_count=2)
    np.testing.assert_array_equal(half[0]["input_ids"], a[0]["input_ids"][4:])
    corpus = corpora.open_corpus(cfg.data)
    val = " ".join(" ".join(corpora.split_sentences(t)) for t in corpus.texts("validation"))
    ids = a[0]["input_ids"][0]
    seg = a[0]["segment_ids"][0]
    piece = kjv_tokenizer.decode(ids[(seg == seg[-1]) & (ids != kjv_tokenizer.eos_id)][2:])
    assert piece.strip() in val


def test_prefix_lm_and_ul2_batches(kjv_root, kjv_tokenizer):
    b = next(pipeline.train_iterator(make_cfg(kjv_root, "prefix_lm", seq_len=64), kjv_tokenizer))
    # Every document segment of a packed row has its own prefix at its start, with no
    # loss on the labels inside it (prefix LM per document).
    p = b["prefix_mask"].sum(axis=1)
    assert (p >= 1).all() and (p <= 63).all() and len(set(p.tolist())) > 3
    multi = 0
    for row in range(len(p)):
        seg = b["segment_ids"][row]
        docs = [s for s in np.unique(seg) if s > 0]
        multi += len(docs) > 1
        for s in docs:
            idx = np.flatnonzero(seg == s)
            prefix = b["prefix_mask"][row, idx].astype(bool)
            k = int(prefix.sum())
            assert k >= 1 and prefix[:k].all() and not prefix[k:].any(), (row, s)
            assert (b["loss_weights"][row, idx[: k - 1]] == 0).all(), (row, s)
    assert multi > 0  # rows holding several documents are checked
    cfg = make_cfg(kjv_root, "ul2", seq_len=128)
    assert pipeline.lengths(cfg) == (128, 128)
    batches = _take(pipeline.train_iterator(cfg, kjv_tokenizer), 10)
    s = stats.batch_stats(batches, kjv_tokenizer)
    assert (
        set(s["denoiser_fractions"]) == {"R", "X", "S"}
        and min(s["denoiser_fractions"].values()) > 0.1
    )
    b = batches[0]
    assert np.isin(b["input_ids"][:, 0], [7, 8, 9]).all()
    np.testing.assert_array_equal(b["segment_ids"] > 0, b["input_ids"] != 0)
    np.testing.assert_array_equal(b["decoder_segment_ids"] > 0, b["labels"] != 0)
    np.testing.assert_array_equal(b["loss_weights"] > 0, b["labels"] != 0)


def test_ids_stay_below_a_tokenizer_smaller_than_the_model(kjv_root, kjv_tokenizer):
    # model.vocab_size 4096 with kjv's 2048-id tokenizer: rows 2048.. are never fed.
    tok = kjv_tokenizer
    mlm = make_cfg(kjv_root, "mlm", seq_len=128, vocab_size=4096, tokenizer_vocab_size=2048)
    assert pipeline.get_tokenizer(mlm).sha256 == tok.sha256
    batches = _take(pipeline.train_iterator(mlm, tok), 2)
    ids = np.concatenate([b["input_ids"] for b in batches])
    labels = np.concatenate([b["labels"] for b in batches])
    replaced = (ids != labels) & (ids != tok.mask_id)  # MLM's random replacements
    assert replaced.sum() >= 30
    assert np.isin(ids[replaced], tok.normal_ids).all() and ids.max() < 2048
    assert labels.max() < 2048
    t5 = make_cfg(
        kjv_root, "span_corruption", seq_len=128, vocab_size=4096, tokenizer_vocab_size=2048
    )
    b = next(pipeline.train_iterator(t5, tok))
    # Sentinels are the tokenizer's top ids: <extra_id_0> = 2047 is each row's first.
    first = np.array([row[row >= 1948][0] for row in b["input_ids"]])
    assert (first == 2047).all() and (b["labels"][:, 0] == 2047).all()
    for key in ("input_ids", "labels", "decoder_input_ids"):
        assert b[key].max() < 2048, key
    sentinels = np.isin(b["labels"], tok.sentinel_ids)
    assert sentinels.sum() >= 16 * 3
    np.testing.assert_array_equal(sentinels, b["labels"] >= 1948)


# --------------------------------------------------------------------------- bad input


def test_bad_pipeline_inputs(kjv_root, kjv_tokenizer, tmp_path):
    with pytest.raises(
        C.ConfigError, match=r"data.seq_len=4 is below the minimum 8 of objective 'nsp'"
    ):
        make_cfg(kjv_root, "mlm", "nsp", seq_len=4)
    with pytest.raises(
        C.ConfigError, match=r"data.seq_len=6 is below the minimum 8 of objective 'span_corruption'"
    ):
        make_cfg(kjv_root, "span_corruption", seq_len=6)
    cfg = make_cfg(kjv_root, "mlm", seq_len=64)
    wrong = C.Config(model=C.ModelConfig(vocab_size=2048), data=cfg.data, train=cfg.train)
    with pytest.raises(C.ConfigError, match=r"feeds model.family='encoder', not 'decoder'"):
        pipeline.train_iterator(wrong, kjv_tokenizer)
    with pytest.raises(C.ConfigError, match=r"train.batch_size=16 is not divisible by the 3"):
        pipeline.train_iterator(cfg, kjv_tokenizer, 0, 3)
    small_vocab = make_cfg(kjv_root, "mlm", seq_len=64, vocab_size=1024)
    with pytest.raises(C.ConfigError, match=r"model.vocab_size=1024 is smaller than"):
        pipeline.train_iterator(small_vocab, kjv_tokenizer)
    t5 = make_cfg(kjv_root, "span_corruption", seq_len=512, target_len=100)
    with pytest.raises(C.ConfigError, match=r"data.target_len=100 is below the 114 targets"):
        pipeline.lengths(t5)
    src = tmp_path / "docs"
    src.mkdir()
    for i in range(3):
        (src / f"{i}.txt").write_text(f"Document {i} is short. " * (40 if i != 1 else 1))
    tiny = make_cfg(tmp_path / "d", "causal_lm", seq_len=256, corpus=str(src))
    tok = pipeline.get_tokenizer(make_cfg(tmp_path / "d", corpus=str(src), vocab_size=400))
    tiny = make_cfg(tmp_path / "d", "causal_lm", seq_len=256, corpus=str(src), vocab_size=400)
    next(pipeline.train_iterator(tiny, tok))
    with pytest.raises(C.ConfigError, match=r"split 'validation' .* too small for one row") as err:
        pipeline.eval_batches(tiny, tok, 1)
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- CLI


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "t5x_lite.data", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )


def test_cli_stats_show_and_bad_input(kjv_root, kjv_tokenizer):
    out = _cli(
        "--config=configs/bert_tiny.py",
        f"--config.data.data_dir={kjv_root}",
        "--stats",
        "--num_batches=4",
        "--show=1",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    s = json.loads(lines[-1])
    for key in ("non_pad_fraction", "tokens_per_second", "mask_rate", "mask_token_fraction",
                "random_token_fraction", "unchanged_fraction", "positive_fraction"):  # fmt: skip
        assert isinstance(s[key], float), key
    assert s["objective"] == "mlm" and s["sentence_objective"] == "nsp" and s["rows"] == 64
    shown = "\n".join(lines[:-1])
    assert "--- row 0" in shown and "[CLS]" in shown
    assert re.search(r"next_sentence_label: (0 \(B follows A\)|1 \(B is from another document\))",
                     shown), shown  # fmt: skip
    bad = _cli("--config=configs/gpt2_tiny.py", "--config.data.corpus=/no/such/dir", "--stats")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == (
        "error: data.corpus='/no/such/dir' is neither a Bible ('kjv', 'kjv+web+ylt', ...), "
        "'tfds:NAME' nor an existing directory"
    )


def test_worker_processes_give_the_same_stream(kjv_root, kjv_tokenizer):
    cfg = make_cfg(kjv_root, "mlm", seq_len=128, train_split="validation")
    workers = make_cfg(kjv_root, "mlm", seq_len=128, train_split="validation", num_workers=1)
    ref = _take(pipeline.train_iterator(cfg, kjv_tokenizer), 4)
    it = pipeline.train_iterator(workers, kjv_tokenizer)
    got = _take(it, 3)
    assert all(_equal(x, y) for x, y in zip(got, ref))
    state = json.loads(json.dumps(it.get_state()))
    restored = pipeline.train_iterator(workers, kjv_tokenizer)
    restored.set_state(state)
    assert _equal(next(restored), ref[3])
