"""Discriminator heads shared by the models: several outputs per example, projection, an auxiliary class head.

Every D of `jaxgan.models` takes two head options besides ``num_classes`` (the projection / input
conditioning):

- ``outputs`` N: the last layer gives N values per example; D returns logits [B] for N = 1 (the usual GAN) and
  [B, N] otherwise (`jaxgan.realness`: a distribution over N outcomes after a softmax).
- ``class_head`` K: an auxiliary classifier on D's last features (ACGAN, Odena et al. 2017); D then returns
  ``(logits, {"class_logits": [B, K] float32})``, which the train step's terms see as ``real_aux`` / ``fake_aux``
  (`jaxgan.objectives.acgan`). ACGAN's D is unconditioned: `discriminator_head` builds it with
  ``num_classes=0`` (labels ignored) and the class head instead.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp



def discriminator_head(config, num_classes: int) -> dict:
    """D's head options from a `jaxgan.config.Config`: ``num_classes`` (projection / input conditioning),
    ``class_head`` (ACGAN: ``--auxiliary_classifier_weight`` > 0 on a conditional run) and ``outputs``
    (``--realness_outcomes`` for ``--loss=realness``, else 1)."""
    acgan = getattr(config, "auxiliary_classifier_weight", 0.0) > 0 and num_classes > 0
    outputs = int(getattr(config, "realness_outcomes", 1)) if getattr(config, "loss", "") == "realness" else 1
    return dict(num_classes=0 if acgan else num_classes, class_head=num_classes if acgan else 0, outputs=outputs)


def project(logits: jax.Array, embedding: jax.Array, features: jax.Array) -> jax.Array:
    """Projection discriminator (Miyato & Koyama 2018) with one projection per output: ``logits`` [B, N] plus
    ``<embedding_n, features>`` with ``embedding`` [B, N * F] (the class embedding of each example) and
    ``features`` [B, F]."""
    b, n = logits.shape
    embedding = embedding.reshape(b, n, features.shape[-1]).astype(jnp.float32)
    return logits + jnp.einsum("bnf,bf->bn", embedding, features.astype(jnp.float32))


def discriminator_output(logits: jax.Array, class_logits: jax.Array | None = None):
    """``logits`` [B, N] -> [B] when N = 1, else unchanged (float32); with ``class_logits`` [B, K] the pair
    ``(logits, {"class_logits": class_logits})``."""
    logits = jnp.asarray(logits, jnp.float32)
    if logits.shape[-1] == 1:
        logits = logits[:, 0]
    if class_logits is None:
        return logits
    return logits, {"class_logits": jnp.asarray(class_logits, jnp.float32)}


__all__ = ["discriminator_head", "project", "discriminator_output"]

