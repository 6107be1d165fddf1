"""Toy vector datasets: 2D Gaussian mixtures (ring, grid) and the parallel lines of the WGAN paper.

Samplers are pure JAX functions ``sample(key, n) -> [n, 2]`` so the data of step t can be drawn from
``fold_in(data_key, t)``: deterministic and trivially resumable.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class GaussianMixture:
    """Equal-weight isotropic Gaussian mixture: means [K, D] (float64 numpy), common std."""
    means: np.ndarray
    std: float

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        k_mode, k_noise = jax.random.split(key)
        modes = jax.random.randint(k_mode, (n,), 0, self.means.shape[0])
        means = jnp.asarray(self.means, jnp.float32)[modes]
        return means + self.std * jax.random.normal(k_noise, means.shape, jnp.float32)


def ring(n_modes: int = 8, radius: float = 1.0, std: float = 0.01) -> GaussianMixture:
    """``n_modes`` modes evenly on a circle (angles 2 pi k / n, no duplicated endpoint); PacGAN's ring8."""
    if n_modes < 1 or radius <= 0 or std <= 0:
        raise ValueError(f"ring needs n_modes >= 1, radius > 0, std > 0; got {n_modes}, {radius}, {std}")
    angles = 2 * np.pi * np.arange(n_modes) / n_modes
    return GaussianMixture(radius * np.stack([np.cos(angles), np.sin(angles)], axis=1), float(std))


def grid(n_per_side: int = 5, spacing: float = 2.0, std: float = 0.05) -> GaussianMixture:
    """A centred ``n x n`` grid of modes ``spacing`` apart; default {-4,-2,0,2,4}^2, std 0.05 (grid25)."""
    if n_per_side < 1 or spacing <= 0 or std <= 0:
        raise ValueError(f"grid needs n_per_side >= 1, spacing > 0, std > 0; got {n_per_side}, {spacing}, {std}")
    axis = (np.arange(n_per_side) - (n_per_side - 1) / 2) * spacing
    return GaussianMixture(np.stack(np.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2), float(std))


def lines(key: jax.Array, n: int, theta: float = 0.0) -> jax.Array:
    """The parallel lines of Arjovsky et al. (2017, example 1): points (theta, z), z ~ U[0, 1]. [n, 2]."""
    z = jax.random.uniform(key, (n,), jnp.float32)
    return jnp.stack([jnp.full((n,), theta, jnp.float32), z], axis=1)


TOY_DATASETS = ("ring8", "grid25", "lines")


def toy_sampler(name: str, *, n_modes: int | None = None, radius: float | None = None,
                std: float | None = None, spacing: float | None = None
                ) -> tuple[Callable[[jax.Array, int], jax.Array], GaussianMixture | None]:
    """(sample(key, n) -> [n, 2], the mixture or None) for ``--dataset`` ``name``; None keeps each default."""
    opts = lambda **kw: {k: v for k, v in kw.items() if v is not None}  # noqa: E731
    if name == "ring8":
        mixture = ring(**opts(n_modes=n_modes, radius=radius, std=std))
    elif name == "grid25":
        side = None if n_modes is None else int(round(np.sqrt(n_modes)))
        if side is not None and side * side != n_modes:
            raise ValueError(f"grid25 needs a square number of modes, got {n_modes}")
        mixture = grid(**opts(n_per_side=side, spacing=spacing, std=std))
    elif name == "lines":
        return (lambda key, n: lines(key, n)), None
    else:
        raise ValueError(f"unknown toy dataset {name!r}; accepted: {TOY_DATASETS}")
    return mixture.sample, mixture
