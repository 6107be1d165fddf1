"""Differentiable augmentation of D's inputs, applied to real and fake alike (``--augment``).

* ``diffaugment:OPS`` — DiffAugment (Zhao et al. 2020; `jaxgan.augment.diffaugment`), OPS a comma-separated
  non-empty list of ``color``, ``translation``, ``cutout`` (and ``flip``), applied in that order; a bare
  ``diffaugment`` is the paper's policy ``color,translation,cutout`` (a value without commas, for sweeps'
  ``--losses`` entries and ``--sweep`` lists, which split on commas);
* ``ada`` — adaptive discriminator augmentation (Karras et al. 2020; `jaxgan.augment.ada`), its probability p
  adapted to keep ``E[sign(D(real))]`` at ``--ada_target``.

Both are `jaxgan.objectives.InputTransform`s: `objective` returns one to add to the game's objective.
"""
from __future__ import annotations

import math

from jaxgan.augment import ada, diffaugment
from jaxgan.augment.ada import ADA
from jaxgan.augment.diffaugment import DiffAugment
from jaxgan.config import ConfigError
from jaxgan.objectives import Objective

DEFAULT_POLICY = ("color", "translation", "cutout")  # the paper's, for limited data
ACCEPTED = ("'' (off), ada, diffaugment (= diffaugment:color,translation,cutout) or diffaugment:OPS with OPS a "
            "comma-separated list of " + ", ".join(diffaugment.OPS))


def parse(spec: str) -> tuple[str, tuple[str, ...]]:
    """``--augment`` -> (kind, DiffAugment policy): ("", ()) off, ("ada", ()), ("diffaugment", ops). Raises
    ValueError naming the value and what is accepted."""
    if spec == "":
        return "", ()
    if spec == "ada":
        return "ada", ()
    if spec == "diffaugment":
        return "diffaugment", DEFAULT_POLICY
    kind, sep, ops = spec.partition(":")
    if kind != "diffaugment" or not sep:
        raise ValueError(f"--augment={spec!r} is not one of: {ACCEPTED}")
    policy = tuple(op.strip() for op in ops.split(","))
    unknown = [op for op in policy if op not in diffaugment.OPS]
    if not ops.strip() or unknown:
        what = "names no operation" if not ops.strip() else f"has unknown operations {unknown}"
        raise ValueError(f"--augment={spec!r} {what}; accepted: {ACCEPTED}")
    if len(set(policy)) != len(policy):
        raise ValueError(f"--augment={spec!r} repeats an operation; accepted: {ACCEPTED}")
    return "diffaugment", policy


def objective(spec: str, *, batch_size: int, ada_target: float = 0.6, ada_interval: int = 4,
              ada_kimg: float = 500.0) -> Objective | None:
    """The objective (no terms, one input transform) of ``--augment=spec``; None when off."""
    kind, policy = parse(spec)
    if kind == "":
        return None
    transform = DiffAugment(policy) if kind == "diffaugment" else ADA(batch_size, ada_target, ada_interval, ada_kimg)
    return Objective((), dict(transform.hparams), (transform,))


__all__ = ["ADA", "DiffAugment", "ada", "diffaugment", "objective", "parse", "validate"]


def validate(config) -> None:
    """--augment and ADA's --ada_target, --ada_interval, --ada_kimg; `ConfigError` naming the flag."""
    try:
        parse(config.augment)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if not (math.isfinite(config.ada_target) and 0 <= config.ada_target < 1):
        raise ConfigError(f"--ada_target must be in [0, 1) (r_t = E[sign(D(real))] is at most 1), got "
                          f"{config.ada_target}")
    if config.ada_interval < 1:
        raise ConfigError(f"--ada_interval must be an integer >= 1, got {config.ada_interval}")
    if not (math.isfinite(config.ada_kimg) and config.ada_kimg > 0):
        raise ConfigError(f"--ada_kimg must be a finite number > 0, got {config.ada_kimg}")
