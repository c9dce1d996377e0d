"""T5 v1.1-small (77M): 8+8 layers, d_model 512, 6 heads x 64, gated-GELU MLP 1024.

The shape of ``google/t5-v1_1-small`` (vocab 32128, heads x head_dim = 384 !=
d_model, untied LM head, no dropout in pretraining); span corruption on 512-token
inputs with Adafactor and an inverse-square-root schedule, as in the T5 v1.1
release.

Data: on the embedded kjv corpus (about 1M tokens) the tokenizer is an 8192-piece
SentencePiece BPE (``data.tokenizer_vocab_size``; kjv supports at most 34,646 ids,
and beyond ~8k most pieces would be seen only a handful of times). The model keeps
its published 32128-row vocabulary, as nanoGPT pads GPT-2's to 50304: rows
8192..32127 stay unused (never fed, targeted or sampled). On a larger corpus raise
``data.tokenizer_vocab_size`` (up to 32128), or load a SentencePiece ``.model`` of
at most 32128 ids with ``data.tokenizer``. The 100 span-corruption sentinels are
the tokenizer's top ids (``<extra_id_0>`` = 8191 ... ``<extra_id_99>`` = 8092).
"""

from t5x_lite import presets


def get_config(variant: str | None = None):
    return presets.make(
        variant=variant,
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
            tokenizer_vocab_size=8192,
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
