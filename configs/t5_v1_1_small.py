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

base = presets.sibling(__file__, "base")


def get_config(variant: str | None = None):
    return presets.make(
        variant=variant,
        model=base.T5_MODEL
        | dict(
            arch="t5_v1_1",
            vocab_size=32128,
            d_model=512,
            num_heads=6,
            head_dim=64,
            num_layers=8,
            num_decoder_layers=8,
            d_ff=1024,
            max_seq_len=512,
            activation="gelu_new",
        ),
        data=base.T5_DATA,
        optimizer=base.T5_OPTIMIZER,
        train=base.T5_TRAIN | dict(num_steps=100000),
    )
