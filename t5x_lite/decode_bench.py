"""Cached decoding against full recomputation, timed: ``python -m t5x_lite.decode_bench``.

Greedy continuation of a ``--prompt_len`` prompt by ``--new_tokens`` tokens (EOS never
stops it) with a randomly initialised model of ``configs/default.py``'s shape
(4 x 128 GPT-2, vocab 2048; ``max_seq_len`` raised to fit the row). ``cached`` is
:func:`t5x_lite.decoding.generate` (one jitted prefill + ``while_loop`` of one-token
steps); ``full`` re-runs the jitted model on the whole ``[1, prompt + new]`` row
(right-padded, causal) for every token, as sampling did before the cache. Compilation
is excluded (one warm-up call each); prints one JSON line with seconds and the speedup.
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from t5x_lite import decoding, models
from t5x_lite.config import ModelConfig
from t5x_lite.config.errors import ArgumentParser


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser(prog="python -m t5x_lite.decode_bench")
    p.add_argument("--prompt_len", type=int, default=16)
    p.add_argument("--new_tokens", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    length = args.prompt_len + args.new_tokens
    cfg = ModelConfig(
        family="decoder", arch="gpt2", vocab_size=2048, d_model=128, num_heads=4,
        num_layers=4, d_ff=512, max_seq_len=max(512, length), norm_eps=1e-5,
    )  # fmt: skip
    params = models.init_params(cfg, jax.random.key(0))
    prompt = list(np.random.default_rng(0).integers(3, 2048, args.prompt_len))
    opts = decoding.Options(max_new_tokens=args.new_tokens, eos_id=-1)
    module = models.build(cfg)
    forward = jax.jit(lambda p, ids: module.apply({"params": p}, {"input_ids": ids})["logits"][0])

    def cached() -> list[int]:
        return decoding.generate(cfg, params, [prompt], opts)["tokens"][0].tolist()

    def full() -> list[int]:
        row = np.zeros((1, length), np.int32)
        row[0, : len(prompt)] = prompt
        n = len(prompt)
        for _ in range(args.new_tokens):
            nxt = int(jnp.argmax(forward(params, row)[n - 1]))
            row[0, n] = nxt
            n += 1
        return row[0, len(prompt) :].tolist()

    assert cached() == full(), "cached and full greedy tokens differ"  # also the warm-up
    times = {}
    for name, fn in (("cached", cached), ("full", full)):
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        times[name] = best
    print(json.dumps({
        "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
        "cached_s": round(times["cached"], 4), "full_s": round(times["full"], 4),
        "cached_tokens_per_s": round(args.new_tokens / times["cached"], 1),
        "speedup": round(times["full"] / times["cached"], 2),
        "devices": str(jax.devices()[0].device_kind), "jax": jax.__version__,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
