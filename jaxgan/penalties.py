"""Discriminator regularisers as pure functions: gradient penalties via `jax.grad`, weight clipping.

Every penalty takes ``d_fn``, a closure mapping a batch ``x`` [B, ...] to discriminator outputs [B] or
[B, ...] (a patch discriminator's outputs are summed per example). Gradients are taken per example:
``jax.grad(lambda x: d_fn(x).sum())(x)`` gives each example's own input gradient as long as D treats
examples independently, which is why a D with BatchNorm in training mode is refused by the objective
(see `jaxgan.objectives`). Norms run over all non-batch axes (the NCHW ``dim=1`` bug of some references
penalises per pixel).

Numerical safety: norms are ``sqrt(sum g^2 + epsilon)`` through `safe_norm`, whose gradient is finite
(zero) where the gradient vanishes exactly, even for ``epsilon=0``.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jaxgan.losses import reduce_weighted

DiscriminatorFn = Callable[[jax.Array], jax.Array]


def safe_norm(x: jax.Array, epsilon: float = 0.0) -> jax.Array:
    """Per-example L2 norm over all non-batch axes, ``sqrt(sum x^2 + epsilon)``, NaN-free at 0. [B,...]->[B]."""
    sq = jnp.sum(jnp.square(x.reshape(x.shape[0], -1).astype(jnp.float32)), axis=1) + epsilon
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def input_gradients(d_fn: DiscriminatorFn, x: jax.Array) -> jax.Array:
    """d sum(D(x)) / dx, computed per example: [B, ...] -> [B, ...] (float32)."""
    return jax.grad(lambda inputs: jnp.sum(d_fn(inputs).astype(jnp.float32)))(x.astype(jnp.float32))


def _interpolate(real, fake, key):
    alpha = jax.random.uniform(key, (real.shape[0],) + (1,) * (real.ndim - 1), dtype=jnp.float32)
    return real + alpha * (fake - real)


def gradient_penalty(d_fn: DiscriminatorFn, real: jax.Array, fake: jax.Array, key: jax.Array, *,
                     target: float = 1.0, one_sided: bool = False, epsilon: float = 1e-10, weights=1.0,
                     reduction: str = "sum_by_nonzero_weights") -> jax.Array:
    """WGAN-GP penalty (Gulrajani et al. 2017), as TF-GAN's ``wasserstein_gradient_penalty``.

    At x_hat = real + alpha (fake - real), alpha ~ U[0, 1] per example:
    ``(||grad D(x_hat)|| / target - 1)^2``, or ``max(0, .)^2`` with ``one_sided`` (only slopes above the
    target are penalised). real, fake: [B, ...] of the same shape. Returns a scalar (or [B] for "none").
    """
    x_hat = _interpolate(real, fake, key)
    slopes = safe_norm(input_gradients(d_fn, x_hat), epsilon)
    excess = slopes / target - 1.0
    if one_sided:
        excess = jax.nn.relu(excess)
    return reduce_weighted(jnp.square(excess), weights, reduction)


def r1_penalty(d_fn: DiscriminatorFn, real: jax.Array, *, weights=1.0,
               reduction: str = "sum_by_nonzero_weights") -> jax.Array:
    """R1 (Mescheder et al. 2018): E_real ||grad D(x)||^2. Their ``gamma/2 * R1`` is weight ``gamma/2``."""
    grads = input_gradients(d_fn, real)
    return reduce_weighted(jnp.sum(jnp.square(grads.reshape(grads.shape[0], -1)), axis=1), weights, reduction)


def r2_penalty(d_fn: DiscriminatorFn, fake: jax.Array, *, weights=1.0,
               reduction: str = "sum_by_nonzero_weights") -> jax.Array:
    """R2 (Mescheder et al. 2018): E_fake ||grad D(G(z))||^2 (the fake batch should be stop-gradiented)."""
    return r1_penalty(d_fn, fake, weights=weights, reduction=reduction)


def dragan_penalty(d_fn: DiscriminatorFn, real: jax.Array, key: jax.Array, *, target: float = 1.0,
                   perturbation: float = 0.5, epsilon: float = 1e-10, weights=1.0,
                   reduction: str = "sum_by_nonzero_weights") -> jax.Array:
    """DRAGAN penalty (Kodali et al. 2017), as the authors' code and compare_gan.

    Perturbed points x_p = x + perturbation * std(x) * u, u ~ U[0,1] elementwise, with std over the whole
    batch; x_hat = x + alpha (x_p - x) per example; penalty ``(||grad D(x_hat)|| - target)^2``.
    """
    k_noise, k_alpha = jax.random.split(key)
    real = real.astype(jnp.float32)
    perturbed = real + perturbation * jnp.std(real) * jax.random.uniform(k_noise, real.shape)
    x_hat = jax.lax.stop_gradient(_interpolate(real, perturbed, k_alpha))
    slopes = safe_norm(input_gradients(d_fn, x_hat), epsilon)
    return reduce_weighted(jnp.square(slopes - target), weights, reduction)


def clip_weights(params, clip_value: float):
    """Original WGAN weight clipping: every parameter clipped to [-clip_value, clip_value]."""
    return jax.tree.map(lambda p: jnp.clip(p, -clip_value, clip_value), params)
