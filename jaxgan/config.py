"""A run's configuration: the frozen `Config` dataclass, its fields' metadata, and `ConfigError`.

A leaf of the package (it imports only `jaxgan.data.toy`), so any module can raise `ConfigError` without
importing what builds an experiment. `jaxgan.experiment` re-exports both names and validates a `Config`.

Every field is declared with `option`, which records in the field's metadata its help text, the *section*
that consumes it (`SECTIONS`), how a sweep may vary it (`SWEEP_KINDS`) and whether a resumed run may change
it. The launchers' flags and ``--help`` (`jaxgan.cli.common`), the sweep's grouping (`jaxgan.sweep`) and
the resume rule (`jaxgan.training.check_workdir`) are derived from it (`fields_where`, `resumable_fields`,
`section_fields`, `field_type`): no list of field names is kept anywhere else.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import typing

from jaxgan.data import toy


class ConfigError(ValueError):
    """A bad flag value or combination; the message names the flag and what is accepted."""


SECTIONS = ("data", "model", "objective", "optimization", "loop", "evaluation", "mesh")
SWEEP_KINDS = {  # how a study (jaxgan.sweep) may vary a field; None: not at all (seed: --seeds)
    "runtime": "a run-time hyperparameter (GANState.hparams): runs differing in it share one program",
    "group": "changes the compiled program but no shapes: --sweep values and --losses entries form separate groups",
    "group_entry": "changes shapes: a --losses entry may set it for its group, --sweep may not",
    "shape": "changes array shapes or the data: never varied inside one study",
}


def option(default, help: str, *, section: str, sweep: str | None = None, resume: bool = False,  # noqa: A002
           choices: str | None = None):
    """A `Config` field: ``default``, its ``--help`` text, the consuming ``section`` (one of `SECTIONS`),
    its ``sweep`` kind (a key of `SWEEP_KINDS` or None) and whether a resume (``resume=True``) may change it.
    ``choices`` names the registry whose keys are the accepted values, as ``"module:attribute"`` (resolved by
    the launchers, `jaxgan.cli.common.field_choices`; this leaf module imports no registry): a new registry entry
    is a new accepted value, listed in ``--help``."""
    if section not in SECTIONS or (sweep is not None and sweep not in SWEEP_KINDS):
        raise ValueError(f"option: section {section!r} / sweep {sweep!r}; accepted: {SECTIONS} / {tuple(SWEEP_KINDS)}")
    return dataclasses.field(default=default, metadata=dict(help=help, section=section, sweep=sweep, resume=resume,
                                                            choices=choices))


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting of a run, one field per training flag (``--<field>``); 0 or "" means the default named
    in the field's help."""
    # data (jaxgan.data)
    dataset: str = option("ring8", "ring8, grid25, lines (2D); digits, folder:PATH, or a TFDS image dataset (mnist, "
                          "cifar10, ...)", section="data", sweep="shape")
    mixture_modes: int = option(0, "modes of ring8/grid25 (0: 8 / 25)", section="data", sweep="shape")
    mixture_radius: float = option(0.0, "ring radius (0: 1.0)", section="data", sweep="shape")
    mixture_std: float = option(0.0, "std of each mode (0: 0.01 ring8, 0.05 grid25)", section="data", sweep="shape")
    mixture_spacing: float = option(0.0, "grid spacing (0: 2.0)", section="data", sweep="shape")
    toy_train_size: int = option(0, "2D datasets: train on a fixed set of N points drawn once per --seed, in epochs "
                                 "(each point once per epoch, reshuffled every epoch), as PacGAN's 100000 (0: fresh "
                                 "samples every batch)", section="data", sweep="shape")
    image_size: int = option(32, "image height = width", section="data", sweep="shape")
    channels: int = option(1, "image channels (1 or 3)", section="data", sweep="shape")
    data_dir: str = option("", "TFDS data directory (datasets prepared with `tfds build`)", section="data")
    skip_corrupt_images: bool = option(
        False, "folder:PATH datasets: leave out image files that cannot be decoded, with one warning line listing "
        "them (default: refuse the run, naming them; files are checked at open)", section="data")
    subset: int = option(0, "image datasets: train on N images only (0: all), the same N for every --seed (drawn "
                         "once with a fixed seed; a smaller subset is part of a larger one), as the ADA paper's "
                         "--subset; small-data studies", section="data", sweep="group_entry")
    # model (jaxgan.models)
    model: str = option("mlp", "the G/D architecture (mlp for 2D data)", section="model", sweep="shape",
                        choices="jaxgan.models:MODELS")
    latent_dim: int = option(0, "size of z (0: the model's default)", section="model", sweep="shape")
    width: int = option(0, "MLP hidden width / DCGAN ngf=ndf / ResNet ch, for G and D (0: the model's default)",
                        section="model", sweep="shape")
    g_width: int = option(0, "G's width where it differs from D's (0: --width); e.g. SNGAN on CIFAR-10: "
                          "--g_width=64 (ResNet G with 256 channels) --d_width=32 (D with 128)",
                          section="model", sweep="shape")
    d_width: int = option(0, "D's width where it differs from G's (0: --width)", section="model", sweep="shape")
    depth: int = option(3, "MLP hidden layers", section="model", sweep="shape")
    d_normalization: str = option("", "DCGAN D normalisation: batch_norm (default), layer_norm, none (WGAN-GP "
                                  "critic)", section="model", sweep="shape")
    conditional: bool = option(False, "class-conditional G and D (labelled datasets)", section="model", sweep="shape")
    attention_resolution: int = option(0, "self-attention resolution of sagan, biggan, biggan_deep (0: default)",
                                       section="model", sweep="shape")
    conv_impl: str = option("auto", "convolution implementation of the image models: auto (oneDNN on cpu where it "
                            "can run, else the fastest XLA formulation per pass), xla (plain XLA convolutions), "
                            "dnnl (oneDNN, cpu float32 and bfloat16)", section="model",
                            resume=True)  # the same convolutions by other kernels (rounding differs)
    compute_dtype: str = option("float32", "float32 | bfloat16: activations and matmuls of the image models; "
                                "parameters, optimizer state, losses and penalties stay float32", section="model")
    mapping_layers: int = option(8, "--model=stylegan2: layers of the mapping network (8 in config F, 2 in the ADA "
                                 "paper's small-data configs)", section="model", sweep="shape")
    style_mixing: float = option(0.9, "--model=stylegan2: probability of style mixing regularization in training "
                                 "(0: off)", section="model", sweep="shape")
    truncation_psi: float = option(1.0, "--model=stylegan2: truncation psi in W around the tracked mean w for samples "
                                   "and evaluation (1: off; 0: the mean image)", section="model", sweep="shape")
    # objective (jaxgan.objectives)
    loss: str = option("non_saturating", "the GAN game (D's and G's losses)", section="objective", sweep="group",
                       choices="jaxgan.objectives:LOSSES")
    penalty: str = option("none", "a regulariser of D (gradient penalties)", section="objective", sweep="group",
                          choices="jaxgan.objectives:PENALTIES")
    penalty_weight: float = option(10.0, "weight of --penalty", section="objective", sweep="runtime")
    label_smoothing: float = option(
        0.0, "s in [0, 1): D's target for real examples becomes 1 - s/2 (TF-GAN's smoothing, labels*(1-s) + s/2; "
        "fake targets stay 0, G's loss is unchanged; JSD losses). Salimans et al.'s one-sided target 0.9 is s=0.2",
        section="objective", sweep="runtime")
    clip_weights: float = option(0.0, "clip D's weights to [-c, c] after each update (original WGAN; 0: off)",
                                 section="objective", sweep="group")
    instance_noise: float = option(0.0, "std of Gaussian noise added to D's inputs (0: off)", section="objective",
                                   sweep="runtime")
    instance_noise_anneal_steps: int = option(
        0, "anneal the instance noise linearly to 0 over this many steps (0: constant)", section="objective",
        sweep="group")
    # augmentation of D's inputs (jaxgan.augment)
    augment: str = option(
        "", "differentiable augmentation of real and fake alike (image data): diffaugment:OPS (DiffAugment, Zhao et "
        "al. 2020; OPS a comma-separated list of color, translation, cutout, flip, applied in that order; bare "
        "diffaugment: color,translation,cutout) or ada "
        "(adaptive augmentation, Karras et al. 2020: blit, geometric and color groups with probability p adapted to "
        "--ada_target); '': off", section="objective", sweep="group")
    ada_target: float = option(0.6, "--augment=ada: the target of the overfitting heuristic r_t = E[sign(D(real))] "
                               "(p rises while r_t > target)", section="objective", sweep="runtime")
    ada_interval: int = option(4, "--augment=ada: train steps between adjustments of p (r_t is their mean)",
                               section="objective", sweep="group")
    ada_kimg: float = option(500.0, "--augment=ada: thousands of images over which p can go from 0 to 1 (the "
                             "adjustment speed)", section="objective", sweep="group")
    # regularizers (jaxgan.regularizers)
    penalty_every: int = option(1, "lazy regularization (StyleGAN2's lazy R1): the --penalty runs on one D update "
                                "in k, with its weight times k (1: every update)", section="objective",
                                sweep="group")
    path_length_weight: float = option(0.0, "--model=stylegan2: path length regularization of G (2 in config F; "
                                       "0: off), lazy: every 4 G steps with its weight times 4", section="objective",
                                       sweep="runtime")
    cr_weight: float = option(0.0, "consistency regularization on reals (Zhang et al. 2020; 10 in the paper): "
                              "mean (D(x) - D(T(x)))^2, T = random flip + translation by 1/8; image data; 0: off",
                              section="objective", sweep="runtime")
    bcr_real_weight: float = option(0.0, "balanced CR on reals (Zhao et al. 2021; 10 in the paper; image data; 0: "
                                    "off)", section="objective", sweep="runtime")
    bcr_fake_weight: float = option(0.0, "balanced CR on generated images (Zhao et al. 2021; 10 in the paper; 0: "
                                    "off)", section="objective", sweep="runtime")
    zcr_d_weight: float = option(0.0, "latent CR, D's term mean (D(G(z)) - D(G(z + eps)))^2 (Zhao et al. 2021; 5 "
                                 "in the paper; 0: off)", section="objective", sweep="runtime")
    zcr_g_weight: float = option(0.0, "latent CR, G's term -mean (G(z) - G(z + eps))^2 (0.5 in the paper; 0: off)",
                                 section="objective", sweep="runtime")
    zcr_sigma: float = option(0.05, "std of zCR's latent perturbation eps", section="objective", sweep="runtime")
    lecam_weight: float = option(0.0, "LeCam regularization of D (Tseng et al. 2021; 0.3 for BigGAN on CIFAR): "
                                 "outputs pulled towards EMA anchors of D(real), D(fake); 0: off",
                                 section="objective", sweep="runtime")
    lecam_decay: float = option(0.99, "EMA decay of LeCam's anchors", section="objective", sweep="group")
    topk_gamma: float = option(0.0, "top k training of G (Sinha et al. 2020; 0.99 in the paper): G's loss uses the "
                               "k fakes D rates highest, k = max(ceil(gamma^(step // --topk_decay_steps) B), "
                               "ceil(--topk_min_fraction B)); 0 or 1: off", section="objective", sweep="group")
    topk_min_fraction: float = option(0.5, "top k training: the smallest k as a fraction of the batch (nu)",
                                      section="objective", sweep="group")
    topk_decay_steps: int = option(1000, "top k training: train steps per factor gamma (the paper: one epoch)",
                                   section="objective", sweep="group")
    packing: int = option(
        1, "PacGAN packing m (Lin et al. 2018): D judges m samples concatenated along the last axis (features of 2D "
        "data, channels of images), the last of D's input transforms; --batch_size counts samples, so D sees "
        "batch_size/m packed examples (the reference's 100 packed examples: --batch_size=100*m); unconditional "
        "models only (1: off)", section="objective", sweep="group_entry")
    # discriminators with more than one output (jaxgan.models.heads, jaxgan.realness, objectives.acgan)
    auxiliary_classifier_weight: float = option(
        0.0, "ACGAN (Odena et al. 2017): > 0 gives D an auxiliary class head (D then unconditioned, G conditional) "
        "and adds this weight times the class cross entropy to D's and G's losses; logs d/class_accuracy_real, "
        "d/class_accuracy_fake; needs --conditional (0: off)", section="objective", sweep="runtime")
    realness_outcomes: int = option(
        20, "--loss=realness: outcomes N of D's realness distribution (D outputs N logits; >= 2; the reference's "
        "default 20, 5 in its 2D script)", section="objective", sweep="group_entry")
    realness_anchors: str = option(
        "gaussian_uniform", "--loss=realness: the anchors A0 (fake) / A1 (real), as the reference builds them: "
        "gaussian_uniform (histograms of a normal / a uniform) or skewnormal (skew normals of shape -5 / +5), "
        "each shifted apart by the reference's skew of 1", section="objective", sweep="group",
        choices="jaxgan.realness:ANCHORS")
    realness_generator: str = option(
        "relativistic_anchor", "--loss=realness: G's objective: relativistic_anchor KL(D(x) || D(G(z))) - KL(A0 || "
        "D(G(z))) (the paper's), relativistic KL(D(x) || D(G(z))) (the reference code's relativisticG), anchors "
        "KL(A1 || D(G(z))) - KL(A0 || D(G(z)))", section="objective", sweep="group",
        choices="jaxgan.realness:GENERATOR_OBJECTIVES")
    # optimization (jaxgan.experiment.make_optimizer, jaxgan.step)
    optimizer: str = option("adam", "adam (--b1, --b2), rmsprop (optax defaults: decay 0.9, no momentum), sgd (no "
                            "momentum)", section="optimization", sweep="group")
    g_lr: float = option(2e-4, "generator learning rate", section="optimization", sweep="runtime")
    d_lr: float = option(2e-4, "discriminator learning rate", section="optimization", sweep="runtime")
    b1: float = option(0.5, "Adam beta1 (--optimizer=adam only: rmsprop and sgd refuse it)", section="optimization",
                       sweep="group")
    b2: float = option(0.999, "Adam beta2 (--optimizer=adam only: rmsprop and sgd refuse it)",
                       section="optimization", sweep="group")
    lr_decay: str = option("none", "none, linear (to 0 at --steps)", section="optimization", sweep="group")
    g_ortho_weight: float = option(0.0, "BigGAN's orthogonal regularization of G's weights: W W^T pulled "
                                   "towards a diagonal matrix (BigGAN: 0.0001; 0: off)", section="optimization", sweep="group")
    d_ortho_weight: float = option(0.0, "orthogonal regularization of D's weights (0: off)", section="optimization",
                                   sweep="group")
    n_critic: int = option(1, "D updates per G update", section="optimization", sweep="group_entry")
    update_order: str = option("alternating", "alternating: G's gradient is taken at D's parameters after the step's "
                               "D updates; simultaneous: at those before them (simultaneous gradient descent, as "
                               "PacGAN's reference code)", section="optimization", sweep="group")
    g_latents: str = option("fresh", "fresh: the G update draws its own latents; reuse: it uses the last D update's "
                            "latents and G forward (one draw and one G forward serve both players, as the reference "
                            "loops of PyTorch's DCGAN and PacGAN)", section="optimization", sweep="group")
    batch_size: int = option(64, "global batch size (per D update)", section="optimization", sweep="group_entry")
    seed: int = option(0, "seed of init, latents and data order", section="optimization")
    ema_decay: float = option(0.0, "EMA decay of G's weights (0: off)", section="optimization", sweep="runtime")
    ema_start: int = option(0, "step at which the EMA starts", section="optimization", sweep="group")
    ema_kimg: float = option(0.0, "EMA of G's weights by half-life in thousands of images (StyleGAN2: 10), instead "
                             "of --ema_decay: decay 0.5 ** (batch / (1000 ema_kimg)) (0: off)",
                             section="optimization", sweep="runtime")
    ema_rampup: float = option(0.0, "--ema_kimg's ramp-up: the half-life is at most this fraction of the images "
                               "seen so far (StyleGAN2-ADA: 0.05; 0: off)", section="optimization", sweep="runtime")
    # loop (jaxgan.training: length, bookkeeping, reliability, performance)
    steps: int = option(10000, "G updates to train for", section="loop", resume=True)
    log_every: int = option(100, "steps between metric lines", section="loop", resume=True)
    sample_every: int = option(0, "steps between sample pictures (0: only at the end)", section="loop", resume=True)
    checkpoint_every: int = option(1000, "steps between checkpoints", section="loop", resume=True)
    keep_checkpoints: int = option(3, "checkpoints to keep", section="loop", resume=True)
    num_samples: int = option(2500, "samples for the final 2D plot and mode metrics", section="loop", sweep="shape",
                              resume=True)
    on_nan: str = option("stop", "what a NaN/Inf loss or parameter does: stop (exit code 3), skip (drop that "
                         "update), rollback (restore the last good checkpoint with lower learning rates)",
                         section="loop", resume=True)
    nan_lr_factor: float = option(0.5, "--on_nan=rollback multiplies the learning rates by this (0 < f < 1)",
                                  section="loop", resume=True)
    max_rollbacks: int = option(3, "--on_nan=rollback stops after this many rollbacks", section="loop", resume=True)
    steps_per_call: int = option(1, "train steps per jitted call (lax.scan): cuts dispatch overhead for small (MLP) "
                                 "models; log, checkpoint, sample and eval intervals must be multiples of it",
                                 section="loop", resume=True)  # the same steps, run k per jitted call
    # mesh (jaxgan.parallel): a ("seed", "data") device mesh
    mesh_data: int = option(0, "devices on the data axis: the global batch is split, gradients averaged (0: all "
                            "devices; 1 on a single-process CPU run, whose simulated devices share the cores)",
                            section="mesh")
    mesh_seed: int = option(1, "devices on the seed axis: stacked runs of a sweep split over devices (1 for "
                            "launch/train.py)", section="mesh")
    # evaluation during training (jaxgan.evaluation): scores logged as eval/<name>
    eval_every: int = option(0, "steps between evaluations logged as eval/<name> (0: off; jaxgan.evaluation, as "
                             "launch/evaluate.py)", section="evaluation", resume=True)
    eval_metrics: str = option("fid,is", "metrics of --eval_every: comma-separated subset of fid, kid, is, pr",
                               section="evaluation", resume=True)
    eval_num_samples: int = option(2000, "generated samples per --eval_every evaluation", section="evaluation",
                                   resume=True)
    eval_inception_weights: str = option("", "converted FID Inception .npz for --eval_every on non-digits data "
                                         "(python -m jaxgan.metrics.features convert IN.pth OUT.npz)",
                                         section="evaluation", resume=True)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict) -> "Config":
        """A config from a stored ``{field: value}`` (a workdir's config.json): unknown keys are dropped (a
        newer version's fields), missing ones take their defaults (an older version's)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    @property
    def is_toy(self) -> bool:
        return self.dataset in toy.TOY_DATASETS


def fields_where(**metadata) -> tuple[str, ...]:
    """Names of the `Config` fields whose metadata equal ``metadata`` (e.g. ``sweep="runtime"``), in declaration
    order."""
    return tuple(f.name for f in dataclasses.fields(Config)
                 if all(f.metadata.get(k) == v for k, v in metadata.items()))


def section_fields(section: str) -> tuple[str, ...]:
    """The fields one consumer reads (``section`` from `SECTIONS`)."""
    if section not in SECTIONS:
        raise ValueError(f"section {section!r} is not one of {SECTIONS}")
    return fields_where(section=section)


def resumable_fields() -> tuple[str, ...]:
    """Fields a rerun on the same workdir may change (extending a run, logging more often, ...)."""
    return fields_where(resume=True)


def field_help(name: str) -> str:
    return _fields()[name].metadata["help"]


def field_type(name: str) -> type:
    """The Python type of a field (bool, int, float or str), for parsing flag and sweep values."""
    return _types()[name]


@functools.cache
def _fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(Config)}


@functools.cache
def _types() -> dict[str, type]:
    return typing.get_type_hints(Config)
