"""T5 v1.1 architecture at test size: 2+2 layers, d_model 64, 4 heads x 16, span corruption.

RMSNorm, bucketed relative position bias (32 buckets up to distance 128), gated-GELU
MLP, no biases, untied LM head; trained with T5's span-corruption objective on kjv.
"""

from t5x_lite import presets

base = presets.sibling(__file__, "base")


def get_config(variant: str | None = None):
    return presets.make(
        variant=variant,
        model=dict(
            family="encoder_decoder",
            arch="t5_v1_1",
            vocab_size=2048,
            d_model=64,
            num_heads=4,
            head_dim=16,
            num_layers=2,
            num_decoder_layers=2,
            d_ff=128,
            max_seq_len=256,
            norm_eps=1e-6,
            activation="gelu_new",
            relative_num_buckets=32,
            relative_max_distance=128,
        ),
        data=dict(corpus="kjv", objective="span_corruption", seq_len=128),
        train=base.TINY_TRAIN,
    )
