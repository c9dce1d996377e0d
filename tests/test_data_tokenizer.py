"""SentencePiece tokenizer: reserved ids, Unicode round trip, caching, bad input."""

from __future__ import annotations

import dataclasses
import io
import random
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
from data_fixtures import make_cfg

from t5x_lite import config as C
from t5x_lite.config import ConfigError
from t5x_lite.data import pipeline
from t5x_lite.data.tokenizer import Tokenizer


def test_reserved_ids_of_a_trained_vocabulary(kjv_tokenizer):
    tok = kjv_tokenizer
    assert tok.vocab_size == 2048
    assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.unk_id) == (0, 1, 2, 3)
    assert (tok.cls_id, tok.sep_id, tok.mask_id) == (4, 5, 6)
    assert tok.mode_ids == {"R": 7, "X": 8, "S": 9}
    assert [tok.id_to_piece(i) for i in range(10)] == [
        "<pad>", "</s>", "<s>", "<unk>", "[CLS]", "[SEP]", "[MASK]", "[NLU]", "[NLG]", "[S2S]",
    ]  # fmt: skip
    assert tok.sentinel_id(0) == 2047 and tok.sentinel_id(99) == 1948
    assert tok.id_to_piece(2047) == "<extra_id_0>" and tok.id_to_piece(1948) == "<extra_id_99>"
    assert tok.id_to_piece(10) == "<0x00>" and tok.id_to_piece(265) == "<0xFF>"  # bytes
    assert tok.special_mask[[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 1948, 2047]].all()
    assert tok.special_mask.sum() == 110
    assert not np.isin(tok.normal_ids, np.flatnonzero(tok.special_mask)).any()
    assert len(tok.normal_ids) == 2048 - 110 - 256  # ordinary pieces, bytes excluded
    assert tok.encode("In the beginning God") == [
        tok._sp.piece_to_id(p) for p in tok._sp.encode_as_pieces("In the beginning God")
    ]
    assert tok.decode(tok.encode("In the beginning God created")) == "In the beginning God created"
    assert tok.decode([4, *tok.encode("Amen"), 6, 5, 2047]) == "[CLS] Amen[MASK][SEP]<extra_id_0>"


def _random_unicode(r: random.Random, n: int) -> str:
    ranges = [
        (0x20, 0x7E), (0x09, 0x0D), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF),
        (0x590, 0x6FF), (0x900, 0x97F), (0x3040, 0x30FF), (0x4E00, 0x9FFF),
        (0xAC00, 0xD7A3), (0x1F300, 0x1FAFF), (0x300, 0x36F), (0xFB00, 0xFB06),
        (0xFF01, 0xFF5E), (0x0, 0x1F), (0x200B, 0x200F), (0x10000, 0x1004F),
    ]  # fmt: skip
    out = []
    for _ in range(n):
        lo, hi = r.choice(ranges)
        out.append(chr(r.randint(lo, hi)))
    return "".join(out)


def test_any_unicode_round_trips(kjv_tokenizer):
    r = random.Random(0)
    cases = [_random_unicode(r, r.randint(0, 60)) for _ in range(300)]
    cases += ["", " ", "  two  spaces ", "tab\there\nnew\r\nline", "ﬁ ＡＢ", "[MASK]<extra_id_3>"]
    for text in cases:
        assert kjv_tokenizer.decode(kjv_tokenizer.encode(text)) == text, repr(text)


def test_get_tokenizer_caches_and_copies_without_overwriting(kjv_root, kjv_tokenizer, tmp_path):
    cfg = make_cfg(kjv_root)
    mtime = Path(kjv_tokenizer.path).stat().st_mtime_ns
    again = pipeline.get_tokenizer(cfg)
    assert again.path == kjv_tokenizer.path and again.sha256 == kjv_tokenizer.sha256
    assert Path(again.path).stat().st_mtime_ns == mtime  # reused, not retrained
    work = tmp_path / "run"
    copied = pipeline.get_tokenizer(cfg, str(work))
    assert copied.path == str(work / "tokenizer.model") and copied.sha256 == again.sha256
    assert pipeline.get_tokenizer(cfg, str(work)).sha256 == again.sha256  # resume: fine
    # Another explicit tokenizer for the same workdir is refused; the file stays.
    other = _plain_model(tmp_path / "other.model", pad_id=0)
    explicit = make_cfg(kjv_root, tokenizer=str(other))
    with pytest.raises(ConfigError, match="exists and differs") as err:
        pipeline.get_tokenizer(explicit, str(work))
    assert "\n" not in str(err.value)
    assert Tokenizer(work / "tokenizer.model").sha256 == again.sha256
    with pytest.raises(ConfigError, match="does not exist"):
        pipeline.get_tokenizer(make_cfg(kjv_root, tokenizer=str(tmp_path / "nope.model")))


def _plain_model(path: Path, pad_id: int, vocab_size: int = 150) -> Path:
    """A SentencePiece model trained outside t5x_lite (T5-like ids, no reserved pieces)."""
    buf = io.BytesIO()
    lines = [f"line {i} with some words and numbers {i * 7}" for i in range(200)]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=buf,
        vocab_size=vocab_size,
        pad_id=pad_id,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        minloglevel=2,
    )
    path.write_bytes(buf.getvalue())
    return path


def test_existing_model_without_reserved_pieces_gets_them_on_top(tmp_path):
    tok = Tokenizer(_plain_model(tmp_path / "t5like.model", pad_id=0))
    # bos, [CLS], [SEP], [MASK] and three mode tokens, then 100 sentinels, T5 style.
    assert tok.vocab_size == 150 + 7 + 100
    assert (tok.pad_id, tok.eos_id, tok.unk_id, tok.bos_id) == (0, 1, 2, 150)
    assert (tok.cls_id, tok.sep_id, tok.mask_id) == (151, 152, 153)
    assert tok.sentinel_id(0) == 256 and tok.sentinel_id(99) == 157
    assert tok.decode([*tok.encode("line 3"), 256, 153]) == "line 3<extra_id_0>[MASK]"
    assert tok.special_mask[150:].all()
    with pytest.raises(ConfigError, match="pad id is -1"):
        Tokenizer(_plain_model(tmp_path / "nopad.model", pad_id=-1))
    (tmp_path / "junk.model").write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="is not a SentencePiece model"):
        Tokenizer(tmp_path / "junk.model")


def test_vocab_too_large_or_small_for_the_corpus(tmp_path):
    src = tmp_path / "tiny"
    src.mkdir()
    for i in range(3):
        (src / f"{i}.txt").write_text(f"A small corpus, file {i}. Few distinct words here.\n")
    big = make_cfg(tmp_path / "d1", corpus=str(src), vocab_size=4096)
    with pytest.raises(ConfigError, match=r"data.corpus=.*tiny.* model.vocab_size=4096") as err:
        pipeline.get_tokenizer(big)
    assert "\n" not in str(err.value)
    assert not list((tmp_path / "d1").rglob("*.model"))
    small = make_cfg(tmp_path / "d2", corpus=str(src), vocab_size=300)
    with pytest.raises(ConfigError, match=r"model.vocab_size=300 is too small"):
        pipeline.get_tokenizer(small)
    # A smaller tokenizer is named by its own field.
    part = make_cfg(tmp_path / "d3", corpus=str(src), vocab_size=8192, tokenizer_vocab_size=4096)
    hint = r": .*<= 364\. \(data.tokenizer_vocab_size <= 464 with the sentinels\)$"
    with pytest.raises(ConfigError, match=r"vocabulary of data.tokenizer_vocab_size=4096" + hint):
        pipeline.get_tokenizer(part)
    at_limit = make_cfg(tmp_path / "d3", corpus=str(src), vocab_size=8192, tokenizer_vocab_size=464)
    assert pipeline.get_tokenizer(at_limit).vocab_size == 464  # the hint is exact


def test_unigram_tokenizer_has_the_same_layout(tmp_path):
    src = tmp_path / "docs"
    src.mkdir()
    r = random.Random(1)
    words = ["".join(r.choices("abcdefghiklmnoprstuvw", k=r.randint(3, 8))) for _ in range(3000)]
    words += ["gamma", "delta"]
    for i in range(20):
        (src / f"{i}.txt").write_text(
            "\n".join(" ".join(r.choices(words, k=12)) + "." for _ in range(30))
        )
    cfg = make_cfg(tmp_path / "d", corpus=str(src), vocab_size=420, tokenizer_type="unigram")
    tok = pipeline.get_tokenizer(cfg)
    assert tok.vocab_size == 420 and tok.sentinel_id(0) == 419 and tok.mask_id == 6
    assert "unigram-420" in Path(tok.path).name
    assert tok.decode(tok.encode("gamma delta, ωμέγα")) == "gamma delta, ωμέγα"


def test_tokenizer_smaller_than_the_model(kjv_root, kjv_tokenizer, tmp_path):
    # data.tokenizer_vocab_size: kjv's 2048-id tokenizer under a 4096-row embedding table.
    cfg = make_cfg(kjv_root, vocab_size=4096, tokenizer_vocab_size=2048)
    tok = pipeline.get_tokenizer(cfg)
    assert tok.path == kjv_tokenizer.path and tok.vocab_size == 2048  # same cached file
    assert tok.sentinel_id(0) == 2047 and tok.sentinel_id(99) == 1948
    assert pipeline.tokenizer_size(cfg) == (2048, "data.tokenizer_vocab_size")
    work = tmp_path / "run"
    assert pipeline.get_tokenizer(cfg, str(work)).sha256 == tok.sha256
    assert pipeline.get_tokenizer(cfg, str(work)).vocab_size == 2048  # resume
    # Resuming that workdir with another tokenizer size is refused, the file kept.
    other = make_cfg(kjv_root, vocab_size=4096, tokenizer_vocab_size=1024)
    with pytest.raises(ConfigError, match=r"has 2048 ids but data.tokenizer_vocab_size=1024"):
        pipeline.get_tokenizer(other, str(work))
    assert Tokenizer(work / "tokenizer.model").sha256 == tok.sha256
    # Larger than the model: one line naming both fields, before anything is trained.
    with pytest.raises(ConfigError) as err:
        make_cfg(kjv_root, vocab_size=2048, tokenizer_vocab_size=4096)
    assert str(err.value) == "data.tokenizer_vocab_size=4096 exceeds model.vocab_size=2048"
    bad = C.Config(model=C.ModelConfig(vocab_size=2048), data=cfg.data)  # not validated
    with pytest.raises(ConfigError, match=r"data.tokenizer_vocab_size=2048 exceeds model"):
        pipeline.get_tokenizer(dataclasses.replace(bad, model=C.ModelConfig(vocab_size=1024)))
    with pytest.raises(ConfigError, match=r"data.tokenizer_vocab_size=0 must be a positive"):
        make_cfg(kjv_root, tokenizer_vocab_size=0)


def test_existing_model_may_be_smaller_than_the_model_never_larger(kjv_root, tmp_path):
    path = _plain_model(tmp_path / "t5like.model", pad_id=0)  # 150 pieces -> 257 ids
    small = pipeline.get_tokenizer(make_cfg(kjv_root, vocab_size=512, tokenizer=str(path)))
    assert small.vocab_size == 257 and small.sentinel_id(0) == 256
    with pytest.raises(ConfigError) as err:
        pipeline.get_tokenizer(make_cfg(kjv_root, vocab_size=200, tokenizer=str(path)), tmp_path)
    assert "model.vocab_size=200 is smaller than the vocabulary of" in str(err.value)
    assert "(257 ids" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "tokenizer.model").exists()
