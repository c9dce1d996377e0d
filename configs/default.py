"""The no-flag run (``python run_train.py`` / ``make train``): a small GPT-2 on kjv.

4 layers, d_model 128, 4 heads, MLP 512 and a 2048-piece BPE vocabulary (~0.8M
non-embedding parameters), trained for 1600 steps of 16 x 128 tokens (3.3M tokens,
about 2.5 passes over the King James Bible): 7 minutes on an idle 2-core CPU (4.2
steps/s), longer when the cores are shared. Reaches an eval perplexity of ~32.
AdamW with a 3e-3 peak, 100 warmup steps and cosine decay; evaluation and a
checkpoint every 200 steps; plots refreshed every 50.
"""

from t5x_lite import presets


def get_config(variant: str | None = None):
    return presets.make(
        variant=variant,
        model=dict(
            family="decoder",
            arch="gpt2",
            vocab_size=2048,
            d_model=128,
            num_heads=4,
            num_layers=4,
            d_ff=512,
            max_seq_len=128,
            norm_eps=1e-5,
            activation="gelu_new",
        ),
        data=dict(corpus="kjv", objective="causal_lm", seq_len=128),
        optimizer=dict(learning_rate=3e-3, warmup_steps=100, weight_decay=0.1),
        train=dict(
            batch_size=16,
            num_steps=1600,
            log_every=10,
            eval_every=200,
            eval_batches=8,
            plot_every=50,
        ),
        checkpoint=dict(every_steps=200),
    )
