"""Original T5-small (60.5M): 6+6 layers, d_model 512, 8 heads x 64, ReLU MLP 2048.

Exactly the architecture of Raffel et al. 2020 / ``google-t5/t5-small`` (vocab
32128, bucketed relative position bias, head tied to the input embedding and
scaled by d_model**-0.5); ``count_params`` gives 60,506,624 like Hugging Face.
Training follows the paper's pretraining recipe: span corruption (15% noise,
mean span 3) on 512-token inputs, Adafactor with an inverse-square-root schedule
(peak 0.01 after 10k warmup steps), dropout 0.1.

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
            d_model=512,
            num_heads=8,
            head_dim=64,
            num_layers=6,
            num_decoder_layers=6,
            d_ff=2048,
            max_seq_len=512,
            activation="relu",
            dropout_rate=0.1,
        ),
        data=base.T5_DATA,
        optimizer=base.T5_OPTIMIZER,
        train=base.T5_TRAIN | dict(num_steps=100000),
    )
