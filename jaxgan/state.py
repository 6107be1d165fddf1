"""The train state: one PyTree holding everything a step reads and a resume needs.

``GANState(step, key, g, d, g_ema_params, hparams, transforms)`` with ``PlayerState(params, model_state, opt_state)``
for each player. ``model_state`` holds the non-trained variable collections of a Flax module (``{}`` for a
plain MLP, ``{"batch_stats": ...}`` for BatchNorm statistics and spectral-norm vectors). ``hparams`` maps
names to float32 scalars the step reads at run time (see `jaxgan.objectives`); with stacked states
(`jax.vmap` over runs) each run has its own values.

Models follow one calling convention: ``generator(z, labels=None, *, train)`` with z [B, latent_dim] and
``discriminator(x, labels=None, *, train)`` returning outputs [B] (or [B, ...]).
"""
from __future__ import annotations

import dataclasses
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


@dataclasses.dataclass(frozen=True)
class GANState:
    step: jax.Array  # int32 scalar: number of completed steps
    key: jax.Array  # typed PRNG key (jax.random.key), split inside the step
    g: PlayerState
    d: PlayerState
    g_ema_params: Any  # exponential moving average of G's params (a copy of them when EMA is off)
    hparams: Mapping[str, jax.Array]  # float32 scalars read by the step
    # the state of D's input transforms (`jaxgan.objectives.InputTransform`) by name; stateless ones (instance
    # noise) keep none here
    transforms: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def replace(self, **changes) -> "GANState":
        return dataclasses.replace(self, **changes)


_GAN_STATE_FIELDS = ("step", "key", "g", "d", "g_ema_params", "hparams")


def _flatten_gan_state(state: GANState):
    # An empty ``transforms`` is left out of the tree, so a state without stateful transforms has the tree (and
    # the checkpoints) of the versions before the field existed, and their checkpoints restore into it.
    names = _GAN_STATE_FIELDS + (("transforms",) if state.transforms else ())
    return [(jax.tree_util.GetAttrKey(n), getattr(state, n)) for n in names], bool(state.transforms)


def _unflatten_gan_state(has_transforms: bool, children) -> GANState:
    children = list(children)
    return GANState(*children[:len(_GAN_STATE_FIELDS)], transforms=children[-1] if has_transforms else {})


jax.tree_util.register_pytree_with_keys(GANState, _flatten_gan_state, _unflatten_gan_state)


def split_variables(variables) -> tuple[Any, dict]:
    """Flax variables -> (params, the other collections)."""
    variables = dict(variables)
    params = variables.pop("params", {})
    return params, variables


def has_batch_norm(model_state) -> bool:
    """Whether a model state holds BatchNorm statistics (``mean``/``var``), as opposed to only SN vectors."""
    flat = traverse_util.flatten_dict(dict(model_state)) if model_state else {}
    return any(path[-1] in ("mean", "var") for path in flat)


def _injected(path, value) -> bool:
    """`optax.tree_utils` filter: ``value`` is an entry of an ``optax.inject_hyperparams`` state's ``hyperparams``
    (not, e.g., the ``hyperparams_states`` entry of a scheduled learning rate)."""
    return len(path) >= 2 and getattr(path[-2], "name", None) == "hyperparams"


def set_learning_rate(opt_state, learning_rate):
    """Sets the learning rate of every ``optax.inject_hyperparams`` state in ``opt_state`` (chains included),
    keeping its dtype; raises ValueError when there is none. Traceable (vmapped inits pass one per run)."""
    found = optax.tree_utils.tree_get_all_with_path(opt_state, "learning_rate", _injected)
    if not found:
        raise ValueError("optimizer has no injectable 'learning_rate'; build it with optax.inject_hyperparams")
    value = jnp.asarray(learning_rate, found[0][1].dtype)
    return optax.tree_utils.tree_set(opt_state, _injected, learning_rate=value)


def get_learning_rate(opt_state):
    """The learning rate of the first ``optax.inject_hyperparams`` state in ``opt_state`` (chains included), or
    None."""
    found = optax.tree_utils.tree_get_all_with_path(opt_state, "learning_rate", _injected)
    return found[0][1] if found else None


def d_example_shape(data_shape: tuple[int, ...], transforms=()) -> tuple[int, ...]:
    """One example's shape as D sees it: ``data_shape`` through each input transform's optional
    ``example_shape(shape)`` (PacGAN packing, `jaxgan.packing`); transforms without one keep the shape."""
    shape = tuple(data_shape)
    for transform in transforms:
        if hasattr(transform, "example_shape"):
            shape = tuple(transform.example_shape(shape))
    return shape


def init_gan_state(key: jax.Array, generator: nn.Module, discriminator: nn.Module,
                   g_optimizer: optax.GradientTransformation, d_optimizer: optax.GradientTransformation, *,
                   data_shape: tuple[int, ...], hparams: Mapping[str, float] | None = None,
                   num_classes: int = 0, transforms: tuple = ()) -> GANState:
    """Initialises both players from ``key``. ``data_shape`` is one example's shape, e.g. (2,) or (32, 32, 3).

    ``hparams`` must hold every name in the objective's ``Objective.hparams`` (e.g. ``label_smoothing``,
    ``penalty_weight``; the train step refuses a state without them), and may add ``ema_decay``,
    ``instance_noise`` and ``g_lr``/``d_lr``: the learning rates are written into ``inject_hyperparams``
    optimizer states, so a vmapped init over learning rates gives each run its own. Pure and vmappable.
    ``transforms``: D's input transforms (``objective.transforms``); those with state get ``GANState.transforms``,
    and D is initialised on the example shape they produce (`d_example_shape`).
    """
    hparams = {k: jnp.asarray(v, jnp.float32) for k, v in (hparams or {}).items()}
    key, g_key, d_key = jax.random.split(key, 3)
    z = jnp.zeros((1, generator.latent_dim), jnp.float32)
    labels = jnp.zeros((1,), jnp.int32) if num_classes else None
    g_params, g_state = split_variables(generator.init(g_key, z, labels, train=False))
    x = jnp.zeros((1,) + d_example_shape(data_shape, transforms), jnp.float32)
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
                    g_ema_params=g_params, hparams=hparams,
                    transforms={t.name: t.init() for t in transforms if jax.tree.leaves(t.init())})
