"""FLOP and parameter accounting (t5x_lite.flops) against the initialised tree,
hand-computed published shapes and XLA's own cost analysis of forward + backward."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from t5x_lite import flops, models
from t5x_lite.config import ConfigError, ModelConfig

# Tiny configs of every arch; widths large enough that matmuls dominate the FLOPs.
CONFIGS = {
    "gpt2": ModelConfig(
        family="decoder",
        arch="gpt2",
        vocab_size=512,
        d_model=128,
        num_heads=4,
        num_layers=2,
        d_ff=512,
        max_seq_len=64,
    ),
    "llama_gqa": ModelConfig(
        family="decoder",
        arch="llama",
        vocab_size=512,
        d_model=128,
        num_heads=4,
        num_kv_heads=2,
        num_layers=2,
        d_ff=352,
        max_seq_len=64,
        activation="silu",
    ),
    "bert_nsp": ModelConfig(
        family="encoder",
        arch="bert",
        vocab_size=512,
        d_model=128,
        num_heads=4,
        num_layers=2,
        d_ff=512,
        max_seq_len=64,
        type_vocab_size=2,
        sentence_head=True,
        activation="gelu",
    ),
    "roberta": ModelConfig(
        family="encoder",
        arch="roberta",
        vocab_size=512,
        d_model=128,
        num_heads=4,
        num_layers=2,
        d_ff=512,
        max_seq_len=64,
        position_offset=2,
        pad_token_id=1,
        activation="gelu",
    ),
    "albert_shared": ModelConfig(
        family="encoder",
        arch="albert",
        vocab_size=512,
        d_model=128,
        num_heads=4,
        num_layers=3,
        d_ff=512,
        max_seq_len=64,
        embed_dim=32,
        share_layers=True,
    ),
    "t5": ModelConfig(
        family="encoder_decoder",
        arch="t5",
        vocab_size=512,
        d_model=128,
        num_heads=4,
        head_dim=48,
        num_layers=2,
        d_ff=512,
        max_seq_len=64,
        activation="relu",
    ),
    "t5_v1_1": ModelConfig(
        family="encoder_decoder",
        arch="t5_v1_1",
        vocab_size=512,
        d_model=128,
        num_heads=4,
        num_layers=2,
        num_decoder_layers=3,
        d_ff=352,
        max_seq_len=64,
    ),
}
B, T, U = 2, 64, 16


def _abstract_params(cfg: ModelConfig):
    return jax.eval_shape(lambda: models.init_params(cfg, jax.random.key(0)))


def _leaves(tree, prefix=()):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _leaves(v, (*prefix, k))
        else:
            yield (*prefix, k), v


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_param_counts_match_initialised_tree(name):
    cfg = CONFIGS[name]
    tree = _abstract_params(cfg)
    n_tree = sum(x.size for x in jax.tree.leaves(tree))
    counts = flops.param_counts(cfg)
    assert counts["total"] == n_tree
    tables = sum(
        x.size
        for path, x in _leaves(tree)
        if path[-1] in ("embedding", "rel_embedding")
        or path[-2:] == ("logits_dense", "kernel")
        or path[-2:] == ("lm_head", "kernel")
    )
    # non-embedding = everything but lookup tables and untied output projections
    # (relative-position tables count as embeddings for T5, like in its count_params).
    assert counts["non_embedding"] == n_tree - tables


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_matmul_params_match_kernels_in_tree(name):
    """``matmul_params`` (the 6N term) = every kernel a token passes through, counted
    from the initialised tree: shared ALBERT layers once per application, a tied
    output embedding once, the pooler/classifier (one token per row) left out."""
    cfg = CONFIGS[name]
    tree = _abstract_params(cfg)
    total = 0
    for path, x in _leaves(tree):
        if path[-1] != "kernel" or path[0] in ("pooler", "sentence_classifier"):
            continue
        total += x.size * (cfg.num_layers if cfg.share_layers and path[0] == "layer" else 1)
    tied = cfg.arch in ("gpt2", "bert", "roberta", "albert", "t5")
    if tied:
        total += cfg.vocab_size * cfg.embedding_dim
    assert flops.matmul_params(cfg) == total


def test_gpt2_small_by_hand():
    # HF GPT-2 small has 124,439,808 parameters; not matmuls: wpe 1024*768, per layer
    # biases 3*768 + 768 + 3072 + 768 and LayerNorms 4*768, final LayerNorm 2*768.
    cfg = ModelConfig(
        vocab_size=50257, d_model=768, num_heads=12, num_layers=12, d_ff=3072, max_seq_len=1024
    )
    assert flops.param_counts(cfg)["total"] == 124_439_808
    n_matmul = 124_439_808 - 1024 * 768 - 12 * (6912 + 3072) - 1536
    assert n_matmul == 123_532_032
    assert flops.matmul_params(cfg) == n_matmul
    # PaLM: 6N + 12 L H Q T per token.
    expected = 6 * n_matmul + 12 * 12 * 12 * 64 * 1024
    assert flops.train_flops_per_token(cfg, 1024) == pytest.approx(expected, rel=1e-12)
    assert expected == 854_438_400


def test_bert_base_by_hand():
    cfg = ModelConfig(
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
    )
    layers = 12 * (4 * 768 * 768 + 2 * 768 * 3072)  # 84,934,656
    head = 768 * 768 + 768 * 30522  # MLM transform + tied decoder
    per_row = 6 * 512 * (layers + head) + 12 * 12 * 12 * 64 * 512 * 512
    per_row += 6 * (768 * 768 + 2 * 768)  # pooler + NSP classifier on [CLS]
    assert flops.train_flops_per_token(cfg, 512) == pytest.approx(per_row / 512, rel=1e-12)
    assert round(per_row / 512) == 710_422_290


def test_t5_per_input_token():
    """Encoder-decoder FLOPs are per input token; the decoder side scales with U."""
    cfg = CONFIGS["t5_v1_1"]
    short = flops.train_flops_per_token(cfg, T, 8)
    long = flops.train_flops_per_token(cfg, T, 32)
    assert long > short
    assert flops.train_flops_per_token(cfg, T) == flops.train_flops_per_token(cfg, T, T)


def _loss(params, batch, module):
    logits = module.apply({"params": params}, batch)["logits"]  # [B, T, V]
    logp = jax.nn.log_softmax(logits, -1)
    return -jnp.take_along_axis(logp, batch["labels"][..., None], -1).mean()


def _lowered(cfg: ModelConfig):
    batch = models.example_batch(cfg, B, T)
    length = T
    if cfg.family == "encoder_decoder":
        dec = jnp.ones((B, U), jnp.int32)
        batch.update(decoder_input_ids=dec, decoder_attention_mask=dec)
        length = U
    batch["labels"] = jnp.ones((B, length), jnp.int32)
    grad = jax.jit(jax.grad(_loss), static_argnums=2)
    return grad.lower(_abstract_params(cfg), batch, models.build(cfg))


def _flops_of(analysis) -> float:
    if isinstance(analysis, list | tuple):
        analysis = analysis[0]
    return float(analysis["flops"])


def _ours(cfg: ModelConfig) -> float:
    return B * flops.train_flops_per_row(cfg, T, U if cfg.family == "encoder_decoder" else None)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_flops_within_10_percent_of_xla_hlo_cost_analysis(name):
    """XLA's HLO cost analysis of the lowered forward + backward (no compile)."""
    cfg = CONFIGS[name]
    xla = _flops_of(_lowered(cfg).cost_analysis())
    assert _ours(cfg) == pytest.approx(xla, rel=0.10)


def test_flops_within_10_percent_of_compiled_cost_analysis():
    """The same against the optimised executable's cost analysis (one compile, GPT-2)."""
    cfg = CONFIGS["gpt2"]
    xla = _flops_of(_lowered(cfg).compile().cost_analysis())
    assert _ours(cfg) == pytest.approx(xla, rel=0.10)


def test_peak_table_and_specs():
    assert flops.PEAK_FLOPS["h100"] == 989e12 and flops.PEAK_FLOPS["tpu_v5e"] == 197e12
    assert flops.peak_flops_per_device("A100") == 312e12
    assert flops.peak_flops_per_device("tpu-v6e") == 918e12
    assert flops.peak_flops_per_device("2.5e14") == 2.5e14
    assert flops.peak_flops_per_device("auto") is None  # CPU: no peak, achieved FLOP/s
    kinds = {
        "NVIDIA H100 80GB HBM3": 989e12,
        "NVIDIA H100 PCIe": 756e12,
        "NVIDIA H200": 989e12,
        "NVIDIA A100-SXM4-40GB": 312e12,
        "TPU v4": 275e12,
        "TPU v5 lite": 197e12,
        "TPU v5p": 459e12,
        "TPU v6 lite": 918e12,
        "cpu": None,
    }
    for kind, peak in kinds.items():
        assert flops.peak_flops_of_kind(kind) == peak, kind


@pytest.mark.parametrize("spec", ["", "h1000", "-5", "nan", "inf"])
def test_bad_peak_spec_is_one_line_error(spec):
    with pytest.raises(ConfigError, match=r"train\.peak_flops") as e:
        flops.peak_flops_per_device(spec)
    assert "\n" not in str(e.value)


def test_bad_lengths_are_one_line_errors():
    with pytest.raises(ConfigError, match=r"data\.seq_len"):
        flops.train_flops_per_token(CONFIGS["gpt2"], 0)
    with pytest.raises(ConfigError, match=r"data\.target_len"):
        flops.train_flops_per_token(CONFIGS["t5"], 64, -1)
