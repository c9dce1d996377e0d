"""IsoFLOP sweep for one GPU: GPT-2 shapes over 1e16 ... 1e18 FLOPs (two orders of magnitude).

The CPU sweep (``configs/scaling_sweep.py``) reaches 2e13 FLOPs; this is the same
recipe a thousand times larger, for a GPU node with the project installed::

    python -m t5x_lite.scaling sweep --config configs/scaling_sweep_gpu.py \\
        --out results/scaling_gpu --set data.corpus=/data/text   # a folder of .txt files
    python -m t5x_lite.scaling sweep --config configs/scaling_sweep_gpu.py --out DIR --plan-only

Five budgets (each ×√10), five sizes each around hoffmann2022's optimum (÷2.5 ... ×2.5):
3.7M- to 187M-parameter models. The largest run reads 5.4B tokens, so
``data.corpus`` must hold at least that many unique tokens under its 32k-piece
tokenizer (the sweep refuses a corpus that would repeat). 1024-token rows, 256 rows per
step (262k tokens), bf16 compute with float32 parameters, each size at the learning
rate of a µP-style rule (``scaling.sweep_lr_rule``: 6e-4 at GPT-2 small's 124M
parameters, ∝ N^-0.5, the exponent the CPU sweep's tuned rates give). The sweep spends
7.3e18 FLOPs by 6ND: about 5 hours on one H100 at 400 TFLOP/s (40% of its bf16 peak).
"""

from t5x_lite import presets

base = presets.sibling(__file__, "base")


def get_config(variant: str | None = None):
    return presets.make(
        variant=variant,
        model=base.GPT2_MODEL
        | dict(
            vocab_size=32768,
            d_model=256,
            num_heads=4,
            num_layers=4,
            d_ff=1024,
            max_seq_len=1024,
        ),
        data=dict(corpus="kjv", objective="causal_lm", seq_len=1024, tokenizer_vocab_size=32768),
        optimizer=dict(learning_rate=6e-4, warmup_steps=500, weight_decay=0.1, min_lr_ratio=0.1),
        train=dict(batch_size=256, log_every=50, eval_batches=64, progress_bar=True),
        checkpoint=dict(every_steps=1000),
        scaling=dict(
            fit="hoffmann2022",
            sweep_budgets=(1e16, 3.1623e16, 1e17, 3.1623e17, 1e18),
            sweep_sizes=5,
            sweep_spread=2.5,
            sweep_lr_rule=(6e-4, 1.24e8, 0.5),
        ),
    )
