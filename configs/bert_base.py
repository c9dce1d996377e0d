"""BERT-base (Devlin et al. 2019): 12 layers, d_model 768, 12 heads, 110M parameters.

Exactly the shape of ``bert-base-uncased`` / HF ``BertForPreTraining`` (30522-token
WordPiece vocabulary, 512 positions, 2 segment types, MLM + NSP heads), so its
checkpoints import with ``t5x_lite.convert.import_hf``. The optimizer follows the
paper (AdamW, lr 1e-4, beta2 0.999, weight decay 0.01, 10k warmup steps, linear
decay) and phase 1 of its schedule (sequence length 128, batch 256).

Data: on the embedded kjv corpus (about 1M tokens) the tokenizer is an 8192-piece
SentencePiece BPE (``data.tokenizer_vocab_size``; kjv supports at most 34,646 ids,
and beyond ~8k most pieces would be seen only a handful of times). The model keeps
its published 30522-row vocabulary, as nanoGPT pads GPT-2's to 50304: rows
8192..30521 stay unused (never fed, targeted or sampled). On a larger corpus raise
``data.tokenizer_vocab_size`` (up to 30522), or load a SentencePiece ``.model`` of
at most 30522 ids with ``data.tokenizer``.
"""

from t5x_lite import presets

base = presets.sibling(__file__, "base")


def get_config(variant: str | None = None):
    return presets.make(
        variant=variant,
        model=dict(
            family="encoder",
            arch="bert",
            vocab_size=30522,
            d_model=768,
            num_heads=12,
            num_layers=12,
            d_ff=3072,
            max_seq_len=512,
            type_vocab_size=2,
            sentence_head=True,
            activation="gelu",
            norm_eps=1e-12,
            dropout_rate=0.1,
        ),
        data=base.KJV_8K | dict(objective="mlm", sentence_objective="nsp", seq_len=128),
        optimizer=base.ENCODER_OPTIMIZER
        | dict(learning_rate=1e-4, warmup_steps=10_000, b1=0.9, b2=0.999),
        train=dict(batch_size=256, num_steps=1_000_000, log_every=100, eval_every=10_000),
    )
