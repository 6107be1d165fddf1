"""StyleGAN2's path length regularization of G (Karras et al. 2020, section 3.2; the ADA code's loss.py).

For per-layer latents ws [B, L, w_dim] and image x = g(ws) [B, H, W, C], with y ~ N(0, I) / sqrt(H W):

    a_b = sqrt( mean_l || d(sum_pixels x_b * y_b) / d ws_{b,l} ||^2 )        (the Jacobian-vector length)
    m'  = m + decay * (mean_b a_b - m)                                       (the running mean, decay 0.01)
    penalty = mean_b (a_b - m')^2                                            (gradient through a_b and m')

on the first ``B // batch_shrink`` examples (2 in the reference), lazily every 4 G steps with the weight times 4
(`Objective.every`); weight 2 in config F. G must return ``(x, {"ws": ws, "pl_mean": m})`` and take ws in place
of z (`jaxgan.models.stylegan2`). The term reaches x = g(ws) through ``TermInputs.g_fn`` (G in training mode,
differentiable in its parameters; its noise is the fixed pattern, no fresh noise).

The running mean m lives in G's model state: a metric-only term ``path_length_update`` reports ``m' - m`` (0 on
the skipped steps) and the train step hands G's term values to the generator's ``absorb_term_values``, which adds
it to m. That term recomputes the lengths with its own y (one extra Jacobian-vector product on the lazy steps).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxgan.objectives import Objective, Term, TermInputs

DECAY = 0.01
BATCH_SHRINK = 2
EVERY = 4


def path_lengths(synthesis, ws: jax.Array, key: jax.Array) -> jax.Array:
    """a_b [B] for ``synthesis(ws) -> x`` [B, H, W, C] (see the module docstring); differentiable."""
    x, vjp = jax.vjp(synthesis, ws)
    y = jax.random.normal(key, x.shape, jnp.float32) / jnp.sqrt(float(x.shape[1] * x.shape[2]))
    (grads,) = vjp(y.astype(x.dtype))
    return jnp.sqrt(jnp.mean(jnp.sum(jnp.square(grads.astype(jnp.float32)), axis=2), axis=1))


def _lengths_and_mean(t: TermInputs, decay: float, batch_shrink: int):
    if t.g_aux is None or "ws" not in t.g_aux or t.g_fn is None:
        raise ValueError("path length regularization needs a G that returns (x, {'ws', 'pl_mean'}) "
                         "and takes ws in place of z (--model=stylegan2)")
    n = max(t.g_aux["ws"].shape[0] // batch_shrink, 1)
    labels = None if t.fake_labels is None else t.fake_labels[:n]
    lengths = path_lengths(lambda w: t.g_fn(w, labels), t.g_aux["ws"][:n], t.key)
    mean = jax.lax.stop_gradient(t.g_aux["pl_mean"])
    return lengths, mean + decay * (jnp.mean(lengths) - mean)


def penalty(t: TermInputs, decay: float = DECAY, batch_shrink: int = BATCH_SHRINK) -> jax.Array:
    """mean_b (a_b - m')^2 (scalar float32)."""
    lengths, new_mean = _lengths_and_mean(t, decay, batch_shrink)
    return jnp.mean(jnp.square(lengths - new_mean))


def mean_update(t: TermInputs, decay: float = DECAY, batch_shrink: int = BATCH_SHRINK) -> jax.Array:
    """m' - m, without gradient (the metric-only term that moves G's ``pl_mean``)."""
    lengths, new_mean = _lengths_and_mean(t, decay, batch_shrink)
    return jax.lax.stop_gradient(new_mean - t.g_aux["pl_mean"])


def path_length(weight: float = 2.0, every: int = EVERY, decay: float = DECAY,
                batch_shrink: int = BATCH_SHRINK) -> Objective:
    """G terms ``path_length`` (weight ``hparams["path_length_weight"]``, default ``weight``) and the metric-only
    ``path_length_update``, both every ``every`` G steps."""
    terms = (Term("path_length", "g", lambda t: penalty(t, decay, batch_shrink)),)
    objective = Objective(terms).weighted_by("path_length_weight", weight)
    update = Objective((Term("path_length_update", "g", lambda t: mean_update(t, decay, batch_shrink),
                             metric_only=True),))
    return (objective + update).every(every)


__all__ = ["path_length", "path_lengths", "penalty", "mean_update", "DECAY", "BATCH_SHRINK", "EVERY"]
