"""Data-constrained sweep on a 2-core CPU: the IsoFLOP sweep's setup, with the training
data cut to 65,536 unique tokens and read 1 to 16 times.

    python -m t5x_lite.scaling sweep --config configs/scaling_repeat.py --out results/scaling_repeat

At each budget, one run per epoch count e reads D = e x 65,536 tokens with N = C / 6D
parameters (Muennighoff et al. 2023's question: more epochs of a small model, or fewer
of a large one?). The law of unique data is the IsoFLOP sweep's own fit
(``results/scaling/fit_total.json``, same corpus, tokenizer, batch and schedule), so
the report fits only the decay constant R_D* of repeated data
(:mod:`t5x_lite.scaling.repeats`). The unique tokens are whole documents drawn at
random from the whole training split (``data.unique_tokens``); evaluation uses the
same held-out chapters as the IsoFLOP sweep.
"""

from t5x_lite import presets


def get_config(variant: str | None = None):
    cfg = presets.sibling(__file__, "scaling_sweep").get_config(variant)
    cfg.data.unique_tokens = 65536
    cfg.scaling.fit = "results/scaling/fit_total.json"
    cfg.scaling.sweep_budgets = (1.8974e11, 6e11)
    cfg.scaling.sweep_epochs = (1, 2, 4, 8, 16)
    return cfg
