"""What the PyTorch twins of jaxgan's models (``torch_dcgan.py``, ``torch_sngan.py``) share: placing G and D on the
device in train mode, one Adam per player, bfloat16 autocast as jaxgan's ``--compute_dtype``, parameter counts."""
from __future__ import annotations

import torch
from torch import nn

COMPUTE_DTYPES = ("float32", "bfloat16")


def num_params(module: nn.Module) -> int:
    """Trainable parameters (all of ``parameters()``: BN running averages and SN ``u`` vectors are buffers, as they
    are jaxgan's ``batch_stats``, not its ``params``)."""
    return sum(p.numel() for p in module.parameters())


class TorchTwin:
    """Base of the twins: ``_setup`` after building (and initialising) G and D; ``autocast()`` around forwards."""

    def _setup(self, g: nn.Module, d: nn.Module, *, device, compute_dtype: str, channels_last: bool, lr: float,
               betas: tuple[float, float], compile_mode: str | None = None) -> None:
        """``compile_mode``: None (eager) or a `torch.compile` mode for G's and D's forwards (their backwards
        are compiled with them; the optimizers stay eager), as a user of ``torch.compile`` writes it."""
        if compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype={compute_dtype!r}; accepted: {', '.join(COMPUTE_DTYPES)}")
        self.device = torch.device(device)
        self.compute_dtype = compute_dtype
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.g, self.d = g, d
        for m in (g, d):
            m.to(device=self.device, memory_format=self.memory_format)
            m.train()
        self.opt_g = torch.optim.Adam(g.parameters(), lr=lr, betas=betas)
        self.opt_d = torch.optim.Adam(d.parameters(), lr=lr, betas=betas)
        self.compile_mode = compile_mode
        if compile_mode is not None:
            self.g, self.d = (torch.compile(m, mode=compile_mode) for m in (g, d))

    def autocast(self):
        """bfloat16 as jaxgan's --compute_dtype: autocast the forward passes; parameters and Adam state stay float32."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.compute_dtype == "bfloat16")
