"""The loss the trainer's jitted, sharded train step reports, against numpy.

For every architecture (GPT-2, Llama; BERT and RoBERTa with MLM, BERT + NSP and
ALBERT + SOP; T5, T5 v1.1), one step of ``steps.for_config`` (the step the trainer
and the benchmark run) on a data=2, fsdp=2, tensor=2 mesh of the 8 fake CPU devices,
on a batch whose ``loss_weights`` differ from row to row: packed rows (several
documents, ``segment_ids`` / ``positions``), rows ending in padding, a row of padding
only and a row weighted 0.5 (sentence pairs: one pair per row, ``attention_mask``
padding, a pair with no MLM target). The ``loss`` and ``ce`` in the step's metrics
must equal the token-weighted mean ``sum(w * ce) / sum(w)`` over the whole batch,
in float64 numpy from the logits of a forward pass with the same parameters before
the update; with a sentence head the loss adds the row mean of the sentence
cross-entropy (``losses.total_loss``: BERT's ``mlm_loss + nsp_loss``). A mean over
rows, or over microbatches, of per-row / per-microbatch means does not pass.

With ``train.microbatches = 2`` (BERT + NSP; GPT-2 with label smoothing and z-loss,
which the reported loss includes) the two microbatches carry different token
weights, and the reported loss must still be the mean over the global batch, as
``steps`` documents.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

from t5x_lite import config as C
from t5x_lite import models, partitioning, steps
from t5x_lite import train_state as ts

MESH = {"data": 2, "fsdp": 2, "tensor": 2}
ROWS, LEN, TARGET_LEN, VOCAB = 8, 16, 12, 96
RTOL = 1e-5

COMMON = dict(vocab_size=VOCAB, d_model=32, num_heads=4, num_layers=1, d_ff=64, max_seq_len=32)
MODELS = {
    "gpt2": dict(family="decoder", arch="gpt2"),
    "llama": dict(family="decoder", arch="llama", num_kv_heads=2, activation="silu"),
    "bert": dict(family="encoder", arch="bert", type_vocab_size=2, activation="gelu"),
    "roberta": dict(
        family="encoder", arch="roberta", type_vocab_size=1, position_offset=1, activation="gelu"
    ),
    "bert_nsp": dict(
        family="encoder", arch="bert", type_vocab_size=2, activation="gelu", sentence_head=True
    ),
    "albert_sop": dict(
        family="encoder",
        arch="albert",
        embed_dim=16,
        share_layers=True,
        num_layers=2,
        type_vocab_size=2,
        sentence_head=True,
    ),
    "t5": dict(
        family="encoder_decoder",
        arch="t5",
        activation="relu",
        head_dim=8,
        relative_num_buckets=8,
        relative_max_distance=32,
    ),
    "t5_v1_1": dict(
        family="encoder_decoder",
        arch="t5_v1_1",
        activation="gelu_new",
        head_dim=8,
        relative_num_buckets=8,
        relative_max_distance=32,
    ),
}
SENTENCE = {"bert_nsp": "nsp", "albert_sop": "sop"}
OBJECTIVE = {"decoder": "causal_lm", "encoder": "mlm", "encoder_decoder": "span_corruption"}

# Documents per row (lengths; the rest of the row is padding, segment 0). Row 0: one
# full document; 1, 4, 6: packed rows; 2, 3, 7: documents then padding; 5: padding only.
ENCODER_DOCS = [[16], [5, 7, 4], [6, 3], [9], [2, 2, 2, 2, 2, 2, 2, 2], [], [11, 5], [3]]
# Encoder-decoder targets, one per encoder document (segment k attends segment k).
DECODER_DOCS = [[12], [4, 3, 5], [5, 3], [6], [2, 1, 1, 1, 1, 1, 1, 1], [], [9, 3], [2]]
ROW_SCALE = np.array([1, 1, 1, 1, 1, 1, 0.5, 1], np.float32)  # row 6 weighted 0.5
# Sentence-pair rows (no packing: one pair and one label per row), real lengths.
PAIR_LENGTHS = [16, 12, 9, 16, 5, 14, 10, 8]


def packed(docs: list[list[int]], length: int) -> tuple[np.ndarray, np.ndarray]:
    """``segment_ids``, ``positions`` ``[rows, length]`` int32 of packed rows.

    >>> packed([[2, 1]], 4)
    (array([[1, 1, 2, 0]], dtype=int32), array([[0, 1, 0, 0]], dtype=int32))
    """
    seg = np.zeros((len(docs), length), np.int32)
    pos = np.zeros((len(docs), length), np.int32)
    for r, lengths in enumerate(docs):
        start = 0
        for k, n in enumerate(lengths):
            seg[r, start : start + n] = k + 1
            pos[r, start : start + n] = np.arange(n)
            start += n
        assert start <= length
    return seg, pos


def make_batch(name: str) -> dict[str, np.ndarray]:
    """The family's batch layout (see the module docstring), fixed seed."""
    rng = np.random.default_rng(0)
    family = MODELS[name]["family"]

    def ids(length: int) -> np.ndarray:
        return rng.integers(1, VOCAB, (ROWS, length), dtype=np.int32)

    if name in SENTENCE:
        real = np.arange(LEN)[None] < np.asarray(PAIR_LENGTHS)[:, None]  # [B, T]
        second = np.arange(LEN)[None] >= (np.asarray(PAIR_LENGTHS) // 2)[:, None]
        weights = (real & (rng.random((ROWS, LEN)) < 0.4)).astype(np.float32)
        weights[4] = 0.0  # a real pair with no masked token still counts for its label
        return {
            "input_ids": ids(LEN) * real,
            "attention_mask": real.astype(np.int32),
            "token_type_ids": (real & second).astype(np.int32),
            "labels": ids(LEN),
            "loss_weights": weights * ROW_SCALE[:, None],
            "next_sentence_label": np.array([0, 1, 1, 0, 1, 0, 0, 1], np.int32),
        }
    seg, pos = packed(ENCODER_DOCS, LEN)
    batch = {"input_ids": ids(LEN) * (seg > 0), "segment_ids": seg, "positions": pos}
    if family == "decoder":
        batch["labels"] = ids(LEN)
        batch["loss_weights"] = (seg > 0) * ROW_SCALE[:, None]
    elif family == "encoder":
        batch["labels"] = ids(LEN)
        masked = (seg > 0) & (rng.random((ROWS, LEN)) < 0.4)
        batch["loss_weights"] = masked * ROW_SCALE[:, None]
        if MODELS[name].get("type_vocab_size"):
            batch["token_type_ids"] = np.zeros((ROWS, LEN), np.int32)
    else:
        dseg, dpos = packed(DECODER_DOCS, TARGET_LEN)
        labels = ids(TARGET_LEN) * (dseg > 0)
        shifted = np.pad(labels[:, :-1], ((0, 0), (1, 0)))
        starts = dpos == 0  # each target document starts from id 0
        batch.update(
            decoder_input_ids=np.where(starts, 0, shifted).astype(np.int32),
            decoder_segment_ids=dseg,
            decoder_positions=dpos,
            labels=labels,
            loss_weights=(dseg > 0) * ROW_SCALE[:, None],
        )
    batch["loss_weights"] = batch["loss_weights"].astype(np.float32)
    return batch


def make_config(name: str, microbatches: int = 1, **optimizer) -> C.Config:
    model = {**COMMON, **MODELS[name]}
    data = {"seq_len": LEN, "objective": OBJECTIVE[model["family"]]}
    if name in SENTENCE:
        data["sentence_objective"] = SENTENCE[name]
    if model["family"] == "encoder_decoder":
        data["target_len"] = TARGET_LEN
    return C.from_dict(
        {
            "model": model,
            "data": data,
            "optimizer": {"learning_rate": 1e-3, "warmup_steps": 1, **optimizer},
            "train": {"batch_size": ROWS, "num_steps": 10, "microbatches": microbatches},
            "mesh": MESH,
        }
    )


@pytest.fixture(scope="module")
def mesh():
    return partitioning.make_mesh(C.MeshConfig(**MESH))


def log_softmax64(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def reference(outputs: dict, batch: dict, label_smoothing: float = 0.0, z_loss: float = 0.0):
    """``(loss, ce)`` of the step's definition, in float64 numpy from ``outputs``."""
    z = np.asarray(outputs["logits"], np.float64)  # [B, T, V]
    log_p = log_softmax64(z)
    ce = -np.take_along_axis(log_p, batch["labels"][..., None].astype(np.int64), -1)[..., 0]
    token = (1.0 - label_smoothing) * ce - label_smoothing * log_p.mean(axis=-1)
    m = z.max(axis=-1)
    lse = m + np.log(np.exp(z - m[..., None]).sum(axis=-1))
    token = token + z_loss * lse**2
    w = np.asarray(batch["loss_weights"], np.float64)
    assert w.sum() > 0 and len(set(w.sum(axis=1))) > 2  # uneven rows
    loss = (w * token).sum() / w.sum()
    ce_mean = (w * ce).sum() / w.sum()
    if "sentence_logits" in outputs:
        # BERT's objective: mlm_loss + nsp_loss, the sentence loss a mean over rows.
        loss += sentence_ce(outputs, batch).mean()
    return loss, ce_mean


@functools.cache
def initial(name: str) -> tuple[dict, dict]:
    """``(params, outputs)`` on the host, shared by every case of ``name``.

    ``params``: float32 draws of the model's parameter shapes, N(0, 0.2) (norm scales
    1 + N(0, 0.1)), so logits are far from uniform and token losses differ (random
    draws in numpy cost nothing to compile, unlike an init); ``outputs``: the model's
    forward on :func:`make_batch`, jitted on host arrays outside the mesh (apart from
    the step's own sharded forward).
    """
    cfg = make_config(name)
    abstract = jax.eval_shape(lambda: models.init_params(cfg.model, jax.random.key(0)))
    rng = np.random.default_rng(1)

    def draw(path, leaf):
        x = rng.normal(0.0, 0.2, leaf.shape)
        if path[-1].key == "scale":
            x = 1.0 + x / 2
        return x.astype(leaf.dtype)

    params = jax.tree_util.tree_map_with_path(draw, abstract)
    model = models.build(cfg.model)
    forward = jax.jit(lambda p, b: model.apply({"params": p}, b, deterministic=True))
    return params, jax.device_get(forward(params, make_batch(name)))


def step_metrics(name: str, cfg: C.Config, mesh) -> dict[str, float]:
    """Metrics of one train step of the trainer's jitted, sharded step from ``initial``.

    The state is ``train_state.create`` (what the step builder's ``init`` returns) of
    the initial parameters, placed in the step's state shardings; the batch is split
    over the mesh with the step's batch sharding, as the trainer places it.
    """
    run = steps.for_config(cfg, mesh)
    params, _ = initial(name)
    state = jax.device_put(ts.create(params, run.tx, cfg.train.seed), run.state_shardings)
    with jax.set_mesh(mesh):
        batch = jax.device_put(make_batch(name), run.batch_sharding)
    new_state, metrics = run.run(run.train, state, batch)
    assert int(jax.device_get(new_state.step)) == 1
    return {k: float(v) for k, v in jax.device_get(metrics).items()}


def sentence_ce(outputs: dict, batch: dict) -> np.ndarray:
    """``[B]`` float64 NSP / SOP cross-entropy of ``sentence_logits``."""
    log_p = log_softmax64(outputs["sentence_logits"])  # [B, 2]
    return -log_p[np.arange(ROWS), batch["next_sentence_label"]]


def check_plain_loss(name: str, metrics: dict[str, float]) -> None:
    """``loss`` and ``ce`` (and ``sentence_loss``) of a step without smoothing / z-loss."""
    batch = make_batch(name)
    _, outputs = initial(name)
    want_loss, want_ce = reference(outputs, batch)
    assert metrics["ce"] == pytest.approx(want_ce, rel=RTOL)
    assert metrics["loss"] == pytest.approx(want_loss, rel=RTOL)
    if name in SENTENCE:
        s_ce = sentence_ce(outputs, batch)
        assert s_ce.std() > 0.05  # the sentence head is not at chance on every row
        assert metrics["sentence_loss"] == pytest.approx(s_ce.mean(), rel=RTOL)
        assert want_loss == pytest.approx(want_ce + s_ce.mean(), rel=1e-12)
    else:
        assert "sentence_logits" not in outputs and "sentence_loss" not in metrics
        assert want_loss == pytest.approx(want_ce, rel=1e-12)


@pytest.mark.parametrize("name", list(MODELS))
def test_step_reports_the_token_weighted_mean_loss(name, mesh):
    check_plain_loss(name, step_metrics(name, make_config(name), mesh))


def test_microbatched_step_reports_the_global_batch_mean(mesh):
    # Microbatch m takes rows m, m + 2, ...: the two carry different token weights,
    # so a mean of the two microbatch means is not the global mean.
    name = "bert_nsp"
    w = make_batch(name)["loss_weights"]
    assert abs(w[0::2].sum() - w[1::2].sum()) > 0.2 * w.sum()
    check_plain_loss(name, step_metrics(name, make_config(name, microbatches=2), mesh))


def test_reported_loss_includes_label_smoothing_and_z_loss(mesh):
    """Smoothing and z-loss enter ``loss`` (not ``ce``), also summed over microbatches."""
    name, smoothing, z_loss = "gpt2", 0.1, 1e-2
    w = make_batch(name)["loss_weights"]
    assert abs(w[0::2].sum() - w[1::2].sum()) > 0.2 * w.sum()
    cfg = make_config(name, microbatches=2, label_smoothing=smoothing, z_loss=z_loss)
    metrics = step_metrics(name, cfg, mesh)
    batch = make_batch(name)
    _, outputs = initial(name)
    want_loss, want_ce = reference(outputs, batch, smoothing, z_loss)
    plain_loss, _ = reference(outputs, batch)
    assert abs(want_loss - plain_loss) > 100 * RTOL * plain_loss  # the terms matter
    assert metrics["ce"] == pytest.approx(want_ce, rel=RTOL)
    assert metrics["loss"] == pytest.approx(want_loss, rel=RTOL)
