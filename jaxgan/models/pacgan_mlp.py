"""PacGAN's 2D networks (Lin et al. 2018; code: fjxmlzn/PacGAN, synthetic_data_experiments/*_GAN&PacGAN), as
that code builds them (``pacgan_task.py``, ``config.py``):

* G: z (2-D standard normal) -> 4 x [Linear(400, no bias) -> BatchNorm -> ReLU] -> Linear(2, bias). The hidden
  linear layers have no bias (``use_bias=False``; BatchNorm's shift replaces it), the output layer has one.
* D: 3 x LinearMaxout(200 units, 5 pieces) -> Linear(1). A maxout layer is Linear(in -> 200 * 5, bias) whose
  outputs are grouped as [200, 5] (consecutive pieces per unit, as Blocks' ``Maxout`` reshapes) and maxed over
  the pieces. No activation between layers, no normalisation, no dropout (``with_dropout=False``).
* Initialisation: every weight N(0, 0.02^2) (Blocks' ``IsotropicGaussian(0.02)``), biases 0, BatchNorm scale 1 and
  shift 0. BatchNorm: epsilon 1e-4 (Blocks' default), population statistics updated as p <- 0.95 p + 0.05 batch
  (momentum 0.95), used at sampling time.

Parameters: G = 2*400 + 3*400*400 + 400*2+2 + 4*(400+400) = 484,802 (BatchNorm's scale and shift are trained;
its population statistics are not parameters). D with packing m = (2m*1000+1000) + 2*(200*1000+1000) + (200+1)
= 2000 m + 403,201 (405,201 for m = 1).

Known differences from the reference (Theano/Blocks): Blocks keeps a population *standard deviation*
(EMA of sqrt(var + eps)) where Flax keeps the variance; with packing m the reference runs G on the m latent
batches separately (BatchNorm statistics per batch of 100), jaxgan on the whole batch of 100*m at once.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from jaxgan.models.spec import ModelSpec

WEIGHT_STD = 0.02
G_WIDTH, D_WIDTH, MAXOUT_PIECES = 400, 200, 5
G_HIDDEN_LAYERS, D_MAXOUT_LAYERS = 4, 3
BN_EPSILON, BN_MOMENTUM = 1e-4, 0.95


def _dense(features: int, use_bias: bool = True) -> nn.Dense:
    return nn.Dense(features, use_bias=use_bias, kernel_init=nn.initializers.normal(WEIGHT_STD),
                    bias_init=nn.initializers.zeros)


def maxout(h, pieces: int):
    """[..., units * pieces] -> [..., units]: max over consecutive groups of ``pieces`` (Blocks' ``Maxout``)."""
    return jnp.max(h.reshape(h.shape[:-1] + (h.shape[-1] // pieces, pieces)), axis=-1)


class PacGANGenerator(nn.Module):
    """z [B, latent_dim] -> x [B, output_dim]: ``hidden_layers`` x (Linear without bias, BatchNorm, ReLU), then a
    linear output layer with bias."""
    latent_dim: int = 2
    output_dim: int = 2
    width: int = G_WIDTH
    hidden_layers: int = G_HIDDEN_LAYERS
    axis_name: str | None = None

    @nn.compact
    def __call__(self, z, labels=None, *, train: bool):
        del labels
        h = z
        for _ in range(self.hidden_layers):
            h = _dense(self.width, use_bias=False)(h)
            h = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                             axis_name=self.axis_name)(h)
            h = nn.relu(h)
        return _dense(self.output_dim)(h)


class PacGANDiscriminator(nn.Module):
    """x [B, D] (D = 2m for packing m) -> logits [B]: ``maxout_layers`` x LinearMaxout(width, pieces), Linear(1)."""
    width: int = D_WIDTH
    pieces: int = MAXOUT_PIECES
    maxout_layers: int = D_MAXOUT_LAYERS

    @nn.compact
    def __call__(self, x, labels=None, *, train: bool):
        del labels, train
        h = x.reshape(x.shape[0], -1)
        for _ in range(self.maxout_layers):
            h = maxout(_dense(self.width * self.pieces)(h), self.pieces)
        return _dense(1)(h)[:, 0]


class _PacGANSpec(ModelSpec):
    """G and D have different default widths (400 and 200); ``--width`` sets both, ``--g_width``/``--d_width``
    each."""

    def widths(self, config) -> tuple[int, int]:
        return (config.g_width or config.width or G_WIDTH), (config.d_width or config.width or D_WIDTH)


def build(config, data_shape, num_classes: int, *, axis_name=None, latent_dim: int, g_width: int, d_width: int):
    """`ModelSpec.build` of ``--model=pacgan_mlp``."""
    del config, num_classes
    return (PacGANGenerator(latent_dim=latent_dim, output_dim=data_shape[-1], width=g_width, axis_name=axis_name),
            PacGANDiscriminator(width=d_width))


SPEC = _PacGANSpec("pacgan_mlp", build, data="2d",
                   description="PacGAN's 2D G (4x400 ReLU + BatchNorm) / D (3x200 maxout, 5 pieces)",
                   default_latent_dim=2, default_width=G_WIDTH, convolves=False)
