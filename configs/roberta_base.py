"""RoBERTa-base (Liu et al. 2019): BERT-base layers, MLM only, 125M parameters.

Exactly HF ``roberta-base``: 12 layers, d_model 768, 12 heads, MLP 3072, exact GELU,
LayerNorm eps 1e-5, a 50265-token vocabulary, one segment type, and HF's position
table of 514 rows (512 positions after the ``pad_token_id + 1 = 2`` offset), so its
checkpoints import and export with ``t5x_lite.convert``. Pretraining follows the
paper: dynamic masking of 15% (80/10/10), no next-sentence prediction, 512-token
rows, batches of 8k sequences, AdamW peak 6e-4 with betas (0.9, 0.98), eps 1e-6,
weight decay 0.01, 24k warmup steps then linear decay to 0 over 500k steps, dropout
0.1. 32 microbatches of 256 rows; lower it on a larger mesh.

Data: on the embedded kjv corpus (about 1M tokens) the tokenizer is an 8192-piece
SentencePiece BPE (``data.tokenizer_vocab_size``; kjv supports at most 34,646 ids,
and beyond ~8k most pieces would be seen only a handful of times). The model keeps
its published 50265-row vocabulary, as nanoGPT pads GPT-2's to 50304: rows
8192..50264 stay unused (never fed, targeted or sampled). On a larger corpus raise
``data.tokenizer_vocab_size`` (up to 50265), or load a SentencePiece ``.model`` of
at most 50265 ids with ``data.tokenizer``.
"""

from t5x_lite import presets

base = presets.sibling(__file__, "base")


def get_config(variant: str | None = None):
    return presets.make(
        variant=variant,
        model=dict(
            family="encoder",
            arch="roberta",
            vocab_size=50265,
            d_model=768,
            num_heads=12,
            num_layers=12,
            d_ff=3072,
            max_seq_len=512,
            type_vocab_size=1,
            position_offset=2,
            pad_token_id=1,
            sentence_head=False,
            activation="gelu",
            norm_eps=1e-5,
            dropout_rate=0.1,
            dtype="bfloat16",
        ),
        data=base.KJV_8K | dict(objective="mlm", sentence_objective="none", seq_len=512),
        optimizer=base.ENCODER_OPTIMIZER
        | dict(learning_rate=6e-4, warmup_steps=24_000, min_lr_ratio=0.0, b1=0.9, b2=0.98),
        train=dict(
            batch_size=8192, microbatches=32, num_steps=500_000, log_every=100, eval_every=10_000
        ),
        checkpoint=dict(every_steps=5000),
    )
