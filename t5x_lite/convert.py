"""Hugging Face checkpoints in and out: ``import_hf`` and ``export_hf``.

A Hugging Face directory is ``config.json`` + ``model.safetensors`` (no hub access
anywhere). Per-architecture name maps live in :mod:`t5x_lite.hf` (one module per
``model_type``, each with ``from_hf(hf_config, tensors) -> (ModelConfig, params)``
and ``to_hf(cfg, params) -> (hf_config, tensors)``); this module only reads, checks
and writes files and dispatches on ``model_type``.

    >>> cfg, params = import_hf("/path/to/gpt2")          # doctest: +SKIP
    >>> export_hf(cfg, params, "/tmp/gpt2_roundtrip")    # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from t5x_lite.config import ConfigError, ModelConfig
from t5x_lite.hf import HF_MODULES, module_for_arch


def _read_config(path: str) -> dict[str, Any]:
    if not os.path.isdir(path):
        raise ConfigError(f"{path}: not a directory (expected config.json + model.safetensors)")
    cfg_file = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_file):
        raise ConfigError(f"{cfg_file}: missing")
    try:
        with open(cfg_file, encoding="utf-8") as f:
            hf_config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{cfg_file}: not valid JSON ({err})") from None
    if not isinstance(hf_config, dict):
        raise ConfigError(f"{cfg_file}: expected a JSON object, got {type(hf_config).__name__}")
    return hf_config


# safetensors dtype codes -> numpy dtype names; ml_dtypes (a jax dependency) has bfloat16.
_ST_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}
_ST_FLOATS = ("F64", "F32", "F16", "BF16")


def read_safetensors(file: str) -> dict[str, np.ndarray]:
    """Every tensor of one ``.safetensors`` file; floating tensors come back float32.

    The format is an 8-byte little-endian header length, a JSON header
    ``{name: {"dtype": "BF16", "shape": [V, E], "data_offsets": [begin, end]}}`` and
    the raw bytes. Parsed here (not with ``safetensors.numpy``) because numpy has no
    bfloat16, the dtype of most published checkpoints: e.g. a BF16 ``[2, 3]`` tensor
    of ones is returned as a float32 ``[2, 3]`` array of ones. A truncated or corrupt
    file is a one-line ConfigError naming it.
    """
    import ml_dtypes

    def bad(why: str) -> ConfigError:
        return ConfigError(f"{file}: not a valid safetensors file ({why})")

    size = os.path.getsize(file)
    with open(file, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise bad(f"{size} bytes, shorter than the 8-byte header length")
        n = int.from_bytes(head, "little")
        if n > size - 8:
            raise bad(f"header of {n} bytes runs past the end of the {size}-byte file")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise bad(f"header is not JSON: {err}") from None
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    data = np.memmap(file, dtype=np.uint8, mode="r", offset=8 + n) if size > 8 + n else None
    available = size - 8 - n
    tensors: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            code, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
            shape = tuple(int(d) for d in shape)
            begin, end = int(begin), int(end)
        except (KeyError, TypeError, ValueError):
            raise bad(f"tensor {name!r} has a malformed header entry") from None
        if code not in _ST_DTYPES:
            raise bad(f"tensor {name!r} has unsupported dtype {code!r}")
        dtype = np.dtype(ml_dtypes.bfloat16 if code == "BF16" else _ST_DTYPES[code])
        want = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if not 0 <= begin <= end <= available:
            raise bad(f"tensor {name!r} spans bytes {begin}..{end} of {available} data bytes")
        if end - begin != want:
            raise bad(f"tensor {name!r} has {end - begin} bytes, {code} {list(shape)} needs {want}")
        raw = data[begin:end] if end > begin else np.zeros(0, np.uint8)
        x = np.frombuffer(raw, dtype=dtype).reshape(shape)
        tensors[name] = x.astype(np.float32) if code in _ST_FLOATS else np.array(x)
    return tensors


def _read_tensors(path: str) -> dict[str, np.ndarray]:
    files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    if not files:
        raise ConfigError(f"{os.path.join(path, 'model.safetensors')}: missing")
    tensors: dict[str, np.ndarray] = {}
    for name in files:
        tensors.update(read_safetensors(os.path.join(path, name)))
    return tensors


def import_hf(path: str) -> tuple[ModelConfig, Any]:
    """``(ModelConfig, params)`` from a local Hugging Face model directory.

    Raises a one-line ConfigError for an unsupported ``model_type`` or a missing
    weight (naming the tensor and the file) before any JAX array is built.
    """
    hf_config = _read_config(path)
    model_type = hf_config.get("model_type")
    if model_type not in HF_MODULES:
        raise ConfigError(
            f"{os.path.join(path, 'config.json')}: model_type={model_type!r} is not supported "
            f"(supported: {', '.join(sorted(HF_MODULES))})"
        )
    tensors = _read_tensors(path)
    # Tied checkpoints may omit the output head; modules resolve that themselves.
    return HF_MODULES[model_type].from_hf(hf_config, tensors, source=path)


def export_hf(cfg: ModelConfig, params: Any, path: str) -> None:
    """Write ``config.json`` + ``model.safetensors`` that ``transformers`` loads.

    Never overwrites: a ``path`` that already holds ``config.json`` or a
    ``.safetensors`` file is a one-line ConfigError, raised before anything is written.
    """
    from safetensors.numpy import save_file

    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"{path}: exists and is not a directory; export_hf writes a directory")
    if os.path.isdir(path):
        taken = sorted(
            f for f in os.listdir(path) if f == "config.json" or f.endswith(".safetensors")
        )
        if taken:
            raise ConfigError(
                f"{os.path.join(path, taken[0])}: already exists; export_hf will not overwrite "
                "a checkpoint (choose an empty or new directory)"
            )
    cfg.validate()
    hf_config, tensors = module_for_arch(cfg.arch).to_hf(cfg, params)
    os.makedirs(path, exist_ok=True)
    tensors = {k: np.ascontiguousarray(np.asarray(v, np.float32)) for k, v in tensors.items()}
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf_config, f, indent=2, sort_keys=True)
