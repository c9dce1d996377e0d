"""The step benchmark (t5x_lite.bench): one JSON line from the trainer's real step."""

import json
import math

import pytest

from t5x_lite import bench, flops


@pytest.mark.parametrize("preset", ["configs/gpt2_tiny.py", "configs/t5_tiny.py"])
def test_bench_prints_one_json_record(preset, capsys):
    bench.main(["--config", preset, "--batch", "8", "--seq", "32", "--steps", "2",
                "--warmup", "0", "--mesh", "2,2,2"])  # fmt: skip
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert rec["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2} and rec["devices"] == 8
    assert rec["batch"] == 8 and rec["seq"] == 32 and rec["steps"] == 2
    cfg = bench.bench_config(bench.load_values(preset), bench.parse_args(
        ["--config", preset, "--batch", "8", "--seq", "32"]))  # fmt: skip
    assert rec["flops_per_token"] == flops.train_flops_per_token(
        cfg.model, 32, bench.target_length(cfg)
    )
    assert rec["tokens_per_s"] == pytest.approx(8 * 32 / rec["step_s"])
    achieved = rec["flops_per_token"] * rec["tokens_per_s"]
    assert rec["achieved_flops_per_s"] == pytest.approx(achieved)
    assert rec["mfu"] is None and rec["backend"] == "cpu"  # no peak on a CPU
    assert math.isfinite(rec["loss_first"]) and math.isfinite(rec["loss_last"])


def test_bench_bad_input_is_one_line(capsys):
    with pytest.raises(SystemExit) as err:
        bench.main(["--config", "configs/gpt2_tiny.py", "--steps", "0"])
    assert str(err.value).startswith("error: --steps=0") and "\n" not in str(err.value)
