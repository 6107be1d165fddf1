"""PyTorch SNGAN identical to jaxgan's unconditional ``--model=sngan`` (``jaxgan.models.resnet``), its train step,
and weight copying.

Used by ``benchmarks/step_throughput.py --model=sngan --compare_torch`` and ``tests/test_torch_sngan.py``. torch is
an optional dependency (``pip install torch``); this module imports it at import time.

The network (NCHW; ``ch`` = base width, 64 by default; multipliers as in ``resnet._G_ARCH`` / ``resnet._D_ARCH``):

* G: Linear(latent_dim, 4*4*ch*m0) -> view [B, ch*m0, 4, 4] -> up-blocks -> BN, ReLU, conv3x3 -> ``channels``, tanh.
  Up-block: BN, ReLU, nearest 2x upsample, conv3x3, BN, ReLU, conv3x3; shortcut: upsample, conv1x1 (the order of
  jaxgan, BigGAN-PyTorch and Mimicry: the 1x1 conv runs at the upsampled resolution). No spectral norm in G.
* D: spectral norm on every conv and the dense layer. Block 0 is SNGAN's "optimized" block (conv3x3, ReLU,
  conv3x3, avg-pool; shortcut avg-pool then conv1x1); then pre-activation blocks (ReLU, conv3x3, ReLU, conv3x3,
  [avg-pool]; shortcut conv1x1 [then avg-pool] when the width or resolution changes, identity otherwise); then
  ReLU, global sum pooling, SN Linear -> logit [B].
* Every conv/linear has a bias; Xavier-uniform weights, zero biases (torch's and flax's fan computations agree);
  BN momentum 0.1 (= flax 0.9), eps 1e-5.

Spectral norm is a small module (BigGAN-PyTorch's ``SN`` semantics), not ``torch.nn.utils.parametrizations``,
because it must match flax's ``nn.SpectralNorm`` (``n_steps=1``, ``epsilon=1e-12``): on *every* forward, in train
and eval mode alike, one power iteration from the stored ``u`` [1, out] on the kernel reshaped to [out, rest]
(flax reshapes [kh, kw, in, out] to [kh*kw*in, out]: the same matrix, transposed, with its columns permuted)::

    v = l2n(u W);  Wv = v W^T;  u' = l2n(Wv);  sigma = Wv . u';  W_sn = W / sigma,   l2n(x) = x * rsqrt(sum(x^2) + eps)

with ``u``, ``v`` constants for autodiff (gradients flow through ``W`` in ``sigma``). Only in train mode is ``u'``
stored (flax: ``update_stats=True``). torch's parametrization instead reuses the stored ``u``, ``v`` without an
iteration in eval mode, which is not what jaxgan's G update computes. Like flax, the power iteration runs in float32
even under bfloat16 autocast. flax also stores ``sigma``; it is not needed here and not kept. (flax divides by
``where(sigma != 0, sigma, 1)``; sigma is 0 only for an all-zero kernel, so the guard is omitted.)

The train step (``TorchSNGAN.step``) is exactly ``jaxgan.step.make_train_step`` for this model (no BatchNorm in D):

* ``n_critic`` D updates, update ``i`` on real minibatch ``i`` with fresh latents: G (train mode: batch statistics,
  running averages updated; no gradient) makes a detached fake; real and fake go through D in ONE concatenated
  forward in train mode (one SN power-iteration update per D layer per D update); Adam step on D.
* One G update with fresh latents through the updated D. jaxgan runs D there with ``train=True`` but discards its
  state updates, i.e. one power iteration from the stored ``u`` whose result is not stored: here D runs in eval mode
  (the same thing, D having no BatchNorm) with its parameters frozen (no unused D weight-gradients; jaxgan's XLA
  program never computes them either). G's BN running averages are updated here too.
* Losses: ``non_saturating``: D = mean softplus(-D(x)) + mean softplus(D(G(z))), G = mean softplus(-D(G(z)));
  ``hinge``: D = mean relu(1 - D(x)) + mean relu(1 + D(G(z))), G = -mean D(G(z)).
* Adam(lr 2e-4, betas (0.5, 0.999), eps 1e-8) for both players (jaxgan's Config defaults; jaxgan has no sngan-specific
  optimizer settings).

``compute_dtype="bfloat16"`` mirrors jaxgan's ``--compute_dtype=bfloat16``: forwards run under
``torch.autocast(dtype=torch.bfloat16)``; parameters, Adam state, the SN power iteration, D's final sum pooling and
dense layer, G's tanh and the losses stay float32; D casts its input to bfloat16 first, as jaxgan's does.

Checked against jaxgan (float32, CPU; see tests/test_torch_sngan.py): G outputs, D logits and the updated ``u`` agree
to ~3e-6 relative; three whole steps with jaxgan's latents agree in losses, D/G parameters, ``u`` and G's BN running
means to float32 rounding. Not identical: BN running *variances* (torch averages the unbiased batch variance, flax the
biased one; they are used only in eval mode, never in the step); the random streams (z, initial weights and ``u``);
under bfloat16 the rounding points differ a little (e.g. BN, pooling), so outputs agree only to bfloat16 precision.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from jaxgan.models.blocks import BN_EPSILON
# size -> (multiplier at 4x4, output multipliers of the up-blocks); size -> (block multipliers, downsample flags)
from jaxgan.models.resnet import SUPPORTED_IMAGE_SIZES, _D_ARCH as D_ARCH, _G_ARCH as G_ARCH
from torch_twin import TorchTwin, num_params  # noqa: F401 (num_params: part of the twin API)

BN_MOMENTUM = 0.1  # torch convention for jaxgan's (flax) BN momentum 0.9
SN_EPSILON = 1e-12


def _check_size(image_size: int):
    if image_size not in SUPPORTED_IMAGE_SIZES:
        raise ValueError(f"torch SNGAN supports image_size {SUPPORTED_IMAGE_SIZES}, got {image_size}")


def _l2n(x, eps=SN_EPSILON):
    return x * torch.rsqrt((x * x).sum() + eps)  # flax's _l2_normalize


class SN:
    """Mixin for a layer with ``weight`` [out, ...]: ``sn_weight()`` is the spectrally normalised weight (flax
    semantics, see the module docstring); the power-iteration vector ``u`` [1, out] is a buffer."""

    def _init_sn(self, num_outputs: int):
        self.register_buffer("u", torch.randn(1, num_outputs))

    def sn_weight(self):
        w = self.weight
        device_type = w.device.type
        ctx = (torch.autocast(device_type, enabled=False) if torch.is_autocast_enabled(device_type)
               else contextlib.nullcontext())
        with ctx:
            w_mat = w.reshape(w.shape[0], -1)
            with torch.no_grad():
                v = _l2n(self.u @ w_mat)
            wv = v @ w_mat.t()  # [1, out]; differentiable in W
            u = _l2n(wv.detach())
            if self.training:
                with torch.no_grad():
                    self.u.copy_(u)
            sigma = (wv * u).sum()
            return w / sigma


class SNConv2d(nn.Conv2d, SN):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_sn(self.out_channels)

    def forward(self, x):
        return self._conv_forward(x, self.sn_weight(), self.bias)


class SNLinear(nn.Linear, SN):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_sn(self.out_features)

    def forward(self, x):
        return F.linear(x, self.sn_weight(), self.bias)


def _up(x):
    return F.interpolate(x, scale_factor=2, mode="nearest")


class GBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, eps=BN_EPSILON, momentum=BN_MOMENTUM)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(cout, eps=BN_EPSILON, momentum=BN_MOMENTUM)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.shortcut = nn.Conv2d(cin, cout, 1, 1, 0)

    def forward(self, x):
        h = self.conv1(_up(F.relu(self.bn1(x))))
        h = self.conv2(F.relu(self.bn2(h)))
        return h + self.shortcut(_up(x))


class DBlock(nn.Module):
    def __init__(self, cin: int, cout: int, downsample: bool = True, optimized: bool = False):
        super().__init__()
        self.downsample = downsample or optimized
        self.optimized = optimized
        self.conv1 = SNConv2d(cin, cout, 3, 1, 1)
        self.conv2 = SNConv2d(cout, cout, 3, 1, 1)
        self.shortcut = SNConv2d(cin, cout, 1, 1, 0) if (optimized or downsample or cin != cout) else None

    def forward(self, x):
        if self.optimized:
            h = self.conv2(F.relu(self.conv1(x)))
            return F.avg_pool2d(h, 2) + self.shortcut(F.avg_pool2d(x, 2))
        h = self.conv2(F.relu(self.conv1(F.relu(x))))
        if self.downsample:
            h = F.avg_pool2d(h, 2)
        sc = x
        if self.shortcut is not None:
            sc = self.shortcut(x)
            if self.downsample:
                sc = F.avg_pool2d(sc, 2)
        return h + sc


class Generator(nn.Module):
    """z [B, latent_dim] -> images [B, channels, S, S] (float32, in [-1, 1])."""

    def __init__(self, latent_dim=128, image_size=32, channels=3, ch=64):
        super().__init__()
        _check_size(image_size)
        m0, mults = G_ARCH[image_size]
        self.c0 = ch * m0
        self.stem = nn.Linear(latent_dim, 4 * 4 * self.c0)  # output features in (C, H, W) order
        widths = [ch * m0] + [ch * m for m in mults]
        self.blocks = nn.ModuleList(GBlock(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.out_bn = nn.BatchNorm2d(widths[-1], eps=BN_EPSILON, momentum=BN_MOMENTUM)
        self.out_conv = nn.Conv2d(widths[-1], channels, 3, 1, 1)
        self.latent_dim = latent_dim

    def forward(self, z):
        h = self.stem(z).view(z.shape[0], self.c0, 4, 4)
        for block in self.blocks:
            h = block(h)
        return torch.tanh(self.out_conv(F.relu(self.out_bn(h))).float())


class Discriminator(nn.Module):
    """images [B, channels, S, S] -> logits [B] (float32)."""

    def __init__(self, image_size=32, channels=3, ch=64):
        super().__init__()
        _check_size(image_size)
        mults, downs = D_ARCH[image_size]
        widths = [channels] + [ch * m for m in mults]
        self.blocks = nn.ModuleList(DBlock(a, b, down, optimized=i == 0)
                                    for i, (a, b, down) in enumerate(zip(widths[:-1], widths[1:], downs)))
        self.out = SNLinear(widths[-1], 1)

    def forward(self, x):
        device_type = x.device.type
        autocast = torch.is_autocast_enabled(device_type)
        h = x.to(torch.get_autocast_dtype(device_type)) if autocast else x  # jaxgan: h = x.astype(dtype)
        for block in self.blocks:
            h = block(h)
        h = torch.sum(F.relu(h).float(), dim=(2, 3))  # float32, as jaxgan
        with torch.autocast(device_type, enabled=False) if autocast else contextlib.nullcontext():
            return self.out(h).view(-1)


def init_weights(module: nn.Module) -> None:
    """jaxgan's initialisation: Xavier-uniform conv/linear weights, zero biases (BN: scale 1, bias 0)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)


def load_flax_params(g: Generator, d: Discriminator, g_params, d_params, d_batch_stats=None) -> None:
    """Copies jaxgan ResNet params into the torch modules (same names: ``stem``, ``block{i}/{bn1,conv1,bn2,conv2,
    shortcut}``, ``out_bn``, ``out_conv``; D ``block{i}/{conv1,conv2,shortcut}``, ``out``).

    Conv: flax [kh, kw, in, out] -> torch [out, in, kh, kw]; Dense [in, out] -> Linear [out, in]. G's stem output is
    NHWC-ordered in jaxgan ((h*4 + w)*C + c) and CHW-ordered here (c*16 + h*4 + w): its rows are permuted.
    ``d_batch_stats``: D's model state (``state.d.model_state``, with or without the ``"batch_stats"`` level); when
    given, the SN vectors ``u`` are copied too (flax ``u`` [1, out], stored under ``{layer}_sn`` as the variable
    named ``"{layer}/kernel/u"``, is torch's ``u``).
    """
    def t(a):
        return torch.from_numpy(np.array(a, np.float32, copy=True, order="C"))

    def copy(dst, src):
        dst.copy_(t(src).to(dst.device))

    def conv(mod, p):
        copy(mod.weight, np.asarray(p["kernel"]).transpose(3, 2, 0, 1))
        copy(mod.bias, p["bias"])

    def bn(mod, p):
        copy(mod.weight, p["scale"])
        copy(mod.bias, p["bias"])

    with torch.no_grad():
        k = np.asarray(g_params["stem"]["kernel"])  # [latent, 16*C], NHWC order
        c0 = g.c0
        copy(g.stem.weight, k.reshape(-1, 4, 4, c0).transpose(3, 1, 2, 0).reshape(16 * c0, -1))
        copy(g.stem.bias, np.asarray(g_params["stem"]["bias"]).reshape(4, 4, c0).transpose(2, 0, 1).reshape(-1))
        for i, block in enumerate(g.blocks):
            p = g_params[f"block{i}"]
            bn(block.bn1, p["bn1"])
            bn(block.bn2, p["bn2"])
            for name in ("conv1", "conv2", "shortcut"):
                conv(getattr(block, name), p[name])
        bn(g.out_bn, g_params["out_bn"])
        conv(g.out_conv, g_params["out_conv"])

        stats = None
        if d_batch_stats is not None:
            stats = d_batch_stats.get("batch_stats", d_batch_stats)
        for i, block in enumerate(d.blocks):
            p = d_params[f"block{i}"]
            for name in ("conv1", "conv2", "shortcut"):
                mod = getattr(block, name)
                if mod is None:
                    if name in p:
                        raise ValueError(f"jaxgan D block{i} has a {name}, the torch one does not")
                    continue
                conv(mod, p[name])
                if stats is not None:
                    copy(mod.u, stats[f"block{i}"][f"{name}_sn"][f"{name}/kernel/u"])
        copy(d.out.weight, np.asarray(d_params["out"]["kernel"]).T)
        copy(d.out.bias, d_params["out"]["bias"])
        if stats is not None:
            copy(d.out.u, stats["out_sn"]["out/kernel/u"])


LOSSES = ("non_saturating", "hinge")


class TorchSNGAN(TorchTwin):
    """Models, optimizers and one train step, ``step(real)`` (see the module docstring).

    ``real``: float32 NCHW images [n_critic, B, C, S, S] (minibatch ``i`` for D update ``i``), or [B, C, S, S] when
    ``n_critic == 1``; moved to ``device`` if needed. Returns detached (d_loss, g_loss) tensors on ``device`` (the
    last D update's loss); nothing synchronises with the host.
    """

    def __init__(self, image_size=32, channels=3, latent_dim=128, ch=64, loss="non_saturating", n_critic=1,
                 device="cpu", compute_dtype="float32", seed=0, lr=2e-4, betas=(0.5, 0.999), channels_last=False,
                 compile_mode=None):
        if loss not in LOSSES:
            raise ValueError(f"loss={loss!r}; accepted: {', '.join(LOSSES)}")
        if n_critic < 1:
            raise ValueError(f"n_critic must be >= 1, got {n_critic}")
        torch.manual_seed(seed)
        g = Generator(latent_dim, image_size, channels, ch)
        d = Discriminator(image_size, channels, ch)
        init_weights(g)
        init_weights(d)
        self._setup(g, d, device=device, compute_dtype=compute_dtype, channels_last=channels_last, lr=lr, betas=betas,
                    compile_mode=compile_mode)
        self.loss, self.n_critic, self.latent_dim = loss, n_critic, latent_dim

    def _latents(self, b):
        return torch.randn(b, self.latent_dim, device=self.device)

    def _d_loss(self, real_out, fake_out):
        if self.loss == "hinge":
            return F.relu(1.0 - real_out).mean() + F.relu(1.0 + fake_out).mean()
        return F.softplus(-real_out).mean() + F.softplus(fake_out).mean()

    def _g_loss(self, fake_out):
        if self.loss == "hinge":
            return -fake_out.mean()
        return F.softplus(-fake_out).mean()

    def step(self, real):
        if real.dim() == 4:
            if self.n_critic != 1:
                raise ValueError(f"n_critic={self.n_critic}: real must be [n_critic, B, C, S, S], got "
                                 f"{list(real.shape)}")
            real = real[None]
        if real.shape[0] != self.n_critic:
            raise ValueError(f"real must have leading axis n_critic={self.n_critic}, got {list(real.shape)}")
        real = real.to(self.device, non_blocking=True)
        d_loss = None
        for i in range(self.n_critic):
            x = real[i].contiguous(memory_format=self.memory_format)
            b = x.shape[0]
            with torch.no_grad(), self.autocast():
                fake = self.g(self._latents(b))
            with self.autocast():
                out = self.d(torch.cat([x, fake]).contiguous(memory_format=self.memory_format))
            d_loss = self._d_loss(out[:b], out[b:])
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            self.opt_d.step()
        # G update with fresh latents through the updated D: SN iterates without storing u (eval mode), no D grads
        self.d.eval()
        for p in self.d.parameters():
            p.requires_grad_(False)
        try:
            with self.autocast():
                fake_out = self.d(self.g(self._latents(b)).contiguous(memory_format=self.memory_format))
            g_loss = self._g_loss(fake_out)
            self.opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            self.opt_g.step()
        finally:
            for p in self.d.parameters():
                p.requires_grad_(True)
            self.d.train()
        return d_loss.detach(), g_loss.detach()


__all__ = ["Generator", "Discriminator", "GBlock", "DBlock", "SNConv2d", "SNLinear", "init_weights", "num_params",
           "load_flax_params", "TorchSNGAN", "SUPPORTED_IMAGE_SIZES"]
