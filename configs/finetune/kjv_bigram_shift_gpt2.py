"""Bigram shift on KJV verses (SentEval's word-order probe), GPT-2 `make train` base.

The decoder reads the verse and classifies it at its final (EOS) token, GPT's extract
token (HF ``GPT2ForSequenceClassification``); the model section is the one of
``configs/default.py`` so the base ``runs/default`` (``make train``) fits::

    python -m t5x_lite.data.kjv_tasks build --task=bigram_shift --out=runs/tasks/bigram_shift
    python run_train.py --config=configs/finetune/kjv_bigram_shift_gpt2.py \\
        --config.train.init_from=runs/default --workdir=runs/ft_bigram_gpt2

A bag of words is at chance on this task by construction (see README.md).
"""

from t5x_lite import presets

shared = presets.sibling(__file__, "shared")


def get_config(variant: str | None = None):
    return shared.finetune("default", "bigram_shift", variant=variant)
