"""Pipelines of fine-tuned heads (t5x_lite.task_pipelines) on tiny trained bases.

Each run is a trained base with a fresh task head (``loading.initial_params``, as
``train.init_from`` builds it; the head weights scaled up so predictions vary). The
reference is independent of our forward: transformers (torch) computes the trunk's
last hidden states on the HF export of the base, and numpy applies the head's
weights (BERT's pooler + classifier, GPT-2's ``score`` at the EOS, the token
classifier, the span head with a brute-force span search); T5's label words are
scored by transformers' T5. Inputs are framed by hand as the fine-tuning rows are.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
import torch
import transformers
from trained_runs import FAMILIES, trained

import t5x_lite
from t5x_lite import export, loading, models
from t5x_lite.config import ConfigError, TaskConfig

TEXTS = ["In the beginning God created the heaven and the earth.", "Jesus wept."]
AUTO = {
    "decoder": transformers.AutoModelForCausalLM,
    "encoder": transformers.AutoModelForMaskedLM,
    "encoder_decoder": transformers.AutoModelForSeq2SeqLM,
}


@pytest.fixture(scope="module")
def bases(kjv_root, tmp_path_factory):
    """``bases(family) -> (Loaded, HF model)``: trained and exported once per process."""
    cache: dict = {}

    def get(family: str):
        if family not in cache:
            workdir = trained(FAMILIES[family], str(kjv_root), tmp_path_factory)
            out = str(tmp_path_factory.mktemp(f"task-hf-{family}") / "hf")
            export.export(workdir, "hf", out)
            cache[family] = t5x_lite.load(workdir), AUTO[family].from_pretrained(out).eval()
        return cache[family]

    return get


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
