"""python -m t5x_lite.export on tiny trained runs of each family.

HF: transformers (torch, CPU) loads the files and reproduces our logits within 1e-4,
AutoTokenizer encodes kjv text to our ids, and greedy ``generate`` equals our greedy
loop. StableHLO: a fresh process that imports only jax and numpy deserializes the
artifact and reproduces the in-process logits within 1e-5 at two batch sizes and
lengths. Bad input: one-line errors that write nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
import transformers
from trained_runs import FAMILIES, KJV, trained

import t5x_lite
from t5x_lite import convert, export
from t5x_lite.config import ConfigError
from t5x_lite.data import corpora
from t5x_lite.hf import tokenizer as hf_tokenizer

AUTO = {
    "decoder": transformers.AutoModelForCausalLM,
    "encoder": transformers.AutoModelForMaskedLM,
    "encoder_decoder": transformers.AutoModelForSeq2SeqLM,
}


@pytest.fixture(scope="module")
def runs(kjv_root, tmp_path_factory):
    """``runs(family) -> (workdir, Loaded)``, trained once per test process."""
    cache: dict = {}

    def get(family: str):
        if family not in cache:
            workdir = trained(FAMILIES[family], str(kjv_root), tmp_path_factory)
            cache[family] = workdir, t5x_lite.load(workdir)
        return cache[family]

    return get


@pytest.fixture(scope="module")
def hf_dirs(runs, tmp_path_factory):
    """``hf_dirs(family)``: the run exported with ``--format=hf`` (once per module)."""
    cache: dict = {}

    def get(family: str) -> str:
        if family not in cache:
            out = str(tmp_path_factory.mktemp(f"hf-{family}") / "out")
            export.export(runs(family)[0], "hf", out)
            cache[family] = out
        return cache[family]

    return get


def batch_of(run, texts=KJV, length: int = 9) -> dict[str, np.ndarray]:
    """Rows of ``length`` kjv tokens with every key the family's forward reads."""
    ids = np.asarray([run.tokenizer.encode(t)[:length] for t in texts], np.int32)
    assert ids.ndim == 2
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    cfg = run.config.model
    if cfg.family == "encoder" and cfg.type_vocab_size:
        batch["token_type_ids"] = np.zeros_like(ids)
    if cfg.family == "encoder_decoder":  # teacher forcing from pad, T5's decoder start
        start = np.zeros_like(ids[:, :1])
        batch["decoder_input_ids"] = np.concatenate([start, ids[:, :-1]], 1)
        batch["decoder_attention_mask"] = np.ones_like(ids)
    return batch


def hf_logits(model: torch.nn.Module, batch: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v.astype(np.int64)) for k, v in batch.items()})
    return out.logits.numpy()


# --------------------------------------------------------------------------- hf


@pytest.mark.parametrize("family", list(FAMILIES))
def test_hf_export_reproduces_our_logits(family, runs, hf_dirs):
    _, run = runs(family)
    out = hf_dirs(family)
    assert set(os.listdir(out)) == {
        "config.json", "model.safetensors", "generation_config.json", *hf_tokenizer.FILES
    }  # fmt: skip
    model = AUTO[family].from_pretrained(out, attn_implementation="eager").eval()
    batch = batch_of(run)
    ours, theirs = run.logits(batch), hf_logits(model, batch)
    assert np.abs(ours).max() > 0.1
    np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)
    with open(os.path.join(out, "config.json")) as f:
        hf_config = json.load(f)
    assert hf_config["eos_token_id"] == run.tokenizer.eos_id
    assert hf_config["pad_token_id"] == run.tokenizer.pad_id


def test_exported_tokenizer_encodes_kjv_to_our_ids(runs, hf_dirs):
    _, run = runs("decoder")
    tok = transformers.AutoTokenizer.from_pretrained(hf_dirs("decoder"))
    chapters = corpora.kjv_chapters()
    verses = [v for _, vs in chapters for v in vs][::20]
    texts = [
        *KJV, *verses, "\n".join(chapters[0][1]), "", " ", "a  b\t\tc\n\nd ",
        "digits 1234567890", "bytes: 😀 ünïcode 中文", "</s> and <pad> are text here",
    ]  # fmt: skip
    assert len(texts) > 1500
    for text in texts:
        assert tok(text).input_ids == run.tokenizer.encode(text), repr(text)
    # No BOS or EOS is added; the special ids are ours.
    assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id) == (
        run.tokenizer.pad_id, run.tokenizer.eos_id, run.tokenizer.bos_id,
    )  # fmt: skip
    ids = run.tokenizer.encode(KJV[0])
    assert tok.decode(ids) == run.tokenizer.decode(ids) == KJV[0]


def greedy(run, params, prompt: list[int], num_tokens: int) -> list[int]:
    """Our greedy continuation: argmax of our logits over the whole sequence each step."""
    run = dataclasses.replace(run, params=params)
    ids = list(prompt)
    for _ in range(num_tokens):
        logits = run.logits({"input_ids": np.asarray([ids], np.int32)})
        nxt = int(np.argmax(logits[0, -1]))
        if nxt == run.tokenizer.eos_id:
            break
        ids.append(nxt)
    return ids[len(prompt) :]


def test_hf_greedy_generate_equals_our_greedy_tokens(runs, hf_dirs, tmp_path):
    _, run = runs("decoder")
    prompt = run.tokenizer.encode(KJV[1])[:6]
    n = 12

    def hf_greedy(path: str) -> list[int]:
        model = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
        ids = torch.tensor([prompt])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=n)  # fmt: skip
        return out[0, len(prompt) :].tolist()

    assert hf_greedy(hf_dirs("decoder")) == greedy(run, run.params, prompt, n)
    # Four steps of training repeat a few tokens; jittered weights make a greedy path
    # that moves, so positions and the KV cache of generate are exercised too.
    leaves, tree = jax.tree_util.tree_flatten(run.params)
    rng = np.random.default_rng(0)
    jittered = tree.unflatten([np.asarray(x) + rng.normal(0, 0.3, x.shape) for x in leaves])
    jittered = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), jittered)
    convert.export_hf(run.config.model, jittered, str(tmp_path / "jittered"))
    ours = greedy(run, jittered, prompt, n)
    assert len(set(ours)) >= 4, ours
    assert hf_greedy(str(tmp_path / "jittered")) == ours


# --------------------------------------------------------------------------- stablehlo

FRESH = """
import json, sys
import jax, numpy as np
out, inputs = sys.argv[1], np.load(sys.argv[2])
exp = jax.export.deserialize(open(out + "/forward.jax_export", "rb").read())
meta, w = json.load(open(out + "/export.json")), np.load(out + "/params.npz")
params = [w[n] for n in meta["params"]]
for shape in ("full", "small"):
    args = [inputs[f"{shape}/{n}"] for n in meta["inputs"]]
    np.save(f"{sys.argv[3]}/{shape}.npy", np.asarray(exp.call(params, *args)))
assert not any(m.startswith("t5x_lite") for m in sys.modules), "t5x_lite was imported"
"""


@pytest.mark.parametrize("family", list(FAMILIES))
def test_stablehlo_runs_in_a_fresh_process_without_t5x_lite(family, runs, tmp_path):
    workdir, run = runs(family)
    out = str(tmp_path / "shlo")
    files = export.export(workdir, "stablehlo", out)
    assert sorted(files) == sorted(os.listdir(out))
    full = batch_of(run)
    small = {k: v[:2, :5] for k, v in full.items()}  # other batch and length: symbolic
    want = {"full": run.logits(full), "small": run.logits(small)}
    arrays = {f"{s}/{k}": v for s, b in (("full", full), ("small", small)) for k, v in b.items()}
    np.savez(tmp_path / "inputs.npz", **arrays)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", FRESH, out, str(tmp_path / "inputs.npz"), str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    for shape, logits in want.items():
        got = np.load(tmp_path / f"{shape}.npy")
        assert got.shape == logits.shape
        np.testing.assert_allclose(got, logits, atol=1e-5, rtol=0, err_msg=shape)


# --------------------------------------------------------------------------- errors


def snapshot(directory) -> dict[str, bytes]:
    out = {}
    for dirpath, _, names in os.walk(directory):
        for name in names:
            with open(os.path.join(dirpath, name), "rb") as f:
                out[os.path.join(dirpath, name)] = f.read()
    return out


def test_bad_input_is_a_one_line_error_and_writes_nothing(runs, tmp_path):
    workdir, _ = runs("decoder")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    fresh = tmp_path / "fresh"
    (fresh / "checkpoints").mkdir(parents=True)
    with open(os.path.join(workdir, "config.json")) as f:
        (fresh / "config.json").write_text(f.read())
    cases = [
        (["--workdir", workdir, "--format", "onnx", "--out", str(tmp_path / "a")],
         "--format='onnx' is not one of hf, stablehlo"),
        (["--workdir", str(fresh), "--format", "hf", "--out", str(tmp_path / "b")],
         "holds no checkpoint"),
        (["--workdir", workdir, "--format", "stablehlo", "--out", str(taken)],
         "already holds files (keep.txt, ...); nothing was overwritten"),
        (["--workdir", workdir, "--format", "hf", "--out", str(tmp_path / "c"), "--step", "3"],
         "no checkpoint at step 3 (saved steps: 2, 4)"),
    ]  # fmt: skip
    before = snapshot(tmp_path)
    for argv, message in cases:
        with pytest.raises(SystemExit) as e:
            export.main(argv)
        text = str(e.value.code)
        assert text.startswith("error: ") and "\n" not in text and message in text, text
    assert snapshot(tmp_path) == before
    assert sorted(os.listdir(tmp_path)) == ["fresh", "taken"]
    with pytest.raises(ConfigError):
        export.export(workdir, "hf", str(taken))


def test_the_command_line_exports(runs, tmp_path):
    workdir, _ = runs("decoder")
    out = tmp_path / "cli"
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(t5x_lite.__file__)))
    proc = subprocess.run(
        [sys.executable, "-m", "t5x_lite.export", f"--workdir={workdir}", "--format=stablehlo",
         f"--out={out}", "--step=2"],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sorted(report["files"]) == sorted(os.listdir(out))
    with open(out / "export.json") as f:
        assert json.load(f)["step"] == 2


# --------------------------------------------------------------------------- heads

HEAD_AUTO = {
    "sequence": transformers.AutoModelForSequenceClassification,
    "token": transformers.AutoModelForTokenClassification,
    "span": transformers.AutoModelForQuestionAnswering,
}
HEAD_CASES = [
    ("bert_tiny", "sequence", "BertForSequenceClassification"),
    ("roberta_tiny", "sequence", "RobertaForSequenceClassification"),
    ("albert_tiny", "sequence", "AlbertForSequenceClassification"),
    ("gpt2_tiny", "sequence", "GPT2ForSequenceClassification"),
    ("llama_tiny", "sequence", "LlamaForSequenceClassification"),
    ("bert_tiny", "token", "BertForTokenClassification"),
    ("llama_tiny", "token", "LlamaForTokenClassification"),
    ("bert_tiny", "span", "BertForQuestionAnswering"),
    ("llama_tiny", "span", "LlamaForQuestionAnswering"),
    # Mistral's QA class keeps its backbone under model., Llama's under transformer.
    ("llama_tiny:mistral", "span", "MistralForQuestionAnswering"),
]


@pytest.mark.parametrize("preset,head,hf_class", HEAD_CASES)
def test_each_head_exports_to_its_hf_class(preset, head, hf_class, tmp_path):
    """A 1-layer model of each head (random weights, perturbed so no parameter sits at
    its init value) written by export_hf loads as the HF head class with every weight
    in place (HF would initialise a missing one afresh) and gives our logits within
    1e-4 on a right-padded batch; token and span logits are compared on real tokens."""
    from t5x_lite import models, presets
    from t5x_lite.config import ModelConfig

    preset, _, arch = preset.partition(":")
    m = presets.load(preset).to_dict()["model"]
    if arch:
        m.update(arch=arch, sliding_window=16)
    m.update(num_layers=1, sentence_head=False, dropout_rate=0.0, task_head=head,
             num_labels=3 if head != "span" else 0)  # fmt: skip
    cfg = ModelConfig(**m).validate()
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(
        lambda x: np.asarray(x) + rng.normal(0, 0.05, x.shape).astype(np.float32),
        models.init_params(cfg, jax.random.key(0)),
    )
    convert.export_hf(cfg, params, str(tmp_path))
    with open(tmp_path / "config.json") as f:
        written = json.load(f)
    assert written["architectures"] == [hf_class]
    hf, info = HEAD_AUTO[head].from_pretrained(
        str(tmp_path), attn_implementation="eager", output_loading_info=True
    )
    assert type(hf).__name__ == hf_class
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    ids = rng.integers(5, 200, (3, 9)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 6:], mask[2, 3:] = 0, 0
    batch = {"input_ids": ids * mask, "attention_mask": mask}
    if cfg.family == "encoder":
        batch["token_type_ids"] = np.zeros_like(ids)
    ours = models.get(cfg).apply(params, batch)
    with torch.no_grad():
        theirs = hf.eval()(**{k: torch.from_numpy(v.astype(np.int64)) for k, v in batch.items()})
    real = mask.astype(bool)
    if head == "sequence":
        pairs = [(ours["class_logits"], theirs.logits, slice(None))]
    elif head == "token":
        pairs = [(ours["tag_logits"], theirs.logits, real)]
    else:
        pairs = [(ours["start_logits"], theirs.start_logits, real),
                 (ours["end_logits"], theirs.end_logits, real)]  # fmt: skip
    for mine, ref, keep in pairs:
        mine, ref = np.asarray(mine)[keep], ref.numpy()[keep]
        assert np.abs(mine).max() > 1e-3
        np.testing.assert_allclose(ref, mine, atol=1e-4, rtol=0)


def test_a_head_without_an_hf_class_is_one_line():
    """T5 has no task head today (it classifies by label words); were one added, the
    export would name it rather than write a wrong class."""
    from t5x_lite import presets
    from t5x_lite.hf import heads

    t5 = presets.load_typed("t5_tiny").model
    want = (f"^model\\.task_head='token' on model\\.arch='{t5.arch}' has no Hugging Face "
            "class to export to; use --format=stablehlo$")  # fmt: skip
    with pytest.raises(ConfigError, match=want):
        heads.hf_class(dataclasses.replace(t5, task_head="token", num_labels=2))


@pytest.mark.parametrize("method", ["adapter", "prefix"])
def test_adapter_and_prefix_runs_are_refused_by_the_hf_export(method, runs, tmp_path):
    workdir, _ = runs("decoder")
    fake = tmp_path / "peft_run"
    (fake / "checkpoints").mkdir(parents=True)
    with open(os.path.join(workdir, "config.json")) as f:
        saved = json.load(f)
    saved["peft"]["method"] = method
    saved["train"]["init_from"] = workdir
    (fake / "config.json").write_text(json.dumps(saved))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        export.main(["--workdir", str(fake), "--format", "hf", "--out", str(out)])
    text = str(e.value.code)
    assert text.startswith(f"error: --format=hf: a peft.method='{method}' run has no Hugging "
                           "Face class") and "--format=stablehlo" in text, text  # fmt: skip
    assert "\n" not in text and not out.exists()


def test_the_exported_encoder_tokenizer_fills_masks_in_hf_pipeline(runs, hf_dirs):
    """AutoTokenizer + pipeline("fill-mask") on the exported BERT as they are (no
    tokenizer edits): [MASK] is the mask token, the ids are ours, and the candidates
    equal t5x_lite.pipeline's."""
    _, run = runs("encoder")
    out = hf_dirs("encoder")
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert (tok.mask_token, tok.mask_token_id) == ("[MASK]", run.tokenizer.mask_id)
    # [MASK] last: text after a literal piece may take one more "▁" in HF (README).
    text = "And God said, Let there be light: and there was [MASK]"
    assert tok(text).input_ids == run.tokenizer.encode(text)
    hf = transformers.pipeline("fill-mask", model=out, device="cpu")
    theirs = hf(text, top_k=4)
    ours = t5x_lite.pipeline("fill-mask", run, top_k=4)(text, add_special_tokens=False)
    assert [c["token"] for c in ours] == [c["token"] for c in theirs]
    np.testing.assert_allclose([c["score"] for c in ours], [c["score"] for c in theirs], atol=1e-5)
