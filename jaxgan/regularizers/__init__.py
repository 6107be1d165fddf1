"""Regularizers of the GAN game, each its own module, and the glue that builds them from a `Config`.

* `consistency`: CR, bCR, zCR (``--cr_weight``, ``--bcr_real_weight``, ``--bcr_fake_weight``, ``--zcr_d_weight``,
  ``--zcr_g_weight``, ``--zcr_sigma``): terms of the objective.
* `lecam`: LeCam regularization (``--lecam_weight``, ``--lecam_decay``): an identity input transform holding the
  anchors plus a D term.
* `orthogonal`: BigGAN's orthogonal regularization (``--g_ortho_weight``, ``--d_ortho_weight``): an optax
  transformation chained before the optimizer (`jaxgan.experiment.make_optimizer`).
* `topk`: top-k training of G (``--topk_gamma``, ``--topk_min_fraction``, ``--topk_decay_steps``): a wrapper of
  the objective's G loss.
* Lazy R1 (``--penalty_every``) is `objectives.Objective.every` on the ``--penalty`` terms
  (`jaxgan.experiment.build_objective`).

`validate`, `inapplicable` and `add_to_objective` are what `jaxgan.experiment` calls.
"""
from __future__ import annotations

import math

from jaxgan import objectives
from jaxgan.config import Config, ConfigError
from jaxgan.regularizers import consistency, lecam, orthogonal, topk
from jaxgan.regularizers.consistency import bcr, cr, zcr
from jaxgan.regularizers.lecam import LeCamAnchors, lecam_penalty
from jaxgan.regularizers.orthogonal import add_orthogonal_regularization, orthogonal_penalty
from jaxgan.regularizers.topk import top_k, topk_count, topk_mask

WEIGHTS = ("cr_weight", "bcr_real_weight", "bcr_fake_weight", "zcr_d_weight", "zcr_g_weight", "lecam_weight",
           "g_ortho_weight", "d_ortho_weight")
IMAGE_ONLY = ("cr_weight", "bcr_real_weight", "bcr_fake_weight")  # T flips and translates images


def topk_on(config: Config) -> bool:
    return 0.0 < config.topk_gamma < 1.0


def zcr_on(config: Config) -> bool:
    return bool(config.zcr_d_weight or config.zcr_g_weight)


def validate(config: Config) -> None:
    """Raises `ConfigError` for the first bad regularizer flag (values; `inapplicable` covers the rest)."""
    for name in WEIGHTS:
        value = getattr(config, name)
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"--{name} must be a finite number >= 0, got {value}")
    if not (math.isfinite(config.zcr_sigma) and config.zcr_sigma > 0):
        raise ConfigError(f"--zcr_sigma must be > 0, got {config.zcr_sigma}")
    if not 0.0 <= config.lecam_decay < 1.0:
        raise ConfigError(f"--lecam_decay must be in [0, 1), got {config.lecam_decay}")
    if config.penalty_every < 1:
        raise ConfigError(f"--penalty_every must be >= 1 (1: every D update), got {config.penalty_every}")
    if not 0.0 <= config.topk_gamma <= 1.0:
        raise ConfigError(f"--topk_gamma must be in [0, 1] (0 or 1: off), got {config.topk_gamma}")
    if not 0.0 < config.topk_min_fraction <= 1.0:
        raise ConfigError(f"--topk_min_fraction must be in (0, 1], got {config.topk_min_fraction}")
    if config.topk_decay_steps < 1:
        raise ConfigError(f"--topk_decay_steps must be >= 1, got {config.topk_decay_steps}")
    if topk_on(config) and config.loss in objectives.LOSSES:
        if any(t.needs_real for t in objectives.LOSSES[config.loss]().g_terms):
            raise ConfigError(f"--topk_gamma needs a G loss that is a mean over generated examples; --loss="
                              f"{config.loss} also compares with D(real)")


def inapplicable(config: Config) -> list[tuple[str, bool, str]]:
    """(flag, it applies, to what) rules for `jaxgan.experiment.inapplicable_flags`."""
    rules = [(name, not config.is_toy, f"image datasets (T flips and translates images), not the 2D "
                                       f"--dataset={config.dataset}") for name in IMAGE_ONLY]
    return rules + [
        ("zcr_sigma", zcr_on(config), "zCR (--zcr_d_weight or --zcr_g_weight > 0)"),
        ("lecam_decay", config.lecam_weight > 0, "LeCam regularization (--lecam_weight > 0)"),
        ("penalty_every", config.penalty != "none", "a --penalty, not --penalty=none"),
        ("topk_min_fraction", topk_on(config), "top-k training (--topk_gamma in (0, 1))"),
        ("topk_decay_steps", topk_on(config), "top-k training (--topk_gamma in (0, 1))"),
    ]


def add_to_objective(objective, config: Config):
    """``objective`` plus the regularizer terms the config turns on, then top-k on G's loss."""
    if config.cr_weight:
        objective = objective + cr(config.cr_weight)
    if config.bcr_real_weight or config.bcr_fake_weight:
        objective = objective + bcr(config.bcr_real_weight, config.bcr_fake_weight)
    if zcr_on(config):
        objective = objective + zcr(config.zcr_d_weight, config.zcr_g_weight, config.zcr_sigma)
    if config.lecam_weight:
        objective = objective + lecam.lecam(config.lecam_weight, config.lecam_decay)
    if topk_on(config):
        objective = top_k(objective, config.topk_gamma, config.topk_min_fraction, config.topk_decay_steps)
    return objective


__all__ = ["consistency", "lecam", "orthogonal", "topk", "cr", "bcr", "zcr", "LeCamAnchors", "lecam_penalty",
           "orthogonal_penalty", "add_orthogonal_regularization", "top_k", "topk_count", "topk_mask", "validate",
           "inapplicable", "add_to_objective", "topk_on", "zcr_on"]
