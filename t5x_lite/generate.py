"""Generate from a trained run: ``python -m t5x_lite.generate --workdir=DIR --prompt=TEXT``.

Loads the run's ``config.json``, ``tokenizer.model`` and the parameters of its latest
checkpoint (:func:`t5x_lite.load`; decoding runs on a data-parallel mesh of this
machine's devices),
then continues the prompt with cached decoding (:func:`t5x_lite.decoding.generate`):

    python -m t5x_lite.generate --workdir=runs/default --prompt="In the beginning" \\
        [--max_new_tokens=64 --temperature=0.8 --top_k=40 --top_p=0.95 --num_beams=1 \\
         --alpha=0.6 --seed=0]

Decoders print the prompt and its continuation; encoder-decoders (T5) print the
decoder's output for the prompt as encoder input; encoders fill the prompt's
``[MASK]`` markers (the ``--top_k`` most likely ids each, 5 by default). With
``--num_beams > 1`` every beam is printed with its score. Temperature 0 (the default)
is greedy. A workdir without a run or a checkpoint, or a prompt longer than the
model's context (``model.max_seq_len``), is a one-line error.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import jax
from jax.sharding import NamedSharding, PartitionSpec

from t5x_lite import decoding, partitioning, paths
from t5x_lite.config import Config, ConfigError, MeshConfig
from t5x_lite.config.errors import ArgumentParser
from t5x_lite.preflight import CONFIG_FILE, TOKENIZER_FILE

MASK = "[MASK]"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(
        prog="python -m t5x_lite.generate", description=__doc__.split("\n")[0]
    )
    p.add_argument("--workdir", required=True, help="a run directory written by run_train.py")
    p.add_argument("--prompt", required=True, help="text to continue (encoders: with [MASK])")
    p.add_argument("--max_new_tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top_k", type=int, default=0, help="0 = off (encoders: predictions per mask)")
    p.add_argument("--top_p", type=float, default=1.0, help="1 = off")
    p.add_argument("--num_beams", type=int, default=1, help="> 1: beam search")
    p.add_argument("--alpha", type=float, default=0.6, help="beam length penalty exponent")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def _check_workdir(workdir: str) -> None:
    paths.check_url(workdir, "--workdir")
    if not paths.path(workdir, CONFIG_FILE).is_file():
        raise ConfigError(f"{workdir} holds no run ({CONFIG_FILE} missing)")
    if not paths.path(workdir, TOKENIZER_FILE).is_file():
        raise ConfigError(f"{workdir} holds no {TOKENIZER_FILE}")


def load(workdir: str) -> tuple[Config, Any, Any, Any, int]:
    """``(config, tokenizer, mesh, params, step)`` of the latest checkpoint in
    ``workdir`` (:func:`t5x_lite.load`: only the parameters are read; PEFT runs come
    merged into their base), with a data-parallel mesh of this machine's devices for
    the decoding cache."""
    from t5x_lite import loading

    _check_workdir(workdir)
    run = loading.load(workdir)
    mesh = partitioning.make_mesh(MeshConfig(data=-1, fsdp=1, tensor=1))
    # Replicated on the data-parallel mesh (prompts and the cache split over it).
    params = jax.device_put(run.params, NamedSharding(mesh, PartitionSpec()))
    return run.config, run.tokenizer, mesh, params, run.step


def _encode_masked(tokenizer: Any, text: str) -> list[int]:
    """``text`` with every ``[MASK]`` marker as ``tokenizer.mask_id``."""
    ids: list[int] = []
    for i, part in enumerate(text.split(MASK)):
        if i:
            ids.append(int(tokenizer.mask_id))
        if part.strip():
            ids.extend(tokenizer.encode(part.strip()))
    return ids


def prompt_ids(model: Any, tok: Any, prompt: str, max_new_tokens: int) -> tuple[list[int], int]:
    """``(ids, new tokens)`` of ``prompt`` for ``model`` (a ModelConfig), or a one-line
    ConfigError (a prompt beyond the context, no ``[MASK]`` for an encoder, ...): checked
    from the config and tokenizer alone, before any parameter is read."""
    context = model.max_seq_len
    if model.family == "encoder":
        ids = _encode_masked(tok, prompt)
        if len(ids) > context:
            raise ConfigError(f"prompt has {len(ids)} tokens; the model's context is {context}")
        if tok.mask_id not in ids:
            raise ConfigError(f"an encoder fills {MASK} markers; the prompt has none")
        return ids, 0
    ids = list(tok.encode(prompt))
    if not ids:
        raise ConfigError("the prompt encodes to no tokens")
    room = context - 1 if model.family == "decoder" else context  # a decoder needs one new slot
    if len(ids) > room:
        raise ConfigError(f"prompt has {len(ids)} tokens; the model's context is {context}")
    new = max_new_tokens
    if model.family == "decoder":
        new = min(new, context - len(ids))
    if new <= 0:
        raise ConfigError(f"--max_new_tokens={max_new_tokens} must be positive")
    return ids, new


def run(args: argparse.Namespace) -> list[str]:
    """The lines :func:`main` prints."""
    from t5x_lite.data.tokenizer import Tokenizer
    from t5x_lite.loading import read_config

    _check_workdir(args.workdir)
    ids, new = prompt_ids(
        read_config(args.workdir).model,
        Tokenizer(paths.path(args.workdir, TOKENIZER_FILE)),
        args.prompt,
        args.max_new_tokens,
    )
    cfg, tok, mesh, params, step = load(args.workdir)
    m = cfg.model
    if m.family == "encoder":
        allowed = decoding.allowed_ids(tok, m.vocab_size)
        k = args.top_k or 5
        lines = [f"step {step}: {decoding.printable(args.prompt)}"]
        filled = decoding.fill_mask(m, params, [ids], tok.mask_id, k, allowed=allowed)[0]
        for pos, top, probs in filled:
            guesses = ", ".join(
                f"{decoding.printable(tok.decode([t]))!r} {p:.3f}"
                for t, p in zip(top, probs, strict=True)
            )
            lines.append(f"[MASK] at {pos}: {guesses}")
        return lines
    opts = decoding.Options(
        max_new_tokens=new,
        eos_id=int(tok.eos_id),
        pad_id=0,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        num_beams=args.num_beams,
        alpha=args.alpha,
    )
    allowed = decoding.allowed_ids(tok, m.vocab_size)
    out = decoding.generate(m, params, [ids], opts, args.seed, allowed, mesh)
    prefix = ids if m.family == "decoder" else []

    def text(tokens: Any, length: int) -> str:
        body = [int(t) for t in tokens[:length] if int(t) != tok.eos_id]
        return decoding.printable(tok.decode(prefix + body))

    if args.num_beams > 1:
        return [
            f"beam {w} (score {float(out['scores'][0, w]):.4f}): "
            + text(out["beams"][0, w], int(out["beam_lengths"][0, w]))
            for w in range(args.num_beams)
        ]
    return [text(out["tokens"][0], int(out["lengths"][0]))]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        lines = run(args)
    except ConfigError as e:
        sys.exit(f"error: {e}")
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
