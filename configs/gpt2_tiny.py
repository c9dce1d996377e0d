"""GPT-2 architecture at test size: 2 layers, d_model 64, causal LM on kjv."""

from t5x_lite import presets

base = presets.sibling(__file__, "base")


def get_config(variant: str | None = None):
    return presets.make(
        variant=variant,
        model=dict(
            family="decoder", arch="gpt2", vocab_size=2048, d_model=64, num_heads=4,
            num_layers=2, d_ff=256, max_seq_len=128, norm_eps=1e-5, activation="gelu_new",
        ),
        data=dict(corpus="kjv", objective="causal_lm", seq_len=128),
        train=base.TINY_TRAIN,
    )
