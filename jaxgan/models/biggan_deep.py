"""BigGAN-deep (Brock et al. 2019, Appendix B, Tables 7-9): ``--model=biggan_deep``.

What differs from BigGAN (`jaxgan.models.biggan`, whose spectral norm, orthogonal initialisation, shared
embedding, self-attention, cross-replica BatchNorm and D head it shares):

* z is not split: ``[embed(y), z]`` ([B, shared_dim + latent_dim], z alone when unconditional) feeds the dense
  stem and conditions every BatchNorm of G (BigGAN-PyTorch ``BigGANdeep.py`` with ``--hier``).
* Bottleneck residual blocks, ``depth`` (2) per resolution, with hidden width = channels / 4 (``channel_ratio``).
  G block: cBN, ReLU, conv1x1 (in -> in/4), cBN, ReLU, [up 2x], conv3x3, cBN, ReLU, conv3x3, cBN, ReLU,
  conv1x1 (-> out); skip: the first ``out`` channels of x, [up 2x]. Each resolution: ``depth - 1`` blocks
  in -> in, then one in -> out that upsamples.
  D block: ReLU, conv1x1 (in -> out/4), ReLU, conv3x3, ReLU, conv3x3, ReLU, [avg-pool], conv1x1 (-> out);
  skip: [avg-pool], then ``[x, conv1x1(x) -> out - in]`` concatenated when the width grows. Each resolution:
  one block in -> out that downsamples, then ``depth - 1`` blocks out -> out. D starts with an SN conv3x3
  from the image to ch*in_0.

Channel multipliers (G as BigGAN's; D input -> output of each resolution, downsampling all but the last):

=====  ================================  =====================================================
size   G in -> out                       D in -> out
=====  ================================  =====================================================
32     4,4,4 -> 4,4,4                    4,4,4 -> 4,4,4 (down T, T, F)
64     16,16,8,4 -> 16,8,4,2             1,2,4,8 -> 2,4,8,16
128    16,16,8,4,2 -> 16,8,4,2,1         1,2,4,8,16 -> 2,4,8,16,16
256    16,16,8,8,4,2 -> 16,8,8,4,2,1     1,2,4,8,8,16 -> 2,4,8,8,16,16
512    16,16,8,8,4,2,1 -> 16,8,8,4,2,1,1 1,1,2,4,8,8,16 -> 1,2,4,8,8,16,16
=====  ================================  =====================================================

Self-attention after the resolution of `biggan.DEFAULT_ATTENTION` (64 at 128 px and larger). The paper's
BigGAN-deep uses ch = 128, latent_dim = 128.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxgan.models import biggan, layers
from jaxgan.models.biggan import (G_ARCH, ORTHO, SUPPORTED_IMAGE_SIZES, check_images, check_size, conditional_bn,
                                  discriminator_head, output_layer, resolve_attention, shared_embedding, sn_conv)
from jaxgan.models.blocks import SelfAttention, avg_pool2x, check_labels, sn_apply, upsample_nearest2x
from jaxgan.models.spec import ModelSpec

CHANNEL_RATIO = 4
# size -> (D input multipliers, D output multipliers, downsample flags) per resolution
D_ARCH = {
    32: ((4, 4, 4), (4, 4, 4), (True, True, False)),
    64: ((1, 2, 4, 8), (2, 4, 8, 16), (True,) * 4),
    128: ((1, 2, 4, 8, 16), (2, 4, 8, 16, 16), (True,) * 5),
    256: ((1, 2, 4, 8, 8, 16), (2, 4, 8, 8, 16, 16), (True,) * 6),
    512: ((1, 1, 2, 4, 8, 8, 16), (1, 2, 4, 8, 8, 16, 16), (True,) * 7),
}


def attention_resolutions(image_size: int) -> tuple[int, ...]:
    """Resolutions at which both BigGAN-deep's G and D take the self-attention block."""
    check_size(image_size, "BigGAN-deep")
    d = biggan.discriminator_resolutions(image_size, D_ARCH[image_size][2])
    return tuple(sorted(set(biggan.generator_resolutions(image_size)) & set(d)))


class DeepGBlock(nn.Module):
    """BigGAN-deep's bottleneck G block (``features`` out; hidden = in / 4)."""

    features: int
    upsample: bool
    bn_axis_name: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, cond, *, train: bool):
        kw = dict(train=train, dtype=self.dtype)
        bn = functools.partial(conditional_bn, cond=cond, train=train, axis_name=self.bn_axis_name, dtype=self.dtype)
        up = upsample_nearest2x if self.upsample else (lambda t: t)
        hidden = x.shape[-1] // CHANNEL_RATIO
        h = sn_conv(nn.relu(bn(x, name="bn1")), hidden, 1, "conv1", **kw)
        h = sn_conv(up(nn.relu(bn(h, name="bn2"))), hidden, 3, "conv2", **kw)
        h = sn_conv(nn.relu(bn(h, name="bn3")), hidden, 3, "conv3", **kw)
        h = sn_conv(nn.relu(bn(h, name="bn4")), self.features, 1, "conv4", **kw)
        return h + up(x[..., :self.features])


class DeepDBlock(nn.Module):
    """BigGAN-deep's bottleneck D block (``features`` out; hidden = out / 4)."""

    features: int
    downsample: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool):
        kw = dict(train=train, dtype=self.dtype)
        down = avg_pool2x if self.downsample else (lambda t: t)
        hidden = self.features // CHANNEL_RATIO
        h = sn_conv(nn.relu(x), hidden, 1, "conv1", **kw)
        h = sn_conv(nn.relu(h), hidden, 3, "conv2", **kw)
        h = sn_conv(nn.relu(h), hidden, 3, "conv3", **kw)
        h = sn_conv(down(nn.relu(h)), self.features, 1, "conv4", **kw)
        sc = down(x)
        if x.shape[-1] != self.features:
            sc = jnp.concatenate([sc, sn_conv(sc, self.features - x.shape[-1], 1, "shortcut", **kw)], axis=-1)
        return h + sc


class BigGANDeepGenerator(nn.Module):
    """BigGAN-deep's G: z [B, latent_dim] (+ labels int [B]) -> images [B, S, S, channels] in [-1, 1].

    Attributes as `biggan.BigGANGenerator` (any ``latent_dim``; 128 in the paper; ch 128), plus ``depth``
    (blocks per resolution, 2). Sown intermediates: ``cond`` ([B, shared_dim + latent_dim]).
    """

    latent_dim: int = 128
    image_size: int = 128
    channels: int = 3
    num_classes: int = 0
    ch: int = 128
    shared_dim: int = 128
    depth: int = 2
    attention_resolution: int | None = None
    bn_axis_name: str | None = None
    dtype: Any = jnp.float32
    conv_impl: str | None = None

    @nn.compact
    @layers.with_conv_impl
    def __call__(self, z, labels=None, *, train: bool):
        check_size(self.image_size, "BigGANDeepGenerator")
        attention = resolve_attention(self.attention_resolution, self.image_size,
                                      biggan.generator_resolutions(self.image_size), "BigGANDeepGenerator")
        if z.ndim != 2 or z.shape[-1] != self.latent_dim:
            raise ValueError(f"BigGANDeepGenerator expects z [B, {self.latent_dim}], got {list(z.shape)}")
        labels = check_labels(labels, self.num_classes, z.shape[0], "BigGANDeepGenerator")
        embed = shared_embedding(labels, self.num_classes, self.shared_dim)
        z = z.astype(jnp.float32)
        cond = z if embed is None else jnp.concatenate([embed, z], axis=-1)
        self.sow("intermediates", "cond", cond)
        in_mults, out_mults = G_ARCH[self.image_size]
        h = sn_apply(nn.Dense(4 * 4 * self.ch * in_mults[0], kernel_init=ORTHO, dtype=self.dtype, name="stem"),
                     cond, spectral_norm=True, train=train)
        h = h.reshape(z.shape[0], 4, 4, self.ch * in_mults[0])
        for i, (m_in, m_out) in enumerate(zip(in_mults, out_mults)):
            for j in range(self.depth):
                last = j == self.depth - 1
                h = DeepGBlock(self.ch * (m_out if last else m_in), upsample=last, bn_axis_name=self.bn_axis_name,
                               dtype=self.dtype, name=f"block{i}_{j}")(h, cond, train=train)
            if h.shape[1] == attention:
                h = SelfAttention(spectral_norm=True, kernel_init=ORTHO, dtype=self.dtype, name="attention")(
                    h, train=train)
        return output_layer(h, self.channels, train=train, axis_name=self.bn_axis_name, dtype=self.dtype)


class BigGANDeepDiscriminator(nn.Module):
    """BigGAN-deep's D: images (+ labels) -> logits [B]; attributes as `biggan.BigGANDiscriminator` plus
    ``depth`` (2)."""

    image_size: int = 128
    channels: int = 3
    num_classes: int = 0
    ch: int = 128
    depth: int = 2
    attention_resolution: int | None = None
    dtype: Any = jnp.float32
    conv_impl: str | None = None
    outputs: int = 1
    class_head: int = 0

    @nn.compact
    @layers.with_conv_impl
    def __call__(self, x, labels=None, *, train: bool):
        check_size(self.image_size, "BigGANDeepDiscriminator")
        in_mults, out_mults, downs = D_ARCH[self.image_size]
        attention = resolve_attention(self.attention_resolution, self.image_size,
                                      biggan.discriminator_resolutions(self.image_size, downs),
                                      "BigGANDeepDiscriminator")
        check_images(x, self.image_size, self.channels, "BigGANDeepDiscriminator")
        labels = check_labels(labels, self.num_classes, x.shape[0], "BigGANDeepDiscriminator")
        h = sn_conv(x.astype(self.dtype), self.ch * in_mults[0], 3, "in_conv", train=train, dtype=self.dtype)
        attended = False
        for i, (m, down) in enumerate(zip(out_mults, downs)):
            for j in range(self.depth):
                h = DeepDBlock(self.ch * m, downsample=down and j == 0, dtype=self.dtype, name=f"block{i}_{j}")(
                    h, train=train)
            if h.shape[1] == attention and not attended:
                h = SelfAttention(spectral_norm=True, kernel_init=ORTHO, dtype=self.dtype, name="attention")(
                    h, train=train)
                attended = True
        return discriminator_head(self, h, labels, train=train)


def build(config, data_shape, num_classes: int, **sizes):
    """`ModelSpec.build` of ``--model=biggan_deep`` (`biggan.build_pair`)."""
    return biggan.build_pair(BigGANDeepGenerator, BigGANDeepDiscriminator, config, data_shape, num_classes, **sizes)


SPEC = ModelSpec("biggan_deep", build, data="image",
                 description="BigGAN-deep: bottleneck ResBlocks, two per resolution, z concatenated with the "
                             "class embedding",
                 image_sizes=SUPPORTED_IMAGE_SIZES, default_latent_dim=128, default_width=128, convolves=True,
                 options=("attention_resolution",),
                 validate_options=functools.partial(biggan.validate_options, resolutions=attention_resolutions,
                                                    latent_slots=False))

__all__ = ["BigGANDeepGenerator", "BigGANDeepDiscriminator", "DeepGBlock", "DeepDBlock", "D_ARCH",
           "attention_resolutions", "build", "SPEC"]
