"""PyTorch DCGAN identical to ``jaxgan.models.dcgan`` (32/64/128 px), its train step, and weight copying.

Used by ``benchmarks/step_throughput.py --compare_torch`` and ``tests/test_performance.py``. torch is an
optional dependency (``pip install torch``); this module imports it at import time.

The network is pytorch/examples ``dcgan/main.py`` generalised to 32, 64 and 128 px exactly as jaxgan's DCGAN is:
G: ConvTranspose2d(nz, ngf*2**(n-1), 4, 1, 0) -> n x ConvTranspose2d(k=4, s=2, p=1), BatchNorm + ReLU after every
layer but the last, tanh; D: n x Conv2d(k=4, s=2, p=1) with LeakyReLU(0.2) and BatchNorm on all but the first, then
Conv2d(., 1, 4, 1, 0) -> logit. No conv biases; BN momentum 0.1, eps 1e-5; N(0, 0.02) kernels, BN scale N(1, 0.02).

Two train-step variants (both: Adam(2e-4, 0.5, 0.999), non-saturating loss, BN in train mode):

* ``"jaxgan"`` (default): exactly ``jaxgan.step`` (n_critic=1): D update on real and on a detached fake (two BN
  batches, loss = BCE(D(real), 1) + BCE(D(G(z1)), 0)); then a G update with fresh latents z2 through the *updated*
  D (loss = BCE(D(G(z2)), 1)); D's parameters are frozen during the G update (no unused D weight-gradients, the
  cheaper choice for torch; jaxgan's XLA program never computes them either).
* ``"examples"``: the pytorch/examples loop: the G update reuses the fake of the D update (one G forward per step)
  and computes D's weight-gradients too (unused).

``device`` runs it on a CUDA GPU (``"cuda"``); ``compute_dtype="bfloat16"`` wraps the forward passes in
``torch.autocast`` (parameters and Adam state stay float32), as jaxgan's ``--compute_dtype=bfloat16`` does.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from torch_twin import TorchTwin, num_params  # noqa: F401 (num_params: part of the twin API)


def _stages(image_size: int) -> int:
    if image_size not in (32, 64, 128):
        raise ValueError(f"torch DCGAN supports image_size 32, 64 or 128, got {image_size}")
    return int(round(math.log2(image_size // 4)))


class Generator(nn.Module):
    def __init__(self, latent_dim=100, image_size=64, channels=3, ngf=64):
        super().__init__()
        n = _stages(image_size)
        layers = [nn.ConvTranspose2d(latent_dim, ngf * 2 ** (n - 1), 4, 1, 0, bias=False),
                  nn.BatchNorm2d(ngf * 2 ** (n - 1)), nn.ReLU(True)]
        for i in range(1, n + 1):
            cin = ngf * 2 ** (n - i)
            if i == n:
                layers += [nn.ConvTranspose2d(cin, channels, 4, 2, 1, bias=False), nn.Tanh()]
            else:
                layers += [nn.ConvTranspose2d(cin, cin // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(cin // 2),
                           nn.ReLU(True)]
        self.main = nn.Sequential(*layers)
        self.latent_dim = latent_dim

    def forward(self, z):
        return self.main(z[:, :, None, None])


class Discriminator(nn.Module):
    def __init__(self, image_size=64, channels=3, ndf=64):
        super().__init__()
        n = _stages(image_size)
        layers, cin = [], channels
        for i in range(n):
            cout = ndf * 2 ** i
            layers.append(nn.Conv2d(cin, cout, 4, 2, 1, bias=False))
            if i > 0:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            cin = cout
        layers.append(nn.Conv2d(cin, 1, 4, 1, 0, bias=False))
        self.main = nn.Sequential(*layers)

    def forward(self, x):
        return self.main(x).view(-1)


def init_weights(module: nn.Module) -> None:
    """pytorch/examples' weights_init: conv kernels N(0, 0.02), BN scale N(1, 0.02), BN bias 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def _convs_and_bns(module: nn.Module):
    convs = [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    bns = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    return convs, bns


def load_flax_params(g: Generator, d: Discriminator, g_params, d_params) -> None:
    """Copies jaxgan DCGAN params (``{"up0": {"kernel"}, "bn0": {...}, ...}``, ``{"down0", "norm1", ..., "out"}``)
    into the torch modules. Conv: flax [kh, kw, in, out] -> torch [out, in, kh, kw]. ConvTranspose: jaxgan's
    kernel is used by ``lax.conv_transpose`` without flipping, while torch's ConvTranspose2d is the adjoint of a
    convolution, i.e. uses the spatially flipped kernel: torch [in, out, kh, kw] = flip_hw(flax).transpose."""
    def t(a):
        return torch.from_numpy(np.array(a, np.float32))  # a writable copy

    convs, bns = _convs_and_bns(g)
    with torch.no_grad():
        for i, conv in enumerate(convs):
            k = np.asarray(g_params[f"up{i}"]["kernel"])[::-1, ::-1]  # flip spatially
            conv.weight.copy_(t(k.transpose(2, 3, 0, 1)))
        for i, bn in enumerate(bns):
            bn.weight.copy_(t(g_params[f"bn{i}"]["scale"]))
            bn.bias.copy_(t(g_params[f"bn{i}"]["bias"]))
        convs, bns = _convs_and_bns(d)
        names = [f"down{i}" for i in range(len(convs) - 1)] + ["out"]
        for name, conv in zip(names, convs):
            conv.weight.copy_(t(np.asarray(d_params[name]["kernel"]).transpose(3, 2, 0, 1)))
        for i, bn in enumerate(bns, start=1):
            bn.weight.copy_(t(d_params[f"norm{i}"]["scale"]))
            bn.bias.copy_(t(d_params[f"norm{i}"]["bias"]))


class TorchDCGAN(TorchTwin):
    """Models, optimizers and one train step (``step(real)``, real NCHW float32 [B, C, S, S])."""

    def __init__(self, image_size=64, channels=3, latent_dim=100, width=64, variant="jaxgan", seed=0,
                 lr=2e-4, betas=(0.5, 0.999), channels_last=False, device="cpu", compute_dtype="float32",
                 compile_mode=None):
        if variant not in ("jaxgan", "examples"):
            raise ValueError(f"variant={variant!r}; accepted: jaxgan, examples")
        torch.manual_seed(seed)
        g = Generator(latent_dim, image_size, channels, width)
        d = Discriminator(image_size, channels, width)
        init_weights(g)
        init_weights(d)
        self._setup(g, d, device=device, compute_dtype=compute_dtype, channels_last=channels_last, lr=lr, betas=betas,
                    compile_mode=compile_mode)
        self.variant = variant
        self.latent_dim = latent_dim

    def step(self, real):
        """One step on ``real`` [B, C, S, S] (on ``device``); returns the detached (d_loss, g_loss), no host sync."""
        b = real.shape[0]
        real = real.contiguous(memory_format=self.memory_format)
        ones = torch.ones(b, device=self.device)
        zeros = torch.zeros(b, device=self.device)
        # D update: real and detached fake, two BN batches
        with self.autocast():
            fake = self.g(torch.randn(b, self.latent_dim, device=self.device))
            d_loss = (F.binary_cross_entropy_with_logits(self.d(real), ones)
                      + F.binary_cross_entropy_with_logits(self.d(fake.detach()), zeros))
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        # G update through the updated D
        self.opt_g.zero_grad(set_to_none=True)
        if self.variant == "jaxgan":
            for p in self.d.parameters():
                p.requires_grad_(False)
        with self.autocast():
            if self.variant == "jaxgan":
                fake = self.g(torch.randn(b, self.latent_dim, device=self.device))
            g_loss = F.binary_cross_entropy_with_logits(self.d(fake), ones)
        g_loss.backward()
        self.opt_g.step()
        if self.variant == "jaxgan":
            for p in self.d.parameters():
                p.requires_grad_(True)
        return d_loss.detach(), g_loss.detach()
