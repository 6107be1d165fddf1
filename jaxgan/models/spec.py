"""`ModelSpec`: what a ``--model`` entry of the registry (`jaxgan.models.MODELS`) declares about itself.

A model module (``mlp.py``, ``dcgan.py``, ``resnet.py``) exports one spec per ``--model`` name; the registry in
`jaxgan.models` maps names to specs, and everything that used to decide by model name asks the spec instead:
which data it takes (``data``), which image sizes, its default latent size and width, whether it convolves
(`jaxgan.step.inline_multi_steps`), which model-specific flags it accepts (``options``) and whether its D
normalises with BatchNorm (which per-example gradient penalties cannot use).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from jaxgan.config import ConfigError

DATA_KINDS = ("2d", "image")
# Flags that only some models accept; a model lists the ones it reads in ``ModelSpec.options``.
MODEL_OPTIONS = ("d_normalization", "attention_resolution")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One ``--model`` entry.

    Attributes:
      name: the ``--model`` value.
      build: ``build(config, data_shape, num_classes, *, axis_name, latent_dim, g_width, d_width) -> (G, D)``:
        the Flax modules (``data_shape`` is one example's shape: ``(2,)`` or ``(S, S, C)``); the latent size and
        widths come resolved (`build_models` applies the defaults below).
      data: ``"2d"`` (vector data, the toy datasets) or ``"image"``.
      description: one line for docs and error messages.
      image_sizes: image sizes S it accepts (empty for 2D models).
      default_latent_dim, default_width: used when ``--latent_dim`` / ``--width`` are 0.
      convolves: whether the networks convolve (the multi-step loop inlines steps on CPU for those).
      options: the model-specific flags of `MODEL_OPTIONS` it accepts.
      validate_options: ``f(config)`` raising `ConfigError` for bad values of those flags (None: no checks).
      d_uses_batch_norm: ``f(config) -> bool``: whether D normalises with BatchNorm under ``config``.
    """

    name: str
    build: Callable[..., tuple[Any, Any]]
    data: str
    description: str
    image_sizes: tuple[int, ...] = ()
    default_latent_dim: int = 128
    default_width: int = 64
    convolves: bool = True
    options: tuple[str, ...] = ()
    validate_options: Callable[[Any], None] | None = None
    d_uses_batch_norm: Callable[[Any], bool] = lambda config: False

    def __post_init__(self):
        if self.data not in DATA_KINDS:
            raise ValueError(f"ModelSpec {self.name!r}: data={self.data!r} is not one of {DATA_KINDS}")
        unknown = set(self.options) - set(MODEL_OPTIONS)
        if unknown:
            raise ValueError(f"ModelSpec {self.name!r}: unknown options {sorted(unknown)}; known: {MODEL_OPTIONS}")

    def latent_dim(self, config) -> int:
        """``--latent_dim``, else the model's default."""
        return config.latent_dim or self.default_latent_dim

    def widths(self, config) -> tuple[int, int]:
        """(G width, D width): ``--g_width``/``--d_width``, else ``--width``, else the model's default."""
        width = config.width or self.default_width
        return config.g_width or width, config.d_width or width

    def build_models(self, config, data_shape: tuple[int, ...], num_classes: int, *, axis_name: str | None = None):
        """(G, D) for ``config`` with the defaults applied; ``axis_name``: cross-replica BatchNorm."""
        g_width, d_width = self.widths(config)
        return self.build(config, tuple(data_shape), num_classes, axis_name=axis_name,
                          latent_dim=self.latent_dim(config), g_width=g_width, d_width=d_width)

    def validate(self, config) -> None:
        """Raises `ConfigError` for an image size, channel count or value of its own ``options`` it refuses
        (flags of other models are refused by `jaxgan.models.validate_image_config`, which knows them all)."""
        if self.data == "image":
            if config.image_size not in self.image_sizes:
                raise ConfigError(f"--image_size={config.image_size} is not supported by --model={self.name}; "
                                  f"accepted: {', '.join(map(str, self.image_sizes))}")
            if config.channels not in (1, 3):
                raise ConfigError(f"--channels={config.channels} is not supported; accepted: 1, 3")
        if self.validate_options is not None:
            self.validate_options(config)


def compute_dtype(config):
    """The activation dtype of ``--compute_dtype`` (parameters stay float32)."""
    import jax.numpy as jnp
    return jnp.dtype(getattr(config, "compute_dtype", "float32") or "float32")


__all__ = ["ModelSpec", "DATA_KINDS", "MODEL_OPTIONS", "compute_dtype"]
