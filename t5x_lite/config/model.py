"""``ModelConfig``: the shape of one Transformer and the traits of its ``arch``."""

from __future__ import annotations

from dataclasses import dataclass

from t5x_lite.config.archs import ARCHS, FAMILIES, ArchTraits, archs_of
from t5x_lite.config.errors import check as _check


def _with(trait: str) -> str:
    """The archs that have ``trait``, quoted: ``_with("layer_sharing")`` -> ``'albert'``."""
    return ", ".join(repr(a) for a, t in ARCHS.items() if getattr(t, trait))


TASK_HEADS = ("none", "sequence", "token", "span")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one Transformer.

    ``family`` picks the stack (encoder | decoder | encoder_decoder); ``arch`` picks
    the published variant whose layout and Hugging Face names we follow. What an
    ``arch`` is made of (norm, positions, gated MLP, biases, tied head, ...) is its
    row of :data:`t5x_lite.config.archs.ARCHS`, read through :attr:`traits`:

    =========  =====================  =============================================
    family     arch                   what it means
    =========  =====================  =============================================
    encoder    bert, roberta          post-LN, GELU, learned positions, tied MLM head
    encoder    albert                 bert + factorised ``embed_dim`` + shared layers
    decoder    gpt2                   pre-LN, learned positions, tied LM head
    decoder    llama                  RMSNorm, RoPE, SwiGLU, GQA, untied head
    decoder    mistral                llama + sliding-window attention
    decoder    qwen2                  llama + biases on the query, key and value
    enc_dec    t5                     ReLU, relative bias, tied head * d_model**-0.5
    enc_dec    t5_v1_1                gated-GELU, relative bias, untied head
    =========  =====================  =============================================
    """

    family: str = "decoder"
    arch: str = "gpt2"
    vocab_size: int = 32128
    d_model: int = 128
    num_heads: int = 4
    num_layers: int = 2
    d_ff: int = 512
    max_seq_len: int = 512
    # Per-head width; None means d_model // num_heads (T5 allows heads*head_dim != d_model).
    head_dim: int | None = None
    # Grouped-query attention (llama); None means num_heads (multi-head attention).
    num_kv_heads: int | None = None
    # T5 decoder depth; None means num_layers.
    num_decoder_layers: int | None = None
    # ALBERT factorised embedding width; None means d_model.
    embed_dim: int | None = None
    # ALBERT cross-layer parameter sharing (one layer applied num_layers times).
    share_layers: bool = False
    # BERT segment (token type) vocabulary; 0 disables segment embeddings.
    type_vocab_size: int = 0
    # RoBERTa: learned positions start at pad_token_id + 1 (HF's padding_idx offset).
    position_offset: int = 0
    pad_token_id: int = 0
    norm_eps: float = 1e-5
    activation: str = "gelu_new"  # gelu | gelu_new (tanh) | relu | silu
    rope_theta: float = 10000.0
    # RoPE frequencies (t5x_lite.layers.rope_frequencies): default | llama3 (Llama 3.1's
    # rescaling by rope_factor between the low/high frequency factors of a context of
    # rope_original_max_len tokens; the defaults are Llama 3.1's).
    rope_type: str = "default"
    rope_factor: float = 8.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_len: int = 8192
    # Tie the LM head to the token embedding; None means the arch's traits.tied_head.
    # Only archs with traits.optional_tied_head may differ from their row.
    tie_word_embeddings: bool | None = None
    relative_num_buckets: int = 32
    relative_max_distance: int = 128
    # Encoders: pooler + 2-way head for NSP / SOP.
    sentence_head: bool = False
    # Fine-tuning head (t5x_lite.models.heads), replacing the LM / MLM head:
    # none | sequence (one label per row: pooled [CLS] for encoders, the last non-pad
    # token for decoders) | token (one label per token) | span (start/end logits, QA).
    # Encoder-decoders keep none: their tasks are text-to-text (label words).
    task_head: str = "none"
    # Classes of a sequence / token head.
    num_labels: int = 0
    dropout_rate: float = 0.0
    initializer_range: float = 0.02
    # Compute dtype of activations and matmuls; params stay in param_dtype.
    dtype: str = "float32"
    param_dtype: str = "float32"
    # Attention backend (t5x_lite.attention): auto (cudnn on GPU in bfloat16/float16,
    # splash on TPU, xla elsewhere, per call) | xla | cudnn (GPU, dtype bfloat16 or
    # float16) | splash (TPU; Pallas splash attention). The key ``attention_impl`` of
    # older configs is read as this field.
    attention: str = "auto"
    # Token tables and logits rows are padded to a multiple of this (128 suits GPU and
    # TPU matmuls: GPT-2's 50257 -> 50304, as nanoGPT); logits keep vocab_size
    # columns. 1 disables.
    vocab_pad_multiple: int = 128
    # Sliding-window attention (traits.sliding_window, Mistral): each query sees the
    # last sliding_window keys including itself; None attends to the whole row.
    sliding_window: int | None = None
    # Rematerialisation of each layer (t5x_lite.layers.remat), one meaning for every
    # family: none | full (recompute the whole layer in the backward pass) | dots (save
    # the outputs of matmuls without batch dimensions, i.e. the weight projections, and
    # recompute attention and elementwise ops:
    # jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims).
    remat_policy: str = "none"

    # ---- derived quantities (never stored separately) ----
    @property
    def traits(self) -> ArchTraits:
        """What ``arch`` is made of (its row of the architecture table)."""
        return ARCHS[self.arch]

    @property
    def tied_head(self) -> bool:
        """Logits use the token embedding: ``tie_word_embeddings``, else the arch's."""
        if self.tie_word_embeddings is None:
            return self.traits.tied_head
        return self.tie_word_embeddings

    @property
    def attention_impl(self) -> str:
        """The former name of :attr:`attention`."""
        return self.attention

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the token table and the LM head: ``vocab_size`` rounded up to a
        multiple of ``vocab_pad_multiple`` (50257 at 128 -> 50304)."""
        m = self.vocab_pad_multiple
        return -(-self.vocab_size // m) * m

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def head_size(self) -> int:
        return self.head_dim or self.d_model // self.num_heads

    @property
    def decoder_layers(self) -> int:
        return self.num_decoder_layers or self.num_layers

    @property
    def embedding_dim(self) -> int:
        return self.embed_dim or self.d_model

    def validate(self) -> ModelConfig:
        _check(self.family in FAMILIES, f"model.family={self.family!r} is not one of {FAMILIES}")
        _check(
            self.arch in ARCHS and ARCHS[self.arch].family == self.family,
            f"model.arch={self.arch!r} is not one of {archs_of(self.family)} for family "
            f"{self.family!r}",
        )
        t = self.traits
        for name in ("vocab_size", "d_model", "num_heads", "num_layers", "d_ff", "max_seq_len"):
            v = getattr(self, name)
            _check(isinstance(v, int) and v > 0, f"model.{name}={v!r} must be a positive integer")
        if self.head_dim is None:
            _check(
                self.d_model % self.num_heads == 0,
                f"model.d_model={self.d_model} is not divisible by model.num_heads="
                f"{self.num_heads}",
            )
        else:
            _check(self.head_dim > 0, f"model.head_dim={self.head_dim} must be positive")
            _check(
                t.free_head_dim or self.num_heads * self.head_dim == self.d_model,
                f"model.head_dim={self.head_dim} x model.num_heads={self.num_heads} != "
                f"model.d_model={self.d_model}; only arch {_with('free_head_dim')} allow that",
            )
        _check(
            self.num_heads % self.kv_heads == 0,
            f"model.num_heads={self.num_heads} is not divisible by model.num_kv_heads="
            f"{self.kv_heads}",
        )
        _check(
            self.kv_heads == self.num_heads or t.grouped_kv,
            f"model.num_kv_heads={self.num_kv_heads} needs arch {_with('grouped_kv')} "
            "(grouped-query)",
        )
        _check(
            self.embedding_dim == self.d_model or t.factorised_embedding,
            f"model.embed_dim={self.embed_dim} differs from d_model; only arch "
            f"{_with('factorised_embedding')} factorises embeddings",
        )
        _check(
            not self.share_layers or t.layer_sharing,
            f"model.share_layers=True needs arch {_with('layer_sharing')}",
        )
        _check(
            self.sliding_window is None or t.sliding_window,
            f"model.sliding_window={self.sliding_window} needs arch {_with('sliding_window')}",
        )
        _check(
            self.sliding_window is None
            or (isinstance(self.sliding_window, int) and self.sliding_window > 0),
            f"model.sliding_window={self.sliding_window!r} must be a positive integer or None",
        )
        _check(
            self.tie_word_embeddings in (None, t.tied_head) or t.optional_tied_head,
            f"model.tie_word_embeddings={self.tie_word_embeddings} needs arch "
            f"{_with('optional_tied_head')} (arch {self.arch!r} has tied_head={t.tied_head})",
        )
        _check(
            self.rope_type in ("default", "llama3"),
            f"model.rope_type={self.rope_type!r} is not one of default, llama3",
        )
        _check(
            self.rope_type == "default" or t.positions == "rope",
            f"model.rope_type={self.rope_type!r} needs rotary positions (arch "
            f"{self.arch!r} has {t.positions!r} positions)",
        )
        if self.rope_type == "llama3":
            _check(
                self.rope_factor > 0 and self.rope_low_freq_factor > 0,
                f"model.rope_factor={self.rope_factor} and model.rope_low_freq_factor="
                f"{self.rope_low_freq_factor} must be positive",
            )
            _check(
                self.rope_high_freq_factor > self.rope_low_freq_factor,
                f"model.rope_high_freq_factor={self.rope_high_freq_factor} must exceed "
                f"model.rope_low_freq_factor={self.rope_low_freq_factor}",
            )
            _check(
                isinstance(self.rope_original_max_len, int) and self.rope_original_max_len > 0,
                f"model.rope_original_max_len={self.rope_original_max_len!r} must be a "
                "positive integer",
            )
        _check(
            self.activation in ("gelu", "gelu_new", "relu", "silu"),
            f"model.activation={self.activation!r} is not one of gelu, gelu_new, relu, silu",
        )
        for name in ("dtype", "param_dtype"):
            v = getattr(self, name)
            _check(
                v in ("float32", "bfloat16", "float16"),
                f"model.{name}={v!r} is not one of float32, bfloat16, float16",
            )
        _check(
            self.attention in ("auto", "xla", "cudnn", "splash"),
            f"model.attention={self.attention!r} is not one of auto, xla, cudnn, splash",
        )
        _check(
            self.attention != "cudnn" or self.dtype in ("bfloat16", "float16"),
            f"model.attention='cudnn' needs model.dtype bfloat16 or float16 "
            f"(got {self.dtype!r})",
        )
        _check(
            isinstance(self.vocab_pad_multiple, int)
            and not isinstance(self.vocab_pad_multiple, bool)
            and self.vocab_pad_multiple > 0,
            f"model.vocab_pad_multiple={self.vocab_pad_multiple!r} must be a positive "
            "integer (1 disables padding)",
        )
        _check(
            self.remat_policy in ("none", "full", "dots"),
            f"model.remat_policy={self.remat_policy!r} is not one of none, full, dots",
        )
        _check(
            0.0 <= self.dropout_rate < 1.0,
            f"model.dropout_rate={self.dropout_rate} must be in [0, 1)",
        )
        _check(
            self.task_head in TASK_HEADS,
            f"model.task_head={self.task_head!r} is not one of {', '.join(TASK_HEADS)}",
        )
        _check(
            self.task_head == "none" or self.family != "encoder_decoder",
            f"model.task_head={self.task_head!r}: encoder-decoders fine-tune text to text "
            "(label words through the token head); keep model.task_head='none'",
        )
        _check(
            self.task_head == "none" or not self.sentence_head,
            f"model.task_head={self.task_head!r} replaces the NSP/SOP head; set "
            "model.sentence_head=False",
        )
        if self.task_head in ("sequence", "token"):
            _check(
                isinstance(self.num_labels, int) and self.num_labels >= 2,
                f"model.num_labels={self.num_labels!r} must be >= 2 for model.task_head="
                f"{self.task_head!r}",
            )
        return self
