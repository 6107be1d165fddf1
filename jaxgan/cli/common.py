"""Shared launcher plumbing: Config flags from the dataclass, shipped flagfiles, the compile cache, one-line
errors."""
from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import re
import sys
from typing import Callable

from absl import flags

HELP = {
    "dataset": "ring8, grid25, lines (2D); digits, folder:PATH, or a TFDS image dataset (mnist, cifar10, ...)",
    "mixture_modes": "modes of ring8/grid25 (0: 8 / 25)",
    "mixture_radius": "ring radius (0: 1.0)",
    "mixture_std": "std of each mode (0: 0.01 ring8, 0.05 grid25)",
    "mixture_spacing": "grid spacing (0: 2.0)",
    "image_size": "image height = width", "channels": "image channels (1 or 3)",
    "data_dir": "TFDS data directory (datasets prepared with `tfds build`)",
    "skip_corrupt_images": "folder:PATH datasets: leave out image files that cannot be decoded, with one warning "
                           "line listing them (default: refuse the run, naming them; files are checked at open)",
    "model": "mlp (2D data), dcgan, sngan, sagan", "latent_dim": "size of z (0: the model's default)",
    "width": "MLP hidden width / DCGAN ngf=ndf / ResNet ch, for G and D (0: the model's default)",
    "g_width": "G's width where it differs from D's (0: --width); e.g. SNGAN on CIFAR-10: --g_width=64 (ResNet G "
               "with 256 channels) --d_width=32 (D with 128)",
    "d_width": "D's width where it differs from G's (0: --width)",
    "depth": "MLP hidden layers",
    "d_normalization": "DCGAN D normalisation: batch_norm (default), layer_norm, none (WGAN-GP critic)",
    "conditional": "class-conditional G and D (labelled datasets)",
    "attention_resolution": "SAGAN self-attention resolution (0: default)",
    "conv_impl": "convolution implementation of the image models: auto (oneDNN on cpu where it can run, else the "
                 "fastest XLA formulation per pass), xla (plain XLA convolutions), dnnl (oneDNN, cpu float32 only)",
    "loss": "non_saturating, minimax, least_squares, wasserstein, hinge, relativistic, kl, reverse_kl, pearson, "
            "hellinger, js",
    "penalty": "none, gradient_penalty, r1, r2, dragan", "penalty_weight": "weight of --penalty",
    "label_smoothing": "s in [0, 1): D's target for real examples becomes 1 - s/2 (TF-GAN's smoothing, "
                       "labels*(1-s) + s/2; fake targets stay 0, G's loss is unchanged; JSD losses). Salimans et "
                       "al.'s one-sided target 0.9 is s=0.2",
    "clip_weights": "clip D's weights to [-c, c] after each update (original WGAN; 0: off)",
    "instance_noise": "std of Gaussian noise added to D's inputs (0: off)",
    "instance_noise_anneal_steps": "anneal the instance noise linearly to 0 over this many steps (0: constant)",
    "optimizer": "adam (--b1, --b2), rmsprop (optax defaults: decay 0.9, no momentum), sgd (no momentum)",
    "g_lr": "generator learning rate", "d_lr": "discriminator learning rate",
    "b1": "Adam beta1 (--optimizer=adam only: rmsprop and sgd refuse it)",
    "b2": "Adam beta2 (--optimizer=adam only: rmsprop and sgd refuse it)",
    "lr_decay": "none, linear (to 0 at --steps)",
    "n_critic": "D updates per G update", "batch_size": "global batch size (per D update)",
    "steps": "G updates to train for", "seed": "seed of init, latents and data order",
    "ema_decay": "EMA decay of G's weights (0: off)", "ema_start": "step at which the EMA starts",
    "log_every": "steps between metric lines", "sample_every": "steps between sample pictures (0: only at the end)",
    "checkpoint_every": "steps between checkpoints", "keep_checkpoints": "checkpoints to keep",
    "num_samples": "samples for the final 2D plot and mode metrics",
    "on_nan": "what a NaN/Inf loss or parameter does: stop (exit code 3), skip (drop that update), rollback "
              "(restore the last good checkpoint with lower learning rates)",
    "nan_lr_factor": "--on_nan=rollback multiplies the learning rates by this (0 < f < 1)",
    "max_rollbacks": "--on_nan=rollback stops after this many rollbacks",
    "mesh_data": "devices on the data axis: the global batch is split, gradients averaged (0: all devices; "
                 "1 on a single-process CPU run, whose simulated devices share the cores)",
    "mesh_seed": "devices on the seed axis: stacked runs of a sweep split over devices (1 for launch/train.py)",
    "eval_every": "steps between evaluations logged as eval/<name> (0: off; jaxgan.evaluation, as launch/evaluate.py)",
    "eval_metrics": "metrics of --eval_every: comma-separated subset of fid, kid, is, pr",
    "eval_num_samples": "generated samples per --eval_every evaluation",
    "eval_inception_weights": "converted FID Inception .npz for --eval_every on non-digits data "
                              "(python -m jaxgan.metrics.features convert IN.pth OUT.npz)",
}


EXIT_IO_ERROR = 74  # the disk filled up, or the workdir became read-only/unwritable (sysexits EX_IOERR)


def define_config_flags(config_cls) -> None:
    """One absl flag per field of the config dataclass, with its default."""
    for field in dataclasses.fields(config_cls):
        default, help_text = field.default, HELP.get(field.name, field.name)
        if field.type in ("bool", bool):
            flags.DEFINE_bool(field.name, default, help_text)
        elif field.type in ("int", int):
            flags.DEFINE_integer(field.name, default, help_text)
        elif field.type in ("float", float):
            flags.DEFINE_float(field.name, default, help_text)
        else:
            flags.DEFINE_string(field.name, default, help_text)


def config_from_flags(config_cls):
    values = {f.name: flags.FLAGS[f.name].value for f in dataclasses.fields(config_cls)}
    return config_cls(**values)


def enable_compile_cache(directory: str) -> None:
    """JAX's persistent compilation cache: a second run of the same program skips compilation."""
    if not directory:
        return
    import jax
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


CONFIG_DIR = pathlib.Path(__file__).resolve().parent.parent / "configs"  # package data: jaxgan/configs/**.cfg
_REPO_CONFIG_PREFIXES = ("launch/configs/", "jaxgan/configs/")  # the paths the docs write, in a checkout


def shipped_configs() -> list[str]:
    """Names of the shipped flagfiles relative to `CONFIG_DIR`, e.g. ``quickstart.cfg``, ``studies/x.cfg``."""
    return sorted(p.relative_to(CONFIG_DIR).as_posix() for p in CONFIG_DIR.rglob("*.cfg"))


def find_shipped_config(name: str) -> pathlib.Path | None:
    """The shipped flagfile ``name`` names (``.cfg`` optional; a ``launch/configs/`` prefix is dropped), or None."""
    for prefix in _REPO_CONFIG_PREFIXES:
        name = name.removeprefix(prefix)
    for candidate in (name, name + ".cfg"):
        if candidate in shipped_configs():
            return CONFIG_DIR / candidate
    return None


def resolve_flagfiles(argv: list[str]) -> list[str]:
    """``argv`` with each ``--flagfile`` value that is no file but names a shipped config replaced by its path.

    So an installed jaxgan runs ``jaxgan-train --flagfile=quickstart.cfg`` (or the repository path
    ``launch/configs/quickstart.cfg``) from any directory; a file of that name in the working directory wins.
    """
    def resolve(value: str) -> str:
        shipped = None if os.path.exists(os.path.expanduser(value)) else find_shipped_config(value)
        return str(shipped) if shipped else value

    out, value_next = list(argv[:1]), False
    for i, arg in enumerate(argv[1:], 1):
        if arg == "--":  # absl reads no flags after it
            return out + list(argv[i:])
        name, eq, value = arg.partition("=")
        if value_next:  # "--flagfile PATH": absl reads the next argument
            arg = resolve(arg)
        elif name in ("--flagfile", "-flagfile") and eq:
            arg = f"{name}={resolve(value)}"
        value_next = name in ("--flagfile", "-flagfile") and not eq and not value_next
        out.append(arg)
    return out


def parse_flags_one_line(argv: list[str]) -> list[str]:
    """absl ``flags_parser`` for ``app.run``: a bad flag is one ``error:`` line on stderr and exit code 2.

    ``--flagfile`` also takes the name of a shipped config (`resolve_flagfiles`)."""
    try:
        return flags.FLAGS(resolve_flagfiles(argv))
    except flags.Error as e:
        message = " ".join(str(e).split()).removeprefix("ERROR:: ")
        missing = re.fullmatch(r"flag --(\w+)=None: Flag --\1 must have a value other than None\.", message)
        if missing:  # a required flag (absl's validator message names it twice)
            name = missing.group(1)
            message = f"--{name} is required: {flags.FLAGS[name].help}"
        if isinstance(e, flags.CantOpenFlagFileError):
            message = f"--flagfile: {message}; shipped configs (by name): {', '.join(shipped_configs())}"
        print(f"error: {message} (--helpfull lists the flags)", file=sys.stderr)
        sys.exit(2)


def run_app(main: Callable[[list[str]], int | None], doc: str | None) -> None:
    """``absl.app.run(main)`` with one-line flag errors; ``--help`` prints ``doc`` (the program's docstring).

    absl prints the ``__main__`` module's docstring, which is a launcher wrapper's or a console script's."""
    from absl import app
    sys.modules["__main__"].__doc__ = doc
    app.run(main, flags_parser=parse_flags_one_line)


def run_with_clean_errors(main: Callable[[], int | None], user_errors: tuple[type[BaseException], ...],
                          exit_codes: dict[type[BaseException], int] | None = None) -> int:
    """Runs ``main``; a user error becomes one line on stderr and an exit code, not a traceback.

    A full disk, a read-only file system or a permission error (``OSError``, or an orbax/TensorStore error
    carrying one) also becomes one line, exit code `EXIT_IO_ERROR` (`jaxgan.workdir.describe_io_error`)."""
    from jaxgan import workdir as workdir_lib
    workdir_lib.quiet_io_errors()
    exit_codes = exit_codes or {}
    try:
        return main() or 0
    except user_errors as e:
        message = " ".join(str(e).split())
        print(f"error: {message}", file=sys.stderr)
        for cls, code in exit_codes.items():
            if isinstance(e, cls):
                return code
        return 2
    except Exception as e:
        if workdir_lib.describe_io_error(e) is None:
            raise
        workdir_lib.report_io_error(e)
        return EXIT_IO_ERROR


def given_flags() -> set[str]:
    """Names of the flags given on the command line or in a flagfile (absl's ``present``)."""
    return {name for name in flags.FLAGS if flags.FLAGS[name].present}


def check_explicit_flags(config, given: set[str]) -> None:
    """Refuses a Config flag in ``given`` (`given_flags`) that ``config`` would ignore, whatever its value.

    `jaxgan.experiment.validate` refuses such fields when they differ from their defaults; this also catches
    ``--optimizer=sgd --b1=0.5`` (the default value, given explicitly), and ``--b1``/``--b2`` in general, which
    validate leaves to the launchers (sweep groups may switch optimizer and inherit the base's Adam betas).
    """
    from jaxgan.experiment import ConfigError, inapplicable_flags
    for name, target in inapplicable_flags(config).items():
        if name in given:
            raise ConfigError(f"--{name}={getattr(config, name)} has no effect: it applies to {target}")


def check_sweep_flags_apply(base, groups, given: set[str]) -> None:
    """No flag silently dropped by a sweep: a Config flag in ``given`` must apply to some group, and a value a
    group sets itself (``--losses=...+b1=0.9``, ``--sweep=b2:...``) must apply to that group."""
    from jaxgan.experiment import ConfigError, inapplicable_flags
    ignored = [inapplicable_flags(g.config) for g in groups]
    for name in sorted(given & set(ignored[0])):
        if all(name in i for i in ignored):
            raise ConfigError(f"--{name}={getattr(base, name)} has no effect: it applies to {ignored[0][name]}")
    for g, ignore in zip(groups, ignored):
        for name, target in ignore.items():
            if getattr(g.config, name) != getattr(base, name):
                raise ConfigError(f"group {g.name}: {name}={getattr(g.config, name)} has no effect: it applies to "
                                  f"{target}")


def check_int(name: str, value: int, low: int, high: int, note: str = "") -> None:
    """Raises ConfigError unless ``low <= value <= high`` for the flag ``--name``."""
    from jaxgan.experiment import ConfigError
    if not low <= value <= high:
        raise ConfigError(f"--{name}={value} is out of range; accepted: {low} to {high}{note}")


def check_positive_float(name: str, value: float | None) -> None:
    from jaxgan.experiment import ConfigError
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ConfigError(f"--{name} must be a finite number > 0, got {value}")


def check_writable(name: str, path, *, directory: bool = False) -> None:
    """Raises ConfigError if ``--name=path`` cannot be written (as a file, or a directory made on demand).

    Checks without creating anything: the path is not the wrong kind of entry and its nearest existing ancestor
    is a writable directory.
    """
    from jaxgan.experiment import ConfigError
    text = os.fspath(path)
    if not text.strip():
        raise ConfigError(f"--{name} must not be empty")
    path = os.path.abspath(os.path.expanduser(text))
    if os.path.exists(path):
        if directory and not os.path.isdir(path):
            raise ConfigError(f"--{name}={text} exists and is not a directory")
        if not directory and os.path.isdir(path):
            raise ConfigError(f"--{name}={text} is a directory; expected a file path")
        if not os.access(path if directory else os.path.dirname(path), os.W_OK | os.X_OK) or \
                (not directory and not os.access(path, os.W_OK)):
            raise ConfigError(f"--{name}={text} is not writable")
        return
    parent = os.path.dirname(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ConfigError(f"--{name}={text} cannot be created: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--{name}={text} cannot be created: {parent} is not writable")


def read_flagfile(path, config_cls) -> dict:
    """The config fields set by an absl flagfile (``--name=value``, ``--flag``, ``--noflag``, # comments)."""
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    values = {}
    with open(path) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            name, _, value = line.lstrip("-").partition("=")
            if name.startswith("no") and name[2:] in fields and not value:
                name, value = name[2:], "false"
            if name not in fields:
                raise ValueError(f"{path}: unknown flag --{name}")
            kind = fields[name].type
            if kind in ("bool", bool):
                values[name] = value.lower() not in ("false", "0") if value else True
            elif kind in ("int", int):
                values[name] = int(value)
            elif kind in ("float", float):
                values[name] = float(value)
            else:
                values[name] = value
    return values


def quiet_library_logs() -> None:
    """INFO lines only from jaxgan; libraries (orbax, tfds, jax) show warnings and errors only."""
    import logging as std_logging

    from absl import logging as absl_logging

    own = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep  # the jaxgan package

    class _OwnInfo(std_logging.Filter):
        def filter(self, record):
            return record.levelno >= std_logging.WARNING or record.pathname.startswith(own)

    absl_logging.set_verbosity(absl_logging.INFO)
    handler = absl_logging.get_absl_handler()
    handler.python_handler.addFilter(_OwnInfo())  # ABSLHandler.handle() delegates to it, bypassing its own filters
