"""Shared launcher plumbing: Config flags from the dataclass, the compile cache, one-line errors."""
from __future__ import annotations

import dataclasses
import os
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
    "model": "mlp (2D data), dcgan, sngan, sagan", "latent_dim": "size of z (0: the model's default)",
    "width": "MLP hidden width / DCGAN ngf=ndf / ResNet ch (0: default)", "depth": "MLP hidden layers",
    "d_normalization": "DCGAN D normalisation: batch_norm (default), layer_norm, none (WGAN-GP critic)",
    "conditional": "class-conditional G and D (labelled datasets)",
    "attention_resolution": "SAGAN self-attention resolution (0: default)",
    "loss": "non_saturating, minimax, least_squares, wasserstein, hinge, relativistic, kl, reverse_kl, pearson, "
            "hellinger, js",
    "penalty": "none, gradient_penalty, r1, r2, dragan", "penalty_weight": "weight of --penalty",
    "label_smoothing": "one-sided label smoothing of the real labels (JSD losses)",
    "clip_weights": "clip D's weights to [-c, c] after each update (original WGAN; 0: off)",
    "instance_noise": "std of Gaussian noise added to D's inputs (0: off)",
    "instance_noise_anneal_steps": "anneal the instance noise linearly to 0 over this many steps (0: constant)",
    "optimizer": "adam, rmsprop, sgd", "g_lr": "generator learning rate", "d_lr": "discriminator learning rate",
    "b1": "Adam beta1", "b2": "Adam beta2", "lr_decay": "none, linear (to 0 at --steps)",
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


def parse_flags_one_line(argv: list[str]) -> list[str]:
    """absl ``flags_parser`` for ``app.run``: a bad flag is one ``error:`` line on stderr and exit code 2."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        message = " ".join(str(e).split()).removeprefix("ERROR:: ")
        if isinstance(e, flags.CantOpenFlagFileError):
            message = f"--flagfile: {message}"
        print(f"error: {message} (--helpfull lists the flags)", file=sys.stderr)
        sys.exit(2)


def run_with_clean_errors(main: Callable[[], int | None], user_errors: tuple[type[BaseException], ...],
                          exit_codes: dict[type[BaseException], int] | None = None) -> int:
    """Runs ``main``; a user error becomes one line on stderr and an exit code, not a traceback."""
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
    """INFO lines only from jaxgan and launch/; libraries (orbax, tfds, jax) show warnings and errors only."""
    import logging as std_logging

    from absl import logging as absl_logging

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    own = (os.path.join(root, "jaxgan") + os.sep, os.path.join(root, "launch") + os.sep)

    class _OwnInfo(std_logging.Filter):
        def filter(self, record):
            return record.levelno >= std_logging.WARNING or record.pathname.startswith(own)

    absl_logging.set_verbosity(absl_logging.INFO)
    handler = absl_logging.get_absl_handler()
    handler.python_handler.addFilter(_OwnInfo())  # ABSLHandler.handle() delegates to it, bypassing its own filters
