"""Hugging Face directory I/O (t5x_lite.convert): bfloat16 checkpoints, bad files, no overwrites.

The reference for numerics is ``transformers`` on torch CPU: a random
``LlamaForCausalLM`` saved in bfloat16, as most published Llama checkpoints are.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil

import hf_parity
import jax
import ml_dtypes
import numpy as np
import pytest
import torch
import transformers

from t5x_lite import convert
from t5x_lite.config import ConfigError

VOCAB = 61


def _llama() -> torch.nn.Module:
    return hf_parity.random_hf_model(
        transformers.LlamaConfig,
        transformers.LlamaForCausalLM,
        dict(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
            rms_norm_eps=1e-5, bos_token_id=None, eos_token_id=None,
        ),
        seed=0,
    )  # fmt: skip


def _header(file: str) -> dict:
    with open(file, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(n))


@pytest.fixture(scope="module")
def bf16_dir(tmp_path_factory):
    """``(path, reference)``: the file holds only BF16 tensors; the reference is that
    file loaded by transformers in float32 (bf16 weights upcast; RoPE frequencies
    computed in float32, which ``.to(bfloat16).float()`` would have rounded)."""
    path = str(tmp_path_factory.mktemp("llama_bf16"))
    _llama().to(torch.bfloat16).save_pretrained(path)
    ref = transformers.LlamaForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager"
    )
    assert ref.model.embed_tokens.weight.dtype == torch.float32
    return path, ref.eval()


def test_bfloat16_llama_imports_and_matches_transformers(bf16_dir):
    path, ref_model = bf16_dir
    header = _header(os.path.join(path, "model.safetensors"))
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"BF16"}
    cfg, params = convert.import_hf(path)
    assert (cfg.arch, cfg.kv_heads, cfg.activation) == ("llama", 2, "silu")
    leaves = jax.tree_util.tree_leaves(params)
    assert {x.dtype for x in leaves} == {np.dtype("float32")}
    batch = {"input_ids": np.random.RandomState(0).randint(0, VOCAB, (2, 9)).astype(np.int32)}
    ref = hf_parity.hf_outputs(ref_model, batch)
    assert np.abs(ref["logits"]).max() > 1.0  # random weights give O(1) logits
    hf_parity.assert_outputs_close(hf_parity.our_outputs(cfg, params, batch), ref, atol=1e-4)


def test_read_safetensors_bfloat16_values(tmp_path):
    """Hand-written file: BF16 [2, 3] and an int64 buffer, decoded exactly."""
    values = np.array([[1.0, -2.5, 0.15625], [3e38, -0.0, 7.0]], np.float32)
    raw = values.astype(ml_dtypes.bfloat16).tobytes()
    ints = np.array([0, 1, 2], np.int64).tobytes()
    header = {
        "w": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, len(raw)]},
        "pos": {"dtype": "I64", "shape": [3], "data_offsets": [len(raw), len(raw) + len(ints)]},
        "__metadata__": {"format": "pt"},
    }
    blob = json.dumps(header).encode()
    file = tmp_path / "x.safetensors"
    file.write_bytes(len(blob).to_bytes(8, "little") + blob + raw + ints)
    got = convert.read_safetensors(str(file))
    assert got["w"].dtype == np.float32
    want = values.astype(ml_dtypes.bfloat16).astype(np.float32)  # 3e38 rounds in bf16
    np.testing.assert_array_equal(got["w"], want)
    assert got["w"][0, 2] == 0.15625  # exactly representable values survive unchanged
    assert got["pos"].dtype == np.int64 and got["pos"].tolist() == [0, 1, 2]


# --------------------------------------------------------------------------- bad files


def _copy(src: str, dst) -> str:
    shutil.copytree(src, dst)
    return str(dst)


def test_malformed_config_json_is_one_line_error(bf16_dir, tmp_path):
    path = _copy(bf16_dir[0], tmp_path / "bad")
    with open(os.path.join(path, "config.json"), "w") as f:
        f.write('{"model_type": "llama", "hidden_size": 32,\n')
    with pytest.raises(ConfigError, match="not valid JSON") as err:
        convert.import_hf(path)
    assert os.path.join(path, "config.json") in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("keep", [0.5, 0.001])
def test_truncated_safetensors_is_one_line_error(bf16_dir, tmp_path, keep):
    """Cut in the data (half kept) or inside the header (first bytes only)."""
    path = _copy(bf16_dir[0], tmp_path / "bad")
    file = os.path.join(path, "model.safetensors")
    data = pathlib.Path(file).read_bytes()
    pathlib.Path(file).write_bytes(data[: max(10, int(len(data) * keep))])
    with pytest.raises(ConfigError, match="not a valid safetensors file") as err:
        convert.import_hf(path)
    assert file in str(err.value) and "\n" not in str(err.value)


def test_corrupt_safetensors_header_is_one_line_error(bf16_dir, tmp_path):
    path = _copy(bf16_dir[0], tmp_path / "bad")
    file = os.path.join(path, "model.safetensors")
    data = bytearray(pathlib.Path(file).read_bytes())
    data[8:16] = b"\xff" * 8  # the JSON header now starts with invalid bytes
    pathlib.Path(file).write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="header is not JSON") as err:
        convert.import_hf(path)
    assert file in str(err.value) and "\n" not in str(err.value)


# --------------------------------------------------------------------------- export


@pytest.mark.parametrize("existing", ["config.json", "model.safetensors", "shard.safetensors"])
def test_export_never_overwrites(bf16_dir, tmp_path, existing):
    cfg, params = convert.import_hf(bf16_dir[0])
    out = tmp_path / "user_dir"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (out / existing).write_bytes(b"user bytes \x00\x01")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ConfigError, match="already exists") as err:
        convert.export_hf(cfg, params, str(out))
    assert str(out / existing) in str(err.value) and "\n" not in str(err.value)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_export_into_directory_with_other_files(bf16_dir, tmp_path):
    """Files other than config.json / *.safetensors do not block an export."""
    cfg, params = convert.import_hf(bf16_dir[0])
    out = tmp_path / "out"
    out.mkdir()
    (out / "README.md").write_text("notes")
    convert.export_hf(cfg, params, str(out))
    assert sorted(os.listdir(out)) == ["README.md", "config.json", "model.safetensors"]
    cfg2, params2 = convert.import_hf(str(out))
    assert cfg2 == cfg
    jax.tree_util.tree_map(np.testing.assert_array_equal, params2, params)
