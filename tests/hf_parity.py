"""One harness for the Hugging Face parity tests of every model family.

A parity case is a tiny ``transformers`` model (torch CPU, float32, eager attention)
with every weight drawn at random, saved with ``save_pretrained`` and read back
through :func:`t5x_lite.convert.import_hf`. Both directions are checked on the same
padded batch:

- HF -> ours (:func:`check_import`): our forward of the imported params equals the
  torch forward within ``atol`` (max abs) on the positions that count
  (:func:`default_valid`), for ``logits`` and any extra output (``sentence_logits``);
- ours -> HF (:func:`check_export`): ``export_hf`` of those params loads with
  ``from_pretrained`` (no missing or unexpected tensor) and gives the reference
  outputs again, and importing the export gives the same config and params.

A new architecture's parity test is one call::

    hf_parity.check_both_ways(
        hf_config_cls=transformers.MistralConfig,
        hf_model_cls=transformers.MistralForCausalLM,
        hf_config=dict(vocab_size=97, hidden_size=48, ...),
        our_cfg={"arch": "mistral", "sliding_window": 8},
        batch=batch,
        tmp_path=tmp_path,
    )

or a row in a family's table of :class:`Spec` s, which the family's tests share.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from t5x_lite import convert, models
from t5x_lite.config import ModelConfig

# Our output name -> the Hugging Face output attributes that hold it, first found wins.
OUTPUTS = {
    "logits": ("prediction_logits", "logits"),
    "sentence_logits": ("seq_relationship_logits", "sop_logits"),
}

Reinit = Callable[[str, torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------- random weights


def is_norm_scale(name: str, p: torch.Tensor) -> bool:
    """A LayerNorm / RMSNorm gain (GPT-2's ``ln_*``, Llama's ``*norm``), not a bias."""
    return p.ndim == 1 and ("norm" in name or ".ln_" in name) and "weight" in name


def redraw(std: float = 0.2, *, std_for: Mapping[str, float] | None = None) -> Reinit:
    """Every weight drawn afresh: ``N(0, std)``, norm gains ``1 + N(0, std)``.

    ``std_for`` maps a substring of a parameter name to its own std (first match wins).
    """

    def reinit(name: str, p: torch.Tensor) -> torch.Tensor:
        s = next((v for k, v in (std_for or {}).items() if k in name), std)
        return (1.0 if is_norm_scale(name, p) else 0.0) + s * torch.randn_like(p)

    return reinit


def jitter(std: float = 0.1) -> Reinit:
    """transformers' own init plus ``N(0, std)`` (so gains and biases are not 1 / 0)."""
    return lambda name, p: p + std * torch.randn_like(p)


def random_hf_model(
    hf_config_cls: type,
    hf_model_cls: type,
    hf_config: Mapping[str, Any],
    *,
    seed: int = 0,
    reinit: Reinit | None = None,
    untie_head: bool = False,
) -> torch.nn.Module:
    """``hf_model_cls(hf_config_cls(**hf_config))`` in eval mode with random weights.

    The torch RNG is seeded with ``seed`` before the model is built, then every
    parameter goes through ``reinit(name, p)`` (default :func:`redraw`). Attention is
    eager in every sub-config. ``untie_head`` gives the output projection its own
    tensor before the draw (transformers ties it to the input table otherwise).
    """
    torch.manual_seed(seed)
    config = hf_config_cls(**{"attn_implementation": "eager", **hf_config})
    model = hf_model_cls(config)
    for m in model.modules():
        if isinstance(getattr(m, "config", None), type(config)):
            assert m.config._attn_implementation == "eager", type(m).__name__
    if untie_head:
        head = model.get_output_embeddings()
        head.weight = torch.nn.Parameter(torch.empty_like(head.weight))
    reinit = reinit or redraw()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(reinit(name, p))
    if untie_head:
        head, table = model.get_output_embeddings(), model.get_input_embeddings()
        assert head.weight.data_ptr() != table.weight.data_ptr()
    return model.eval()


# --------------------------------------------------------------------------- forwards


def hf_outputs(model: torch.nn.Module, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The torch forward of ``batch`` (every key passed as int64), by our output names."""
    with torch.no_grad():
        out = model(**{k: torch.tensor(np.asarray(v), dtype=torch.long) for k, v in batch.items()})
    got = {}
    for ours, theirs in OUTPUTS.items():
        value = next((getattr(out, a) for a in theirs if getattr(out, a, None) is not None), None)
        if value is not None:
            got[ours] = value.numpy()
    return got


@functools.partial(jax.jit, static_argnums=0)
def _apply(cfg: ModelConfig, params, batch) -> dict[str, jax.Array]:
    return models.build(cfg).apply({"params": params}, batch)


def our_outputs(cfg: ModelConfig, params, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Our jitted forward of ``batch``: every output as numpy."""
    return {k: np.asarray(v) for k, v in _apply(cfg, params, dict(batch)).items()}


def default_valid(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Where our outputs must equal transformers' on a padded batch.

    ``logits``: the real target tokens (``decoder_attention_mask`` for an
    encoder-decoder, else ``attention_mask``; padded positions are free).
    ``sentence_logits``: rows whose first token is real (transformers lets pad queries
    attend; we do not).
    """
    ids = batch.get("decoder_input_ids", batch["input_ids"])
    mask = batch.get("decoder_attention_mask", batch.get("attention_mask", np.ones_like(ids)))
    first = batch.get("attention_mask", np.ones_like(batch["input_ids"]))[:, 0]
    return {"logits": np.asarray(mask).astype(bool), "sentence_logits": first.astype(bool)}


def max_abs_diff(got: np.ndarray, want: np.ndarray, where: np.ndarray | None = None) -> float:
    """``max |got - want|`` over ``where`` (a boolean mask over leading axes), or all."""
    assert got.shape == want.shape, (got.shape, want.shape)
    err = np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))
    return float((err if where is None else err[where]).max())


def assert_outputs_close(
    got: Mapping[str, np.ndarray],
    want: Mapping[str, np.ndarray],
    *,
    atol: float,
    valid: Mapping[str, np.ndarray] | None = None,
    what: str = "",
) -> None:
    """Every output of ``want`` is in ``got`` and within ``atol`` of it (max abs).

    ``valid`` restricts each output to its own mask; an output absent there (or
    ``valid=None``) is compared everywhere. Outputs both sides could name
    (:data:`OUTPUTS`) must appear on both or neither.
    """
    assert set(want) == set(got) & set(OUTPUTS), (what, sorted(got), sorted(want))
    for key in want:
        where = None if valid is None else valid.get(key)
        err = max_abs_diff(got[key], want[key], where)
        assert err <= atol, f"{what}{key} differ by {err:.3g} > {atol:g} (max abs)"


# --------------------------------------------------------------------------- cases


@dataclasses.dataclass(frozen=True)
class Spec:
    """How to build one reference model (see :func:`random_hf_model`).

    ``our_cfg``: what :func:`t5x_lite.convert.import_hf` must make of it: a whole
    ``ModelConfig``, or a mapping of the fields that matter.
    """

    hf_config_cls: type
    hf_model_cls: type
    hf_config: Mapping[str, Any]
    our_cfg: ModelConfig | Mapping[str, Any] | None = None
    seed: int = 0
    reinit: Reinit | None = None
    untie_head: bool = False

    def hf_config_obj(self):
        return self.hf_config_cls(**self.hf_config)


@dataclasses.dataclass
class Case:
    """A reference model saved to ``path``, its import, and both forwards of ``batch``."""

    spec: Spec
    model: torch.nn.Module
    path: str
    cfg: ModelConfig
    params: Any
    batch: dict[str, np.ndarray]
    ref: dict[str, np.ndarray]  # transformers' outputs, by our names
    valid: dict[str, np.ndarray]  # where ours must match ``ref`` (default_valid)

    @property
    def arch(self) -> str:
        return self.cfg.arch


def build_case(spec: Spec, batch: Mapping[str, np.ndarray], path: str) -> Case:
    """Build ``spec``'s model, ``save_pretrained`` it to ``path``, import it, run HF."""
    model = random_hf_model(
        spec.hf_config_cls,
        spec.hf_model_cls,
        spec.hf_config,
        seed=spec.seed,
        reinit=spec.reinit,
        untie_head=spec.untie_head,
    )
    model.save_pretrained(path)
    cfg, params = convert.import_hf(path)
    batch = dict(batch)
    ref = hf_outputs(model, batch)
    return Case(spec, model, path, cfg, params, batch, ref, default_valid(batch))


class Cases:
    """Cases built on first use and kept, each in its own temporary directory."""

    def __init__(self, tmp_path_factory, specs: Mapping[str, Spec], batch: Callable[[Spec], dict]):
        self._factory, self._specs, self._batch, self._built = tmp_path_factory, specs, batch, {}

    def __getitem__(self, name: str) -> Case:
        if name not in self._built:
            spec = self._specs[name]
            path = str(self._factory.mktemp(f"hf_{name}"))
            self._built[name] = build_case(spec, self._batch(spec), path)
        return self._built[name]


# --------------------------------------------------------------------------- both directions


def _check_cfg(cfg: ModelConfig, want: ModelConfig | Mapping[str, Any] | None) -> None:
    if want is None:
        return
    if isinstance(want, ModelConfig):
        assert cfg == want, (cfg, want)
        return
    got = {k: getattr(cfg, k) for k in want}
    assert got == dict(want), (got, dict(want))


def check_import(case: Case, *, atol: float = 1e-4, nontrivial: float | None = 1.0) -> dict:
    """HF -> ours: the imported config is ``spec.our_cfg``; our outputs (float32,
    transformers' shapes) equal the reference within ``atol`` on ``case.valid``.

    ``nontrivial``: the reference logits reach at least this size somewhere valid,
    so that random weights did not give near-zero outputs that anything would match.
    Returns our outputs.
    """
    _check_cfg(case.cfg, case.spec.our_cfg)
    got = our_outputs(case.cfg, case.params, case.batch)
    for key in set(case.ref) & set(got):
        assert got[key].dtype == np.float32, (key, got[key].dtype)
    if nontrivial is not None:
        assert np.abs(case.ref["logits"][case.valid["logits"]]).max() > nontrivial
    assert_outputs_close(got, case.ref, atol=atol, valid=case.valid, what="HF -> ours: ")
    return got


def check_export(case: Case, tmp_path, *, atol: float = 0.0) -> torch.nn.Module:
    """Ours -> HF: ``export_hf`` of the imported params (as JAX arrays, as trained)
    writes ``config.json`` + ``model.safetensors`` naming ``spec.hf_model_cls``;
    ``from_pretrained`` loads every tensor (none missing, none unexpected) and its
    outputs equal the reference everywhere within ``atol`` (padding included); the
    export imports back to the same config and params. Returns the loaded model.
    """
    out = os.path.join(str(tmp_path), "export")
    params = jax.tree_util.tree_map(jnp.asarray, case.params)
    convert.export_hf(case.cfg, params, out)
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["architectures"] == [case.spec.hf_model_cls.__name__]
    loaded, info = case.spec.hf_model_cls.from_pretrained(
        out, attn_implementation="eager", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert loaded.config.model_type == case.model.config.model_type
    loaded.eval()
    assert_outputs_close(hf_outputs(loaded, case.batch), case.ref, atol=atol, what="ours -> HF: ")
    cfg2, params2 = convert.import_hf(out)
    assert cfg2 == case.cfg
    assert jax.tree.structure(params2) == jax.tree.structure(case.params)
    jax.tree.map(np.testing.assert_array_equal, params2, case.params)
    return loaded


def check_both_ways(
    *,
    hf_config_cls: type,
    hf_model_cls: type,
    hf_config: Mapping[str, Any],
    batch: Mapping[str, np.ndarray],
    tmp_path,
    our_cfg: ModelConfig | Mapping[str, Any] | None = None,
    seed: int = 0,
    reinit: Reinit | None = None,
    untie_head: bool = False,
    atol: float = 1e-4,
    export_atol: float = 0.0,
) -> Case:
    """:func:`build_case`, then :func:`check_import` and :func:`check_export`."""
    spec = Spec(hf_config_cls, hf_model_cls, hf_config, our_cfg, seed, reinit, untie_head)
    path = os.path.join(str(tmp_path), "hf")
    case = build_case(spec, batch, path)
    check_import(case, atol=atol)
    check_export(case, tmp_path, atol=export_atol)
    return case


# --------------------------------------------------------------------------- edited copies


def copy_hf_dir(
    src: str,
    dst,
    *,
    tensors: Callable[[dict[str, np.ndarray]], None] | None = None,
    config: Callable[[dict[str, Any]], None] | None = None,
) -> str:
    """A copy of the HF directory ``src`` at ``dst`` (created), its safetensors dict
    and its config.json dict each first edited in place by ``tensors`` / ``config``."""
    os.makedirs(dst, exist_ok=True)
    weights = load_file(os.path.join(src, "model.safetensors"))
    if tensors is not None:
        tensors(weights)
    save_file(weights, os.path.join(str(dst), "model.safetensors"))
    with open(os.path.join(src, "config.json")) as f:
        hf = json.load(f)
    if config is not None:
        config(hf)
    with open(os.path.join(str(dst), "config.json"), "w") as f:
        json.dump(hf, f)
    return str(dst)
