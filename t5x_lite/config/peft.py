"""The ``peft`` section: parameter-efficient tuning of a frozen base (see :mod:`t5x_lite.peft`).

``method`` picks what is added to the base and trained while the base stays frozen:

=========  ==========================================================================
none       full fine-tuning (the other fields are unused)
lora       low-rank updates ``W + (alpha / rank) · A·B`` on the ``targets`` projections
           (``dropout``: on the input of ``A`` in training steps, as PEFT's lora_dropout)
adapter    Houlsby bottleneck adapters (width ``adapter_size``) after every
           self-attention and feed-forward sublayer
prefix     ``prefix_len`` learned key/value prefixes in every self-attention layer,
           through an MLP of width ``prefix_hidden`` while training (0: learned directly)
=========  ==========================================================================

``targets`` name projections by their role (the parameter names they cover in
every family): ``query``, ``key``, ``value``, ``out`` (attention; T5's cross-attention
included), ``mlp_in`` (``wi``, or the gated ``wi_0`` and ``wi_1``), ``mlp_out``
(``wo``). ``modules_to_save`` lists base parameter-path fragments trained alongside
(e.g. a task head: ``("classifier",)``), as Hugging Face PEFT's option of that name.
"""

from __future__ import annotations

from dataclasses import dataclass

from t5x_lite.config.errors import check as _check

METHODS = ("none", "lora", "adapter", "prefix")
# LoRA target name -> the DenseGeneral module names it covers.
LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "query": ("query",),
    "key": ("key",),
    "value": ("value",),
    "out": ("out",),
    "mlp_in": ("wi", "wi_0", "wi_1"),
    "mlp_out": ("wo",),
}


@dataclass(frozen=True)
class PeftConfig:
    method: str = "none"  # none | lora | adapter | prefix
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0  # LoRA: dropout on the input of A, in training steps only
    targets: tuple[str, ...] = ("query", "value")
    adapter_size: int = 16
    prefix_len: int = 8
    prefix_hidden: int = 0  # > 0: Li & Liang's MLP reparameterisation of the prefixes
    modules_to_save: tuple[str, ...] = ()

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    @property
    def scale(self) -> float:
        """LoRA's ``alpha / rank``."""
        return float(self.alpha) / float(self.rank)

    def validate(self) -> PeftConfig:
        _check(
            self.method in METHODS,
            f"peft.method={self.method!r} is not one of {', '.join(METHODS)}",
        )
        for name in ("rank", "adapter_size", "prefix_len"):
            v = getattr(self, name)
            _check(isinstance(v, int) and v > 0, f"peft.{name}={v!r} must be a positive integer")
        _check(
            isinstance(self.prefix_hidden, int) and self.prefix_hidden >= 0,
            f"peft.prefix_hidden={self.prefix_hidden!r} must be >= 0 (0: no reparameterisation)",
        )
        _check(self.alpha > 0, f"peft.alpha={self.alpha} must be > 0")
        _check(0.0 <= self.dropout < 1.0, f"peft.dropout={self.dropout} must be in [0, 1)")
        if self.method == "lora":
            _check(
                len(self.targets) > 0,
                "peft.targets is empty; name at least one of " + ", ".join(LORA_TARGETS),
            )
            for t in self.targets:
                _check(
                    t in LORA_TARGETS,
                    f"peft.targets has unknown target {t!r} (valid: {', '.join(LORA_TARGETS)})",
                )
            _check(
                len(set(self.targets)) == len(self.targets),
                f"peft.targets={list(self.targets)} names a target twice",
            )
        for m in self.modules_to_save:
            _check(
                isinstance(m, str) and m.strip() != "",
                f"peft.modules_to_save has {m!r}; entries are parameter-path fragments",
            )
        return self
