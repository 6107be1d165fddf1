"""Top-k training of G (Sinha et al. 2020): G's adversarial loss averages only over the k fakes that D rates
most real (the highest D outputs); the others give G no gradient.

``k = max(ceil(gamma^(step // decay_steps) * B), ceil(nu * B))`` with B this device's batch: k starts at B and
shrinks by a factor gamma every ``decay_steps`` train steps, never below the fraction nu. The paper decays once
per epoch (gamma = 0.99, nu = 0.5 for most losses); here the period is a number of steps (``--topk_decay_steps``).

`top_k` wraps the G term ``loss`` of an objective: the term is evaluated on each example alone (`jax.vmap` over
D(G(z))), and the per-example losses are averaged under a mask of the k largest D outputs (k traced: it changes
with the step without recompiling). This equals the full loss when k = B for every loss whose G loss is a mean
over examples of a function of D(G(z)); relativistic losses, whose G loss also compares with D(real), are refused.
Under data parallelism each device keeps its own top k of its share of the batch. A D with several outputs per
example ([B, ...]) is ranked by their mean.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from jaxgan.objectives import Objective, Term, TermInputs


def topk_count(step, batch_size: int, gamma: float, min_fraction: float, decay_steps: int) -> jax.Array:
    """int32 k at train step ``step`` (see the module docstring); float32 arithmetic."""
    decays = (jnp.asarray(step, jnp.int32) // decay_steps).astype(jnp.float32)
    shrunk = jnp.ceil(jnp.power(jnp.float32(gamma), decays) * batch_size).astype(jnp.int32)
    return jnp.maximum(shrunk, math.ceil(min_fraction * batch_size))


def topk_mask(outputs: jax.Array, k) -> jax.Array:
    """float32 [B] mask of the k largest ``outputs`` [B] (ties broken by position), k traced or static."""
    rank = jnp.argsort(jnp.argsort(-outputs, stable=True), stable=True)
    return (rank < k).astype(jnp.float32)


def per_example(term: Term, t: TermInputs) -> jax.Array:
    """The term's value on each generated example alone: [B]."""
    return jax.vmap(lambda o: term.fn(t._replace(fake_outputs=o[None])))(t.fake_outputs)


def top_k(objective: Objective, gamma: float = 0.99, min_fraction: float = 0.5, decay_steps: int = 1000
          ) -> Objective:
    """``objective`` with its G term ``loss`` restricted to the top k fakes (module docstring)."""
    if not 0.0 < gamma <= 1.0 or not 0.0 < min_fraction <= 1.0 or int(decay_steps) < 1:
        raise ValueError(f"top-k needs gamma and min_fraction in (0, 1] and decay_steps >= 1, got {gamma}, "
                         f"{min_fraction}, {decay_steps}")
    loss = [t for t in objective.g_terms if t.name == "loss"]
    if not loss:
        raise ValueError("top-k training needs a G term named 'loss' (the adversarial loss)")
    if loss[0].needs_real:
        raise ValueError("top-k training needs a G loss that is a mean over generated examples; this one also "
                         "compares with D(real) (relativistic)")
    inner = loss[0]

    def fn(t: TermInputs):
        k = topk_count(t.step, t.fake_outputs.shape[0], gamma, min_fraction, int(decay_steps))
        score = jnp.mean(t.fake_outputs.reshape(t.fake_outputs.shape[0], -1).astype(jnp.float32), axis=1)
        mask = topk_mask(jax.lax.stop_gradient(score), k)
        return jnp.sum(mask * per_example(inner, t)) / k.astype(jnp.float32)

    terms = tuple(dataclasses.replace(t, fn=fn) if t is inner else t for t in objective.terms)
    return dataclasses.replace(objective, terms=terms)
