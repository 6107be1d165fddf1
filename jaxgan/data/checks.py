"""The data section's part of `jaxgan.experiment.validate`: the ``--mixture_*`` options of the 2D datasets
(`jaxgan.data.toy`) and what image datasets refuse. ``--dataset`` itself is checked first, by
`jaxgan.experiment.validate`, and the image loader checks its files at open (`jaxgan.data.images`)."""
from __future__ import annotations

import math

from jaxgan.config import Config, ConfigError, section_fields
from jaxgan.data import digits, toy

MAX_MIXTURE_MODES = 10**6


def mixture_fields() -> tuple[str, ...]:
    """The data fields that configure the 2D Gaussian mixtures (``--mixture_*``)."""
    return tuple(name for name in section_fields("data") if name.startswith("mixture_"))


def validate_config(config: Config) -> None:
    """Raises `ConfigError` for a bad ``--mixture_*`` value, or one (or ``--conditional``) given to data that
    does not take it."""
    for name in mixture_fields():
        value = getattr(config, name)
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"--{name} must be a finite number >= 0, got {value}")
    if config.mixture_modes > MAX_MIXTURE_MODES:
        raise ConfigError(f"--mixture_modes={config.mixture_modes} is implausibly large; accepted: up to "
                          f"{MAX_MIXTURE_MODES}")
    if config.dataset == "grid25" and config.mixture_modes:
        side = int(round(math.sqrt(config.mixture_modes)))
        if side * side != config.mixture_modes:
            raise ConfigError(f"--mixture_modes for grid25 must be a square number, got {config.mixture_modes}")
    if config.subset < 0:
        raise ConfigError(f"--subset must be >= 0 (0: all images), got {config.subset}")
    if config.dataset == "digits" and config.subset > digits.NUM_EXAMPLES:
        raise ConfigError(f"--subset={config.subset} is more than the {digits.NUM_EXAMPLES} digits; accepted: 0 "
                          f"(all) to {digits.NUM_EXAMPLES}")
    if config.is_toy:
        if config.conditional:
            raise ConfigError(f"--conditional needs a labelled image dataset, not --dataset={config.dataset}")
        return
    for name in mixture_fields():
        if getattr(config, name):
            raise ConfigError(f"--{name} applies to the 2D datasets {toy.TOY_DATASETS}, not --dataset="
                              f"{config.dataset}")


def validate_toy_train_size(config: Config) -> None:
    """--toy_train_size (`jaxgan.data.toy`): >= 0; the run's sample counter fits int32."""
    if config.toy_train_size < 0:
        raise ConfigError(f"--toy_train_size must be >= 0 (0: fresh samples), got {config.toy_train_size}")
    drawn = config.steps * config.n_critic * config.batch_size
    if config.toy_train_size and drawn >= 2**31:
        raise ConfigError(f"--toy_train_size needs --steps * --n_critic * --batch_size < 2**31 (int32 sample "
                          f"counter), got {drawn}")
