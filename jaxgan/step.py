"""The pure train step: ``n_critic`` D updates, then one G update, in one compiled program.

``step = make_train_step(...)``; ``state, metrics = step(state, batch)``. The step has no Python control
flow on traced values, reads its randomness only from ``state.key``, and so works under `jax.jit`, under
`jax.vmap` over stacked states (independent runs), and per device under `jax.shard_map` with an
``axis_name`` (gradients, metrics and cross-replica BatchNorm statistics averaged with `lax.pmean`).

The step is a composition of module-level pure pieces, each taking the static `Game`: `sample_latents`,
`transform_inputs` (D's input transforms), `d_update`, `g_update`, `update_transforms`, `ema_update` and
`finite_flag`. The extension points (docs/extending.md) live in `jaxgan.objectives`: terms that read labels and
auxiliary outputs, lazy terms, input transforms with state in ``GANState.transforms``; weight clipping is an
optax transformation of D's optimizer (`clip_weights_transform`).

Batch convention: ``batch = {"x": [n_critic, B, ...]}`` plus ``"label": [n_critic, B]`` int32 for
class-conditional models; D update ``i`` uses real minibatch ``i`` (a fresh one per critic step, as in
WGAN), and the G update uses the last one where the objective needs D(real) (relativistic losses).

Model outputs: D returns outputs [B] (or [B, ...]) or ``(outputs, aux)`` with a pytree ``aux`` of [B, ...]
arrays (class logits, ...), which terms see as ``real_aux``/``fake_aux``; G returns x or ``(x, aux)``, which G
terms see as ``g_aux``. A generator with ``needs_rng = True`` gets a ``"noise"`` Flax rng stream in the D and G
updates (folded from the latents' key: the keys of other models are unchanged); one with
``absorb_term_values(model_state, g_term_values) -> model_state`` gets its G terms' values after each G update
(StyleGAN2: the path-length running mean in its model state).

Discriminator calls: when D has no BatchNorm, real and fake go through D in one concatenated call; with
BatchNorm they go separately (real, then fake), as in the reference DCGAN, so each BN batch is pure. In
the G update D runs in training mode (batch statistics) but its state updates are discarded. Penalties see
D in inference mode (``train=False``: stored spectral-norm vectors, no updates).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxgan import penalties
from jaxgan.models.sampling import truncated_normal_latents
from jaxgan.objectives import InputTransform, InstanceNoise, Objective, TermInputs, TransformStats
from jaxgan.state import GANState, PlayerState, has_batch_norm

Metrics = dict[str, jax.Array]


def _apply(module: nn.Module, params, model_state, inputs, labels, train: bool, rngs=None):
    """Runs a module; returns (outputs, new model_state). State updates only in training mode. ``rngs``: Flax
    rng streams (generators with ``needs_rng``, see `_g_rngs`)."""
    variables = {"params": params, **model_state}
    if train and model_state:
        out, updates = module.apply(variables, inputs, labels, train=True, mutable=list(model_state), rngs=rngs)
        return out, {**model_state, **updates}
    return module.apply(variables, inputs, labels, train=train, rngs=rngs), model_state


def _g_rngs(game: "Game", key):
    """The ``"noise"`` rng stream of a generator that declares ``needs_rng`` (StyleGAN2's noise inputs and style
    mixing), folded from the latents' key, so the keys of every other model are untouched; else None. The same on
    every device of a data axis, as the latents' key: the generator draws for the global batch and keeps its
    slice (`jaxgan.models.stylegan2`), so N devices compute one device's step."""
    if not getattr(game.generator, "needs_rng", False):
        return None
    return {"noise": jax.random.fold_in(key, 0x6E6F)}


def split_outputs(out) -> tuple[jax.Array, Any]:
    """A model's output -> (main output, auxiliary outputs or None): models may return ``(out, aux)``."""
    if isinstance(out, tuple):
        main, aux = out
        return main, aux
    return out, None


def _float32(module: nn.Module) -> nn.Module:
    """The module computing in float32 (same parameters): gradient penalties differentiate D's input gradient,
    which a bfloat16 ``compute_dtype`` would make too coarse."""
    dtype = getattr(module, "dtype", None)
    return module if dtype is None or jnp.dtype(dtype) == jnp.float32 else module.clone(dtype=jnp.float32)


def _pmean(tree, axis_name):
    return tree if axis_name is None else jax.lax.pmean(tree, axis_name)


def _update_to(p, u, target):
    """An update v with ``p + v`` (float32 rounding) equal to ``target`` where ``p + u`` was outside the clip
    range: ``target - p`` or a neighbouring float; where none lands exactly (|p| much larger than the range, which
    only initial weights are), the neighbour that lands inside it."""
    v = jnp.where(p + u == target, u, target - p)
    up, down = jnp.nextafter(v, jnp.inf), jnp.nextafter(v, -jnp.inf)
    inward = jnp.where(target > 0, down, up)
    return jnp.where(p + v == target, v, jnp.where(p + up == target, up, jnp.where(p + down == target, down, inward)))


def clip_weights_transform(clip_value: float, inner: optax.GradientTransformation | None = None
                           ) -> optax.GradientTransformation:
    """Original WGAN weight clipping as the last link of D's optimizer chain: the updates become those that put
    every parameter at ``clip(p + u, -c, c)``. Unclipped parameters get ``p + u`` bit for bit. A clipped one gets
    ±c exactly where some float update lands there; where none does (``p`` or ``±c - p`` on a coarser float grid
    than c: a weight crossing from +c towards -c, or an initial weight far outside the range), it lands inside
    the range within 2 ulps of max(|p|, c). After `optax.apply_updates` every parameter is in [-c, c].

    Without ``inner`` it is a stateless link for ``optax.chain(optimizer, clip_weights_transform(c))``. With
    ``inner`` it is ``inner`` followed by the clipping, with ``inner``'s own state (no chain level): the
    optimizer state, and so the checkpoints, keep the layout of ``inner`` alone.
    """
    if not clip_value > 0:
        raise ValueError(f"clip_value must be > 0, got {clip_value}")

    def clip(updates, params):
        if params is None:
            raise ValueError("clip_weights_transform needs the params: call update(updates, state, params)")
        clipped = penalties.clip_weights(jax.tree.map(jnp.add, params, updates), clip_value)
        return jax.tree.map(_update_to, params, updates, clipped)

    if inner is None:
        return optax.GradientTransformation(lambda params: optax.EmptyState(),
                                            lambda updates, state, params=None: (clip(updates, params), state))

    def update_fn(updates, state, params=None):
        updates, state = inner.update(updates, state, params)
        return clip(updates, params), state

    return optax.GradientTransformation(inner.init, update_fn)


@dataclasses.dataclass(frozen=True)
class Game:
    """The static parts of a train step (closed over, never traced)."""
    generator: nn.Module
    discriminator: nn.Module
    objective: Objective
    g_optimizer: optax.GradientTransformation
    d_optimizer: optax.GradientTransformation
    n_critic: int = 1
    ema_start: int = 0
    clip_weights: float | None = None  # legacy: prefer `clip_weights_transform` on d_optimizer
    instance_noise_anneal_steps: int | None = None  # legacy: for ``hparams["instance_noise"]`` without a transform
    num_classes: int = 0
    axis_name: str | None = None
    update_order: str = "alternating"  # or "simultaneous": G's gradient at D's parameters before the D updates
    g_latents: str = "fresh"  # or "reuse": the G update uses the last D update's latents and labels

    @property
    def penalty_discriminator(self) -> nn.Module:
        return _float32(self.discriminator)  # penalties run D in float32 (see `_float32`)

    def transforms(self, hparams) -> tuple[InputTransform, ...]:
        """D's input transforms: the objective's, plus instance noise for a state with an ``instance_noise``
        hparam whose objective has no such transform (states built before instance noise became one)."""
        transforms = self.objective.transforms
        if "instance_noise" in hparams and not any(t.name == "instance_noise" for t in transforms):
            transforms = transforms + (InstanceNoise(anneal_steps=self.instance_noise_anneal_steps),)
        return transforms

    @property
    def reuses_g_forward(self) -> bool:
        """The G update differentiates the last D update's G forward (kept as a VJP) instead of running G again:
        with reused latents it is the same forward (same parameters, latents and noise), unless a G term runs
        G itself."""
        return self.g_latents == "reuse" and not self.objective.g_runs_generator

    def per_device(self, key):
        """Per-example randomness (input transforms, penalty interpolation): independent on each device."""
        return key if self.axis_name is None else jax.random.fold_in(key, jax.lax.axis_index(self.axis_name))


def sample_latents(game: Game, key, batch_size):
    """(z [B, latent_dim], fake labels [B] or None) for this device.

    Under a data axis every device holds the same key: it draws the *global* batch of latents and keeps this
    device's slice, so N devices see exactly the latents of one device with the same global batch.
    """
    k_z, k_y = jax.random.split(key)
    shards = 1 if game.axis_name is None else jax.lax.axis_size(game.axis_name)
    z = jax.random.normal(k_z, (shards * batch_size, game.generator.latent_dim), jnp.float32)
    labels = jax.random.randint(k_y, (shards * batch_size,), 0, game.num_classes) if game.num_classes else None
    if game.axis_name is not None:
        start = jax.lax.axis_index(game.axis_name) * batch_size
        z = jax.lax.dynamic_slice_in_dim(z, start, batch_size)
        labels = None if labels is None else jax.lax.dynamic_slice_in_dim(labels, start, batch_size)
    return z, labels


def _transform_state(state: GANState, transform: InputTransform):
    if transform.name in state.transforms:
        return state.transforms[transform.name]
    if jax.tree.leaves(transform.init()):
        raise ValueError(f"GANState.transforms lacks the state of input transform {transform.name!r}; build the "
                         f"state with init_gan_state(..., transforms=objective.transforms)")
    return transform.init()


def transform_inputs(game: Game, state: GANState, key, *batches):
    """Each of ``batches`` [B, ...] through D's input transforms in order. One transform uses ``key`` (split once
    per batch when there are two); several use one split of it each."""
    transforms = game.transforms(state.hparams)
    keys = [key] if len(transforms) == 1 else list(jax.random.split(key, len(transforms)))
    batches = list(batches)
    for transform, k in zip(transforms, keys):
        batch_keys = [k] if len(batches) == 1 else jax.random.split(k, len(batches))
        t_state = _transform_state(state, transform)
        batches = [transform.apply(t_state, bk, x, state.step, state.hparams) for bk, x in zip(batch_keys, batches)]
    return batches


def _d_outputs(game: Game, d_params, d_state, real, fake, real_labels, fake_labels):
    """D on real and fake in training mode: (real_out, fake_out, real_aux, fake_aux, new model state)."""
    if has_batch_norm(d_state):
        real_out, d_state = _apply(game.discriminator, d_params, d_state, real, real_labels, True)
        fake_out, d_state = _apply(game.discriminator, d_params, d_state, fake, fake_labels, True)
        (real_out, real_aux), (fake_out, fake_aux) = split_outputs(real_out), split_outputs(fake_out)
        return real_out, fake_out, real_aux, fake_aux, d_state
    labels = None if real_labels is None else jnp.concatenate([real_labels, fake_labels])
    out, d_state = _apply(game.discriminator, d_params, d_state, jnp.concatenate([real, fake]), labels, True)
    n = real.shape[0]
    out, aux = split_outputs(out)
    real_aux, fake_aux = (jax.tree.map(lambda a: a[:n], aux), jax.tree.map(lambda a: a[n:], aux))
    return out[:n], out[n:], real_aux, fake_aux, d_state


def _d_fn(game: Game, d_params, d_state):
    """Penalties' D: inference mode, float32, main output only; ``(x, labels) -> D(x)``."""
    return lambda x, labels: split_outputs(_apply(game.penalty_discriminator, d_params, d_state, x, labels, False)[0])[0]


def _g_fn(game: Game, g_params, g_state, constant: bool):
    """Terms' G: ``(z, labels) -> G(z)`` in training mode, state updates discarded, main output only;
    ``constant``: no gradient to G's parameters (D terms)."""
    def g_fn(z, labels):
        x = split_outputs(_apply(game.generator, g_params, g_state, z, labels, True)[0])[0]
        return jax.lax.stop_gradient(x) if constant else x
    return g_fn


def d_update(game: Game, state: GANState, g_model_state, real, real_labels, key, counter):
    """One D update on real minibatch ``real`` [B, ...]; ``counter`` is the D-update count (lazy terms).

    Returns (new D player, G's model state after generating the fakes, metrics, (D(real), D(fake)) before the
    update, (z, fake labels) of the fakes, and with ``game.reuses_g_forward`` (fakes, VJP of G's parameters ->
    fakes), else None).
    """
    k_z, k_noise, k_shared = jax.random.split(key, 3)
    k_noise, k_terms = game.per_device(k_noise), game.per_device(k_shared)
    z, fake_labels = sample_latents(game, k_z, real.shape[0])

    def generate(g_params):
        out, new_state = _apply(game.generator, g_params, g_model_state, z, fake_labels, train=True,
                                rngs=_g_rngs(game, k_z))
        return split_outputs(out)[0], new_state

    if game.reuses_g_forward:
        fake, g_vjp, g_model_state = jax.vjp(generate, state.g.params, has_aux=True)
    else:
        (fake, g_model_state), g_vjp = generate(state.g.params), None
    fake = jax.lax.stop_gradient(fake)
    g_forward = None if g_vjp is None else (fake, g_vjp)
    real, fake = transform_inputs(game, state, k_noise, real, fake)
    g_fn = _g_fn(game, state.g.params, g_model_state, constant=True)

    def loss_fn(d_params):
        real_out, fake_out, real_aux, fake_aux, new_state = _d_outputs(game, d_params, state.d.model_state, real,
                                                                       fake, real_labels, fake_labels)
        inputs = TermInputs(real_out, fake_out, real, fake, _d_fn(game, d_params, new_state), k_terms,
                            state.hparams, real_labels, fake_labels, real_aux, fake_aux, None, counter,
                            state.transforms, z, g_fn, game.axis_name, k_shared)
        total, values = game.objective.evaluate("d", inputs)
        return total, (values, new_state, real_out, fake_out)

    (total, (values, d_state, real_out, fake_out)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.d.params)
    grads = _pmean(grads, game.axis_name)
    d_state = _pmean(d_state, game.axis_name)
    updates, opt_state = game.d_optimizer.update(grads, state.d.opt_state, state.d.params)
    params = optax.apply_updates(state.d.params, updates)
    if game.clip_weights is not None:
        params = penalties.clip_weights(params, game.clip_weights)
    real_mean, fake_mean = jnp.mean(real_out), jnp.mean(fake_out)
    metrics = {**{f"d/{k}": v for k, v in values.items()}, "d/total": total,
               "d/grad_norm": optax.tree.norm(grads), "d/real_output": real_mean,
               "d/fake_output": fake_mean, "wasserstein_estimate": real_mean - fake_mean}
    return (PlayerState(params, d_state, opt_state), g_model_state, metrics, (real_out, fake_out), (z, fake_labels),
            g_forward)


def g_update(game: Game, state: GANState, real, real_labels, key, latents=None, g_forward=None):
    """One G update; ``real`` (the last real minibatch, untransformed; transformed here) only where a G term
    needs D(real); ``latents``: the D update's (z, labels) instead of fresh ones; ``g_forward``: the D update's
    (fakes, VJP) to differentiate instead of running G again (`Game.reuses_g_forward`).
    Returns (new G player, metrics)."""
    k_z, k_noise, k_shared = jax.random.split(key, 3)
    k_noise, k_terms = game.per_device(k_noise), game.per_device(k_shared)
    z, fake_labels = sample_latents(game, k_z, real.shape[0]) if latents is None else latents
    d = state.d
    if game.objective.g_needs_real:  # D sees real as in the D update: through its input transforms (packing)
        real, = transform_inputs(game, state, jax.random.fold_in(k_noise, 1), real)

    def g_loss(fake, g_aux, g_fn):
        fake, = transform_inputs(game, state, k_noise, fake)
        fake_out, fake_aux = split_outputs(_apply(game.discriminator, d.params, d.model_state, fake, fake_labels,
                                                  True)[0])
        real_out = real_aux = None
        if game.objective.g_needs_real:
            real_out, real_aux = split_outputs(_apply(game.discriminator, d.params, d.model_state, real, real_labels,
                                                      True)[0])
        inputs = TermInputs(real_out, fake_out, real, fake, _d_fn(game, d.params, d.model_state), k_terms,
                            state.hparams, real_labels, fake_labels, real_aux, fake_aux, g_aux, state.step,
                            state.transforms, z, g_fn, game.axis_name, k_shared)
        return game.objective.evaluate("g", inputs)

    if g_forward is None:
        def loss_fn(g_params):
            out, g_state = _apply(game.generator, g_params, state.g.model_state, z, fake_labels, train=True,
                                  rngs=_g_rngs(game, k_z))
            fake, g_aux = split_outputs(out)
            total, values = g_loss(fake, g_aux, _g_fn(game, g_params, state.g.model_state, constant=False))
            return total, (values, g_state)

        (total, (values, g_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.g.params)
    else:  # the chain rule through the D update's G forward: d loss / d fake, then G's VJP
        fake, g_vjp = g_forward
        (total, values), d_fake = jax.value_and_grad(lambda f: g_loss(f, None, None), has_aux=True)(fake)
        grads, = g_vjp(d_fake)
        g_state = state.g.model_state
    grads = _pmean(grads, game.axis_name)
    if latents is not None:
        # Reused latents: this forward repeats the D update's (same parameters, same z), whose state updates
        # (BatchNorm's running statistics, spectral norm's power iteration, StyleGAN2's w_avg) are already in
        # state.g; keeping them once is the reference loops' single G forward per step.
        g_state = state.g.model_state
    absorb = getattr(game.generator, "absorb_term_values", None)
    if absorb is not None:  # G's state fed by its terms (StyleGAN2's path-length mean); before the device mean
        g_state = absorb(g_state, values)
    g_state = _pmean(g_state, game.axis_name)
    updates, opt_state = game.g_optimizer.update(grads, state.g.opt_state, state.g.params)
    params = optax.apply_updates(state.g.params, updates)
    metrics = {**{f"g/{k}": v for k, v in values.items()}, "g/total": total, "g/grad_norm": optax.tree.norm(grads)}
    return PlayerState(params, g_state, opt_state), metrics


def update_transforms(game: Game, state: GANState, d_outputs) -> tuple[dict, Metrics]:
    """Each input transform's `update` once per step, given (D(real), D(fake)) of the last D update: (new
    ``GANState.transforms``, their metrics)."""
    stats = TransformStats(state.step, state.hparams, *d_outputs, game.axis_name)
    new_states, metrics = dict(state.transforms), {}
    for transform in game.transforms(state.hparams):
        t_state, t_metrics = transform.update(_transform_state(state, transform), stats)
        if transform.name in state.transforms:
            new_states[transform.name] = t_state
        metrics.update(t_metrics)
    return new_states, metrics


def ema_decay(step, hparams):
    """The EMA decay of this step: ``hparams["ema_decay"]``, or by half-life (StyleGAN2's ``ema_kimg``):
    ``0.5 ** (batch / h)`` with h = 1000 ``ema_kimg`` images, at most ``ema_rampup`` times the images seen
    before this step when ``ema_rampup`` > 0 (so the first step copies the weights)."""
    if "ema_kimg" not in hparams:
        return hparams["ema_decay"]
    batch, rampup = hparams["ema_batch"], hparams["ema_rampup"]
    half_life = hparams["ema_kimg"] * 1000.0
    half_life = jnp.where(rampup > 0, jnp.minimum(half_life, step.astype(jnp.float32) * batch * rampup), half_life)
    return jnp.power(0.5, batch / jnp.maximum(half_life, 1e-8))


def ema_update(ema_params, params, step, hparams, ema_start: int = 0):
    """EMA of G's weights with decay `ema_decay` from step ``ema_start`` (the weights themselves before it, and
    always without the ``ema_decay`` / ``ema_kimg`` hparams)."""
    if "ema_decay" not in hparams and "ema_kimg" not in hparams:
        return params
    decay = jnp.where(step >= ema_start, ema_decay(step, hparams), 0.0)
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)


def finite_flag(metrics: Metrics, *params) -> jax.Array:
    """1.0 if every metric and parameter is finite, else 0.0 (float32 scalar)."""
    finite = jnp.all(jnp.asarray([jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(metrics)]))
    params_finite = jnp.all(jnp.asarray([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(params)]))
    return jnp.logical_and(finite, params_finite).astype(jnp.float32)


def check_step_inputs(game: Game, state: GANState, x) -> None:
    """Trace-time checks of a step's inputs (shapes and the hparams the objective reads)."""
    if x.shape[0] != game.n_critic:
        raise ValueError(f"batch['x'] must have leading axis n_critic={game.n_critic}, got shape {x.shape}")
    missing = sorted(set(game.objective.hparams) - set(state.hparams))
    if missing:  # else a bare KeyError deep inside a term
        raise ValueError(f"state.hparams lacks {missing}, which the objective reads; initialise the state with "
                         f"init_gan_state(..., hparams={{**objective.hparams, ...}}) (objective.hparams holds "
                         f"their defaults: {dict(game.objective.hparams)})")
    terms = game.objective.batch_norm_free_terms
    if terms and has_batch_norm(state.d.model_state):
        raise ValueError(f"the terms {list(terms)} need per-example input gradients or D on batches of their own, but "
                         f"D uses BatchNorm, which couples the examples of a batch; use a D with normalization "
                         f"'layer_norm' or 'none'")


UPDATE_ORDERS = ("alternating", "simultaneous")
G_LATENTS = ("fresh", "reuse")


def make_train_step(generator: nn.Module, discriminator: nn.Module, objective: Objective,
                    g_optimizer: optax.GradientTransformation, d_optimizer: optax.GradientTransformation, *,
                    n_critic: int = 1, ema_start: int = 0, clip_weights: float | None = None,
                    instance_noise_anneal_steps: int | None = None, num_classes: int = 0,
                    axis_name: str | None = None, update_order: str = "alternating", g_latents: str = "fresh"
                    ) -> Callable[[GANState, dict], tuple[GANState, Metrics]]:
    """Builds ``step(state, batch) -> (state, metrics)``.

    Args:
      generator, discriminator: Flax modules with the calling convention of `jaxgan.state` (see above for
        auxiliary outputs).
      objective: the game, see `jaxgan.objectives` (terms and D's input transforms).
      g_optimizer, d_optimizer: separate optax optimizers (TTUR: different learning rates); weight clipping is
        `clip_weights_transform` chained onto d_optimizer.
      n_critic: D updates per G update (static).
      ema_start: EMA of G's weights starts at this step (`ema_update`; decay ``state.hparams["ema_decay"]``).
      clip_weights: legacy: clip every D parameter to [-c, c] after each D update.
      instance_noise_anneal_steps: legacy: the annealing of instance noise for a state with an
        ``instance_noise`` hparam whose objective has no `objectives.instance_noise` transform.
      num_classes: > 0 for class-conditional models; fake labels are drawn uniformly.
      axis_name: data-parallel axis to average over (inside shard_map/pmap); None on one device.
      update_order: "alternating" (default): G's gradient is taken at D's parameters after this step's D updates;
        "simultaneous": at those before them, as in simultaneous gradient descent (PacGAN's reference code).
      g_latents: "fresh" (default): the G update draws its own latents; "reuse": it uses the last D update's
        latents and labels (one draw serves both players, as in the reference loops of PyTorch's DCGAN example
        and PacGAN). Unless a G term runs G itself (zCR, path length), the G update then differentiates the D
        update's G forward (kept as a VJP) instead of running G again: the reference loops' one G forward per
        step, the same gradient as a second forward would give.
    Metrics (scalars): ``d/<term>``, ``g/<term>``, ``d/total``, ``g/total``, ``d/grad_norm``,
    ``g/grad_norm``, ``d/real_output``, ``d/fake_output``, ``wasserstein_estimate`` (mean D(real) - mean
    D(fake), the critic's W1 estimate for Wasserstein losses), the input transforms' (``instance_noise``),
    ``finite`` (1.0 if every loss and parameter is finite), all from the last critic step for D.
    """
    if n_critic < 1:
        raise ValueError(f"n_critic must be >= 1, got {n_critic}")
    if update_order not in UPDATE_ORDERS or g_latents not in G_LATENTS:
        raise ValueError(f"update_order={update_order!r} / g_latents={g_latents!r}; accepted: {UPDATE_ORDERS} / "
                         f"{G_LATENTS}")
    game = Game(generator, discriminator, objective, g_optimizer, d_optimizer, n_critic, ema_start, clip_weights,
                instance_noise_anneal_steps, num_classes, axis_name, update_order, g_latents)

    def step(state: GANState, batch: dict) -> tuple[GANState, Metrics]:
        x = batch["x"]
        labels = batch.get("label") if num_classes else None  # an unconditional game ignores the data's labels
        check_step_inputs(game, state, x)
        key, d_key, g_key = jax.random.split(state.key, 3)
        d_before = state.d
        # The critic steps are unrolled rather than run under lax.scan: XLA:CPU runs convolutions inside a
        # while loop ~25x slower (measured with the digits classifier), and n_critic is small and static.
        d_player, g_model_state = state.d, state.g.model_state
        for i, d_key_i in enumerate(jax.random.split(d_key, n_critic)):
            d_player, g_model_state, d_metrics, d_outputs, latents, g_forward = d_update(
                game, state.replace(d=d_player), g_model_state, x[i], None if labels is None else labels[i],
                d_key_i, state.step * n_critic + i)
        state = state.replace(d=d_player, g=state.g.replace(model_state=g_model_state))
        transforms, t_metrics = update_transforms(game, state, d_outputs)
        g_state = state if update_order == "alternating" else state.replace(d=d_before)
        g_player, g_metrics = g_update(game, g_state, x[-1], None if labels is None else labels[-1], g_key,
                                       *((latents, g_forward) if g_latents == "reuse" else ()))
        ema = ema_update(state.g_ema_params, g_player.params, state.step, state.hparams, ema_start)
        metrics = _pmean({**d_metrics, **t_metrics, **g_metrics}, axis_name)
        metrics["finite"] = finite_flag(metrics, g_player.params, d_player.params)
        return state.replace(step=state.step + 1, key=key, g=g_player, d=d_player, g_ema_params=ema,
                             transforms=transforms), metrics

    return step


def inline_multi_steps(has_convolutions: bool) -> bool:
    """Whether several steps in one jitted call should be inlined rather than run under ``lax.scan``: for models
    with convolutions on the CPU backend, where XLA runs convolutions inside a while loop much slower. Elsewhere
    the scan is the faster way (it also compiles faster). With oneDNN's convolutions on CPU
    (jaxgan.models.onednn) the scan no longer costs that, but inlining still gains a little. The figures:
    ``docs/performance.md``, "Figures behind the library's defaults"; ``benchmarks/step_throughput.py
    --steps_per_call=1,10 [--unroll]``."""
    return has_convolutions and jax.default_backend() == "cpu"


def make_multi_step(step: Callable, num_steps: int, *, unroll: bool = False, every_metrics: bool = False) -> Callable:
    """``num_steps`` consecutive calls of ``step`` as one function, to run them in one jitted call.

    ``step(state, batch, *carry) -> (state, metrics, *carry)`` (e.g. `make_train_step`'s step, or
    `jaxgan.reliability.guard_step`'s, which carries a NaN record). The result takes ``batches`` stacked on a new
    leading axis of length ``num_steps`` and returns the state and carry after the last step and the *last* step's
    metrics, exactly what ``num_steps`` separate calls would have produced; ``every_metrics=True`` returns every
    step's metrics instead, stacked on a leading axis of length ``num_steps`` (a study reads each step's
    ``finite`` flag).

    ``unroll=False`` runs the steps under `lax.scan` (one copy of the step in the program: fast to compile; the
    right choice for MLPs, where per-call dispatch dominates). ``unroll=True`` inlines ``num_steps`` copies:
    compile time grows with ``num_steps``, but XLA:CPU runs convolutions inside a while loop much more slowly,
    so on CPU conv models should use it (or ``num_steps=1``). Measure: ``benchmarks/step_throughput.py
    --steps_per_call``.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")

    def multi(state, batches, *carry):
        if unroll:
            metrics = []
            for i in range(num_steps):
                state, m, *carry = step(state, jax.tree.map(lambda b: b[i], batches), *carry)
                metrics.append(m)
            metrics = jax.tree.map(lambda *ms: jnp.stack(ms), *metrics) if every_metrics else metrics[-1]
            return (state, metrics, *carry)

        def body(c, batch):
            s, rest = c
            s, m, *rest = step(s, batch, *rest)
            return (s, tuple(rest)), m

        (state, carry), metrics = jax.lax.scan(body, (state, tuple(carry)), batches, length=num_steps)
        return (state, metrics if every_metrics else jax.tree.map(lambda m: m[-1], metrics), *carry)

    return multi

def sample(generator: nn.Module, params, model_state, key: jax.Array, num: int, *, labels=None,
           num_classes: int = 0, truncation: float | None = None) -> jax.Array:
    """Generator samples in data space, BatchNorm in inference mode: [num, ...] float32.

    Latents are N(0, I), or with ``truncation`` BigGAN's truncation trick
    (`jaxgan.models.sampling.truncated_normal_latents`: resampled into [-truncation, truncation], not clipped).
    Labels default to uniform random classes for conditional models.
    """
    k_z, k_y = jax.random.split(key)
    z = truncated_normal_latents(k_z, (num, generator.latent_dim), truncation)
    if num_classes and labels is None:
        labels = jax.random.randint(k_y, (num,), 0, num_classes)
    return split_outputs(_apply(generator, params, model_state, z, labels, train=False)[0])[0]
