"""Run paths: a local directory or an object-store URL (``gs://bucket/run``), one API.

Every file of a workdir (``config.json``, ``tokenizer.model``, ``peft.json``,
``best.json``, metrics, plots, checkpoints) and every base a run reads
(``train.init_from``, a PEFT base, ``t5x_lite.load``, export) is reached through
:func:`path`, an ``etils.epath.Path`` (the path layer orbax uses): a local path is made
absolute, a URL keeps its scheme, so ``gs://bucket/run`` never becomes
``$PWD/gs:/bucket/run``::

    >>> os.fspath(path("gs://bucket/run", "checkpoints"))
    'gs://bucket/run/checkpoints'
    >>> path("runs/x") == path(os.path.abspath("runs/x"))
    True
    >>> is_url("gs://bucket/run"), is_url("runs/x")
    (True, False)

epath reaches ``gs://`` through ``tensorflow``'s gfile when it is installed, else
through fsspec, which needs ``gcsfs`` (``pip install gcsfs``); orbax's arrays go
through TensorStore's own GCS driver. :func:`check_url` names a missing client or
bucket in one line before a run writes anything.
"""

from __future__ import annotations

import importlib.util
import os

from etils import epath

from t5x_lite.config import ConfigError


def is_url(p: str | os.PathLike) -> bool:
    """Whether ``p`` names an object store (``scheme://...``) rather than a local path."""
    return "://" in os.fspath(p)


def path(p: str | os.PathLike, *names: str) -> epath.Path:
    """``p/names...`` as an epath Path: local paths absolute (``~`` expanded), URLs as given."""
    text = os.fspath(p)
    root = text if is_url(text) else os.path.abspath(os.path.expanduser(text))
    return epath.Path(root).joinpath(*names)


def write_text(target: epath.Path, text: str) -> None:
    """``text`` (UTF-8) at ``target``, never half-written (as :func:`_write_whole`)."""
    _write_whole(target, text.encode("utf-8"))


def write_new_bytes(target: epath.Path, data: bytes) -> None:
    """``data`` at ``target`` (absent: the caller checked), never half-written (as
    :func:`_write_whole`); its folder is created first."""
    target.parent.mkdir(parents=True, exist_ok=True)
    _write_whole(target, data)


def _write_whole(target: epath.Path, data: bytes) -> None:
    """A local file through a sibling temporary file and a rename; an object written
    whole (object stores have no partial objects)."""
    if is_url(target):
        target.write_bytes(data)
        return
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)


# The client epath needs per scheme when tensorflow (gfile) is absent.
_FSSPEC_CLIENTS = {"gs": "gcsfs", "s3": "s3fs", "az": "adlfs", "hf": "huggingface_hub"}


def check_url(url: str, what: str) -> None:
    """One-line ConfigError unless the store of ``url`` can be reached: its client is
    installed and its bucket exists (``what`` names the flag or field, e.g.
    ``--workdir``). Reads only; local paths pass.

    E.g. ``--workdir=gs://b/run: gs:// paths need gcsfs (pip install gcsfs) or
    tensorflow`` or ``--workdir=gs://nope/run: bucket gs://nope does not exist or is
    not readable with these credentials``.
    """
    if not is_url(url):
        return
    scheme, _, rest = url.partition("://")
    client = _FSSPEC_CLIENTS.get(scheme)
    if client is None:
        raise ConfigError(
            f"{what}={url}: {scheme}:// is not a supported store (local paths, "
            f"{', '.join(s + '://' for s in _FSSPEC_CLIENTS)})"
        )
    if not (importlib.util.find_spec(client) or importlib.util.find_spec("tensorflow")):
        raise ConfigError(
            f"{what}={url}: {scheme}:// paths need {client} (pip install {client}) or tensorflow"
        )
    bucket = rest.split("/", 1)[0]
    try:
        found = epath.Path(f"{scheme}://{bucket}").exists()
    except Exception as e:  # credentials, network: the client's own first line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ConfigError(f"{what}={url}: cannot reach {scheme}://{bucket} ({first})") from None
    if not found:
        raise ConfigError(
            f"{what}={url}: bucket {scheme}://{bucket} does not exist or is not readable with "
            "these credentials"
        )
