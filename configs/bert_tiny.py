"""BERT architecture at test size: 2 layers, d_model 64, MLM + next-sentence prediction on kjv."""

from t5x_lite import presets

base = presets.sibling(__file__, "base")


def get_config(variant: str | None = None):
    return presets.make(
        variant=variant,
        model=dict(
            family="encoder",
            arch="bert",
            vocab_size=2048,
            d_model=64,
            num_heads=4,
            num_layers=2,
            d_ff=256,
            max_seq_len=128,
            type_vocab_size=2,
            sentence_head=True,
            activation="gelu",
            norm_eps=1e-12,
        ),
        data=base.TINY_MLM_DATA | dict(sentence_objective="nsp"),
        train=base.TINY_TRAIN,
    )
