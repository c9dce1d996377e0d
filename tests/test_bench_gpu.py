"""bench/gpu.sh's Python path on the CPU: JSON lines, no data or config stack
imported, the committed JSON configs equal to their presets, and the compiled step's
memory analysis against the state's bytes counted by hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from t5x_lite import bench
from t5x_lite import config as C

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCKED = ("tensorflow_datasets", "tensorflow", "grain", "gin", "ml_collections")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PYTHONPATH")}
    return {**env, "PYTHON": sys.executable, **extra}


def test_shim_blocks_the_data_and_config_stacks():
    probe = (
        "import importlib\nfor n in %r:\n    try:\n        importlib.import_module(n)\n"
        "        print('imported', n)\n    except ImportError:\n        print('blocked', n)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe % (BLOCKED,)], capture_output=True, text=True, check=True,
        env=_env(PYTHONPATH=os.path.join(ROOT, "bench", "no_data_stack")),
    ).stdout.split("\n")  # fmt: skip
    assert [ln for ln in out if ln] == [f"blocked {n}" for n in BLOCKED]


def test_smoke_run_prints_json_lines_without_the_data_stack():
    done = subprocess.run(
        ["bash", os.path.join(ROOT, "bench", "gpu.sh")], capture_output=True, text=True,
        env=_env(BENCH_SMOKE="1", BENCH_FIGURES="gpt2", BENCH_SWEEP="0"), timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(ln) for ln in done.stdout.strip().splitlines()]
    assert not [r["error"] for r in lines if "error" in r]
    trial, best, total = lines
    assert trial["figure"] == "gpt2_124m"
    assert trial["mode"] == "smoke" and trial["backend"] == "cpu"
    for key in ("remat_policy", "attention_impl", "xla_flags", "compile_s", "peak_bytes"):
        assert key in trial, key
    assert trial["tokens_per_s"] == pytest.approx(4 * 32 / trial["step_s"])
    assert trial["peak_bytes"] > 0 and trial["memory_source"] == "memory_analysis"
    assert best["figure"] == "gpt2_124m_best" and best["tokens_per_s"] == trial["tokens_per_s"]
    assert total["figure"] == "total" and total["trials"] == 1 and total["failed"] == 0


def test_committed_json_configs_are_the_presets():
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    try:
        import make_configs
    finally:
        sys.path.pop(0)
    for name in make_configs.PRESETS:
        # As configs: a field added since the files were written takes its default on
        # both sides; a preset whose values changed differs.
        committed = bench.load_values(os.path.join(ROOT, "bench", "configs", f"{name}.json"))
        preset = json.loads(make_configs.resolved(name))
        assert C.from_dict(committed) == C.from_dict(preset), (
            f"bench/configs/{name}.json differs from its preset: run python bench/make_configs.py"
        )


def test_compile_only_memory_counts_the_adamw_state(capsys):
    config = os.path.join(ROOT, "bench", "configs", "gpt2_tiny.json")
    bench.main(["--config", config, "--batch", "8", "--seq", "16", "--compile_only"])  # fmt: skip
    rec = json.loads(capsys.readouterr().out)
    a = rec["memory_analysis"]  # bytes per device; parameters replicated over data
    # float32 params + Adam's two moments, by hand: 3 x 4 bytes each; the batch: five
    # [8, 16] arrays of 4 bytes split over the devices; the step, Adam's count and the
    # rng key: a few bytes.
    state_bytes = 3 * 4 * rec["params"]
    batch_bytes = 5 * 8 * 16 * 4 // rec["devices"]
    assert state_bytes + batch_bytes <= a["argument"] <= state_bytes + batch_bytes + 64
    # The state is donated: every output byte reuses an argument's but the metrics
    # scalars and the output tuples' pointer tables (under 1 kB here).
    assert state_bytes <= a["alias"] <= a["output"] <= a["alias"] + 1024
    assert rec["peak_bytes"] == a["argument"] + a["output"] - a["alias"] + a["temp"]
    assert rec["memory_source"] == "memory_analysis (compile only)"


def _nanogpt_cpu():
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    try:
        import nanogpt_cpu
    finally:
        sys.path.pop(0)
    return nanogpt_cpu


def test_nanogpt_comparison_trains_the_issue_shape():
    from t5x_lite.models import count_params

    cfg = _nanogpt_cpu().t5x_config("gelu", packed=False)
    m = cfg.model
    assert (m.num_layers, m.num_heads, m.d_model, m.d_ff, m.vocab_size) == (4, 4, 256, 1024, 8192)
    assert m.tied_head and m.traits.biases and m.dropout_rate == 0.0 and m.dtype == "float32"
    assert (cfg.data.seq_len, cfg.train.batch_size, m.max_seq_len) == (256, 16, 256)
    # GPT-2 of that shape by hand, as nanoGPT counts it (tied head, biases):
    # wte 8192*256 + wpe 256*256 + 4 x (qkv/out 4*256*256 + 4*256 biases, MLP 2*256*1024
    # + 1024 + 256, two LayerNorms 2*512) + ln_f 512.
    per_layer = 4 * 256 * 256 + 4 * 256 + 2 * 256 * 1024 + 1024 + 256 + 2 * 512
    assert count_params(m)["total"] == 8192 * 256 + 256 * 256 + 4 * per_layer + 512 == 5_322_240


def test_nanogpt_comparison_without_a_checkout_is_one_line(tmp_path):
    with pytest.raises(SystemExit) as err:
        _nanogpt_cpu().main(["--nanogpt", str(tmp_path)])
    assert str(err.value) == f"error: --nanogpt={tmp_path}: no model.py there (a nanoGPT checkout)"
