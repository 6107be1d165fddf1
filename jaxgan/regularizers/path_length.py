"""StyleGAN2's path length regularization of G (Karras et al. 2020, section 3.2; the ADA code's loss.py).

For per-layer latents ws [B, L, w_dim] and image x = g(ws) [B, H, W, C], with y ~ N(0, I) / sqrt(H W):

    a_b = sqrt( mean_l || d(sum_pixels x_b * y_b) / d ws_{b,l} ||^2 )        (the Jacobian-vector length)
    m'  = m + decay * (mean_b a_b - m)                                       (the running mean, decay 0.01)
    penalty = mean_b (a_b - m')^2                                            (gradient through a_b and m')

on the first ``B // batch_shrink`` examples (2 in the reference), lazily every 4 G steps with the weight times 4
(`Objective.every`); weight 2 in config F. Under data parallelism the examples are the first of the global batch,
split evenly over the devices, so N devices compute one device's penalty and mean (the reference's GPUs each
take their own first examples and y). G must return ``(x, {"ws": ws, "pl_mean": m})`` and take ws in place
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


def path_lengths(synthesis, ws: jax.Array, key: jax.Array, *, offset=0, total: int | None = None) -> jax.Array:
    """a_b [B] for ``synthesis(ws) -> x`` [B, H, W, C] (see the module docstring); differentiable. y is rows
    ``offset`` to ``offset + B`` of ``total`` (default B) rows drawn from ``key`` (a device's share of a draw for
    the global subset)."""
    x, vjp = jax.vjp(synthesis, ws)
    total = x.shape[0] if total is None else total
    y = jax.random.normal(key, (total, *x.shape[1:]), jnp.float32)
    if total != x.shape[0]:
        y = jax.lax.dynamic_slice_in_dim(y, offset, x.shape[0])
    (grads,) = vjp((y / jnp.sqrt(float(x.shape[1] * x.shape[2]))).astype(x.dtype))
    return jnp.sqrt(jnp.mean(jnp.sum(jnp.square(grads.astype(jnp.float32)), axis=2), axis=1))


def _lengths(t: TermInputs, batch_shrink: int):
    """(a_b of this device's examples, their mean over all devices): the first ``B // batch_shrink`` examples of
    the global batch, split evenly over the devices of ``t.axis_name`` (ws gathered, y drawn for the whole
    subset from the device-invariant key and sliced), so that N devices compute one device's penalty."""
    if t.g_aux is None or "ws" not in t.g_aux or t.g_fn is None:
        raise ValueError("path length regularization needs a G that returns (x, {'ws', 'pl_mean'}) "
                         "and takes ws in place of z (--model=stylegan2)")
    ws, labels = t.g_aux["ws"], t.fake_labels
    if t.axis_name is None:
        n = max(ws.shape[0] // batch_shrink, 1)
        lengths = path_lengths(lambda w: t.g_fn(w, None if labels is None else labels[:n]), ws[:n], t.key)
        return lengths, jnp.mean(lengths)
    devices = jax.lax.axis_size(t.axis_name)
    n = max(devices * ws.shape[0] // batch_shrink, 1)
    if n % devices:
        raise ValueError(f"path length regularization on {devices} devices takes the first {n} examples of the "
                         f"global batch, which must split evenly over the devices; choose --batch_size so that "
                         f"batch_size // {batch_shrink} is a multiple of {devices}")
    share, start = n // devices, jax.lax.axis_index(t.axis_name) * (n // devices)

    def mine(a):  # this device's share of the global subset; the gradient returns to the owner (psum_scatter)
        return jax.lax.dynamic_slice_in_dim(jax.lax.all_gather(a, t.axis_name, tiled=True), start, share)

    ws, labels = mine(ws), None if labels is None else mine(labels)
    lengths = path_lengths(lambda w: t.g_fn(w, labels), ws, t.shared_key, offset=start, total=n)
    return lengths, jax.lax.pmean(jax.lax.stop_gradient(jnp.mean(lengths)), t.axis_name)


def _running_mean(t: TermInputs, mean_lengths: jax.Array, decay: float) -> jax.Array:
    """m' = m + decay (mean_b a_b - m), with m (G's ``pl_mean``) a constant."""
    mean = jax.lax.stop_gradient(t.g_aux["pl_mean"])
    return mean + decay * (mean_lengths - mean)


def penalty(t: TermInputs, decay: float = DECAY, batch_shrink: int = BATCH_SHRINK) -> jax.Array:
    """mean_b (a_b - m')^2 (scalar float32)."""
    lengths, mean_lengths = _lengths(t, batch_shrink)
    new_mean = _running_mean(t, mean_lengths, decay)
    if t.axis_name is None:
        return jnp.mean(jnp.square(lengths - new_mean))
    # This device's share of the mean over the subset; the device mean of its gradient is the one device's
    # gradient: the part through m' (d m' = decay * d mean_b a_b, a sum over every device's a_b) is written
    # as -2 decay (mean_b a_b - m') d(this device's mean a_b), which is 0 in value.
    local = jnp.mean(lengths)
    return (jnp.mean(jnp.square(lengths - new_mean))
            - 2.0 * decay * (mean_lengths - new_mean) * (local - jax.lax.stop_gradient(local)))


def mean_update(t: TermInputs, decay: float = DECAY, batch_shrink: int = BATCH_SHRINK) -> jax.Array:
    """m' - m, without gradient (the metric-only term that moves G's ``pl_mean``)."""
    _, mean_lengths = _lengths(t, batch_shrink)
    return jax.lax.stop_gradient(_running_mean(t, mean_lengths, decay) - t.g_aux["pl_mean"])


def path_length(weight: float = 2.0, every: int = EVERY, decay: float = DECAY,
                batch_shrink: int = BATCH_SHRINK) -> Objective:
    """G terms ``path_length`` (weight ``hparams["path_length_weight"]``, default ``weight``) and the metric-only
    ``path_length_update``, both every ``every`` G steps."""
    terms = (Term("path_length", "g", lambda t: penalty(t, decay, batch_shrink), runs_generator=True),)
    objective = Objective(terms).weighted_by("path_length_weight", weight)
    update = Objective((Term("path_length_update", "g", lambda t: mean_update(t, decay, batch_shrink),
                             metric_only=True, runs_generator=True),))
    return (objective + update).every(every)


__all__ = ["path_length", "path_lengths", "penalty", "mean_update", "DECAY", "BATCH_SHRINK", "EVERY"]
