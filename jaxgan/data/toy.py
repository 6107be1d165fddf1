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

_FEISTEL_ROUNDS = 4


def _mix32(x: jax.Array) -> jax.Array:
    """A 32-bit integer hash (the finaliser of MurmurHash3) of uint32 ``x``."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def permute_index(key: jax.Array, i: jax.Array, n: int) -> jax.Array:
    """A pseudo-random permutation of [0, n) chosen by ``key``, applied to one index ``i`` (int32 scalar): a
    balanced Feistel network on the smallest even-bit power-of-two domain >= n, with cycle walking back into
    [0, n). A bijection for every key, computed per index (no sort of n elements), so a step draws its batch of an
    epoch in O(batch) work."""
    half = max(1, (max(n - 1, 1).bit_length() + 1) // 2)
    mask = jnp.uint32((1 << half) - 1)
    round_keys = jax.random.bits(key, (_FEISTEL_ROUNDS,), jnp.uint32)

    def feistel(x):
        left, right = x >> half, x & mask
        for r in range(_FEISTEL_ROUNDS):
            left, right = right, left ^ (_mix32(right ^ round_keys[r]) & mask)
        return (left << half) | right

    x = feistel(jnp.asarray(i, jnp.uint32))
    x = jax.lax.while_loop(lambda x: x >= n, feistel, x)
    return x.astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class FixedTrainingSet:
    """A training set of ``size`` points drawn once from ``sample`` and gone through in epochs (PacGAN's 2D
    experiments: 100,000 points).

    Point k is ``sample(fold_in(set_key, k), 1)``: the set is never materialised, each batch draws only its own
    points. Sample j of the run (j = t * n + position in batch t of n) is point ``perm_e(j mod size)`` of the
    permutation of epoch e = j // size (`permute_index`), so each epoch draws every point exactly once and batches
    may straddle epochs. ``set_key, order_key = split(data_key)``: the set and its orders depend only on the run's
    data key (its seed). Pure and jittable; vmaps over data keys (sweeps)."""
    sample: Callable[[jax.Array, int], jax.Array]
    size: int

    def __post_init__(self):
        if self.size < 1:
            raise ValueError(f"a fixed training set needs size >= 1, got {self.size}")

    def point_indices(self, data_key: jax.Array, t, n: int) -> jax.Array:
        """Indices [n] into the set of batch ``t`` (of ``n`` samples)."""
        order_key = jax.random.split(data_key)[1]
        j = jnp.asarray(t, jnp.int32) * n + jnp.arange(n, dtype=jnp.int32)
        epoch, position = j // self.size, j % self.size
        return jax.vmap(lambda e, p: permute_index(jax.random.fold_in(order_key, e), p, self.size))(epoch, position)

    def points(self, data_key: jax.Array, indices: jax.Array) -> jax.Array:
        """The set's points ``indices`` [n] -> [n, 2]."""
        set_key = jax.random.split(data_key)[0]
        return jax.vmap(lambda k: self.sample(jax.random.fold_in(set_key, k), 1)[0])(indices)

    def batch(self, data_key: jax.Array, t, n: int) -> jax.Array:
        """Batch ``t`` of ``n`` samples [n, 2]."""
        return self.points(data_key, self.point_indices(data_key, t, n))

    def __call__(self, key: jax.Array, n: int) -> jax.Array:
        """``n`` points of the set drawn uniformly with replacement from ``key`` (the ``sample(key, n)`` protocol
        for callers without a step)."""
        return self.points(key, jax.random.randint(jax.random.fold_in(key, 1), (n,), 0, self.size))


def draw_batch(sampler: Callable, data_key: jax.Array, t, n: int) -> jax.Array:
    """Batch ``t`` [n, 2] of a run with ``data_key``: ``sampler(fold_in(data_key, t), n)`` (fresh samples each
    step), or the epochs of a `FixedTrainingSet`."""
    if isinstance(sampler, FixedTrainingSet):
        return sampler.batch(data_key, t, n)
    return sampler(jax.random.fold_in(data_key, t), n)


def toy_sampler(name: str, *, n_modes: int | None = None, radius: float | None = None,
                std: float | None = None, spacing: float | None = None, train_size: int = 0
                ) -> tuple[Callable[[jax.Array, int], jax.Array], GaussianMixture | None]:
    """(sample(key, n) -> [n, 2], the mixture or None) for ``--dataset`` ``name``; None keeps each default.
    ``train_size`` > 0: the sampler is a `FixedTrainingSet` of that many points (draw batches with `draw_batch`)."""
    sample, mixture = _distribution_sampler(name, n_modes=n_modes, radius=radius, std=std, spacing=spacing)
    return (FixedTrainingSet(sample, train_size) if train_size else sample), mixture


def _distribution_sampler(name: str, *, n_modes, radius, std, spacing):
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
