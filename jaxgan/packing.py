"""PacGAN packing (Lin et al. 2018): D judges m samples at once, concatenated along their last axis.

`Packing(m)` is a D input transform (`jaxgan.objectives.InputTransform`) and must be D's LAST one: it maps a
batch [B, ..., C] to [B/m, ..., m*C], packed group j holding samples j*m .. j*m+m-1 in that order (the channels
of sample j*m first). Because it runs where every other input transform runs, every loss and penalty works
unchanged on the packed examples: D's outputs are [B/m], and a gradient penalty differentiates D with respect
to each packed example, as a packed D should. Samples within a batch are independent (fresh latents; toy data
drawn i.i.d. or, with ``--toy_train_size``, without replacement within an epoch), so every group is m
independent samples.

Batch sizes: ``--batch_size`` counts *samples* (real, and fakes alike), so D sees ``batch_size / m`` packed
examples per update; the batch must be a multiple of m. The reference code (fjxmlzn/PacGAN) feeds D batches of
100 packed examples, i.e. 100*m samples of each kind: reproduce it with ``--batch_size=100*m``.

`init_gan_state` initialises D with the packed example shape through `example_shape`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from jaxgan import objectives
from jaxgan.config import ConfigError


@dataclasses.dataclass(frozen=True)
class Packing:
    """Concatenates groups of ``m`` consecutive samples along the last axis; stateless. m = 1 is the identity."""
    m: int
    name: str = "packing"

    def __post_init__(self):
        if not isinstance(self.m, int) or self.m < 1:
            raise ValueError(f"packing must be an integer >= 1, got {self.m!r}")

    @property
    def hparams(self) -> Mapping[str, float]:
        return {}

    def init(self) -> Any:
        return {}

    def example_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """One packed example's shape from one sample's: (..., C) -> (..., m*C)."""
        shape = tuple(shape)
        return shape[:-1] + (self.m * shape[-1],)

    def apply(self, state, key, x: jax.Array, step, hparams) -> jax.Array:
        """[B, ..., C] -> [B/m, ..., m*C]; raises ValueError (at trace time) when m does not divide B."""
        del state, key, step, hparams
        if self.m == 1:
            return x
        if x.shape[0] % self.m:
            raise ValueError(f"packing={self.m} needs a batch that is a multiple of {self.m}, got {x.shape[0]} "
                             f"samples")
        grouped = x.reshape((x.shape[0] // self.m, self.m) + x.shape[1:])  # [B/m, m, ..., C]
        grouped = jnp.moveaxis(grouped, 1, -2)  # [B/m, ..., m, C]
        return grouped.reshape(grouped.shape[:-2] + (self.m * x.shape[-1],))

    def update(self, state, stats):
        return state, {}


def packing(m: int) -> objectives.Objective:
    """`Packing(m)` as an objective to add LAST (after every other input transform):
    ``objective + packing(2)``. ``packing(1)`` adds nothing: D, its inputs and the random keys of the other
    transforms stay exactly those of an objective without packing."""
    transform = Packing(m)
    return objectives.Objective((), {}, (transform,) if m > 1 else ())


def validate(config) -> None:
    """--packing: m >= 1, unconditional models, a batch (per device) of whole groups of m; `ConfigError` naming
    the flag."""
    m = config.packing
    checks = [
        (m >= 1, f"--packing must be an integer >= 1 (1: no packing), got {m}"),
        (m == 1 or not config.conditional, f"--packing={m} applies to unconditional models, not --conditional "
                                           f"(PacGAN packs unlabelled samples)"),
        (m == 1 or not config.zcr_d_weight, f"--zcr_d_weight={config.zcr_d_weight} needs --packing=1: zCR's D term "
                                            f"runs D on single generated samples, not packed ones"),
    ]
    shards = config.mesh_data or 1
    checks.append((m <= 1 or config.batch_size % (m * shards) == 0,  # m = 1: the mesh check names the batch
                   f"--batch_size={config.batch_size} is not a multiple of --packing={m}"
                   + (f" times --mesh_data={shards}" if shards > 1 else "")
                   + f": D packs each device's batch into groups of {m} samples"))
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
