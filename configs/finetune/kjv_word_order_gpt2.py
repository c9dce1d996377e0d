"""Word order on KJV verses: original or shuffled, GPT-2 `make train` base (the example
task of ``make finetune``).

In half the training verses (and in a second copy of every validation verse) the words
before the last are shuffled; both versions hold the same words, so a bag of words is at
chance by construction and only word order tells them apart. The decoder classifies at
its final (EOS) token (HF ``GPT2ForSequenceClassification``)::

    python -m t5x_lite.data.kjv_tasks build --task=word_order --out=runs/tasks/word_order
    python run_train.py --config=configs/finetune/kjv_word_order_gpt2.py \\
        --config.train.init_from=runs/default --workdir=runs/ft_word_order_gpt2
"""

from t5x_lite import presets

shared = presets.sibling(__file__, "shared")


def get_config(variant: str | None = None):
    return shared.finetune("default", "word_order", variant=variant)
