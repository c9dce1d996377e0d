"""Log-likelihood scoring (t5x_lite.scoring), few-shot multiple choice (t5x_lite.fewshot)
and the lm-eval adapter (t5x_lite.lm_eval_adapter), on the same tiny trained runs.

Independent references: transformers (torch, CPU) on the HF export of the same tiny
trained run gives the summed log-likelihood of a continuation within 1e-4 (GPT-2 and
T5), and the few-shot accuracies are recomputed from those torch scores with numpy.
Bucketing compiles once per padded length, not per example. Bad task files are
one-line errors.

lm-eval: ``python -m t5x_lite.lm_eval_adapter`` (lm-eval's own command line, with the
network switched off in the process) runs the local multiple-choice task of
tests/data/fewshot on a trained GPT-2, and its accuracies and per-choice
log-likelihoods equal our own scorer's on the same file. ``loglikelihood_rolling``
equals a direct sum of the model's log-probabilities over lm-eval's windows;
``generate_until`` equals greedy ``decoding.generate`` cut at the stop string; T5 goes
through the seq2seq path.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from lm_eval.api.instance import Instance
from trained_runs import FAMILIES, preset_config, trained

import t5x_lite
from t5x_lite import decoding, export, fewshot, lm_eval_adapter, scoring
from t5x_lite.config import ConfigError

DATA = os.path.join(os.path.dirname(__file__), "data", "fewshot")
TASK = os.path.join(DATA, "kjv_mc.jsonl")
TRAIN = os.path.join(DATA, "kjv_mc_train.jsonl")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAIRS = [
    ("In the beginning God created the", " heaven and the earth."),
    ("And God said, Let there be", " light: and there was light."),
    ("Jesus", " wept. Then said the Jews, Behold how he loved him!"),
    ("The LORD is my shepherd; I shall not ", "want."),  # the space moves to the target
]


@pytest.fixture(scope="module")
def runs(kjv_root, tmp_path_factory):
    """``runs(family) -> (Loaded, hf_dir)``: trained once per process, exported once."""
    cache: dict = {}

    def get(family: str):
        if family not in cache:
            workdir = trained(FAMILIES[family], str(kjv_root), tmp_path_factory)
            out = str(tmp_path_factory.mktemp(f"fewshot-hf-{family}") / "hf")
            export.export(workdir, "hf", out)
            cache[family] = t5x_lite.load(workdir), out
        return cache[family]

    return get


def torch_loglik(hf_dir: str, family: str, pairs, eos_id: int) -> np.ndarray:
    """Summed log-probabilities of each continuation under transformers."""
    auto = (
        transformers.AutoModelForCausalLM
        if family == "decoder"
        else (transformers.AutoModelForSeq2SeqLM)
    )
    model = auto.from_pretrained(hf_dir).eval()
    out = []
    with torch.no_grad():
        for ctx, cont in pairs:
            if family == "decoder":
                ids = torch.tensor([list(ctx) + list(cont)])
                logp = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
                tgt = ids[0, 1:]
                tok = logp[torch.arange(len(tgt)), tgt][-len(cont) :]
            else:
                enc = torch.tensor([[*ctx, eos_id]])
                labels = torch.tensor([list(cont)])
                logp = torch.log_softmax(model(input_ids=enc, labels=labels).logits[0].double(), -1)
                tok = logp[torch.arange(len(cont)), labels[0]]
            out.append(float(tok.sum()))
    return np.asarray(out)


@pytest.mark.parametrize("family", ["decoder", "encoder_decoder"])
def test_loglikelihood_equals_transformers(runs, family):
    run, hf_dir = runs(family)
    seq2seq = family == "encoder_decoder"
    pairs = [scoring.encode_pair(run.tokenizer.encode, c, t, seq2seq) for c, t in PAIRS]
    assert all(c and t for c, t in pairs)
    ours = scoring.Scorer(run, batch_size=3).score(pairs)
    ref = torch_loglik(hf_dir, family, pairs, run.tokenizer.eos_id)
    np.testing.assert_allclose([s for s, _ in ours], ref, atol=1e-4, rtol=0)
    assert all(isinstance(g, bool) for _, g in ours)
    # The exported directory itself is a run the scorer (and the fewshot CLI) takes.
    via_hf = scoring.Scorer(t5x_lite.load(hf_dir), batch_size=3).score(pairs)
    np.testing.assert_allclose([s for s, _ in via_hf], [s for s, _ in ours], atol=1e-5, rtol=0)


def test_encode_pair_moves_trailing_space(runs):
    run, _ = runs("decoder")
    enc = run.tokenizer.encode
    ctx, cont = scoring.encode_pair(enc, "The LORD is my shepherd; I shall not ", "want.", False)
    assert ctx == enc("The LORD is my shepherd; I shall not")
    assert ctx + cont == enc("The LORD is my shepherd; I shall not want.")


def test_greedy_flag_and_truncation_match_direct_logits(runs):
    run, _ = runs("decoder")
    ctx = run.tokenizer.encode("In the beginning God created the heaven")
    logits = run.logits({"input_ids": np.asarray([ctx])})[0]
    best = [int(np.argmax(logits[-1]))]
    other = [int(np.argsort(logits[-1])[-2])]
    scorer = scoring.Scorer(run, max_length=6)
    (lp_best, g_best), (_, g_other) = scorer.score([(ctx, best), (ctx, other)])
    assert g_best and not g_other
    # max_length 6: only the last 6 input tokens condition the continuation.
    window = (ctx + best)[-7:-1]
    short = run.logits({"input_ids": np.asarray([window])})[0, -1]
    ref = short[best[0]] - np.log(np.sum(np.exp(short - short.max()))) - short.max()
    assert lp_best == pytest.approx(float(ref), abs=1e-5)
    assert scorer.truncated((ctx, best))


def test_buckets_compile_once_per_length(runs):
    run, _ = runs("decoder")
    enc = run.tokenizer.encode
    words = "and God saw the light that it was good and God divided the light from"
    pairs = [(enc(" ".join(words.split()[: 1 + i % 14])), enc(" darkness")) for i in range(30)]
    scorer = scoring.Scorer(run, batch_size=4)
    start = scorer.fn._cache_size()  # other tests may have compiled other shapes
    scorer.score(pairs)
    compiled = scorer.fn._cache_size() - start
    buckets = {scoring.bucket(len(c) + len(t) - 1, 128) for c, t in pairs}
    assert len(buckets) == 2 and 1 <= compiled <= len(buckets)  # 30 requests, 2 shapes
    scorer.score(pairs[::-1])
    assert scorer.fn._cache_size() - start == compiled  # nothing new compiled


def test_bucket_and_rows_examples():
    assert [scoring.bucket(n, 48) for n in (1, 16, 17, 40)] == [16, 16, 32, 48]
    assert scoring.decoder_row([5, 6], [7, 8], 8) == ([5, 6, 7], [6, 7, 8], [0, 1, 1])
    assert scoring.decoder_row([1, 2, 3, 4], [7, 8], 3) == ([3, 4, 7], [4, 7, 8], [0, 1, 1])
    assert scoring.t5_rows([5, 6], [7, 8], 1, 8) == ([5, 6, 1], [0, 7], [7, 8])


@pytest.mark.parametrize("family", ["decoder", "encoder_decoder"])
def test_fewshot_accuracy_equals_torch_scores(runs, family):
    run, hf_dir = runs(family)
    seq2seq = family == "encoder_decoder"
    result = fewshot.evaluate(run, TASK, shots=2, train=TRAIN, seed=3, batch_size=8)
    docs, pool = fewshot.read_jsonl(TASK), fewshot.read_jsonl(TRAIN)
    acc = acc_norm = 0
    for i, doc in enumerate(docs):
        demos = fewshot.draw_demos(pool, 2, 3, i, None)
        text = fewshot.prompt(doc, demos, "query", "choices", "gold")
        assert text.count("\n\n") == 2 and text.endswith(doc["query"])
        pairs = [
            scoring.encode_pair(run.tokenizer.encode, text, " " + c, seq2seq)
            for c in doc["choices"]
        ]
        lls = torch_loglik(hf_dir, family, pairs, run.tokenizer.eos_id)
        np.testing.assert_allclose(result["predictions"][i]["loglikelihoods"], lls, atol=1e-4)
        lengths = np.asarray([len(c) for c in doc["choices"]], float)
        acc += int(np.argmax(lls)) == doc["gold"]
        acc_norm += int(np.argmax(lls / lengths)) == doc["gold"]
    assert result["acc"] == acc / len(docs) and result["acc_norm"] == acc_norm / len(docs)
    assert result["n"] == 10 and result["shots"] == 2 and result["truncated"] == 0


def test_demonstrations_are_seeded_and_exclude_the_example():
    docs = fewshot.read_jsonl(TASK)
    for i in range(len(docs)):
        demos = fewshot.draw_demos(docs, 4, 0, i, i)
        assert docs[i] not in demos and len({d["query"] for d in demos}) == 4
        assert demos == fewshot.draw_demos(docs, 4, 0, i, i)
    assert fewshot.draw_demos(docs, 4, 0, 0, 0) != fewshot.draw_demos(docs, 4, 1, 0, 0)


def test_cli_prints_one_json_line(runs, capsys, tmp_path):
    run, _ = runs("decoder")
    capsys.readouterr()  # what preparing and training the run printed
    preds = tmp_path / "preds.jsonl"
    fewshot.main([f"--workdir={run.path}", f"--task={TASK}", "--shots=1", f"--predictions={preds}"])
    (line,) = capsys.readouterr().out.splitlines()
    out = json.loads(line)
    assert out["n"] == 10 and out["shots"] == 1 and 0 <= out["acc"] <= 1
    assert len(preds.read_text().splitlines()) == 10
    with pytest.raises(SystemExit, match="already exists"):
        fewshot.main([f"--workdir={run.path}", f"--task={TASK}", f"--predictions={preds}"])
    with pytest.raises(SystemExit, match="its directory does not exist"):
        fewshot.main([f"--workdir={run.path}", f"--task={TASK}", f"--predictions={tmp_path}/x/p"])


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"query": "a", "choices": ["b"], "gold": 0}', "x"], r"t\.jsonl:2: not valid JSON"),
        (['{"query": "a", "choices": ["b"]}'], r"t\.jsonl:1: missing field 'gold'"),
        (['{"query": "a", "choices": ["b", "c"], "gold": 2}'], r"'gold' = 2 is not an index"),
        (['{"query": "a", "choices": "b", "gold": 0}'], r"'choices' must be a list"),
        (['{"text": "a", "choices": ["b"], "gold": 0}'], r"no 'context' or 'query' field"),
        (['{"query": "a", "choices": ["b"], "gold": 0}'], r"shots=1 but .* only 0 demonstrations"),
    ],
)
def test_bad_task_files_are_one_line_errors(runs, tmp_path, lines, message):
    run, _ = runs("decoder")
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=message) as e:
        fewshot.evaluate(run, str(path), shots=1)
    assert "\n" not in str(e.value)


def test_encoder_models_are_refused(kjv_root):
    cfg = preset_config(FAMILIES["encoder"], str(kjv_root))
    run = types.SimpleNamespace(config=cfg, path="runs/bert")  # refused before any params
    with pytest.raises(ConfigError, match="needs a decoder or encoder-decoder model; runs/bert"):
        scoring.Scorer(run)


# --------------------------------------------------------------------------- lm-eval

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
def lm_cls():
    return lm_eval_adapter.register()


def test_lm_eval_cli_accuracy_equals_our_scorer(runs, tmp_path):
    workdir = runs("decoder")[0].path
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


def test_seq2seq_loglikelihood_equals_our_scorer(runs, lm_cls):
    workdir = runs("encoder_decoder")[0].path
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


def test_loglikelihood_rolling_equals_direct_sums(runs, lm_cls):
    workdir = runs("decoder")[0].path
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


def test_generate_until_equals_greedy_decoding(runs, lm_cls):
    workdir = runs("decoder")[0].path
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


def test_cut_at_and_bad_model_args(lm_cls, runs):
    assert lm_eval_adapter.cut_at("a b\n\nc", ["\n\n"]) == "a b"
    assert lm_eval_adapter.cut_at("a b", ["x", ""]) == "a b"
    with pytest.raises(ConfigError, match="needs path=DIR"):
        lm_cls()
    with pytest.raises(ConfigError, match="batch_size='many' is not an integer"):
        lm_cls(path=runs("decoder")[0].path, batch_size="many")


def test_the_library_imports_without_lm_eval():
    code = (
        "import sys; sys.modules['lm_eval'] = None\n"  # any import of lm_eval now fails
        "import t5x_lite, t5x_lite.fewshot, t5x_lite.lm_eval_adapter, t5x_lite.pipelines\n"
        "print('ok')"
    )
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": ROOT},
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
