"""The FID Inception-v3 network in Flax linen (NHWC).

This is the network pytorch-fid uses (``use_fid_inception=True``): torchvision's Inception-v3 with
``num_classes=1008``, ``aux_logits=False``, and the blocks patched to behave like TensorFlow's
2015-12-05 Inception graph that the original FID code (TTUR) used:

* ``Mixed_5b/5c/5d`` (``FIDInceptionA``), ``Mixed_6b..6e`` (``FIDInceptionC``) and ``Mixed_7b``
  (``FIDInceptionE_1``): the pooling branch is a 3x3/stride-1 average pool with padding 1 that does
  NOT count the padded zeros (``count_include_pad=False``, TensorFlow's ``SAME`` average pool).
* ``Mixed_7c`` (``FIDInceptionE_2``): the pooling branch is a 3x3/stride-1 *max* pool with padding 1.
* ``Mixed_6a`` and ``Mixed_7a`` are torchvision's ``InceptionB`` and ``InceptionD`` unchanged.

Every convolution is torchvision's ``BasicConv2d``: conv without bias, BatchNorm with ``eps=0.001``
(always in inference mode: running statistics), ReLU. Submodules carry the PyTorch attribute names
(``Conv2d_1a_3x3/conv``, ``Mixed_5b/branch1x1/bn``, ``fc``, ...) so that a PyTorch state-dict name maps
to a Flax path by replacing dots with slashes (see ``jaxgan.metrics.features``).

Variables: ``{'params': {... conv/kernel [kh, kw, in, out], bn/scale [C], bn/bias [C], fc/kernel
[2048, 1008], fc/bias [1008]}, 'batch_stats': {... bn/mean [C], bn/var [C]}}``.

Input: ``[N, H, W, 3]`` float32 in [-1, 1], normally 299x299 (``jaxgan.metrics.features`` resizes
first, exactly as pytorch-fid does); the convolutional part accepts any size >= 75x75.
Output: ``(pool3 [N, 2048], logits [N, 1008])``; pool3 is the global average of ``Mixed_7c``
(pytorch-fid's 2048-d FID features), logits feed the Inception Score (dropout is the identity in
inference).
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

BN_EPSILON = 1e-3
NUM_CLASSES = 1008
POOL3_DIM = 2048

# Full float32 convolutions/matmuls: on GPUs the default precision may use TF32, which moves FID.
DEFAULT_PRECISION = lax.Precision.HIGHEST


class BasicConv2d(nn.Module):
    """torchvision ``BasicConv2d``: conv (no bias) -> BatchNorm(eps=1e-3, running stats) -> ReLU.

    Attributes: ``features`` output channels; ``kernel_size`` (kh, kw); ``strides`` (sh, sw);
    ``padding`` (ph, pw) symmetric zero padding, as PyTorch's ``padding=(ph, pw)``.
    Input ``[N, H, W, C]`` -> output ``[N, H', W', features]``.
    """

    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    precision: Any = DEFAULT_PRECISION

    @nn.compact
    def __call__(self, x):
        ph, pw = self.padding
        x = nn.Conv(
            self.features,
            tuple(self.kernel_size),
            strides=tuple(self.strides),
            padding=((ph, ph), (pw, pw)),
            use_bias=False,
            precision=self.precision,
            name="conv",
        )(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPSILON, name="bn")(x)
        return nn.relu(x)


def _avg_pool_3x3_same(x):
    """3x3 stride-1 average pool, padding 1, padded zeros excluded from the count (TF 'SAME')."""
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_same(x):
    """3x3 stride-1 max pool, padding 1 (padding never wins: it is -inf)."""
    return nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))


def _max_pool_3x3_s2(x):
    """3x3 stride-2 max pool, no padding (PyTorch ``MaxPool2d(3, stride=2)``)."""
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class FIDInceptionA(nn.Module):
    """``Mixed_5b/5c/5d``: [N, H, W, C] -> [N, H, W, 224 + pool_features]."""

    pool_features: int
    precision: Any = DEFAULT_PRECISION

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(BasicConv2d, precision=self.precision)
        b1 = conv(64, (1, 1), name="branch1x1")(x)
        b5 = conv(48, (1, 1), name="branch5x5_1")(x)
        b5 = conv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
        b3 = conv(64, (1, 1), name="branch3x3dbl_1")(x)
        b3 = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
        bp = conv(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_3x3_same(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """``Mixed_6a`` (grid reduction): [N, H, W, C] -> [N, (H-3)//2+1, (W-3)//2+1, 480 + C]."""

    precision: Any = DEFAULT_PRECISION

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(BasicConv2d, precision=self.precision)
        b3 = conv(384, (3, 3), strides=(2, 2), name="branch3x3")(x)
        bd = conv(64, (1, 1), name="branch3x3dbl_1")(x)
        bd = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = conv(96, (3, 3), strides=(2, 2), name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class FIDInceptionC(nn.Module):
    """``Mixed_6b..6e`` (factorised 7x7): [N, H, W, C] -> [N, H, W, 768]."""

    channels_7x7: int
    precision: Any = DEFAULT_PRECISION

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(BasicConv2d, precision=self.precision)
        c7 = self.channels_7x7
        b1 = conv(192, (1, 1), name="branch1x1")(x)
        b7 = conv(c7, (1, 1), name="branch7x7_1")(x)
        b7 = conv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = conv(c7, (1, 1), name="branch7x7dbl_1")(x)
        bd = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = conv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = conv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = conv(192, (1, 1), name="branch_pool")(_avg_pool_3x3_same(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    """``Mixed_7a`` (grid reduction): [N, H, W, C] -> [N, (H-3)//2+1, (W-3)//2+1, 512 + C]."""

    precision: Any = DEFAULT_PRECISION

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(BasicConv2d, precision=self.precision)
        b3 = conv(192, (1, 1), name="branch3x3_1")(x)
        b3 = conv(320, (3, 3), strides=(2, 2), name="branch3x3_2")(b3)
        b7 = conv(192, (1, 1), name="branch7x7x3_1")(x)
        b7 = conv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = conv(192, (3, 3), strides=(2, 2), name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class FIDInceptionE(nn.Module):
    """``Mixed_7b`` (``pool='avg'``, FIDInceptionE_1) / ``Mixed_7c`` (``pool='max'``, FIDInceptionE_2).

    [N, H, W, C] -> [N, H, W, 2048].
    """

    pool: str = "avg"
    precision: Any = DEFAULT_PRECISION

    @nn.compact
    def __call__(self, x):
        if self.pool not in ("avg", "max"):
            raise ValueError(f"FIDInceptionE pool={self.pool!r}; accepted: 'avg' (Mixed_7b), 'max' (Mixed_7c)")
        conv = functools.partial(BasicConv2d, precision=self.precision)
        b1 = conv(320, (1, 1), name="branch1x1")(x)
        b3 = conv(384, (1, 1), name="branch3x3_1")(x)
        b3 = jnp.concatenate(
            [
                conv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                conv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3),
            ],
            axis=-1,
        )
        bd = conv(448, (1, 1), name="branch3x3dbl_1")(x)
        bd = conv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate(
            [
                conv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                conv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd),
            ],
            axis=-1,
        )
        pooled = _avg_pool_3x3_same(x) if self.pool == "avg" else _max_pool_3x3_same(x)
        bp = conv(192, (1, 1), name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
    """pytorch-fid's FID Inception-v3, NHWC.

    ``__call__(x)``: ``x`` [N, H, W, 3] float32 in [-1, 1] (299x299 for the standard protocol; at least
    75x75) -> ``(pool3 [N, 2048], logits [N, 1008])``. Always inference mode (BatchNorm running
    statistics, no dropout); apply with ``variables = {'params': ..., 'batch_stats': ...}``.
    """

    num_classes: int = NUM_CLASSES
    precision: Any = DEFAULT_PRECISION

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(BasicConv2d, precision=self.precision)
        p = self.precision
        x = conv(32, (3, 3), strides=(2, 2), name="Conv2d_1a_3x3")(x)  # 149x149x32
        x = conv(32, (3, 3), name="Conv2d_2a_3x3")(x)  # 147x147x32
        x = conv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)  # 147x147x64
        x = _max_pool_3x3_s2(x)  # 73x73x64
        x = conv(80, (1, 1), name="Conv2d_3b_1x1")(x)  # 73x73x80
        x = conv(192, (3, 3), name="Conv2d_4a_3x3")(x)  # 71x71x192
        x = _max_pool_3x3_s2(x)  # 35x35x192
        x = FIDInceptionA(32, precision=p, name="Mixed_5b")(x)  # 35x35x256
        x = FIDInceptionA(64, precision=p, name="Mixed_5c")(x)  # 35x35x288
        x = FIDInceptionA(64, precision=p, name="Mixed_5d")(x)  # 35x35x288
        x = InceptionB(precision=p, name="Mixed_6a")(x)  # 17x17x768
        x = FIDInceptionC(128, precision=p, name="Mixed_6b")(x)
        x = FIDInceptionC(160, precision=p, name="Mixed_6c")(x)
        x = FIDInceptionC(160, precision=p, name="Mixed_6d")(x)
        x = FIDInceptionC(192, precision=p, name="Mixed_6e")(x)  # 17x17x768
        x = InceptionD(precision=p, name="Mixed_7a")(x)  # 8x8x1280
        x = FIDInceptionE("avg", precision=p, name="Mixed_7b")(x)  # 8x8x2048
        x = FIDInceptionE("max", precision=p, name="Mixed_7c")(x)  # 8x8x2048
        pool3 = jnp.mean(x, axis=(1, 2))  # [N, 2048]
        logits = nn.Dense(self.num_classes, precision=p, name="fc")(pool3)  # [N, 1008]
        return pool3, logits
