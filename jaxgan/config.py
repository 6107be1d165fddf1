"""A run's configuration: the plain `Config` dataclass and `ConfigError`, the error every bad value raises.

A leaf of the package (it imports only `jaxgan.data.toy`), so any module can raise `ConfigError` without
importing what builds an experiment. `jaxgan.experiment` re-exports both names and validates a `Config`.
"""
from __future__ import annotations

import dataclasses
import json

from jaxgan.data import toy


class ConfigError(ValueError):
    """A bad flag value or combination; the message names the flag and what is accepted."""


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting of a run, one field per training flag (``--<field>``); 0 or "" means the default named
    beside it."""
  # data
    dataset: str = "ring8"  # ring8, grid25, lines, digits, folder:PATH, or a TFDS image dataset name
    mixture_modes: int = 0  # 0: the dataset's default (8 for ring8, 25 for grid25)
    mixture_radius: float = 0.0  # 0: default (1.0)
    mixture_std: float = 0.0  # 0: default (0.01 ring8, 0.05 grid25)
    mixture_spacing: float = 0.0  # 0: default (2.0)
    image_size: int = 32
    channels: int = 1
    data_dir: str = ""
    skip_corrupt_images: bool = False  # folder:PATH: leave out undecodable files (else: an error naming them)
    # model
    model: str = "mlp"
    latent_dim: int = 0  # 0: the model's default
    width: int = 0  # 0: the model's default (MLP hidden width, DCGAN ngf/ndf, ResNet ch), for G and D
    g_width: int = 0  # 0: --width; G's own width (SNGAN: G ch 64 -> 256 channels, D ch 32 -> 128)
    d_width: int = 0  # 0: --width; D's own width
    depth: int = 3  # MLP hidden layers
    d_normalization: str = ""  # "": the model's default; batch_norm, layer_norm, none
    conditional: bool = False
    attention_resolution: int = 0
    conv_impl: str = "auto"  # auto | xla | dnnl: convolutions of the image models (jaxgan.models.layers)
    # objective
    loss: str = "non_saturating"
    penalty: str = "none"
    penalty_weight: float = 10.0
    label_smoothing: float = 0.0
    clip_weights: float = 0.0  # 0: off
    instance_noise: float = 0.0  # 0: off
    instance_noise_anneal_steps: int = 0  # 0: constant noise
    # optimisation
    optimizer: str = "adam"
    g_lr: float = 2e-4
    d_lr: float = 2e-4
    b1: float = 0.5
    b2: float = 0.999
    lr_decay: str = "none"  # none | linear (to 0 at --steps)
    n_critic: int = 1
    batch_size: int = 64
    steps: int = 10000
    seed: int = 0
    ema_decay: float = 0.0  # 0: no EMA
    ema_start: int = 0
    # bookkeeping
    log_every: int = 100
    sample_every: int = 0  # 0: only at the end
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    num_samples: int = 2500  # samples in the final 2D plot / mode metrics
    # reliability (jaxgan.reliability)
    on_nan: str = "stop"  # stop | skip | rollback: what a NaN/Inf loss or parameter does
    nan_lr_factor: float = 0.5  # --on_nan=rollback multiplies the learning rates by this
    max_rollbacks: int = 3  # --on_nan=rollback gives up (stops) after this many rollbacks
    # parallelism (jaxgan.parallel): a ("seed", "data") device mesh
    mesh_data: int = 0  # devices on the data axis (global batch split, gradients averaged); 0: all devices
    mesh_seed: int = 1  # devices on the seed axis (stacked runs of a sweep); 1 for a single run
    # evaluation during training (jaxgan.evaluation): scores logged as eval/<name>
    eval_every: int = 0  # 0: off; else evaluate every this many steps (and at the last step)
    eval_metrics: str = "fid,is"  # comma-separated subset of fid, kid, is, pr
    eval_num_samples: int = 2000  # generated samples per evaluation
    eval_inception_weights: str = ""  # converted FID Inception .npz (needed for --eval_every on non-digits data)
    # performance (benchmarks/step_throughput.py measures both)
    steps_per_call: int = 1  # train steps per jitted call (lax.scan): cuts dispatch overhead for small (MLP) models
    compute_dtype: str = "float32"  # float32 | bfloat16: activations/matmuls of image models; params, optimizer state, losses and penalties stay float32

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

    @property
    def is_toy(self) -> bool:
        return self.dataset in toy.TOY_DATASETS
