"""The model object of a family: its module, its outputs, how each is scored.

As T5X's ``BaseModel``, the model (not the trainer) owns its loss and predictions:
a family lists its :class:`Head` s (an output key, its labels, its weighting) and
the generic weighted cross-entropy of :mod:`t5x_lite.losses` scores each one. A new
head (a classifier, a span head) is a new output of the module plus one
:class:`Head` here.

    >>> from t5x_lite.config import ModelConfig
    >>> m = get(ModelConfig(family="encoder", arch="bert", vocab_size=100, d_model=16,
    ...                     num_heads=2, num_layers=1, d_ff=32, max_seq_len=8,
    ...                     type_vocab_size=2, sentence_head=True))
    >>> [h.output for h in m.heads]
    ['logits', 'sentence_logits']

Losses are **sums** over the batch with their denominators (:meth:`BaseModel.
denominators` of the *global* batch), so microbatches and evaluation batches divide
once: the loss is ``sum_h loss_sum_h / weight_h`` (BERT's ``mlm_loss + nsp_loss``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from t5x_lite import losses
from t5x_lite.config import ModelConfig

Array = jax.Array
Batch = dict[str, Array]


@dataclass(frozen=True)
class Head:
    """One scored output.

    ``output``: key of the module's output (logits ``[B, T, C]`` or ``[B, C]``);
    ``labels``: batch key of its int labels (``[B, T]`` or ``[B]``); ``weights``: batch
    key of per-label weights, or None for one per row; ``prefix`` of its sums and
    metrics; ``ce_metric``: the name its mean cross-entropy is reported under;
    ``smoothed``: label smoothing and z-loss apply (the token objective).
    """

    output: str
    labels: str
    weights: str | None
    prefix: str
    ce_metric: str
    smoothed: bool


TOKENS = Head("logits", "labels", "loss_weights", "", "ce", smoothed=True)
SENTENCE = Head("sentence_logits", "next_sentence_label", None, "sentence_", "sentence_loss", False)
# Fine-tuning heads (model.task_head, t5x_lite.models.heads). Padding rows of an
# evaluation batch carry weight 0. Span QA's loss is start CE + end CE (HF averages
# the two: half this value).
SEQUENCE = Head("class_logits", "class_labels", "class_weights", "", "ce", False)
TAGS = Head("tag_logits", "tag_labels", "tag_weights", "", "ce", False)
SPAN_START = Head("start_logits", "start_positions", "span_weights", "start_", "start_ce", False)
SPAN_END = Head("end_logits", "end_positions", "span_weights", "end_", "end_ce", False)
TASK_HEADS = {"sequence": (SEQUENCE,), "token": (TAGS,), "span": (SPAN_START, SPAN_END)}


class BaseModel:
    """A family's Linen module plus its heads: ``apply``, ``loss_sums``, ``loss``,
    ``metrics``, ``score_batch`` and ``predict_batch``."""

    def __init__(self, cfg: ModelConfig, module: nn.Module, heads: tuple[Head, ...]):
        self.config = cfg
        self.module = module
        self.heads = heads

    def apply(
        self, params: Any, batch: Batch, deterministic: bool = True, rngs: Any = None
    ) -> dict[str, Array]:
        """The module's outputs (``{"logits": [B, T, V] float32, ...}``)."""
        return self.module.apply({"params": params}, batch, deterministic=deterministic, rngs=rngs)

    def _weights(self, head: Head, batch: Batch) -> Array:
        labels = batch[head.labels]
        if head.weights is None:
            return jnp.ones(labels.shape, jnp.float32)
        return batch[head.weights].astype(jnp.float32)

    def loss_sums(
        self,
        outputs: dict[str, Array],
        batch: Batch,
        label_smoothing: float = 0.0,
        z_loss: float = 0.0,
    ) -> dict[str, Array]:
        """Per-batch **sums** of every head: ``{prefix}loss`` (with smoothing / z-loss
        where the head takes them), ``{prefix}ce``, ``{prefix}correct``,
        ``{prefix}weight`` (float32 scalars)."""
        out: dict[str, Array] = {}
        for h in self.heads:
            smooth, z = (label_smoothing, z_loss) if h.smoothed else (0.0, 0.0)
            out.update(
                losses.weighted_sums(
                    outputs[h.output],
                    batch[h.labels],
                    self._weights(h, batch),
                    h.prefix,
                    smooth,
                    z,
                )
            )
        return out

    def denominators(self, batch: Batch) -> dict[str, Array]:
        """``{prefix}weight`` of every head over ``batch`` (pass the global batch)."""
        return {f"{h.prefix}weight": jnp.sum(self._weights(h, batch)) for h in self.heads}

    def loss(self, sums: dict[str, Array], denominators: dict[str, Array]) -> Array:
        """The optimised objective: ``sum_h sums[{p}loss] / denominators[{p}weight]``."""
        return losses.total_loss(sums, denominators)

    def metrics(self, sums: dict[str, Array], denominators: dict[str, Array]) -> dict[str, Array]:
        """``loss`` plus each head's mean cross-entropy (``ce``, ``sentence_loss``) and
        accuracy (``accuracy``, ``sentence_accuracy``)."""
        out = {"loss": self.loss(sums, denominators)}
        for h in self.heads:
            w = jnp.maximum(denominators[f"{h.prefix}weight"], 1.0)
            out[h.ce_metric] = sums[f"{h.prefix}ce"] / w
            out[f"{h.prefix}accuracy"] = sums[f"{h.prefix}correct"] / w
        return out

    def score_batch(self, params: Any, batch: Batch) -> Array:
        """``[B]`` log-likelihood of each row's labels under the token head, summed
        over its ``loss_weights`` (T5X's ``score_batch``: rank candidates, few-shot)."""
        outputs = self.apply(params, batch)
        log_p = jax.nn.log_softmax(outputs[TOKENS.output].astype(jnp.float32), axis=-1)
        token = jnp.take_along_axis(log_p, batch["labels"][..., None].astype(jnp.int32), -1)
        return jnp.sum(token[..., 0] * batch["loss_weights"].astype(jnp.float32), axis=-1)

    def predict_batch(self, params: Any, batch: Batch) -> dict[str, Array]:
        """Argmax predictions of every head: ``{"predictions": [B, T]}`` (the token at
        each position) and, with a sentence head, ``{"sentence_predictions": [B]}``.
        Sampling and cached decoding live in :mod:`t5x_lite.decoding`."""
        outputs = self.apply(params, batch)
        return {
            f"{h.prefix}predictions": jnp.argmax(outputs[h.output], axis=-1).astype(jnp.int32)
            for h in self.heads
        }
