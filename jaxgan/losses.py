"""Adversarial losses as pure functions of discriminator outputs.

Names, arguments and numbers follow TF-GAN's `losses_impl.py`, so code written against TF-GAN ports
over by renaming the module. Conventions:

* Inputs are discriminator outputs of any shape ``[B, ...]`` (a patch discriminator gives ``[B, H, W]``):
  logits in (-inf, inf) for the JSD family, critic values for the Wasserstein family.
* Every loss reduces like TF-GAN's default ``SUM_BY_NONZERO_WEIGHTS``: the weighted sum of the
  per-element losses divided by the number of elements whose (broadcast) weight is non-zero.
  ``reduction`` may also be ``"mean"``, ``"sum"`` or ``"none"`` (per-element losses, weights applied).
* Discriminator losses compute the loss on real and on generated outputs separately, each with its own
  weights (``real_weights``, ``generated_weights``) and reduction, and return their sum.

Deliberate differences from TF-GAN:

* ``label_smoothing`` defaults to 0.0 everywhere (TF-GAN smooths the real labels of the minimax and
  modified discriminator losses by 0.25 by default, a common surprise). Pass ``label_smoothing=0.25``
  for TF-GAN's numbers. The smoothing is TF-GAN's (``tf.losses.sigmoid_cross_entropy``): a target y becomes
  ``y * (1 - s) + s / 2``, so a real target of 1 becomes ``1 - s/2`` (0.875 for s = 0.25), not the ``1 - s``
  of Salimans et al. (2016)'s one-sided smoothing; their target 0.9 is ``label_smoothing=0.2``.
* ``minimax_generator_loss`` returns ``mean(log(1 - sigmoid(fake)))`` (the generator's part of the
  minimax value function). TF-GAN computes it as ``-minimax_discriminator_loss(ones, fake)``, which adds
  the constant ``-softplus(-1)`` evaluated with the smoothed label (``-0.31326`` for no smoothing) times the
  mean weight; gradients are identical.
* ``relativistic_*`` losses take the optional ``weights``/``reduction`` tail too (TF-GAN's take none and
  use a plain mean, which is what our defaults reproduce).

The f-GAN family (Nowozin et al. 2016) is at the end: ``f_divergence_discriminator_loss(real, fake,
divergence)`` and ``f_divergence_generator_loss(fake, divergence)`` with ``divergence`` one of
``F_DIVERGENCES``.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import numpy as np
import jax.numpy as jnp

REDUCTIONS = ("sum_by_nonzero_weights", "mean", "sum", "none")


def reduce_weighted(losses: jax.Array, weights=1.0, reduction: str = "sum_by_nonzero_weights") -> jax.Array:
    """Weights per-element ``losses`` [B, ...] and reduces them like TF's ``compute_weighted_loss``.

    ``weights`` is a scalar or an array broadcastable to ``losses`` (e.g. ``[B]`` per example is broadcast
    from the left: ``[B] -> [B, 1, ...]``). Returns a scalar, or ``losses * weights`` for ``"none"``.
    """
    losses = jnp.asarray(losses, jnp.float32)
    weights = jnp.asarray(weights, jnp.float32)
    if weights.ndim and weights.ndim < losses.ndim:
        weights = weights.reshape(weights.shape + (1,) * (losses.ndim - weights.ndim))
    weighted = losses * weights
    if reduction == "none":
        return weighted
    if reduction == "sum":
        return jnp.sum(weighted)
    if reduction == "mean":
        return jnp.mean(weighted)
    if reduction == "sum_by_nonzero_weights":
        present = jnp.sum(jnp.broadcast_to(weights != 0, losses.shape).astype(jnp.float32))
        return jnp.where(present > 0, jnp.sum(weighted) / jnp.maximum(present, 1.0), 0.0)
    raise ValueError(f"reduction={reduction!r} is not one of {REDUCTIONS}")


def _sigmoid_cross_entropy(labels, logits, label_smoothing=0.0):
    """Per-element sigmoid cross entropy with TF's label smoothing (labels*(1-s) + s/2)."""
    labels = labels * (1.0 - label_smoothing) + 0.5 * label_smoothing
    return jax.nn.softplus(logits) - labels * logits


def _softmax_cross_entropy(one_hot_labels, logits, label_smoothing=0.0):
    """Per-example softmax cross entropy over the last axis with TF's smoothing (y*(1-s) + s/K)."""
    num_classes = logits.shape[-1]
    labels = one_hot_labels * (1.0 - label_smoothing) + label_smoothing / num_classes
    return -jnp.sum(labels * jax.nn.log_softmax(logits, axis=-1), axis=-1)


  # ----------------------------------------------------------------------------- minimax / modified (JSD)

def minimax_discriminator_loss(discriminator_real_outputs, discriminator_gen_outputs, *, label_smoothing=0.0,
                               real_weights=1.0, generated_weights=1.0, reduction="sum_by_nonzero_weights"):
    """Original GAN discriminator loss: -log(D(x)) - log(1 - D(G(z))) on logits.

    ``label_smoothing`` s replaces the real examples' target 1 by ``1 - s/2`` (TF-GAN's formula, see the module
    docstring); the generated examples' target stays 0 (one-sided). Returns a scalar.
    """
    real = jnp.asarray(discriminator_real_outputs, jnp.float32)
    gen = jnp.asarray(discriminator_gen_outputs, jnp.float32)
    loss_on_real = reduce_weighted(_sigmoid_cross_entropy(jnp.ones_like(real), real, label_smoothing),
                                   real_weights, reduction)
    loss_on_generated = reduce_weighted(_sigmoid_cross_entropy(jnp.zeros_like(gen), gen), generated_weights,
                                        reduction)
    return loss_on_real + loss_on_generated


def minimax_generator_loss(discriminator_gen_outputs, *, label_smoothing=0.0, weights=1.0,
                           reduction="sum_by_nonzero_weights"):
    """Original (saturating) GAN generator loss: log(1 - D(G(z))) = -softplus(logits).

    TF-GAN's value is this plus a constant (see the module docstring). ``label_smoothing`` is accepted for
    signature compatibility; it only changes TF-GAN's constant, not the loss here.
    """
    del label_smoothing
    gen = jnp.asarray(discriminator_gen_outputs, jnp.float32)
    return reduce_weighted(-_sigmoid_cross_entropy(jnp.zeros_like(gen), gen), weights, reduction)


def modified_discriminator_loss(discriminator_real_outputs, discriminator_gen_outputs, *, label_smoothing=0.0,
                                real_weights=1.0, generated_weights=1.0, reduction="sum_by_nonzero_weights"):
    """Non-saturating GAN discriminator loss: identical to ``minimax_discriminator_loss``."""
    return minimax_discriminator_loss(discriminator_real_outputs, discriminator_gen_outputs,
                                      label_smoothing=label_smoothing, real_weights=real_weights,
                                      generated_weights=generated_weights, reduction=reduction)


def modified_generator_loss(discriminator_gen_outputs, *, label_smoothing=0.0, weights=1.0,
                            reduction="sum_by_nonzero_weights"):
    """Non-saturating generator loss: -log(D(G(z))) = softplus(-logits); with ``label_smoothing`` s (as in
    TF-GAN) the target is ``1 - s/2`` instead of 1 (`jaxgan.objectives` does not smooth G's target)."""
    gen = jnp.asarray(discriminator_gen_outputs, jnp.float32)
    return reduce_weighted(_sigmoid_cross_entropy(jnp.ones_like(gen), gen, label_smoothing), weights, reduction)


  # ----------------------------------------------------------------------------- least squares

def least_squares_generator_loss(discriminator_gen_outputs, *, real_label=1.0, weights=1.0,
                                 reduction="sum_by_nonzero_weights"):
    """LSGAN generator loss: 0.5 * (D(G(z)) - real_label)^2 on raw outputs."""
    gen = jnp.asarray(discriminator_gen_outputs, jnp.float32)
    return reduce_weighted(0.5 * jnp.square(gen - real_label), weights, reduction)


def least_squares_discriminator_loss(discriminator_real_outputs, discriminator_gen_outputs, *, real_label=1.0,
                                     fake_label=0.0, real_weights=1.0, generated_weights=1.0,
                                     reduction="sum_by_nonzero_weights"):
    """LSGAN discriminator loss: 0.5 * (D(x) - real_label)^2 + 0.5 * (D(G(z)) - fake_label)^2."""
    real = jnp.asarray(discriminator_real_outputs, jnp.float32)
    gen = jnp.asarray(discriminator_gen_outputs, jnp.float32)
    return (reduce_weighted(0.5 * jnp.square(real - real_label), real_weights, reduction)
            + reduce_weighted(0.5 * jnp.square(gen - fake_label), generated_weights, reduction))


  # ----------------------------------------------------------------------------- Wasserstein and hinge

def wasserstein_generator_loss(discriminator_gen_outputs, *, weights=1.0, reduction="sum_by_nonzero_weights"):
    """WGAN generator loss: -D(G(z))."""
    gen = jnp.asarray(discriminator_gen_outputs, jnp.float32)
    return reduce_weighted(-gen, weights, reduction)


def wasserstein_discriminator_loss(discriminator_real_outputs, discriminator_gen_outputs, *, real_weights=1.0,
                                   generated_weights=1.0, reduction="sum_by_nonzero_weights"):
    """WGAN critic loss: D(G(z)) - D(x); its negative estimates W1 for a 1-Lipschitz critic."""
    real = jnp.asarray(discriminator_real_outputs, jnp.float32)
    gen = jnp.asarray(discriminator_gen_outputs, jnp.float32)
    return reduce_weighted(gen, generated_weights, reduction) - reduce_weighted(real, real_weights, reduction)


def wasserstein_hinge_generator_loss(discriminator_gen_outputs, *, weights=1.0,
                                     reduction="sum_by_nonzero_weights"):
    """Hinge generator loss (Lim & Ye 2017; SNGAN, SAGAN, BigGAN): -D(G(z)), as TF-GAN."""
    return wasserstein_generator_loss(discriminator_gen_outputs, weights=weights, reduction=reduction)


def wasserstein_hinge_discriminator_loss(discriminator_real_outputs, discriminator_gen_outputs, *,
                                         real_hinge=1.0, generated_hinge=1.0, real_weights=1.0,
                                         generated_weights=1.0, reduction="sum_by_nonzero_weights"):
    """Hinge discriminator loss: relu(real_hinge - D(x)) + relu(generated_hinge + D(G(z)))."""
    real = jnp.asarray(discriminator_real_outputs, jnp.float32)
    gen = jnp.asarray(discriminator_gen_outputs, jnp.float32)
    return (reduce_weighted(jax.nn.relu(real_hinge - real), real_weights, reduction)
            + reduce_weighted(jax.nn.relu(generated_hinge + gen), generated_weights, reduction))


  # ----------------------------------------------------------------------------- relativistic average

def _relativistic(real, gen):
    real = jnp.asarray(real, jnp.float32)
    gen = jnp.asarray(gen, jnp.float32)
    return real - jnp.mean(gen), gen - jnp.mean(real)


def relativistic_discriminator_loss(discriminator_real_outputs, discriminator_gen_outputs, *, real_weights=1.0,
                                    generated_weights=1.0, reduction="sum_by_nonzero_weights"):
    """Relativistic average GAN discriminator loss (Jolicoeur-Martineau 2018), as TF-GAN.

    With D_ra(x, y) = C(x) - mean(C(y)): -log sigmoid(D_ra(real, fake)) - log(1 - sigmoid(D_ra(fake, real))).
    """
    real_logits, gen_logits = _relativistic(discriminator_real_outputs, discriminator_gen_outputs)
    return (reduce_weighted(_sigmoid_cross_entropy(jnp.ones_like(real_logits), real_logits), real_weights, reduction)
            + reduce_weighted(_sigmoid_cross_entropy(jnp.zeros_like(gen_logits), gen_logits), generated_weights,
                              reduction))


def relativistic_generator_loss(discriminator_real_outputs, discriminator_gen_outputs, *, real_weights=1.0,
                                generated_weights=1.0, reduction="sum_by_nonzero_weights"):
    """Relativistic average GAN generator loss: the discriminator loss with real and fake labels swapped."""
    real_logits, gen_logits = _relativistic(discriminator_real_outputs, discriminator_gen_outputs)
    return (reduce_weighted(_sigmoid_cross_entropy(jnp.zeros_like(real_logits), real_logits), real_weights, reduction)
            + reduce_weighted(_sigmoid_cross_entropy(jnp.ones_like(gen_logits), gen_logits), generated_weights,
                              reduction))


  # ----------------------------------------------------------------------------- ACGAN auxiliary classifier

def acgan_discriminator_loss(discriminator_real_classification_logits, discriminator_gen_classification_logits,
                             one_hot_labels, *, label_smoothing=0.0, real_weights=1.0, generated_weights=1.0,
                             reduction="sum_by_nonzero_weights"):
    """ACGAN auxiliary-classifier loss for D: softmax cross entropy on real and on generated examples.

    Logits are ``[B, ..., K]``, ``one_hot_labels`` the same shape (float or int). As in TF-GAN,
    ``label_smoothing`` applies to the real term only (targets ``(1 - s) * onehot + s / K``); the generated
    term uses the plain labels.
    """
    labels = jnp.asarray(one_hot_labels, jnp.float32)
    real = jnp.asarray(discriminator_real_classification_logits, jnp.float32)
    gen = jnp.asarray(discriminator_gen_classification_logits, jnp.float32)
    return (reduce_weighted(_softmax_cross_entropy(labels, gen, 0.0), generated_weights, reduction)
            + reduce_weighted(_softmax_cross_entropy(labels, real, label_smoothing), real_weights, reduction))


def acgan_generator_loss(discriminator_gen_classification_logits, one_hot_labels, *, label_smoothing=0.0,
                         weights=1.0, reduction="sum_by_nonzero_weights"):
    """ACGAN auxiliary-classifier loss for G: softmax cross entropy of D's class prediction on G(z, y)."""
    labels = jnp.asarray(one_hot_labels, jnp.float32)
    gen = jnp.asarray(discriminator_gen_classification_logits, jnp.float32)
    return reduce_weighted(_softmax_cross_entropy(labels, gen, label_smoothing), weights, reduction)


  # ----------------------------------------------------------------------------- f-GAN

class FDivergence(NamedTuple):
    """One f-divergence of f-GAN (Nowozin et al. 2016, Table 2).

    ``activation`` is the output activation g_f mapping a logit v to the domain of the conjugate f*;
    ``conjugate`` is the Fenchel conjugate f*(t). D maximises E_P[g_f(V(x))] - E_Q[f*(g_f(V(G(z))))],
    a lower bound of D_f(P || Q) that is tight when g_f(V(x)) = f'(p(x)/q(x)).
    """
    activation: Callable[[jax.Array], jax.Array]
    conjugate: Callable[[jax.Array], jax.Array]


_LOG2 = np.float32(np.log(2.0))  # numpy, not jnp: importing jaxgan must not start the JAX backend (jax.distributed)

F_DIVERGENCES = {
    # f(u) = u log u
    "kl": FDivergence(lambda v: v, lambda t: jnp.exp(t - 1.0)),
    # f(u) = -log u
    "reverse_kl": FDivergence(lambda v: -jnp.exp(-v), lambda t: -1.0 - jnp.log(-t)),
    # f(u) = (u - 1)^2
    "pearson": FDivergence(lambda v: v, lambda t: 0.25 * t * t + t),
    # f(u) = (sqrt(u) - 1)^2; g_f(v) = 1 - exp(-v), f*(t) = t / (1 - t) = exp(v) - 1 at t = g_f(v)
    "hellinger": FDivergence(lambda v: 1.0 - jnp.exp(-v), lambda t: t / (1.0 - t)),
    # f(u) = -(u + 1) log((1 + u) / 2) + u log u
    "js": FDivergence(lambda v: _LOG2 - jax.nn.softplus(-v), lambda t: -jnp.log(2.0 - jnp.exp(t))),
}


def f_divergence(name: str) -> FDivergence:
    """The `FDivergence` named ``name`` (a key of `F_DIVERGENCES`); raises ValueError naming the accepted ones."""
    try:
        return F_DIVERGENCES[name]
    except KeyError:
        raise ValueError(f"divergence={name!r} is not one of {sorted(F_DIVERGENCES)}") from None


def _fake_term(gen, divergence: str):
    """f*(g_f(v)) for generated outputs, written in a form that stays finite for large |v|."""
    if divergence == "hellinger":
        return jnp.expm1(gen)  # t/(1-t) with t = 1 - exp(-v)
    if divergence == "js":
        return jax.nn.softplus(gen) - _LOG2  # -log(2 - exp(log2 - softplus(-v)))
    if divergence == "reverse_kl":
        return -1.0 + gen  # -1 - log(exp(-v))
    fd = f_divergence(divergence)
    return fd.conjugate(fd.activation(gen))


def f_divergence_discriminator_loss(discriminator_real_outputs, discriminator_gen_outputs, divergence: str, *,
                                    real_weights=1.0, generated_weights=1.0, reduction="sum_by_nonzero_weights"):
    """f-GAN discriminator loss: -(E_P[g_f(v_real)] - E_Q[f*(g_f(v_fake))]); its negative bounds D_f(P||Q)."""
    fd = f_divergence(divergence)
    real = jnp.asarray(discriminator_real_outputs, jnp.float32)
    gen = jnp.asarray(discriminator_gen_outputs, jnp.float32)
    return (reduce_weighted(-fd.activation(real), real_weights, reduction)
            + reduce_weighted(_fake_term(gen, divergence), generated_weights, reduction))


def f_divergence_generator_loss(discriminator_gen_outputs, divergence: str, *, weights=1.0,
                                reduction="sum_by_nonzero_weights"):
    """f-GAN generator loss, the alternative (non-saturating) form of Nowozin et al.: -E_Q[g_f(v_fake)]."""
    fd = f_divergence(divergence)
    gen = jnp.asarray(discriminator_gen_outputs, jnp.float32)
    return reduce_weighted(-fd.activation(gen), weights, reduction)
