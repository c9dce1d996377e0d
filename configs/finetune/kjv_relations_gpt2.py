"""Relations in KJV verses: extractive span QA, GPT-2 `make train` base.

Questions from the first relation a verse states between two names (``X the son of
Y`` -> ``Whose son is X?``; ``daughter of``, ``begat``, ``king of``); the answer is the
span ``Y`` of the verse (HF ``GPT2ForQuestionAnswering``: start/end logits over the
row ``question [SEP] verse [EOS]``, 128 tokens). Validation: a seeded quarter of the
verses holding a relation (265); the best checkpoint is kept by SQuAD F1::

    python -m t5x_lite.data.kjv_tasks build --task=relations --out=runs/tasks/relations
    python run_train.py --config=configs/finetune/kjv_relations_gpt2.py \\
        --config.train.init_from=runs/default --workdir=runs/ft_relations_gpt2
"""

from t5x_lite import presets

shared = presets.sibling(__file__, "shared")


def get_config(variant: str | None = None):
    return shared.finetune("default", "relations", variant=variant, seq_len=128)
