"""Orthogonal regularization, BigGAN's off-diagonal form (Brock et al. 2019, section 3.1; BigGAN-PyTorch
``utils.ortho``), as an optax transformation that adds its gradient to the updates before the optimizer.

For each weight W viewed as ``[out, fan_in]`` (rows = output units, as PyTorch's ``weight.view(out, -1)``: a Flax
Dense kernel ``[in, out]`` and a conv kernel ``[kh, kw, in, out]`` become ``kernel.reshape(-1, out).T``)::

    orthogonal_penalty = sum_W 1/2 * ||(W W^T) * (1 - I)||_F^2

whose gradient ``2 ((W W^T) * (1 - I)) W`` is exactly what ``utils.ortho`` adds to ``param.grad`` (the paper writes
the penalty without the 1/2; the code, whose strength 1e-4 trained BigGAN, adds this gradient). So
``--g_ortho_weight=1e-4`` reproduces BigGAN-PyTorch's ``--G_ortho 1e-4``.

Which parameters: every parameter with at least 2 axes (dense and conv kernels, attention projections) except
embeddings (a leaf named ``embedding``, Flax's ``nn.Embed``); 1-D parameters (biases, normalisation scales and
offsets) and scalars are skipped. BigGAN-PyTorch skips parameters with fewer than 2 axes and blacklists G's shared
class embedding, whose rows are class vectors with no reason to be orthogonal; we skip every embedding.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def is_regularized(path, leaf) -> bool:
    """At least 2 axes and not an embedding table."""
    last = path[-1] if path else None
    name = getattr(last, "key", getattr(last, "name", None))
    return jnp.ndim(leaf) >= 2 and name != "embedding"


def as_rows(kernel: jax.Array) -> jax.Array:
    """``[..., out]`` kernel -> ``[out, fan_in]`` (PyTorch's weight.view(out, -1), up to the order of columns,
    which W W^T does not see)."""
    return kernel.reshape(-1, kernel.shape[-1]).T


def off_diagonal_penalty(w: jax.Array) -> jax.Array:
    """``1/2 ||(W W^T) * (1 - I)||_F^2`` of a ``[out, fan_in]`` matrix."""
    w = w.astype(jnp.float32)
    gram = w @ w.T
    off = gram * (1.0 - jnp.eye(gram.shape[0], dtype=gram.dtype))
    return 0.5 * jnp.sum(jnp.square(off))


def orthogonal_penalty(params) -> jax.Array:
    """The sum of `off_diagonal_penalty` over the regularized parameters of a pytree (see the module docstring)."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    total = jnp.zeros((), jnp.float32)
    for path, leaf in leaves:
        if is_regularized(path, leaf):
            total = total + off_diagonal_penalty(as_rows(leaf))
    return total


def add_orthogonal_regularization(strength: float) -> optax.GradientTransformation:
    """Adds ``strength * jax.grad(orthogonal_penalty)(params)`` to the updates (gradients); stateless. Chain it
    before the optimizer: ``optax.chain(add_orthogonal_regularization(1e-4), optax.adam(...))``."""
    if not strength >= 0:
        raise ValueError(f"orthogonal regularization strength must be >= 0, got {strength}")

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("add_orthogonal_regularization needs the params: call update(updates, state, params)")
        grads = jax.grad(orthogonal_penalty)(params)
        return jax.tree.map(lambda u, g: u + strength * g.astype(u.dtype), updates, grads), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)
