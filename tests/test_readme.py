"""README.md cannot rot: every ``bash`` and ``python`` block runs, in order, on a fresh
directory, and the README's figures match what its commands print.

The directory stands in for a fresh clone: ``configs/``, ``gin/``, ``results/`` and
``run_train.py`` link to the repository, ``tests/data/fewshot`` is copied, and
``runs/`` starts empty, so every ``runs/...`` path of the README lands there. Commands
run in forked children of one process (``tests/cli_harness.py``), as the shell would
run them, and each must exit 0.

Commands that train are shrunk by the rules of :data:`SHRINK` (README.md says they
exist), the only edits the test makes; a block or line not run is in :data:`NOT_RUN`
with its reason, and the test fails on any ``bash`` / ``python`` block that is neither
run nor listed. Output examples in the README are fenced as ``text``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil

import pytest
from cli_harness import ROOT, run

README = os.path.join(ROOT, "README.md")
# The smoke shape of every training command: one layer (every run alike, so a
# fine-tuning base still fits its fine-tuning preset), 2 steps of 8 rows of 64 tokens,
# one evaluation batch, a 4-token end-of-run sample, synchronous checkpoints.
TRAIN_SMOKE = {
    "model.num_layers": "1", "train.num_steps": "2", "train.batch_size": "8", "data.seq_len": "64",
    "train.eval_every": "2", "train.eval_batches": "1", "train.log_every": "1",
    "train.sample_tokens": "4", "train.progress_bar": "False",
    "checkpoint.async_save": "False",
}  # fmt: skip
# (pattern on the command as printed, what the test runs instead, why), applied in
# order; a rule whose replacement ends the command (``--print_config``, ``--dry-run``)
# is the last one applied.
SHRINK = [
    (r"^make train$", "python run_train.py", "the Makefile's train target (checked below)"),
    (r"scaling\.flops_budget", "{cmd} --print_config",
     "a planned run: its steps come from the plan, so the test prints the plan it trains"),
    (r"scaling sweep", "{cmd} --dry-run", "the real sweep is 20 runs, 55 minutes"),
    (r"run_train\.py(?!.*--print_config)", "{cmd} {smoke}",
     "training: TRAIN_SMOKE appended (the last flag wins)"),
]  # fmt: skip
# The README's commands run as on the 2-core CPU it describes: one CPU device.
ENV = {"XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
# (pattern on a command or a Python line, why it is not run)
NOT_RUN = [
    (r"^make test$", "the whole suite, which runs this test"),
    (r"^make finetune$", "the Makefile's two commands, which the same block prints next"),
    (r'pipeline\("text2text-generation", "runs/t5"\)', "no README command trains runs/t5"),
    (r"pipeline\(\"(token-classification|question-answering)\", DIR\)",
     "placeholders (DIR, text, q, c): token and span heads have no README run"),
]  # fmt: skip

# (pattern on a Python block, a command of the README's text run before it, why)
BEFORE = [
    (r"forward\.jax_export",
     "python -m t5x_lite.export --workdir=runs/default --format=stablehlo "
     "--out=runs/export_stablehlo",
     "the StableHLO example loads the DIR that the export command in the text writes"),
]  # fmt: skip


@dataclasses.dataclass
class Block:
    lang: str
    line: int
    text: str


def blocks(text: str) -> list[Block]:
    """The fenced blocks of ``text`` (indented ones too), with their first line."""
    out = []
    for m in re.finditer(r"^( *)```(\w*)\n(.*?)^\1```", text, re.M | re.S):
        body = "\n".join(line[len(m.group(1)) :] for line in m.group(3).splitlines())
        out.append(Block(m.group(2), text[: m.start()].count("\n") + 1, body))
    return out


def commands(script: str) -> list[str]:
    """The shell commands of a bash block: continuation lines joined, comments and
    ``[optional flags]`` dropped."""
    joined = re.sub(r"\\\n\s*", " ", script)
    out = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if not words:
            continue
        kept, optional = [], False
        for w in words:
            optional = optional or w.startswith("[")
            if not optional:
                kept.append(w)
            optional = optional and not w.endswith("]")
        out.append(shlex.join(kept))
    return out


def _not_run(text: str) -> str | None:
    return next((why for pat, why in NOT_RUN if re.search(pat, text)), None)


def shrink(cmd: str) -> str:
    """``cmd`` as the test runs it: every matching rule of :data:`SHRINK`, in order."""
    for pattern, replacement, _ in SHRINK:
        if re.search(pattern, cmd):
            prefix = "--gin." if "--gin_file" in cmd else "--config."
            smoke = " ".join(f"{prefix}{k}={v}" for k, v in TRAIN_SMOKE.items())
            cmd = replacement.format(cmd=cmd, smoke=smoke)
    return cmd


def to_case(cmd: str, cwd: str) -> dict:
    """A harness case for one shell command (``cd D && VAR=x python ...`` included)."""
    words = shlex.split(cmd)
    env = dict(ENV)
    while "&&" in words:  # only "cd DIR && ..." occurs
        i = words.index("&&")
        assert words[0] == "cd" and i == 2, cmd
        cwd = os.path.join(cwd, words[1])
        words = words[i + 1 :]
    while re.match(r"^[A-Z_]+=", words[0]):
        k, v = words.pop(0).split("=", 1)
        env[k] = v
    assert words[0] == "python", f"not a python command: {cmd}"
    return {"argv": words[1:], "cwd": cwd, "env": env}


def fresh_clone(root: str) -> None:
    for name in ("configs", "gin", "run_train.py"):
        os.symlink(os.path.join(ROOT, name), os.path.join(root, name))
    shutil.copytree(os.path.join(ROOT, "results"), os.path.join(root, "results"))  # written to
    shutil.copytree(os.path.join(ROOT, "tests", "data", "fewshot"),
                    os.path.join(root, "tests", "data", "fewshot"))  # fmt: skip
    os.makedirs(os.path.join(root, "runs"))


def python_case(block: Block, root: str, index: int) -> dict | None:
    """The Python block as a script (lines of :data:`NOT_RUN` dropped; DIR of the
    StableHLO example is the export the README's command writes)."""
    lines = [ln for ln in block.text.splitlines() if _not_run(ln) is None]
    source = "\n".join(lines)
    if '"DIR/' in source:
        source = source.replace('"DIR/', '"runs/export_stablehlo/')
        source = ("import numpy as np\ninput_ids = np.ones((1, 8), np.int32)\n"
                  "attention_mask = np.ones((1, 8), np.int32)\n") + source  # fmt: skip
    path = os.path.join(root, f"readme_block_{index}.py")
    with open(path, "w") as f:
        f.write(source + "\n")
    return {"argv": [path], "cwd": root, "env": dict(ENV)}


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory):
    """Every block of README.md run in order: ``[(block, command, case, Result)]``."""
    root = str(tmp_path_factory.mktemp("clone"))
    fresh_clone(root)
    with open(README) as f:
        text = f.read()
    plan: list[tuple[Block, str, dict]] = []
    for i, block in enumerate(blocks(text)):
        if block.lang == "python":
            for pattern, cmd, _ in BEFORE:
                if re.search(pattern, block.text):
                    plan.append((block, cmd, to_case(cmd, root)))
            plan.append((block, "python block", python_case(block, root, i)))
        elif block.lang == "bash":
            for cmd in commands(block.text):
                if _not_run(cmd) is None:
                    plan.append((block, cmd, to_case(shrink(cmd), root)))
    # Compiled programs are shared between the commands through JAX's persistent
    # compilation cache, as a user's repeated runs share them.
    cache = {"jax_compilation_cache_dir": os.path.join(root, "jax_cache"),
             "jax_persistent_cache_min_compile_time_secs": 0.0}  # fmt: skip
    for _, _, case in plan:
        case["jax_config"] = cache
    results = run([case for _, _, case in plan], timeout=300)
    return [(b, c, case, r) for (b, c, case), r in zip(plan, results, strict=True)]


def test_every_bash_and_python_block_is_run_or_listed():
    with open(README) as f:
        text = f.read()
    for block in blocks(text):
        assert block.lang in ("bash", "python", "text", ""), block
        if block.lang == "":
            raise AssertionError(f"README.md:{block.line}: fence a block as bash, python or text")
        if block.lang == "bash":
            for cmd in commands(block.text):
                assert _not_run(cmd) is not None or cmd.startswith(("python ", "make ", "cd ")), (
                    f"README.md:{block.line}: {cmd!r} is neither run nor listed in NOT_RUN"
                )


def test_every_readme_command_succeeds(readme_run):
    failed = [
        f"README.md:{b.line}: {c}\n{r.stderr[-1500:]}"
        for b, c, _, r in readme_run
        if r.returncode != 0 or r.timed_out
    ]
    assert not failed, "\n\n".join(failed)


def test_make_train_is_run_train_without_flags():
    with open(os.path.join(ROOT, "Makefile")) as f:
        make = f.read()
    assert re.search(r"^train: .*\n\t\$\(PY\) run_train\.py\n", make, re.M)


def test_the_readme_says_its_commands_are_tested():
    with open(README) as f:
        text = f.read()
    assert "tests/test_readme.py" in text and "SHRINK" in text


# --------------------------------------------------------------------------- claims

BASE_PRESETS = ("gpt2_small", "gpt2_medium", "llama_1b", "bert_base", "roberta_base",
                "albert_base", "t5_small", "t5_base", "t5_v1_1_small")  # fmt: skip


@pytest.fixture(scope="module")
def claims(tmp_path_factory):
    """What the cheap commands behind the README's figures print or write: the scaling
    report refitted from the committed sweep (a copy; no bootstrap) and every base
    preset's smoke shape."""
    outs = []
    for name in ("scaling", "scaling_tuned", "scaling_large"):
        out = str(tmp_path_factory.mktemp("report") / name)
        shutil.copytree(os.path.join(ROOT, "results", name), out,
                        ignore=shutil.ignore_patterns("workdirs"))  # fmt: skip
        os.remove(os.path.join(out, "report.md"))
        outs.append(out)
    cases = [
        *(["-m", "t5x_lite.scaling", "report", f"--out={out}", "--bootstrap=0"] for out in outs),
        *(["run_train.py", f"--config={name}:smoke", "--print_config"] for name in BASE_PRESETS),
    ]
    results = run([{"argv": argv, "cwd": ROOT, "env": dict(ENV)} for argv in cases], timeout=300)
    for argv, r in zip(cases, results, strict=True):
        assert r.returncode == 0, (argv, r.stderr[-1500:])
    reports = []
    for out in outs:
        with open(os.path.join(out, "report.md")) as f:
            reports.append(f.read())
    return reports[0], results[3:], reports[1], outs[1], reports[2], outs[2]


def _row(text: str, label: str) -> list[str]:
    line = next(ln for ln in text.splitlines() if ln.startswith(f"| {label}"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_the_scaling_figures_are_what_the_report_computes(claims):
    """The README's a and tokens per parameter (and the budget they hold at) are the
    report's, refitted now from the committed runs."""
    with open(README) as f:
        text = f.read()
    report = claims[0]
    budget = float(re.search(r"D/N at C = ([\d.e+]+):", report).group(1))
    assert float(re.search(r"tokens per parameter at C = ([\d.e+]+)", text).group(1)) == budget
    for label in ("Approach 1", "Approach 3"):
        got, said = _row(report, label), _row(text, label)
        a, tokens = float(got[1]), float(got[-1])
        assert float(said[1].split()[0]) == round(a, 2), (label, said, got)
        assert float(said[2]) == round(tokens), (label, said, got)


def test_the_tuned_sweep_figures_are_what_its_report_computes(claims):
    """The README's table of the tuned sweep against the shared-rate one: Approach 1's a
    and tokens per parameter, Approach 3's a, the lowest loss at the largest budget and
    the count of best rates at the range's edge, refitted now from the committed runs."""
    import csv

    from t5x_lite.scaling import tuning

    with open(README) as f:
        text = f.read()
    report, tuned, out = claims[0], claims[2], claims[3]
    table = text[text.index("| fit on total N | one rate (3e-3)") :]

    def said(label: str) -> list[float]:
        return [float(c.split()[0]) for c in _row(table, label)[1:]]

    for rep, source in ((report, 0), (tuned, 1)):
        a1, a3 = float(_row(rep, "Approach 1")[1]), float(_row(rep, "Approach 3")[1])
        assert said("Approach 1: a")[source] == pytest.approx(a1, abs=0.0051)
        assert said("Approach 3: a")[source] == pytest.approx(a3, abs=0.0051)
    tokens = float(_row(tuned, "Approach 1")[-1])
    assert said("Approach 1: tokens per parameter")[1] == round(tokens, 1)
    shared = float(_row(report, "Approach 1")[-1])
    assert said("Approach 1: tokens per parameter")[0] == round(shared)
    with open(os.path.join(out, "runs.csv")) as f:
        rows = [dict(r, final_eval_loss=float(r["final_eval_loss"])) for r in csv.DictReader(f)]
    points = tuning.select_points(rows)
    top = max(float(p["budget"]) for p in points)
    best = min(p["final_eval_loss"] for p in points if float(p["budget"]) == top)
    assert said("lowest eval loss at 1.9e12")[1] == round(best, 3)
    edge = sum(p["lr_at_edge"] for p in points)
    assert f"At {edge} of {len(points)} points the best rate is the largest tried" in text


def test_the_large_sweep_figures_are_what_its_report_computes(claims):
    """The README's table of the sweep to 2e13 (a and tokens per parameter of Approaches
    1-2, Approach 3's a and E), its lowest loss at 2e13, what repeating the corpus costs,
    the held-out check and the rule against the search: refitted now from the committed
    runs of results/scaling_large and results/scaling_tuned."""
    import numpy as np

    from t5x_lite.scaling import tuning
    from t5x_lite.scaling.report import holdout_largest
    from t5x_lite.scaling.sweep import read_rows

    with open(README) as f:
        text = f.read()
    section = text[text.index("### A decade larger: to 2e13 FLOPs") :]
    section = section[: section.index("\n#")]
    report, out = claims[4], claims[5]
    budget = float(re.search(r"D/N at C = ([\d.e+]+):", report).group(1))
    assert f"tokens per parameter at C = {budget:.2g}".replace("e+", "e") in section
    with open(os.path.join(ROOT, "results", "scaling_large", "report.md")) as f:
        committed = f.read()  # with its 200 bootstrap resamples, which the refit skips
    for label in ("Approach 1", "Approach 2"):
        got, said = _row(report, label), _row(section, label)
        assert said[1].split()[0] == f"{float(got[1]):.2f}", (label, said, got)
        assert said[2] == got[-1], (label, said, got)
        assert _row(committed, label)[1:3] == got[1:3], (label, got)  # the same fit
        lo, hi = (float(x) for x in _row(committed, label)[3].strip("[]").split(","))
        assert said[1].split("(95%: ")[1] == f"{lo:.2f}–{hi:.2f})", (label, said)
    got, said = _row(report, "Approach 3"), _row(section, "Approach 3")
    e = float(_row(report, "0.000")[0].split()[0])  # E of the total-N fit's table
    assert said[1] == f"{float(got[1]):.2f}, E = {e:.0f}", (said, got)
    rows = tuning.select_points(read_rows(os.path.join(out, "runs.csv")))
    top = [r for r in rows if float(r["budget"]) == max(float(r["budget"]) for r in rows)]
    assert f"The lowest loss at 2e13 is {min(r['final_eval_loss'] for r in top):.3f}." in section
    over = [r for r in rows if int(r["n_tokens"]) > int(r["corpus_train_tokens"])]
    epochs = max(int(r["n_tokens"]) / int(r["corpus_train_tokens"]) for r in rows)
    assert f"the {len(over)} smallest models" in section and f"up to {epochs:.2f} epochs" in section
    cost = re.search(r"prices at ([\d.]+) nats", report).group(1)
    assert f"an estimated\n{cost} nats" in section
    held = holdout_largest(rows, bootstrap=0)
    assert f"missed by {np.abs(held.errors).mean():.3f} nats on average" in section
    n_pred, n_meas = held.predicted_opt["n_params"], held.measured_best_n
    assert f"({n_pred / 1e3:.0f}k predicted, {n_meas / 1e3:.0f}k\nmeasured)" in section
    assert f"E = {held.fit.E:.2f}, with it E = 0" in section
    tuned = tuning.select_points(
        read_rows(os.path.join(ROOT, "results", "scaling_tuned", "runs.csv"))
    )

    def key(r):
        return round(float(r["budget"]), -8), int(r["num_layers"]), int(r["d_model"])

    searched = {key(r): r["final_eval_loss"] for r in tuned}
    diff = [r["final_eval_loss"] - searched[key(r)] for r in rows if key(r) in searched]
    assert (
        f"{np.mean(diff):.2f} nats against the\n4-rate search at the {len(diff)} shared" in section
    )


def test_every_base_preset_resolves_to_a_shape_that_fits_this_machine(claims):
    import json

    import jax

    from t5x_lite import config as C
    from t5x_lite import preflight

    for _name, r in zip(BASE_PRESETS, claims[1], strict=True):
        cfg = C.from_dict(json.loads(r.stdout))
        shape = (1, 1, 1)
        preflight.check_state_memory(cfg, jax.devices("cpu")[:1], shape)  # its lower bound fits
