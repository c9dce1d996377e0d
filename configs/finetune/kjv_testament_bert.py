"""Which testament a KJV verse comes from, BERT encoder on a ``bert_tiny`` base.

Pooled ``[CLS]`` classification (HF ``BertForSequenceClassification``; the pooler is
the base's NSP pooler). The model section is ``configs/bert_tiny.py``'s::

    python run_train.py --config=configs/bert_tiny.py --workdir=runs/bert_tiny
    python -m t5x_lite.data.kjv_tasks build --task=testament --out=runs/tasks/testament
    python run_train.py --config=configs/finetune/kjv_testament_bert.py \\
        --config.train.init_from=runs/bert_tiny --workdir=runs/ft_testament_bert
"""

from t5x_lite import presets

shared = presets.sibling(__file__, "shared")


def get_config(variant: str | None = None):
    return shared.finetune("bert_tiny", "testament", variant=variant)
