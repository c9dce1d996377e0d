"""Corpora through TFDS (kjv and joined Bibles, a directory, tfds:NAME), bad input,
preparation rules."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from t5x_lite.config import ConfigError, DataConfig
from t5x_lite.data import bibles, corpora, token_store
from t5x_lite.data.tokenizer import train_sentencepiece


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


# --------------------------------------------------------------------------- kjv


def test_kjv_text_is_cleaned_and_split_into_chapters():
    chapters = corpora.kjv_chapters()
    assert len(chapters) == 1189
    assert sum(len(v) for _, v in chapters) == 31102
    assert chapters[0][0] == "Genesis 1" and chapters[-1][0] == "Revelation 22"
    assert chapters[0][1][0] == "In the beginning God created the heaven and the earth."
    # "darkness [was] upon" -> "darkness was upon"
    assert chapters[0][1][1].startswith(
        "And the earth was without form, and void; and darkness was upon the face"
    )
    text = "\n".join("\n".join(v) for _, v in chapters)
    assert "[" not in text and "]" not in text
    assert not re.search(r"(^|\s)\d+\.\s", text)  # no verse numbers left
    assert chapters[-1][1][-1] == "The grace of our Lord Jesus Christ be with you all. Amen."


def test_kjv_prepared_once_split_and_reused(kjv_root):
    corpus = corpora.open_corpus(DataConfig(data_dir=str(kjv_root)))
    assert corpus.splits() == ["train", "validation"]
    assert corpus.num_documents("validation") == 24  # 2% of 1,189 chapters
    assert corpus.num_documents("train") == 1189 - 24
    texts = list(corpus.texts("validation"))
    assert all(t and "\n" in t for t in texts)
    before = _mtimes(kjv_root / "kjv")
    again = corpora.open_corpus(DataConfig(data_dir=str(kjv_root)))
    assert again.num_documents("train") == 1165
    assert _mtimes(kjv_root / "kjv") == before  # nothing rebuilt


def test_bibles_join_translations_and_hold_out_the_same_chapters(tmp_path):
    corpus = corpora.open_corpus(DataConfig(corpus="kjv+web", data_dir=str(tmp_path)))
    assert corpus.num_documents("train") == 2 * 1165
    assert corpus.num_documents("validation") == 2 * 24
    source = corpus.builder.as_data_source(split="validation")
    titles = [source[i]["title"].decode() for i in range(len(source))]
    kjv = [t[4:] for t in titles if t.startswith("KJV ")]
    web = [t[4:] for t in titles if t.startswith("WEB ")]
    assert len(kjv) == len(web) == 24 and sorted(kjv) == sorted(web)  # same chapters
    train = corpus.builder.as_data_source(split="train")
    train_titles = {train[i]["title"].decode() for i in range(len(train))}
    assert not {f"WEB {t}" for t in kjv} & train_titles
    texts = {t: x for t, x in zip(titles, corpus.texts("validation"))}
    first = next(t for t in titles if t.startswith("KJV "))
    assert texts[first] != texts["WEB " + first[4:]]  # two translations, not a copy
    web_genesis = bibles.chapters("web")[0][1]
    assert web_genesis[0] == "In the beginning God created the heavens and the earth."
    assert corpus.key == "bibles-kjv_web-1.0.0"


def test_bible_spec_errors(tmp_path, monkeypatch):
    assert bibles.parse_spec("kjv+ylt") == ("kjv", "ylt")
    assert bibles.parse_spec("/data/a+b") is None  # a path, not a Bible
    with pytest.raises(ConfigError, match=r"'nkjv' is no Bible translation \(known: kjv, asv"):
        corpora.open_corpus(DataConfig(corpus="kjv+nkjv", data_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="names a translation twice"):
        corpora.open_corpus(DataConfig(corpus="kjv+kjv", data_dir=str(tmp_path)))
    monkeypatch.setitem(bibles.VERSIONS, "web", "pythonbible_not_installed")
    with pytest.raises(ConfigError, match=r"needs the package pythonbible-not-installed \(pip"):
        bibles.chapters("web")


def test_split_helpers():
    assert corpora.split_sentences("In the beginning. God created\nthe heaven!  And  earth") == [
        "In the beginning.",
        "God created",
        "the heaven!",
        "And  earth",
    ]
    assert sorted(corpora.validation_indices(100)) == [25, 75]
    assert corpora.validation_indices(1) == set()
    assert corpora.validation_indices(2) == {1}


# --------------------------------------------------------------------------- directory


def _write_corpus(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "a.txt").write_text("First file. It has two sentences.\n")
    (path / "b.txt").write_text("Zweite Datei mit Umlauten: äöü.\n")
    (path / "sub").mkdir()
    records = [{"text": "json one", "id": 1}, {"text": "json two"}, {"text": "json three"}]
    (path / "sub" / "c.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    (path / ".hidden.txt").write_text("never read")
    (path / "notes.md").write_text("not a corpus file")
    return path


def test_directory_corpus_txt_and_jsonl(tmp_path):
    src = _write_corpus(tmp_path / "docs")
    data = DataConfig(corpus=str(src), data_dir=str(tmp_path / "tfds"))
    corpus = corpora.open_corpus(data)
    train = list(corpus.texts("train"))
    val = list(corpus.texts("validation"))
    assert len(train) == 4 and len(val) == 1
    assert sorted(train + val) == sorted(
        [
            "First file. It has two sentences.\n",
            "Zweite Datei mit Umlauten: äöü.\n",
            "json one",
            "json two",
            "json three",
        ]
    )
    before = _mtimes(tmp_path / "tfds")
    corpora.open_corpus(data)
    assert _mtimes(tmp_path / "tfds") == before
    # Edited content is a new dataset next to the old one, which stays as it was.
    (src / "b.txt").write_text("Changed text, longer than before.\n")
    edited = corpora.open_corpus(data)
    assert edited.key != corpus.key
    assert {k: v for k, v in _mtimes(tmp_path / "tfds").items() if k in before} == before


def test_directory_bad_utf8_skip_warns_with_count_and_error_names_file(tmp_path):
    src = tmp_path / "docs"
    src.mkdir()
    (src / "good.txt").write_text("Readable text.")
    (src / "bad1.txt").write_bytes(b"Latin-1 \xe9t\xe9\n")
    (src / "bad2.txt").write_bytes(b"\xff\xfe\x00broken")
    root = tmp_path / "tfds"
    # error: a one-line ConfigError, and the failed preparation does not count.
    with pytest.raises(ConfigError, match=r"bad1\.txt is not valid UTF-8") as err:
        corpora.open_corpus(DataConfig(corpus=str(src), data_dir=str(root), on_bad_utf8="error"))
    assert "\n" not in str(err.value)
    assert not list(root.rglob("dataset_info.json"))
    # skip: prepared without them, with a counted warning on every open.
    with pytest.warns(UserWarning, match=r"skipped 2 file\(s\) that are not valid UTF-8"):
        corpus = corpora.open_corpus(DataConfig(corpus=str(src), data_dir=str(root)))
    assert corpus.splits() == ["train"]  # one document: no validation split
    assert list(corpus.texts("train")) == ["Readable text."]
    with pytest.warns(UserWarning, match="skipped 2"):
        corpora.open_corpus(DataConfig(corpus=str(src), data_dir=str(root)))
    # error mode on the prepared dataset still refuses it.
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        corpora.open_corpus(DataConfig(corpus=str(src), data_dir=str(root), on_bad_utf8="error"))


@pytest.mark.parametrize(
    "make, pattern",
    [
        (
            lambda p: p / "missing",
            r"neither a Bible \('kjv', 'kjv\+web\+ylt', ...\), 'tfds:NAME' nor an existing dir",
        ),
        (lambda p: (p / "empty").mkdir() or p / "empty", r"contains no \.txt or \.jsonl files"),
        (lambda p: (p / "f.txt").write_text("x") and p / "f.txt", r"is a file"),
    ],
)
def test_bad_corpus_paths(tmp_path, make, pattern):
    path = make(tmp_path)
    with pytest.raises(ConfigError, match=pattern) as err:
        corpora.open_corpus(DataConfig(corpus=str(path), data_dir=str(tmp_path / "tfds")))
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_bad_jsonl_records(tmp_path):
    src = tmp_path / "docs"
    src.mkdir()
    (src / "x.jsonl").write_text('{"text": "ok"}\n{broken\n')
    with pytest.raises(ConfigError, match=r"x\.jsonl:2 is not valid JSON"):
        corpora.open_corpus(DataConfig(corpus=str(src), data_dir=str(tmp_path / "t1")))
    (src / "x.jsonl").write_text('{"body": "no text field"}\n')
    with pytest.raises(ConfigError, match=r"x\.jsonl:1 has no string field data.text_key='text'"):
        corpora.open_corpus(DataConfig(corpus=str(src), data_dir=str(tmp_path / "t2")))
    corpus = corpora.open_corpus(
        DataConfig(corpus=str(src), data_dir=str(tmp_path / "t3"), text_key="body")
    )
    assert list(corpus.texts("train")) == ["no text field"]


# --------------------------------------------------------------------------- tfds:NAME


class TinyWords(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A tiny dataset prepared by the test itself; ``fail_after`` simulates a crash."""

    VERSION = tfds.core.Version("1.0.0")
    fail_after: int | None = None

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {"body": tfds.features.Text(), "n": tfds.features.Scalar(np.int32)}
            ),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(40), "test": self._generate_examples(5)}

    def _generate_examples(self, n):
        for i in range(n):
            if self.fail_after is not None and i >= self.fail_after:
                raise RuntimeError("preparation interrupted")
            body = b"broken \xff bytes" if i == 3 else f"Record number {i}. Words.".encode()
            yield i, {"body": body, "n": i}


def test_tfds_dataset_by_name_with_interrupted_preparation(tmp_path):
    root = tmp_path / "tfds"
    crashing = TinyWords(data_dir=str(root), file_format="array_record")
    crashing.fail_after = 7
    with pytest.raises(RuntimeError, match="interrupted"):
        crashing.download_and_prepare()
    assert not crashing.is_prepared()
    with pytest.raises(ConfigError, match=r"no TFDS dataset 'tiny_words' registered or prepared"):
        corpora.open_corpus(DataConfig(corpus="tfds:tiny_words", data_dir=str(root)))
    TinyWords(data_dir=str(root), file_format="array_record").download_and_prepare()
    data = DataConfig(corpus="tfds:tiny_words", data_dir=str(root), text_key="body")
    corpus = corpora.open_corpus(data)
    assert corpus.splits() == ["test", "train"] and corpus.num_documents("train") == 40
    with pytest.warns(UserWarning, match=r"skipped 1 record\(s\) of split 'train'"):
        texts = list(corpus.texts("train"))
    assert sorted(texts) == sorted(f"Record number {i}. Words." for i in range(40) if i != 3)
    strict = corpora.open_corpus(DataConfig(**{**data.__dict__, "on_bad_utf8": "error"}))
    with pytest.raises(ConfigError, match=r"record \d+ of split 'train' is not valid UTF-8"):
        list(strict.texts("train"))
    with pytest.raises(ConfigError, match=r"data.text_key='text' is not a feature .*body, n"):
        corpora.open_corpus(DataConfig(corpus="tfds:tiny_words", data_dir=str(root)))


def test_unknown_and_unprepared_tfds_names(tmp_path):
    with pytest.raises(ConfigError, match=r"no TFDS dataset 'no_such_corpus_xyz'") as err:
        corpora.open_corpus(DataConfig(corpus="tfds:no_such_corpus_xyz", data_dir=str(tmp_path)))
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"'tfds:mnist' is not prepared in data_dir"):
        corpora.open_corpus(DataConfig(corpus="tfds:mnist", data_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="names no dataset"):
        corpora.open_corpus(DataConfig(corpus="tfds:", data_dir=str(tmp_path)))


# --------------------------------------------------------------------------- token store


def test_token_store_layout_cache_and_interruption(tmp_path):
    src = _write_corpus(tmp_path / "docs")
    data = DataConfig(corpus=str(src), data_dir=str(tmp_path / "tfds"))
    corpus = corpora.open_corpus(data)
    sentences = [s for t in corpus.texts("train") for s in corpora.split_sentences(t)] * 30
    tok = train_sentencepiece(sentences, 400, "bpe", tmp_path / "tok.model", str(src))
    store = token_store.build(["A b. C.", "", "D"], tok)
    enc = [tok.encode(s) for s in ("A b.", "C.", "D")]
    assert store.tokens.tolist() == enc[0] + enc[1] + enc[2]
    assert store.sentence_starts.tolist() == np.cumsum([0, *map(len, enc)]).tolist()
    assert store.doc_sentences.tolist() == [0, 2, 3]  # the empty document is dropped
    root = tmp_path / "tfds"
    cache = root / "t5x_lite_tokens" / corpus.key
    # A crashed earlier build leaves only a temporary folder: it does not count.
    (cache / ".train-partial.tmp").mkdir(parents=True)
    split = token_store.load_or_build(corpus, "train", tok, root)
    assert split.num_docs == 4 and split.path.startswith(str(cache))
    texts = list(corpus.texts("train"))
    assert [tok.decode(split.document(d)) for d in range(4)] == [
        " ".join(corpora.split_sentences(t)) for t in texts
    ]
    before = _mtimes(cache)
    again = token_store.load_or_build(corpus, "train", tok, root)
    assert _mtimes(cache) == before
    np.testing.assert_array_equal(again.tokens, split.tokens)
    with pytest.raises(ConfigError, match=r"split 'dev' is not in data\.corpus"):
        token_store.load_or_build(corpus, "dev", tok, root)
