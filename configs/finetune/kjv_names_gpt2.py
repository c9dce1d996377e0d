"""Names in KJV verses: token classification (``O`` / ``NAME`` per word), GPT-2
`make train` base.

A word is a ``NAME`` when it is capitalised and its lowercase form never occurs
lowercase in the KJV (``Moses``, ``Abraham’s``; not ``Let``, ``God``, ``LORD``, ``I``:
:func:`t5x_lite.data.kjv_tasks.is_name`). The first piece of each word carries its tag
(HF ``GPT2ForTokenClassification``); validation: the 685 verses of the held-out
chapters; the best checkpoint is kept by macro-F1::

    python -m t5x_lite.data.kjv_tasks build --task=names --out=runs/tasks/names
    python run_train.py --config=configs/finetune/kjv_names_gpt2.py \\
        --config.train.init_from=runs/default --workdir=runs/ft_names_gpt2
"""

from t5x_lite import presets

shared = presets.sibling(__file__, "shared")


def get_config(variant: str | None = None):
    return shared.finetune("default", "names", variant=variant)
