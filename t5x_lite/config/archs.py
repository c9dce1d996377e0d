"""The architecture table: what each ``model.arch`` is made of, as traits.

Layers, models, FLOP counting, the scaling planner and parameter counting read these
traits (``cfg.traits.gated_mlp``) and never compare ``arch`` strings; the Hugging Face
name maps in :mod:`t5x_lite.hf` are the only per-arch code. Adding an architecture
is one row here plus its HF name map::

    >>> ARCHS["mistral"].sliding_window, ARCHS["mistral"].positions
    (True, 'rope')
    >>> ARCHS["t5"].tied_head, ARCHS["t5"].head_scale, ARCHS["t5_v1_1"].tied_head
    (True, True, False)
    >>> ARCHS["qwen2"].qkv_bias, ARCHS["qwen2"].biases
    (True, False)

This module imports only the standard library.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

FAMILIES = ("encoder", "decoder", "encoder_decoder")


@dataclass(frozen=True)
class ArchTraits:
    """What one published architecture is built from.

    ``norm``: ``layernorm`` (mean-centred, with bias) | ``rmsnorm`` (T5 / Llama);
    ``norm_position``: ``pre`` (GPT-2, Llama, T5) | ``post`` (BERT);
    ``positions``: ``learned`` (a table) | ``rope`` | ``relative`` (T5's bucketed bias);
    ``gated_mlp``: ``wo(act(wi_0 x) * wi_1 x)`` instead of ``wo(act(wi x))``;
    ``biases``: dense layers carry biases; ``tied_head``: logits use the token
    embedding; ``head_scale``: the tied head multiplies by ``d_model ** -0.5`` (T5);
    ``scaled_residual_init``: residual output projections start at std / sqrt(2 L)
    (GPT-2); ``grouped_kv``: ``num_kv_heads`` may be below ``num_heads``;
    ``free_head_dim``: ``num_heads * head_dim`` may differ from ``d_model``;
    ``factorised_embedding``: ``embed_dim`` may differ from ``d_model`` (ALBERT);
    ``layer_sharing``: ``share_layers`` allowed (ALBERT); ``sliding_window``:
    ``model.sliding_window`` allowed (Mistral); ``pad_skipping_positions``: position
    ids count only real tokens (RoBERTa); ``head_activation``: the MLM head's
    activation when it is not ``model.activation`` (RoBERTa: exact GELU);
    ``qkv_bias``: the query, key and value projections carry biases even without
    ``biases`` (Qwen2); ``optional_tied_head``: ``model.tie_word_embeddings`` may tie
    or untie the head per checkpoint (Llama 3.2-1B and Qwen2-0.5B tie theirs);
    ``attention_dropout``: a decoder's ``dropout_rate`` also drops its attention
    probabilities (GPT-2's ``attn_pdrop``; Hugging Face's Llama family keeps
    ``attention_dropout`` at 0). Encoders and T5 always drop them.
    """

    family: str
    norm: str
    norm_position: str
    positions: str
    gated_mlp: bool
    biases: bool
    tied_head: bool
    head_scale: bool = False
    scaled_residual_init: bool = False
    grouped_kv: bool = False
    free_head_dim: bool = False
    factorised_embedding: bool = False
    layer_sharing: bool = False
    sliding_window: bool = False
    pad_skipping_positions: bool = False
    head_activation: str | None = None
    qkv_bias: bool = False
    optional_tied_head: bool = False
    attention_dropout: bool = False


_GPT2 = ArchTraits(
    family="decoder",
    norm="layernorm",
    norm_position="pre",
    positions="learned",
    gated_mlp=False,
    biases=True,
    tied_head=True,
    scaled_residual_init=True,
    attention_dropout=True,
)
_LLAMA = ArchTraits(
    family="decoder",
    norm="rmsnorm",
    norm_position="pre",
    positions="rope",
    gated_mlp=True,
    biases=False,
    tied_head=False,
    grouped_kv=True,
    free_head_dim=True,
    optional_tied_head=True,
)
_BERT = ArchTraits(
    family="encoder",
    norm="layernorm",
    norm_position="post",
    positions="learned",
    gated_mlp=False,
    biases=True,
    tied_head=True,
)
_T5 = ArchTraits(
    family="encoder_decoder",
    norm="rmsnorm",
    norm_position="pre",
    positions="relative",
    gated_mlp=False,
    biases=False,
    tied_head=True,
    head_scale=True,
    free_head_dim=True,
)

ARCHS: dict[str, ArchTraits] = {
    "gpt2": _GPT2,
    "llama": _LLAMA,
    "mistral": dataclasses.replace(_LLAMA, sliding_window=True),
    "qwen2": dataclasses.replace(_LLAMA, qkv_bias=True),
    "bert": _BERT,
    "roberta": dataclasses.replace(_BERT, pad_skipping_positions=True, head_activation="gelu"),
    "albert": dataclasses.replace(_BERT, factorised_embedding=True, layer_sharing=True),
    "t5": _T5,
    "t5_v1_1": dataclasses.replace(_T5, gated_mlp=True, tied_head=False, head_scale=False),
}


def archs_of(family: str) -> tuple[str, ...]:
    """The ``arch`` names of ``family``, in table order: ``archs_of("decoder")`` ->
    ``("gpt2", "llama", "mistral", "qwen2")``."""
    return tuple(name for name, t in ARCHS.items() if t.family == family)
