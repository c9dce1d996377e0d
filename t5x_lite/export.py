"""Export a trained run for serving: Hugging Face files or StableHLO (``jax.export``).

    python -m t5x_lite.export --workdir=runs/default --format=hf --out=exports/hf
    python -m t5x_lite.export --workdir=runs/default --format=stablehlo --out=exports/shlo \\
        [--step=N|best] [--platforms=cpu,cuda]

``hf`` writes ``config.json`` + ``model.safetensors`` (:func:`t5x_lite.convert.export_hf`),
``generation_config.json`` (our EOS / pad / BOS ids) and the tokenizer files of
:mod:`t5x_lite.hf.tokenizer` (``AutoTokenizer`` loads them; they add no BOS/EOS, so
``input_ids`` equal ``Tokenizer.encode``). ``transformers`` then loads the directory
with ``AutoModelFor...from_pretrained`` and ``AutoTokenizer.from_pretrained``. A
fine-tuned run is written as the HF class of its head (:mod:`t5x_lite.hf.heads`:
``BertForSequenceClassification``, ``GPT2ForTokenClassification``,
``LlamaForQuestionAnswering``, ...) with ``id2label`` / ``label2id`` from
``task.labels``, and its tokenizer frames inputs as the fine-tuning rows (a decoder's
ends with ``</s>``, the token its sequence head reads; an encoder's is ``[CLS] text
[SEP]``); a T5 label-word classifier stays ``T5ForConditionalGeneration``.
LoRA runs are exported merged; adapter and prefix runs have no HF class (an error
pointing at ``--format=stablehlo``).

``stablehlo`` writes ``forward.jax_export`` (``jax.export.Exported.serialize()``),
``params.npz`` and ``export.json``. ``forward(params, input_ids, attention_mask, ...)``
maps ``int32 [batch, length]`` inputs, both dimensions symbolic (``b, t``; an
encoder-decoder's decoder length is ``s``), to float32 logits ``[batch, length,
vocab]`` (a fine-tuned run: its head's outputs, ``export.json["outputs"]``:
``class_logits [b, classes]``, ``tag_logits [b, t, classes]`` or the pair
``start_logits, end_logits [b, t]``). The parameters are an **argument**, not baked-in
constants: a list of float32 arrays in the order ``export.json["params"]`` names (the
``params.npz`` keys), so the artifact stays small, weights can be swapped, and no 2 GiB
protobuf limit applies. The inputs are ``export.json["inputs"]`` in order. A process
that never imports t5x_lite runs it with jax and numpy only::

    import json, jax, numpy as np
    exp = jax.export.deserialize(open("out/forward.jax_export", "rb").read())
    meta, w = json.load(open("out/export.json")), np.load("out/params.npz")
    logits = exp.call([w[n] for n in meta["params"]], input_ids, attention_mask)

Only the full forward is exported; prefill and single-step decoding with a
key/value cache are not (they follow the cached decoding of :mod:`t5x_lite.decoding`).

Bad input is one ``error: ...`` line and exit status 1 with nothing written: an unknown
``--format``, a workdir without a checkpoint (or without the chosen step), an
``--out`` that already holds files. Files are written into a temporary sibling of
``--out`` and moved into place at the end, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from t5x_lite import convert, paths
from t5x_lite.config import Config, ConfigError
from t5x_lite.config.errors import ArgumentParser
from t5x_lite.hf import heads as hf_heads
from t5x_lite.hf import tokenizer as hf_tokenizer
from t5x_lite.loading import Loaded, choose_step, load, read_config

FORMATS = ("hf", "stablehlo")
FORWARD_FILE = "forward.jax_export"
PARAMS_FILE = "params.npz"
MANIFEST_FILE = "export.json"


# --------------------------------------------------------------------------- checks


def check_out(out: str) -> None:
    """A one-line ConfigError unless ``out`` is absent or an empty directory."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"--out={out} exists and is not a directory")
    if os.path.isdir(out) and os.listdir(out):
        first = sorted(os.listdir(out))[0]
        raise ConfigError(
            f"--out={out} already holds files ({first}, ...); nothing was overwritten: "
            "choose an empty or new directory"
        )


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ConfigError(f"--format={fmt!r} is not one of {', '.join(FORMATS)}")


def check_hf_exportable(cfg: Config) -> None:
    """A one-line ConfigError for a run the HF format cannot hold: adapters and prefixes
    (LoRA merges into the base's kernels; HF classes have no Houlsby adapter or learned
    key/value prefix), and a task head without an HF class."""
    method = cfg.peft.method
    if method in ("adapter", "prefix"):
        raise ConfigError(
            f"--format=hf: a peft.method={method!r} run has no Hugging Face class (HF models "
            f"have no {'Houlsby adapter' if method == 'adapter' else 'learned key/value prefix'}"
            " layers); export it with --format=stablehlo, or train peft.method='lora', which "
            "merges into the base"
        )
    if cfg.model.task_head != "none":
        hf_heads.hf_class(cfg.model)


# --------------------------------------------------------------------------- hf


def write_hf(run: Loaded, out: str) -> list[str]:
    """The Hugging Face files of the module docstring in ``out``; returns their names."""
    cfg = run.config.model
    convert.export_hf(cfg, run.params, out)
    tok = run.tokenizer
    if tok is None:
        raise ConfigError(f"{run.path}: {run.note}; the export needs the run's tokenizer")
    cfg_file = os.path.join(out, "config.json")
    with open(cfg_file, encoding="utf-8") as f:
        hf_config = json.load(f)
    ids = {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id}
    if cfg.family == "encoder_decoder":
        ids["decoder_start_token_id"] = tok.pad_id  # T5 starts decoding from pad
    hf_config.update(ids)
    if cfg.task_head != "none":  # id2label / label2id of the classifying heads
        hf_config.update(hf_heads.config_fields(cfg, tuple(run.config.task.labels)))
    with open(cfg_file, "w", encoding="utf-8") as f:
        json.dump(hf_config, f, indent=2, sort_keys=True)
    with open(os.path.join(out, "generation_config.json"), "w", encoding="utf-8") as f:
        json.dump({**ids, "_from_model_config": False}, f, indent=2, sort_keys=True)
    files = hf_tokenizer.write_tokenizer(
        tok.path,
        out,
        cfg.max_seq_len,
        masked_lm=cfg.family == "encoder",
        task_family=cfg.family if cfg.task_head != "none" else None,
    )
    return ["config.json", "model.safetensors", "generation_config.json", *files]


# --------------------------------------------------------------------------- stablehlo


def input_names(run: Loaded) -> list[str]:
    """Names of the exported forward's int32 inputs, in call order (after params)."""
    cfg = run.config.model
    names = ["input_ids", "attention_mask"]
    if cfg.family == "encoder" and cfg.type_vocab_size:
        names.append("token_type_ids")
    if cfg.family == "encoder_decoder":
        names += ["decoder_input_ids", "decoder_attention_mask"]
    return names


# The forward's outputs per model.task_head (a fine-tuned run returns its head's).
OUTPUTS = {
    "none": ("logits",),
    "sequence": ("class_logits",),
    "token": ("tag_logits",),
    "span": ("start_logits", "end_logits"),
}


def exported_forward(run: Loaded, platforms: tuple[str, ...] | None = None) -> Any:
    """``jax.export.Exported`` of ``forward(params_list, *inputs)``: float32 logits, or
    for a fine-tuned run its head's outputs (:data:`OUTPUTS`; a span head returns the
    pair ``(start_logits, end_logits)``)."""
    cfg = run.config.model
    outputs = OUTPUTS[cfg.task_head]
    leaves, treedef = jax.tree_util.tree_flatten(run.params)
    names = input_names(run)
    model = run.model

    def forward(params: list[jax.Array], *inputs: jax.Array) -> jax.Array:
        batch = dict(zip(names, inputs))
        if cfg.family == "encoder_decoder":
            # Positions [1, T] (the default is [B, T]): T5's relative-position bias
            # branches on a batch dimension of 1, which a symbolic batch cannot decide.
            for prefix in ("", "decoder_"):
                length = batch[f"{prefix}input_ids"].shape[1]
                batch[f"{prefix}positions"] = jnp.arange(length, dtype=jnp.int32)[None]
        p = jax.tree_util.tree_unflatten(treedef, params)
        out = model.apply(p, batch)
        got = tuple(out[k].astype(jnp.float32) for k in outputs)
        return got[0] if len(got) == 1 else got

    # The decoder length of an encoder-decoder is its own dimension ``s``.
    dims = ["b", "t", "s"] if cfg.family == "encoder_decoder" else ["b", "t"]
    limits = tuple(f"{d} <= {cfg.max_seq_len}" for d in dims[1:])
    sym = dict(zip(dims, jax.export.symbolic_shape(", ".join(dims), constraints=limits)))
    shapes = {n: (sym["b"], sym["s"] if n.startswith("decoder_") else sym["t"]) for n in names}
    args = [jax.ShapeDtypeStruct(shapes[n], jnp.int32) for n in names]
    abstract_params = [jax.ShapeDtypeStruct(x.shape, jnp.float32) for x in leaves]
    return jax.export.export(jax.jit(forward), platforms=platforms)(abstract_params, *args)


def param_names(params: Any) -> list[str]:
    """``"decoder/layers_0/attn/query/kernel"``-style names in flatten order."""
    paths = jax.tree_util.tree_flatten_with_path(params)[0]
    return ["/".join(str(getattr(k, "key", k)) for k in path) for path, _ in paths]


def write_stablehlo(run: Loaded, out: str, platforms: tuple[str, ...] | None = None) -> list[str]:
    """``forward.jax_export``, ``params.npz`` and ``export.json`` in ``out``."""
    exp = exported_forward(run, platforms)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, FORWARD_FILE), "wb") as f:
        f.write(exp.serialize())
    names = param_names(run.params)
    leaves = [np.asarray(x, np.float32) for x in jax.tree_util.tree_leaves(run.params)]
    np.savez(os.path.join(out, PARAMS_FILE), **dict(zip(names, leaves)))
    cfg = run.config.model
    manifest = {
        "format": "jax.export",
        "function": {
            "none": "forward(params, *inputs) -> logits float32 [b, t, vocab]",
            "sequence": "forward(params, *inputs) -> class_logits float32 [b, classes]",
            "token": "forward(params, *inputs) -> tag_logits float32 [b, t, classes]",
            "span": "forward(params, *inputs) -> (start_logits, end_logits) float32 [b, t]",
        }[cfg.task_head],
        "outputs": list(OUTPUTS[cfg.task_head]),
        "family": cfg.family,
        "arch": cfg.arch,
        "step": run.step,
        "inputs": input_names(run),
        "input_shapes": {
            n: ["b", "s"] if n.startswith("decoder_") else ["b", "t"] for n in input_names(run)
        },
        "max_length": cfg.max_seq_len,
        "vocab_size": cfg.vocab_size,
        "platforms": list(exp.platforms),
        "params": names,
        "params_file": PARAMS_FILE,
    }
    with open(os.path.join(out, MANIFEST_FILE), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
    return [FORWARD_FILE, PARAMS_FILE, MANIFEST_FILE]


# --------------------------------------------------------------------------- command


def export(
    workdir: str,
    fmt: str,
    out: str,
    step: int | str | None = None,
    platforms: tuple[str, ...] | None = None,
) -> list[str]:
    """Export checkpoint ``step`` (latest if None; ``"best"``: the best checkpoint a
    fine-tuning run kept) of ``workdir`` as ``fmt`` into ``out``.

    Every check (format, ``out``, config, checkpoint step) runs before anything is
    written; the files appear in ``out`` only once all are written. Returns their names.
    """
    check_format(fmt)
    if paths.is_url(out):
        raise ConfigError(
            f"--out={out}: the export is written to a local directory; copy it to the store "
            "afterwards (e.g. gcloud storage cp -r)"
        )
    out = os.path.abspath(out)
    check_out(out)
    paths.check_url(workdir, "--workdir")
    workdir = os.fspath(paths.path(workdir))  # local: absolute; gs://...: as given
    if not paths.path(workdir).is_dir():
        raise ConfigError(f"--workdir={workdir} does not exist")
    cfg = read_config(workdir)
    if fmt == "hf":
        check_hf_exportable(cfg)
    if step != "best":  # load checks the best checkpoint itself
        choose_step(workdir, step)
    run = load(workdir, step)
    tmp = f"{out}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if fmt == "hf":
            files = write_hf(run, tmp)
        else:
            files = write_stablehlo(run, tmp, platforms)
        check_out(out)  # still free: nothing appeared there meanwhile
        if os.path.isdir(out):
            os.rmdir(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return files


def _step(text: str) -> int | str:
    if text == "best":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a step number or 'best'") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(
        prog="python -m t5x_lite.export", description=__doc__.split("\n")[0]
    )
    p.add_argument("--workdir", required=True, help="a t5x_lite run directory")
    p.add_argument("--format", required=True, help=f"one of {', '.join(FORMATS)}")
    p.add_argument("--out", required=True, help="a new or empty directory")
    p.add_argument(
        "--step",
        type=_step,
        default=None,
        help="checkpoint step, or 'best' (a fine-tuning run's best checkpoint; default: latest)",
    )
    p.add_argument(
        "--platforms",
        default=None,
        help="stablehlo: comma-separated jax platforms to lower for (default: this backend)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    platforms = tuple(args.platforms.split(",")) if args.platforms else None
    try:
        files = export(args.workdir, args.format, args.out, args.step, platforms)
    except ConfigError as e:
        text = str(e).strip()
        sys.exit(f"error: {text.splitlines()[0] if text else type(e).__name__}")
    print(json.dumps({"out": os.path.abspath(args.out), "format": args.format, "files": files}))


if __name__ == "__main__":
    main()
