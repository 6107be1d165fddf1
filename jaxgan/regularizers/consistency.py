"""Consistency regularization of D: CR (Zhang et al. 2020), bCR and zCR (Zhao et al. 2021).

Each is an `Objective` of terms over `objectives.TermInputs`; the squared differences are means over every
element, as PyTorch's ``MSELoss`` in StudioGAN (``src/worker.py``):

* CR, D term ``cr``: ``mean((D(x) - D(T(x)))^2)`` on the real batch ``x`` as D saw it.
* bCR, D terms ``bcr_real`` and ``bcr_fake``: the same on the real and on the generated batch.
* zCR, D term ``zcr``: ``mean((D(G(z)) - D(G(z + eps)))^2)``; G term ``zcr``: ``-mean((G(z) - G(z + eps))^2)``
  (the reference's form: G is pushed to *vary* with its latent), ``eps ~ N(0, zcr_sigma^2)``.

``T`` is flip then translation by up to 1/8 of the image (StudioGAN's ``CR_DiffAug``), from
`jaxgan.augment.diffaugment`; any ``transform(key, x) -> x'`` may replace it. The D terms run D in inference mode
through ``d_fn`` on ``[x; T(x)]`` in one call (``per_example_d``: refused with BatchNorm in D), so that an identity
``T`` gives exactly 0; G runs through ``g_fn`` (training mode, one call per latent batch so BatchNorm statistics stay
per batch). Each weight is a run-time hparam of the same name as its flag.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jaxgan.augment import diffaugment
from jaxgan.objectives import Objective, Term, TermInputs

Transform = Callable[[jax.Array, jax.Array], jax.Array]  # (key, x [B, H, W, C]) -> x'


def flip_translation(key: jax.Array, x: jax.Array) -> jax.Array:
    """CR's ``T``: a random horizontal flip (p = 1/2 per image) then a translation by up to 1/8 of the image."""
    k_flip, k_translate = jax.random.split(key)
    return diffaugment.translation(k_translate, diffaugment.flip(k_flip, x), ratio=0.125)


def output_consistency(d_fn, x: jax.Array, x_other: jax.Array, labels) -> jax.Array:
    """``mean((D(x) - D(x_other))^2)`` over every output element, D evaluated once on the concatenation."""
    both = None if labels is None else jnp.concatenate([labels, labels])
    out = d_fn(jnp.concatenate([x, x_other]), both).astype(jnp.float32)
    n = x.shape[0]
    return jnp.mean(jnp.square(out[:n] - out[n:]))


def _augmented_term(name: str, on_fake: bool, transform: Transform) -> Term:
    def fn(t: TermInputs):
        x, labels = (t.fake, t.fake_labels) if on_fake else (t.real, t.real_labels)
        return output_consistency(t.d_fn, x, transform(t.key, x), labels)
    return Term(name, "d", fn, per_example_d=True)


def cr(weight: float = 10.0, transform: Transform = flip_translation) -> Objective:
    """CR on real data, weighted by the hparam ``cr_weight`` (the paper's lambda, 10)."""
    return Objective((_augmented_term("cr", False, transform),)).weighted_by("cr_weight", weight)


def bcr(real_weight: float = 10.0, fake_weight: float = 10.0, transform: Transform = flip_translation) -> Objective:
    """bCR: CR on real and on generated data, weighted by the hparams ``bcr_real_weight``, ``bcr_fake_weight``;
    a weight of 0 leaves its term out."""
    objective = Objective(())
    if real_weight:
        objective += Objective((_augmented_term("bcr_real", False, transform),)).weighted_by("bcr_real_weight",
                                                                                              real_weight)
    if fake_weight:
        objective += Objective((_augmented_term("bcr_fake", True, transform),)).weighted_by("bcr_fake_weight",
                                                                                             fake_weight)
    return objective


def perturbed_latents(t: TermInputs) -> jax.Array:
    """``z + eps``, eps ~ N(0, zcr_sigma^2) drawn from the term's key."""
    return t.latents + t.hparams["zcr_sigma"] * jax.random.normal(t.key, t.latents.shape, t.latents.dtype)


def zcr_d(t: TermInputs) -> jax.Array:
    """zCR's D term: ``mean((D(G(z)) - D(G(z + eps)))^2)`` (G a constant here)."""
    x, x_perturbed = t.g_fn(t.latents, t.fake_labels), t.g_fn(perturbed_latents(t), t.fake_labels)
    return output_consistency(t.d_fn, x, x_perturbed, t.fake_labels)


def zcr_g(t: TermInputs) -> jax.Array:
    """zCR's G term: ``-mean((G(z) - G(z + eps))^2)`` over every pixel."""
    x, x_perturbed = t.g_fn(t.latents, t.fake_labels), t.g_fn(perturbed_latents(t), t.fake_labels)
    return -jnp.mean(jnp.square(x.astype(jnp.float32) - x_perturbed.astype(jnp.float32)))


def zcr(d_weight: float = 5.0, g_weight: float = 0.5, sigma: float = 0.05) -> Objective:
    """zCR (the paper's lambda_dis = 5, lambda_gen = 0.5, sigma_noise = 0.05), weighted by the hparams
    ``zcr_d_weight`` and ``zcr_g_weight``; ``zcr_sigma`` is a hparam too. A weight of 0 leaves its term out."""
    if not sigma > 0:
        raise ValueError(f"zcr sigma must be > 0, got {sigma}")
    objective = Objective((), {"zcr_sigma": float(sigma)})
    if d_weight:
        objective += Objective((Term("zcr", "d", zcr_d, per_example_d=True),)).weighted_by("zcr_d_weight", d_weight)
    if g_weight:
        objective += Objective((Term("zcr", "g", zcr_g, runs_generator=True),)).weighted_by("zcr_g_weight", g_weight)
    return objective
