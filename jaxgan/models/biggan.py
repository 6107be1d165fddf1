"""BigGAN (Brock et al. 2019, "Large Scale GAN Training for High Fidelity Natural Image Synthesis").

``--model=biggan``; BigGAN-deep is `jaxgan.models.biggan_deep` (``--model=biggan_deep``). The architecture is
the paper's (Appendix B, Tables 4-6) as BigGAN-PyTorch (``BigGAN.py``, ``layers.py``) and PyTorch-StudioGAN
(``src/models/big_resnet.py``) implement it:

* **Hierarchical latents.** z [B, latent_dim] is split into ``len(blocks) + 1`` equal chunks (`latent_split`):
  the first feeds the dense stem (-> 4x4 x ch*m_0), chunk i+1 is concatenated *after* the shared class
  embedding (``[embed(y), z_{i+1}]``, [B, shared_dim + chunk]) and conditions both BatchNorms of G block i.
  Unconditional models condition on the chunk alone. latent_dim must divide evenly (120 at 128 px: 6 x 20;
  80 at 32 px: 4 x 20; 140 at 256 px).
* **Shared class embedding** (``shared_embed``, [num_classes, shared_dim], no spectral norm), linearly mapped
  to each conditional BatchNorm's gain and bias (``gamma = 1 + W_g c``, ``beta = W_b c``; spectrally normalised
  maps without bias) - `jaxgan.models.blocks.ConditionalBatchNorm`.
* **Spectral norm** on every conv, dense and projection-embedding layer of G and D (flax ``nn.SpectralNorm``,
  one power iteration per training call).
* **Orthogonal initialisation** of every conv, dense and embedding weight (``nn.initializers.orthogonal``: the
  kernel viewed as [fan_in, out] has orthonormal rows or columns, as ``torch.nn.init.orthogonal_`` on PyTorch's
  [out, fan_in]); biases zero. Orthogonal *regularization* (beta 1e-4) is ``--g_ortho_weight``
  (`jaxgan.regularizers.orthogonal`, an optax transformation).
* **Self-attention** (SAGAN's block, `jaxgan.models.blocks.SelfAttention`) at 64x64 for 128 px and larger
  (the paper), 32x32 at 64 px, 16x16 at 32 px (StudioGAN's CIFAR BigGAN); ``attention_resolution`` moves it.
* **Cross-replica BatchNorm**: every BatchNorm of G reduces over ``bn_axis_name`` (the data axis) under data
  parallelism, so statistics are those of the global batch.
* **Truncation trick**: sample with ``truncated_normal_latents`` (`jaxgan.step.sample(truncation=...)`,
  ``launch/sample.py --truncation``); the latent size is G's ``latent_dim``.

Channel multipliers of ``ch`` (G: stem width then each up-block's output; D: each block's output):

=====  ================================  ==================================  =================
size   G in -> out                       D out (down)                        attention (G, D)
=====  ================================  ==================================  =================
32     4,4,4 -> 4,4,4                    2,2,2,2 (T,T,F,F)                   16
64     16,16,8,4 -> 16,8,4,2             1,2,4,8,16 (T,T,T,T,F)              32
128    16,16,8,4,2 -> 16,8,4,2,1         1,2,4,8,16,16 (T x5, F)             64
256    16,16,8,8,4,2 -> 16,8,8,4,2,1     1,2,4,8,8,16,16 (T x6, F)           64
512    16,16,8,8,4,2,1 -> 16,8,8,4,2,1,1 1,1,2,4,8,8,16,16 (T x7, F)         64
=====  ================================  ==================================  =================

The 32 px D is StudioGAN's (2 ch wide; BigGAN-PyTorch's is 4 ch), whose CIFAR-10 parameter counts are
published; the 64 px G is BigGAN-PyTorch's. G block: cBN, ReLU, up 2x (nearest), conv3x3, cBN, ReLU, conv3x3;
shortcut up 2x then conv1x1. Output: BN, ReLU, conv3x3 -> channels, tanh. D: first block conv3x3, ReLU,
conv3x3, avg-pool, shortcut avg-pool then conv1x1; then pre-activation blocks (ReLU, conv3x3, ReLU, conv3x3,
[avg-pool]; shortcut conv1x1 [avg-pool] when the width or resolution changes); ReLU, global sum pooling, dense
-> logit, plus the projection ``<embed(y), h>`` when conditional (`jaxgan.models.heads`).
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

SUPPORTED_IMAGE_SIZES = (32, 64, 128, 256, 512)
ORTHO = nn.initializers.orthogonal()
DEFAULT_ATTENTION = {32: 16, 64: 32, 128: 64, 256: 64, 512: 64}

# size -> (G input multipliers (the stem's is the first), G output multipliers)
G_ARCH = {
    32: ((4, 4, 4), (4, 4, 4)),
    64: ((16, 16, 8, 4), (16, 8, 4, 2)),
    128: ((16, 16, 8, 4, 2), (16, 8, 4, 2, 1)),
    256: ((16, 16, 8, 8, 4, 2), (16, 8, 8, 4, 2, 1)),
    512: ((16, 16, 8, 8, 4, 2, 1), (16, 8, 8, 4, 2, 1, 1)),
}
# size -> (D output multipliers, downsample flags)
D_ARCH = {
    32: ((2, 2, 2, 2), (True, True, False, False)),
    64: ((1, 2, 4, 8, 16), (True,) * 4 + (False,)),
    128: ((1, 2, 4, 8, 16, 16), (True,) * 5 + (False,)),
    256: ((1, 2, 4, 8, 8, 16, 16), (True,) * 6 + (False,)),
    512: ((1, 1, 2, 4, 8, 8, 16, 16), (True,) * 7 + (False,)),
}


def check_size(image_size: int, who: str) -> None:
    if image_size not in SUPPORTED_IMAGE_SIZES:
        raise ValueError(f"{who} image_size={image_size!r} is not supported; accepted sizes: "
                         f"{', '.join(map(str, SUPPORTED_IMAGE_SIZES))}")


def latent_split(latent_dim: int, image_size: int) -> tuple[int, ...]:
    """Chunk sizes of BigGAN's hierarchical z: ``len(G blocks) + 1`` equal chunks (stem first); raises
    ValueError when ``latent_dim`` does not divide evenly."""
    check_size(image_size, "BigGANGenerator")
    slots = len(G_ARCH[image_size][0]) + 1
    if latent_dim <= 0 or latent_dim % slots:
        raise ValueError(f"BigGAN at {image_size} px splits z into {slots} equal chunks: latent_dim must be a "
                         f"positive multiple of {slots}, got {latent_dim} (e.g. {20 * slots})")
    return (latent_dim // slots,) * slots


def resolve_attention(attention_resolution: int | None, image_size: int, valid: tuple[int, ...], who: str):
    """None -> the default resolution of ``image_size``; 0 -> no attention; else checked against ``valid``."""
    res = DEFAULT_ATTENTION[image_size] if attention_resolution is None else attention_resolution
    if res and res not in valid:
        raise ValueError(f"{who} attention_resolution={res!r} is not supported at {image_size} px; accepted: "
                         f"0 (none), {', '.join(map(str, valid))}")
    return res


def generator_resolutions(image_size: int) -> tuple[int, ...]:
    """Output resolutions of the G blocks (8, 16, ..., image_size)."""
    return tuple(8 * 2 ** i for i in range(len(G_ARCH[image_size][0])))


def discriminator_resolutions(image_size: int, downs) -> tuple[int, ...]:
    """Distinct output resolutions of D blocks with downsample flags ``downs``."""
    res, out = image_size, []
    for down in downs:
        res = res // 2 if down else res
        if res not in out:
            out.append(res)
    return tuple(out)


def attention_resolutions(image_size: int) -> tuple[int, ...]:
    """Resolutions at which both BigGAN's G and D take the self-attention block."""
    check_size(image_size, "BigGAN")
    d = discriminator_resolutions(image_size, D_ARCH[image_size][1])
    return tuple(sorted(set(generator_resolutions(image_size)) & set(d)))


def sn_conv(h, features: int, kernel: int, name: str, *, train: bool, dtype):
    """Spectrally normalised, orthogonally initialised conv (stride 1, SAME, bias) inside a compact method."""
    return sn_apply(conv(features, kernel, name=name, kernel_init=ORTHO, dtype=dtype), h, spectral_norm=True,
                    train=train)


def conditional_bn(h, cond, name: str, *, train: bool, axis_name, dtype):
    """BigGAN's cBN: batch statistics (over ``axis_name`` too), gain/bias from SN, ortho-initialised maps."""
    return ConditionalBatchNorm(axis_name=axis_name, dtype=dtype, kernel_init=ORTHO, spectral_norm=True,
                                name=name)(h, cond, train=train)


def shared_embedding(labels, num_classes: int, shared_dim: int):
    """The shared class embedding [B, shared_dim] (orthogonally initialised, no spectral norm), or None."""
    if labels is None:
        return None
    return nn.Embed(num_classes, shared_dim, embedding_init=ORTHO, name="shared_embed")(labels)


def output_layer(h, channels: int, *, train: bool, axis_name, dtype):
    """BN (affine), ReLU, SN conv3x3 -> channels, tanh; float32 images."""
    h = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, axis_name=axis_name,
                     dtype=dtype, name="out_bn")(h)
    h = sn_conv(nn.relu(h), channels, 3, "out_conv", train=train, dtype=dtype)
    return jnp.tanh(h.astype(jnp.float32))


def discriminator_head(module, h, labels, *, train: bool):
    """ReLU, global sum pooling, SN dense -> logits, projection and optional class head (`heads`)."""
    h = jnp.sum(nn.relu(h).astype(jnp.float32), axis=(1, 2))
    module.sow("intermediates", "features", h)
    logit = sn_apply(nn.Dense(module.outputs, kernel_init=ORTHO, name="out"), h, spectral_norm=True, train=train)
    if labels is not None:
        embed = sn_apply(nn.Embed(module.num_classes, h.shape[-1] * module.outputs, embedding_init=ORTHO,
                                  name="embed"), labels, spectral_norm=True, train=train)
        logit = heads.project(logit, embed, h)
    class_logits = None
    if module.class_head:
        class_logits = sn_apply(nn.Dense(module.class_head, kernel_init=ORTHO, name="class_out"), h,
                                spectral_norm=True, train=train)
    return heads.discriminator_output(logit, class_logits)


def check_images(x, image_size: int, channels: int, who: str) -> None:
    want = (image_size, image_size, channels)
    if x.ndim != 4 or tuple(x.shape[1:]) != want:
        raise ValueError(f"{who} expects images [B, {want[0]}, {want[1]}, {want[2]}], got {list(x.shape)}")


class GBlock(nn.Module):
    """BigGAN's up-block; ``cond`` [B, d] conditions both BatchNorms."""

    features: int
    bn_axis_name: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, cond, *, train: bool):
        kw = dict(train=train, dtype=self.dtype)
        bn = functools.partial(conditional_bn, cond=cond, train=train, axis_name=self.bn_axis_name, dtype=self.dtype)
        h = upsample_nearest2x(nn.relu(bn(x, name="bn1")))
        h = sn_conv(h, self.features, 3, "conv1", **kw)
        h = sn_conv(nn.relu(bn(h, name="bn2")), self.features, 3, "conv2", **kw)
        return h + sn_conv(upsample_nearest2x(x), self.features, 1, "shortcut", **kw)


class DBlock(nn.Module):
    """BigGAN's D block ("wide": the hidden width is the output width); ``optimized`` for the first block."""

    features: int
    downsample: bool = True
    optimized: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool):
        kw = dict(train=train, dtype=self.dtype)
        if self.optimized:
            h = sn_conv(nn.relu(sn_conv(x, self.features, 3, "conv1", **kw)), self.features, 3, "conv2", **kw)
            return avg_pool2x(h) + sn_conv(avg_pool2x(x), self.features, 1, "shortcut", **kw)
        h = sn_conv(nn.relu(x), self.features, 3, "conv1", **kw)
        h = sn_conv(nn.relu(h), self.features, 3, "conv2", **kw)
        sc = x
        if self.downsample or x.shape[-1] != self.features:
            sc = sn_conv(x, self.features, 1, "shortcut", **kw)
        if self.downsample:
            h, sc = avg_pool2x(h), avg_pool2x(sc)
        return h + sc


class BigGANGenerator(nn.Module):
    """BigGAN's G: z [B, latent_dim] (+ labels int [B]) -> images [B, S, S, channels] in [-1, 1].

    Attributes:
      latent_dim: size of z, a multiple of ``len(blocks) + 1`` (`latent_split`); 120 in the paper at 128 px.
      image_size: 32, 64, 128, 256 or 512.
      channels: output channels.
      num_classes: 0 = unconditional (BatchNorms conditioned on the z chunks only).
      ch: base width (96 in the paper at 128 px and StudioGAN's CIFAR-10 BigGAN).
      shared_dim: size of the shared class embedding (128).
      attention_resolution: None (the default of the size), 0 (none) or a G block resolution.
      bn_axis_name: BatchNorm ``axis_name`` (cross-replica BatchNorm under data parallelism).
      dtype: compute dtype; parameters stay float32, images are float32.
      conv_impl: convolution implementation (`jaxgan.models.layers`); None: the default.

    Sown intermediates (``mutable=['intermediates']``): ``cond`` per block, the [B, shared_dim + chunk]
    conditioning vectors.
    """

    latent_dim: int = 120
    image_size: int = 128
    channels: int = 3
    num_classes: int = 0
    ch: int = 96
    shared_dim: int = 128
    attention_resolution: int | None = None
    bn_axis_name: str | None = None
    dtype: Any = jnp.float32
    conv_impl: str | None = None

    @nn.compact
    @layers.with_conv_impl
    def __call__(self, z, labels=None, *, train: bool):
        chunks = latent_split(self.latent_dim, self.image_size)
        attention = resolve_attention(self.attention_resolution, self.image_size,
                                      generator_resolutions(self.image_size), "BigGANGenerator")
        if z.ndim != 2 or z.shape[-1] != self.latent_dim:
            raise ValueError(f"BigGANGenerator expects z [B, {self.latent_dim}], got {list(z.shape)}")
        labels = check_labels(labels, self.num_classes, z.shape[0], "BigGANGenerator")
        embed = shared_embedding(labels, self.num_classes, self.shared_dim)
        zs = jnp.split(z.astype(jnp.float32), len(chunks), axis=-1)
        in_mults, out_mults = G_ARCH[self.image_size]
        h = sn_apply(nn.Dense(4 * 4 * self.ch * in_mults[0], kernel_init=ORTHO, dtype=self.dtype, name="stem"),
                     zs[0], spectral_norm=True, train=train)
        h = h.reshape(z.shape[0], 4, 4, self.ch * in_mults[0])
        for i, (m, z_i) in enumerate(zip(out_mults, zs[1:])):
            cond = z_i if embed is None else jnp.concatenate([embed, z_i], axis=-1)
            self.sow("intermediates", "cond", cond)
            h = GBlock(self.ch * m, self.bn_axis_name, self.dtype, name=f"block{i}")(h, cond, train=train)
            if h.shape[1] == attention:
                h = SelfAttention(spectral_norm=True, kernel_init=ORTHO, dtype=self.dtype, name="attention")(
                    h, train=train)
        return output_layer(h, self.channels, train=train, axis_name=self.bn_axis_name, dtype=self.dtype)


class BigGANDiscriminator(nn.Module):
    """BigGAN's D: images [B, S, S, channels] (+ labels) -> logits [B] (projection D when conditional).

    Attributes: as `jaxgan.models.resnet.ResNetDiscriminator` (``outputs``, ``class_head``: `heads`), with
    ``image_size`` in 32..512, ``ch`` the base width (96) and ``attention_resolution`` None/0/a resolution.
    No BatchNorm. Sown intermediates: ``features`` (the pooled h [B, C]).
    """

    image_size: int = 128
    channels: int = 3
    num_classes: int = 0
    ch: int = 96
    attention_resolution: int | None = None
    dtype: Any = jnp.float32
    conv_impl: str | None = None
    outputs: int = 1
    class_head: int = 0

    @nn.compact
    @layers.with_conv_impl
    def __call__(self, x, labels=None, *, train: bool):
        check_size(self.image_size, "BigGANDiscriminator")
        mults, downs = D_ARCH[self.image_size]
        attention = resolve_attention(self.attention_resolution, self.image_size,
                                      discriminator_resolutions(self.image_size, downs), "BigGANDiscriminator")
        check_images(x, self.image_size, self.channels, "BigGANDiscriminator")
        labels = check_labels(labels, self.num_classes, x.shape[0], "BigGANDiscriminator")
        h, attended = x.astype(self.dtype), False
        for i, (m, down) in enumerate(zip(mults, downs)):
            h = DBlock(self.ch * m, down, optimized=i == 0, dtype=self.dtype, name=f"block{i}")(h, train=train)
            if h.shape[1] == attention and not attended:
                h = SelfAttention(spectral_norm=True, kernel_init=ORTHO, dtype=self.dtype, name="attention")(
                    h, train=train)
                attended = True
        return discriminator_head(self, h, labels, train=train)


def build_pair(generator_cls, discriminator_cls, config, data_shape, num_classes: int, *, axis_name=None,
               latent_dim: int, g_width: int, d_width: int):
    """(G, D) of the BigGAN family (`BigGANGenerator`/`BigGANDiscriminator` or the deep variant's) from a config:
    attention at ``--attention_resolution`` (0: the default), D's heads from `heads.discriminator_head`."""
    size, channels = data_shape[0], data_shape[-1]
    common = dict(image_size=size, channels=channels, attention_resolution=config.attention_resolution or None,
                  dtype=compute_dtype(config), conv_impl=getattr(config, "conv_impl", "auto"))
    return (generator_cls(latent_dim=latent_dim, num_classes=num_classes, ch=g_width, bn_axis_name=axis_name,
                          **common),
            discriminator_cls(ch=d_width, **common, **heads.discriminator_head(config, num_classes)))


def build(config, data_shape, num_classes: int, **sizes):
    """`ModelSpec.build` of ``--model=biggan`` (`build_pair`)."""
    return build_pair(BigGANGenerator, BigGANDiscriminator, config, data_shape, num_classes, **sizes)


def validate_options(config, resolutions=attention_resolutions, latent_slots=True, default_latent_dim=120) -> None:
    """``--attention_resolution`` (0 or one of the valid resolutions) and, for BigGAN, a latent size that
    splits evenly into the hierarchical chunks."""
    valid = resolutions(config.image_size)
    if config.attention_resolution and config.attention_resolution not in valid:
        raise ConfigError(f"--attention_resolution={config.attention_resolution} is not valid for --model="
                          f"{config.model} at --image_size={config.image_size}; accepted: 0 (default "
                          f"{DEFAULT_ATTENTION[config.image_size]}), {', '.join(map(str, valid))}")
    if latent_slots:
        slots = len(G_ARCH[config.image_size][0]) + 1
        latent_dim = config.latent_dim or default_latent_dim
        if latent_dim % slots:
            raise ConfigError(f"--latent_dim={latent_dim} does not split into the {slots} equal chunks of BigGAN's "
                              f"hierarchical z at --image_size={config.image_size}; use a multiple of {slots}, "
                              f"e.g. --latent_dim={20 * slots}")


SPEC = ModelSpec("biggan", build, data="image",
                 description="BigGAN: hierarchical z, shared class embedding, SN + orthogonal init in G and D, "
                             "self-attention",
                 image_sizes=SUPPORTED_IMAGE_SIZES, default_latent_dim=120, default_width=96, convolves=True,
                 options=("attention_resolution",), validate_options=validate_options)

__all__ = ["BigGANGenerator", "BigGANDiscriminator", "GBlock", "DBlock", "G_ARCH", "D_ARCH", "SUPPORTED_IMAGE_SIZES",
           "DEFAULT_ATTENTION", "latent_split", "attention_resolutions", "build", "SPEC"]
