"""DCGAN generator and discriminator (Radford et al. 2015), as in pytorch/examples ``dcgan/main.py``.

One definition serves image sizes 28, 32, 64 and 128, any channel count and any width:

* **32, 64 and 128** (pytorch's scheme; 128 adds one more stage, as the DCGAN-128 variants do): G maps z,
  reshaped to [B, 1, 1, nz], with a 4x4 VALID transposed conv (stride 1) to 4x4 x (ngf * 2**(n-1)), then
  ``n = log2(size / 4)`` transposed convs (kernel 4, stride 2, PyTorch padding 1) that double the resolution
  and halve the channels; the last one outputs ``channels``.
  D mirrors it: ``n`` convs (kernel 4, stride 2, padding 1) from ``ndf`` channels doubling to
  ``ndf * 2**(n-1)`` at 4x4, then a 4x4 VALID conv to one logit.
  At 64 px: G 1x1 -> 4 (8ngf) -> 8 (4ngf) -> 16 (2ngf) -> 32 (ngf) -> 64 (C);
  D 64 -> 32 (ndf) -> 16 (2ndf) -> 8 (4ndf) -> 4 (8ndf) -> logit. At 32 px G starts at 4ngf and D ends at 4ndf;
  at 128 px G starts at 16ngf and D ends at 16ndf.
* **28** (MNIST-sized, the 7x7 base that TF-GAN's and most MNIST DCGANs use): the base resolution is 7
  instead of 4, so G's first layer is a 7x7 VALID transposed conv to 7x7 x (2 ngf), then 7 -> 14 -> 28;
  D goes 28 -> 14 -> 7 and ends with a 7x7 VALID conv. No padding or resizing of the data is needed.

Details, as in the reference: no conv biases (PyTorch's example has ``bias=False`` on every conv), BatchNorm + ReLU after every G layer but the last,
tanh output; D uses LeakyReLU(0.2) and a norm on every layer but the first; no pooling, no dense layers.
Weights are initialised as in the example: conv kernels N(0, 0.02), BatchNorm scale N(1, 0.02), bias 0.
BatchNorm uses flax momentum 0.9 (= PyTorch momentum 0.1) and epsilon 1e-5.
Parameter counts at 64x64x3, nz=100, ngf=ndf=64 equal PyTorch's: G 3,576,704, D 2,765,568.

Conditioning (``num_classes > 0``; labels int [B]): G concatenates ``one_hot(labels)`` to z (conditional
GAN, Mirza & Osindero 2014); D adds a projection term (Miyato & Koyama 2018) on its last hidden features:
``logit += <embed(labels), sum_hw h>`` (h: the last LeakyReLU output, 4x4 or 7x7). With ``num_classes == 0`` any ``labels`` argument is ignored.

PyTorch padding p of a stride-s, kernel-k transposed conv corresponds to flax/lax padding ``k - 1 - p`` on
each side of the dilated input, hence ``((2, 2), (2, 2))`` below for k=4, p=1.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxgan.config import ConfigError
from jaxgan.models import heads, layers
from jaxgan.models.blocks import BN_EPSILON, BN_MOMENTUM, check_labels
from jaxgan.models.spec import ModelSpec, compute_dtype

SUPPORTED_IMAGE_SIZES = (28, 32, 64, 128)
NORMALIZATIONS = ("batch_norm", "layer_norm", "none")

_CONV_INIT = nn.initializers.normal(0.02)


def _bn_scale_init(key, shape, dtype=jnp.float32):
    return 1.0 + 0.02 * nn.initializers.normal(1.0)(key, shape, dtype)


def _schedule(image_size: int) -> tuple[int, int]:
    """Returns (base resolution, number of stride-2 stages) for ``image_size``."""
    if image_size == 28:
        return 7, 2
    if image_size in (32, 64, 128):
        return 4, int(round(math.log2(image_size // 4)))
    raise ValueError(f"DCGAN image_size={image_size!r} is not supported; accepted sizes: "
                     f"{', '.join(map(str, SUPPORTED_IMAGE_SIZES))}")


class DCGANGenerator(nn.Module):
    """DCGAN generator: z [B, latent_dim] (+ labels int [B]) -> images [B, S, S, channels] in [-1, 1].

    Attributes:
      latent_dim: size of z (PyTorch's ``nz``; 100 in the paper).
      image_size: 28, 32, 64 or 128 (see the module docstring for the layer scheme).
      channels: output channels (1 for MNIST, 3 for RGB).
      num_classes: 0 = unconditional; otherwise one_hot(labels) is concatenated to z.
      ngf: width; G's widths are ngf * (2**(n-1), ..., 2, 1).
      bn_axis_name: passed to BatchNorm's ``axis_name`` (the data-parallel axis inside shard_map).
      dtype: compute dtype of the convolutions and activations (e.g. ``jnp.bfloat16``); parameters stay
        float32, BatchNorm statistics are reduced in float32 and the output images are float32.
      conv_impl: "auto", "xla" or "dnnl" for every convolution (``--conv_impl``; see
        `jaxgan.models.layers`); None: `layers.default_implementation()`.
    """

    latent_dim: int = 100
    image_size: int = 64
    channels: int = 3
    num_classes: int = 0
    ngf: int = 64
    bn_axis_name: str | None = None
    dtype: Any = jnp.float32
    conv_impl: str | None = None

    @nn.compact
    @layers.with_conv_impl
    def __call__(self, z, labels=None, *, train: bool):
        base, n = _schedule(self.image_size)
        if z.ndim != 2 or z.shape[-1] != self.latent_dim:
            raise ValueError(f"DCGANGenerator expects z [B, {self.latent_dim}], got {list(z.shape)}")
        labels = check_labels(labels, self.num_classes, z.shape[0], "DCGANGenerator")
        h = z.astype(self.dtype)
        if labels is not None:
            h = jnp.concatenate([h, nn.one_hot(labels, self.num_classes, dtype=h.dtype)], axis=-1)
        h = h[:, None, None, :]

        def bn_relu(x, name):
            x = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                             scale_init=_bn_scale_init, axis_name=self.bn_axis_name, dtype=self.dtype,
                             name=name)(x)
            return nn.relu(x)

        h = layers.ConvTranspose(self.ngf * 2 ** (n - 1), (base, base), strides=(1, 1), padding="VALID",
                                 use_bias=False, kernel_init=_CONV_INIT, dtype=self.dtype, name="up0")(h)
        h = bn_relu(h, "bn0")
        for i in range(1, n + 1):
            last = i == n
            feats = self.channels if last else self.ngf * 2 ** (n - 1 - i)
            h = layers.ConvTranspose(feats, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)),
                                     use_bias=False, kernel_init=_CONV_INIT, dtype=self.dtype, name=f"up{i}")(h)
            if not last:
                h = bn_relu(h, f"bn{i}")
        return jnp.tanh(h.astype(jnp.float32))


class DCGANDiscriminator(nn.Module):
    """DCGAN discriminator: images [B, S, S, channels] (+ labels int [B]) -> logits [B] float32.

    Attributes:
      image_size: 28, 32, 64 or 128; inputs must have this size.
      channels: input channels.
      num_classes: 0 = unconditional; otherwise a projection term is added to the logit.
      outputs: values per example (N > 1: logits [B, N], e.g. `jaxgan.realness`; a projection per output).
      class_head: K > 0 adds ACGAN's class logits (a ``base x base`` convolution like the logit's): D returns
        ``(logits, {"class_logits": [B, K]})`` (`jaxgan.models.heads`).
      ndf: width; D's widths are ndf * (1, 2, ..., 2**(n-1)).
      normalization: "batch_norm" (the DCGAN paper), "layer_norm" (per example over H, W, C with per-channel
        scale and bias, as in the WGAN-GP critic) or "none". Use "layer_norm"/"none" with gradient
        penalties: BatchNorm mixes examples, so per-example input gradients are wrong.
      bn_axis_name: BatchNorm ``axis_name`` (data-parallel axis inside shard_map).
      dtype: compute dtype (e.g. ``jnp.bfloat16``); parameters stay float32, logits are float32.
      conv_impl: "auto", "xla" or "dnnl" for every convolution (``--conv_impl``; see
        `jaxgan.models.layers`); None: `layers.default_implementation()`.
    """

    image_size: int = 64
    channels: int = 3
    num_classes: int = 0
    ndf: int = 64
    normalization: str = "batch_norm"
    outputs: int = 1
    class_head: int = 0
    bn_axis_name: str | None = None
    dtype: Any = jnp.float32
    conv_impl: str | None = None

    @nn.compact
    @layers.with_conv_impl
    def __call__(self, x, labels=None, *, train: bool):
        base, n = _schedule(self.image_size)
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"DCGANDiscriminator normalization={self.normalization!r} is not supported; "
                             f"accepted: {', '.join(NORMALIZATIONS)}")
        want = (self.image_size, self.image_size, self.channels)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"DCGANDiscriminator expects images [B, {want[0]}, {want[1]}, {want[2]}], "
                             f"got {list(x.shape)}")
        labels = check_labels(labels, self.num_classes, x.shape[0], "DCGANDiscriminator")

        def norm(h, name):
            if self.normalization == "batch_norm":
                return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                                    scale_init=_bn_scale_init, axis_name=self.bn_axis_name, dtype=self.dtype,
                                    name=name)(h)
            if self.normalization == "layer_norm":
                return nn.LayerNorm(epsilon=BN_EPSILON, reduction_axes=(-3, -2, -1), feature_axes=-1,
                                    dtype=self.dtype, name=name)(h)
            return h

        h = x.astype(self.dtype)
        for i in range(n):
            h = layers.Conv(self.ndf * 2 ** i, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)),
                            use_bias=False, kernel_init=_CONV_INIT, dtype=self.dtype, name=f"down{i}")(h)
            if i > 0:
                h = norm(h, f"norm{i}")
            h = nn.leaky_relu(h, 0.2)

        def head(features, name):
            out = layers.Conv(features, (base, base), strides=(1, 1), padding="VALID", use_bias=False,
                              kernel_init=_CONV_INIT, dtype=self.dtype, name=name)(h)
            return out.reshape(h.shape[0], features).astype(jnp.float32)

        logit = head(self.outputs, "out")
        if labels is not None:
            embed = nn.Embed(self.num_classes, h.shape[-1] * self.outputs, embedding_init=_CONV_INIT,
                             name="embed")(labels)
            logit = heads.project(logit, embed, jnp.sum(h.astype(jnp.float32), axis=(1, 2)))
        return heads.discriminator_output(logit, head(self.class_head, "class_out") if self.class_head else None)


def wgan_gp_critic(image_size: int = 64, channels: int = 3, *, ndf: int = 64, normalization: str = "layer_norm",
                   num_classes: int = 0) -> DCGANDiscriminator:
    """The WGAN-GP critic (Gulrajani et al. 2017): the DCGAN discriminator without BatchNorm.

    ``normalization`` must be "layer_norm" (default, as in the paper's ResNet/DCGAN critics) or "none".
    """
    if normalization not in ("layer_norm", "none"):
        raise ValueError(f"wgan_gp_critic normalization={normalization!r} is not supported; accepted: "
                         "layer_norm, none (BatchNorm breaks per-example gradient penalties)")
    _schedule(image_size)
    return DCGANDiscriminator(image_size=image_size, channels=channels, num_classes=num_classes, ndf=ndf,
                              normalization=normalization)


def build(config, data_shape, num_classes: int, *, axis_name=None, latent_dim: int, g_width: int, d_width: int):
    """`ModelSpec.build` of ``--model=dcgan``: ``--d_normalization`` picks D's normalisation (BatchNorm default)."""
    size, channels = data_shape[0], data_shape[-1]
    dtype, conv_impl = compute_dtype(config), getattr(config, "conv_impl", "auto")
    return (DCGANGenerator(latent_dim=latent_dim, image_size=size, channels=channels, num_classes=num_classes,
                           ngf=g_width, bn_axis_name=axis_name, dtype=dtype, conv_impl=conv_impl),
            DCGANDiscriminator(image_size=size, channels=channels, ndf=d_width,
                               normalization=config.d_normalization or "batch_norm", bn_axis_name=axis_name,
                               dtype=dtype, conv_impl=conv_impl, **heads.discriminator_head(config, num_classes)))


def _validate_options(config) -> None:
    if config.d_normalization and config.d_normalization not in NORMALIZATIONS:
        raise ConfigError(f"--d_normalization={config.d_normalization!r} is not one of {NORMALIZATIONS}")


SPEC = ModelSpec("dcgan", build, data="image", description="DCGAN G / D (BatchNorm D by default)",
                 image_sizes=SUPPORTED_IMAGE_SIZES, default_latent_dim=100, default_width=64, convolves=True,
                 options=("d_normalization",), validate_options=_validate_options,
                 d_uses_batch_norm=lambda config: (config.d_normalization or "batch_norm") == "batch_norm")

__all__ = ["DCGANGenerator", "DCGANDiscriminator", "wgan_gp_critic", "SUPPORTED_IMAGE_SIZES", "NORMALIZATIONS",
           "SPEC", "build"]
