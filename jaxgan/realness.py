"""Realness GAN (Xiangli et al. 2020, "Real or Not Real, that is the Question"): D outputs a distribution.

D's last layer gives N logits per example; softmax turns them into a distribution D(x) over N *outcomes* of
"realness". Two fixed distributions over the outcomes, the anchors A0 (fake) and A1 (real), are D's targets:

    D minimises  KL(A1 || D(x)) + KL(A0 || D(G(z)))                    (the paper's Eq. 3, as KL terms)

The objective is `jaxgan.objectives.realness` (``--loss=realness``); this module holds its pure functions. G's
objective (`GENERATOR_OBJECTIVES`, ``--realness_generator``), pairing real example i with fake example i:

- ``relativistic_anchor`` (default): ``KL(D(x) || D(G(z))) - KL(A0 || D(G(z)))``: G makes the realness
  distribution of its samples match that of real data and moves it away from the fake anchor: the paper's
  practical alternative to the theoretical ``-KL(A0 || D(G(z)))``. On the ring it covers the modes more
  reliably over seeds than the code's form below (the measurement: tests/test_multi_output.py).
- ``relativistic``: ``KL(D(x) || D(G(z)))`` alone, what the authors' code runs (``relativisticG=True``).
- ``anchors``: ``KL(A1 || D(G(z))) - KL(A0 || D(G(z)))``, the paper's form without D(x).

The code writes every KL as a cross entropy ``-sum A log D``; the two differ by the entropy of the target, which
has no gradient for the player that minimises it, so the updates are the same.

Anchors (`anchors`), as the reference's ``train.py`` builds them: histograms with N bins, A0 of a narrow
normal (its default) or of a skew normal with shape -5 (its commented alternative), A1 of a uniform on [-1, 1]
(default) or a skew normal with shape +5. The reference draws 1000 samples and histograms them over their own
range; here the histograms are the exact expectations over a fixed range (the normal: +-3 std, about the range
of 1000 draws; the skew normals: their 0.1% to 99.9% quantiles), so the anchors are deterministic. Its loss
then shifts them apart (``CategoricalLoss(skewness=...)`` with ``positive_skew=1``, ``negative_skew=-1``): on
the support ``linspace(-1, 1, N)`` the real anchor's mass moves up by 1 and the fake anchor's down by 1,
clipped at the ends and split between neighbouring outcomes, C51's projection (`shift`). ``skew=0`` keeps the
raw histograms.
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxgan.config import ConfigError

DEFAULT_OUTCOMES = 20  # the reference's --num_outcomes (its 2D mixture script uses 5)
GENERATOR_OBJECTIVES = ("relativistic_anchor", "relativistic", "anchors")


def _normal_cdf(x):
    return 0.5 * (1.0 + np.vectorize(math.erf)(np.asarray(x, np.float64) / math.sqrt(2.0)))


def _histogram(cdf: Callable, low: float, high: float, n: int) -> np.ndarray:
    """Probabilities of ``n`` equal bins of [low, high] under ``cdf``, renormalised over the range."""
    p = np.diff(cdf(np.linspace(low, high, n + 1)))
    return p / p.sum()


def _skewnormal(shape: float, n: int) -> np.ndarray:
    from scipy import stats
    dist = stats.skewnorm(shape)
    return _histogram(dist.cdf, float(dist.ppf(0.001)), float(dist.ppf(0.999)), n)


ANCHORS: dict[str, Callable[[int], tuple[np.ndarray, np.ndarray]]] = {  # name -> n -> (A0, A1) before the shift
    "gaussian_uniform": lambda n: (_histogram(_normal_cdf, -3.0, 3.0, n), np.full(n, 1.0 / n)),
    "skewnormal": lambda n: (_skewnormal(-5.0, n), _skewnormal(5.0, n)),
}


def shift(anchor: np.ndarray, skew: float) -> np.ndarray:
    """``anchor`` [N] with its mass moved by ``skew`` on the support ``linspace(-1, 1, N)``, clipped to [-1, 1] and
    split linearly between the two outcomes around each moved atom (the reference's ``CategoricalLoss``). float64."""
    anchor = np.asarray(anchor, np.float64)
    n = anchor.shape[-1]
    delta = 2.0 / (n - 1)
    b = (np.clip(np.linspace(-1.0, 1.0, n) + skew, -1.0, 1.0) + 1.0) / delta
    lower, upper = np.floor(b).astype(int), np.ceil(b).astype(int)
    # an atom landing exactly on an outcome keeps all its mass there (the reference's index adjustments)
    exact = lower == upper
    lower = np.where(exact & (upper > 0), lower - 1, lower)
    upper = np.where(exact & (lower == upper), upper + 1, upper)
    out = np.zeros(n, np.float64)
    np.add.at(out, lower, anchor * (upper - b))
    np.add.at(out, np.minimum(upper, n - 1), anchor * (b - lower))
    return out


def anchors(name: str = "gaussian_uniform", outcomes: int = DEFAULT_OUTCOMES, skew: float = 1.0
            ) -> tuple[np.ndarray, np.ndarray]:
    """(A0, A1): the fake and real anchors, float64 [outcomes] distributions, shifted apart by ``skew``."""
    if name not in ANCHORS:
        raise ValueError(f"realness anchors {name!r} is not one of {sorted(ANCHORS)}")
    if int(outcomes) != outcomes or outcomes < 2:
        raise ValueError(f"realness outcomes must be an integer >= 2, got {outcomes}")
    a0, a1 = ANCHORS[name](int(outcomes))
    return shift(a0, -skew), shift(a1, skew)


def kl_from_logits(target: jax.Array, logits: jax.Array) -> jax.Array:
    """KL(target || softmax(logits)) over the last axis: [..., N] x [..., N] -> [...]; 0 log 0 = 0. Computed in
    float32 (float64 for float64 logits with x64 enabled)."""
    logits = jnp.asarray(logits)
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    target = jnp.asarray(target, logits.dtype)
    return jnp.sum(jax.scipy.special.xlogy(target, target) - target * jax.nn.log_softmax(logits), axis=-1)


def discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array, a0, a1) -> jax.Array:
    """E KL(A1 || D(x)) + E KL(A0 || D(G(z))); logits [B, N]."""
    return jnp.mean(kl_from_logits(a1, real_logits)) + jnp.mean(kl_from_logits(a0, fake_logits))


def generator_loss(real_logits: jax.Array | None, fake_logits: jax.Array, a0, a1,
                   generator: str = "relativistic_anchor") -> jax.Array:
    """G's loss (`GENERATOR_OBJECTIVES`, see the module docstring); ``real_logits`` [B, N] for the relativistic
    forms (D(x) is a constant target: no gradient flows into it)."""
    if generator == "anchors":
        return jnp.mean(kl_from_logits(a1, fake_logits) - kl_from_logits(a0, fake_logits))
    real = jax.nn.softmax(jax.lax.stop_gradient(jnp.asarray(real_logits)))
    loss = jnp.mean(kl_from_logits(real, fake_logits))
    if generator == "relativistic_anchor":
        loss = loss - jnp.mean(kl_from_logits(a0, fake_logits))
    return loss


def real_side_mass(logits: jax.Array, a0, a1) -> jax.Array:
    """Mean probability D puts on the outcomes where A1 outweighs A0 (logits [B, N] -> scalar): near 1 where D
    takes the examples for real, near 0 for fake."""
    side = jnp.asarray(np.asarray(a1) > np.asarray(a0), jnp.float32)
    return jnp.mean(jnp.sum(jax.nn.softmax(jnp.asarray(logits, jnp.float32)) * side, axis=-1))


__all__ = ["ANCHORS", "DEFAULT_OUTCOMES", "GENERATOR_OBJECTIVES", "anchors", "shift", "kl_from_logits",
           "discriminator_loss", "generator_loss", "real_side_mass"]


MAX_OUTCOMES = 4096  # --realness_outcomes: D's last layer has this many outputs


def validate(config) -> None:
    """--loss=realness's --realness_outcomes, --realness_anchors, --realness_generator; no --penalty with it.
    `ConfigError` naming the flag."""
    if config.loss != "realness":
        return
    checks = [
        (2 <= config.realness_outcomes <= MAX_OUTCOMES,
         f"--realness_outcomes must be an integer in [2, {MAX_OUTCOMES}], got {config.realness_outcomes}"),
        (config.realness_anchors in ANCHORS,
         f"--realness_anchors={config.realness_anchors!r} is not one of {sorted(ANCHORS)}"),
        (config.realness_generator in GENERATOR_OBJECTIVES,
         f"--realness_generator={config.realness_generator!r} is not one of {GENERATOR_OBJECTIVES}"),
        (config.penalty == "none", f"--penalty={config.penalty} needs a scalar D output; --loss=realness's D outputs "
                                   f"--realness_outcomes={config.realness_outcomes} logits; use --penalty=none"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
