"""ALBERT architecture at test size: factorised embeddings (32 < d_model 64), one
layer shared across 2 applications, MLM + sentence-order prediction on kjv."""

from t5x_lite import presets


def get_config(variant: str | None = None):
    return presets.make(
        variant=variant,
        model=dict(
            family="encoder",
            arch="albert",
            vocab_size=2048,
            d_model=64,
            embed_dim=32,
            num_heads=4,
            num_layers=2,
            d_ff=256,
            max_seq_len=128,
            type_vocab_size=2,
            share_layers=True,
            sentence_head=True,
            activation="gelu_new",
            norm_eps=1e-12,
        ),
        data=dict(corpus="kjv", objective="mlm", sentence_objective="sop", seq_len=128),
        train=dict(batch_size=16, num_steps=200, log_every=10, eval_every=100),
    )
