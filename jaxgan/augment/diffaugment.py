"""DiffAugment (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training").

Images are NHWC float arrays in [-1, 1]. Every operation draws its own random parameters per example from
``key`` (a ``*_draws`` function, exposed for tests and for consistency regularization), is a pure function of
them (jit- and vmap-friendly: no Python control flow on traced values) and is differentiable in ``x``, so G
learns through the augmentation of its samples. The operations follow the authors' reference
(mit-han-lab/data-efficient-gans, DiffAugment_pytorch.py):

* ``color``: brightness ``x + U(-0.5, 0.5)``, then saturation ``(x - m_c) * U(0, 2) + m_c`` with ``m_c`` the
  per-pixel mean over channels (a no-op on grayscale), then contrast ``(x - m) * U(0.5, 1.5) + m`` with ``m``
  the per-image mean.
* ``translation``: an integer shift of up to ``int(H * ratio + 0.5)`` rows and ``int(W * ratio + 0.5)``
  columns each way (uniform), zeros shifted in: ``out[i, j] = x[i + tx, j + ty]`` where that is inside.
* ``cutout``: a square of ``int(H * ratio + 0.5)`` x ``int(W * ratio + 0.5)`` pixels zeroed, its centre
  uniform over the image as in the reference (clipped at the borders).
* ``flip`` (not in the paper's policies): each image mirrored left-right with probability 1/2.

``augment(key, x, policy)`` applies the named operations in the policy's order, each with its own key.
`DiffAugment` is the stateless `jaxgan.objectives.InputTransform` of ``--augment=diffaugment:...``.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import jax
import jax.numpy as jnp


def color_draws(key: jax.Array, batch: int, dtype=jnp.float32) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(brightness shift U(-0.5, 0.5), saturation factor U(0, 2), contrast factor U(0.5, 1.5)), each [B]."""
    kb, ks, kc = jax.random.split(key, 3)
    return (jax.random.uniform(kb, (batch,), dtype) - 0.5, jax.random.uniform(ks, (batch,), dtype) * 2,
            jax.random.uniform(kc, (batch,), dtype) + 0.5)


def apply_color(x: jax.Array, brightness: jax.Array, saturation: jax.Array, contrast: jax.Array) -> jax.Array:
    """Brightness, saturation and contrast of each image [B, H, W, C] by its own factors ([B] each)."""
    b, s, c = (v.astype(x.dtype)[:, None, None, None] for v in (brightness, saturation, contrast))
    x = x + b
    mean = jnp.mean(x, axis=-1, keepdims=True)
    x = (x - mean) * s + mean
    mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
    return (x - mean) * c + mean


def color(key: jax.Array, x: jax.Array) -> jax.Array:
    """Random brightness, saturation and contrast of each image of ``x`` [B, H, W, C]."""
    return apply_color(x, *color_draws(key, x.shape[0], x.dtype))


def _extent(size: int, ratio: float) -> int:
    return int(size * ratio + 0.5)


def translation_draws(key: jax.Array, shape: tuple[int, ...], ratio: float = 0.125) -> tuple[jax.Array, jax.Array]:
    """Integer shifts (rows tx, columns ty) [B] int32, uniform in [-int(H*ratio+0.5), int(H*ratio+0.5)] (W for ty)."""
    b, h, w = shape[:3]
    kx, ky = jax.random.split(key)
    sx, sy = _extent(h, ratio), _extent(w, ratio)
    return jax.random.randint(kx, (b,), -sx, sx + 1), jax.random.randint(ky, (b,), -sy, sy + 1)


def apply_translation(x: jax.Array, tx: jax.Array, ty: jax.Array) -> jax.Array:
    """``out[b, i, j] = x[b, i + tx[b], j + ty[b]]`` inside the image, 0 outside (the reference's gather from a
    zero-padded image with clipped indices)."""
    b, h, w = x.shape[:3]
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    rows = jnp.clip(jnp.arange(h)[None, :] + tx[:, None] + 1, 0, h + 1)  # [B, H]
    cols = jnp.clip(jnp.arange(w)[None, :] + ty[:, None] + 1, 0, w + 1)  # [B, W]
    return padded[jnp.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


def translation(key: jax.Array, x: jax.Array, ratio: float = 0.125) -> jax.Array:
    """Each image of ``x`` [B, H, W, C] shifted by a random integer offset of up to ``ratio`` of its size."""
    return apply_translation(x, *translation_draws(key, x.shape, ratio))


def cutout_draws(key: jax.Array, shape: tuple[int, ...], ratio: float = 0.5) -> tuple[jax.Array, jax.Array]:
    """Centres (row, column) [B] int32 of the cut squares, as the reference draws them."""
    b, h, w = shape[:3]
    kx, ky = jax.random.split(key)
    ch, cw = _extent(h, ratio), _extent(w, ratio)
    return (jax.random.randint(kx, (b,), 0, h + (1 - ch % 2)), jax.random.randint(ky, (b,), 0, w + (1 - cw % 2)))


def apply_cutout(x: jax.Array, ox: jax.Array, oy: jax.Array, ratio: float = 0.5) -> jax.Array:
    """Zeroes rows ``[ox - ch//2, ox - ch//2 + ch)`` x columns ``[oy - cw//2, oy - cw//2 + cw)`` of each image
    (within the image), ``ch, cw = int(H*ratio + 0.5), int(W*ratio + 0.5)``."""
    h, w = x.shape[1:3]
    ch, cw = _extent(h, ratio), _extent(w, ratio)

    def inside(offset, n, size):  # [B, n]: index within the cut window
        start = offset[:, None] - size // 2
        idx = jnp.arange(n)[None, :]
        return (idx >= start) & (idx < start + size)
    cut = inside(ox, h, ch)[:, :, None] & inside(oy, w, cw)[:, None, :]
    return x * jnp.where(cut, 0, 1).astype(x.dtype)[..., None]


def cutout(key: jax.Array, x: jax.Array, ratio: float = 0.5) -> jax.Array:
    """Each image of ``x`` [B, H, W, C] with a random square of ``ratio`` of its size set to 0."""
    return apply_cutout(x, *cutout_draws(key, x.shape, ratio), ratio=ratio)


def flip_draws(key: jax.Array, batch: int) -> jax.Array:
    """Whether each image is mirrored: [B] bool, each True with probability 1/2."""
    return jax.random.bernoulli(key, 0.5, (batch,))


def apply_flip(x: jax.Array, flipped: jax.Array) -> jax.Array:
    return jnp.where(flipped[:, None, None, None], x[:, :, ::-1], x)


def flip(key: jax.Array, x: jax.Array) -> jax.Array:
    """Each image of ``x`` [B, H, W, C] mirrored left-right with probability 1/2."""
    return apply_flip(x, flip_draws(key, x.shape[0]))


OPS: Mapping[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "color": color,
    "translation": translation,
    "cutout": cutout,
    "flip": flip,
}


def augment(key: jax.Array, x: jax.Array, policy: tuple[str, ...]) -> jax.Array:
    """The operations named in ``policy`` (keys of `OPS`) applied to ``x`` [B, H, W, C] in order, each with its
    own split of ``key``."""
    unknown = [name for name in policy if name not in OPS]
    if unknown:
        raise ValueError(f"unknown DiffAugment operations {unknown}; accepted: {sorted(OPS)}")
    for name, k in zip(policy, jax.random.split(key, max(len(policy), 1))):
        x = OPS[name](k, x)
    return x


@dataclasses.dataclass(frozen=True)
class DiffAugment:
    """DiffAugment as an input transform of D: ``augment(key, x, policy)`` on real and fake alike (each batch
    with its own key), and on G's fakes in G's update. Stateless."""
    policy: tuple[str, ...] = ("color", "translation", "cutout")
    name: str = "diffaugment"

    @property
    def hparams(self) -> Mapping[str, float]:
        return {}

    def init(self):
        return {}

    def apply(self, state, key, x, step, hparams):
        return augment(key, x, self.policy)

    def update(self, state, stats):
        return state, {}
