"""``python -m t5x_lite.generate`` on a run the trainer wrote, and its one-line errors."""

from __future__ import annotations

import numpy as np
import pytest

from t5x_lite import config as C
from t5x_lite import decoding, generate, presets, trainer


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A 3-step gpt2_tiny run (seq_len 32) with a checkpoint at its end."""
    tmp = tmp_path_factory.mktemp("gen")
    values = presets.load("gpt2_tiny").to_dict()
    values["data"].update(seq_len=32, data_dir=str(tmp / "data"), prefetch_batches=0)
    values["model"]["max_seq_len"] = 32
    values["train"].update(
        batch_size=8, num_steps=3, log_every=1, eval_every=3, eval_batches=1, sample_tokens=8
    )
    values["checkpoint"]["every_steps"] = 1000
    workdir = tmp / "run"
    out = trainer.train(C.from_dict(values), str(workdir), progress=False)
    assert out["steps"] == 3
    return workdir


def test_generate_continues_the_prompt_greedily(run_dir, capsys):
    generate.main([f"--workdir={run_dir}", "--prompt=In the beginning", "--max_new_tokens=6"])
    first = capsys.readouterr().out.strip().splitlines()
    assert len(first) == 1 and first[0].startswith("In the beginning")
    # The CLI's greedy continuation is the library's on the restored parameters.
    cfg, tok, mesh, params, step = generate.load(str(run_dir))
    assert step == 3
    ids = tok.encode("In the beginning")
    opts = decoding.Options(max_new_tokens=6, eos_id=tok.eos_id)
    out = decoding.generate(cfg.model, params, [ids], opts, allowed=decoding.allowed_ids(
        tok, cfg.model.vocab_size), mesh=mesh)  # fmt: skip
    new = [t for t in out["tokens"][0, : out["lengths"][0]] if t != tok.eos_id]
    assert first[0] == decoding.printable(tok.decode([*ids, *new]))


def test_generate_samples_and_beams(run_dir, capsys):
    base = [f"--workdir={run_dir}", "--prompt=And God said", "--max_new_tokens=5"]
    generate.main([*base, "--temperature=1.0", "--top_k=20", "--top_p=0.9", "--seed=3"])
    a = capsys.readouterr().out
    generate.main([*base, "--temperature=1.0", "--top_k=20", "--top_p=0.9", "--seed=3"])
    assert capsys.readouterr().out == a and a.startswith("And God said")
    generate.main([*base, "--num_beams=3"])
    beams = capsys.readouterr().out.strip().splitlines()
    assert len(beams) == 3 and all(b.startswith(f"beam {i} (score ") for i, b in enumerate(beams))
    scores = [float(b.split("score ")[1].split(")")[0]) for b in beams]
    assert scores == sorted(scores, reverse=True) and np.isfinite(scores).all()


def test_one_line_errors(run_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        generate.main([f"--workdir={tmp_path}", "--prompt=x"])
    assert str(e.value) == f"error: {tmp_path} holds no run (config.json missing)"
    # A run directory whose checkpoints are gone.
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "tokenizer.model"):
        (bare / name).write_bytes((run_dir / name).read_bytes())
    with pytest.raises(SystemExit) as e:
        generate.main([f"--workdir={bare}", "--prompt=x"])
    assert "\n" not in str(e.value) and "holds no checkpoint" in str(e.value)
    (bare / "checkpoints").mkdir()
    with pytest.raises(SystemExit) as e:
        generate.main([f"--workdir={bare}", "--prompt=x"])
    assert "\n" not in str(e.value) and "holds no checkpoint" in str(e.value)
    with pytest.raises(SystemExit) as e:
        generate.main([f"--workdir={run_dir}", "--prompt=" + "In the beginning " * 20])
    assert "\n" not in str(e.value)
    assert "the model's context is 32" in str(e.value) and str(e.value).startswith("error: ")
