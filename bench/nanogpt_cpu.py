"""The tiny GPT train step of t5x_lite against nanoGPT's PyTorch step, interleaved in one run.

nanoGPT's ``model.py`` is imported from a checkout given on the command line (none of
its code is part of this project)::

    python bench/nanogpt_cpu.py --nanogpt /tmp/nanogpt --rounds 7 --steps 5

Both sides train the same shape (issue 11.4): 4 layers, 4 heads, width 256, MLP
1024, block 256, batch 16, vocab 8192, float32, dropout 0, biases and a tied head as
GPT-2, AdamW (lr 6e-4, betas 0.9/0.95, eps 1e-8, weight decay 0.1, gradient
clipping at 1.0: t5x_lite's defaults and nanoGPT's ``train.py``). t5x_lite runs the
trainer's jitted, donated step (:func:`t5x_lite.steps.for_config`, the batch layout
of :func:`t5x_lite.bench.synthetic_batch`); nanoGPT runs ``model(x, y)``,
``loss.backward()``, ``clip_grad_norm_``, ``optimizer.step()``, ``zero_grad``.

Timing: after ``--warmup`` untimed steps each (t5x_lite's first step compiles), each
of ``--rounds`` rounds times ``--steps`` steps of one side then of the other (the
order alternates every round), so machine load hits both alike. torch runs on
``--threads`` intra-op threads (``torch.set_num_threads``; default: every core);
XLA's CPU backend uses every core. Pin both to the same cores with ``taskset``.

Prints one JSON line: per side the median tokens/s over rounds and its min/max, the
per-round ratios and their median ``ratio`` (t5x_lite / nanoGPT).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from typing import Any

import jax
import numpy as np

from t5x_lite import bench, partitioning, steps
from t5x_lite import config as C

# The shape (and nanoGPT's GPTConfig names for it).
SHAPE = dict(num_layers=4, num_heads=4, d_model=256, d_ff=1024, seq=256, batch=16, vocab=8192)
OPTIMIZER = dict(learning_rate=6e-4, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1,
                 grad_clip_norm=1.0)  # fmt: skip


def t5x_config(activation: str, packed: bool) -> C.Config:
    """The gpt2 config of :data:`SHAPE` (GPT-2's biases, tied head; dropout 0)."""
    s = SHAPE
    model = dict(
        family="decoder", arch="gpt2", vocab_size=s["vocab"], d_model=s["d_model"],
        num_heads=s["num_heads"], num_layers=s["num_layers"], d_ff=s["d_ff"],
        max_seq_len=s["seq"], norm_eps=1e-5, activation=activation,
        dtype="float32", dropout_rate=0.0, remat_policy="none",
    )  # fmt: skip
    return C.from_dict(
        {
            "model": model,
            "data": dict(corpus="kjv", objective="causal_lm", seq_len=s["seq"]),
            "optimizer": dict(OPTIMIZER, warmup_steps=0, schedule="constant"),
            "train": dict(batch_size=s["batch"], num_steps=1000),
        }
    )


class T5xSide:
    """The trainer's jitted step on one synthetic batch (state donated step to step)."""

    name = "t5x_lite"

    def __init__(self, activation: str, packed: bool):
        self.cfg = t5x_config(activation, packed)
        devices = jax.devices()
        self.cfg.mesh.resolve(len(devices))
        mesh = partitioning.make_mesh(self.cfg.mesh, devices)
        self.steps = steps.for_config(self.cfg, mesh)
        batch = bench.synthetic_batch(self.cfg)
        if not packed:  # nanoGPT's rows: one document each, no segment ids
            batch = {k: batch[k] for k in ("input_ids", "labels", "loss_weights")}
        with jax.set_mesh(mesh):
            self.batch = jax.device_put(batch, self.steps.batch_sharding)
        self.state = self.steps.run(self.steps.init, jax.random.key(0))
        self.params = int(sum(x.size for x in jax.tree_util.tree_leaves(self.state.params)))

    def run(self, n: int) -> float:
        """Seconds for ``n`` steps dispatched back to back, until the last finishes."""
        t0 = time.perf_counter()
        for _ in range(n):
            self.state, metrics = self.steps.run(self.steps.train, self.state, self.batch)
        jax.block_until_ready((self.state, metrics))
        self.loss = float(metrics["loss"])
        return time.perf_counter() - t0


def model_file(path: str) -> str:
    """``PATH/model.py``, or a ConfigError naming ``--nanogpt`` when it is not there."""
    file = os.path.join(path, "model.py")
    if not os.path.isfile(file):
        raise C.ConfigError(f"--nanogpt={path}: no model.py there (a nanoGPT checkout)")
    return file


class NanoGptSide:
    """nanoGPT's GPT and AdamW (``configure_optimizers``) on one random batch."""

    name = "nanogpt"

    def __init__(self, path: str, threads: int):
        import torch

        file = model_file(path)
        spec = importlib.util.spec_from_file_location("nanogpt_model", file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        s = SHAPE
        conf = module.GPTConfig(
            block_size=s["seq"], vocab_size=s["vocab"], n_layer=s["num_layers"],
            n_head=s["num_heads"], n_embd=s["d_model"], dropout=0.0, bias=True,
        )  # fmt: skip
        self.torch = torch
        # nanoGPT prints its parameter counts; keep stdout for the JSON line.
        stdout, sys.stdout = sys.stdout, sys.stderr
        try:
            self.model = module.GPT(conf)
            self.model.train()
            self.opt = self.model.configure_optimizers(
                OPTIMIZER["weight_decay"], OPTIMIZER["learning_rate"],
                (OPTIMIZER["b1"], OPTIMIZER["b2"]), "cpu",
            )  # fmt: skip
        finally:
            sys.stdout = stdout
        g = torch.Generator().manual_seed(0)
        self.x = torch.randint(1, s["vocab"], (s["batch"], s["seq"]), generator=g)
        self.y = torch.randint(1, s["vocab"], (s["batch"], s["seq"]), generator=g)
        self.params = sum(p.numel() for p in self.model.parameters())

    def run(self, n: int) -> float:
        torch = self.torch
        t0 = time.perf_counter()
        for _ in range(n):
            _, loss = self.model(self.x, self.y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), OPTIMIZER["grad_clip_norm"])
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        self.loss = float(loss.detach())
        return time.perf_counter() - t0


def measure(sides: list[Any], rounds: int, n: int, warmup: int) -> dict[str, list[float]]:
    """Tokens/s of each side per round; the first side alternates every round."""
    tokens = SHAPE["batch"] * SHAPE["seq"] * n
    for side in sides:
        side.compile_s = side.run(1)
        side.run(warmup)
    out: dict[str, list[float]] = {side.name: [] for side in sides}
    for r in range(rounds):
        order = sides if r % 2 == 0 else sides[::-1]
        for side in order:
            out[side.name].append(tokens / side.run(n))
    return out


def summary(rates: list[float]) -> dict[str, float]:
    return {
        "tokens_per_s": round(statistics.median(rates), 1),
        "min": round(min(rates), 1),
        "max": round(max(rates), 1),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nanogpt", required=True, help="directory holding nanoGPT's model.py")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=5, help="steps per side per round")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--activation", default="gelu", help="gelu (nanoGPT's nn.GELU) | gelu_new")
    p.add_argument("--packed", action="store_true",
                   help="feed segment_ids/positions as the trainer's packed rows do")  # fmt: skip
    args = p.parse_args(argv)
    try:
        if args.rounds < 1 or args.steps < 1 or args.warmup < 0:
            raise C.ConfigError("--rounds and --steps must be >= 1, --warmup >= 0")
        model_file(args.nanogpt)  # before any compilation
        sides = [T5xSide(args.activation, args.packed), NanoGptSide(args.nanogpt, args.threads)]
    except C.ConfigError as e:
        sys.exit(f"error: {e}")
    rates = measure(sides, args.rounds, args.steps, args.warmup)
    ours, theirs = rates["t5x_lite"], rates["nanogpt"]
    ratios = [a / b for a, b in zip(ours, theirs)]
    import torch

    record = {
        "shape": SHAPE,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "cores": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "activation": args.activation,
        "packed": args.packed,
        "t5x_lite": {**summary(ours), "params": sides[0].params,
                     "compile_s": round(sides[0].compile_s, 2), "loss": sides[0].loss},
        "nanogpt": {**summary(theirs), "params": sides[1].params, "loss": sides[1].loss},
        "ratios": [round(r, 3) for r in ratios],
        "ratio": round(statistics.median(ratios), 3),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "jax": jax.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
    }  # fmt: skip
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
