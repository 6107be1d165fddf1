"""The pure train step: ``n_critic`` D updates, then one G update, in one compiled program.

``step = make_train_step(...)``; ``state, metrics = step(state, batch)``. The step has no Python control
flow on traced values, reads its randomness only from ``state.key``, and so works under `jax.jit`, under
`jax.vmap` over stacked states (independent runs), and per device under `jax.shard_map` with an
``axis_name`` (gradients, metrics and cross-replica BatchNorm statistics averaged with `lax.pmean`).

Batch convention: ``batch = {"x": [n_critic, B, ...]}`` plus ``"label": [n_critic, B]`` int32 for
class-conditional models; D update ``i`` uses real minibatch ``i`` (a fresh one per critic step, as in
WGAN), and the G update uses the last one where the objective needs D(real) (relativistic losses).

Discriminator calls: when D has no BatchNorm, real and fake go through D in one concatenated call; with
BatchNorm they go separately (real, then fake), as in the reference DCGAN, so each BN batch is pure. In
the G update D runs in training mode (batch statistics) but its state updates are discarded. Penalties see
D in inference mode (``train=False``: stored spectral-norm vectors, no updates).
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxgan import penalties
from jaxgan.models.sampling import truncated_normal_latents
from jaxgan.objectives import Objective, TermInputs
from jaxgan.state import GANState, PlayerState, has_batch_norm

Metrics = dict[str, jax.Array]


def _apply(module: nn.Module, params, model_state, inputs, labels, train: bool):
    """Runs a module; returns (outputs, new model_state). State updates only in training mode."""
    variables = {"params": params, **model_state}
    if train and model_state:
        out, updates = module.apply(variables, inputs, labels, train=True, mutable=list(model_state))
        return out, {**model_state, **updates}
    return module.apply(variables, inputs, labels, train=train), model_state


def _float32(module: nn.Module) -> nn.Module:
    """The module computing in float32 (same parameters): gradient penalties differentiate D's input gradient,
    which a bfloat16 ``compute_dtype`` would make too coarse."""
    dtype = getattr(module, "dtype", None)
    return module if dtype is None or jnp.dtype(dtype) == jnp.float32 else module.clone(dtype=jnp.float32)


def _pmean(tree, axis_name):
    return tree if axis_name is None else jax.lax.pmean(tree, axis_name)


def _add_noise(key, x, scale):
    return x + scale * jax.random.normal(key, x.shape, x.dtype)


def make_train_step(generator: nn.Module, discriminator: nn.Module, objective: Objective,
                    g_optimizer: optax.GradientTransformation, d_optimizer: optax.GradientTransformation, *,
                    n_critic: int = 1, ema_start: int = 0, clip_weights: float | None = None,
                    instance_noise_anneal_steps: int | None = None, num_classes: int = 0,
                    axis_name: str | None = None) -> Callable[[GANState, dict], tuple[GANState, Metrics]]:
    """Builds ``step(state, batch) -> (state, metrics)``.

    Args:
      generator, discriminator: Flax modules with the calling convention of `jaxgan.state`.
      objective: the game, see `jaxgan.objectives`.
      g_optimizer, d_optimizer: separate optax optimizers (TTUR: different learning rates).
      n_critic: D updates per G update (static).
      ema_start: EMA of G's weights starts at this step (the average is the weights themselves before);
        the decay is ``state.hparams["ema_decay"]``; without that hparam there is no EMA.
      clip_weights: clip every D parameter to [-c, c] after each D update (original WGAN).
      instance_noise_anneal_steps: Gaussian noise of scale ``hparams["instance_noise"]`` is added to both
        of D's inputs (Arjovsky & Bottou 2017; Sønderby et al. 2017); the scale decays linearly to 0 over
        this many steps (None: constant).
      num_classes: > 0 for class-conditional models; fake labels are drawn uniformly.
      axis_name: data-parallel axis to average over (inside shard_map/pmap); None on one device.
    Metrics (scalars): ``d/<term>``, ``g/<term>``, ``d/total``, ``g/total``, ``d/grad_norm``,
    ``g/grad_norm``, ``d/real_output``, ``d/fake_output``, ``wasserstein_estimate`` (mean D(real) - mean
    D(fake), the critic's W1 estimate for Wasserstein losses), ``instance_noise`` when used, ``finite``
    (1.0 if every loss and parameter is finite), all from the last critic step for D.
    """
    if n_critic < 1:
        raise ValueError(f"n_critic must be >= 1, got {n_critic}")
    latent_dim = generator.latent_dim
    penalty_discriminator = _float32(discriminator)  # penalties run D in float32 (see `_float32`)

    def sample_latents(key, batch_size):
        # Under a data axis every device holds the same key: draw the *global* batch of latents and keep this
        # device's slice, so N devices see exactly the latents of one device with the same global batch.
        k_z, k_y = jax.random.split(key)
        shards = 1 if axis_name is None else jax.lax.axis_size(axis_name)
        z = jax.random.normal(k_z, (shards * batch_size, latent_dim), jnp.float32)
        labels = jax.random.randint(k_y, (shards * batch_size,), 0, num_classes) if num_classes else None
        if axis_name is not None:
            start = jax.lax.axis_index(axis_name) * batch_size
            z = jax.lax.dynamic_slice_in_dim(z, start, batch_size)
            labels = None if labels is None else jax.lax.dynamic_slice_in_dim(labels, start, batch_size)
        return z, labels

    def per_device(key):
        # Per-example noise (instance noise, penalty interpolation): independent on each device.
        return key if axis_name is None else jax.random.fold_in(key, jax.lax.axis_index(axis_name))

    def noise_scale(state):
        if "instance_noise" not in state.hparams:
            return None
        scale = state.hparams["instance_noise"]
        if instance_noise_anneal_steps:
            scale = scale * jnp.maximum(0.0, 1.0 - state.step.astype(jnp.float32) / instance_noise_anneal_steps)
        return scale

    def d_update(state: GANState, g_model_state, real, real_labels, key):
        k_z, k_noise, k_terms = jax.random.split(key, 3)
        k_noise, k_terms = per_device(k_noise), per_device(k_terms)
        z, fake_labels = sample_latents(k_z, real.shape[0])
        fake, g_model_state = _apply(generator, state.g.params, g_model_state, z, fake_labels, train=True)
        fake = jax.lax.stop_gradient(fake)
        scale = noise_scale(state)
        if scale is not None:
            k_real, k_fake = jax.random.split(k_noise)
            real, fake = _add_noise(k_real, real, scale), _add_noise(k_fake, fake, scale)
        d_state = state.d.model_state
        joint = not has_batch_norm(d_state)

        def loss_fn(d_params):
            if joint:
                labels = None if real_labels is None else jnp.concatenate([real_labels, fake_labels])
                out, new_state = _apply(discriminator, d_params, d_state, jnp.concatenate([real, fake]), labels, True)
                real_out, fake_out = out[:real.shape[0]], out[real.shape[0]:]
            else:
                real_out, new_state = _apply(discriminator, d_params, d_state, real, real_labels, True)
                fake_out, new_state = _apply(discriminator, d_params, new_state, fake, fake_labels, True)

            def d_fn(x, labels):  # penalties: inference mode, float32; the terms pass the labels of x
                return _apply(penalty_discriminator, d_params, new_state, x, labels, False)[0]

            inputs = TermInputs(real_out, fake_out, real, fake, d_fn, k_terms, state.hparams, real_labels,
                                fake_labels)
            total, values = objective.evaluate("d", inputs)
            return total, (values, new_state, real_out, fake_out)

        (total, (values, d_state, real_out, fake_out)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.d.params)
        grads = _pmean(grads, axis_name)
        d_state = _pmean(d_state, axis_name)
        updates, opt_state = d_optimizer.update(grads, state.d.opt_state, state.d.params)
        params = optax.apply_updates(state.d.params, updates)
        if clip_weights is not None:
            params = penalties.clip_weights(params, clip_weights)
        real_mean, fake_mean = jnp.mean(real_out), jnp.mean(fake_out)
        metrics = {**{f"d/{k}": v for k, v in values.items()}, "d/total": total,
                   "d/grad_norm": optax.tree.norm(grads), "d/real_output": real_mean,
                   "d/fake_output": fake_mean, "wasserstein_estimate": real_mean - fake_mean}
        if scale is not None:
            metrics["instance_noise"] = scale
        return PlayerState(params, d_state, opt_state), g_model_state, metrics

    def g_update(state: GANState, real, real_labels, key):
        k_z, k_noise, k_terms = jax.random.split(key, 3)
        k_noise, k_terms = per_device(k_noise), per_device(k_terms)
        z, fake_labels = sample_latents(k_z, real.shape[0])
        scale = noise_scale(state)
        d = state.d

        def loss_fn(g_params):
            fake, g_state = _apply(generator, g_params, state.g.model_state, z, fake_labels, train=True)
            noisy_fake = fake if scale is None else _add_noise(k_noise, fake, scale)
            fake_out, _ = _apply(discriminator, d.params, d.model_state, noisy_fake, fake_labels, True)
            real_out = None
            if objective.g_needs_real:
                real_out, _ = _apply(discriminator, d.params, d.model_state, real, real_labels, True)

            def d_fn(x, labels):
                return _apply(penalty_discriminator, d.params, d.model_state, x, labels, False)[0]

            inputs = TermInputs(real_out, fake_out, real, noisy_fake, d_fn, k_terms, state.hparams, real_labels,
                                fake_labels)
            total, values = objective.evaluate("g", inputs)
            return total, (values, g_state)

        (total, (values, g_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.g.params)
        grads = _pmean(grads, axis_name)
        g_state = _pmean(g_state, axis_name)
        updates, opt_state = g_optimizer.update(grads, state.g.opt_state, state.g.params)
        params = optax.apply_updates(state.g.params, updates)
        metrics = {**{f"g/{k}": v for k, v in values.items()}, "g/total": total, "g/grad_norm": optax.tree.norm(grads)}
        return PlayerState(params, g_state, opt_state), metrics

    def step(state: GANState, batch: dict) -> tuple[GANState, Metrics]:
        x = batch["x"]
        labels = batch.get("label")
        if x.shape[0] != n_critic:
            raise ValueError(f"batch['x'] must have leading axis n_critic={n_critic}, got shape {x.shape}")
        missing = sorted(set(objective.hparams) - set(state.hparams))
        if missing:  # else a bare KeyError deep inside a term
            raise ValueError(f"state.hparams lacks {missing}, which the objective reads; initialise the state with "
                             f"init_gan_state(..., hparams={{**objective.hparams, ...}}) (objective.hparams holds "
                             f"their defaults: {dict(objective.hparams)})")
        if objective.has_gradient_penalty and has_batch_norm(state.d.model_state):
            raise ValueError("a gradient penalty needs per-example input gradients, but D uses BatchNorm, which couples "
                             "the examples of a batch; use a D with normalization 'layer_norm' or 'none'")
        key, d_key, g_key = jax.random.split(state.key, 3)

        # The critic steps are unrolled rather than run under lax.scan: XLA:CPU runs convolutions inside a
        # while loop ~25x slower (measured with the digits classifier), and n_critic is small and static.
        d_player, g_model_state = state.d, state.g.model_state
        d_keys = jax.random.split(d_key, n_critic)
        for i in range(n_critic):
            d_player, g_model_state, d_metrics = d_update(state.replace(d=d_player), g_model_state, x[i],
                                                          None if labels is None else labels[i], d_keys[i])
        state = state.replace(d=d_player, g=state.g.replace(model_state=g_model_state))
        g_player, g_metrics = g_update(state, x[-1], None if labels is None else labels[-1], g_key)

        ema = g_player.params
        if "ema_decay" in state.hparams:
            decay = jnp.where(state.step >= ema_start, state.hparams["ema_decay"], 0.0)
            ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.g_ema_params, g_player.params)

        metrics = {**d_metrics, **g_metrics}
        metrics = _pmean(metrics, axis_name)
        finite = jnp.all(jnp.asarray([jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(metrics)]))
        params_finite = jnp.all(jnp.asarray([jnp.all(jnp.isfinite(p)) for p in
                                             jax.tree.leaves((g_player.params, d_player.params))]))
        metrics["finite"] = jnp.logical_and(finite, params_finite).astype(jnp.float32)
        new_state = state.replace(step=state.step + 1, key=key, g=g_player, d=d_player, g_ema_params=ema)
        return new_state, metrics

    return step



def inline_multi_steps(has_convolutions: bool) -> bool:
    """Whether several steps in one jitted call should be inlined rather than run under ``lax.scan``: for models
    with convolutions on the CPU backend, where XLA runs convolutions inside a while loop ~25x slower (a DCGAN
    step). Elsewhere the scan is the faster way (H100, DCGAN 32 px, batch 256, 10 steps per call vs 1: 1.16x
    float32, 1.46x bfloat16). With oneDNN's convolutions on CPU (jaxgan.models.onednn) the scan no longer costs
    that, but inlining still gains a little: DCGAN 32x32x1, batch 64, 10 steps per call vs 1: scan 1.04x,
    inlined 1.09x (compile 4.2 vs 14.9 s; ``benchmarks/step_throughput.py --steps_per_call=1,10 [--unroll]``)."""
    return has_convolutions and jax.default_backend() == "cpu"


def make_multi_step(step: Callable, num_steps: int, *, unroll: bool = False) -> Callable:
    """``num_steps`` consecutive calls of ``step`` as one function, to run them in one jitted call.

    ``step(state, batch, *carry) -> (state, metrics, *carry)`` (e.g. `make_train_step`'s step, or
    `jaxgan.reliability.guard_step`'s, which carries a NaN record). The result takes ``batches`` stacked on a new
    leading axis of length ``num_steps`` and returns the state and carry after the last step and the *last* step's
    metrics, exactly what ``num_steps`` separate calls would have produced.

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
            metrics = None
            for i in range(num_steps):
                state, metrics, *carry = step(state, jax.tree.map(lambda b: b[i], batches), *carry)
            return (state, metrics, *carry)

        def body(c, batch):
            s, rest = c
            s, m, *rest = step(s, batch, *rest)
            return (s, tuple(rest)), m

        (state, carry), metrics = jax.lax.scan(body, (state, tuple(carry)), batches, length=num_steps)
        return (state, jax.tree.map(lambda m: m[-1], metrics), *carry)

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
    return _apply(generator, params, model_state, z, labels, train=False)[0]
