"""Fine-tuning heads on a stack's final hidden states (``model.task_head``).

Each head is a function called inside a family's compact ``__call__`` with the final
hidden states ``x [B, T, E]``; it adds its outputs to the module's output dict, with
parameter names and layouts of Hugging Face's classes (so checkpoints map name by
name) and logical axis names on every new parameter:

========  =========================================  ==================================
head      outputs                                    parameters (HF class)
========  =========================================  ==================================
sequence  ``class_logits [B, C]``                    encoder: ``pooler`` (tanh dense on
                                                     ``x[:, 0]``, the NSP pooler when
                                                     the base has one) + ``classifier``
                                                     (``BertForSequenceClassification``)
                                                     decoder: ``score`` (no bias) at the
                                                     last non-pad token
                                                     (``GPT2ForSequenceClassification``,
                                                     ``LlamaForSequenceClassification``)
token     ``tag_logits [B, T, C]``                   ``classifier``
                                                     (``BertForTokenClassification``)
span      ``start_logits [B, T]``, ``end_logits``    ``qa_outputs`` ``[E, 2]``
                                                     (``BertForQuestionAnswering``)
========  =========================================  ==================================

The last non-pad token of a decoder row is the last position whose
``attention_mask`` (or ``segment_ids``) is non-zero, for left or right padding:
mask ``[1, 1, 1, 0]`` -> index 2, ``[0, 1, 1, 1]`` -> 3 (GPT's extract token is the
row's final token). Dropout (``model.dropout_rate``) precedes each classifier, as in
HF. All logits are float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from t5x_lite import layers
from t5x_lite.config import ModelConfig

Array = jax.Array


def last_token_index(batch: dict[str, Array], length: int) -> Array:
    """``[B]`` int32: the last position of each row holding a real token.

    >>> last_token_index({"attention_mask": jnp.asarray([[1, 1, 0], [0, 1, 1]])}, 3)
    Array([1, 2], dtype=int32)
    """
    mask = batch.get("attention_mask", batch.get("segment_ids"))
    if mask is None:
        return jnp.full((batch["input_ids"].shape[0],), length - 1, jnp.int32)
    real = (mask != 0).astype(jnp.int32)  # [B, T]
    return jnp.argmax(real * jnp.arange(1, length + 1, dtype=jnp.int32), axis=-1).astype(jnp.int32)


def _dense(cfg: ModelConfig, features: int, out_axis: str, name: str, bias: bool = True):
    return layers.DenseGeneral(
        (features,),
        ("embed",),
        (out_axis,),
        use_bias=bias,
        dtype=layers.dtype_of(cfg.dtype),
        param_dtype=layers.dtype_of(cfg.param_dtype),
        kernel_init=layers.normal(cfg.initializer_range),
        out_dtype=jnp.float32,
        name=name,
    )


def encoder_pooled(cfg: ModelConfig, x: Array) -> Array:
    """BERT's pooler: ``tanh(x[:, 0] W_p + b_p)`` ``[B, E]`` (parameters ``pooler``)."""
    dense = layers.DenseGeneral(
        (cfg.d_model,),
        ("embed",),
        ("mlp",),
        dtype=layers.dtype_of(cfg.dtype),
        param_dtype=layers.dtype_of(cfg.param_dtype),
        kernel_init=layers.normal(cfg.initializer_range),
        name="pooler",
    )
    return jnp.tanh(dense(x[:, 0]))


def task_outputs(
    cfg: ModelConfig,
    x: Array,
    batch: dict[str, Array],
    deterministic: bool,
    pooled: Array | None = None,
) -> dict[str, Array]:
    """The outputs of ``cfg.task_head`` on hidden states ``x [B, T, E]`` (see module doc).

    ``pooled [B, E]``: an encoder's pooler output (sequence head); None for decoders,
    which read the last non-pad token. Call inside a compact module.
    """
    drop = nn.Dropout(cfg.dropout_rate)
    head = cfg.task_head
    if head == "sequence":
        if pooled is not None:  # encoder: [B, E] -> [B, C]
            logits = _dense(cfg, cfg.num_labels, "classes", "classifier")(
                drop(pooled, deterministic=deterministic)
            )
        else:  # decoder: score every position, keep the last real token's
            every = _dense(cfg, cfg.num_labels, "classes", "score", bias=False)(x)  # [B, T, C]
            last = last_token_index(batch, x.shape[1])  # [B]
            logits = jnp.take_along_axis(every, last[:, None, None], axis=1)[:, 0]
        return {"class_logits": logits.astype(jnp.float32)}
    if head == "token":
        logits = _dense(cfg, cfg.num_labels, "classes", "classifier")(
            drop(x, deterministic=deterministic)
        )  # [B, T, C]
        return {"tag_logits": logits.astype(jnp.float32)}
    if head == "span":
        both = _dense(cfg, 2, "classes", "qa_outputs")(x)  # [B, T, 2]
        return {
            "start_logits": both[..., 0].astype(jnp.float32),
            "end_logits": both[..., 1].astype(jnp.float32),
        }
    raise ValueError(f"model.task_head={head!r}")


def count_params(cfg: ModelConfig) -> int:
    """Parameters of ``cfg.task_head`` (0 for none): e.g. an encoder's sequence head
    with ``E = 64``, 3 labels is ``64 * 64 + 64 + 64 * 3 + 3 = 4355``."""
    e, c = cfg.d_model, cfg.num_labels
    if cfg.task_head == "sequence":
        return (e * e + e + e * c + c) if cfg.family == "encoder" else e * c
    if cfg.task_head == "token":
        return e * c + c
    if cfg.task_head == "span":
        return e * 2 + 2
    return 0
