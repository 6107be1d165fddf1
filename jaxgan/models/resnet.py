"""SNGAN / SAGAN / BigGAN-style ResNet generator and discriminator.

References: Miyato et al. 2018 (SNGAN, CIFAR ResNet), Miyato & Koyama 2018 (projection discriminator,
conditional BatchNorm in G), Zhang et al. 2019 (SAGAN self-attention), Brock et al. 2019 (BigGAN: the
per-resolution channel tables below, shared class embedding).

Architectures (``ch`` = base width, default 64; multipliers as in BigGAN-PyTorch's ``G_arch``/``D_arch``):

=====  ===================================================  ============================================
size   G: dense z -> 4x4 x (ch*m0), up-blocks to (ch*m_i)    D: blocks to (ch*m_i), down = avg-pool 2x
=====  ===================================================  ============================================
32     m0 = 4, up: 4, 4, 4         (4 -> 8 -> 16 -> 32)      4, 4, 4, 4   down: T, T, F, F  (32->16->8)
64     m0 = 16, up: 16, 8, 4, 2    (4 -> ... -> 64)          1, 2, 4, 8, 16   down: T, T, T, T, F  (-> 4)
128    m0 = 16, up: 16, 8, 4, 2, 1 (4 -> ... -> 128)         1, 2, 4, 8, 16, 16  down: T x5, F  (-> 4)
=====  ===================================================  ============================================

With ch=64 for G and ch=32 for D the 32 px models are SNGAN's CIFAR ResNet (G width 256, D width 128;
``--g_width=64 --d_width=32``).

* G up-block: BN, ReLU, nearest 2x upsample, conv3x3, BN, ReLU, conv3x3; shortcut: upsample, conv1x1.
  Output: BN, ReLU, conv3x3 -> ``channels``, tanh. With ``num_classes > 0`` the blocks' BNs are
  :class:`~jaxgan.models.blocks.ConditionalBatchNorm` (the output BN stays unconditional, as in BigGAN),
  fed by a shared class embedding [B, shared_embedding_dim] (BigGAN) or, with
  ``shared_embedding_dim=0``, by per-layer class tables (SNGAN-projection's cBN).
  ``spectral_norm=True`` spectrally normalises every G conv/dense layer (SAGAN/BigGAN); default off (SNGAN).
* D: every conv/dense/embedding is spectrally normalised. First block "optimized" (conv3x3, ReLU, conv3x3,
  avg-pool; shortcut avg-pool then conv1x1); then pre-activation blocks (ReLU, conv3x3, ReLU, conv3x3,
  [avg-pool]; shortcut conv1x1 [then avg-pool] when the width or resolution changes, identity otherwise);
  then ReLU, global SUM pooling -> h [B, C], SN dense -> logit. With ``num_classes > 0`` it is a
  projection discriminator: ``logit += sum(embed_SN(y) * h, -1)``.
* ``attention_resolution`` inserts a :class:`~jaxgan.models.blocks.SelfAttention` block after the (first)
  block whose output has that resolution; the accepted values are listed in the error for a bad one.
  In D its convs are spectrally normalised; in G they follow ``spectral_norm``.

Initialisation: Xavier-uniform kernels (SNGAN's choice), zero biases, N(0, 1) shared class embedding.
No BatchNorm in D, so D is safe with gradient penalties (call it with ``train=False`` inside the penalty
so the spectral-norm vectors are not updated there).
Intermediates sown for inspection (apply with ``mutable=['intermediates']``): D ``features`` (h, [B, C]).
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxgan.config import ConfigError
from jaxgan.models import heads, layers
from jaxgan.models.blocks import (BN_EPSILON, BN_MOMENTUM, ConditionalBatchNorm, SelfAttention, avg_pool2x,
                                  check_labels, conv, sn_apply, upsample_nearest2x)
from jaxgan.models.spec import ModelSpec, compute_dtype

SUPPORTED_IMAGE_SIZES = (32, 64, 128)

# size -> (multiplier at 4x4, output multipliers of the up-blocks)
_G_ARCH = {32: (4, (4, 4, 4)), 64: (16, (16, 8, 4, 2)), 128: (16, (16, 8, 4, 2, 1))}
# size -> (output multipliers of the blocks, downsample flags)
_D_ARCH = {
    32: ((4, 4, 4, 4), (True, True, False, False)),
    64: ((1, 2, 4, 8, 16), (True, True, True, True, False)),
    128: ((1, 2, 4, 8, 16, 16), (True, True, True, True, True, False)),
}

_INIT = nn.initializers.xavier_uniform()


def _check_size(image_size: int, who: str):
    if image_size not in SUPPORTED_IMAGE_SIZES:
        raise ValueError(f"{who} image_size={image_size!r} is not supported; accepted sizes: "
                         f"{', '.join(map(str, SUPPORTED_IMAGE_SIZES))}")


def generator_attention_resolutions(image_size: int) -> tuple[int, ...]:
    """Resolutions at which the ResNet generator accepts a self-attention block."""
    _check_size(image_size, "ResNetGenerator")
    return tuple(8 * 2 ** i for i in range(len(_G_ARCH[image_size][1])))


def discriminator_attention_resolutions(image_size: int) -> tuple[int, ...]:
    """Resolutions at which the ResNet discriminator accepts a self-attention block."""
    _check_size(image_size, "ResNetDiscriminator")
    res, out = image_size, []
    for down in _D_ARCH[image_size][1]:
        res = res // 2 if down else res
        if res not in out:
            out.append(res)
    return tuple(out)


def _check_attention(attention_resolution, valid, who):
    if attention_resolution is not None and attention_resolution not in valid:
        raise ValueError(f"{who} attention_resolution={attention_resolution!r} is not supported at this "
                         f"image size; accepted: None, {', '.join(map(str, valid))}")


class GBlock(nn.Module):
    """Up-sampling generator ResBlock (BN-ReLU-up-conv3x3-BN-ReLU-conv3x3 + up-conv1x1 shortcut).

    ``cond``: None (plain BatchNorm), int labels [B] or a float embedding [B, d] (conditional BatchNorm).
    """

    features: int
    num_classes: int = 0
    spectral_norm: bool = False
    bn_axis_name: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, cond=None, *, train: bool):
        def bn(h, name):
            if cond is None:
                return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                                    axis_name=self.bn_axis_name, dtype=self.dtype, name=name)(h)
            return ConditionalBatchNorm(self.num_classes, axis_name=self.bn_axis_name, dtype=self.dtype, name=name)(
                h, cond, train=train)

        def c(h, feats, k, name):
            return sn_apply(conv(feats, k, name=name, kernel_init=_INIT, dtype=self.dtype), h,
                            spectral_norm=self.spectral_norm, train=train)

        h = upsample_nearest2x(nn.relu(bn(x, "bn1")))
        h = c(h, self.features, 3, "conv1")
        h = nn.relu(bn(h, "bn2"))
        h = c(h, self.features, 3, "conv2")
        return h + c(upsample_nearest2x(x), self.features, 1, "shortcut")


class DBlock(nn.Module):
    """Discriminator ResBlock, spectrally normalised (see the module docstring).

    ``optimized=True`` is SNGAN's first block (no pre-activation; always downsamples).
    """

    features: int
    downsample: bool = True
    optimized: bool = False
    spectral_norm: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool):
        def c(h, feats, k, name):
            return sn_apply(conv(feats, k, name=name, kernel_init=_INIT, dtype=self.dtype), h,
                            spectral_norm=self.spectral_norm, train=train)

        if self.optimized:
            h = c(x, self.features, 3, "conv1")
            h = c(nn.relu(h), self.features, 3, "conv2")
            return avg_pool2x(h) + c(avg_pool2x(x), self.features, 1, "shortcut")
        h = c(nn.relu(x), self.features, 3, "conv1")
        h = c(nn.relu(h), self.features, 3, "conv2")
        if self.downsample:
            h = avg_pool2x(h)
        sc = x
        if self.downsample or x.shape[-1] != self.features:
            sc = c(x, self.features, 1, "shortcut")
            if self.downsample:
                sc = avg_pool2x(sc)
        return h + sc


class ResNetGenerator(nn.Module):
    """ResNet generator: z [B, latent_dim] (+ labels int [B]) -> images [B, S, S, channels] in [-1, 1].

    Attributes:
      latent_dim: size of z (128 in SNGAN/BigGAN).
      image_size: 32, 64 or 128.
      channels: output channels.
      num_classes: 0 = unconditional; > 0 = conditional BatchNorm in the blocks.
      ch: base width (see the table in the module docstring).
      attention_resolution: None, or a resolution from ``generator_attention_resolutions(image_size)``.
      spectral_norm: spectrally normalise all G layers (SAGAN/BigGAN). Default False (SNGAN).
      shared_embedding_dim: conditional models only: > 0 = BigGAN's shared class embedding of this size,
        linearly mapped to each cBN's gamma/beta; 0 = per-layer class tables.
      bn_axis_name: BatchNorm ``axis_name`` (data-parallel axis inside shard_map).
      dtype: compute dtype (e.g. ``jnp.bfloat16``); parameters stay float32, images are returned as float32.
      conv_impl: "auto", "xla" or "dnnl" for every convolution (``--conv_impl``; see
        `jaxgan.models.layers`); None: `layers.default_implementation()`.
    """

    latent_dim: int = 128
    image_size: int = 32
    channels: int = 3
    num_classes: int = 0
    ch: int = 64
    attention_resolution: int | None = None
    spectral_norm: bool = False
    shared_embedding_dim: int = 128
    bn_axis_name: str | None = None
    dtype: Any = jnp.float32
    conv_impl: str | None = None

    @nn.compact
    @layers.with_conv_impl
    def __call__(self, z, labels=None, *, train: bool):
        _check_size(self.image_size, "ResNetGenerator")
        _check_attention(self.attention_resolution, generator_attention_resolutions(self.image_size),
                         "ResNetGenerator")
        if z.ndim != 2 or z.shape[-1] != self.latent_dim:
            raise ValueError(f"ResNetGenerator expects z [B, {self.latent_dim}], got {list(z.shape)}")
        labels = check_labels(labels, self.num_classes, z.shape[0], "ResNetGenerator")
        cond = None
        if labels is not None:
            if self.shared_embedding_dim > 0:
                cond = nn.Embed(self.num_classes, self.shared_embedding_dim,
                                embedding_init=nn.initializers.normal(1.0), name="shared_embed")(labels)
            else:
                cond = labels
        m0, mults = _G_ARCH[self.image_size]
        b = z.shape[0]
        h = sn_apply(nn.Dense(4 * 4 * self.ch * m0, kernel_init=_INIT, dtype=self.dtype, name="stem"),
                     z.astype(jnp.float32),
                     spectral_norm=self.spectral_norm, train=train)
        h = h.reshape(b, 4, 4, self.ch * m0)
        res = 4
        for i, m in enumerate(mults):
            h = GBlock(self.ch * m, self.num_classes, self.spectral_norm, self.bn_axis_name, dtype=self.dtype,
                       name=f"block{i}")(h, cond, train=train)
            res *= 2
            if res == self.attention_resolution:
                h = SelfAttention(spectral_norm=self.spectral_norm, dtype=self.dtype, name="attention")(h, train=train)
        h = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                         axis_name=self.bn_axis_name, dtype=self.dtype, name="out_bn")(h)
        h = sn_apply(conv(self.channels, 3, name="out_conv", kernel_init=_INIT, dtype=self.dtype), nn.relu(h),
                     spectral_norm=self.spectral_norm, train=train)
        return jnp.tanh(h.astype(jnp.float32))


class ResNetDiscriminator(nn.Module):
    """Spectrally normalised ResNet discriminator: images [B, S, S, channels] (+ labels) -> logits [B].

    Attributes:
      image_size: 32, 64 or 128; inputs must have this size.
      channels: input channels.
      num_classes: 0 = unconditional; > 0 = projection discriminator with an SN class embedding.
      outputs: values per example (N > 1: logits [B, N], e.g. `jaxgan.realness`; a projection per output).
      class_head: K > 0 adds ACGAN's class logits (an SN dense layer on the pooled features, as StudioGAN's
        ACGAN heads): D returns ``(logits, {"class_logits": [B, K]})`` (`jaxgan.models.heads`).
      ch: base width (see the table in the module docstring).
      attention_resolution: None, or a resolution from ``discriminator_attention_resolutions(image_size)``.
      dtype: compute dtype of the blocks (e.g. ``jnp.bfloat16``); parameters, the final dense layer and the
        logits are float32.
      conv_impl: "auto", "xla" or "dnnl" for every convolution (``--conv_impl``; see
        `jaxgan.models.layers`); None: `layers.default_implementation()`.
    """

    image_size: int = 32
    channels: int = 3
    num_classes: int = 0
    ch: int = 64
    attention_resolution: int | None = None
    dtype: Any = jnp.float32
    conv_impl: str | None = None
    outputs: int = 1
    class_head: int = 0

    @nn.compact
    @layers.with_conv_impl
    def __call__(self, x, labels=None, *, train: bool):
        _check_size(self.image_size, "ResNetDiscriminator")
        _check_attention(self.attention_resolution, discriminator_attention_resolutions(self.image_size),
                         "ResNetDiscriminator")
        want = (self.image_size, self.image_size, self.channels)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"ResNetDiscriminator expects images [B, {want[0]}, {want[1]}, {want[2]}], "
                             f"got {list(x.shape)}")
        labels = check_labels(labels, self.num_classes, x.shape[0], "ResNetDiscriminator")
        mults, downs = _D_ARCH[self.image_size]
        h = x.astype(self.dtype)
        res, attended = self.image_size, False
        for i, (m, down) in enumerate(zip(mults, downs)):
            h = DBlock(self.ch * m, downsample=down, optimized=i == 0, dtype=self.dtype, name=f"block{i}")(
                h, train=train)
            res = res // 2 if down else res
            if res == self.attention_resolution and not attended:
                h = SelfAttention(spectral_norm=True, dtype=self.dtype, name="attention")(h, train=train)
                attended = True
        h = jnp.sum(nn.relu(h).astype(jnp.float32), axis=(1, 2))
        self.sow("intermediates", "features", h)
        logit = sn_apply(nn.Dense(self.outputs, kernel_init=_INIT, name="out"), h, spectral_norm=True, train=train)
        if labels is not None:
            embed = sn_apply(nn.Embed(self.num_classes, h.shape[-1] * self.outputs, embedding_init=_INIT,
                                      name="embed"), labels, spectral_norm=True, train=train)
            logit = heads.project(logit, embed, h)
        class_logits = None
        if self.class_head:
            class_logits = sn_apply(nn.Dense(self.class_head, kernel_init=_INIT, name="class_out"), h,
                                    spectral_norm=True, train=train)
        return heads.discriminator_output(logit, class_logits)


def attention_resolutions(image_size: int) -> tuple[int, ...]:
    """Resolutions where both the ResNet G and D accept SAGAN's self-attention block."""
    return tuple(sorted(set(generator_attention_resolutions(image_size))
                        & set(discriminator_attention_resolutions(image_size))))


def build(config, data_shape, num_classes: int, *, axis_name=None, latent_dim: int, g_width: int, d_width: int,
          self_attention: bool = False):
    """`ModelSpec.build` of ``--model=sngan`` (``self_attention=False``) and ``sagan``: the SAGAN G is spectrally
    normalised too and both nets get a self-attention block at ``--attention_resolution`` (default: the
    largest valid resolution <= 32)."""
    size, channels = data_shape[0], data_shape[-1]
    dtype, conv_impl = compute_dtype(config), getattr(config, "conv_impl", "auto")
    attention = None
    if self_attention:
        attention = config.attention_resolution or max(r for r in attention_resolutions(size) if r <= 32)
    return (ResNetGenerator(latent_dim=latent_dim, image_size=size, channels=channels, num_classes=num_classes,
                            ch=g_width, attention_resolution=attention, spectral_norm=self_attention,
                            bn_axis_name=axis_name, dtype=dtype, conv_impl=conv_impl),
            ResNetDiscriminator(image_size=size, channels=channels, ch=d_width, attention_resolution=attention,
                                dtype=dtype, conv_impl=conv_impl, **heads.discriminator_head(config, num_classes)))


def _validate_attention(config) -> None:
    valid = attention_resolutions(config.image_size)
    if config.attention_resolution and config.attention_resolution not in valid:
        raise ConfigError(f"--attention_resolution={config.attention_resolution} is not valid at "
                          f"--image_size={config.image_size}; accepted: {valid}")


SNGAN = ModelSpec("sngan", build, data="image", description="ResNet G / spectrally normalised ResNet D",
                  image_sizes=SUPPORTED_IMAGE_SIZES, default_latent_dim=128, default_width=64, convolves=True)
SAGAN = ModelSpec("sagan", functools.partial(build, self_attention=True), data="image",
                  description="ResNet with self-attention, spectral norm in G and D",
                  image_sizes=SUPPORTED_IMAGE_SIZES, default_latent_dim=128, default_width=64, convolves=True,
                  options=("attention_resolution",), validate_options=_validate_attention)

__all__ = ["ResNetGenerator", "ResNetDiscriminator", "GBlock", "DBlock", "SUPPORTED_IMAGE_SIZES",
           "generator_attention_resolutions", "discriminator_attention_resolutions", "attention_resolutions",
           "build", "SNGAN", "SAGAN"]
