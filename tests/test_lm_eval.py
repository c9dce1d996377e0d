"""The lm-eval adapter (t5x_lite.lm_eval_adapter) on tiny trained runs.

``python -m t5x_lite.lm_eval_adapter`` (lm-eval's own command line, with the network
switched off in the process) runs the local multiple-choice task of tests/data/fewshot
on a trained GPT-2, and its accuracies and per-choice log-likelihoods equal our own
scorer's on the same file. ``loglikelihood_rolling`` equals a direct sum of the
model's log-probabilities over lm-eval's windows; ``generate_until`` equals greedy
``decoding.generate`` cut at the stop string. T5 goes through the seq2seq path.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from lm_eval.api.instance import Instance
from trained_runs import FAMILIES, trained

import t5x_lite
from t5x_lite import decoding, fewshot, lm_eval_adapter
from t5x_lite.config import ConfigError

DATA = os.path.join(os.path.dirname(__file__), "data", "fewshot")
TASK = os.path.join(DATA, "kjv_mc.jsonl")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Run the adapter's command line with every socket refused: lm-eval must not reach
# the network (the Hub, datasets) for a local task.
OFFLINE = """
import runpy, socket, sys
def refuse(*args, **kwargs):
    raise OSError("network access attempted: " + repr(args[:2]))
socket.socket.connect = refuse
socket.create_connection = refuse
sys.argv = ["t5x_lite.lm_eval_adapter", *sys.argv[1:]]
runpy.run_module("t5x_lite.lm_eval_adapter", run_name="__main__")
"""


@pytest.fixture(scope="module")
def workdirs(kjv_root, tmp_path_factory):
    cache: dict = {}

    def get(family: str) -> str:
        if family not in cache:
            cache[family] = trained(FAMILIES[family], str(kjv_root), tmp_path_factory)
        return cache[family]

    return get


@pytest.fixture(scope="module")
def lm_cls():
    return lm_eval_adapter.register()


def test_lm_eval_cli_accuracy_equals_our_scorer(workdirs, tmp_path):
    workdir = workdirs("decoder")
    out = tmp_path / "results"
    env = {
        **os.environ,
        "PYTHONPATH": ROOT,
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_DATASETS_CACHE": str(tmp_path / "datasets"),
        "XLA_FLAGS": "",
    }
    args = ["--model_args", f"path={workdir}", "--batch_size", "8", "--tasks", "kjv_mc",
            "--include_path", DATA, "--output_path", str(out), "--log_samples"]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", OFFLINE, *args], cwd=DATA, env=env, capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "network access attempted" not in proc.stderr
    (results_file,) = glob.glob(str(out / "**" / "results_*.json"), recursive=True)
    metrics = json.loads(Path(results_file).read_text())["results"]["kjv_mc"]
    ours = fewshot.evaluate(t5x_lite.load(workdir), TASK, shots=0)
    assert metrics["acc,none"] == ours["acc"]
    assert metrics["acc_norm,none"] == ours["acc_norm"]
    (samples_file,) = glob.glob(str(out / "**" / "samples_kjv_mc_*.jsonl"), recursive=True)
    samples = sorted(
        (json.loads(s) for s in Path(samples_file).read_text().splitlines()),
        key=lambda s: s["doc_id"],
    )
    for sample, pred in zip(samples, ours["predictions"], strict=True):
        theirs = [float(r[0][0]) for r in sample["resps"]]
        np.testing.assert_allclose(theirs, pred["loglikelihoods"], atol=1e-5, rtol=0)


def test_seq2seq_loglikelihood_equals_our_scorer(workdirs, lm_cls):
    workdir = workdirs("encoder_decoder")
    lm = lm_cls(path=workdir, batch_size=4)
    assert lm.backend == "seq2seq"
    doc = fewshot.read_jsonl(TASK)[0]
    reqs = [Instance("loglikelihood", doc, (doc["query"], " " + c), i)
            for i, c in enumerate(doc["choices"])]  # fmt: skip
    theirs = [lp for lp, _ in lm.loglikelihood(reqs)]
    ours = fewshot.evaluate(t5x_lite.load(workdir), TASK)["predictions"][0]["loglikelihoods"]
    np.testing.assert_allclose(theirs, ours, atol=1e-5, rtol=0)


def _direct_logp(run, inputs: list[int], targets: list[int]) -> float:
    """Sum of log p(targets) at the last len(targets) positions of ``inputs``, from
    the model's full forward (numpy log-softmax)."""
    logits = run.logits({"input_ids": np.asarray([inputs], np.int32)})[0].astype(np.float64)
    logits = logits[len(inputs) - len(targets) :]
    logz = np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1)) + logits.max(-1)
    return float(np.sum(logits[np.arange(len(targets)), targets] - logz))


def test_loglikelihood_rolling_equals_direct_sums(workdirs, lm_cls):
    workdir = workdirs("decoder")
    run = t5x_lite.load(workdir)
    text = " ".join(
        ["In the beginning God created the heaven and the earth."] * 3
        + ["And the earth was without form, and void."]
    )
    tokens = run.tokenizer.encode(text)
    eos = run.tokenizer.eos_id
    req = [Instance("loglikelihood_rolling", {}, (text,), 0)]
    # Shorter than the context: one window, every token given EOS and all before it.
    (whole,) = lm_cls(path=workdir).loglikelihood_rolling(req)
    assert whole == pytest.approx(_direct_logp(run, [eos, *tokens[:-1]], tokens), abs=1e-4)
    # Longer than a 16-token context: token i is predicted from the 16-token window that
    # ends just before the chunk of 16 holding it (the last chunk from the last 16).
    L = 16
    assert len(tokens) > 2 * L + 1
    (rolled,) = lm_cls(path=workdir, max_length=L).loglikelihood_rolling(req)
    ref = _direct_logp(run, [eos, *tokens[: L - 1]], tokens[:L])
    for start in range(L, len(tokens), L):
        end = min(start + L, len(tokens))
        ref += _direct_logp(run, tokens[end - L - 1 : end - 1], tokens[start:end])
    assert rolled == pytest.approx(ref, abs=1e-4)
    assert rolled != pytest.approx(whole, abs=1e-3)  # the windows really cut the context


def test_generate_until_equals_greedy_decoding(workdirs, lm_cls):
    workdir = workdirs("decoder")
    run = t5x_lite.load(workdir)
    lm = lm_cls(path=workdir, batch_size=2)
    context = "And God said, Let there be"
    ids = run.tokenizer.encode(context)
    opts = decoding.Options(max_new_tokens=10, eos_id=run.tokenizer.eos_id)
    allowed = decoding.allowed_ids(run.tokenizer, run.config.model.vocab_size)
    out = decoding.generate(run.config.model, run.params, [ids], opts, allowed=allowed)
    new = [int(t) for t in out["tokens"][0, : int(out["lengths"][0])] if t != opts.eos_id]
    full = run.tokenizer.decode(new)
    assert len(full.strip()) >= 4, full
    stop = full.strip()[2:4]
    reqs = [
        Instance("generate_until", {}, (context, {"until": ["\n\n"], "max_gen_toks": 10}), 0),
        Instance("generate_until", {}, (context, {"until": [stop], "max_gen_toks": 10}), 1),
        Instance("generate_until", {}, (context, {"until": [], "max_gen_toks": 3}), 2),
    ]
    plain, cut, short = lm.generate_until(reqs)
    assert plain == full.split("\n\n")[0]
    assert cut == full.split(stop, 1)[0] and stop not in cut
    assert short == run.tokenizer.decode(new[:3])


def test_cut_at_and_bad_model_args(lm_cls, workdirs):
    assert lm_eval_adapter.cut_at("a b\n\nc", ["\n\n"]) == "a b"
    assert lm_eval_adapter.cut_at("a b", ["x", ""]) == "a b"
    with pytest.raises(ConfigError, match="needs path=DIR"):
        lm_cls()
    with pytest.raises(ConfigError, match="batch_size='many' is not an integer"):
        lm_cls(path=workdirs("decoder"), batch_size="many")
