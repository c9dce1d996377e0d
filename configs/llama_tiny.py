"""Llama architecture at test size: 2 layers, d_model 64, 4 heads sharing 2 KV heads.

RMSNorm, RoPE, SwiGLU MLP (d_ff 172 ~ 8/3 * d_model), grouped-query attention
and an untied LM head; causal LM on kjv.
"""

from t5x_lite import presets

base = presets.sibling(__file__, "base")


def get_config(variant: str | None = None):
    return presets.make(
        variant=variant,
        model=dict(
            family="decoder",
            arch="llama",
            vocab_size=2048,
            d_model=64,
            num_heads=4,
            num_kv_heads=2,
            num_layers=2,
            d_ff=172,
            max_seq_len=128,
            norm_eps=1e-5,
            activation="silu",
            rope_theta=10000.0,
        ),
        data=dict(corpus="kjv", objective="causal_lm", seq_len=128),
        train=base.TINY_TRAIN,
    )
