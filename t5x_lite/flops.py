"""Parameter and training-FLOP accounting, and the peak table MFU is measured against.

Conventions (those of Kaplan et al. 2020, Hoffmann et al. 2022 and PaLM's MFU):

* a multiply-add is 2 FLOPs; the backward pass costs twice the forward, so training
  costs **3 x forward**;
* only matrix multiplies count: embedding *lookups* (gathers), norms, activations,
  softmax, the loss and the optimizer update are left out (3-7% of XLA's cost
  analysis of the compiled training step of tiny models, checked for every family
  in ``tests/test_flops.py``);
* attention scores are counted over the full ``T x S`` matrix (causal masking is not
  halved, the PaLM convention); rematerialisation is not counted (model FLOPs, not
  hardware FLOPs).

Symbols: ``T`` = ``seq_len`` (encoder/decoder input tokens per row), ``U`` =
``target_len`` (encoder-decoder decoder tokens per row), ``L`` layers (``L_e``,
``L_d`` for T5), ``E`` = ``d_model``, ``F`` = ``d_ff``, ``H`` query heads, ``K``
key/value heads, ``D`` head size, ``V`` vocabulary (``model.padded_vocab_size``),
``Em`` the (ALBERT) embedding width; ``m`` = 3 for gated MLPs (llama SwiGLU, t5_v1_1
gated-GELU) and 2 otherwise;
``P = 2EHD + 2EKD`` the attention projections (q, o and k, v) of one layer.

Training FLOPs **per row** (one sequence of the batch)::

    decoder          6 T [L (P + m E F) + E V]                       + 12 L H D T^2
    encoder          6 T [L (P + 2 E F) + E Em + Em V + Em E·albert] + 12 L H D T^2
                     + 6 (E^2 + 2E)·sentence_head            (pooler + classifier, 1 token)
    encoder_decoder  6 [T L_e (P + m E F) + U L_d (P + 2EHD + m E F)
                        + T L_d 2EHD + U E V]                        (cross-attn k, v on T)
                     + 12 H D [L_e T^2 + L_d (U^2 + U T)]

ALBERT's shared layers are applied ``L`` times, so they count ``L`` times although
their parameters are stored once.

**Per token** always means per *input* token: the per-row FLOPs divided by ``T``
(``data.seq_len``), the same tokens the trainer counts in ``tokens_per_second``
(``batch_size x seq_len`` per step). For encoder-decoders this folds the decoder's
work into the encoder token count. Example: GPT-2 small (``L=12, E=768, F=3072,
V=50257``, padded to 50304) at ``T=1024`` gives ``6 x 123.6M + 12 x 12 x 768 x 1024
= 854.7 MFLOP`` per token, PaLM's ``6N + 12LHQT`` with ``N`` the matmul parameters.
The head counts ``model.padded_vocab_size`` rows, the matmul the hardware runs
(``model.vocab_pad_multiple = 1``: 854.4)::

    >>> cfg = ModelConfig(vocab_size=50257, d_model=768, num_heads=12, num_layers=12,
    ...                   d_ff=3072, max_seq_len=1024)
    >>> round(train_flops_per_token(cfg, 1024) / 1e6, 1)
    854.7

MFU = ``train_flops_per_token x tokens_per_second / (num_devices x peak)`` with the
per-device ``peak`` from :func:`peak_flops_per_device`.

This module imports only the standard library and the config (``jax`` only inside
``peak_flops_per_device("auto")``, the models only inside :func:`param_counts`).
"""

from __future__ import annotations

import math

from t5x_lite.config import ConfigError, DataConfig, ModelConfig, row_lengths

# Dense bf16 peak FLOP/s per chip (vendor datasheets; GPUs without sparsity).
PEAK_FLOPS: dict[str, float] = {
    "tpu_v4": 275e12,
    "tpu_v5e": 197e12,
    "tpu_v5p": 459e12,
    "tpu_v6e": 918e12,
    "a100": 312e12,
    "h100": 989e12,  # SXM
    "h100_pcie": 756e12,
    "h200": 989e12,
}

# jax ``device_kind`` substrings (lower case) -> PEAK_FLOPS key, first match wins.
_DEVICE_KINDS: tuple[tuple[str, str], ...] = (
    ("v6 lite", "tpu_v6e"),
    ("v6e", "tpu_v6e"),
    ("v5 lite", "tpu_v5e"),
    ("v5e", "tpu_v5e"),
    ("v5p", "tpu_v5p"),
    ("tpu v5", "tpu_v5p"),
    ("tpu v4", "tpu_v4"),
    ("h200", "h200"),
    ("h100 pcie", "h100_pcie"),
    ("h100", "h100"),
    ("a100", "a100"),
)


def peak_flops_per_device(spec: str) -> float | None:
    """Peak FLOP/s of one device from ``train.peak_flops``.

    ``spec`` is a :data:`PEAK_FLOPS` name (case-insensitive, ``-`` or space for
    ``_``), a positive number (``"312e12"``), or ``"auto"``: the name matched from
    ``jax.devices()[0].device_kind``. Returns ``None`` when "auto" finds no match
    (e.g. on the CPU), where the trainer reports achieved FLOP/s instead of MFU.

    >>> peak_flops_per_device("TPU-v4"), peak_flops_per_device("1.5e14")
    (275000000000000.0, 150000000000000.0)
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"train.peak_flops={spec!r} must be a name, a number or 'auto'")
    key = spec.strip().lower().replace("-", "_").replace(" ", "_")
    if key == "auto":
        import jax

        return peak_flops_of_kind(jax.devices()[0].device_kind)
    if key in PEAK_FLOPS:
        return PEAK_FLOPS[key]
    try:
        value = float(spec)
    except ValueError:
        raise ConfigError(
            f"train.peak_flops={spec!r} is not 'auto', a number or one of {sorted(PEAK_FLOPS)}"
        ) from None
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"train.peak_flops={spec!r} must be a positive finite number")
    return value


def peak_flops_of_kind(device_kind: str) -> float | None:
    """Peak of a jax ``device_kind`` string, e.g. ``"NVIDIA H100 80GB HBM3"`` -> 989e12."""
    kind = device_kind.lower()
    for pattern, name in _DEVICE_KINDS:
        if pattern in kind:
            return PEAK_FLOPS[name]
    return None


# --------------------------------------------------------------------------- parameters


def param_counts(cfg: ModelConfig) -> dict[str, int]:
    """``{"total": ..., "non_embedding": ...}`` of the model ``cfg`` builds.

    Delegates to :func:`t5x_lite.models.count_params` (analytic, from shapes);
    ``non_embedding`` leaves out token, position and segment tables (and an untied
    output projection for decoders), Kaplan et al.'s convention.
    """
    from t5x_lite.models import count_params

    return count_params(cfg)


# --------------------------------------------------------------------------- FLOPs


def _mlp_mult(cfg: ModelConfig) -> int:
    """Weight matrices in one MLP: 3 when gated (``traits.gated_mlp``), else 2."""
    return 3 if cfg.traits.gated_mlp else 2


def _check_lengths(cfg: ModelConfig, seq_len: int, target_len: int | None) -> int:
    if not (isinstance(seq_len, int) and seq_len > 0):
        raise ConfigError(f"data.seq_len={seq_len!r} must be a positive integer")
    if cfg.family != "encoder_decoder":
        return 0
    u = seq_len if target_len is None else target_len
    if not (isinstance(u, int) and u > 0):
        raise ConfigError(f"data.target_len={target_len!r} must be a positive integer")
    return u


def forward_flops_per_row(
    cfg: ModelConfig, seq_len: int, target_len: int | None = None
) -> dict[str, float]:
    """Forward-pass matmul FLOPs of one row, by component (see the module docstring).

    Keys: ``attention_proj``, ``mlp``, ``head`` (output projection, MLM transform,
    ALBERT input projection, pooler), ``attention_scores`` (``QKᵀ`` and ``PV``).
    ``target_len`` is the decoder length of an encoder-decoder (``None``: ``seq_len``).

    >>> cfg = ModelConfig(vocab_size=100, d_model=16, num_heads=2, num_layers=1, d_ff=32)
    >>> forward_flops_per_row(cfg, 8)  # 2*8*(4*16*16), 2*8*(2*16*32), 2*8*16*128, 4*8*8*16
    {'attention_proj': 16384.0, 'mlp': 16384.0, 'head': 32768.0, 'attention_scores': 4096.0}
    """
    u = _check_lengths(cfg, seq_len, target_len)
    t = seq_len
    e, f, v, h, k, d = (
        cfg.d_model,
        cfg.d_ff,
        cfg.padded_vocab_size,  # the head's matmul runs over the padded rows
        cfg.num_heads,
        cfg.kv_heads,
        cfg.head_size,
    )
    qo = 2 * e * h * d  # query + output projections of one layer
    kv = 2 * e * k * d  # key + value projections
    mlp = _mlp_mult(cfg) * e * f
    if cfg.family == "decoder":
        layers = cfg.num_layers
        proj_macs = t * layers * (qo + kv)
        mlp_macs = t * layers * mlp
        head_macs = t * e * v
        # A sliding window (Mistral) masks scores but the dense step still computes all
        # T x T of them, so they are counted.
        score_macs = 2 * layers * h * d * t * t
    elif cfg.family == "encoder":
        layers = cfg.num_layers  # shared (ALBERT) layers still run num_layers times
        em = cfg.embedding_dim
        proj_macs = t * layers * (qo + kv)
        mlp_macs = t * layers * mlp
        head_macs = t * (e * em + em * v)  # MLM transform + tied decoder
        if cfg.traits.factorised_embedding:
            head_macs += t * em * e  # embedding projection Em -> E
        if cfg.sentence_head:
            head_macs += e * e + 2 * e  # pooler + classifier on the first token
        score_macs = 2 * layers * h * d * t * t
    else:
        le, ld = cfg.num_layers, cfg.decoder_layers
        proj_macs = t * le * (qo + kv) + u * ld * (qo + kv + qo) + t * ld * (2 * e * h * d)
        mlp_macs = (t * le + u * ld) * mlp
        head_macs = u * e * v
        score_macs = 2 * h * d * (le * t * t + ld * (u * u + u * t))
    return {
        "attention_proj": 2.0 * proj_macs,
        "mlp": 2.0 * mlp_macs,
        "head": 2.0 * head_macs,
        "attention_scores": 2.0 * score_macs,
    }


def train_flops_per_row(cfg: ModelConfig, seq_len: int, target_len: int | None = None) -> float:
    """Training (forward + backward) FLOPs of one row: 3 x the forward matmul FLOPs."""
    return 3.0 * sum(forward_flops_per_row(cfg, seq_len, target_len).values())


def train_flops_per_token(cfg: ModelConfig, seq_len: int, target_len: int | None = None) -> float:
    """Training FLOPs per input token (per-row FLOPs / ``seq_len``); the MFU numerator.

    ``target_len`` matters only for encoder-decoders (``None`` means ``seq_len``;
    pass the decoder length of the batch, e.g. ``batch["decoder_input_ids"].shape[1]``).

    >>> cfg = ModelConfig(vocab_size=100, d_model=16, num_heads=2, num_layers=1, d_ff=32)
    >>> train_flops_per_token(cfg, 8)  # 3 * (16384 + 16384 + 32768 + 4096) / 8
    26112.0
    """
    return train_flops_per_row(cfg, seq_len, target_len) / seq_len


def flops_per_token_of(model: ModelConfig, data: DataConfig) -> float:
    """:func:`train_flops_per_token` of the rows ``data`` really makes: the decoder
    length of an encoder-decoder is the objective table's ``target_len``
    (:func:`t5x_lite.config.row_lengths`; T5 span corruption at seq_len 512 -> 114),
    the one definition the trainer, the step benchmark and the planner share."""
    lengths = row_lengths(data)
    target = lengths.target_len if model.family == "encoder_decoder" else None
    return train_flops_per_token(model, lengths.input_len, target)


def matmul_params(cfg: ModelConfig) -> int:
    """Weights one input token passes through once: ``6 x this`` is the ``6N`` term.

    Exact for decoders and encoders without a sentence head; for encoder-decoders it
    assumes ``target_len == seq_len``. Unlike :func:`param_counts` it counts ALBERT's
    shared layer ``num_layers`` times and leaves out biases, norms and lookup tables
    (a tied output projection counts once, as a matmul).
    """
    no_scores = dict(forward_flops_per_row(cfg, 1, 1 if cfg.family == "encoder_decoder" else None))
    no_scores.pop("attention_scores")
    if cfg.family == "encoder" and cfg.sentence_head:
        no_scores["head"] -= 2.0 * (cfg.d_model**2 + 2 * cfg.d_model)
    return round(sum(no_scores.values()) / 2.0)
