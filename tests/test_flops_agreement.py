"""One FLOP count per step: the step benchmark, the scaling planner and the trainer
report the same ``flops_train_per_step`` for ``t5_tiny`` span corruption at
``seq_len=512``, where the decoder rows hold 114 targets (the objective table's row
lengths), not 128 (``seq // 4``) nor 512 (``seq_len``)."""

from __future__ import annotations

import dataclasses

import pytest

from t5x_lite import bench, flops, presets, trainer
from t5x_lite.config import from_dict, row_lengths, to_dict
from t5x_lite.scaling import apply_plan


def test_bench_planner_and_trainer_count_the_same_step(kjv_root, tmp_path):
    values = to_dict(presets.load_typed("t5_tiny"))
    values["model"]["max_seq_len"] = 512
    values["data"].update(seq_len=512, data_dir=str(kjv_root), prefetch_batches=0)
    values["train"].update(
        batch_size=8, eval_batches=1, log_every=1, eval_every=1, progress_bar=False
    )
    values["mesh"] = {"data": -1, "fsdp": 1, "tensor": 1}
    values["scaling"]["flops_budget"] = 3e11
    planned, info = apply_plan(from_dict(values))
    assert row_lengths(planned.data).target_len == 114

    # The planned shape trained for one step, and benchmarked on the same shape.
    one = dataclasses.replace(
        planned,
        train=dataclasses.replace(planned.train, num_steps=1),
        scaling=dataclasses.replace(planned.scaling, flops_budget=0.0),
    )
    result = trainer.train(one, str(tmp_path), sample=False, progress=False)
    record = bench.run(one, num_steps=1, warmup=0, peak_spec="auto")

    want = flops.train_flops_per_row(planned.model, 512, 114) * 8  # 8 rows per step
    assert info["flops_train_per_step"] == pytest.approx(want, rel=1e-12)
    assert record["flops_train_per_step"] == pytest.approx(want, rel=1e-12)
    assert result["flops_train_per_step"] == pytest.approx(want, rel=1e-12)
    assert record["target_len"] == 114
    # The planner's total is its per-step figure times its steps.
    assert info["flops_train"] == pytest.approx(want * info["num_steps"], rel=1e-12)
