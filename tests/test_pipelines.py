"""t5x_lite.pipeline on tiny trained runs, against Hugging Face's pipelines.

text-generation: greedy output equals transformers' ``pipeline("text-generation")`` on
the HF export of the same weights (jittered, so the greedy path moves), for a batch of
prompts of different lengths. text2text-generation: T5's greedy tokens equal
transformers' ``generate``. fill-mask: tokens, scores and strings equal transformers'
``pipeline("fill-mask")`` on the exported BERT, and the default ``[CLS] ... [SEP]`` row
equals a softmax of the exported model's logits. Bad input: one-line errors.

Head pipelines (t5x_lite.task_pipelines): each run is a trained base with a fresh task
head (``loading.initial_params``, as ``train.init_from`` builds it; the head weights
scaled up so predictions vary). The reference is independent of our forward:
transformers (torch) computes the trunk's last hidden states on the HF export of the
base, and numpy applies the head's weights (BERT's pooler + classifier, GPT-2's
``score`` at the EOS, the token classifier, the span head with a brute-force span
search); T5's label words are scored by transformers' T5. Inputs are framed by hand as
the fine-tuning rows are.
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
from t5x_lite import convert, export, loading, models
from t5x_lite.config import ConfigError, TaskConfig

PROMPTS = ["In the beginning", "And God said, Let there be light: and"]
TEXTS = ["In the beginning God created the heaven and the earth.", "Jesus wept."]
AUTO = {
    "decoder": transformers.AutoModelForCausalLM,
    "encoder": transformers.AutoModelForMaskedLM,
    "encoder_decoder": transformers.AutoModelForSeq2SeqLM,
}


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


@pytest.fixture(scope="module")
def bases(runs):
    """``bases(family) -> (Loaded, transformers model of its HF export)``."""
    cache: dict = {}

    def get(family: str):
        if family not in cache:
            run, hf_dir = runs(family)
            cache[family] = run, AUTO[family].from_pretrained(hf_dir).eval()
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


# --------------------------------------------------------------------------- head pipelines


def headed(base, head: str, kind: str, labels: tuple[str, ...], **task):
    """``base`` with a fresh ``head`` (weights x 30) and a task section of ``kind``."""
    extra = {} if head == "none" else {"task_head": head, "num_labels": len(labels)}
    model = dataclasses.replace(base.config.model, sentence_head=False, **extra)
    cfg = dataclasses.replace(
        base.config,
        model=model,
        task=TaskConfig(kind=kind, train_file="train.jsonl", labels=labels, **task),
    )
    fresh = jax.tree_util.tree_map(
        lambda x: np.asarray(x) * 30, models.init_params(model, jax.random.key(7))
    )
    params, _ = loading.initial_params(model, base, fresh)
    params = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), params)
    return dataclasses.replace(base, config=cfg, model=models.get(model), params=params)


def hidden(hf, ids: list[int], types: list[int] | None = None) -> np.ndarray:
    """transformers' last hidden states ``[T, E]`` of one row (float64)."""
    kwargs = {} if types is None else {"token_type_ids": torch.tensor([types])}
    with torch.no_grad():
        out = hf(torch.tensor([ids]), output_hidden_states=True, **kwargs)
    return out.hidden_states[-1][0].double().numpy()


def dense(params, name: str, x: np.ndarray) -> np.ndarray:
    p = params[name]
    y = x @ np.asarray(p["kernel"], np.float64)
    return y + np.asarray(p["bias"], np.float64) if "bias" in p else y


def softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def test_text_classification_encoder_and_decoder(bases):
    labels = ("old", "new", "other")
    bert, hf_bert = bases("encoder")
    run = headed(bert, "sequence", "classification", labels)
    got = t5x_lite.pipeline("text-classification", run, top_k=3)([TEXTS[0], tuple(TEXTS)])
    tok = run.tokenizer
    a, b = tok.encode(TEXTS[0]), tok.encode(TEXTS[1])
    pair = [tok.cls_id, *a, tok.sep_id, *b, tok.sep_id]
    rows = [([tok.cls_id, *a, tok.sep_id], None), (pair, [0] * (len(a) + 2) + [1] * (len(b) + 1))]
    for (ids, types), mine in zip(rows, got, strict=True):
        h = hidden(hf_bert, ids, types or [0] * len(ids))
        pooled = np.tanh(dense(run.params, "pooler", h[0]))
        p = softmax(dense(run.params, "classifier", pooled))
        order = np.argsort(-p)
        assert [c["label"] for c in mine] == [labels[i] for i in order]
        np.testing.assert_allclose([c["score"] for c in mine], p[order], atol=1e-5)
    assert len({m[0]["label"] for m in got}) >= 1 and got[0][0]["score"] < 1 - 1e-6

    gpt, hf_gpt = bases("decoder")
    run = headed(gpt, "sequence", "classification", labels)
    (top,) = t5x_lite.pipeline("text-classification", run)(TEXTS[1])
    h = hidden(hf_gpt, [*tok.encode(TEXTS[1]), tok.eos_id])
    p = softmax(dense(run.params, "score", h[-1]))  # the last real token: EOS
    assert top["label"] == labels[int(np.argmax(p))]
    assert top["score"] == pytest.approx(float(p.max()), abs=1e-5)


def test_text_classification_t5_label_words(bases):
    t5, hf_t5 = bases("encoder_decoder")
    labels = ("old", "new")
    run = headed(t5, "none", "classification", labels)
    got = t5x_lite.pipeline("text-classification", run, top_k=2)(TEXTS[0])
    tok = run.tokenizer
    enc = torch.tensor([[*tok.encode(TEXTS[0]), tok.eos_id]])
    lls = []
    for word in labels:
        target = torch.tensor([[*tok.encode(word), tok.eos_id]])
        with torch.no_grad():
            logp = torch.log_softmax(hf_t5(input_ids=enc, labels=target).logits[0].double(), -1)
        lls.append(float(logp[torch.arange(target.shape[1]), target[0]].sum()))
    p = softmax(np.asarray(lls))
    assert [c["label"] for c in got] == [labels[i] for i in np.argsort(-p)]
    np.testing.assert_allclose([c["score"] for c in got], np.sort(p)[::-1], atol=1e-5)


def test_token_classification(bases):
    bert, hf_bert = bases("encoder")
    labels = ("O", "DEITY", "PLACE")
    run = headed(bert, "token", "token_classification", labels)
    text = "And  God said unto Moses in Egypt"
    pipe = t5x_lite.pipeline("token-classification", run, ignore_labels=())
    got = pipe(text)
    tok = run.tokenizer
    words = text.split()
    pieces = [tok.encode(w) for w in words]
    ids = [tok.cls_id, *[p for ps in pieces for p in ps], tok.sep_id]
    firsts = 1 + np.cumsum([0] + [len(ps) for ps in pieces[:-1]])
    p = softmax(dense(run.params, "classifier", hidden(hf_bert, ids, [0] * len(ids))))[firsts]
    assert [g["word"] for g in got] == words and [g["index"] for g in got] == list(range(7))
    assert [g["entity"] for g in got] == [labels[i] for i in p.argmax(-1)]
    np.testing.assert_allclose([g["score"] for g in got], p.max(-1), atol=1e-5)
    assert [text[g["start"] : g["end"]] for g in got] == words
    kept = t5x_lite.pipeline("token-classification", run)(text)  # "O" left out
    assert kept == [g for g in got if g["entity"] != "O"]


def test_question_answering(bases):
    bert, hf_bert = bases("encoder")
    run = headed(bert, "span", "span_qa", (), max_answer_len=3)
    question, context = "Who wept?", "Then Jesus wept, and the Jews said, Behold"
    got = t5x_lite.pipeline("question-answering", run)(question=question, context=context)
    tok = run.tokenizer
    words = context.split()
    pieces = [tok.encode(w) for w in words]
    q = tok.encode(question)
    ids = [tok.cls_id, *q, tok.sep_id, *[p for ps in pieces for p in ps], tok.sep_id]
    types = [0] * (len(q) + 2) + [1] * (len(ids) - len(q) - 2)
    logits = dense(run.params, "qa_outputs", hidden(hf_bert, ids, types))  # [T, 2]
    word_of = [j for j, ps in enumerate(pieces) for _ in ps]
    first = len(q) + 2
    ctx = range(first, first + len(word_of))
    best = max(((s, e) for s in ctx for e in ctx if s <= e < s + 3),
               key=lambda se: logits[se[0], 0] + logits[se[1], 1])  # fmt: skip
    answer = " ".join(words[word_of[best[0] - first] : word_of[best[1] - first] + 1])
    p_start = softmax(logits[list(ctx), 0])[best[0] - first]
    p_end = softmax(logits[list(ctx), 1])[best[1] - first]
    assert got["answer"] == answer and context[got["start"] : got["end"]] == answer
    assert got["score"] == pytest.approx(float(p_start * p_end), abs=1e-5)
    again = t5x_lite.pipeline("question-answering", run)(
        [{"question": question, "context": context}]
    )
    assert again == [got]


def test_head_pipelines_refuse_bad_input(bases):
    bert, _ = bases("encoder")
    run = headed(bert, "sequence", "classification", ("old", "new"))
    pipe = t5x_lite.pipeline
    cases = [
        (lambda: pipe("text-classification", bert), "needs model.task_head='sequence'"),
        (lambda: pipe("question-answering", run), "needs model.task_head='span'"),
        (lambda: pipe("text-classification", run)("In " * 300), r"an input has \d+ tokens; the"),
        (lambda: pipe("text-classification", run, top_k=3)("a"), r"top_k=3 must be in \[1, 2\]"),
    ]
    for make, message in cases:
        with pytest.raises(ConfigError, match=message) as e:
            make()
        assert "\n" not in str(e.value)
