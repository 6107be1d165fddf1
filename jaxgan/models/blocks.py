"""Building blocks shared by the image GANs: spectral-norm wrapping, SAGAN self-attention,
conditional BatchNorm.

Conventions (the whole ``jaxgan.models`` package follows them):

* Images and feature maps are NHWC float32.
* Every module takes ``train: bool`` as a keyword. ``train=True`` uses batch statistics in BatchNorm
  and updates the running averages and the spectral-norm power-iteration vectors, all of which live
  in the ``'batch_stats'`` collection (apply with ``mutable=['batch_stats']``).
* Spectral normalisation is flax's ``nn.SpectralNorm`` (one power iteration per call, ``u``/``sigma``
  stored in ``'batch_stats'`` under ``<sn module>/<layer name>/kernel/{u,sigma}``; the wrapped layer's
  parameters stay in ``'params'`` under ``<layer name>``, beside the SN module).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgan.models import layers

# BatchNorm defaults used everywhere: flax momentum 0.9 == PyTorch momentum 0.1; PyTorch's epsilon.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def sn_apply(layer: nn.Module, x, *, spectral_norm: bool, train: bool, name: str | None = None):
    """Applies ``layer`` to ``x``, spectrally normalised when ``spectral_norm`` is True.

    Must be called inside a ``@nn.compact`` method, with ``layer`` constructed there too (so that it is
    adopted by the calling module). With spectral norm the SN wrapper is named ``f"{layer.name}_sn"``
    when the layer has an explicit name (``name`` overrides this).
    """
    if not spectral_norm:
        return layer(x)
    if name is None and layer.name is not None:
        name = f"{layer.name}_sn"
    return nn.SpectralNorm(layer, name=name)(x, update_stats=train)


def conv(features: int, kernel: int, *, name: str, use_bias: bool = True, kernel_init=None,
         padding="SAME", dtype: Any = jnp.float32) -> nn.Module:
    """A stride-1 ``layers.Conv`` with a square kernel; ``dtype`` is the compute dtype (params stay float32)."""
    kw = {} if kernel_init is None else {"kernel_init": kernel_init}
    return layers.Conv(features, (kernel, kernel), strides=(1, 1), padding=padding,
                       use_bias=use_bias, name=name, dtype=dtype, **kw)


def _max_pool2(x):
    return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")


class SelfAttention(nn.Module):
    """SAGAN self-attention block (Zhang et al. 2019; as in BigGAN's ``Attention`` and the SAGAN TF code).

    For ``x`` [B, H, W, C]::

        f = conv1x1(x) -> C//8            ("theta", queries, all H*W positions)
        g = maxpool2x2(conv1x1(x)) -> C//8 ("phi", keys)      [pooling only if ``pool_keys``]
        h = maxpool2x2(conv1x1(x)) -> C//2 ("g", values)
        attn = softmax_over_keys(f @ g^T)          [B, H*W, N_keys]
        y = x + gamma * conv1x1(attn @ h) -> C

    The 1x1 convs have no bias and are spectrally normalised when ``spectral_norm`` is True.
    ``gamma`` is a learned scalar initialised at 0, so the block is exactly the identity at init.
    Key/value pooling needs even H and W; it is skipped (``pool_keys=False``) or raises otherwise.
    """

    spectral_norm: bool = True
    pool_keys: bool = True
    kernel_init: nn.initializers.Initializer = nn.initializers.xavier_uniform()
    dtype: Any = jnp.float32  # compute dtype; the softmax runs in float32

    @nn.compact
    def __call__(self, x, *, train: bool):
        b, hgt, wid, c = x.shape
        if c < 8:
            raise ValueError(f"SelfAttention needs at least 8 channels, got {c}")
        if self.pool_keys and (hgt % 2 or wid % 2):
            raise ValueError(f"SelfAttention with pool_keys=True needs even H and W, got {(hgt, wid)}")

        def c1x1(feats, name, inp):
            layer = conv(feats, 1, name=name, use_bias=False, kernel_init=self.kernel_init, dtype=self.dtype)
            return sn_apply(layer, inp, spectral_norm=self.spectral_norm, train=train)

        f = c1x1(c // 8, "theta", x)
        g = c1x1(c // 8, "phi", x)
        h = c1x1(c // 2, "g", x)
        if self.pool_keys:
            g, h = _max_pool2(g), _max_pool2(h)
        f = f.reshape(b, hgt * wid, c // 8)
        g = g.reshape(b, -1, c // 8)
        h = h.reshape(b, -1, c // 2)
        attn = jax.nn.softmax(jnp.einsum("bqc,bkc->bqk", f, g).astype(jnp.float32), axis=-1).astype(h.dtype)
        o = jnp.einsum("bqk,bkc->bqc", attn, h).reshape(b, hgt, wid, c // 2)
        o = c1x1(c, "o", o)
        gamma = self.param("gamma", nn.initializers.zeros, (), jnp.float32)
        return x + gamma.astype(o.dtype) * o


class ConditionalBatchNorm(nn.Module):
    """Class-conditional BatchNorm (de Vries et al. 2017; SNGAN-projection / BigGAN generators).

    ``y = gamma(cond) * (x - mean) / sqrt(var + eps) + beta(cond)`` with BatchNorm statistics over
    (B, H, W) and no affine parameters of its own. ``cond`` is either

    * int labels [B] (any integer dtype): ``gamma = 1 + E_gamma[y]``, ``beta = E_beta[y]`` with per-class
      tables ``gamma_embed``/``beta_embed`` [num_classes, C]; or
    * a float conditioning vector [B, d] (BigGAN's shared class embedding):
      ``gamma = 1 + c @ W_gamma``, ``beta = c @ W_beta`` (``gamma_dense``/``beta_dense``, no bias;
      spectrally normalised when ``spectral_norm``, as BigGAN's ``ccbn`` with SN linears).

    The tables / maps are initialised at zero by default (``kernel_init`` of the float maps), so
    ``gamma == 1`` and ``beta == 0`` exactly at init for every class (the "+1" that compare_gan's
    conditional BN got wrong); BigGAN (`jaxgan.models.biggan`) initialises the maps orthogonally. The
    per-example gamma and beta are sown to the ``'intermediates'`` collection as ``scale`` and ``offset``
    ([B, C] each).
    """

    num_classes: int = 0
    momentum: float = BN_MOMENTUM
    epsilon: float = BN_EPSILON
    axis_name: str | None = None
    dtype: Any = jnp.float32  # compute dtype (statistics are reduced in float32)
    kernel_init: nn.initializers.Initializer = nn.initializers.zeros  # of the float maps W_gamma, W_beta
    spectral_norm: bool = False  # of the float maps W_gamma, W_beta

    @nn.compact
    def __call__(self, x, cond, *, train: bool):
        c = x.shape[-1]
        x = nn.BatchNorm(use_running_average=not train, momentum=self.momentum, epsilon=self.epsilon,
                         use_scale=False, use_bias=False, axis_name=self.axis_name, dtype=self.dtype, name="bn")(x)
        cond = jnp.asarray(cond)
        if jnp.issubdtype(cond.dtype, jnp.integer):
            if self.num_classes <= 0:
                raise ValueError(
                    f"ConditionalBatchNorm got integer labels but num_classes={self.num_classes}; "
                    "set num_classes > 0 or pass a float conditioning vector [B, d]")
            if cond.ndim != 1:
                raise ValueError(f"integer labels must have shape [B], got {cond.shape}")
            dgamma = nn.Embed(self.num_classes, c, embedding_init=nn.initializers.zeros,
                              name="gamma_embed")(cond)
            beta = nn.Embed(self.num_classes, c, embedding_init=nn.initializers.zeros,
                            name="beta_embed")(cond)
        else:
            if cond.ndim != 2:
                raise ValueError(f"a float conditioning vector must have shape [B, d], got {cond.shape}")
            def dense(name):
                layer = nn.Dense(c, use_bias=False, kernel_init=self.kernel_init, name=name)
                return sn_apply(layer, cond, spectral_norm=self.spectral_norm, train=train)
            dgamma, beta = dense("gamma_dense"), dense("beta_dense")
        gamma = 1.0 + dgamma
        self.sow("intermediates", "scale", gamma)
        self.sow("intermediates", "offset", beta)
        return x * gamma[:, None, None, :].astype(x.dtype) + beta[:, None, None, :].astype(x.dtype)


def check_labels(labels, num_classes: int, batch: int, who: str):
    """Validates class labels: returns None for unconditional models (``num_classes == 0``; any labels
    are ignored), else the labels as an int array [batch]; raises ValueError on missing/misshapen labels."""
    if num_classes <= 0:
        return None
    if labels is None:
        raise ValueError(f"{who} has num_classes={num_classes} and needs labels (int [B]), got None")
    labels = jnp.asarray(labels)
    if labels.shape != (batch,) or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"{who} labels must be int [B={batch}], got {labels.dtype}{list(labels.shape)}")
    return labels


def upsample_nearest2x(x):
    """Nearest-neighbour 2x upsampling of NHWC ``x``."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def avg_pool2x(x):
    """2x2 average pooling, stride 2, of NHWC ``x``."""
    return nn.avg_pool(x, (2, 2), strides=(2, 2), padding="VALID")


__all__ = ["BN_MOMENTUM", "BN_EPSILON", "sn_apply", "conv", "SelfAttention", "ConditionalBatchNorm",
           "upsample_nearest2x", "avg_pool2x", "check_labels"]
