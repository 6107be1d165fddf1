"""LeCam regularization (Tseng et al. 2021, google/lecam-gan): D's outputs are pulled towards moving anchors.

The anchors are exponential moving averages of the mean D(real) and mean D(fake), kept as the state of an
identity input transform named ``lecam`` (`LeCamAnchors`: it vmaps over runs, checkpoints and resumes with the
rest of ``GANState.transforms``). The D term ``lecam`` is the official code's (``biggan_cifar/losses.py``)::

    mean(relu(D(real) - anchor_fake)^2) + mean(relu(anchor_real - D(fake))^2)

the *relu form*: only a real output above the fake anchor, or a fake output below the real anchor, is penalised.
We follow the code rather than the paper's unclipped ``||D(x) - a_F||^2 + ||D(G(z)) - a_R||^2`` (eq. 3): the code
is what produced the paper's numbers, and StudioGAN and the StyleGAN2 port in the same repository use it too.

Start (the reference's ``ema_losses`` with ``start_itr``): before train step ``start`` the anchors follow the
current means (decay 0), and the term is off until the anchors hold a mean (after the first update, and after
``start`` steps). One difference of timing: the reference updates the anchors with the current batch before the
term reads them; here the transform's `update` runs once per train step after the D updates, so the term of step
s reads the anchors of steps < s (with ``n_critic`` > 1 the anchors follow the last critic step's outputs).
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp

from jaxgan.objectives import Objective, Term, TermInputs, TransformStats

NAME = "lecam"


@dataclasses.dataclass(frozen=True)
class LeCamAnchors:
    """Identity transform of D's inputs whose state holds the anchors ``{"real", "fake"}`` (float32 scalars) and
    ``updates`` (int32: train steps folded in). Logs ``lecam/real_anchor`` and ``lecam/fake_anchor``."""
    decay: float = 0.99
    start: int = 0
    name: str = NAME

    @property
    def hparams(self) -> Mapping[str, float]:
        return {}

    def init(self):
        return {"real": jnp.zeros((), jnp.float32), "fake": jnp.zeros((), jnp.float32),
                "updates": jnp.zeros((), jnp.int32)}

    def apply(self, state, key, x, step, hparams):
        return x

    def update(self, state, stats: TransformStats):
        decay = jnp.where(state["updates"] < max(self.start, 1), 0.0, self.decay)
        new = {side: decay * state[side] + (1.0 - decay) * stats.mean(outputs.astype(jnp.float32))
               for side, outputs in (("real", stats.real_outputs), ("fake", stats.fake_outputs))}
        new["updates"] = state["updates"] + 1
        return new, {"lecam/real_anchor": new["real"], "lecam/fake_anchor": new["fake"]}


def lecam_penalty(real_outputs: jax.Array, fake_outputs: jax.Array, anchor_real, anchor_fake) -> jax.Array:
    """``mean(relu(D(real) - anchor_fake)^2) + mean(relu(anchor_real - D(fake))^2)`` (the official code)."""
    real, fake = real_outputs.astype(jnp.float32), fake_outputs.astype(jnp.float32)
    return (jnp.mean(jnp.square(jax.nn.relu(real - anchor_fake)))
            + jnp.mean(jnp.square(jax.nn.relu(anchor_real - fake))))


def lecam(weight: float = 0.3, decay: float = 0.99, start: int = 0) -> Objective:
    """The anchors transform plus the D term ``lecam``, weighted by the hparam ``lecam_weight`` (the paper uses
    0.3 for BigGAN on CIFAR, 0.01-0.1 for StyleGAN2)."""
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"lecam decay must be in [0, 1), got {decay}")
    transform = LeCamAnchors(float(decay), int(start))

    def term(t: TermInputs):
        anchors = t.transform_states[NAME]
        value = lecam_penalty(t.real_outputs, t.fake_outputs, jax.lax.stop_gradient(anchors["real"]),
                              jax.lax.stop_gradient(anchors["fake"]))
        return jnp.where(anchors["updates"] > transform.start, value, 0.0)

    return Objective((Term(NAME, "d", term),), {}, (transform,)).weighted_by("lecam_weight", weight)
