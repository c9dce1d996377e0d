"""T5 v1.1-small (77M): 8+8 layers, d_model 512, 6 heads x 64, gated-GELU MLP 1024.

The shape of ``google/t5-v1_1-small`` (vocab 32128, heads x head_dim = 384 !=
d_model, untied LM head, no dropout in pretraining); span corruption on 512-token
inputs with Adafactor and an inverse-square-root schedule, as in the T5 v1.1
release.
"""

from configs import base


def get_config():
    return base.make(
        model=dict(
            family="encoder_decoder",
            arch="t5_v1_1",
            vocab_size=32128,
            d_model=512,
            num_heads=6,
            head_dim=64,
            num_layers=8,
            num_decoder_layers=8,
            d_ff=1024,
            max_seq_len=512,
            norm_eps=1e-6,
            activation="gelu_new",
            relative_num_buckets=32,
            relative_max_distance=128,
            dtype="bfloat16",
        ),
        data=dict(
            corpus="kjv",
            objective="span_corruption",
            seq_len=512,
            noise_density=0.15,
            mean_noise_span_length=3.0,
        ),
        optimizer=dict(
            name="adafactor",
            learning_rate=0.01,
            schedule="inverse_sqrt",
            warmup_steps=10000,
            weight_decay=0.0,
        ),
        train=dict(batch_size=128, num_steps=100000, log_every=50, eval_every=2000),
    )
