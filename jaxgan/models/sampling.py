"""Latent sampling, including BigGAN's truncation trick."""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp


def truncated_normal_latents(key: jax.Array, shape: Sequence[int], truncation: float | None = None,
                             dtype=jnp.float32) -> jax.Array:
    """Draws latents z ~ N(0, 1), truncated to [-truncation, truncation] (BigGAN's truncation trick).

    The truncation trick (Brock et al. 2019) RESAMPLES every value with ``|z| > truncation`` until it
    falls inside the interval, i.e. it draws from the standard normal conditioned on
    ``|z| <= truncation``. Clipping would be wrong: it piles probability mass onto the bounds.
    Here the conditional distribution is sampled exactly and in one pass with
    ``jax.random.truncated_normal`` (inverse-CDF sampling: a uniform between Phi(-t) and Phi(t), mapped
    through the inverse normal CDF), which has the same distribution as resampling without its
    data-dependent loop, so it jits and vmaps with a fixed cost.

    Args:
      key: a JAX PRNG key (typed ``jax.random.key`` or legacy).
      shape: output shape, e.g. ``(batch, latent_dim)``.
      truncation: the threshold t > 0, or None for plain standard normals (no truncation).
      dtype: a float dtype.

    Returns:
      An array of ``shape`` and ``dtype``: standard normal if ``truncation`` is None, else truncated
      standard normal on [-t, t] (variance ``1 - 2 t phi(t) / (2 Phi(t) - 1)``).
    """
    shape = tuple(shape)
    if truncation is None:
        return jax.random.normal(key, shape, dtype)
    t = float(truncation)
    if not t > 0:
        raise ValueError(f"truncation must be None or a positive float, got {truncation!r}")
    return jax.random.truncated_normal(key, -t, t, shape, dtype)


__all__ = ["truncated_normal_latents"]
