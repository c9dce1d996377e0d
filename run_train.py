"""Pretrain a Transformer: flags -> typed Config -> ``t5x_lite.trainer.train``.

With no flags, trains the default small decoder (``configs/default.py``) on the
embedded King James Bible on this machine's CPU in about ten minutes::

    python run_train.py

Choose a preset (a file or a bare name: ``--config=llama_tiny``) and override any
field (ml_collections; unknown fields are errors)::

    python run_train.py --config=configs/llama_tiny.py --config.train.num_steps=500 \\
        --config.mesh.fsdp=2 --workdir=runs/llama

or the same experiment as gin (T5X style)::

    python run_train.py --gin_file=gin/llama_tiny.gin --gin.train.num_steps=500

With ``scaling.flops_budget > 0`` the compute-optimal plan
(:func:`t5x_lite.scaling.apply_plan`) replaces the model shape and step count here,
before the trainer sees the config; the plan is logged as one ``scaling plan:`` line.

Running again on a workdir that holds checkpoints resumes from the latest one;
SIGTERM / Ctrl-C save a checkpoint at the current step first. Multi-host: under
``srun``, ``mpirun``, on a Cloud TPU slice or a JobSet the cluster is detected
(:mod:`t5x_lite.cluster`); elsewhere ``--coordinator_address=host:port
--num_processes=N --process_id=i`` on every host (``docs/multihost.md``).
"""

from __future__ import annotations

import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from t5x_lite import presets
from t5x_lite.config import ConfigError
from t5x_lite.gin_config import rewrite_argv

DEFAULT_CONFIG = "default"  # the no-flag run (configs/default.py): a small GPT-2, ~10 min on a CPU

# The default preset is the flag's default, so `--config.<field>=` overrides work on
# the no-flag run too (`python run_train.py --config.train.num_steps=2`).
_CONFIG = config_flags.DEFINE_config_file(
    "config",
    presets.find(DEFAULT_CONFIG),
    "Preset: configs/<name>.py or <name>, [:variant[,variant]]; fields via --config.<field>=.",
    lock_config=True,
)
_GIN_FILES = flags.DEFINE_multi_string(
    "gin_file", [], "gin file(s) (gin/<name>.gin); bindings via --gin.<section.field>=."
)
_GIN_BINDINGS = flags.DEFINE_multi_string("gin_bindings", [], "Extra gin bindings.")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory (default runs/<preset name>); resumes if it has checkpoints."
)
_HOST_DEVICES = flags.DEFINE_integer(
    "host_devices", None, "Split the CPU into this many devices (to try meshes on a CPU)."
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 (multi-host; with the two below)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Index of this process.")
_CLUSTER = flags.DEFINE_string(
    "cluster",
    "auto",
    "Multi-process start: auto (SLURM, Open MPI, Cloud TPU, JobSet from the environment), "
    "none, explicit (the three flags above), slurm, ompi, tpu or k8s.",
)
_INIT_TIMEOUT = flags.DEFINE_integer(
    "init_timeout", 300, "Seconds to wait for the coordinator before a one-line error."
)
_ALLOW_REPEATS = flags.DEFINE_bool(
    "allow_repeats",
    False,
    "Let a run planned with scaling.flops_budget take more tokens than the corpus holds.",
)
_PRINT_CONFIG = flags.DEFINE_bool(
    "print_config",
    False,
    "Print the resolved config (scaling plan applied) as JSON and exit without training.",
)


def _config_name() -> str:
    if _GIN_FILES.value:
        return os.path.splitext(os.path.basename(_GIN_FILES.value[-1]))[0]
    path = _preset_path() if flags.FLAGS["config"].present else DEFAULT_CONFIG
    return os.path.splitext(os.path.basename(path))[0]


def _preset_path() -> str:
    """The preset file of ``--config=PATH[:variant]`` (ml_collections keeps the variant)."""
    return flags.FLAGS["config"].config_filename.split(":", 1)[0]


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing with one-line errors (unknown ``--config.<field>`` included).

    ``--config=NAME[:variant]`` (a bare preset name) becomes the preset's file path.
    """
    try:
        argv = presets.resolve_flag(rewrite_argv(argv))
    except ConfigError as e:
        sys.exit(f"error: {e}")
    try:
        return flags.FLAGS(argv)
    except Exception as e:  # absl's flags errors; ml_collections' KeyError/AttributeError
        text = str(e).replace("\\'", "'").replace("\\n", "\n")
        m = re.search(r'Did you mean "(\w+)" instead of "(\w+)"', text)
        bad = m.group(2) if m else re.sub(r"\W", "", text.splitlines()[0])
        for arg in argv[1:]:
            path = arg.split("=", 1)[0][len("--config.") :].split(".")
            if arg.startswith("--config.") and bad in path:
                hint = ""
                if m:
                    hint = (
                        " (did you mean " + ".".join([*path[: path.index(bad)], m.group(1)]) + "?)"
                    )
                sys.exit(f"error: unknown config field {'.'.join(path)}{hint}")
        sys.exit(f"error: {_flag_error_line(text)}")


def _flag_error_line(text: str) -> str:
    """One line for a flag error, keeping its cause when the text is a traceback.

    ml_collections reports an exception inside a preset's ``get_config`` as
    ``flag --config=X: Error whilst parsing config file:`` followed by a traceback;
    its last line is the cause, e.g. ``ConfigError: unknown preset variant 'big'
    (known: ...)`` for ``--config=configs/gpt2_tiny.py:big``.
    """
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return "invalid flags"
    if len(lines) == 1 or not any(line.startswith("Traceback") for line in lines):
        return lines[0]
    return f"{lines[0].rstrip(':')}: {lines[-1]}"


def resolve_config():
    """The typed Config the flags describe (raises ConfigError)."""
    from t5x_lite import config as C

    if _GIN_FILES.value or _GIN_BINDINGS.value:
        if flags.FLAGS["config"].present:
            raise C.ConfigError("give either --config or --gin_file, not both")
        from t5x_lite import gin_config

        return gin_config.load(_GIN_FILES.value, _GIN_BINDINGS.value)
    path = _preset_path()
    if not os.path.isfile(path):
        raise C.ConfigError(f"config file not found: {path}")
    try:
        values = _CONFIG.value.to_dict()
    except Exception as e:  # an error inside the preset's get_config()
        raise C.ConfigError(f"{path}: {_first_line(e)}") from None
    return C.from_dict(values)


def apply_scaling_plan(cfg, log=print, check_repeats=False, allow_repeats=False):
    """``cfg`` with its scaling plan applied when ``scaling.flops_budget > 0``.

    The planner's choice (shape, parameters, tokens, steps) goes to ``log`` as one
    ``scaling plan: {...}`` line; the trainer then trains exactly the returned config.
    With ``check_repeats``, a plan that takes more tokens than the corpus's training
    split holds is a ConfigError unless ``allow_repeats`` (as ``scaling sweep`` refuses
    it): a compute-optimal law fitted on unique tokens says nothing about repeated ones.
    """
    if cfg.scaling.flops_budget <= 0:
        return cfg
    from t5x_lite import scaling

    cfg, info = scaling.apply_plan(cfg)
    log(f"scaling plan: {info}")
    if check_repeats:
        from t5x_lite.scaling import sweep

        tokens = sweep.corpus_train_tokens(cfg)
        if cfg.data.unique_tokens > tokens:
            raise ConfigError(
                f"data.unique_tokens={cfg.data.unique_tokens:,d} exceeds the {tokens:,d} "
                f"training tokens of data.corpus={cfg.data.corpus!r}"
            )
        if cfg.data.unique_tokens:
            # A data-constrained plan: repeating the unique tokens is what was planned.
            log(
                f"data-constrained plan: {info['n_tokens']:,d} tokens over {tokens:,d} "
                f"unique ones ({info['n_tokens'] / tokens:.2f} epochs)"
            )
        elif info["n_tokens"] > tokens:
            epochs = info["n_tokens"] / tokens
            if not allow_repeats:
                raise ConfigError(
                    f"scaling.flops_budget={cfg.scaling.flops_budget:.3g} plans "
                    f"{info['n_tokens']:,d} tokens but data.corpus={cfg.data.corpus!r} has "
                    f"{tokens:,d} ({epochs:.1f} epochs): it would repeat data; lower the "
                    "budget, use a larger corpus, plan for repeated data with "
                    f"--config.data.unique_tokens={tokens} or pass --allow_repeats"
                )
            log(f"warning: the plan repeats data.corpus {epochs:.1f} times (--allow_repeats)")
    return cfg


def _init_distributed() -> None:
    from t5x_lite import cluster

    cluster.initialize(
        _CLUSTER.value,
        _COORDINATOR.value,
        _NUM_PROCESSES.value,
        _PROCESS_ID.value,
        _INIT_TIMEOUT.value,
    )


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        # Library INFO lines (orbax, grain, tfds) would drown the progress bar.
        logging.set_verbosity(logging.WARNING)
    if _HOST_DEVICES.value:
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "")
            + f" --xla_force_host_platform_device_count={_HOST_DEVICES.value}"
        )
    try:
        cfg = resolve_config()
        if _PRINT_CONFIG.value:
            import json

            from t5x_lite.config import to_dict

            # The shape and steps that would be trained (the plan's line on stderr).
            cfg = apply_scaling_plan(cfg, log=lambda line: print(line, file=sys.stderr))
            print(json.dumps(to_dict(cfg.validate()), indent=2))
            return
        _init_distributed()
        import jax

        from t5x_lite import trainer

        primary = jax.process_index() == 0
        cfg = apply_scaling_plan(
            cfg,
            log=print if primary else lambda line: None,
            check_repeats=True,
            allow_repeats=_ALLOW_REPEATS.value,
        )

        workdir = _WORKDIR.value or os.path.join("runs", _config_name())
        from t5x_lite import preflight

        finished = preflight.finished_message(cfg, workdir)
        if finished is not None:
            if primary:
                print(finished)
            return
        data, fsdp, tensor = preflight.check_layout(cfg, jax.device_count(), jax.process_count())
        preflight.check_state_memory(cfg, jax.devices(), (data, fsdp, tensor))
        preflight.check_writable(workdir)
        if primary:
            kinds = sorted({d.device_kind for d in jax.devices()})
            print(
                f"mesh data={data} fsdp={fsdp} tensor={tensor} on {jax.device_count()} "
                f"{'/'.join(kinds)} devices ({jax.process_count()} process"
                f"{'es' if jax.process_count() > 1 else ''}); workdir {workdir}"
            )
        try:
            result = trainer.train(cfg, workdir)
        except Exception as e:  # an XLA out-of-memory error becomes one line with levers
            message = preflight.out_of_memory_message(cfg, e)
            if message is None:
                raise
            sys.exit(f"error: {message}")
    except ConfigError as e:
        sys.exit(f"error: {e}")
    except PermissionError as e:  # e.g. a data.data_dir cache another user owns
        sys.exit(f"error: {e.strerror}: {e.filename} (set data.data_dir or choose another path)")
    if result["preempted"]:
        sys.exit(0)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
