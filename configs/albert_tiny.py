"""ALBERT architecture at test size: factorised embeddings (32 < d_model 64), one
layer shared across 2 applications, MLM + sentence-order prediction on kjv."""

from t5x_lite import presets

base = presets.sibling(__file__, "base")


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
        data=base.TINY_MLM_DATA | dict(sentence_objective="sop"),
        train=base.TINY_TRAIN,
    )
