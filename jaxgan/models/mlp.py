"""MLP generator and discriminator for vector data (2D mixtures, parallel lines)."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgan.models import heads
from jaxgan.models.spec import ModelSpec


class MLPGenerator(nn.Module):
    """z [B, latent_dim] -> x [B, output_dim]; ReLU hidden layers, linear output (data are not bounded)."""
    latent_dim: int = 2
    output_dim: int = 2
    hidden: Sequence[int] = (128, 128, 128)
    num_classes: int = 0

    @nn.compact
    def __call__(self, z, labels=None, *, train: bool):
        del train
        h = z
        if self.num_classes:
            h = jnp.concatenate([h, jax.nn.one_hot(labels, self.num_classes)], axis=-1)
        for width in self.hidden:
            h = nn.relu(nn.Dense(width)(h))
        return nn.Dense(self.output_dim)(h)


class MLPDiscriminator(nn.Module):
    """x [B, D] -> logits [B]; LeakyReLU(0.2) hidden layers, no normalisation (safe with gradient penalties).

    ``num_classes`` > 0 appends one-hot labels to the input; ``outputs`` N > 1 gives logits [B, N];
    ``class_head`` K > 0 adds ACGAN's class logits: ``(logits, {"class_logits": [B, K]})`` (`jaxgan.models.heads`).
    """
    hidden: Sequence[int] = (128, 128, 128)
    num_classes: int = 0
    outputs: int = 1
    class_head: int = 0

    @nn.compact
    def __call__(self, x, labels=None, *, train: bool):
        del train
        h = x.reshape(x.shape[0], -1)
        if self.num_classes:
            h = jnp.concatenate([h, jax.nn.one_hot(labels, self.num_classes)], axis=-1)
        for width in self.hidden:
            h = nn.leaky_relu(nn.Dense(width)(h), 0.2)
        class_logits = nn.Dense(self.class_head, name="class_head")(h) if self.class_head else None
        return heads.discriminator_output(nn.Dense(self.outputs)(h), class_logits)


def build(config, data_shape, num_classes: int, *, axis_name=None, latent_dim: int, g_width: int, d_width: int):
    """`ModelSpec.build` of ``--model=mlp``: ``--depth`` hidden layers of the G / D widths (no BatchNorm)."""
    del axis_name
    return (MLPGenerator(latent_dim=latent_dim, output_dim=data_shape[-1], hidden=(g_width,) * config.depth,
                         num_classes=num_classes),
            MLPDiscriminator(hidden=(d_width,) * config.depth, **heads.discriminator_head(config, num_classes)))


SPEC = ModelSpec("mlp", build, data="2d", description="MLP G / D for the 2D toy datasets",
                 default_latent_dim=8, default_width=128, convolves=False)
