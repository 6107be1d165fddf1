"""Model registry: ``--model`` names to `ModelSpec` s (`jaxgan.models.spec`), one line per model.

| name   | G / D                                                   | data                       |
|--------|---------------------------------------------------------|----------------------------|
| mlp    | `mlp.MLPGenerator` / `mlp.MLPDiscriminator`             | 2D toy data                |
| pacgan_mlp | PacGAN's G (400-unit ReLU + BatchNorm) / D (200-unit maxout, 5 pieces) | 2D toy data |
| dcgan  | `dcgan.DCGANGenerator` / `dcgan.DCGANDiscriminator`     | images 28, 32, 64, 128     |
| sngan  | `resnet.ResNetGenerator` / `resnet.ResNetDiscriminator` | images 32, 64, 128         |
| sagan  | ResNet with self-attention (``--attention_resolution``) | images 32, 64, 128         |
| stylegan2 | `stylegan2.StyleGAN2Generator` / `stylegan2.StyleGAN2Discriminator` | images 32 to 1024 |
| biggan | `biggan.BigGANGenerator` / `biggan.BigGANDiscriminator` | images 32, 64, 128, 256, 512 |
| biggan_deep | `biggan_deep.BigGANDeepGenerator` / `...Discriminator` | images 32, 64, 128, 256, 512 |

``--d_normalization`` picks DCGAN's D normalisation (``batch_norm`` by default; ``layer_norm`` or ``none``
is the WGAN-GP critic). The ResNet D is spectrally normalised and has no BatchNorm.

Adding a model: give its module a ``SPEC = ModelSpec(...)`` and add one line to `MODELS`
(``docs/extending.md``); ``tests/test_registries.py`` then trains it one step.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn

from jaxgan.config import ConfigError
from jaxgan.models import biggan, biggan_deep, dcgan, mlp, pacgan_mlp, resnet, stylegan2
from jaxgan.models.spec import MODEL_OPTIONS, ModelSpec

MODELS: dict[str, ModelSpec] = {
    "mlp": mlp.SPEC,
    "pacgan_mlp": pacgan_mlp.SPEC,
    "dcgan": dcgan.SPEC,
    "sngan": resnet.SNGAN,
    "sagan": resnet.SAGAN,
    "biggan": biggan.SPEC,
    "biggan_deep": biggan_deep.SPEC,
    "stylegan2": stylegan2.SPEC,
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


def validate_heads(config) -> None:
    """ACGAN's --auxiliary_classifier_weight (>= 0, needs --conditional), and that the D --model builds has the
    heads the objective reads: several outputs for --loss=realness, a class head for ACGAN. Constructs the
    modules only (no parameters). `ConfigError` naming the flag."""
    w = config.auxiliary_classifier_weight
    if not (math.isfinite(w) and w >= 0):
        raise ConfigError(f"--auxiliary_classifier_weight must be a finite number >= 0, got {w}")
    if w and not config.conditional:
        raise ConfigError(f"--auxiliary_classifier_weight={w} needs --conditional (ACGAN's class head learns the "
                          f"labels of a labelled dataset)")
    if config.loss != "realness" and not w:
        return
    shape = (2,) if config.is_toy else (config.image_size, config.image_size, config.channels)
    _, d = build_models(config, shape, 10 if config.conditional else 0)
    if config.loss == "realness" and getattr(d, "outputs", 1) != config.realness_outcomes:
        raise ConfigError(f"--loss=realness needs a D with --realness_outcomes outputs; --model={config.model}'s D "
                          f"has one output; use --model={' or '.join(models_with_head('outputs', 2))}")
    if w and getattr(d, "class_head", 0) <= 0:
        raise ConfigError(f"--auxiliary_classifier_weight needs a D with a class head; --model={config.model}'s D "
                          f"has none; use --model={' or '.join(models_with_head('class_head', 10))}")


def models_with_head(attribute: str, value: int) -> list[str]:
    """The --model names whose D takes the head option ``attribute`` (``outputs``, ``class_head``)."""
    from jaxgan.config import Config
    return [name for name, spec in sorted(MODELS.items())
            if getattr(spec.build_models(Config(model=name, loss="realness", realness_outcomes=value,
                                                auxiliary_classifier_weight=1.0),
                                         (2,) if spec.data == "2d" else (min(spec.image_sizes),) * 2 + (1,),
                                         value)[1], attribute, 0) == value]
