"""ALBERT-base (Lan et al. 2020): 12 applications of one shared layer, 12M parameters.

Exactly HF ``albert-base-v2``: d_model 768, 12 heads, MLP 3072, factorised
embeddings of width 128, 30000-token vocabulary, 512 positions, 2 segment types,
``gelu_new``, LayerNorm eps 1e-12, MLM + sentence-order prediction heads. The paper
trains with LAMB (lr 0.00176, batch 4096, 125k steps); t5x_lite offers AdamW and
Adafactor, so this preset keeps the paper's batch, length and step count with
BERT's AdamW settings (peak 1e-4 scaled by sqrt(4096 / 256) to 4e-4, 3125 warmup
steps, linear decay to 0, weight decay 0.01). 16 microbatches of 256 rows.

Data: on the embedded kjv corpus (about 1M tokens) the tokenizer is an 8192-piece
SentencePiece BPE (``data.tokenizer_vocab_size``; kjv supports at most 34,646 ids,
and beyond ~8k most pieces would be seen only a handful of times). The model keeps
its published 30000-row vocabulary, as nanoGPT pads GPT-2's to 50304: rows
8192..29999 stay unused (never fed, targeted or sampled). On a larger corpus raise
``data.tokenizer_vocab_size`` (up to 30000), or load a SentencePiece ``.model`` of
at most 30000 ids with ``data.tokenizer``.
"""

from t5x_lite import presets

base = presets.sibling(__file__, "base")


def get_config(variant: str | None = None):
    return presets.make(
        variant=variant,
        model=dict(
            family="encoder",
            arch="albert",
            vocab_size=30000,
            d_model=768,
            embed_dim=128,
            num_heads=12,
            num_layers=12,
            d_ff=3072,
            max_seq_len=512,
            type_vocab_size=2,
            share_layers=True,
            sentence_head=True,
            activation="gelu_new",
            norm_eps=1e-12,
            dtype="bfloat16",
        ),
        data=base.KJV_8K | dict(objective="mlm", sentence_objective="sop", seq_len=512),
        optimizer=base.ENCODER_OPTIMIZER
        | dict(learning_rate=4e-4, warmup_steps=3125, min_lr_ratio=0.0, b1=0.9, b2=0.999),
        train=dict(
            batch_size=4096, microbatches=16, num_steps=125_000, log_every=100, eval_every=5000
        ),
        checkpoint=dict(every_steps=5000),
    )
