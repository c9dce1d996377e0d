"""RoBERTa architecture at test size: BERT layers, MLM only (no NSP), one segment type.

Our tokenizers reserve id 0 for padding, so ``pad_token_id=0``; HF RoBERTa's
position table starts ``pad_token_id + 1`` rows in, hence ``position_offset=1``
(``roberta-base`` itself has pad 1 and offset 2; both import and export).
"""

from t5x_lite import presets

base = presets.sibling(__file__, "base")


def get_config(variant: str | None = None):
    return presets.make(
        variant=variant,
        model=dict(
            family="encoder",
            arch="roberta",
            vocab_size=2048,
            d_model=64,
            num_heads=4,
            num_layers=2,
            d_ff=256,
            max_seq_len=128,
            type_vocab_size=1,
            position_offset=1,
            pad_token_id=0,
            sentence_head=False,
            activation="gelu",
            norm_eps=1e-5,
        ),
        data=base.TINY_MLM_DATA | dict(sentence_objective="none"),
        train=base.TINY_TRAIN,
    )
