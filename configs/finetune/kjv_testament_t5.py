"""Which testament a KJV verse comes from, T5 text to text on a ``t5_tiny`` base.

The target is the label's word (``old`` / ``new``) + EOS, trained with the token
head; the prediction is the label word with the highest log-likelihood::

    python run_train.py --config=configs/t5_tiny.py --workdir=runs/t5_tiny
    python -m t5x_lite.data.kjv_tasks build --task=testament --out=runs/tasks/testament
    python run_train.py --config=configs/finetune/kjv_testament_t5.py \\
        --config.train.init_from=runs/t5_tiny --workdir=runs/ft_testament_t5
"""

from t5x_lite import presets

shared = presets.sibling(__file__, "shared")


def get_config(variant: str | None = None):
    return shared.finetune("t5_tiny", "testament", variant=variant, target_len=4)
