"""Per-architecture Hugging Face name maps (see :mod:`t5x_lite.convert`).

Each module exposes ``MODEL_TYPES`` (HF ``model_type`` values it reads), ``ARCHS``
(our ``ModelConfig.arch`` values it writes), ``from_hf(hf_config, tensors, source)``
and ``to_hf(cfg, params)``.
"""

from __future__ import annotations

from types import ModuleType

from t5x_lite.hf import bert, gpt2, llama, t5

_ALL = (gpt2, llama, bert, t5)

HF_MODULES: dict[str, ModuleType] = {mt: m for m in _ALL for mt in m.MODEL_TYPES}


def module_for_arch(arch: str) -> ModuleType:
    for m in _ALL:
        if arch in m.ARCHS:
            return m
    raise KeyError(arch)
