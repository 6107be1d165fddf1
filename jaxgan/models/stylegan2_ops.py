"""StyleGAN2's building blocks (Karras et al. 2020), NHWC: FIR resampling, equalized-lr layers, modulated conv.

Conventions (those of the StyleGAN2 / StyleGAN2-ADA papers' networks, written for JAX):

- ``upfirdn2d(x, f, up, down, padding, gain)``: upsample by inserting ``up - 1`` zeros after every sample, pad
  (negative pads crop), convolve with the 2-D FIR filter ``f`` (a true convolution: ``f`` flipped), keep every
  ``down``-th sample; the filter is scaled by ``gain``. ``setup_filter([1, 3, 3, 1])`` is the separable
  outer product normalised to sum 1.
- Equalized learning rate: weights are stored N(0, 1) (divided by the lr multiplier) and scaled at run time by
  ``lr_multiplier / sqrt(fan_in)``; biases by ``lr_multiplier``.
- Leaky ReLU layers (slope 0.2) multiply by sqrt(2) after the activation (variance-preserving gain).
- Convolutions are correlations (``lax.conv``) in every layer, including the upsampling ones (the reference
  flips the kernel there; equivalent under the symmetric N(0, 1) initialisation).
"""
from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgan.models import layers

LRELU_GAIN = math.sqrt(2.0)
FIR = (1, 3, 3, 1)


def setup_filter(taps: Sequence[float] = FIR, separable: bool = True) -> np.ndarray:
    """The filter of ``taps`` normalised so that its 2-D form ``outer(f, f)`` sums to 1: [k] (``separable``, the
    form the networks use) or the 2-D [k, k]; float32."""
    f = np.asarray(taps, np.float64)
    f = f / f.sum()
    return (f if separable else np.outer(f, f)).astype(np.float32)


def _upfirdn1d(x, f, axis: int, up: int, down: int, p0: int, p1: int):
    """`upfirdn2d` along one axis with 1-D taps ``f``, by shifts and adds (no convolution: cheap to compile and
    to differentiate twice)."""
    n = x.shape[axis]
    if up > 1:
        zeros = jnp.zeros_like(x)
        x = jnp.stack([x] + [zeros] * (up - 1), axis=axis + 1)
        x = x.reshape(x.shape[:axis] + (n * up,) + x.shape[axis + 2:])
    pads = [(0, 0, 0)] * x.ndim
    pads[axis] = (p0, p1, 0)
    x = jax.lax.pad(x, jnp.zeros((), x.dtype), pads)
    k = len(f)
    length = x.shape[axis] - k + 1
    taps = np.asarray(f, np.float64)[::-1]  # a true convolution
    y = sum(float(t) * jax.lax.slice_in_dim(x, j, j + length, axis=axis) for j, t in enumerate(taps) if t != 0)
    return jax.lax.slice_in_dim(y, 0, length, stride=down, axis=axis) if down > 1 else y


def upfirdn2d(x: jax.Array, f, *, up: int = 1, down: int = 1, padding=(0, 0, 0, 0), gain: float = 1.0):
    """x [B, H, W, C] -> upsample (zeros), pad ``(x0, x1, y0, y1)``, FIR ``f`` per channel, downsample.

    ``f``: 1-D taps [k] (the separable filter ``outer(f, f)``: shifts and adds) or a 2-D filter [k, k] (a
    depthwise convolution). Output size per axis: ``(H * up + p0 + p1 - k) // down + 1``.
    """
    px0, px1, py0, py1 = padding
    if np.ndim(f) == 1:
        f = np.asarray(f, np.float64) * gain
        x = _upfirdn1d(x, f, 1, up, down, py0, py1)
        return _upfirdn1d(x, np.asarray(f) / gain, 2, up, down, px0, px1)
    c = x.shape[-1]
    f = jnp.asarray(f, x.dtype)[::-1, ::-1] * gain  # true convolution = correlation with the flipped filter
    zero = jnp.zeros((), x.dtype)
    x = jax.lax.pad(x, zero, ((0, 0, 0), (py0, py1 + up - 1, up - 1), (px0, px1 + up - 1, up - 1), (0, 0, 0)))
    kernel = jnp.tile(f[:, :, None, None], (1, 1, 1, c))  # HWIO, depthwise
    return jax.lax.conv_general_dilated(x, kernel, (down, down), "VALID", feature_group_count=c,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def upsample2d(x: jax.Array, f=None) -> jax.Array:
    """2x upsampling with the FIR filter (gain 4 keeps the mean): [B, H, W, C] -> [B, 2H, 2W, C]."""
    f = setup_filter() if f is None else f
    k = f.shape[0]
    p0, p1 = (k + 1) // 2, (k - 2) // 2
    return upfirdn2d(x, f, up=2, padding=(p0, p1, p0, p1), gain=4.0)


def downsample2d(x: jax.Array, f=None) -> jax.Array:
    """2x downsampling with the FIR filter: [B, H, W, C] -> [B, H/2, W/2, C]."""
    f = setup_filter() if f is None else f
    k = f.shape[0]
    p0, p1 = (k - 1) // 2, (k - 2) // 2
    return upfirdn2d(x, f, down=2, padding=(p0, p1, p0, p1))


def conv2d(x, w, *, up: int = 1, down: int = 1, f=None):
    """Correlation of x [B, H, W, I] with w [k, k, I, O] at 'same' size, resampled by ``up`` or ``down`` = 2 with
    the FIR filter (StyleGAN2's conv2d_resample): up: strided transposed conv then the filter (gain 4); down:
    the filter then a stride-2 conv; a 1x1 ``down`` filters and subsamples first."""
    k = w.shape[0]
    f = setup_filter() if f is None else f
    if up > 1:
        x = layers.conv_transpose(x, w, (2, 2), ((k - 1, k - 1),) * 2)  # [B, 2H + k - 2, ...]
        p = (f.shape[0] - k + 1) // 2  # [1,3,3,1] and k=3: 1 on each side -> 2H
        pad = (p + (1 if k % 2 == 0 else 0), p) * 2
        return upfirdn2d(x, f, padding=pad, gain=4.0)
    if down > 1:
        if k == 1:
            return layers.conv(downsample2d(x, f), w)
        p = (f.shape[0] - 2) // 2 + k // 2  # [1,3,3,1] and k=3: 2 on each side
        x = upfirdn2d(x, f, padding=(p, p, p, p))
        return layers.conv(x, w, (2, 2))
    return layers.conv(x, w, (1, 1), ((k // 2, k // 2),) * 2)


def modulated_conv2d(x, weight, styles, *, demodulate: bool = True, up: int = 1, f=None):
    """StyleGAN2's modulated convolution: x [B, H, W, I], weight [k, k, I, O], styles [B, I].

    The per-example kernel is ``weight * styles[b, i]``; with ``demodulate`` each output channel's kernel is
    divided by its L2 norm ``sqrt(sum_{k,k,i} (weight * s)^2 + 1e-8)``. Computed without per-example kernels:
    scale the input by the styles, convolve with the shared weight, scale the output by the demodulation
    coefficients (equal in exact arithmetic; the reference trains with this form too).
    """
    x = x * styles[:, None, None, :].astype(x.dtype)
    y = conv2d(x, weight.astype(x.dtype), up=up, f=f)
    if demodulate:
        norms = jnp.einsum("bi,io->bo", jnp.square(styles), jnp.sum(jnp.square(weight), axis=(0, 1)))
        y = y * jax.lax.rsqrt(norms + 1e-8)[:, None, None, :].astype(y.dtype)
    return y


def minibatch_stddev(x: jax.Array, group_size: int, num_channels: int = 1) -> jax.Array:
    """Appends ``num_channels`` feature maps of the minibatch standard deviation: [B, H, W, C] -> [..., C + F].

    Example b belongs to group ``b % (B // G)`` with ``G = min(group_size, B)`` (B must divide by G); per group
    and channel group the std over its G members (+1e-8 under the root) is averaged over pixels and channels.
    """
    b, h, w, c = x.shape
    g = min(group_size, b)
    if b % g:
        raise ValueError(f"minibatch stddev: batch {b} is not a multiple of the group size {g}")
    nf = num_channels
    y = x.astype(jnp.float32).reshape(g, b // g, h, w, nf, c // nf)
    y = jnp.sqrt(jnp.mean(jnp.square(y - jnp.mean(y, axis=0)), axis=0) + 1e-8)  # [n, H, W, F, c]
    y = jnp.mean(y, axis=(1, 2, 4))  # [n, F]
    y = jnp.tile(y, (g, 1))[:, None, None, :]  # [B, 1, 1, F]
    return jnp.concatenate([x, jnp.broadcast_to(y, (b, h, w, nf)).astype(x.dtype)], axis=-1)


def normalize_2nd_moment(x: jax.Array, eps: float = 1e-8) -> jax.Array:
    """x / sqrt(mean(x^2) + eps) over the last axis (the mapping network's normalised z)."""
    return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)


def lrelu(x, gain: float = LRELU_GAIN):
    """Leaky ReLU (0.2) times ``gain``."""
    return nn.leaky_relu(x, 0.2) * gain


class EqualDense(nn.Module):
    """Equalized-lr dense layer: ``x @ (W * lr / sqrt(in)) + b * lr``, W ~ N(0, 1/lr^2), b = ``bias_init``;
    ``activation`` "lrelu" (times sqrt(2)) or "linear"."""
    features: int
    lr_multiplier: float = 1.0
    bias_init: float = 0.0
    activation: str = "linear"

    @nn.compact
    def __call__(self, x):
        fan_in = x.shape[-1]
        w = self.param("kernel", lambda k, s: jax.random.normal(k, s) / self.lr_multiplier, (fan_in, self.features))
        b = self.param("bias", lambda k, s: jnp.full(s, self.bias_init, jnp.float32), (self.features,))
        y = x @ (w * (self.lr_multiplier / math.sqrt(fan_in))).astype(x.dtype) + (b * self.lr_multiplier).astype(x.dtype)
        return lrelu(y) if self.activation == "lrelu" else y


class EqualConv(nn.Module):
    """Equalized-lr conv (weight ~ N(0, 1) times 1 / sqrt(fan_in)), optional FIR ``up``/``down`` by 2;
    ``activation`` "lrelu" (times sqrt(2) * ``gain``) or "linear" (times ``gain``)."""
    features: int
    kernel_size: int = 3
    up: int = 1
    down: int = 1
    use_bias: bool = True
    activation: str = "lrelu"
    gain: float = 1.0

    @nn.compact
    def __call__(self, x):
        k, cin = self.kernel_size, x.shape[-1]
        w = self.param("kernel", nn.initializers.normal(1.0), (k, k, cin, self.features))
        y = conv2d(x, (w / math.sqrt(cin * k * k)).astype(x.dtype), up=self.up, down=self.down)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(y.dtype)
        return lrelu(y, LRELU_GAIN * self.gain) if self.activation == "lrelu" else y * self.gain


__all__ = ["setup_filter", "upfirdn2d", "upsample2d", "downsample2d", "conv2d", "modulated_conv2d",
           "minibatch_stddev", "normalize_2nd_moment", "lrelu", "EqualDense", "EqualConv", "LRELU_GAIN", "FIR"]
