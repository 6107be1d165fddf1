"""The train state: one PyTree holding everything a step reads and a resume needs.

``GANState(step, key, g, d, g_ema_params, hparams)`` with ``PlayerState(params, model_state, opt_state)``
for each player. ``model_state`` holds the non-trained variable collections of a Flax module (``{}`` for a
plain MLP, ``{"batch_stats": ...}`` for BatchNorm statistics and spectral-norm vectors). ``hparams`` maps
names to float32 scalars the step reads at run time (see `jaxgan.objectives`); with stacked states
(`jax.vmap` over runs) each run has its own values.

Models follow one calling convention: ``generator(z, labels=None, *, train)`` with z [B, latent_dim] and
``discriminator(x, labels=None, *, train)`` returning outputs [B] (or [B, ...]).
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct, traverse_util


@struct.dataclass
class PlayerState:
    params: Any
    model_state: Any  # dict of non-param collections, e.g. {"batch_stats": ...}; {} if none
    opt_state: Any


@struct.dataclass
class GANState:
    step: jax.Array  # int32 scalar: number of completed steps
    key: jax.Array  # typed PRNG key (jax.random.key), split inside the step
    g: PlayerState
    d: PlayerState
    g_ema_params: Any  # exponential moving average of G's params (a copy of them when EMA is off)
    hparams: Mapping[str, jax.Array]  # float32 scalars read by the step


def split_variables(variables) -> tuple[Any, dict]:
    """Flax variables -> (params, the other collections)."""
    variables = dict(variables)
    params = variables.pop("params", {})
    return params, variables


def has_batch_norm(model_state) -> bool:
    """Whether a model state holds BatchNorm statistics (``mean``/``var``), as opposed to only SN vectors."""
    flat = traverse_util.flatten_dict(dict(model_state)) if model_state else {}
    return any(path[-1] in ("mean", "var") for path in flat)


def _is_inject_state(state) -> bool:
    return hasattr(state, "hyperparams") and hasattr(state, "inner_state")


def set_learning_rate(opt_state, learning_rate):
    """Sets the learning rate inside an ``optax.inject_hyperparams`` state (searched through chains)."""
    found = False

    def visit(state):
        nonlocal found
        if _is_inject_state(state) and "learning_rate" in state.hyperparams:
            found = True
            hyperparams = dict(state.hyperparams)
            hyperparams["learning_rate"] = jnp.asarray(learning_rate, hyperparams["learning_rate"].dtype)
            return state._replace(hyperparams=hyperparams)
        if isinstance(state, tuple) and not hasattr(state, "_fields"):
            return tuple(visit(s) for s in state)
        return state

    new_state = visit(opt_state)
    if not found:
        raise ValueError("optimizer has no injectable 'learning_rate'; build it with optax.inject_hyperparams")
    return new_state


def get_learning_rate(opt_state):
    """The learning rate of an ``optax.inject_hyperparams`` state (searched through chains), or None."""
    if _is_inject_state(opt_state):
        return opt_state.hyperparams.get("learning_rate")
    if isinstance(opt_state, tuple) and not hasattr(opt_state, "_fields"):
        for s in opt_state:
            lr = get_learning_rate(s)
            if lr is not None:
                return lr
    return None


def init_gan_state(key: jax.Array, generator: nn.Module, discriminator: nn.Module,
                   g_optimizer: optax.GradientTransformation, d_optimizer: optax.GradientTransformation, *,
                   data_shape: tuple[int, ...], hparams: Mapping[str, float] | None = None,
                   num_classes: int = 0) -> GANState:
    """Initialises both players from ``key``. ``data_shape`` is one example's shape, e.g. (2,) or (32, 32, 3).

    ``hparams`` must hold every name in the objective's ``Objective.hparams`` (e.g. ``label_smoothing``,
    ``penalty_weight``; the train step refuses a state without them), and may add ``ema_decay``,
    ``instance_noise`` and ``g_lr``/``d_lr``: the learning rates are written into ``inject_hyperparams``
    optimizer states, so a vmapped init over learning rates gives each run its own. Pure and vmappable.
    """
    hparams = {k: jnp.asarray(v, jnp.float32) for k, v in (hparams or {}).items()}
    key, g_key, d_key = jax.random.split(key, 3)
    z = jnp.zeros((1, generator.latent_dim), jnp.float32)
    labels = jnp.zeros((1,), jnp.int32) if num_classes else None
    g_params, g_state = split_variables(generator.init(g_key, z, labels, train=False))
    x = jnp.zeros((1,) + tuple(data_shape), jnp.float32)
    d_params, d_state = split_variables(discriminator.init(d_key, x, labels, train=False))
    g_opt_state = g_optimizer.init(g_params)
    d_opt_state = d_optimizer.init(d_params)
    if "g_lr" in hparams:
        g_opt_state = set_learning_rate(g_opt_state, hparams["g_lr"])
    if "d_lr" in hparams:
        d_opt_state = set_learning_rate(d_opt_state, hparams["d_lr"])
    return GANState(step=jnp.zeros((), jnp.int32), key=key,
                    g=PlayerState(g_params, g_state, g_opt_state),
                    d=PlayerState(d_params, d_state, d_opt_state),
                    g_ema_params=g_params, hparams=hparams)
