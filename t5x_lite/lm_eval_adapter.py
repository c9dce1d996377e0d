"""A t5x_lite run as a model of EleutherAI's lm-eval harness (the ``lm-eval`` package).

The command a user types (local task YAMLs under ``--include_path``)::

    python -m t5x_lite.lm_eval_adapter --model_args path=runs/default \\
        --tasks kjv_mc --include_path tests/data/fewshot [--num_fewshot 2 --output_path out/]

It is ``lm-eval run`` with ``--model t5x_lite`` registered first; every other flag is
lm-eval's. From Python::

    import lm_eval, t5x_lite.lm_eval_adapter as A
    A.register()
    lm_eval.simple_evaluate(model="t5x_lite", model_args="path=runs/default", tasks=[...],
                            task_manager=lm_eval.tasks.TaskManager(include_path="tasks/"))

``model_args``: ``path`` (a workdir or an HF directory, :func:`t5x_lite.load`), ``step``,
``max_length`` (default ``model.max_seq_len``), ``max_gen_toks`` (256); lm-eval's own
``--batch_size`` sets the rows per call (16 from Python by default). The model implements:

* ``loglikelihood``: lm-eval's pair encoding, then :class:`t5x_lite.scoring.Scorer`
  (``(logprob, is_greedy)``; an empty context conditions on EOS, lm-eval's
  ``prefix_token_id``); decoders and T5 (``backend`` ``causal`` / ``seq2seq``).
* ``loglikelihood_rolling``: lm-eval's disjoint rolling windows of ``max_length`` tokens
  (``get_rolling_token_windows`` with ``context_len=1``), each scored by the same scorer
  and summed, so text longer than the context is scored token by token exactly once.
* ``generate_until``: :func:`t5x_lite.decoding.generate` (KV cache; greedy unless
  ``do_sample`` with a ``temperature``), ``max_gen_toks`` new tokens at most, the text cut
  at the first ``until`` string; the context keeps its last ``max_length -
  max_gen_toks`` tokens (decoders).

lm-eval is imported only by :func:`register`, :func:`model_class` and the command
line: ``import t5x_lite`` never needs it.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Sequence
from typing import Any

from t5x_lite import decoding, paths
from t5x_lite.config import ConfigError
from t5x_lite.scoring import Scorer

NAME = "t5x_lite"


def _int(value: Any, name: str, default: int | None) -> int | None:
    if value is None or value == "auto":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"model_args {name}={value!r} is not an integer") from None


@functools.cache
def model_class() -> type:
    """The lm-eval ``TemplateLM`` subclass (imports lm-eval)."""
    from lm_eval.api.model import TemplateLM
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    class T5xLiteLM(TemplateLM):
        """lm-eval model over a loaded t5x_lite run (see the module docstring)."""

        def __init__(
            self,
            path: str | None = None,
            step: Any = None,
            batch_size: Any = 16,
            max_length: Any = None,
            max_gen_toks: Any = 256,
            **_: Any,  # lm-eval passes device, max_batch_size, ... to every model
        ) -> None:
            super().__init__()
            if not path:
                raise ConfigError("model_args needs path=DIR (a t5x_lite workdir or HF dir)")
            from t5x_lite.loading import load

            self.run = load(path, _int(step, "step", None))
            if self.run.tokenizer is None:
                raise ConfigError(f"{path}: {self.run.note}")
            self.scorer = Scorer(
                self.run, _int(batch_size, "batch_size", 16), _int(max_length, "max_length", None)
            )
            self.tokenizer = self.run.tokenizer
            self.backend = "seq2seq" if self.scorer.family == "encoder_decoder" else "causal"
            self.max_length = self.scorer.max_length
            self.max_gen_toks = int(_int(max_gen_toks, "max_gen_toks", 256))
            self.batch_size = self.scorer.batch_size

        @property
        def eot_token_id(self) -> int:
            return int(self.tokenizer.eos_id)

        def tok_encode(self, string: str, add_special_tokens: bool | None = None, **_) -> list[int]:
            return list(self.tokenizer.encode(string))

        def tok_decode(self, tokens: Sequence[int], **_) -> str:
            return self.tokenizer.decode([int(t) for t in tokens])

        def _loglikelihood_tokens(self, requests: list, **_: Any) -> list[tuple[float, bool]]:
            # requests: ((context, continuation), context_ids, continuation_ids)
            return self.scorer.score([(c, t) for _, c, t in requests])

        def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
            pairs, owner = [], []
            for i, req in enumerate(requests):
                (text,) = req.args
                windows = get_rolling_token_windows(
                    self.tok_encode(text), self.prefix_token_id, self.max_length, 1
                )
                for context, pred in map(make_disjoint_window, windows):
                    pairs.append((context, pred))
                    owner.append(i)
            totals = [0.0] * len(requests)
            for i, (logp, _) in zip(owner, self.scorer.score(pairs), strict=True):
                totals[i] += logp
            return totals

        def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
            out: list[str] = [""] * len(requests)
            groups: dict[tuple, list[int]] = {}
            for i, req in enumerate(requests):
                kwargs = dict(req.args[1]) if len(req.args) > 1 else {}
                groups.setdefault(_options_key(kwargs, self.max_gen_toks), []).append(i)
            for (until, max_new, temperature, top_k, top_p, seed), rows in groups.items():
                prompts = [self._prompt(requests[i].args[0], max_new) for i in rows]
                new = min(max_new, self.max_length - 1)
                for start in range(0, len(rows), self.batch_size):
                    batch = rows[start : start + self.batch_size]
                    texts = generate_texts(
                        self.run, prompts[start : start + self.batch_size], new,
                        temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                    )  # fmt: skip
                    for i, text in zip(batch, texts, strict=True):
                        out[i] = cut_at(text, until)
            return out

        def _prompt(self, context: str, max_new: int) -> list[int]:
            ids = self.tok_encode(context) or [self.eot_token_id]
            if self.backend == "causal":
                keep = max(self.max_length - min(max_new, self.max_length - 1), 1)
                return ids[-keep:]
            return [*ids[-(self.max_length - 1) :], self.eot_token_id]

    return T5xLiteLM


def _options_key(kwargs: dict[str, Any], default_max: int) -> tuple:
    """Hashable ``(until, max_gen_toks, temperature, top_k, top_p, seed)`` of lm-eval's
    ``gen_kwargs`` (greedy unless ``do_sample`` is true)."""
    until = kwargs.pop("until", None) or []
    if isinstance(until, str):
        until = [until]
    max_new = int(kwargs.pop("max_gen_toks", kwargs.pop("max_new_tokens", default_max)))
    sample = bool(kwargs.pop("do_sample", False))
    temperature = float(kwargs.pop("temperature", 0.0) or 0.0) if sample else 0.0
    top_k = int(kwargs.pop("top_k", 0) or 0)
    top_p = float(kwargs.pop("top_p", 1.0) or 1.0)
    seed = int(kwargs.pop("seed", 0) or 0)
    return tuple(until), max_new, temperature, top_k, top_p, seed


def cut_at(text: str, until: Sequence[str]) -> str:
    """``text`` up to the first occurrence of any stop string:
    ``cut_at("a b\\n\\nc", ["\\n\\n"]) == "a b"``."""
    for stop in until:
        if stop and stop in text:
            text = text.split(stop, 1)[0]
    return text


def generate_texts(
    run: Any,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
) -> list[str]:
    """The decoded continuation of every prompt (ids), EOS and what follows dropped."""
    tok = run.tokenizer
    opts = decoding.Options(
        max_new_tokens=max_new_tokens, eos_id=int(tok.eos_id), pad_id=0,
        temperature=temperature, top_k=top_k, top_p=top_p,
    )  # fmt: skip
    allowed = decoding.allowed_ids(tok, run.config.model.vocab_size)
    out = decoding.generate(run.config.model, run.params, prompts, opts, seed, allowed)
    texts = []
    for row, n in zip(out["tokens"], out["lengths"], strict=True):
        ids = [int(t) for t in row[: int(n)]]
        if ids and ids[-1] == tok.eos_id:
            ids = ids[:-1]
        texts.append(tok.decode(ids))
    return texts


def register() -> type:
    """Register the model as ``t5x_lite`` in lm-eval's registry; returns its class."""
    import lm_eval.models  # noqa: F401  (lm-eval's own lazy table first)
    from lm_eval.api.registry import model_registry, register_model

    cls = model_class()
    if NAME not in model_registry:
        register_model(NAME)(cls)
    return cls


def check_model_args(args: list[str]) -> None:
    """A one-line ConfigError unless ``--model_args`` names an existing ``path=DIR``:
    ``["--model_args", "batch_size=2"]`` gives ``model_args needs path=DIR (a t5x_lite
    workdir or HF dir)``, ``path=runs/nothing`` that it is not a directory."""
    values = ""
    for i, a in enumerate(args):
        if a == "--model_args" and i + 1 < len(args):
            values = args[i + 1]
        elif a.startswith("--model_args="):
            values = a.split("=", 1)[1]
    fields = dict(kv.split("=", 1) for kv in values.split(",") if "=" in kv)
    path = fields.get("path")
    if not path:
        raise ConfigError("model_args needs path=DIR (a t5x_lite workdir or HF dir)")
    paths.check_url(path, "model_args path")
    if not paths.path(path).is_dir():
        raise ConfigError(f"model_args path={path} is not a directory")


def main(argv: list[str] | None = None) -> None:
    """``lm-eval run --model t5x_lite ARGS`` with the model registered."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "run":
        args = args[1:]
    if "--model" in args or any(a.startswith("--model=") for a in args):
        sys.exit("error: --model is t5x_lite here; pass the run as --model_args path=DIR")
    try:  # before lm-eval (and torch, datasets) is imported: seconds, not a minute
        check_model_args(args)
    except ConfigError as e:
        sys.exit(f"error: {e}")
    register()
    from lm_eval._cli import HarnessCLI
    from lm_eval.utils import setup_logging

    setup_logging()
    parser = HarnessCLI()
    sys.argv = ["lm-eval", "run", "--model", NAME, *args]
    try:
        parser.execute(parser.parse_args())
    except ConfigError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()


__all__ = ["NAME", "cut_at", "generate_texts", "main", "model_class", "register"]
