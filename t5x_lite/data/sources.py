"""Local corpus files read as a stream of documents, never a whole file at a time.

Formats (by file name):

* ``*.txt``: the file is one document.
* ``*.jsonl``, ``*.jsonl.gz``, ``*.jsonl.zst``: one document per line, its
  ``data.text_key`` field; compressed files are decompressed in 1 MiB chunks.
* ``*.parquet``: one document per row of the ``data.text_key`` column, read by record
  batch (``pyarrow.parquet``).
* ``*.arrow``: Arrow IPC, stream or file format, one document per row; this is what
  Hugging Face ``datasets`` writes with ``save_to_disk`` (``data-00000-of-00001.arrow``
  beside ``dataset_info.json`` and ``state.json``, which are not read). A stream
  without its end-of-stream marker is refused as truncated (cut between two record
  batches it would read as a shorter valid stream); a string value that is not UTF-8
  is one bad record (``data.on_bad_utf8``).

``data.corpus`` names a directory (every such file below it, hidden paths skipped) or a
glob (``"path/*.jsonl.gz"``, ``**`` allowed); files are read in sorted order. Every
problem with a file is a one-line ConfigError naming it.

    >>> import tempfile, gzip, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "a.txt").write_text("One document.")
    >>> with gzip.open(d / "b.jsonl.gz", "wt") as f:
    ...     _ = f.write('{"text": "two"}\\n{"text": "three"}\\n')
    >>> [(k, t) for k, t, _ in documents(d / "b.jsonl.gz", "b.jsonl.gz", "text")]
    [('b.jsonl.gz:1', 'two'), ('b.jsonl.gz:2', 'three')]
    >>> [p.name for p in corpus_files(str(d))[1]]
    ['a.txt', 'b.jsonl.gz']
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import zlib
from collections.abc import Iterator
from pathlib import Path

from t5x_lite.config import ConfigError

SUFFIXES = (".txt", ".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet", ".arrow")
CHUNK_BYTES = 1 << 20
BATCH_ROWS = 1024


class BadUtf8:
    """In place of the text of a document that is not valid UTF-8: ``where`` names the
    file (``.txt``) or the record (``file:line``, ``file:row``), ``byte`` the offset of
    the first bad byte."""

    def __init__(self, where: str, byte: int):
        self.where, self.byte = where, byte


def is_corpus_file(path: Path) -> bool:
    return path.name.endswith(SUFFIXES)


def is_glob(spec: str) -> bool:
    return any(c in spec for c in "*?[")


def corpus_files(spec: str) -> tuple[Path, list[Path]]:
    """``(root, files)`` of a directory or glob ``spec``; ``root`` is what keys are
    relative to (the directory, or the glob's fixed leading folder)."""
    if is_glob(spec):
        pattern = os.path.expanduser(spec)
        files = sorted(
            Path(p).resolve()
            for p in glob.glob(pattern, recursive=True)
            if os.path.isfile(p) and is_corpus_file(Path(p))
        )
        fixed = []
        for part in Path(pattern).parts:
            if is_glob(part):
                break
            fixed.append(part)
        root = Path(*fixed).resolve() if fixed else Path.cwd()
        return root, files
    root = Path(os.path.expanduser(spec)).resolve()
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and is_corpus_file(p)
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    return root, files


Document = tuple[str, "str | BadUtf8", int]


def documents(path: Path, rel: str, text_key: str) -> Iterator[Document]:
    """``(key, text, source bytes read so far)`` of every document of one file, in
    order; a text that is not UTF-8 comes as a :class:`BadUtf8` (the caller skips it or
    stops)."""
    name = path.name
    if name.endswith(".txt"):
        raw = path.read_bytes()
        yield rel, _decode(raw, str(path)), len(raw)
    elif name.endswith((".jsonl", ".jsonl.gz", ".jsonl.zst")):
        yield from _jsonl(path, rel, text_key)
    elif name.endswith(".parquet"):
        yield from _arrow_table(path, rel, text_key, parquet=True)
    elif name.endswith(".arrow"):
        yield from _arrow_table(path, rel, text_key, parquet=False)
    else:
        raise ConfigError(f"data.corpus: {path} is not one of {', '.join(SUFFIXES)}")


def _decode(raw: bytes, where: str) -> str | BadUtf8:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return BadUtf8(where, e.start)


def _chunks(path: Path) -> Iterator[tuple[bytes, int]]:
    """Decompressed chunks of ``path`` with the compressed bytes read so far."""
    name = path.name
    try:
        if name.endswith(".gz"):
            with open(path, "rb") as raw, gzip.GzipFile(fileobj=raw) as f:
                while chunk := f.read(CHUNK_BYTES):
                    yield chunk, raw.tell()
        elif name.endswith(".zst"):
            import zstandard

            with open(path, "rb") as f:
                d, fed = zstandard.ZstdDecompressor().decompressobj(), False
                while raw := f.read(CHUNK_BYTES):
                    while raw:
                        out, fed = d.decompress(raw), True
                        if out:
                            yield out, f.tell()
                        raw = b""
                        if d.eof:  # the next frame, if any, starts in unused_data
                            raw = d.unused_data
                            d, fed = zstandard.ZstdDecompressor().decompressobj(), False
                if fed:
                    raise EOFError("compressed file ended before the end of its last frame")
        else:
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK_BYTES):
                    yield chunk, f.tell()
    except (EOFError, OSError, zlib.error) as e:
        raise ConfigError(
            f"data.corpus: {path} is truncated or corrupt ({type(e).__name__}: "
            f"{' '.join(str(e).split())[:120]})"
        ) from None
    except Exception as e:  # zstandard.ZstdError
        if type(e).__name__ != "ZstdError":
            raise
        raise ConfigError(f"data.corpus: {path} is truncated or corrupt (ZstdError: {e})") from None


def _jsonl(path: Path, rel: str, text_key: str) -> Iterator[Document]:
    rest, n, read = b"", 0, 0
    for chunk, read in _chunks(path):
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        for line in lines:
            n += 1
            if line.strip():
                yield (*_record(path, rel, n, line, text_key), read)
    if rest.strip():
        yield (*_record(path, rel, n + 1, rest, text_key), read)


def _record(path: Path, rel: str, n: int, line: bytes, text_key: str) -> tuple[str, str | BadUtf8]:
    text = _decode(line, f"{path}:{n}")
    if isinstance(text, BadUtf8):
        return f"{rel}:{n}", text
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"data.corpus: {path}:{n} is not valid JSON ({e.msg})") from None
    if not isinstance(record, dict) or not isinstance(record.get(text_key), str):
        raise ConfigError(f"data.corpus: {path}:{n} has no string field data.text_key={text_key!r}")
    return f"{rel}:{n}", record[text_key]


def _arrow_table(path: Path, rel: str, text_key: str, parquet: bool) -> Iterator[Document]:
    import pyarrow as pa

    try:
        if parquet:
            import pyarrow.parquet as pq

            file = pq.ParquetFile(path)
            schema = file.schema_arrow
        else:
            source = pa.memory_map(str(path))
            try:
                reader = pa.ipc.open_stream(source)
            except pa.ArrowInvalid:
                reader = pa.ipc.open_file(source)
            schema = reader.schema
            if isinstance(reader, pa.ipc.RecordBatchStreamReader) and not _ends_stream(path):
                raise ConfigError(
                    f"data.corpus: {path} is truncated (an Arrow IPC stream ends with the "
                    "end-of-stream marker, this one does not)"
                )
    except (pa.ArrowException, OSError) as e:
        kind = "Parquet" if parquet else "Arrow IPC"
        raise ConfigError(
            f"data.corpus: {path} is not a readable {kind} file ({' '.join(str(e).split())[:120]})"
        ) from None
    if text_key not in schema.names:
        raise ConfigError(
            f"data.corpus: {path} has no column data.text_key={text_key!r} "
            f"(columns: {', '.join(schema.names)})"
        )
    kind = schema.field(text_key).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind)
            or pa.types.is_large_binary(kind)):  # fmt: skip
        raise ConfigError(
            f"data.corpus: {path} column data.text_key={text_key!r} holds {kind}, not text"
        )
    size = path.stat().st_size
    try:
        if parquet:
            batches = file.iter_batches(batch_size=BATCH_ROWS, columns=[text_key])
        elif isinstance(reader, pa.ipc.RecordBatchFileReader):
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        else:
            batches = iter(reader)
        row = 0
        for batch in batches:
            column = batch.column(batch.schema.get_field_index(text_key))
            if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
                # As bytes: a value that is not UTF-8 is one bad record (data.on_bad_utf8),
                # not a UnicodeDecodeError of the whole batch.
                large = pa.types.is_large_string(column.type)
                column = column.view(pa.large_binary() if large else pa.binary())
            for value in column.to_pylist():
                row += 1
                if value is None:
                    continue
                if isinstance(value, bytes):
                    value = _decode(value, f"{path}:{row}")
                yield f"{rel}:{row}", value, size
    except (pa.ArrowException, OSError) as e:  # a cut message body is an OSError
        raise ConfigError(
            f"data.corpus: {path} is truncated or corrupt ({' '.join(str(e).split())[:120]})"
        ) from None


_ARROW_EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"  # continuation marker, length 0


def _ends_stream(path: Path) -> bool:
    """Whether an Arrow IPC stream file ends with the end-of-stream marker (pyarrow and
    ``datasets`` write it on close): a stream cut between two record batches reads as
    a shorter valid stream otherwise."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() < len(_ARROW_EOS):
            return False
        f.seek(-len(_ARROW_EOS), os.SEEK_END)
        return f.read() == _ARROW_EOS
