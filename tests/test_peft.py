"""LoRA, adapters and prefix tuning at the model level (t5x_lite.peft).

References are independent of our own earlier output: the base model's logits (an
initial LoRA / adapter model must equal them exactly), Hugging Face ``peft`` applied
to the same ``transformers`` Llama (torch CPU), numpy transcriptions of the adapter
and of LoRA's merge, and the uncached full forward for prefix-tuned decoding.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from t5x_lite import decoding, models, peft
from t5x_lite.config import ConfigError, ModelConfig, PeftConfig, from_dict

V = 61
_SMALL = dict(vocab_size=V, d_model=32, num_heads=4, num_layers=1, d_ff=48, max_seq_len=32)
CONFIGS = {
    "gpt2": ModelConfig(family="decoder", arch="gpt2", **_SMALL),
    "llama": ModelConfig(
        family="decoder", arch="llama", num_kv_heads=2, activation="silu", **_SMALL
    ),
    "bert": ModelConfig(family="encoder", arch="bert", type_vocab_size=2, **_SMALL),
    "t5": ModelConfig(
        family="encoder_decoder", arch="t5", head_dim=8, activation="relu",
        relative_num_buckets=8, relative_max_distance=16, **_SMALL,
    ),
}  # fmt: skip
ALL_TARGETS = ("query", "key", "value", "out", "mlp_in", "mlp_out")


@functools.cache
def _base(name: str):
    return models.init_params(CONFIGS[name], jax.random.key(0))


def _batch(name: str, b: int = 2, t: int = 8) -> dict:
    cfg = CONFIGS[name]
    batch = dict(models.example_batch(cfg, b, t))
    ids = np.asarray(jax.random.randint(jax.random.key(1), (b, t), 1, V), np.int32)
    mask = np.ones((b, t), np.int32)
    mask[1, t - 3 :] = 0  # one padded row
    batch["input_ids"], batch["attention_mask"] = ids, mask
    if cfg.family == "encoder_decoder":
        batch["decoder_input_ids"], batch["decoder_attention_mask"] = ids[:, ::-1].copy(), mask
    return batch


@functools.cache
def _forward(name: str):
    model = models.get(CONFIGS[name])
    return jax.jit(lambda p, b: model.apply(p, b)["logits"])


def _logits(name: str, params, batch) -> np.ndarray:
    return np.asarray(_forward(name)(params, batch))


def _perturbed(tree, seed: int = 5, std: float = 0.1):
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return treedef.unflatten(
        [x + std * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    )


@pytest.mark.parametrize("name", list(CONFIGS))
def test_lora_starts_at_the_base_and_merges_into_it(name):
    cfg, base, batch = CONFIGS[name], _base(name), _batch(name)
    p = peft.Peft(PeftConfig(method="lora", rank=4, alpha=8.0, targets=ALL_TARGETS), cfg)
    trainable = p.init(jax.random.key(2), base)
    ref = _logits(name, base, batch)
    # Jitted, XLA may fuse the zero update into a reordered float sum (exact equality
    # op by op: test_zero_initialised_hooks_add_exact_zeros).
    np.testing.assert_allclose(_logits(name, p.combine(base, trainable), batch), ref,
                               rtol=0, atol=1e-6)  # fmt: skip
    trainable = _perturbed(trainable)
    unmerged = _logits(name, p.combine(base, trainable), batch)
    assert np.max(np.abs(unmerged - ref)) > 1e-3  # the hooks are live
    merged = p.merge(base, trainable)
    # The merged tree is a plain base-shaped tree: same paths and shapes, no extra leaf.
    assert jax.tree_util.tree_structure(merged) == jax.tree_util.tree_structure(base)
    np.testing.assert_allclose(_logits(name, merged, batch), unmerged, rtol=0, atol=1e-5)
    if cfg.family == "decoder":  # merge is W + (alpha/r) A·B in numpy; the base is kept
        node = trainable["layers_0"]["attn"]["out"]
        a, b = np.asarray(node["lora_a"]), np.asarray(node["lora_b"])  # [H, D, r], [r, E]
        w = np.asarray(base["layers_0"]["attn"]["out"]["kernel"])
        want = w + 2.0 * np.einsum("hdr,re->hde", a, b)
        np.testing.assert_allclose(merged["layers_0"]["attn"]["out"]["kernel"], want, atol=1e-6)
        assert not np.array_equal(want, w)
        np.testing.assert_array_equal(base["layers_0"]["attn"]["out"]["kernel"], w)


def test_lora_dropout_only_with_a_dropout_rng():
    """Dropout on LoRA's input: absent without a dropout rng (evaluation, decoding),
    seeded with one, and the merged model is the rng-free one."""
    name = "gpt2"
    cfg, base, batch = CONFIGS[name], _base(name), _batch(name)
    lora = PeftConfig(method="lora", rank=4, targets=("query", "mlp_in"))
    trainable = _perturbed(peft.Peft(lora, cfg).init(jax.random.key(2), base))
    p = peft.Peft(dataclasses.replace(lora, dropout=0.5), cfg)
    model = models.get(cfg)

    def forward(params, key=None):
        rngs = None if key is None else {"dropout": jax.random.key(key)}
        return np.asarray(jax.jit(lambda q: model.apply(q, batch, rngs=rngs)["logits"])(params))

    plain = forward(p.combine(base, trainable))
    np.testing.assert_allclose(plain, _logits(name, p.merge(base, trainable), batch), atol=1e-5)
    dropped = forward(p.combine(base, trainable), 0)
    assert np.max(np.abs(dropped - plain)) > 1e-3
    np.testing.assert_array_equal(dropped, forward(p.combine(base, trainable), 0))
    assert np.max(np.abs(forward(p.combine(base, trainable), 1) - dropped)) > 1e-4


@pytest.mark.parametrize("name", ["gpt2", "t5"])
def test_adapters_start_at_the_base(name):
    cfg, base, batch = CONFIGS[name], _base(name), _batch(name)
    p = peft.Peft(PeftConfig(method="adapter", adapter_size=8), cfg)
    trainable = p.init(jax.random.key(2), base)
    # Self-attention and MLP sublayers; T5's cross-attention keeps none.
    sites = [path for path, _ in p.attention_sites] + p.mlp_sites
    assert len(sites) == (2 if name == "gpt2" else 4)  # T5: encoder + decoder layer
    assert all("encoder_decoder_attention" not in path for path in sites)
    ref = _logits(name, base, batch)
    np.testing.assert_allclose(_logits(name, p.combine(base, trainable), batch), ref,
                               rtol=0, atol=1e-6)  # fmt: skip
    moved = _logits(name, p.combine(base, _perturbed(trainable)), batch)
    assert np.max(np.abs(moved - ref)) > 1e-3


def test_zero_initialised_hooks_add_exact_zeros():
    """Op by op (unjitted), LoRA with B = 0 and an adapter with a zero up-projection
    return the base layer's output bit for bit."""
    from t5x_lite import layers

    x = np.asarray(jax.random.normal(jax.random.key(0), (2, 3, 8)), np.float32)
    dense = layers.DenseGeneral((4, 2), ("embed",), ("heads", "kv"))
    w = nn.meta.unbox(dense.init(jax.random.key(1), x)["params"])
    lora = {"lora_a": np.ones((8, 3), np.float32), "lora_b": np.zeros((3, 4, 2), np.float32),
            "lora_scale": np.float32(2.0)}  # fmt: skip
    with jax.disable_jit():
        np.testing.assert_array_equal(dense.apply({"params": {**w, **lora}}, x),
                                      dense.apply({"params": w}, x))  # fmt: skip
    mlp = layers.Mlp(d_ff=16)
    w = nn.meta.unbox(mlp.init(jax.random.key(1), x)["params"])
    adapter = {
        "adapter_down": np.ones((8, 4), np.float32),
        "adapter_down_bias": np.ones(4, np.float32),
        "adapter_up": np.zeros((4, 8), np.float32),
        "adapter_up_bias": np.zeros(8, np.float32),
    }
    with jax.disable_jit():
        np.testing.assert_array_equal(mlp.apply({"params": {**w, **adapter}}, x),
                                      mlp.apply({"params": w}, x))  # fmt: skip


def test_adapter_matches_numpy_transcription():
    """Houlsby's adapter on the MLP's output: y + up(gelu(down(y))), y = wo(h)."""
    from t5x_lite import layers

    m = layers.Mlp(d_ff=16, act="relu", use_bias=True)
    x = np.asarray(jax.random.normal(jax.random.key(0), (2, 3, 8)), np.float32)
    params = nn.meta.unbox(m.init(jax.random.key(1), x)["params"])
    rng = np.random.default_rng(0)
    extra = {
        "adapter_down": rng.normal(size=(8, 4)).astype(np.float32),
        "adapter_down_bias": rng.normal(size=(4,)).astype(np.float32),
        "adapter_up": rng.normal(size=(4, 8)).astype(np.float32),
        "adapter_up_bias": rng.normal(size=(8,)).astype(np.float32),
    }
    got = np.asarray(m.apply({"params": {**params, **extra}}, x))
    wi, wo = params["wi"], params["wo"]
    y = np.maximum(x @ np.asarray(wi["kernel"]) + np.asarray(wi["bias"]), 0)
    y = y @ np.asarray(wo["kernel"]) + np.asarray(wo["bias"])
    h = y @ extra["adapter_down"] + extra["adapter_down_bias"]
    h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))
    np.testing.assert_allclose(got, y + h @ extra["adapter_up"] + extra["adapter_up_bias"],
                               rtol=1e-5, atol=1e-5)  # fmt: skip


def test_lora_matches_hugging_face_peft_on_llama(tmp_path):
    """The same random Llama through transformers + peft (torch) and through ours."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf_peft = pytest.importorskip("peft")
    from t5x_lite import convert

    torch.manual_seed(0)
    hf_cfg = transformers.LlamaConfig(
        vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
        rms_norm_eps=1e-5, attn_implementation="eager",
    )  # fmt: skip
    hf = transformers.LlamaForCausalLM(hf_cfg).eval()
    hf.save_pretrained(tmp_path)
    model_cfg, base = convert.import_hf(str(tmp_path))
    base = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), base)
    targets = {"q_proj": "query", "v_proj": "value", "o_proj": "out", "down_proj": "wo"}
    lcfg = hf_peft.LoraConfig(r=4, lora_alpha=12, target_modules=list(targets), lora_dropout=0.0)
    hf_lora = hf_peft.get_peft_model(hf, lcfg).eval()
    for n, prm in hf_lora.named_parameters():  # B is zero at init: give both factors values
        if "lora_" in n:
            prm.data = torch.randn_like(prm) * 0.2
    ours = peft.Peft(
        PeftConfig(method="lora", rank=4, alpha=12, targets=("query", "value", "out", "mlp_out")),
        model_cfg,
    )
    trainable = jax.tree_util.tree_map(np.asarray, ours.init(jax.random.key(0)))
    h, d = model_cfg.num_heads, model_cfg.head_size
    weights = {n: prm.detach().numpy() for n, prm in hf_lora.named_parameters()}
    for i in range(1):
        for hf_name, our_name in targets.items():
            group = "mlp" if hf_name == "down_proj" else "self_attn"
            prefix = f"base_model.model.model.layers.{i}.{group}.{hf_name}"
            a = weights[f"{prefix}.lora_A.default.weight"].T  # [in, r]
            b = weights[f"{prefix}.lora_B.default.weight"].T  # [r, out]
            node = trainable[f"layers_{i}"]["mlp" if group == "mlp" else "attn"][our_name]
            if our_name == "out":
                a = a.reshape(h, d, -1)
            elif our_name in ("query", "value"):
                b = b.reshape(b.shape[0], -1, d)
            assert node["lora_a"].shape == a.shape and node["lora_b"].shape == b.shape
            node["lora_a"], node["lora_b"] = a, b
    ids = np.array(jax.random.randint(jax.random.key(1), (2, 9), 0, V), np.int32)
    with torch.no_grad():
        want = hf_lora(input_ids=torch.as_tensor(ids, dtype=torch.long)).logits.numpy()
    model = models.get(model_cfg)
    got = np.asarray(model.apply(ours.combine(base, trainable), {"input_ids": ids})["logits"])
    np.testing.assert_allclose(got, want, atol=1e-4)
    with torch.no_grad(), hf_lora.disable_adapter():
        plain = hf_lora(input_ids=torch.as_tensor(ids, dtype=torch.long)).logits.numpy()
    assert np.max(np.abs(want - plain)) > 1e-2  # the adapters changed the model
    np.testing.assert_allclose(
        np.asarray(model.apply(ours.merge(base, trainable), {"input_ids": ids})["logits"]),
        want,
        atol=1e-4,
    )


@pytest.mark.parametrize(("name", "hidden"), [("llama", 0), ("t5", 16)])
def test_prefix_tuned_cached_generation_equals_uncached(name, hidden):
    """Greedy decoding with the cache on a prefix-tuned model (left-padded batch): every
    step's logits equal the uncached forward of the row alone, and prefixes matter.

    The reference row is right-padded to a fixed width (one compilation): causal
    attention keeps the padding out of the last real position.
    """
    cfg = CONFIGS[name]
    base = _base(name)
    p = peft.Peft(PeftConfig(method="prefix", prefix_len=3, prefix_hidden=hidden), cfg)
    full = p.merge(base, _perturbed(p.init(jax.random.key(2), base), std=0.5))
    prompts, n, width = [[5, 6, 7, 8, 9], [12, 13]], 4, 12
    opts = decoding.Options(max_new_tokens=n, eos_id=V + 1, return_logits=True)
    out = decoding.generate(cfg, full, prompts, opts)
    forward = _forward(name)
    for r, prompt in enumerate(prompts):
        for j in range(n):
            new = out["tokens"][r, :j].tolist()
            if cfg.family == "decoder":
                row, last = [*prompt, *new], len(prompt) + j - 1
                batch = {"input_ids": np.asarray([row + [0] * (width - len(row))], np.int32)}
            else:
                dec, last = [0, *new], j
                batch = {
                    "input_ids": np.asarray([prompt + [0] * (width - len(prompt))], np.int32),
                    "attention_mask": np.asarray([[1] * len(prompt) + [0] * (width - len(prompt))],
                                                 np.int32),
                    "decoder_input_ids": np.asarray([dec + [0] * (width - len(dec))], np.int32),
                    "decoder_attention_mask": np.ones((1, width), np.int32),
                }  # fmt: skip
            want = np.asarray(forward(full, batch))[0, last]
            np.testing.assert_allclose(out["logits"][r, j], want, atol=1e-4)
            assert int(out["tokens"][r, j]) == int(np.argmax(want))
    plain = np.asarray(forward(base, batch))[0, last]
    assert np.max(np.abs(plain - want)) > 1e-3


def test_trainable_fraction_line_counts_added_and_base():
    cfg = CONFIGS["gpt2"]
    p = peft.Peft(PeftConfig(method="lora", rank=2, targets=("query", "value")), cfg)
    # 1 layer x 2 targets x (A [32, 2] + B [2, 4, 8]) = 2 x 128 = 256 trained.
    counts = models.count_params(cfg)  # the base as stored: its padded vocabulary rows too
    total = counts["total"] + counts["vocab_padding"] + 256
    assert p.trainable_line() == f"trainable {100 * 256 / total:.2f}% (256 of {total:,} parameters)"


def test_bad_peft_config_is_one_line():
    base = {"model": {"family": "decoder", "arch": "gpt2"}}
    bad = {
        "peft.method='qlora' is not one of none, lora, adapter, prefix": {"method": "qlora"},
        "peft.targets has unknown target 'q_proj' (valid: query, key, value, out, mlp_in, "
        "mlp_out)": {"method": "lora", "targets": ["q_proj"]},
        "peft.rank=0 must be a positive integer": {"method": "lora", "rank": 0},
        "unknown config field peft.r": {"r": 4},
    }
    for msg, section in bad.items():
        with pytest.raises(ConfigError) as e:
            from_dict({**base, "peft": section})
        assert str(e.value) == msg
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="modules_to_save entry 'classifier' matches no"):
        peft.Peft(PeftConfig(method="lora", modules_to_save=("classifier",)), CONFIGS["gpt2"])


def test_fingerprint_sees_weights_and_config():
    cfg, base = CONFIGS["gpt2"], _base("gpt2")
    fp = peft.fingerprint(cfg, base)
    assert fp == peft.fingerprint(cfg, jax.tree_util.tree_map(jnp.copy, base))
    moved = jax.tree_util.tree_map(lambda x: x * 1.001, base)
    assert peft.fingerprint(cfg, moved) != fp
    other = ModelConfig(**{**_SMALL, "family": "decoder", "arch": "gpt2", "norm_eps": 1e-6})
    assert peft.fingerprint(other, base) != fp
