"""An experiment: the pieces a config names (models, objective, optimizers, data).

The config is the plain dataclass `Config` of `jaxgan.config` (re-exported here, with `ConfigError`).
``launch/train.py`` turns absl flags into a `Config`; the library never reads flags. `validate` checks a config
before anything is compiled or loaded and raises `ConfigError` naming the bad flag and what is accepted.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from jaxgan import objectives, realness, regularizers
from jaxgan.config import Config, ConfigError  # re-exported: defined in jaxgan.config
from jaxgan.data import toy


OPTIMIZERS = ("adam", "rmsprop", "sgd")
LR_DECAYS = ("none", "linear")


def validate(config: Config, *, device_count: int | None = None) -> None:
    """Raises `ConfigError` for the first bad value, naming the flag and what is accepted.

    The checks follow the config's sections (`jaxgan.config.SECTIONS`): the names first (``--dataset``,
    ``--loss``, ``--penalty``, ``--model``), then data (`jaxgan.data.checks`), model (with
    `jaxgan.models.validate_image_config`), objective, optimization, loop, mesh, evaluation, then the ranges of
    every field and the rules across sections. Cheap: builds no model (only `_validate_model_size`, for
    widths beyond the usual ones, counts parameters with `jax.eval_shape`).

    ``device_count``: the devices a data-parallel image run splits the batch over (None: not checked).
    """
    from jaxgan.data import checks as data_checks
    _validate_dataset_name(config)
    _validate_names(config)
    data_checks.validate_config(config)
    _validate_model(config)
    _validate_objective(config)
    toolbox_validate(config)
    _validate_optimization(config)
    _validate_loop(config)
    _validate_mesh(config, device_count)
    _validate_evaluation(config)
    _validate_ranges(config)
    _validate_combinations(config)
    _validate_flags_apply(config)
    _validate_model_size(config)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _check_at_least(config: Config, names: tuple[str, ...], low: int) -> None:
    for name in names:
        value = getattr(config, name)
        _check(value >= low, f"--{name} must be >= {low}, got {value}")


def _check_nonnegative_finite(config: Config, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(config, name)
        _check(math.isfinite(value) and value >= 0, f"--{name} must be a finite number >= 0, got {value}")


def _validate_names(config: Config) -> None:
    """--loss, --penalty, --model (and whether the model takes the dataset's kind of data)."""
    from jaxgan import models  # lazy: image models pull in more modules
    _check(config.loss in objectives.LOSSES, f"--loss={config.loss!r} is not one of {sorted(objectives.LOSSES)}")
    _check(config.penalty in objectives.PENALTIES,
           f"--penalty={config.penalty!r} is not one of {sorted(objectives.PENALTIES)}")
    spec = models.get_spec(config.model)  # an unknown --model is a ConfigError listing the registered ones
    if config.is_toy:
        _check(spec.data == "2d", f"--model={config.model} does not take 2D data ({config.dataset}); use "
                                  f"--model={' or '.join(models.models_for('2d'))}")
    else:
        _check(spec.data == "image",
               f"--model={config.model} is for the 2D datasets {toy.TOY_DATASETS}; for --dataset={config.dataset} "
               f"use one of {models.models_for('image')}")


def _validate_model(config: Config) -> None:
    """The model section: sizes, and what the chosen model accepts (`jaxgan.models.validate_image_config`)."""
    from jaxgan import models
    _check_at_least(config, ("depth",), 1)
    _check_at_least(config, ("latent_dim", "width", "g_width", "d_width", "attention_resolution"), 0)
    if config.is_toy:
        _check(not config.d_normalization,
               f"--d_normalization applies to --model=dcgan, not --model={config.model} on {config.dataset}")
    else:
        models.validate_image_config(config)


def label_smoothing_losses() -> tuple[str, ...]:
    """The ``--loss`` names whose objective takes the run-time hparam ``label_smoothing`` (`objectives.LOSSES`)."""
    return tuple(name for name, make in objectives.LOSSES.items() if "label_smoothing" in make().hparams)


def _validate_objective(config: Config) -> None:
    """The objective section: weights, label smoothing, instance noise, weight clipping."""
    _check_nonnegative_finite(config, ("penalty_weight", "clip_weights", "instance_noise", "label_smoothing"))
    _check(config.label_smoothing < 1, f"--label_smoothing must be in [0, 1), got {config.label_smoothing}")
    smoothing = label_smoothing_losses()
    _check(not config.label_smoothing or config.loss in smoothing,
           f"--label_smoothing applies to --loss={' or '.join(smoothing)}, not {config.loss}")
    _check_at_least(config, ("instance_noise_anneal_steps",), 0)
    _check(config.penalty == "none" or config.penalty_weight > 0,
           f"--penalty={config.penalty} needs --penalty_weight > 0, got {config.penalty_weight}")
    _check(not (config.clip_weights and config.penalty == "gradient_penalty"),
           "--clip_weights and --penalty=gradient_penalty are alternatives (WGAN vs WGAN-GP); choose one")
    _check(not config.instance_noise_anneal_steps or config.instance_noise > 0,
           f"--instance_noise_anneal_steps={config.instance_noise_anneal_steps} needs --instance_noise > 0")
    regularizers.validate(config)


def toolbox_validate(config: Config) -> None:
    """The toolbox's options, each checked by its own module: augmentation, packing, Realness GAN, the
    discriminator heads (ACGAN), StyleGAN2's flags and the 2D fixed training set."""
    from jaxgan import augment, packing
    from jaxgan.data import checks as data_checks
    from jaxgan import models
    from jaxgan.models import stylegan2
    augment.validate(config)
    packing.validate(config)
    realness.validate(config)
    models.validate_heads(config)
    stylegan2.validate_flags(config)
    data_checks.validate_toy_train_size(config)


def _validate_optimization(config: Config) -> None:
    """The optimization section (`make_optimizer`, the step): learning rates, betas, EMA, batch, critic steps."""
    for name in ("g_lr", "d_lr"):
        value = getattr(config, name)
        _check(math.isfinite(value) and value > 0, f"--{name} must be > 0, got {value}")
    for name in ("b1", "b2"):
        value = getattr(config, name)
        _check(0 <= value < 1, f"--{name} must be in [0, 1), got {value}")
    _check_nonnegative_finite(config, ("ema_decay",))
    _check(config.ema_decay < 1, f"--ema_decay must be in [0, 1), got {config.ema_decay}")
    _check_at_least(config, ("n_critic", "batch_size"), 1)
    _check_at_least(config, ("ema_start",), 0)
    _check(config.optimizer in OPTIMIZERS, f"--optimizer={config.optimizer!r} is not one of {OPTIMIZERS}")
    _check(config.lr_decay in LR_DECAYS, f"--lr_decay={config.lr_decay!r} is not one of {LR_DECAYS}")
    from jaxgan.step import G_LATENTS, UPDATE_ORDERS
    _check(config.update_order in UPDATE_ORDERS,
           f"--update_order={config.update_order!r} is not one of {UPDATE_ORDERS}")
    _check(config.g_latents in G_LATENTS, f"--g_latents={config.g_latents!r} is not one of {G_LATENTS}")
    _check(not config.ema_start or config.ema_decay > 0, f"--ema_start={config.ema_start} needs --ema_decay > 0")
    _validate_ema_half_life(config)


def _validate_ema_half_life(config: Config) -> None:
    """StyleGAN2's EMA by half-life (--ema_kimg, --ema_rampup), an alternative to --ema_decay."""
    _check_nonnegative_finite(config, ("ema_kimg",))
    _check(math.isfinite(config.ema_rampup) and 0 <= config.ema_rampup <= 1,
           f"--ema_rampup must be in [0, 1], got {config.ema_rampup}")
    _check(not (config.ema_kimg and config.ema_decay),
           f"--ema_kimg={config.ema_kimg} and --ema_decay={config.ema_decay} both set the EMA of G; pass one")


def _validate_loop(config: Config) -> None:
    """The loop section (`jaxgan.training`): length, intervals, the NaN policy, steps per call, dtypes."""
    from jaxgan.reliability import NAN_POLICIES
    _check_at_least(config, ("steps", "log_every", "checkpoint_every", "keep_checkpoints", "num_samples"), 1)
    _check_at_least(config, ("sample_every",), 0)
    _validate_performance(config)
    _check(config.on_nan in NAN_POLICIES, f"--on_nan={config.on_nan!r} is not one of {NAN_POLICIES}")
    _check(math.isfinite(config.nan_lr_factor) and 0 < config.nan_lr_factor < 1,
           f"--nan_lr_factor must be in (0, 1), got {config.nan_lr_factor}")
    _check_at_least(config, ("max_rollbacks",), 1)


def _validate_mesh(config: Config, device_count: int | None) -> None:
    """The mesh section (`jaxgan.parallel`): axis sizes and the global batch they split."""
    _check(config.mesh_data >= 0, f"--mesh_data must be >= 0 (0: all devices), got {config.mesh_data}")
    _check(config.mesh_seed >= 1, f"--mesh_seed must be >= 1, got {config.mesh_seed}")
    _check(not config.mesh_data or config.batch_size % config.mesh_data == 0,
           f"--batch_size={config.batch_size} (the global batch) is not divisible by --mesh_data={config.mesh_data}")
    if device_count and not config.is_toy and not config.mesh_data:
        _check(config.batch_size % device_count == 0,
               f"--batch_size={config.batch_size} is not divisible by the {device_count} devices; use a multiple "
               f"of {device_count}")


COMPUTE_DTYPES = ("float32", "bfloat16")
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Config)}


def _validate_dataset_name(config: Config) -> None:
    """--dataset: named before --model, so a typo (``--dataset=mnits`` with the default --model=mlp) blames it."""
    from jaxgan.data.images import ACCEPTED_NAMES
    name = config.dataset
    if not name.strip() or name.strip() == "folder:":
        raise ConfigError(f"--dataset={name!r} is empty; accepted: {', '.join(toy.TOY_DATASETS)} (2D) or "
                          f"{ACCEPTED_NAMES}")
    from jaxgan.models import MODELS, models_for
    spec = MODELS.get(config.model)
    if not config.is_toy and spec is not None and spec.data == "2d":
        raise ConfigError(f"--dataset={name!r} is not a 2D dataset ({', '.join(toy.TOY_DATASETS)}), the data of "
                          f"--model={config.model}; for an image dataset ({ACCEPTED_NAMES}) pass --model="
                          f"{', '.join(models_for('image'))}")


MAX_PARAMETERS = 2**28  # per network: 1 GiB of float32 weights, 3 GiB with Adam's moments


def _validate_model_size(config: Config) -> None:
    """Refuses --width/--latent_dim values whose networks could not be allocated (an abort, not an error).

    Counted with `jax.eval_shape` (no memory), and only for widths or latent sizes beyond the usual ones.
    """
    from jaxgan import models
    g_width, d_width = models.model_widths(config)
    if max(g_width, d_width) <= 1024 and config.latent_dim <= 1024:
        return
    shape = (2,) if config.is_toy else (config.image_size, config.image_size, config.channels)
    num_classes = 10 if config.conditional else 0
    generator, discriminator = models.build_models(config, shape, num_classes)
    latent = config.latent_dim or generator.latent_dim
    labels = jnp.zeros((1,), jnp.int32) if num_classes else None
    for name, net, x in (("G", generator, jnp.zeros((1, latent))), ("D", discriminator, jnp.zeros((1, *shape)))):
        variables = jax.eval_shape(lambda n=net, x=x: n.init(jax.random.key(0), x, labels, train=False))
        count = sum(math.prod(v.shape) for v in jax.tree.leaves(variables))
        if count > MAX_PARAMETERS:
            raise ConfigError(f"--width={config.width} / --latent_dim={config.latent_dim} give {config.model}'s {name} "
                              f"{count:.3g} parameters; accepted: up to {MAX_PARAMETERS:.3g} per network")


def inapplicable_flags(config: Config) -> dict[str, str]:
    """{flag: what it applies to} for the fields the rest of ``config`` would ignore, whatever their values."""
    rules = [  # (flag, it applies, to what)
        ("penalty_weight", config.penalty != "none", "a --penalty (gradient_penalty, r1, r2, dragan), not "
                                                     "--penalty=none"),
        ("nan_lr_factor", config.on_nan == "rollback", f"--on_nan=rollback, not --on_nan={config.on_nan}"),
        ("max_rollbacks", config.on_nan == "rollback", f"--on_nan=rollback, not --on_nan={config.on_nan}"),
        ("depth", config.model == "mlp", f"--model=mlp, not --model={config.model}"),
        ("mixture_radius", config.dataset == "ring8", f"--dataset=ring8, not --dataset={config.dataset}"),
        ("mixture_spacing", config.dataset == "grid25", f"--dataset=grid25, not --dataset={config.dataset}"),
        ("mixture_modes", config.dataset != "lines", "--dataset=ring8 or grid25, not --dataset=lines"),
        ("toy_train_size", config.is_toy, f"the 2D datasets, not --dataset={config.dataset}"),
        ("mixture_std", config.dataset != "lines", "--dataset=ring8 or grid25, not --dataset=lines"),
        ("image_size", not config.is_toy, f"image datasets, not the 2D --dataset={config.dataset}"),
        ("channels", not config.is_toy, f"image datasets, not the 2D --dataset={config.dataset}"),
        ("attention_resolution", not config.is_toy, f"--model=sagan, not the 2D --dataset={config.dataset}"),
        ("conv_impl", not config.is_toy, f"the image models' convolutions, not the 2D --dataset={config.dataset}"),
        ("data_dir", not config.is_toy and config.dataset != "digits" and not config.dataset.startswith("folder:"),
         f"TFDS datasets, not --dataset={config.dataset}"),
        ("subset", not config.is_toy, f"image datasets, not the 2D --dataset={config.dataset}"),
        ("skip_corrupt_images", config.dataset.startswith("folder:"), f"--dataset=folder:PATH, not "
                                                                      f"--dataset={config.dataset}"),
        ("eval_metrics", config.eval_every > 0, "evaluation during training (--eval_every > 0)"),
        ("eval_num_samples", config.eval_every > 0, "evaluation during training (--eval_every > 0)"),
        ("eval_inception_weights", config.eval_every > 0, "evaluation during training (--eval_every > 0)"),
        ("b1", config.optimizer == "adam", f"--optimizer=adam (Adam's beta1; --optimizer={config.optimizer} has "
                                          f"none)"),
        ("b2", config.optimizer == "adam", f"--optimizer=adam (Adam's beta2; --optimizer={config.optimizer} has "
                                          f"none)"),
        ("augment", not config.is_toy, f"image datasets, not the 2D --dataset={config.dataset}"),
        *[(name, config.augment == "ada", f"--augment=ada, not --augment={config.augment!r}")
          for name in ("ada_target", "ada_interval", "ada_kimg")],
        ("realness_outcomes", config.loss == "realness", f"--loss=realness, not --loss={config.loss}"),
        *[(name, config.model == "stylegan2", f"--model=stylegan2, not --model={config.model}")
          for name in ("mapping_layers", "style_mixing", "truncation_psi", "path_length_weight")],
        ("ema_rampup", config.ema_kimg > 0, "--ema_kimg > 0 (the EMA half-life)"),
        ("realness_anchors", config.loss == "realness", f"--loss=realness, not --loss={config.loss}"),
        ("realness_generator", config.loss == "realness", f"--loss=realness, not --loss={config.loss}"),
    ]
    rules += regularizers.inapplicable(config)
    return {name: target for name, applies, target in rules if not applies}


def _validate_flags_apply(config: Config) -> None:
    """A field that differs from its default but that the rest of the config ignores is an error.

    ``b1``/``b2`` are exempt here: a sweep group that switches to rmsprop or sgd inherits the base's Adam betas.
    The launchers also refuse flags given explicitly (at any value) that do not apply, b1/b2 included
    (`jaxgan.cli.common.check_explicit_flags`).
    """
    for name, target in inapplicable_flags(config).items():
        if name not in ("b1", "b2") and getattr(config, name) != _DEFAULTS[name]:
            raise ConfigError(f"--{name}={getattr(config, name)} has no effect: it applies to {target}")
    if config.ema_decay and config.ema_start >= config.steps:
        raise ConfigError(f"--ema_start={config.ema_start} must be < --steps={config.steps}: the EMA of G's "
                          f"weights would never start")


def _validate_performance(config: Config) -> None:
    """--steps_per_call and --compute_dtype."""
    k = config.steps_per_call
    if k < 1:
        raise ConfigError(f"--steps_per_call must be >= 1, got {k}")
    if k > 1:
        for name in ("log_every", "checkpoint_every", "sample_every", "eval_every"):
            value = getattr(config, name)
            if value and value % k:
                raise ConfigError(f"--{name}={value} must be a multiple of --steps_per_call={k} (logs, checkpoints, "
                                  f"samples and evaluations happen between jitted calls)")
    if config.compute_dtype not in COMPUTE_DTYPES:
        raise ConfigError(f"--compute_dtype={config.compute_dtype!r} is not one of {COMPUTE_DTYPES}")
    if config.compute_dtype != "float32" and config.model == "mlp":
        raise ConfigError(f"--compute_dtype={config.compute_dtype} applies to the image models, not --model=mlp")
    _validate_conv_impl(config)


def _validate_conv_impl(config: Config) -> None:
    """--conv_impl: one of jaxgan.models.layers.IMPLEMENTATIONS; "dnnl" needs oneDNN here."""
    from jaxgan import native
    from jaxgan.models import layers, onednn
    if config.conv_impl not in layers.IMPLEMENTATIONS:
        raise ConfigError(f"--conv_impl={config.conv_impl!r} is not one of {', '.join(layers.IMPLEMENTATIONS)}")
    if config.conv_impl == "dnnl" and not (jax.default_backend() == "cpu" and onednn.available()):
        why = native.why_unavailable("onednn_conv") or "extension available"
        raise ConfigError(f"--conv_impl=dnnl needs the cpu backend and jaxgan's oneDNN extension ("
                          f"{jax.default_backend()}; {why}); use --conv_impl=auto or xla")


def _validate_evaluation(config: Config) -> None:
    """--eval_every, --eval_metrics, --eval_num_samples (jaxgan.evaluation's part of `validate`)."""
    from jaxgan.metrics import registry  # each metric states its minimum sample count
    metrics = [m.strip() for m in config.eval_metrics.split(",") if m.strip()]
    accepted = tuple(registry.METRICS)
    if config.eval_every < 0:
        raise ConfigError(f"--eval_every must be >= 0 (0: off), got {config.eval_every}")
    if config.eval_every and config.is_toy:
        raise ConfigError(f"--eval_every is for image runs; --dataset={config.dataset} reports mode coverage instead")
    if config.eval_every and not metrics:
        raise ConfigError(f"--eval_every={config.eval_every} needs --eval_metrics (a subset of {','.join(accepted)})")
    unknown = [m for m in metrics if m not in accepted]
    if unknown:
        raise ConfigError(f"--eval_metrics={config.eval_metrics!r}: unknown {unknown}; accepted: a comma-separated "
                          f"subset of {','.join(accepted)}")
    low = max(2, registry.min_samples(metrics))
    if config.eval_num_samples < low:
        raise ConfigError(f"--eval_num_samples must be >= {low} for --eval_metrics={config.eval_metrics}, got "
                          f"{config.eval_num_samples}")


_MAXIMA = (("width", 2**16), ("g_width", 2**16), ("d_width", 2**16), ("latent_dim", 2**16), ("depth", 256),
           ("n_critic", 1000), ("batch_size", 2**20), ("num_samples", 10**7), ("eval_num_samples", 10**7))


def _validate_ranges(config: Config) -> None:
    """Every int fits the device's int32 (seeds: uint32), every float is finite, and sizes are plausible."""
    for field in dataclasses.fields(config):  # steps and counters are int32 on device; seeds are uint32
        value = getattr(config, field.name)
        if isinstance(value, int) and not isinstance(value, bool):
            low, high = (0, 2**32 - 1) if field.name == "seed" else (-2**31, 2**31 - 1)
            _check(low <= value <= high, f"--{field.name}={value} is out of range; accepted: {low} to {high}")
        elif isinstance(value, float):
            _check(math.isfinite(value), f"--{field.name} must be a finite number, got {value}")
    for name, high in _MAXIMA:
        _check(getattr(config, name) <= high, f"--{name}={getattr(config, name)} is implausibly large; accepted: "
                                              f"up to {high}")


def _validate_combinations(config: Config) -> None:
    """Rules across sections: a gradient penalty needs a D without BatchNorm (the model registry's
    ``d_uses_batch_norm``, read from the config: no model is built)."""
    from jaxgan import models
    terms = build_objective(config).batch_norm_free_terms
    if terms and models.get_spec(config.model).d_uses_batch_norm(config):
        what = f"--penalty={config.penalty}" if config.penalty in terms else f"the terms {', '.join(terms)}"
        _check(False, f"{what} needs per-example gradients or D on batches of its own, but the {config.model} "
                      f"discriminator uses BatchNorm, which couples the examples of a batch; set "
                      f"--d_normalization=layer_norm or none")


def make_optimizer(config: Config, learning_rate: float, b1: float | None = None, *,
                   updates_per_step: int = 1, clip_weights: float = 0.0,
                   ortho_weight: float = 0.0) -> optax.GradientTransformation:
    """The optimizer named by ``--optimizer`` with an injectable learning rate (for sweeps and rollback).

    ``adam`` uses ``b1``/``b2``; ``rmsprop`` (optax's defaults: decay 0.9, no momentum, as in the WGAN paper) and
    ``sgd`` (no momentum) take no betas: the launchers refuse ``--b1``/``--b2`` given with them.

    ``--lr_decay=linear`` scales the updates from 1 to 0 over ``config.steps * updates_per_step`` updates: the
    schedule counts optimizer updates, and the discriminator makes ``n_critic`` of them per training step.

    ``clip_weights`` c > 0 (D's optimizer, ``--clip_weights``) adds weight clipping to [-c, c] as the last
    transformation (`jaxgan.step.clip_weights_transform`).

    ``ortho_weight`` > 0 (``--g_ortho_weight``, ``--d_ortho_weight``) chains BigGAN's orthogonal regularization
    before the optimizer: its gradient joins the loss's (`jaxgan.regularizers.orthogonal`).
    """
    b1 = config.b1 if b1 is None else b1
    if config.optimizer == "adam":
        opt = optax.inject_hyperparams(optax.adam)(learning_rate=learning_rate, b1=b1, b2=config.b2)
    elif config.optimizer == "rmsprop":
        opt = optax.inject_hyperparams(optax.rmsprop)(learning_rate=learning_rate)
    else:
        opt = optax.inject_hyperparams(optax.sgd)(learning_rate=learning_rate)
    if config.lr_decay == "linear":
        opt = optax.chain(opt, optax.scale_by_schedule(
            optax.linear_schedule(1.0, 0.0, config.steps * updates_per_step)))
    if clip_weights:
        from jaxgan.step import clip_weights_transform
        opt = clip_weights_transform(clip_weights, opt)  # no chain level: the state layout of earlier versions
    if ortho_weight:
        opt = optax.chain(regularizers.add_orthogonal_regularization(ortho_weight), opt)
    return opt


def build_objective(config: Config) -> objectives.Objective:
    from jaxgan import augment
    if config.loss == "realness":  # N and the anchors from the config (validate refuses penalties with it)
        objective = objectives.realness_gan(config.realness_outcomes, config.realness_anchors,
                                            generator=config.realness_generator)
    else:
        objective = objectives.build(config.loss, "none", config.penalty_weight, config.label_smoothing)
    if config.penalty != "none":  # lazy (every k D updates, weight x k) with --penalty_every=k > 1
        penalty = objectives.PENALTIES[config.penalty]().weighted_by("penalty_weight", config.penalty_weight)
        objective = objective + (penalty.every(config.penalty_every) if config.penalty_every > 1 else penalty)
    if config.auxiliary_classifier_weight:  # ACGAN: D's class head (jaxgan.models.heads) and its terms
        objective = objective + objectives.acgan().weighted_by("auxiliary_classifier_weight",
                                                               config.auxiliary_classifier_weight)
    augmentation = augment.objective(config.augment, batch_size=config.batch_size, ada_target=config.ada_target,
                                     ada_interval=config.ada_interval, ada_kimg=config.ada_kimg)
    if augmentation is not None:  # before instance noise and packing: they see augmented images
        objective = objective + augmentation
    if config.instance_noise:
        objective = objective + objectives.instance_noise(config.instance_noise,
                                                          config.instance_noise_anneal_steps or None)
    objective = regularizers.add_to_objective(objective, config)  # CR, bCR, zCR, LeCam; top-k on G's loss
    if config.path_length_weight:  # StyleGAN2's lazy path length regularization of G
        from jaxgan.regularizers import path_length
        objective = objective + path_length.path_length(config.path_length_weight)
    if config.packing > 1:  # keep it LAST: it changes the example shape the other transforms would see
        from jaxgan.packing import packing
        objective = objective + packing(config.packing)
    return objective


def initial_hparams(config: Config, objective: objectives.Objective) -> dict[str, float]:
    """The run-time hyperparameters of a run: the objective's, the learning rates and the EMA decay."""
    hparams = dict(objective.hparams)
    hparams.update(g_lr=config.g_lr, d_lr=config.d_lr)
    if config.ema_decay:
        hparams["ema_decay"] = config.ema_decay
    if config.ema_kimg:  # the half-life form (`jaxgan.step.ema_update`)
        hparams.update(ema_kimg=config.ema_kimg, ema_rampup=config.ema_rampup, ema_batch=float(config.batch_size))
    return hparams


def uses_ema(config: Config) -> bool:
    """Whether samples are drawn with G's EMA weights: ``--ema_decay`` or ``--ema_kimg`` is on."""
    return bool(config.ema_decay or config.ema_kimg)


def sample_params(state, config: Config):
    """The generator weights samples are drawn with: the EMA weights when `uses_ema`, else the raw ones."""
    return state.g_ema_params if uses_ema(config) else state.g.params


def toy_mixture_options(config: Config) -> dict[str, Any]:
    return dict(n_modes=config.mixture_modes or None, radius=config.mixture_radius or None,
                std=config.mixture_std or None, spacing=config.mixture_spacing or None,
                train_size=config.toy_train_size)


@dataclasses.dataclass
class Experiment:
    """The pieces of a run built from a config."""
    config: Config
    generator: Any
    discriminator: Any
    objective: objectives.Objective
    g_optimizer: optax.GradientTransformation
    d_optimizer: optax.GradientTransformation
    data_shape: tuple[int, ...]
    num_classes: int
    hparams: dict[str, float]
    mixture: Any = None  # the GaussianMixture of 2D datasets (for mode metrics and plots)

    def init(self, key: jax.Array, hparams: dict | None = None):
        from jaxgan.state import init_gan_state
        return init_gan_state(key, self.generator, self.discriminator, self.g_optimizer, self.d_optimizer,
                              data_shape=self.data_shape, hparams=self.hparams if hparams is None else hparams,
                              num_classes=self.num_classes, transforms=self.objective.transforms)

    def train_step(self, axis_name: str | None = None) -> Callable:
        from jaxgan.step import make_train_step
        c = self.config
        return make_train_step(self.generator, self.discriminator, self.objective, self.g_optimizer, self.d_optimizer,
                               n_critic=c.n_critic, ema_start=c.ema_start,
                               instance_noise_anneal_steps=c.instance_noise_anneal_steps or None,
                               num_classes=self.num_classes, axis_name=axis_name, update_order=c.update_order,
                               g_latents=c.g_latents)


def build(config: Config, *, num_classes: int | None = None, axis_name: str | None = None,
          validated: bool = False) -> Experiment:
    """Builds models, objective and optimizers. ``num_classes`` comes from the dataset for image data.

    ``validated``: the caller has run `validate` on ``config`` (as `jaxgan.training.train` does, with the device
    count, before it touches the workdir); else build validates it first."""
    from jaxgan import models
    if not validated:
        validate(config)
    objective = build_objective(config)
    mixture = None
    if config.is_toy:
        _, mixture = toy.toy_sampler(config.dataset, **toy_mixture_options(config))
        data_shape = (2,)
        num_classes = 0
    else:
        data_shape = (config.image_size, config.image_size, config.channels)
        if config.conditional and num_classes is not None and num_classes < 2:
            raise ConfigError(f"--conditional needs a labelled dataset; --dataset={config.dataset} has "
                              f"{num_classes} classes (a folder: dataset is unlabelled)")
        num_classes = (num_classes or 0) if config.conditional else 0
    # a gradient penalty with BatchNorm in D is refused by validate (from the config) and by the step (from D)
    generator, discriminator = models.build_models(config, data_shape, num_classes, axis_name=axis_name)
    d_optimizer = make_optimizer(config, config.d_lr, updates_per_step=config.n_critic,
                                 clip_weights=config.clip_weights, ortho_weight=config.d_ortho_weight)
    return Experiment(config, generator, discriminator, objective,
                      make_optimizer(config, config.g_lr, ortho_weight=config.g_ortho_weight), d_optimizer,
                      data_shape, num_classes, initial_hparams(config, objective), mixture)
