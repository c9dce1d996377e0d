"""IsoFLOP sweep on a 2-core CPU: tiny GPT-2 models on the Python 3.11 documentation.

    apt-get install python3.11-doc   # 11 MB of English reST in ~500 files
    python -m t5x_lite.scaling sweep --config configs/scaling_sweep.py \\
        --out results/scaling --workdir /tmp/t5x_lite_scaling

Four budgets over 1.5 orders of magnitude, five sizes each around hoffmann2022's
optimum (÷2.5 ... ×2.5). The corpus holds 4.58M training tokens under the 1024-piece
tokenizer (its characters alone need ~470 pieces), more than any run reads; the
10 held-out documents (36k tokens) are the eval set, read in full at the end.
"""

from t5x_lite import presets

CORPUS = "/usr/share/doc/python3.11/html/_sources"


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
            sweep_budgets=(7e10, 2.214e11, 7e11, 2.214e12),
            sweep_sizes=5,
            sweep_spread=2.5,
        ),
    )
