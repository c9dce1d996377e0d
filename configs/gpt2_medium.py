"""GPT-2 medium (355M: 24 layers, d_model 1024, 16 heads), causal LM with 1024-token rows.

Exactly OpenAI's GPT-2 345M / HF ``gpt2-medium`` (vocab 50257, 1024 learned
positions, tied LM head); ``count_params`` gives 354,823,168. Optimizer settings
follow GPT-3's table for this size (Brown et al. 2020, "GPT-3 Medium"): AdamW, peak
3e-4, betas (0.9, 0.95), weight decay 0.1, clipping at 1.0, 0.5M-token batches
(512 rows x 1024), cosine decay to 10%. ``num_steps`` = 14,000 is ~7B tokens, about
20 tokens per parameter (Hoffmann et al. 2022). 16 microbatches of 32 rows keep a
step within one 80 GB accelerator; raise ``mesh`` and lower ``train.microbatches``
on more devices.

Data: on the embedded kjv corpus (about 1M tokens) the tokenizer is an 8192-piece
SentencePiece BPE (``data.tokenizer_vocab_size``; kjv supports at most 34,646 ids,
and beyond ~8k most pieces would be seen only a handful of times). The model keeps
its published 50257-row vocabulary, as nanoGPT pads GPT-2's to 50304: rows
8192..50256 stay unused (never fed, targeted or sampled). On a larger corpus raise
``data.tokenizer_vocab_size`` (up to 50257), or load a SentencePiece ``.model`` of
at most 50257 ids with ``data.tokenizer``.
"""

from t5x_lite import presets

base = presets.sibling(__file__, "base")


def get_config(variant: str | None = None):
    return presets.make(
        variant=variant,
        model=base.GPT2_MODEL
        | dict(
            vocab_size=50257,
            d_model=1024,
            num_heads=16,
            num_layers=24,
            d_ff=4096,
            max_seq_len=1024,
        ),
        data=base.GPT2_DATA,
        optimizer=dict(learning_rate=3e-4, warmup_steps=715, weight_decay=0.1),
        train=base.GPT2_TRAIN | dict(batch_size=512, microbatches=16, num_steps=14_000),
        checkpoint=dict(every_steps=1000),
    )
