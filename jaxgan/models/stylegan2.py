"""StyleGAN2 (Karras et al. 2020, config F): skip-connection generator with a mapping network and modulated
convolutions, residual discriminator with a minibatch-stddev layer; ``--model=stylegan2``.

Channels at resolution r are ``min(channel_base // r, channel_max)`` with ``channel_base`` 32768 (config F) and
``channel_max`` ``--width`` (512 in config F; the ADA paper's small-data configs cap it lower). One definition
serves image sizes 32 to 1024 (powers of two); ``--latent_dim`` is both z's and w's size (512).

Generator ``G(z, labels=None, *, train) -> (x [B, S, S, C], aux)``:

- mapping: z normalised to unit second moment, ``mapping_layers`` equalized-lr dense layers (lr multiplier
  0.01, leaky ReLU) -> w, broadcast to ``num_ws`` per-layer latents ws [B, num_ws, w_dim];
- w_avg, the running mean of w (decay 0.995 per training call), lives in G's model state
  (``{"stylegan2": {"w_avg", "pl_mean"}}``); truncation psi (inference only) is ``w_avg + psi (w - w_avg)``;
- randomness: with a ``"noise"`` rng (the train step passes one to generators with ``needs_rng``) the per-layer
  noise is fresh N(0, 1) and, in training, style mixing swaps the ws from a random cutoff on (probability
  ``style_mixing``) for those of a second z; without one the noise is a fixed per-layer pattern (the
  reference's ``noise_mode='const'``) and there is no mixing: sampling and evaluation are deterministic; under a
  data axis (``axis_name``) the noise and the second z are drawn for the global batch and sliced, and the
  cutoff is one per global batch, so N devices train as one;
- ``z`` of shape [B, num_ws, w_dim] is taken as ws (synthesis only): what path-length regularization
  differentiates (`jaxgan.regularizers.path_length`);
- ``aux = {"ws": ws, "pl_mean": the path-length running mean}``.

Discriminator ``D(x, labels=None, *, train) -> logits [B]``: fromRGB, residual blocks down to 4x4 (FIR [1,3,3,1]
before each stride-2 conv and on the skip path, both branches scaled by sqrt(1/2)), minibatch stddev (groups of
``mbstd_group`` consecutive examples, one feature; `minibatch_stddev_consecutive`), conv, dense, output.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgan.config import ConfigError
from jaxgan.models import heads
from jaxgan.models import stylegan2_ops as ops
from jaxgan.models.spec import ModelSpec

IMAGE_SIZES = (32, 64, 128, 256, 512, 1024)
CHANNEL_BASE = 32768  # config F
W_AVG_BETA = 0.995
STATE = "stylegan2"  # G's model-state collection: w_avg, pl_mean


def channels(resolution: int, channel_max: int, channel_base: int = CHANNEL_BASE) -> int:
    return min(channel_base // resolution, channel_max)


def _check_resolution(resolution: int) -> None:
    if resolution not in IMAGE_SIZES:
        raise ValueError(f"StyleGAN2 supports image sizes {IMAGE_SIZES}, got {resolution}")


def num_ws(resolution: int) -> int:
    """Per-layer latents of the synthesis network: 2 per block from 8 px, 1 at 4 px, plus the last toRGB."""
    return 2 * (int(math.log2(resolution)) - 2) + 2


def mix_styles(ws: jax.Array, ws2: jax.Array, cutoff) -> jax.Array:
    """Style mixing: layers ``< cutoff`` from ``ws``, the others from ``ws2`` (both [B, L, w_dim])."""
    layer = jnp.arange(ws.shape[1])[None, :, None]
    return jnp.where(layer < cutoff, ws, ws2)


def truncate(ws: jax.Array, w_avg: jax.Array, psi: float, cutoff: int | None = None) -> jax.Array:
    """The truncation trick in W: ``w_avg + psi (ws - w_avg)`` on layers ``< cutoff`` (all when None)."""
    truncated = ws + (1.0 - psi) * (w_avg - ws)  # = w_avg + psi (ws - w_avg); exactly ws at psi = 1
    if cutoff is None:
        return truncated
    return mix_styles(truncated, ws, cutoff)


class MappingNetwork(nn.Module):
    """z [B, z_dim] -> w [B, w_dim]: normalised z, ``num_layers`` equalized dense layers, lr multiplier 0.01."""
    w_dim: int
    num_layers: int = 8
    lr_multiplier: float = 0.01

    @nn.compact
    def __call__(self, z):
        x = ops.normalize_2nd_moment(z.astype(jnp.float32))
        for i in range(self.num_layers):
            x = ops.EqualDense(self.w_dim, self.lr_multiplier, activation="lrelu", name=f"fc{i}")(x)
        return x


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (optionally upsampling 2x), noise with a learned strength, bias, leaky ReLU."""
    features: int
    resolution: int
    up: int = 1

    @nn.compact
    def __call__(self, x, w, noise=None):
        """``noise`` [B, S, S, 1] N(0, 1), or None for the layer's fixed pattern."""
        styles = ops.EqualDense(x.shape[-1], bias_init=1.0, name="affine")(w)
        weight = self.param("kernel", nn.initializers.normal(1.0), (3, 3, x.shape[-1], self.features))
        x = ops.modulated_conv2d(x, weight, styles, up=self.up)
        shape = (x.shape[0], self.resolution, self.resolution, 1)
        if noise is None:  # a fixed pattern per layer ('const' noise): deterministic sampling; a NumPy constant, since
            # XLA would constant-fold a jax.random draw at every compile (slowly)
            pattern = np.random.default_rng(self.resolution * 2 + self.up).standard_normal(shape[1:])
            noise = jnp.broadcast_to(jnp.asarray(pattern, x.dtype)[None], shape)
        x = x + noise * self.param("noise_strength", nn.initializers.zeros, ())
        return ops.lrelu(x + self.param("bias", nn.initializers.zeros, (self.features,)))


class ToRGB(nn.Module):
    """Modulated 1x1 conv without demodulation (styles scaled by 1/sqrt(fan_in)), plus bias."""
    channels: int

    @nn.compact
    def __call__(self, x, w):
        styles = ops.EqualDense(x.shape[-1], bias_init=1.0, name="affine")(w) / math.sqrt(x.shape[-1])
        weight = self.param("kernel", nn.initializers.normal(1.0), (1, 1, x.shape[-1], self.channels))
        x = ops.modulated_conv2d(x, weight, styles, demodulate=False)
        return x + self.param("bias", nn.initializers.zeros, (self.channels,))


class SynthesisNetwork(nn.Module):
    """ws [B, num_ws, w_dim] -> image [B, S, S, C]: constant 4x4 input, two layers per resolution (the first
    upsampling), skip connections: the toRGB outputs summed, each upsampled by the [1,3,3,1] FIR filter."""
    resolution: int
    image_channels: int
    channel_max: int = 512
    channel_base: int = CHANNEL_BASE

    def noise_sizes(self) -> list[int]:
        """Pixels of each layer's noise input, in call order."""
        sizes = [16]
        for log_r in range(3, int(math.log2(self.resolution)) + 1):
            sizes += [4 ** log_r] * 2
        return sizes

    @nn.compact
    def __call__(self, ws, noise=None):
        """``noise`` [B, sum(noise_sizes)] N(0, 1) for every layer (one draw: fewer RNG ops to compile), or None
        for the fixed patterns."""
        _check_resolution(self.resolution)
        offsets = [0]
        for n in self.noise_sizes():
            offsets.append(offsets[-1] + n)

        def layer_noise(i, r):
            if noise is None:
                return None
            return noise[:, offsets[i]:offsets[i + 1]].reshape(-1, r, r, 1).astype(ws.dtype)

        c4 = channels(4, self.channel_max, self.channel_base)
        x = self.param("const", nn.initializers.normal(1.0), (4, 4, c4))
        x = jnp.broadcast_to(x[None], (ws.shape[0], 4, 4, c4))
        x = SynthesisLayer(c4, 4, name="b4_conv1")(x, ws[:, 0], layer_noise(0, 4))
        img = ToRGB(self.image_channels, name="b4_torgb")(x, ws[:, 1])
        idx = 1
        for log_r in range(3, int(math.log2(self.resolution)) + 1):
            r = 2 ** log_r
            c = channels(r, self.channel_max, self.channel_base)
            x = SynthesisLayer(c, r, up=2, name=f"b{r}_conv0")(x, ws[:, idx], layer_noise(idx, r))
            x = SynthesisLayer(c, r, name=f"b{r}_conv1")(x, ws[:, idx + 1], layer_noise(idx + 1, r))
            img = ops.upsample2d(img) + ToRGB(self.image_channels, name=f"b{r}_torgb")(x, ws[:, idx + 2])
            idx += 2
        return img


class StyleGAN2Generator(nn.Module):
    """See the module docstring. ``latent_dim`` is z's and w's size."""
    resolution: int = 32
    image_channels: int = 1
    latent_dim: int = 512
    channel_max: int = 512
    mapping_layers: int = 8
    style_mixing: float = 0.9
    truncation_psi: float = 1.0
    truncation_cutoff: int | None = None
    axis_name: str | None = None  # data axis: noise and style mixing drawn for the global batch (`_normal`)
    needs_rng = True  # the train step passes a "noise" rng (`jaxgan.step`), the same on every device

    @property
    def num_ws(self) -> int:
        return num_ws(self.resolution)

    def _stats(self):
        w_avg = self.variable(STATE, "w_avg", jnp.zeros, (self.latent_dim,), jnp.float32)
        pl_mean = self.variable(STATE, "pl_mean", jnp.zeros, (), jnp.float32)
        return w_avg, pl_mean

    @nn.compact
    def __call__(self, z, labels=None, *, train: bool):
        del labels  # unconditional (validate refuses --conditional)
        w_avg, pl_mean = self._stats()
        mapping = MappingNetwork(self.latent_dim, self.mapping_layers, name="mapping")
        if z.ndim == 3:  # ws given: synthesis only
            ws = z
        else:
            mixing = train and self.style_mixing > 0 and self.has_rng("noise")
            if mixing:  # the second z through the same call (one mapping network in the program)
                k_z, k_mix = jax.random.split(self.make_rng("noise"))
                w, w2 = jnp.split(mapping(jnp.concatenate([z, self._normal(k_z, z.shape)])), 2)
            else:
                w = mapping(z)
            if train and self.is_mutable_collection(STATE) and not self.is_initializing():
                w_avg.value = jnp.mean(w, axis=0) + W_AVG_BETA * (w_avg.value - jnp.mean(w, axis=0))
            ws = jnp.broadcast_to(w[:, None], (w.shape[0], self.num_ws, w.shape[-1]))
            if mixing:
                ws = self._mix(k_mix, ws, w2)
            if not train and self.truncation_psi != 1.0:
                ws = truncate(ws, w_avg.value, self.truncation_psi, self.truncation_cutoff)
        synthesis = SynthesisNetwork(self.resolution, self.image_channels, self.channel_max, name="synthesis")
        noise = None
        if self.has_rng("noise"):
            size = sum(synthesis.noise_sizes())
            noise = self._normal(self.make_rng("noise"), (ws.shape[0], size))
        x = synthesis(ws, noise)
        return x, {"ws": ws, "pl_mean": pl_mean.value}

    def _normal(self, key, shape):
        """N(0, 1) float32 of ``shape`` [B, ...] for this device's B examples: under ``axis_name`` (every device
        holding the same key) the draw for the global batch, sliced at this device, as
        `jaxgan.step.sample_latents` does for z: N devices draw one device's numbers."""
        if self.axis_name is None:
            return jax.random.normal(key, shape, jnp.float32)
        n = jax.lax.axis_size(self.axis_name)
        full = jax.random.normal(key, (n * shape[0], *shape[1:]), jnp.float32)
        return jax.lax.dynamic_slice_in_dim(full, jax.lax.axis_index(self.axis_name) * shape[0], shape[0])

    def _mix(self, key, ws, w2):
        """With probability ``style_mixing`` the layers from a cutoff uniform in [1, num_ws) on take ``w2`` [B,
        w_dim], the w of a second z (one cutoff per batch, as the reference; w_avg follows the first z only)."""
        k_cut, k_p = jax.random.split(key)
        cutoff = jax.random.randint(k_cut, (), 1, self.num_ws)
        cutoff = jnp.where(jax.random.uniform(k_p) < self.style_mixing, cutoff, self.num_ws)
        return mix_styles(ws, jnp.broadcast_to(w2[:, None], ws.shape), cutoff)

    @staticmethod
    def absorb_term_values(model_state, values):
        """The train step's hook after G's terms (`jaxgan.step.g_update`): adds the path-length mean's update
        (the metric-only term ``path_length_update``, 0 off its lazy steps) to ``pl_mean``."""
        if "path_length_update" not in values or STATE not in model_state:
            return model_state
        stats = dict(model_state[STATE])
        stats["pl_mean"] = stats["pl_mean"] + jax.lax.stop_gradient(values["path_length_update"])
        return {**model_state, STATE: stats}


def minibatch_stddev_consecutive(x: jax.Array, group_size: int) -> jax.Array:
    """`ops.minibatch_stddev` with groups of consecutive examples: example b in group ``b // G`` (the reference
    groups ``b % (B // G)``; the same in distribution for a shuffled batch). Why: the train step runs D once on
    ``concat([real, fake])``; consecutive groups never mix real and fake examples when G divides each half,
    and the devices of a data axis, each holding consecutive examples, form one device's groups when G divides
    the per-device batch. x [B, H, W, C] -> [B, H, W, C + 1]."""
    b = x.shape[0]
    g = min(group_size, b)
    if b % g:
        return ops.minibatch_stddev(x, group_size)  # its error
    to_strided = lambda a: a.reshape(b // g, g, *a.shape[1:]).swapaxes(0, 1).reshape(a.shape)  # noqa: E731
    y = ops.minibatch_stddev(to_strided(x), group_size)
    return y.reshape(g, b // g, *y.shape[1:]).swapaxes(0, 1).reshape(y.shape)


class DBlock(nn.Module):
    """Residual D block at ``resolution``: conv 3x3, conv 3x3 down 2x, 1x1 skip down 2x; sum times sqrt(1/2)."""
    tmp_channels: int
    out_channels: int

    @nn.compact
    def __call__(self, x):
        gain = math.sqrt(0.5)
        y = ops.EqualConv(self.out_channels, 1, down=2, use_bias=False, activation="linear", gain=gain,
                          name="skip")(x)
        x = ops.EqualConv(self.tmp_channels, 3, name="conv0")(x)
        x = ops.EqualConv(self.out_channels, 3, down=2, gain=gain, name="conv1")(x)
        return y + x


class StyleGAN2Discriminator(nn.Module):
    """See the module docstring; ``outputs`` N > 1 gives logits [B, N] (`jaxgan.models.heads`)."""
    resolution: int = 32
    channel_max: int = 512
    channel_base: int = CHANNEL_BASE
    mbstd_group: int = 4
    outputs: int = 1

    @nn.compact
    def __call__(self, x, labels=None, *, train: bool):
        del labels, train
        _check_resolution(x.shape[1])
        ch = lambda r: channels(r, self.channel_max, self.channel_base)  # noqa: E731
        x = ops.EqualConv(ch(x.shape[1]), 1, name="fromrgb")(x.astype(jnp.float32))
        r = x.shape[1]
        while r > 4:
            x = DBlock(ch(r), ch(r // 2), name=f"b{r}")(x)
            r //= 2
        x = minibatch_stddev_consecutive(x, self.mbstd_group)
        x = ops.EqualConv(ch(4), 3, name="b4_conv")(x)
        x = ops.EqualDense(ch(4), activation="lrelu", name="b4_fc")(x.reshape(x.shape[0], -1))
        return heads.discriminator_output(ops.EqualDense(self.outputs, name="b4_out")(x))


def build(config, data_shape, num_classes: int, *, axis_name=None, latent_dim: int, g_width: int, d_width: int):
    """`ModelSpec.build` of ``--model=stylegan2``: widths are the channel caps of G and D."""
    del num_classes  # unconditional
    size, channels_ = data_shape[0], data_shape[-1]
    g = StyleGAN2Generator(size, channels_, latent_dim, g_width, getattr(config, "mapping_layers", 8),
                           getattr(config, "style_mixing", 0.9), getattr(config, "truncation_psi", 1.0),
                           axis_name=axis_name)
    d = StyleGAN2Discriminator(size, d_width, outputs=heads.discriminator_head(config, 0)["outputs"],
                               mbstd_group=min(4, config.batch_size))
    return g, d


def validate(config) -> None:
    """Refuses what this StyleGAN2 does not implement (one line each)."""
    if config.conditional:
        raise ConfigError("--conditional is not supported by --model=stylegan2 (unconditional only)")
    if getattr(config, "compute_dtype", "float32") not in ("", "float32"):
        raise ConfigError(f"--compute_dtype={config.compute_dtype} is not supported by --model=stylegan2; "
                          f"accepted: float32")
    group = min(4, config.batch_size)
    if config.batch_size % group:
        raise ConfigError(f"--batch_size={config.batch_size} must be a multiple of 4 for --model=stylegan2 "
                          f"(minibatch stddev groups of 4)")


SPEC = ModelSpec("stylegan2", build, data="image",
                 description="StyleGAN2 (config F): mapping network, modulated convs, skip G, residual D",
                 image_sizes=IMAGE_SIZES, default_latent_dim=512, default_width=512, convolves=True,
                 validate_options=validate)

__all__ = ["StyleGAN2Generator", "StyleGAN2Discriminator", "MappingNetwork", "SynthesisNetwork", "mix_styles",
           "truncate", "num_ws", "channels", "build", "SPEC", "IMAGE_SIZES"]


def validate_flags(config) -> None:
    """StyleGAN2's own flags (--mapping_layers, --style_mixing, --truncation_psi, --path_length_weight), whatever
    the model (`jaxgan.experiment.inapplicable_flags` refuses them for other models). `ConfigError` naming the
    flag."""
    checks = [
        (config.mapping_layers >= 1, f"--mapping_layers must be an integer >= 1, got {config.mapping_layers}"),
        (math.isfinite(config.style_mixing) and 0 <= config.style_mixing <= 1,
         f"--style_mixing must be a probability in [0, 1], got {config.style_mixing}"),
        (math.isfinite(config.truncation_psi), f"--truncation_psi must be a finite number, got {config.truncation_psi}"),
        (math.isfinite(config.path_length_weight) and config.path_length_weight >= 0,
         f"--path_length_weight must be a finite number >= 0, got {config.path_length_weight}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
