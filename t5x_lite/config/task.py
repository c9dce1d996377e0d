"""``TaskConfig``: a fine-tuning task read from local CSV / JSONL files.

``task.kind`` picks the records and the head that scores them (see
:mod:`t5x_lite.data.tasks` for the file formats):

======================  ==============================  ================================
kind                    fields of a record              head (``model.task_head``)
======================  ==============================  ================================
classification          text, optional text_pair, label  sequence (encoder, decoder);
                                                         label words (encoder-decoder)
token_classification    tokens (words), tags             token
span_qa                 question, context, answer,       span
                        answer_start (characters)
======================  ==============================  ================================

Field names are configurable (``task.text_field`` ...). ``task.labels`` lists the
classes (or tags) in id order; a record whose label is not among them is an error
naming its file and line. Validation comes from ``task.validation_file`` or, when it
is empty, from a held-out ``task.validation_fraction`` of the training file chosen with
``task.split_seed``.
"""

from __future__ import annotations

from dataclasses import dataclass

from t5x_lite.config.errors import check as _check

TASK_KINDS = ("none", "classification", "token_classification", "span_qa")
# The model head each kind trains, by family (encoder-decoders score label words).
_HEAD_OF = {
    "classification": {"encoder": "sequence", "decoder": "sequence", "encoder_decoder": "none"},
    "token_classification": {"encoder": "token", "decoder": "token"},
    "span_qa": {"encoder": "span", "decoder": "span"},
}


@dataclass(frozen=True)
class TaskConfig:
    kind: str = "none"  # none | classification | token_classification | span_qa
    train_file: str = ""  # .csv, .tsv or .jsonl
    validation_file: str = ""  # "" holds out validation_fraction of train_file
    validation_fraction: float = 0.1
    split_seed: int = 0
    # Class names (classification) or tags (token classification), in id order.
    labels: tuple[str, ...] = ()
    text_field: str = "text"
    text_pair_field: str = "text_pair"  # optional: used when the records have it
    label_field: str = "label"
    tokens_field: str = "tokens"
    tags_field: str = "tags"
    question_field: str = "question"
    context_field: str = "context"
    answer_field: str = "answer"
    answer_start_field: str = "answer_start"
    # Span QA: longest predicted answer, in tokens.
    max_answer_len: int = 30

    def validate(self, model: object) -> TaskConfig:
        family = getattr(model, "family", "")
        head = getattr(model, "task_head", "none")
        _check(
            self.kind in TASK_KINDS,
            f"task.kind={self.kind!r} is not one of {', '.join(TASK_KINDS)}",
        )
        if self.kind == "none":
            _check(
                head == "none",
                f"model.task_head={head!r} needs a task (task.kind and task.train_file)",
            )
            return self
        _check(bool(self.train_file), f"task.kind={self.kind!r} needs task.train_file")
        want = _HEAD_OF[self.kind].get(family)
        _check(
            want is not None,
            f"task.kind={self.kind!r} is not available for model.family={family!r}",
        )
        _check(
            head == want,
            f"task.kind={self.kind!r} on model.family={family!r} needs model.task_head="
            f"{want!r} (got {head!r})",
        )
        if self.kind in ("classification", "token_classification"):
            _check(
                len(self.labels) >= 2 and len(set(self.labels)) == len(self.labels),
                f"task.labels={list(self.labels)!r} must list at least 2 distinct labels",
            )
            if head != "none":
                n = getattr(model, "num_labels", 0)
                _check(
                    n == len(self.labels),
                    f"model.num_labels={n} differs from the {len(self.labels)} task.labels",
                )
        _check(
            bool(self.validation_file) or 0.0 < self.validation_fraction < 1.0,
            f"task.validation_fraction={self.validation_fraction} must be in (0, 1)",
        )
        _check(
            isinstance(self.max_answer_len, int) and self.max_answer_len > 0,
            f"task.max_answer_len={self.max_answer_len!r} must be a positive integer",
        )
        return self
