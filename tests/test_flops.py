"""FLOP and parameter accounting (t5x_lite.flops) against the initialised tree,
hand-computed published shapes and XLA's cost analysis of the compiled training step
of each family (decoder GPT-2 and grouped-query Llama, BERT with NSP, shared-layer
ALBERT, T5 v1.1)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import pytest

from t5x_lite import flops, models, partitioning, steps
from t5x_lite.config import ConfigError, MeshConfig, ModelConfig, OptimizerConfig

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
T, U = 64, 16


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
    # The published shapes, unpadded (model.vocab_pad_multiple=1); the padded head's
    # 47 extra rows are checked below and in tests/test_vocab_padding.py.
    cfg = ModelConfig(
        vocab_size=50257, d_model=768, num_heads=12, num_layers=12, d_ff=3072, max_seq_len=1024,
        vocab_pad_multiple=1,
    )  # fmt: skip
    assert flops.param_counts(cfg)["total"] == 124_439_808
    padded = dataclasses.replace(cfg, vocab_pad_multiple=128)  # 50304 rows, as run
    assert flops.matmul_params(padded) == flops.matmul_params(cfg) + 47 * 768
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
        vocab_pad_multiple=1,  # the published shapes, unpadded
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


# --------------------------------------------------------------------------- XLA

# One tiny config per family for the compiled-step check: T = 128 makes the attention
# scores ~12% of the FLOPs (leaving them out would fail the 10% check), while the
# widths keep matmuls dominant. One row per batch; U is the T5 decoder length.
STEP_CONFIGS = ("gpt2", "llama_gqa", "bert_nsp", "albert_shared", "t5_v1_1")
STEP_B, STEP_T, STEP_U = 1, 128, 32


def _step_batch(cfg: ModelConfig) -> dict[str, jax.ShapeDtypeStruct]:
    """Abstract batch with every key the family's train step reads (batch contract)."""

    def ints(*shape: int) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(shape, jnp.int32)

    batch = {"input_ids": ints(STEP_B, STEP_T), "attention_mask": ints(STEP_B, STEP_T)}
    length = STEP_T
    if cfg.family == "encoder":
        batch["token_type_ids"] = ints(STEP_B, STEP_T)
        if cfg.sentence_head:
            batch["next_sentence_label"] = ints(STEP_B)
    if cfg.family == "encoder_decoder":
        batch["decoder_input_ids"] = ints(STEP_B, STEP_U)
        batch["decoder_attention_mask"] = ints(STEP_B, STEP_U)
        length = STEP_U
    batch["labels"] = ints(STEP_B, length)
    batch["loss_weights"] = jax.ShapeDtypeStruct((STEP_B, length), jnp.float32)
    return batch


def _flops_of(analysis) -> float:
    if isinstance(analysis, list | tuple):  # older jax: one dict per executable
        analysis = analysis[0]
    return float(analysis["flops"])


@pytest.fixture(scope="module")
def compiled_steps():
    """``{name: (cfg, step FLOPs, optimizer FLOPs)}`` from XLA, one compile per family.

    The step is the trainer's own: ``steps.build`` (jitted, sharded, AdamW with
    clipping, the real losses) on a one-device mesh, so the cost analysis is the
    whole step's, not one shard's. The optimizer's elementwise update is measured
    on its own (lowered HLO analysis of ``TrainState.apply_gradients``; it has no
    matmuls for the compiler to rewrite).
    """
    mesh = partitioning.make_mesh(MeshConfig(data=1), jax.devices()[:1])
    out = {}
    for name in STEP_CONFIGS:
        cfg = dataclasses.replace(CONFIGS[name], max_seq_len=STEP_T)
        run = steps.build(cfg, OptimizerConfig(), 100, 1, 0, mesh)
        with jax.set_mesh(mesh), partitioning.axis_rules():
            lowered = run.train.lower(run.abstract_state, _step_batch(cfg))
            step = _flops_of(lowered.compile().cost_analysis())
            update = jax.jit(lambda s, g, tx=run.tx: s.apply_gradients(g, tx))
            opt = _flops_of(
                update.lower(run.abstract_state, run.abstract_state.params).cost_analysis()
            )
        out[name] = (cfg, step, opt)
    return out


@pytest.mark.parametrize("name", STEP_CONFIGS)
def test_flops_within_10_percent_of_compiled_train_step(name, compiled_steps):
    """Our per-step FLOPs (``train_flops_per_token x`` tokens in the batch) against
    XLA's cost analysis of the compiled training step.

    We count matmuls only, so the optimizer's elementwise update (AdamW, global-norm
    clipping: ~20 FLOPs per parameter per step) is excluded from ours; it is
    compared both ways: against the whole step (what the trainer's MFU divides by)
    and against the step less the optimizer (like for like). Both hold within 10%;
    the optimizer itself is under 5% of the step at these sizes, and a smaller share
    at realistic batch sizes, where it is amortised over more tokens.
    """
    cfg, step, opt = compiled_steps[name]
    target = STEP_U if cfg.family == "encoder_decoder" else None
    ours = flops.train_flops_per_token(cfg, STEP_T, target) * STEP_B * STEP_T
    assert 0 < opt < 0.05 * step, (opt, step)
    assert ours == pytest.approx(step, rel=0.10)
    assert ours == pytest.approx(step - opt, rel=0.10)


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
