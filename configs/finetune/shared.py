"""What the fine-tuning presets of this folder share: a base preset's model section
plus a task head, the KJV task files, and a short fine-tuning recipe.

``finetune(base, task)`` keeps the model of ``configs/<base>.py`` (so its workdir is a
valid ``train.init_from``), adds the head of ``task`` (``t5x_lite.data.kjv_tasks``:
files under ``runs/tasks/<task>/``), and trains 300 steps of 32 verses (64 tokens),
AdamW 3e-4 with linear decay, evaluating on the whole validation split every 50 steps
and keeping the best checkpoint in ``<workdir>/best/`` (by accuracy; by macro-F1 for
the ``names`` tags, by F1 for the ``relations`` answers).
"""

from t5x_lite import presets

LABELS = {
    "bigram_shift": ("original", "shifted"),
    "testament": ("old", "new"),
    "word_order": ("original", "shuffled"),
    "names": ("O", "NAME"),
    "relations": (),
}
# task.kind, model.task_head and the checkpoint kept as best, per task (classification
# otherwise): the names task tags words, the relations task answers with a span.
KINDS = {
    "names": ("token_classification", "token", "macro_f1"),
    "relations": ("span_qa", "span", "f1"),
}


def finetune(
    base: str,
    task: str,
    variant: str | None = None,
    target_len: int | None = None,
    seq_len: int = 64,
):
    model = presets.sibling(__file__, f"../{base}").get_config().to_dict()["model"]
    family = model["family"]
    kind, head, best = KINDS.get(task, ("classification", "sequence", "accuracy"))
    model |= dict(sentence_head=False, dropout_rate=0.1)
    if family != "encoder_decoder":
        model |= dict(task_head=head, num_labels=len(LABELS[task]))
    data = dict(corpus="kjv", seq_len=seq_len, target_len=target_len)
    data["objective"] = {"encoder": "mlm", "decoder": "causal_lm"}.get(family, "span_corruption")
    return presets.make(
        variant=variant,
        model=model,
        data=data,
        task=dict(
            kind=kind,
            train_file=f"runs/tasks/{task}/train.jsonl",
            validation_file=f"runs/tasks/{task}/validation.jsonl",
            labels=LABELS[task],
        ),
        optimizer=dict(
            learning_rate=3e-4,
            schedule="linear",
            warmup_steps=30,
            min_lr_ratio=0.0,
            weight_decay=0.01,
        ),
        train=dict(batch_size=32, num_steps=300, log_every=10, eval_every=50, plot_every=50),
        checkpoint=dict(every_steps=100, keep=1, best_metric=best),
    )
