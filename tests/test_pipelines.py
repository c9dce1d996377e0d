"""t5x_lite.pipeline on tiny trained runs, against Hugging Face's pipelines.

text-generation: greedy output equals transformers' ``pipeline("text-generation")`` on
the HF export of the same weights (jittered, so the greedy path moves), for a batch of
prompts of different lengths. text2text-generation: T5's greedy tokens equal
transformers' ``generate``. fill-mask: tokens, scores and strings equal transformers'
``pipeline("fill-mask")`` on the exported BERT, and the default ``[CLS] ... [SEP]`` row
equals a softmax of the exported model's logits. Bad input: one-line errors.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np
import pytest
import torch
import transformers
from trained_runs import FAMILIES, trained

import t5x_lite
from t5x_lite import convert, export
from t5x_lite.config import ConfigError

PROMPTS = ["In the beginning", "And God said, Let there be light: and"]


@pytest.fixture(scope="module")
def runs(kjv_root, tmp_path_factory):
    """``runs(family) -> (Loaded, hf_dir)``: trained and exported once per process."""
    cache: dict = {}

    def get(family: str):
        if family not in cache:
            workdir = trained(FAMILIES[family], str(kjv_root), tmp_path_factory)
            out = str(tmp_path_factory.mktemp(f"pipe-hf-{family}") / "hf")
            export.export(workdir, "hf", out)
            cache[family] = t5x_lite.load(workdir), out
        return cache[family]

    return get


def jittered(run, hf_dir: str, out: str):
    """``run`` with noisy weights, and those weights exported with the run's tokenizer."""
    leaves, tree = jax.tree_util.tree_flatten(run.params)
    rng = np.random.default_rng(0)
    noisy = tree.unflatten(
        [np.asarray(x + rng.normal(0, 0.3, x.shape), np.float32) for x in map(np.asarray, leaves)]
    )
    convert.export_hf(run.config.model, noisy, out)
    return dataclasses.replace(run, params=noisy), transformers.AutoTokenizer.from_pretrained(
        hf_dir
    )


def test_text_generation_equals_transformers_pipeline(runs, tmp_path):
    run, hf_dir = runs("decoder")
    noisy, hf_tok = jittered(run, hf_dir, str(tmp_path / "noisy"))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "noisy"))
    hf = transformers.pipeline("text-generation", model=model, tokenizer=hf_tok, device="cpu")
    ours = t5x_lite.pipeline("text-generation", noisy, max_new_tokens=10)
    got = ours(PROMPTS)  # one left-padded batch
    tok = run.tokenizer
    for prompt, mine in zip(PROMPTS, got, strict=True):
        (theirs,) = hf(prompt, max_new_tokens=10, do_sample=False, return_tensors=True)
        ids = list(theirs["generated_token_ids"])
        prompt_ids, new = ids[: len(tok.encode(prompt))], ids[len(tok.encode(prompt)) :]
        assert prompt_ids == tok.encode(prompt) and len(set(new)) >= 4, new
        # transformers 5 decodes the new ids alone (dropping the first one's word-start
        # space); we keep what decoding prompt + new adds to the prompt.
        (text,) = hf(prompt, max_new_tokens=10, do_sample=False)
        assert text["generated_text"] == prompt + tok.decode(new)
        added = tok.decode(prompt_ids + new)[len(tok.decode(prompt_ids)) :]
        assert mine == [{"generated_text": prompt + added}]
    new = ours(PROMPTS[0], return_full_text=False)[0]["generated_text"]
    assert got[0][0]["generated_text"] == PROMPTS[0] + new


def test_text2text_generation_equals_transformers_generate(runs, tmp_path):
    run, hf_dir = runs("encoder_decoder")
    noisy, _ = jittered(run, hf_dir, str(tmp_path / "noisy"))
    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(str(tmp_path / "noisy")).eval()
    got = t5x_lite.pipeline("text2text-generation", noisy)(PROMPTS, max_new_tokens=8)
    tok = run.tokenizer
    for prompt, mine in zip(PROMPTS, got, strict=True):
        ids = torch.tensor([[*tok.encode(prompt), tok.eos_id]])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=8)[0, 1:].tolist()  # fmt: skip
        new = out[: out.index(tok.eos_id)] if tok.eos_id in out else out
        assert mine == [{"generated_text": tok.decode(new)}]


def test_fill_mask_equals_transformers_pipeline(runs):
    run, hf_dir = runs("encoder")
    text = "In the beginning God created the heaven and the [MASK]"
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    hf_tok.add_special_tokens({"mask_token": "[MASK]"})  # our export names no mask token
    hf_tok.split_special_tokens = False  # and spells control pieces in text as text
    assert hf_tok(text).input_ids == run.tokenizer.encode(text)  # the same row on both sides
    model = transformers.AutoModelForMaskedLM.from_pretrained(hf_dir).eval()
    hf = transformers.pipeline("fill-mask", model=model, tokenizer=hf_tok, device="cpu")
    pipe = t5x_lite.pipeline("fill-mask", run.path, top_k=4)
    ours = pipe(text, add_special_tokens=False)
    theirs = hf(text, top_k=4)
    assert [c["token"] for c in ours] == [c["token"] for c in theirs]
    np.testing.assert_allclose([c["score"] for c in ours], [c["score"] for c in theirs], atol=1e-5)
    assert [c["token_str"].strip() for c in ours] == [c["token_str"].strip() for c in theirs]
    assert [c["sequence"] for c in ours] == [c["sequence"] for c in theirs]
    # The default row is [CLS] text [SEP]: a softmax over the exported model's logits.
    tok = run.tokenizer
    ids = [tok.cls_id, *tok.encode(text), tok.sep_id]
    with torch.no_grad():
        logits = model(
            torch.tensor([ids]), token_type_ids=torch.zeros(1, len(ids), dtype=torch.long)
        ).logits
    probs = torch.softmax(logits[0, ids.index(tok.mask_id)].double(), -1)
    top = torch.topk(probs, 4)
    got = pipe([text])[0]
    assert [c["token"] for c in got] == top.indices.tolist()
    np.testing.assert_allclose([c["score"] for c in got], top.values.numpy(), atol=1e-5)


def test_several_masks_give_a_list_per_mask(runs):
    run, _ = runs("encoder")
    out = t5x_lite.pipeline("fill-mask", run, top_k=2)("[MASK] the beginning God [MASK] the")
    assert len(out) == 2 and all(len(per) == 2 for per in out)


def test_bad_input_is_one_line(runs):
    dec, _ = runs("decoder")
    enc, _ = runs("encoder")
    pipe = t5x_lite.pipeline
    too_long = (
        r"prompt has \d+ tokens; with max_new_tokens=32 it exceeds the model's context of 128"
    )
    cases = [
        (lambda: pipe("summarization", dec), "unknown pipeline task 'summarization'; tasks: fill"),
        (lambda: pipe("fill-mask", dec), "fill-mask needs a encoder model"),
        (lambda: pipe("text-generation", enc), "needs a decoder model"),
        (lambda: pipe("text-generation", dec, beams=2), "unknown argument 'beams'"),
        (lambda: pipe("text-generation", dec)("In " * 200), too_long),
        (lambda: pipe("fill-mask", enc)("no mask here"), r"needs a \[MASK\]"),
        (lambda: pipe("text-generation", os.path.join(dec.path, "nowhere")), "does not exist"),
    ]
    for make, message in cases:
        with pytest.raises(ConfigError, match=message) as e:
            make()
        assert "\n" not in str(e.value)
