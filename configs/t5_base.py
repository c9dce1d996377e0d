"""Original T5-base (223M): 12+12 layers, d_model 768, 12 heads x 64, ReLU MLP 3072.

Exactly ``google-t5/t5-base`` (Raffel et al. 2020): vocab 32128, bucketed relative
position bias (32 buckets up to distance 128), RMS LayerNorm eps 1e-6, head tied to
the input embedding and scaled by d_model**-0.5; ``count_params`` gives 222,903,552
like Hugging Face. Pretraining as in the paper: span corruption (15% noise, mean
span 3) on 512-token inputs, batches of 128, 2^19 steps, Adafactor with an
inverse-square-root schedule (peak 0.01 after 10k warmup steps), dropout 0.1.

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
            arch="t5",
            vocab_size=32128,
            d_model=768,
            num_heads=12,
            head_dim=64,
            num_layers=12,
            num_decoder_layers=12,
            d_ff=3072,
            max_seq_len=512,
            activation="relu",
            dropout_rate=0.1,
        ),
        data=base.T5_DATA,
        optimizer=base.T5_OPTIMIZER,
        train=base.T5_TRAIN | dict(num_steps=524_288),
        checkpoint=dict(every_steps=5000),
    )
