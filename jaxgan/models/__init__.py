"""Model registry: ``--model`` names to `ModelSpec` s (`jaxgan.models.spec`), one line per model.

| name   | G / D                                                   | data                       |
|--------|---------------------------------------------------------|----------------------------|
| mlp    | `mlp.MLPGenerator` / `mlp.MLPDiscriminator`             | 2D toy data                |
| dcgan  | `dcgan.DCGANGenerator` / `dcgan.DCGANDiscriminator`     | images 28, 32, 64, 128     |
| sngan  | `resnet.ResNetGenerator` / `resnet.ResNetDiscriminator` | images 32, 64, 128         |
| sagan  | ResNet with self-attention (``--attention_resolution``) | images 32, 64, 128         |

``--d_normalization`` picks DCGAN's D normalisation (``batch_norm`` by default; ``layer_norm`` or ``none``
is the WGAN-GP critic). The ResNet D is spectrally normalised and has no BatchNorm.

Adding a model: give its module a ``SPEC = ModelSpec(...)`` and add one line to `MODELS`
(``docs/extending.md``); ``tests/test_registries.py`` then trains it one step.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn

from jaxgan.config import ConfigError
from jaxgan.models import dcgan, mlp, resnet
from jaxgan.models.spec import MODEL_OPTIONS, ModelSpec

MODELS: dict[str, ModelSpec] = {
    "mlp": mlp.SPEC,
    "dcgan": dcgan.SPEC,
    "sngan": resnet.SNGAN,
    "sagan": resnet.SAGAN,
}


def get_spec(name: str) -> ModelSpec:
    """The registered spec of ``--model=name``; an unknown name raises `ConfigError` listing the accepted ones."""
    try:
        return MODELS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"--model={name!r} is not one of {sorted(MODELS)}") from None


def models_for(data: str) -> list[str]:
    """The registered model names that take ``data`` ("2d" or "image"), sorted."""
    return sorted(name for name, spec in MODELS.items() if spec.data == data)


def validate_image_config(config) -> None:
    """Raises ConfigError for image sizes, channels or options a model does not support."""
    spec = get_spec(config.model)
    for option in MODEL_OPTIONS:
        if getattr(config, option, None) and option not in spec.options:
            takers = sorted(name for name, s in MODELS.items() if option in s.options)
            raise ConfigError(f"--{option} applies to --model={' or '.join(takers)}, not {config.model} "
                              f"({spec.description})")
    spec.validate(config)


def attention_resolutions(image_size: int) -> tuple[int, ...]:
    """Resolutions where both the ResNet G and D accept SAGAN's self-attention block."""
    return resnet.attention_resolutions(image_size)


def build_models(config, data_shape: tuple[int, ...], num_classes: int, *, axis_name: str | None = None
                 ) -> tuple[nn.Module, nn.Module]:
    """The generator and discriminator named by ``config.model``. ``axis_name``: cross-replica BatchNorm."""
    return get_spec(config.model).build_models(config, data_shape, num_classes, axis_name=axis_name)


def model_widths(config) -> tuple[int, int]:
    """(G width, D width): ``--g_width``/``--d_width``, else ``--width``, else the model's default."""
    return get_spec(config.model).widths(config)


def discriminator_uses_batch_norm(discriminator: Any) -> bool:
    """Whether the D module normalises with BatchNorm (which couples examples, so per-example penalties are
    wrong). From a config, without building D: ``MODELS[config.model].d_uses_batch_norm(config)``."""
    return getattr(discriminator, "normalization", None) == "batch_norm"


__all__ = ["MODELS", "ModelSpec", "get_spec", "models_for", "validate_image_config", "attention_resolutions",
           "build_models", "model_widths", "discriminator_uses_batch_norm"]
