"""Parameter-efficient tuning: LoRA, Houlsby adapters and prefix tuning on a frozen base.

The models stay pure functions of one params tree. What a method adds are extra
leaves at the paths of the modules they change, which those modules read when
present (the hooks in :class:`t5x_lite.layers.DenseGeneral`,
:func:`t5x_lite.layers.bottleneck_adapter` and
:class:`t5x_lite.attention.MultiHeadAttention`); ``init`` never creates them, so the
base's tree, its checkpoints and its shardings are unchanged.

:class:`Peft` keeps the two trees apart:

* ``trainable``: only what is trained, the added leaves mirroring the base's paths
  (plus the base leaves named by ``peft.modules_to_save``, e.g. a task head);
* ``base``: the base params, frozen: the train state never holds them, so no
  optimizer state exists for them, and the step takes them as a constant argument.

``combine(base, trainable)`` is the tree the model is applied to::

    base       {"layers_0": {"attn": {"query": {"kernel": [E, H, D]}, ...}}}
    trainable  {"layers_0": {"attn": {"query": {"lora_a": [E, r], "lora_b": [r, H, D]}}}}
    combined   {"layers_0": {"attn": {"query": {"kernel": ..., "lora_a": ..., "lora_b": ...,
                                                "lora_scale": alpha / r}}}}

===========  ===========================================================================
method       added leaves (logical axes) and initialisation
===========  ===========================================================================
lora         per target projection ``lora_a [*in, r]`` (kernel's input axes, None):
             Kaiming-uniform as Hugging Face PEFT (bound ``1/sqrt(fan_in)``);
             ``lora_b [r, *out]`` (None, kernel's output axes): zeros, so the initial
             model equals the base. :func:`merge` folds ``(alpha/r) · A·B`` into kernels.
adapter      in every self-attention (``out``'s output) and MLP (``wo``'s output):
             ``adapter_down [E, M]`` (embed, mlp) normal(1e-2), ``adapter_down_bias``,
             ``adapter_up [M, E]`` and ``adapter_up_bias`` zeros: the base exactly.
prefix       per self-attention ``prefix_key``, ``prefix_value`` ``[P, K, D]``
             (None, heads|kv_heads, kv). With ``prefix_hidden > 0`` they are computed
             from ``prefix_mlp`` (``embedding [P, E]`` -> tanh MLP -> all layers' keys
             and values, Li & Liang's reparameterisation) while training, and
             :func:`merge` stores the computed prefixes.
===========  ===========================================================================

LoRA targets (``peft.targets``) by role: ``query``, ``key``, ``value``, ``out``,
``mlp_in`` (``wi`` | ``wi_0``, ``wi_1``), ``mlp_out`` (``wo``); in every attention
block (T5's cross-attention included) and every MLP. Adapters and prefixes skip T5's
cross-attention (``encoder_decoder_attention``).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from t5x_lite import models, partitioning
from t5x_lite.config import ConfigError, ModelConfig, PeftConfig, to_dict
from t5x_lite.config.peft import LORA_TARGETS

Array = jax.Array
Path = tuple[str, ...]

# Input dims a projection contracts (``out`` maps [H, D] -> E).
_N_IN = {"query": 1, "key": 1, "value": 1, "out": 2, "wi": 1, "wi_0": 1, "wi_1": 1, "wo": 1}
_ATTENTION = ("query", "key", "value", "out")
_CROSS = "encoder_decoder_attention"
ADAPTER_INIT_STD = 1e-2
PREFIX_INIT_STD = 0.02


# --------------------------------------------------------------------------- trees


def _walk(tree: Any, path: Path = ()) -> Iterator[tuple[Path, Any]]:
    """``(path, subtree)`` of every dict in ``tree`` (depth first, sorted keys)."""
    if isinstance(tree, dict):
        yield path, tree
        for k in sorted(tree):
            yield from _walk(tree[k], (*path, k))


def _leaves(tree: Any, path: Path = ()) -> Iterator[tuple[Path, Any]]:
    if isinstance(tree, dict):
        for k in sorted(tree):
            yield from _leaves(tree[k], (*path, k))
    else:
        yield path, tree


def _set(tree: dict, path: Path, value: Any) -> None:
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = value


def at_path(tree: Any, path: Path) -> Any:
    """``tree[path[0]][path[1]]...``: ``at_path({"a": {"b": 1}}, ("a", "b")) -> 1``."""
    for k in path:
        tree = tree[k]
    return tree


def union(base: Any, extra: Any) -> Any:
    """Deep union of two nested dicts; ``extra``'s leaves win.

    ``union({"a": {"k": 1}}, {"a": {"l": 2}, "b": 3}) -> {"a": {"k": 1, "l": 2}, "b": 3}``.
    """
    if not isinstance(base, dict) or not isinstance(extra, dict):
        return extra
    out = dict(base)
    for k, v in extra.items():
        out[k] = union(base[k], v) if k in base else v
    return out


def count(tree: Any) -> int:
    """Number of scalars in a tree of arrays (or shape structs)."""
    return int(sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


def _box(value: Array, names: tuple[str | None, ...]) -> nn.LogicallyPartitioned:
    return nn.LogicallyPartitioned(value, names)


# --------------------------------------------------------------------------- Peft


class Peft:
    """The added parameters of ``cfg.method`` for a base of ``model_cfg``; see above.

    >>> p = Peft(PeftConfig(method="lora", rank=4, targets=("query",)), model_cfg)
    >>> trainable = p.init(jax.random.key(0), base)          # lora_a / lora_b leaves
    >>> logits = model.apply(p.combine(base, trainable), batch)["logits"]
    >>> merged = p.merge(base, trainable)                    # plain base-shaped tree
    """

    def __init__(
        self, cfg: PeftConfig, model_cfg: ModelConfig, extra_trainable: Sequence[str] = ()
    ) -> None:
        """``extra_trainable``: ``/``-joined base leaf paths trained as well (the new
        task heads a fine-tuning base lacks), besides ``cfg.modules_to_save``."""
        cfg.validate()
        if not cfg.enabled:
            raise ConfigError("peft.method='none': there is nothing to add to the base")
        self.cfg = cfg
        self.model_cfg = model_cfg
        boxed = jax.eval_shape(lambda: models.init_boxed(model_cfg, jax.random.key(0)))
        self._abstract = boxed
        self.lora_sites: list[tuple[Path, Any]] = []  # (module path, boxed kernel)
        self.attention_sites: list[tuple[Path, Any]] = []  # self-attention, boxed key kernel
        self.mlp_sites: list[Path] = []
        names = {n for t in cfg.targets for n in LORA_TARGETS[t]} if cfg.method == "lora" else set()
        for path, sub in _walk(boxed):
            is_attention = all(k in sub for k in _ATTENTION)
            is_mlp = "wo" in sub and ("wi" in sub or "wi_0" in sub)
            if is_attention and path[-1] != _CROSS:
                self.attention_sites.append((path, sub["key"]["kernel"]))
            if is_mlp:
                self.mlp_sites.append(path)
            if is_attention or is_mlp:
                for name in sorted(names & set(sub)):
                    self.lora_sites.append(((*path, name), sub[name]["kernel"]))
        self.saved_paths = sorted(
            set(self._modules_to_save()) | {tuple(p.split("/")) for p in extra_trainable}
        )
        if cfg.method == "lora" and not self.lora_sites:
            raise ConfigError(f"peft.targets={list(cfg.targets)} match no projection of the model")

    # ------------------------------------------------------------------ structure

    def _modules_to_save(self) -> list[Path]:
        paths = [p for p, _ in _leaves(nn.meta.unbox(self._abstract))]
        out = []
        for frag in self.cfg.modules_to_save:
            hit = [p for p in paths if frag in "/".join(p)]
            if not hit:
                raise ConfigError(
                    f"peft.modules_to_save entry {frag!r} matches no parameter of the model"
                )
            out.extend(hit)
        return sorted(set(out))

    def _prefix_shape(self) -> tuple[int, int, int]:
        """``(P, K, D)`` of every self-attention layer's prefixes (uniform in our models)."""
        shapes = {tuple(k.value.shape[1:]) for _, k in self.attention_sites}
        assert len(shapes) == 1, shapes
        (kh, d) = shapes.pop()
        return self.cfg.prefix_len, kh, d

    def init_boxed(self, rng: Array, base: Any | None = None) -> Any:
        """Trainable tree with logical-axis boxes (``base`` supplies
        ``modules_to_save`` values; None gives abstract zeros of their shapes)."""
        cfg, out = self.cfg, {}
        keys = iter(
            jax.random.split(
                rng,
                4 * (len(self.lora_sites) + len(self.mlp_sites) + len(self.attention_sites)) + 8,
            )
        )
        if cfg.method == "lora":
            for path, kernel in self.lora_sites:
                n_in = _N_IN[path[-1]]
                shape, axes = tuple(kernel.value.shape), tuple(kernel.names)
                fan_in = math.prod(shape[:n_in])
                bound = 1.0 / math.sqrt(fan_in)  # kaiming_uniform(a=sqrt(5)), as PEFT
                a = jax.random.uniform(
                    next(keys), (*shape[:n_in], cfg.rank), jnp.float32, -bound, bound
                )
                b = jnp.zeros((cfg.rank, *shape[n_in:]), jnp.float32)
                _set(out, (*path, "lora_a"), _box(a, (*axes[:n_in], None)))
                _set(out, (*path, "lora_b"), _box(b, (None, *axes[n_in:])))
        elif cfg.method == "adapter":
            e, m = self.model_cfg.d_model, cfg.adapter_size
            sites = [p for p, _ in self.attention_sites] + self.mlp_sites
            for path in sites:
                down = ADAPTER_INIT_STD * jax.random.normal(next(keys), (e, m), jnp.float32)
                _set(out, (*path, "adapter_down"), _box(down, ("embed", "mlp")))
                _set(out, (*path, "adapter_down_bias"), _box(jnp.zeros((m,)), ("mlp",)))
                _set(out, (*path, "adapter_up"), _box(jnp.zeros((m, e)), ("mlp", "embed")))
                _set(out, (*path, "adapter_up_bias"), _box(jnp.zeros((e,)), ("embed",)))
        else:  # prefix
            p, kh, d = self._prefix_shape()
            kv_axis = self.attention_sites[0][1].names[1]
            if cfg.prefix_hidden > 0:
                e, h, n = self.model_cfg.d_model, cfg.prefix_hidden, len(self.attention_sites)
                width = n * 2 * kh * d

                def normal(shape: tuple[int, ...], std: float) -> Array:
                    return std * jax.random.normal(next(keys), shape, jnp.float32)

                out["prefix_mlp"] = {
                    "embedding": _box(normal((p, e), PREFIX_INIT_STD), (None, "embed")),
                    "wi": _box(normal((e, h), e**-0.5), ("embed", "mlp")),
                    "bi": _box(jnp.zeros((h,)), ("mlp",)),
                    "wo": _box(normal((h, width), PREFIX_INIT_STD), ("mlp", None)),
                    "bo": _box(jnp.zeros((width,)), (None,)),
                }
            else:
                for path, _ in self.attention_sites:
                    for name in ("prefix_key", "prefix_value"):
                        v = PREFIX_INIT_STD * jax.random.normal(next(keys), (p, kh, d))
                        _set(out, (*path, name), _box(v, (None, kv_axis, "kv")))
        abstract = self._abstract
        for path in self.saved_paths:
            leaf = at_path(abstract, path)
            names = tuple(leaf.names) if isinstance(leaf, nn.LogicallyPartitioned) else None
            shape = nn.meta.unbox(leaf)
            value = (
                jnp.zeros(shape.shape, shape.dtype)
                if base is None
                else jnp.asarray(at_path(base, path), shape.dtype)
            )
            _set(out, path, _box(value, names) if names else value)
        return out

    def init(self, rng: Array, base: Any | None = None) -> Any:
        """Plain trainable tree (see :meth:`init_boxed`)."""
        return nn.meta.unbox(self.init_boxed(rng, base))

    def abstract(self) -> Any:
        """Shapes and dtypes of the trainable tree."""
        return jax.eval_shape(lambda: self.init(jax.random.key(0)))

    def shardings(self, mesh: Mesh) -> Any:
        """NamedShardings of the trainable tree under the logical-axis rules."""
        boxed = jax.eval_shape(lambda: self.init_boxed(jax.random.key(0)))
        return partitioning.param_shardings(mesh, boxed)

    # ------------------------------------------------------------------ combine / merge

    def prefixes(self, trainable: Any) -> dict[Path, tuple[Array, Array]]:
        """Per self-attention path, its ``(prefix_key, prefix_value)`` ``[P, K, D]``."""
        if "prefix_mlp" not in trainable:
            nodes = {path: at_path(trainable, path) for path, _ in self.attention_sites}
            return {path: (n["prefix_key"], n["prefix_value"]) for path, n in nodes.items()}
        w = trainable["prefix_mlp"]
        p, kh, d = self._prefix_shape()
        h = jnp.tanh(w["embedding"] @ w["wi"] + w["bi"])  # [P, hidden]
        kv = (h @ w["wo"] + w["bo"]).reshape(p, len(self.attention_sites), 2, kh, d)
        sites = [path for path, _ in self.attention_sites]
        return {path: (kv[:, i, 0], kv[:, i, 1]) for i, path in enumerate(sites)}

    def combine(self, base: Any, trainable: Any) -> Any:
        """The tree the model is applied to: ``base`` with the added leaves (and
        constants: LoRA's ``lora_scale``) in place; see the module docstring."""
        extra = {k: v for k, v in trainable.items() if k != "prefix_mlp"}
        if self.cfg.method == "lora":
            extra = jax.tree_util.tree_map(lambda x: x, extra)  # a copy to add scales to
            for path, _ in self.lora_sites:
                _set(extra, (*path, "lora_scale"), jnp.float32(self.cfg.scale))
                if self.cfg.dropout > 0:
                    _set(extra, (*path, "lora_dropout"), jnp.float32(self.cfg.dropout))
        if "prefix_mlp" in trainable:
            for path, (k, v) in self.prefixes(trainable).items():
                _set(extra, (*path, "prefix_key"), k)
                _set(extra, (*path, "prefix_value"), v)
        return union(base, extra)

    def merge(self, base: Any, trainable: Any) -> Any:
        """A tree for inference: LoRA folded into the kernels
        (``W + (alpha/r) · A·B``, the base's shapes exactly); adapters and prefixes kept
        as leaves (computed prefixes in place of ``prefix_mlp``)."""
        if self.cfg.method != "lora":
            return self.combine(base, trainable)
        replaced: dict = {}  # new leaves only: ``union`` copies the dicts it descends
        for path in self.saved_paths:
            _set(replaced, path, at_path(trainable, path))
        for path, _ in self.lora_sites:
            node = at_path(trainable, path)
            kernel = at_path(base, (*path, "kernel"))
            delta = jnp.tensordot(node["lora_a"], node["lora_b"], axes=1)  # [*in, *out]
            merged = kernel + jnp.asarray(self.cfg.scale * delta, kernel.dtype)
            _set(replaced, (*path, "kernel"), merged)
        return union(base, replaced)

    # ------------------------------------------------------------------ reporting

    def trainable_line(self, trainable_abstract: Any | None = None) -> str:
        """``"trainable 1.30% (12,288 of 958,720 parameters)"``: trained over base + added
        (``modules_to_save`` leaves counted once)."""
        t = trainable_abstract if trainable_abstract is not None else self.abstract()
        trained = count(t)
        saved = count([at_path(nn.meta.unbox(self._abstract), p) for p in self.saved_paths])
        total = count(nn.meta.unbox(self._abstract)) + trained - saved
        return f"trainable {100.0 * trained / total:.2f}% ({trained:,} of {total:,} parameters)"


# --------------------------------------------------------------------------- fingerprint

SAMPLES_PER_LEAF = 4096


def _sample(x: Array) -> Array:
    """Up to :data:`SAMPLES_PER_LEAF` evenly strided values of ``x`` (float32)."""
    flat = jnp.ravel(x)
    stride = max(1, flat.size // SAMPLES_PER_LEAF)
    return flat[::stride][:SAMPLES_PER_LEAF].astype(jnp.float32)


def fingerprint(model_cfg: ModelConfig, params: Any) -> str:
    """sha256 (hex, 16 digits) of the model config, every leaf's path, shape and dtype,
    and the bytes of up to 4096 evenly strided values per leaf: cheap to recompute
    (one small gather per leaf), equal for the same weights on any mesh, and
    different for a base that was trained further or on another task."""
    h = hashlib.sha256(json.dumps(to_dict(model_cfg), sort_keys=True).encode())
    leaves = list(_leaves(params))
    first = getattr(leaves[0][1], "sharding", None) if leaves else None
    out = NamedSharding(first.mesh, PartitionSpec()) if isinstance(first, NamedSharding) else None
    sample_fn = jax.jit(lambda xs: [_sample(x) for x in xs], out_shardings=out)
    samples = sample_fn([x for _, x in leaves])  # replicated, also across processes
    for (path, x), s in zip(leaves, partitioning.replicated_value(samples), strict=True):
        h.update(f"{'/'.join(path)}:{tuple(x.shape)}:{x.dtype};".encode())
        h.update(np.asarray(s, np.float32).tobytes())
    return h.hexdigest()[:16]
