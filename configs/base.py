"""Sections the presets of this folder share, as plain dicts.

The builder (``make``, ``VARIANTS``, ``load``) is :mod:`t5x_lite.presets`; a preset
reaches this file with ``base = presets.sibling(__file__, "base")`` and merges these
dicts with its own values (``base.T5_TRAIN | dict(num_steps=...)``). Each preset
keeps its shape (vocabulary, widths, depths, heads, lengths) in its own file.
"""

# ----------------------------------------------------------------- test-size presets

# 200 steps of 16 rows, logged every 10 and evaluated every 100.
TINY_TRAIN = dict(batch_size=16, num_steps=200, log_every=10, eval_every=100)
# The tiny encoders: MLM on 128-token kjv rows (each adds its sentence objective).
TINY_MLM_DATA = dict(corpus="kjv", objective="mlm", seq_len=128)

# ----------------------------------------------------------------- published shapes

# Published vocabularies stay; on kjv the tokenizer has 8192 pieces and the other
# rows stay unused (see the presets' docstrings).
KJV_8K = dict(corpus="kjv", tokenizer_vocab_size=8192)

# GPT-2 (OpenAI 2019): LayerNorm eps 1e-5, GELU (tanh), bf16 compute; 1024-token rows.
GPT2_MODEL = dict(family="decoder", arch="gpt2", norm_eps=1e-5, activation="gelu_new",
                  dtype="bfloat16")  # fmt: skip
GPT2_DATA = KJV_8K | dict(objective="causal_lm", seq_len=1024)
GPT2_TRAIN = dict(log_every=50, eval_every=1000)

# T5 / T5 v1.1 (Raffel et al. 2020): RMSNorm eps 1e-6, 32 relative-position buckets
# up to distance 128, bf16 compute.
T5_MODEL = dict(family="encoder_decoder", norm_eps=1e-6, relative_num_buckets=32,
                relative_max_distance=128, dtype="bfloat16")  # fmt: skip
# The paper's pretraining recipe: span corruption (15% noise, mean span 3) on
# 512-token inputs, Adafactor with an inverse-square-root schedule (peak 0.01 after
# 10k warmup steps), 128-row batches.
T5_DATA = KJV_8K | dict(objective="span_corruption", seq_len=512, noise_density=0.15,
                        mean_noise_span_length=3.0)  # fmt: skip
T5_OPTIMIZER = dict(name="adafactor", learning_rate=0.01, schedule="inverse_sqrt",
                    warmup_steps=10_000, weight_decay=0.0)  # fmt: skip
T5_TRAIN = dict(batch_size=128, log_every=50, eval_every=2000)

# BERT-style encoders: GELU, AdamW with linear decay and eps 1e-6, weight decay 0.01.
ENCODER_OPTIMIZER = dict(name="adamw", schedule="linear", eps=1e-6, weight_decay=0.01)
