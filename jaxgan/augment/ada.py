"""ADA: adaptive discriminator augmentation (Karras et al. 2020, "Training Generative Adversarial Networks with
Limited Data"), the pixel blitting, geometric and color groups of its ``bgc`` pipeline.

Images are NHWC in [-1, 1]. Each operation is applied to each example independently with probability ``p``
(the rotations with ``1 - sqrt(1 - p)`` each, as in the reference, so that some rotation happens with
probability ``p``); its parameters are drawn as in NVlabs/stylegan2-ada-pytorch (training/augment.py, ``bgc``
with every strength 1):

* pixel blitting: x-flip (i in {0, 1}), rotation by i * 90 degrees (i in {0..3}), integer translation
  ``round(U(-0.125, 0.125) * size)`` pixels;
* geometric: isotropic scale ``2^N(0, 0.2^2)``, rotation ``U(-pi, pi)`` before and after an anisotropic scale
  ``(2^N(0, 0.2^2), its inverse)``, fractional translation ``N(0, 0.125^2) * size``;
* color: brightness ``+N(0, 0.2^2)``, contrast ``x 2^N(0, 0.5^2)``, luma flip, hue rotation ``U(-pi, pi)``
  about the luma axis, saturation ``x 2^N(0, 1)`` off the luma axis (one 4x4 matrix; grayscale images use the
  mean of its RGB rows, as the reference).

The spatial operations compose into one inverse affine matrix ``G_inv`` [B, 3, 3] acting on pixel coordinates
centred on the image (x: column, y: row): output pixel (x, y) reads the input at ``G_inv @ (x, y, 1)``.
Simplification against the reference: that read is a bilinear interpolation of the input extended by reflection
(numpy's ``reflect``), where the reference upsamples 2x with a wavelet filter (symm6), resamples bilinearly and
downsamples again, which suppresses aliasing under rotation and scaling (and costs 4x the pixels). Pixel
blitting alone (integer coordinates) is an exact permutation of pixels here (in the reference, up to the filters'
round trip). The reference's other groups (image-space filtering, additive noise, cutout) are not implemented;
its p update clips at 0 only, here p stays in [0, 1].

`ADA` is the `jaxgan.objectives.InputTransform`: ``p`` lives in ``GANState.transforms["ada"]`` with the running
sum of ``E[sign(D(real))]``; every ``interval`` steps ``r_t`` = its mean and
``p <- clip(p + sign(r_t - target) * batch_size * interval / (kimg * 1000), 0, 1)``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping

import jax
import jax.numpy as jnp

from jaxgan.objectives import TransformStats

# The reference's ``bgc`` strengths (augment.py defaults).
XINT_MAX = 0.125
SCALE_STD = 0.2
ROTATE_MAX = 1.0
ANISO_STD = 0.2
XFRAC_STD = 0.125
BRIGHTNESS_STD = 0.2
CONTRAST_STD = 0.5
HUE_MAX = 1.0
SATURATION_STD = 1.0
_UNIFORMS, _NORMALS = 21, 7  # the draws of `draws`: a value and a gate per operation, as the reference


def draws(key: jax.Array, batch: int, p) -> dict[str, jax.Array]:
    """Every operation's parameters [B] (translations [B, 2]), set to the identity value where the example
    skips it (probability ``1 - p``; the rotations ``sqrt(1 - p)`` each)."""
    p = jnp.asarray(p, jnp.float32)
    p_rot = 1 - jnp.sqrt(jnp.clip(1 - p, 0, 1))
    k_uniform, k_normal = jax.random.split(key)
    # one draw of every uniform and every normal (a small program: few random-bit generators to compile)
    uniforms = iter(jax.random.uniform(k_uniform, (_UNIFORMS, batch)))
    normals = iter(jax.random.normal(k_normal, (_NORMALS, batch)))
    uniform = lambda: next(uniforms)  # noqa: E731
    normal = lambda: next(normals)  # noqa: E731
    pair = lambda draw: jnp.stack([draw(), draw()], -1)  # noqa: E731  [B, 2]

    def gate(value, identity, prob=p):
        on = uniform() < prob
        return jnp.where(on[:, None] if value.ndim == 2 else on, value, identity)

    d = {}
    d["xflip"] = gate(jnp.floor(uniform() * 2).astype(jnp.int32), 0)
    d["rotate90"] = gate(jnp.floor(uniform() * 4).astype(jnp.int32), 0)
    d["xint"] = gate((pair(uniform) * 2 - 1) * XINT_MAX, 0.0)
    d["scale"] = gate(jnp.exp2(normal() * SCALE_STD), 1.0)
    d["rotate_pre"] = gate((uniform() * 2 - 1) * math.pi * ROTATE_MAX, 0.0, p_rot)
    d["aniso"] = gate(jnp.exp2(normal() * ANISO_STD), 1.0)
    d["rotate_post"] = gate((uniform() * 2 - 1) * math.pi * ROTATE_MAX, 0.0, p_rot)
    d["xfrac"] = gate(pair(normal) * XFRAC_STD, 0.0)
    d["brightness"] = gate(normal() * BRIGHTNESS_STD, 0.0)
    d["contrast"] = gate(jnp.exp2(normal() * CONTRAST_STD), 1.0)
    d["lumaflip"] = gate(jnp.floor(uniform() * 2).astype(jnp.int32), 0)
    d["hue"] = gate((uniform() * 2 - 1) * math.pi * HUE_MAX, 0.0)
    d["saturation"] = gate(jnp.exp2(normal() * SATURATION_STD), 1.0)
    return d


def _matrix(rows) -> jax.Array:
    """[[a, b, ...], ...] of [B] (or scalar) entries -> [B, n, n]."""
    return jnp.stack([jnp.stack(jnp.broadcast_arrays(*row), -1) for row in rows], -2)


def _translate_inv(tx, ty):
    one, zero = jnp.ones_like(tx), jnp.zeros_like(tx)
    return _matrix([[one, zero, -tx], [zero, one, -ty], [zero, zero, one]])


def _scale_inv(sx, sy):
    zero = jnp.zeros_like(sx)
    return _matrix([[1 / sx, zero, zero], [zero, 1 / sy, zero], [zero, zero, zero + 1]])


def _rotate_inv(c, s):
    """The inverse of the rotation with cosine ``c`` and sine ``s``."""
    zero = jnp.zeros_like(c)
    return _matrix([[c, s, zero], [-s, c, zero], [zero, zero, zero + 1]])


def geometric_matrix(d: Mapping[str, jax.Array], height: int, width: int) -> jax.Array:
    """``G_inv`` [B, 3, 3] of the draws ``d``: the reference's product, in its order, of the inverse transforms
    x-flip, rotate90, integer translation, scale, rotation, anisotropic scale, rotation, fractional translation."""
    i = d["xflip"].astype(jnp.float32)
    g = _scale_inv(1 - 2 * i, jnp.ones_like(i))
    k = d["rotate90"]  # exact cosines and sines of k * 90 degrees (the rotation by -k*90 is the inverse)
    cos90, sin90 = jnp.array([1., 0., -1., 0.])[k], jnp.array([0., 1., 0., -1.])[k]
    g = g @ _rotate_inv(cos90, -sin90)
    g = g @ _translate_inv(jnp.round(d["xint"][:, 0] * width), jnp.round(d["xint"][:, 1] * height))
    g = g @ _scale_inv(d["scale"], d["scale"])
    g = g @ _rotate_inv(jnp.cos(-d["rotate_pre"]), jnp.sin(-d["rotate_pre"]))
    g = g @ _scale_inv(d["aniso"], 1 / d["aniso"])
    g = g @ _rotate_inv(jnp.cos(-d["rotate_post"]), jnp.sin(-d["rotate_post"]))
    return g @ _translate_inv(d["xfrac"][:, 0] * width, d["xfrac"][:, 1] * height)


def _reflect(idx: jax.Array, n: int) -> jax.Array:
    """Integer indices folded into [0, n) by reflection without repeating the edge (numpy's ``reflect``)."""
    if n == 1:
        return jnp.zeros_like(idx)
    period = 2 * n - 2
    idx = jnp.mod(idx, period)
    return jnp.where(idx >= n, period - idx, idx)


def resample(x: jax.Array, g_inv: jax.Array) -> jax.Array:
    """Output pixel (x, y) (centred coordinates) of each image [B, H, W, C] reads ``x`` at ``g_inv @ (x, y, 1)``,
    bilinearly, the image extended by reflection."""
    b, h, w = x.shape[:3]
    cy, cx = (h - 1) / 2, (w - 1) / 2
    ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) - cy, jnp.arange(w, dtype=jnp.float32) - cx,
                          indexing="ij")
    coords = jnp.stack([xs, ys, jnp.ones_like(xs)], -1)  # [H, W, 3]
    src = jnp.einsum("bij,hwj->bhwi", g_inv, coords)  # [B, H, W, 3]
    col, row = src[..., 0] + cx, src[..., 1] + cy
    c0, r0 = jnp.floor(col), jnp.floor(row)
    fc, fr = (col - c0)[..., None].astype(x.dtype), (row - r0)[..., None].astype(x.dtype)
    c0, r0 = c0.astype(jnp.int32), r0.astype(jnp.int32)
    bi = jnp.arange(b)[:, None, None]

    def at(r, c):
        return x[bi, _reflect(r, h), _reflect(c, w)]
    top = at(r0, c0) * (1 - fc) + at(r0, c0 + 1) * fc
    bottom = at(r0 + 1, c0) * (1 - fc) + at(r0 + 1, c0 + 1) * fc
    return top * (1 - fr) + bottom * fr


def color_matrix(d: Mapping[str, jax.Array]) -> jax.Array:
    """``C`` [B, 4, 4] acting on (r, g, b, 1): the reference's brightness, contrast, luma flip, hue, saturation."""
    b = d["brightness"]
    one, zero = jnp.ones_like(b), jnp.zeros_like(b)
    c = _matrix([[one, zero, zero, b], [zero, one, zero, b], [zero, zero, one, b], [zero, zero, zero, one]])
    s = d["contrast"]
    c = _matrix([[s, zero, zero, zero], [zero, s, zero, zero], [zero, zero, s, zero], [zero, zero, zero, one]]) @ c
    v = jnp.array([1., 1., 1., 0.]) / math.sqrt(3)  # the luma axis
    vv = jnp.outer(v, v)
    eye = jnp.eye(4)
    c = (eye - 2 * vv * d["lumaflip"].astype(jnp.float32)[:, None, None]) @ c
    c = _rotate3d(v, d["hue"]) @ c
    return (vv + (eye - vv) * d["saturation"][:, None, None]) @ c


def _rotate3d(v, theta):
    """Rotation by ``theta`` [B] about the unit axis ``v[:3]`` (Rodrigues), as a [B, 4, 4] homogeneous matrix."""
    vx, vy, vz = v[0], v[1], v[2]
    s, c = jnp.sin(theta), jnp.cos(theta)
    cc, zero, one = 1 - c, jnp.zeros_like(theta), jnp.ones_like(theta)
    return _matrix([[vx * vx * cc + c, vx * vy * cc - vz * s, vx * vz * cc + vy * s, zero],
                    [vy * vx * cc + vz * s, vy * vy * cc + c, vy * vz * cc - vx * s, zero],
                    [vz * vx * cc - vy * s, vz * vy * cc + vx * s, vz * vz * cc + c, zero],
                    [zero, zero, zero, one]])


def apply_color(x: jax.Array, c: jax.Array) -> jax.Array:
    """``C`` [B, 4, 4] on the pixels of ``x`` [B, H, W, C] (C = 3: RGB; C = 1: the mean of C's RGB rows)."""
    c = c.astype(x.dtype)
    if x.shape[-1] == 3:
        return jnp.einsum("bij,bhwj->bhwi", c[:, :3, :3], x) + c[:, None, None, :3, 3]
    if x.shape[-1] != 1:
        raise ValueError(f"ADA's color group takes 1 or 3 channels, got {x.shape[-1]}")
    gain = jnp.sum(c[:, :3, :3], axis=(1, 2)) / 3  # the sum over the mean row, summed first (exact at identity)
    return x * gain[:, None, None, None] + jnp.mean(c[:, :3, 3], axis=1)[:, None, None, None]


def augment(key: jax.Array, x: jax.Array, p) -> jax.Array:
    """The blit, geometric and color groups on ``x`` [B, H, W, C], each operation with probability ``p``
    (a scalar, possibly traced). With ``p = 0`` every matrix is the identity and ``x`` comes back exactly."""
    d = draws(key, x.shape[0], p)
    x = resample(x, geometric_matrix(d, x.shape[1], x.shape[2]))
    return apply_color(x, color_matrix(d))


@dataclasses.dataclass(frozen=True)
class ADA:
    """Adaptive augmentation of D's inputs. State ``{"p", "signs", "count", "rt"}``: the probability, the sum of
    ``E[sign(D(real))]`` over the steps since the last adjustment and their count, the last ``r_t``.

    ``batch_size``: the global batch per train step (images D sees per step, for the adjustment speed);
    ``kimg``: thousands of images over which p can go from 0 to 1. The target is the run-time hparam
    ``ada_target``. The heuristic reads the sign of D's raw output, as the reference (a logit: > 0 is "real").
    """
    batch_size: int
    target: float = 0.6
    interval: int = 4
    kimg: float = 500.0
    initial_p: float = 0.0
    name: str = "ada"

    @property
    def hparams(self) -> Mapping[str, float]:
        return {"ada_target": float(self.target)}

    def init(self):
        return {"p": jnp.float32(self.initial_p), "signs": jnp.float32(0), "count": jnp.int32(0),
                "rt": jnp.float32(0)}

    def apply(self, state, key, x, step, hparams):
        return augment(key, x, state["p"])

    def update(self, state, stats: TransformStats):
        signs = state["signs"] + stats.mean(jnp.sign(stats.real_outputs.astype(jnp.float32)))
        count = state["count"] + 1
        due = count >= self.interval
        rt = signs / self.interval
        speed = self.batch_size * self.interval / (self.kimg * 1000)
        adjusted = jnp.clip(state["p"] + jnp.sign(rt - stats.hparams["ada_target"]) * speed, 0, 1)
        new = {"p": jnp.where(due, adjusted, state["p"]).astype(jnp.float32),
               "signs": jnp.where(due, 0.0, signs).astype(jnp.float32),
               "count": jnp.where(due, 0, count).astype(jnp.int32),
               "rt": jnp.where(due, rt, state["rt"]).astype(jnp.float32)}
        return new, {"ada_p": new["p"], "ada_rt": new["rt"]}
