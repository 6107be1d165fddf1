"""Model registry: ``--model`` names to (generator, discriminator) Flax modules.

| name   | G / D                                                   | data                       |
|--------|---------------------------------------------------------|----------------------------|
| mlp    | `mlp.MLPGenerator` / `mlp.MLPDiscriminator`             | 2D toy data                |
| dcgan  | `dcgan.DCGANGenerator` / `dcgan.DCGANDiscriminator`     | images 28, 32, 64, 128     |
| sngan  | `resnet.ResNetGenerator` / `resnet.ResNetDiscriminator` | images 32, 64, 128         |
| sagan  | ResNet with self-attention (``--attention_resolution``) | images 32, 64, 128         |

``--d_normalization`` picks DCGAN's D normalisation (``batch_norm`` by default; ``layer_norm`` or ``none``
is the WGAN-GP critic). The ResNet D is spectrally normalised and has no BatchNorm.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn

from jaxgan.config import ConfigError

MODELS = ("mlp", "dcgan", "sngan", "sagan")

_DEFAULT_LATENT = {"mlp": 8, "dcgan": 100, "sngan": 128, "sagan": 128}
_DEFAULT_WIDTH = {"mlp": 128, "dcgan": 64, "sngan": 64, "sagan": 64}


def validate_image_config(config) -> None:
    """Raises ConfigError for image sizes, channels or options a model does not support."""
    from jaxgan.models import dcgan, resnet
    if config.model == "dcgan":
        sizes = dcgan.SUPPORTED_IMAGE_SIZES
    else:
        sizes = resnet.SUPPORTED_IMAGE_SIZES
    if config.image_size not in sizes:
        raise ConfigError(f"--image_size={config.image_size} is not supported by --model={config.model}; "
                          f"accepted: {', '.join(map(str, sizes))}")
    if config.channels not in (1, 3):
        raise ConfigError(f"--channels={config.channels} is not supported; accepted: 1, 3")
    if config.d_normalization and config.model != "dcgan":
        raise ConfigError(f"--d_normalization applies to --model=dcgan (the {config.model} D is spectrally "
                          f"normalised)")
    if config.d_normalization and config.d_normalization not in dcgan.NORMALIZATIONS:
        raise ConfigError(f"--d_normalization={config.d_normalization!r} is not one of {dcgan.NORMALIZATIONS}")
    if config.model == "sagan":
        valid = attention_resolutions(config.image_size)
        if config.attention_resolution and config.attention_resolution not in valid:
            raise ConfigError(f"--attention_resolution={config.attention_resolution} is not valid at "
                              f"--image_size={config.image_size}; accepted: {valid}")
    elif config.attention_resolution:
        raise ConfigError(f"--attention_resolution applies to --model=sagan, not {config.model}")


def attention_resolutions(image_size: int) -> tuple[int, ...]:
    """Resolutions where both the ResNet G and D accept SAGAN's self-attention block."""
    from jaxgan.models import resnet
    return tuple(sorted(set(resnet.generator_attention_resolutions(image_size))
                        & set(resnet.discriminator_attention_resolutions(image_size))))


def build_models(config, data_shape: tuple[int, ...], num_classes: int, *, axis_name: str | None = None
                 ) -> tuple[nn.Module, nn.Module]:
    """The generator and discriminator named by ``config.model``. ``axis_name``: cross-replica BatchNorm."""
    name = config.model
    latent_dim = config.latent_dim or _DEFAULT_LATENT[name]
    g_width, d_width = model_widths(config)
    if name == "mlp":
        from jaxgan.models.mlp import MLPDiscriminator, MLPGenerator
        return (MLPGenerator(latent_dim=latent_dim, output_dim=data_shape[-1], hidden=(g_width,) * config.depth,
                             num_classes=num_classes),
                MLPDiscriminator(hidden=(d_width,) * config.depth, num_classes=num_classes))
    size, channels = data_shape[0], data_shape[-1]
    import jax.numpy as jnp
    dtype = jnp.dtype(getattr(config, "compute_dtype", "float32") or "float32")  # params stay float32
    conv_impl = getattr(config, "conv_impl", "auto")  # every convolution's implementation (jaxgan.models.layers)
    if name == "dcgan":
        from jaxgan.models.dcgan import DCGANDiscriminator, DCGANGenerator
        return (DCGANGenerator(latent_dim=latent_dim, image_size=size, channels=channels, num_classes=num_classes,
                               ngf=g_width, bn_axis_name=axis_name, dtype=dtype, conv_impl=conv_impl),
                DCGANDiscriminator(image_size=size, channels=channels, num_classes=num_classes, ndf=d_width,
                                   normalization=config.d_normalization or "batch_norm", bn_axis_name=axis_name,
                                   dtype=dtype, conv_impl=conv_impl))
    from jaxgan.models import resnet
    attention = None
    if name == "sagan":
        attention = config.attention_resolution or max(r for r in attention_resolutions(size) if r <= 32)
    return (resnet.ResNetGenerator(latent_dim=latent_dim, image_size=size, channels=channels,
                                   num_classes=num_classes, ch=g_width, attention_resolution=attention,
                                   spectral_norm=name == "sagan", bn_axis_name=axis_name, dtype=dtype,
                                   conv_impl=conv_impl),
            resnet.ResNetDiscriminator(image_size=size, channels=channels, num_classes=num_classes, ch=d_width,
                                       attention_resolution=attention, dtype=dtype, conv_impl=conv_impl))


def model_widths(config) -> tuple[int, int]:
    """(G width, D width): ``--g_width``/``--d_width``, else ``--width``, else the model's default."""
    width = config.width or _DEFAULT_WIDTH[config.model]
    return config.g_width or width, config.d_width or width


def discriminator_uses_batch_norm(discriminator: Any) -> bool:
    """Whether D normalises with BatchNorm (which couples examples, so per-example penalties are wrong)."""
    return getattr(discriminator, "normalization", None) == "batch_norm"
