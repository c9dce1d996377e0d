"""The bad-input catalogue: wrong invocations of every command line, each one line on
stderr, no traceback, a non-zero status, within seconds, and an existing workdir left
byte for byte as it was.

Every row of :data:`CASES` is ``(id, argv, expected substring of the error line)``;
``{t}`` in an argument is the shared scratch directory that :func:`scratch` fills with
the files the rows need (a workdir of another model, a read-only directory, an HF
directory of another shape, task files with a missing column, a Parquet file without
the text column, a fit file with a negative parameter, ...). The rows run in forked
children of one process that imported the stack once (``tests/cli_harness.py``), so
30-odd command lines cost seconds, not a fresh interpreter each; the rows of
:data:`FRESH` run as real ``python`` processes too, which checks the harness against
the interpreter it imitates.

A row may be run with file permissions binding even for root (``obey_permissions``: a
workdir without write permission means nothing to root otherwise) and with extra
environment.

The error line is the last non-empty line of stderr; anything before it must be a log
line of the libraries (absl/TFDS ``W1202 ...`` lines, Python ``warnings``), never a
Python traceback.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
from cli_harness import ROOT, Result, run

SECONDS = 20  # "within seconds": a loaded 2-core machine, imports already paid


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TINY = "--config=gpt2_tiny"
FT = "--config=configs/finetune/kjv_bigram_shift_gpt2.py"
# (id, argv, expected substring of the one-line error[, options])
CASES: list[tuple] = [
    # ---- config
    ("unknown-preset", ["run_train.py", "--config=gpt2_tinny", "--workdir={t}/user"],
     "unknown preset 'gpt2_tinny' (did you mean gpt2_tiny?)"),
    ("unknown-variant", ["run_train.py", "--config=gpt2_tiny:big", "--workdir={t}/user"],
     "unknown preset variant 'big' (known: bf16, cpu, fsdp, remat, smoke, tensor)"),
    ("misspelt-field", ["run_train.py", TINY, "--config.model.d_modle=32", "--workdir={t}/user"],
     "unknown config field model.d_modle (did you mean model.d_model?)"),
    ("gin-misspelt-field", ["run_train.py", "--gin_file=gin/gpt2_tiny.gin",
                            "--gin.train.num_stepz=3", "--workdir={t}/user"], "train.num_stepz"),
    ("config-and-gin", ["run_train.py", TINY, "--gin_file=gin/gpt2_tiny.gin",
                        "--workdir={t}/user"], "give either --config or --gin_file, not both"),
    ("batch-size-0", ["run_train.py", TINY, "--config.train.batch_size=0", "--workdir={t}/user"],
     "train.batch_size=0"),
    ("learning-rate-0", ["run_train.py", TINY, "--config.optimizer.learning_rate=0",
                         "--workdir={t}/user"], "optimizer.learning_rate=0"),
    ("learning-rate-negative", ["run_train.py", TINY, "--config.optimizer.learning_rate=-1e-3",
                                "--workdir={t}/user"], "optimizer.learning_rate=-0.001"),
    ("seq-beyond-context", ["run_train.py", TINY, "--config.data.seq_len=256",
                            "--workdir={t}/user"],
     "data.seq_len=256 exceeds model.max_seq_len=128"),
    ("objective-of-another-family", ["run_train.py", TINY, "--config.data.objective=mlm",
                                     "--workdir={t}/user"],
     "data.objective='mlm' does not train model.family='decoder'"),
    ("nsp-without-sentence-head", ["run_train.py", "--config=roberta_tiny",
                                   "--config.data.sentence_objective=nsp", "--workdir={t}/new_run"],
     "data.sentence_objective='nsp' needs model.sentence_head=True"),
    ("sentence-head-without-nsp", ["run_train.py", "--config=bert_tiny", "--workdir={t}/new_run",
                                   "--config.data.sentence_objective=none"],
     "model.sentence_head=True needs data.sentence_objective='nsp' or 'sop'"),
    ("targets-too-short", ["run_train.py", "--config=t5_tiny", "--config.data.target_len=10",
                           "--workdir={t}/new_run"],
     "data.target_len=10 is below the 29 targets that span corruption makes"),
    ("cudnn-on-cpu", ["run_train.py", TINY, "--config.model.attention=cudnn",
                      "--config.model.dtype=bfloat16", "--workdir={t}/new_run"],
     "model.attention='cudnn' needs GPU devices; this run has cpu"),
    ("splash-on-cpu", ["run_train.py", TINY, "--config.model.attention=splash",
                       "--workdir={t}/new_run"],
     "model.attention='splash' needs TPU devices; this run has cpu"),
    ("stray-argument", ["run_train.py", TINY, "extra", "--workdir={t}/user"],
     "unexpected arguments ['extra']"),
    # ---- mesh and processes
    ("mesh-not-dividing-devices", ["run_train.py", TINY, "--config.mesh.data=3",
                                   "--workdir={t}/user"],
     "data*fsdp*tensor = 3*1*1 = 3 differs from the 8 available devices"),
    ("mesh-larger-than-host", ["run_train.py", TINY, "--config.mesh.data=16", "--workdir={t}/user"],
     "--host_devices=16 splits it into 16 devices"),
    ("batch-not-dividing-data-axis", ["run_train.py", TINY, "--config.mesh.data=8",
                                      "--config.train.batch_size=12", "--workdir={t}/user"],
     "train.batch_size=12 is not divisible by mesh data*fsdp = 8*1 = 8"),
    ("process-count-not-dividing-mesh", ["run_train.py", TINY, "--config.mesh.dcn_data=2",
                                         "--workdir={t}/user"],
     "mesh.dcn_data*dcn_fsdp = 2*1 = 2 differs from the 1 processes holding the devices"),
    ("process-id-out-of-range", ["run_train.py", TINY, "--num_processes=3", "--process_id=3",
                                 "--coordinator_address=127.0.0.1:1", "--init_timeout=2",
                                 "--workdir={t}/user"], "--process_id=3"),
    ("coordinator-never-answers", ["run_train.py", TINY, "--coordinator_address=127.0.0.1:{port}",
                                   "--num_processes=2", "--process_id=1", "--init_timeout=2",
                                   "--workdir={t}/user"], "no coordinator answered at 127.0.0.1:"),
    ("peer-never-starts", ["run_train.py", TINY, "--coordinator_address=127.0.0.1:{port2}",
                           "--num_processes=2", "--process_id=0", "--init_timeout=2",
                           "--workdir={t}/user"],
     "process 0 of 2: the other processes did not join the distributed runtime at 127.0.0.1:"),
    # ---- workdirs and checkpoints
    ("resume-another-model", ["run_train.py", TINY, "--workdir={t}/other"],
     "workdir {t}/other holds a model with model.d_model=32; the requested config has "
     "model.d_model=64"),
    ("init-from-another-model", ["run_train.py", FT, "--config.train.init_from={t}/hf_other",
                                 "--workdir={t}/user"], "the base has model."),
    ("init-from-missing", ["run_train.py", FT, "--config.train.init_from={t}/nothing_here",
                           "--workdir={t}/user"], "train.init_from='{t}/nothing_here'"),
    ("workdir-not-writable", ["run_train.py", TINY, "--workdir={t}/readonly/run"],
     "--workdir={t}/readonly/run: {t}/readonly is not writable", {"obey_permissions": True}),
    ("data-dir-not-writable", ["run_train.py", TINY, "--config.data.data_dir={t}/readonly/data",
                               "--workdir={t}/open/run"],
     "Permission denied: {t}/readonly/data", {"obey_permissions": True}),
    ("out-of-memory-shape", ["run_train.py", TINY, "--config.model.d_ff=2147483648",
                             "--workdir={t}/user"],
     "out of memory: the train state needs at least "),
    # ---- data and tokenizer
    ("corpus-missing", ["run_train.py", TINY, "--config.data.corpus=/nonexistent/corpus",
                        "--workdir={t}/user"], "data.corpus='/nonexistent/corpus' is neither"),
    ("corpus-glob-matches-nothing", ["-m", "t5x_lite.data", TINY,
                                     "--config.data.corpus={t}/empty/*.jsonl", "--stats"],
     "{t}/empty/*.jsonl"),
    ("parquet-without-text-column", ["-m", "t5x_lite.data", TINY,
                                     "--config.data.corpus={t}/parquet",
                                     "--config.data.data_dir={d}", "--prepare"],
     "{t}/parquet/part-0.parquet has no column data.text_key='text' (columns: body)"),
    ("tokenizer-missing", ["run_train.py", TINY, "--config.data.tokenizer={t}/no.model",
                           "--workdir={t}/user"], "{t}/no.model"),
    ("tokenizer-larger-than-model", ["run_train.py", TINY,
                                     "--config.data.tokenizer_vocab_size=4096",
                                     "--workdir={t}/user"],
     "data.tokenizer_vocab_size=4096 exceeds model.vocab_size=2048"),
    ("data-cli-batch-0", ["-m", "t5x_lite.data", TINY, "--config.train.batch_size=0", "--stats"],
     "train.batch_size=0"),
    ("data-cli-unknown-preset", ["-m", "t5x_lite.data", "--config=bert_tinyy", "--stats"],
     "did you mean bert_tiny?"),
    # ---- fine-tuning task files
    ("task-file-missing-column", ["run_train.py", FT, "--config.task.train_file={t}/nolabel.jsonl",
                                  "--config.task.validation_file={t}/nolabel.jsonl",
                                  "--config.data.data_dir={d}", "--workdir={t}/user"],
     "{t}/nolabel.jsonl line 1: missing field 'label' (task.label_field)"),
    ("task-file-unknown-label", ["run_train.py", FT, "--config.task.train_file={t}/badlabel.jsonl",
                                 "--config.task.validation_file={t}/badlabel.jsonl",
                                 "--config.data.data_dir={d}", "--workdir={t}/user"],
     "{t}/badlabel.jsonl line 1: label 'maybe' is not one of task.labels (original, shifted)"),
    ("kjv-tasks-unknown-task", ["-m", "t5x_lite.data.kjv_tasks", "build", "--task=sentiment",
                                "--out={t}/user/tasks"],
     "python -m t5x_lite.data.kjv_tasks build: argument --task: invalid choice: 'sentiment'"),
    ("kjv-tasks-baseline-missing", ["-m", "t5x_lite.data.kjv_tasks", "baseline",
                                    "--dir={t}/nothing_here"],
     "--dir={t}/nothing_here holds no train.jsonl"),
    # ---- export, generate, few-shot, lm-eval
    ("export-unknown-format", ["-m", "t5x_lite.export", "--workdir={t}/other", "--format=onnx",
                               "--out={t}/new_out"], "--format='onnx' is not one of hf, stablehlo"),
    ("export-into-non-empty", ["-m", "t5x_lite.export", "--workdir={t}/other", "--format=hf",
                               "--out={t}/user"], "already holds files"),
    ("export-without-out", ["-m", "t5x_lite.export", "--workdir={t}/other", "--format=hf"],
     "python -m t5x_lite.export: the following arguments are required: --out (see --help)"),
    ("export-missing-workdir", ["-m", "t5x_lite.export", "--workdir={t}/nothing_here",
                                "--format=hf", "--out={t}/new_out"], "does not exist"),
    ("generate-prompt-beyond-context", ["-m", "t5x_lite.generate", "--workdir={t}/other",
                                        "--prompt=" + "In the beginning " * 100],
     "tokens; the model's context is 128"),
    ("generate-no-run", ["-m", "t5x_lite.generate", "--workdir={t}/user", "--prompt=Hi"],
     "holds no run"),
    ("fewshot-missing-task-file", ["-m", "t5x_lite.fewshot", "--workdir={t}/other",
                                   "--task={t}/nothing.jsonl"],
     "task file {t}/nothing.jsonl does not exist"),
    ("fewshot-bad-task-line", ["-m", "t5x_lite.fewshot", "--workdir={t}/other",
                               "--task={t}/nolabel.jsonl"],
     "{t}/nolabel.jsonl:1: no 'context' or 'query' field"),
    ("lm-eval-without-path", ["-m", "t5x_lite.lm_eval_adapter", "--model_args", "batch=2",
                              "--tasks", "kjv_mc"], "model_args needs path=DIR"),
    ("lm-eval-missing-path", ["-m", "t5x_lite.lm_eval_adapter", "--model_args",
                              "path={t}/nothing_here", "--tasks", "kjv_mc"],
     "model_args path={t}/nothing_here is not a directory"),
    # ---- scaling
    ("fit-non-positive", ["-m", "t5x_lite.scaling", "plan", "--budget", "1e18",
                          "--fit", "{t}/fit_negative.json"], "A=-1.0 must be a positive number"),
    ("fit-non-positive-run-train", ["run_train.py", TINY, "--config.scaling.flops_budget=1e12",
                                    "--config.scaling.fit={t}/fit_negative.json",
                                    "--workdir={t}/user"], "A=-1.0 must be a positive number"),
    ("holdout-fewer-than-2-budgets", ["-m", "t5x_lite.scaling", "report", "--out={t}/sweep2",
                                      "--holdout-largest"], "fewer than the 2 a fit needs"),
    ("plan-non-positive-budget", ["-m", "t5x_lite.scaling", "plan", "--budget", "-1"], "budget"),
    ("fit-csv-missing-column", ["-m", "t5x_lite.scaling", "fit", "--csv={t}/nolabel.jsonl"],
     "has no column"),
    ("sweep-missing-config", ["-m", "t5x_lite.scaling", "sweep", "--config={t}/no_config.py",
                              "--out={t}/user/sweep"], "{t}/no_config.py"),
    # ---- benchmark
    ("bench-batch-0", ["-m", "t5x_lite.bench", "--config=configs/gpt2_tiny.py", "--batch=0"],
     "batch"),
    ("bench-seq-beyond-context", ["-m", "t5x_lite.bench", "--config=configs/gpt2_tiny.py",
                                  "--seq=4096"], "4096"),
]  # fmt: skip
# Rows also run as real, fresh interpreters (the harness must agree with them).
FRESH = ("mesh-not-dividing-devices", "export-into-non-empty", "coordinator-never-answers",
         "peer-never-starts")

# Lines allowed before the error line: absl / TFDS log lines (both of absl's formats)
# and Python warnings (``FILE:LINE: XWarning: ...``, then their indented source line).
LOG_LINE = re.compile(r"^([IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ \S+:\d+\] "
                      r"|(DEBUG|INFO|WARNING|ERROR):[\w.]+:)")  # fmt: skip
WARNING_LINE = re.compile(r"^\S+:\d+: \w*Warning: ")


def _write_jsonl(path: str, rows: list[dict]) -> None:
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def _hf_gpt2(path: str, d: int = 32, layers: int = 1, vocab: int = 2048, ctx: int = 128) -> None:
    """A GPT-2 Hugging Face directory of another width (random weights, numpy only)."""
    from safetensors.numpy import save_file

    os.makedirs(path)
    rng = np.random.default_rng(0)
    t = {"transformer.wte.weight": (vocab, d), "transformer.wpe.weight": (ctx, d),
         "transformer.ln_f.weight": (d,), "transformer.ln_f.bias": (d,)}  # fmt: skip
    for i in range(layers):
        p = f"transformer.h.{i}."
        t.update({p + "ln_1.weight": (d,), p + "ln_1.bias": (d,), p + "ln_2.weight": (d,),
                  p + "ln_2.bias": (d,), p + "attn.c_attn.weight": (d, 3 * d),
                  p + "attn.c_attn.bias": (3 * d,), p + "attn.c_proj.weight": (d, d),
                  p + "attn.c_proj.bias": (d,), p + "mlp.c_fc.weight": (d, 4 * d),
                  p + "mlp.c_fc.bias": (4 * d,), p + "mlp.c_proj.weight": (4 * d, d),
                  p + "mlp.c_proj.bias": (d,)})  # fmt: skip
    save_file({k: rng.normal(0, 0.02, s).astype(np.float32) for k, s in t.items()},
              os.path.join(path, "model.safetensors"))  # fmt: skip
    hf = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_embd": d,
          "n_layer": layers, "n_head": 4, "n_positions": ctx, "vocab_size": vocab,
          "n_inner": None, "activation_function": "gelu_new",
          "layer_norm_epsilon": 1e-5}  # fmt: skip
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf, f)


def build_scratch(t: str) -> None:
    """The files the rows of :data:`CASES` refer to as ``{t}/...``."""
    from t5x_lite import config as C
    from t5x_lite import presets

    os.makedirs(f"{t}/user")  # an existing workdir with a user's file in it
    with open(f"{t}/user/notes.txt", "w") as f:
        f.write("mine\n")
    other = presets.load_typed("gpt2_tiny")  # a run of another width: config.json only
    values = C.to_dict(other)
    values["model"]["d_model"] = 32
    os.makedirs(f"{t}/other")
    with open(f"{t}/other/config.json", "w") as f:
        json.dump(values, f, indent=2)
    from t5x_lite.data.tokenizer import train_sentencepiece

    with open(os.path.join(ROOT, "README.md")) as f:  # any English text will do
        text = [line for line in f.read().splitlines() if line.strip()]
    train_sentencepiece(text, 512, "bpe", f"{t}/other/tokenizer.model", "README.md")
    _hf_gpt2(f"{t}/hf_other")
    os.makedirs(f"{t}/readonly")
    os.chmod(f"{t}/readonly", 0o555)
    os.makedirs(f"{t}/open")
    os.chmod(f"{t}/open", 0o777)
    os.makedirs(f"{t}/empty")
    os.makedirs(f"{t}/parquet")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["In the beginning.", "And God said."]}),
                   f"{t}/parquet/part-0.parquet")  # fmt: skip
    _write_jsonl(f"{t}/nolabel.jsonl", [{"text": "In the beginning."}, {"text": "Jesus wept."}])
    _write_jsonl(f"{t}/badlabel.jsonl", [{"text": "In the beginning.", "label": "maybe"},
                                         {"text": "Jesus wept.", "label": 0}])  # fmt: skip
    with open(f"{t}/fit_negative.json", "w") as f:
        json.dump({"E": 1.7, "A": -1.0, "B": 410.0, "alpha": 0.34, "beta": 0.28}, f)
    os.makedirs(f"{t}/sweep2")
    with open(os.path.join(ROOT, "results", "scaling", "runs.csv")) as f:
        lines = f.read().splitlines()
    budgets = sorted({float(line.split(",")[1]) for line in lines[1:]})[:2]
    keep = [lines[0]] + [ln for ln in lines[1:] if float(ln.split(",")[1]) in budgets]
    with open(f"{t}/sweep2/runs.csv", "w") as f:
        f.write("\n".join(keep) + "\n")


def _expand(value: str, t: str, port: int) -> str:
    """``{t}``: the watched scratch tree; ``{d}``: a data cache outside it; ``{port}``
    and ``{port2}``: two free ports (two rows wait on a coordinator at once, and must
    not find each other)."""
    value = value.replace("{t}", t).replace("{d}", t + "-data").replace("{port}", str(port))
    if "{port2}" in value:
        port2 = _free_port()
        while port2 == port:
            port2 = _free_port()
        value = value.replace("{port2}", str(port2))
    return value


def _case(row: tuple, t: str, port: int) -> dict:
    _, argv, _, *opts = row
    opts = opts[0] if opts else {}
    case = {"argv": [_expand(a, t, port) for a in argv], "cwd": ROOT, "env": {}, "watch": [t]}
    if opts.get("obey_permissions"):
        case["obey_permissions"] = True
    return case


@pytest.fixture(scope="module")
def catalogue():
    """``(scratch dir, {id: Result})``: every row run, each watching the scratch tree.

    The scratch directory is world-readable (not under pytest's private tmp root) so
    that the unprivileged row can reach it."""
    t = tempfile.mkdtemp(prefix="t5x_lite_catalogue_")
    os.makedirs(t + "-data")
    try:
        os.chmod(t, 0o755)
        build_scratch(t)
        port = _free_port()
        results = run([_case(row, t, port) for row in CASES], timeout=60)
        yield t, dict(zip([row[0] for row in CASES], results, strict=True))
    finally:
        os.chmod(f"{t}/readonly", 0o755)
        shutil.rmtree(t)
        shutil.rmtree(t + "-data")


def assert_one_line_error(r: Result, expected: str) -> None:
    assert not r.timed_out, f"still running after 60 s:\n{r.stderr[-2000:]}"
    assert r.returncode != 0, (r.stdout[-2000:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines, "no error on stderr"
    last = lines[-1]
    assert last.startswith("error: "), r.stderr[-2000:]
    assert expected in last, r.stderr[-2000:]
    previous = ""
    for line in lines[:-1]:
        source = WARNING_LINE.match(previous) and line.startswith("  ")
        assert LOG_LINE.match(line) or WARNING_LINE.match(line) or source, (
            f"not a log line before the error: {line!r}"
        )
        previous = line
    assert r.seconds < SECONDS, f"{r.seconds:.1f} s"


def test_the_catalogue_has_at_least_25_rows_over_every_command():
    assert len(CASES) >= 25 and len({row[0] for row in CASES}) == len(CASES)
    commands = {row[1][0] if row[1][0] != "-m" else row[1][1] for row in CASES}
    assert commands == {"run_train.py", "t5x_lite.data", "t5x_lite.data.kjv_tasks",
                        "t5x_lite.export", "t5x_lite.generate", "t5x_lite.fewshot",
                        "t5x_lite.lm_eval_adapter", "t5x_lite.scaling",
                        "t5x_lite.bench"}  # fmt: skip


@pytest.mark.parametrize("row", CASES, ids=[row[0] for row in CASES])
def test_bad_input_is_one_line_and_changes_nothing(catalogue, row):
    t, results = catalogue
    assert_one_line_error(results[row[0]], _expand(row[2], t, 0))
    assert results[row[0]].changed == []  # it wrote nothing anywhere in the scratch tree


@pytest.mark.parametrize("name", FRESH)
def test_a_fresh_interpreter_agrees_with_the_harness(catalogue, name):
    t, results = catalogue
    row = next(r for r in CASES if r[0] == name)
    port = _free_port()
    case = _case(row, t, port)
    argv = case["argv"]
    env = {**os.environ, "PYTHONPATH": ROOT}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    fresh = Result(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - t0, False)
    assert_one_line_error(fresh, _expand(row[2], t, port))
    last = [ln for ln in fresh.stderr.splitlines() if ln.strip()][-1]
    harness = [ln for ln in results[name].stderr.splitlines() if ln.strip()][-1]
    assert re.sub(r":\d+", ":P", last) == re.sub(r":\d+", ":P", harness)
    assert fresh.returncode == results[name].returncode


# The library's entry points take bad input the same way: a one-line ConfigError
# (id, call, expected substring), raised before any run is loaded.
API_CASES = [
    ("pipeline-unknown-task", lambda t: __import__("t5x_lite").pipeline("summarise", t + "/other"),
     "unknown pipeline task 'summarise'; tasks: fill-mask, question-answering"),
    ("load-missing-path", lambda t: __import__("t5x_lite").load(t + "/nothing_here"),
     "{t}/nothing_here"),
    ("load-unsaved-step", lambda t: __import__("t5x_lite").load(t + "/other", 7),
     "{t}/other"),
]  # fmt: skip


@pytest.mark.parametrize("row", API_CASES, ids=[row[0] for row in API_CASES])
def test_the_library_refuses_bad_input_in_one_line(catalogue, row):
    from t5x_lite.config import ConfigError

    t, _ = catalogue
    with pytest.raises(ConfigError) as err:
        row[1](t)
    message = str(err.value)
    assert "\n" not in message and _expand(row[2], t, 0) in message, message
