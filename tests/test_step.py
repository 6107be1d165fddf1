"""The train step: purity, determinism, vmap equivalence, n_critic, EMA, clipping, composition, errors."""
import dataclasses
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxgan import experiment, objectives
from jaxgan import step as step_lib
from jaxgan.experiment import Config
from jaxgan.models import onednn
from jaxgan.models.dcgan import DCGANDiscriminator, DCGANGenerator
from jaxgan.state import get_learning_rate, init_gan_state
from jaxgan.step import make_train_step

SMALL = Config(dataset="ring8", width=32, depth=2, batch_size=32)


def build(**overrides):
    exp = experiment.build(dataclasses.replace(SMALL, **overrides))
    return exp, jax.jit(exp.train_step())


def ring_batch(key, n_critic=1, batch=32):
    return {"x": jax.random.normal(key, (n_critic, batch, 2))}


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_same_state_and_batch_give_bit_identical_results():
    exp, step = build()
    state = exp.init(jax.random.key(0))
    batch = ring_batch(jax.random.key(1))
    out1, m1 = step(state, batch)
    out2, m2 = step(state, batch)
    for a, b in zip(leaves((out1.g, out1.d, out1.g_ema_params, m1)), leaves((out2.g, out2.d, out2.g_ema_params, m2))):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(leaves(out1.g.params)[0], leaves(state.g.params)[0])  # it did train
    # the key advanced: a second step from the output differs from the first step
    out3, _ = step(out1, batch)
    assert not np.array_equal(leaves(out3.g.params)[0], leaves(out1.g.params)[0])


def test_vmapped_step_over_seeds_equals_separate_steps():
    exp, step = build(loss="wasserstein", penalty="gradient_penalty", n_critic=2)
    keys = jax.random.split(jax.random.key(0), 4)
    batches = jax.vmap(lambda k: ring_batch(k, n_critic=2))(jax.random.split(jax.random.key(1), 4))
    stacked = jax.vmap(exp.init)(keys)
    vstep = jax.jit(jax.vmap(exp.train_step()))
    for _ in range(3):
        stacked, vmetrics = vstep(stacked, batches)
    for i in range(4):
        state = exp.init(keys[i])
        batch = jax.tree.map(lambda x: x[i], batches)
        for _ in range(3):
            state, metrics = step(state, batch)
        for a, b in zip(leaves(state.g.params), leaves(jax.tree.map(lambda x: x[i], stacked.g.params))):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
        np.testing.assert_allclose(metrics["d/total"], vmetrics["d/total"][i], rtol=1e-4, atol=1e-6)
    # different seeds give different runs
    assert not np.allclose(leaves(stacked.g.params)[0][0], leaves(stacked.g.params)[0][1])


def test_n_critic_updates_d_n_times_and_g_once():
    exp, step = build(n_critic=3)
    state = exp.init(jax.random.key(0))
    state, _ = step(state, ring_batch(jax.random.key(1), n_critic=3))
    d_count = state.d.opt_state.inner_state[0].count
    g_count = state.g.opt_state.inner_state[0].count
    assert int(d_count) == 3 and int(g_count) == 1
    with pytest.raises(ValueError, match="n_critic=3"):
        step(state, ring_batch(jax.random.key(1), n_critic=1))


def test_objective_terms_are_reported_and_summed_with_weights():
    exp, step = build(loss="wasserstein", penalty="gradient_penalty", penalty_weight=7.0)
    _, m = step(exp.init(jax.random.key(0)), ring_batch(jax.random.key(1)))
    np.testing.assert_allclose(m["d/total"], m["d/loss"] + 7.0 * m["d/gradient_penalty"], rtol=1e-5)
    np.testing.assert_allclose(m["wasserstein_estimate"], m["d/real_output"] - m["d/fake_output"], rtol=1e-5)
    np.testing.assert_allclose(m["d/loss"], -m["wasserstein_estimate"], rtol=1e-5)
    assert float(m["finite"]) == 1.0


def test_penalty_weight_is_a_run_time_hyperparameter():
    exp, step = build(loss="wasserstein", penalty="r1", penalty_weight=1.0)
    state = exp.init(jax.random.key(0))
    batch = ring_batch(jax.random.key(1))
    _, m1 = step(state, batch)
    state5 = state.replace(hparams={**state.hparams, "penalty_weight": jnp.float32(5.0)})
    _, m5 = step(state5, batch)  # same compiled program, other weight
    np.testing.assert_allclose(m5["d/total"] - m5["d/loss"], 5 * (m1["d/total"] - m1["d/loss"]), rtol=1e-5)


def test_ema_of_generator_weights():
    exp, step = build(ema_decay=0.9, ema_start=1)
    s0 = exp.init(jax.random.key(0))
    s1, _ = step(s0, ring_batch(jax.random.key(1)))  # step 0 < ema_start: the EMA is the weights
    for e, p in zip(leaves(s1.g_ema_params), leaves(s1.g.params)):
        np.testing.assert_array_equal(e, p)
    s2, _ = step(s1, ring_batch(jax.random.key(2)))
    for e, e_prev, p in zip(leaves(s2.g_ema_params), leaves(s1.g_ema_params), leaves(s2.g.params)):
        np.testing.assert_allclose(e, 0.9 * e_prev + 0.1 * p, rtol=1e-5, atol=1e-7)


def test_weight_clipping_bounds_every_d_parameter():
    exp, step = build(loss="wasserstein", clip_weights=0.01, optimizer="rmsprop", d_lr=0.5)
    state, _ = step(exp.init(jax.random.key(0)), ring_batch(jax.random.key(1)))
    assert max(np.abs(p).max() for p in leaves(state.d.params)) <= 0.01 + 1e-9


def test_instance_noise_is_annealed_linearly():
    exp, step = build(instance_noise=0.5, instance_noise_anneal_steps=10)
    state = exp.init(jax.random.key(0))
    seen = []
    for i in range(3):
        state, m = step(state, ring_batch(jax.random.key(i)))
        seen.append(float(m["instance_noise"]))
    np.testing.assert_allclose(seen, [0.5, 0.45, 0.4], rtol=1e-6)


def test_ttur_learning_rates_live_in_the_optimizer_states():
    exp, _ = build(g_lr=1e-4, d_lr=4e-4)
    state = exp.init(jax.random.key(0))
    np.testing.assert_allclose(get_learning_rate(state.g.opt_state), 1e-4, rtol=1e-6)
    np.testing.assert_allclose(get_learning_rate(state.d.opt_state), 4e-4, rtol=1e-6)


def test_gradient_penalty_with_batch_norm_in_d_is_refused():
    g = DCGANGenerator(latent_dim=8, image_size=32, channels=1, ngf=8)
    d = DCGANDiscriminator(image_size=32, channels=1, ndf=8, normalization="batch_norm")
    opt = optax.adam(1e-4)
    objective = objectives.wasserstein() + 10.0 * objectives.gradient_penalty()
    state = init_gan_state(jax.random.key(0), g, d, opt, opt, data_shape=(32, 32, 1))
    step = make_train_step(g, d, objective, opt, opt)
    with pytest.raises(ValueError, match="BatchNorm"):
        step(state, {"x": jnp.zeros((1, 4, 32, 32, 1))})
    with pytest.raises(experiment.ConfigError, match="BatchNorm"):
        experiment.build(Config(dataset="digits", model="dcgan", image_size=32, loss="wasserstein",
                                penalty="gradient_penalty"))


def test_image_gan_step_with_batch_norm_runs_separate_d_calls_and_updates_stats():
    exp = experiment.build(Config(dataset="digits", model="dcgan", image_size=32, width=8, batch_size=4))
    state = exp.init(jax.random.key(0))
    new, m = jax.jit(exp.train_step())(state, {"x": jax.random.uniform(jax.random.key(1), (1, 4, 32, 32, 1),
                                                                       minval=-1, maxval=1)})
    assert float(m["finite"]) == 1.0
    changed = [not np.array_equal(a, b) for a, b in zip(leaves(new.d.model_state), leaves(state.d.model_state))]
    assert all(changed)  # running statistics of every D BatchNorm moved


def _schedule_counts(opt_state):
    states = jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, optax.ScaleByScheduleState))
    return [int(s.count) for s in states if isinstance(s, optax.ScaleByScheduleState)]


def test_linear_lr_decay_spans_all_steps_for_both_players_with_n_critic():
    """--lr_decay=linear counts optimizer updates; D makes n_critic per step, so both players' scales must be
    1 - t/steps after t steps (a D schedule over `steps` updates froze the critic after steps/n_critic steps)."""
    steps, n_critic = 4, 5
    config = Config(width=8, depth=1, batch_size=16, loss="wasserstein", penalty="gradient_penalty", optimizer="sgd",
                    n_critic=n_critic, steps=steps, lr_decay="linear", g_lr=1e-2, d_lr=1e-2)
    exp = experiment.build(config)
    step = jax.jit(exp.train_step())
    state = exp.init(jax.random.key(0))
    batch = {"x": jax.random.normal(jax.random.key(1), (n_critic, 16, 2))}
    for t in range(1, steps + 1):
        before = state
        state, _ = step(state, batch)
        assert _schedule_counts(state.g.opt_state) == [t]
        assert _schedule_counts(state.d.opt_state) == [n_critic * t]
        # Every step of the run still moves both players (the last with scale 1/steps for G, 1/20 for D's last update).
        for old, new in ((before.g.params, state.g.params), (before.d.params, state.d.params)):
            moved = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(new)))
            assert moved > 0.0, t
    d_schedule = optax.linear_schedule(1.0, 0.0, steps * n_critic)
    g_schedule = optax.linear_schedule(1.0, 0.0, steps)
    for t in range(steps + 1):  # the scale at the start of step t is the same for both players
        assert float(d_schedule(n_critic * t)) == pytest.approx(float(g_schedule(t)))


class _ClassMeans(__import__("flax").linen.Module):
    """G(z, y) = mu[y] exactly (z is ignored); D(x, y) = 0.5 ||x - mu[y]||^2, so grad_x D = x - mu[y]."""
    means: tuple
    latent_dim: int = 2
    discriminator: bool = False

    @__import__("flax").linen.compact
    def __call__(self, inputs, labels=None, *, train=False):
        scale = self.param("scale", lambda k: jnp.ones(()))  # a parameter, so both players have something to train
        mu = jnp.asarray(self.means)[labels]
        if self.discriminator:
            return 0.5 * scale * jnp.sum(jnp.square(inputs - mu), axis=-1)
        return mu + 0.0 * scale * inputs[:, :1]


@pytest.mark.parametrize("penalty", ["r1", "r2"])
def test_conditional_penalties_see_the_labels_of_the_batch_they_evaluate(penalty):
    """R1 on reals takes the real labels, R2 on fakes the labels G was given: at x = mu[y] the gradient of
    D(., y) vanishes, so with the right labels both penalties are exactly 0 (R2 with the real batch's labels,
    the old behaviour, gives mean ||mu[y_fake] - mu[y_real]||^2 > 0)."""
    means = ((0.0, 0.0), (3.0, 4.0), (-3.0, 4.0), (6.0, -8.0))
    gen, disc = _ClassMeans(means), _ClassMeans(means, discriminator=True)
    objective = objectives.wasserstein() + objectives.PENALTIES[penalty]()
    opt = optax.sgd(0.0)
    state = init_gan_state(jax.random.key(0), gen, disc, opt, opt, data_shape=(2,), num_classes=4)
    step = jax.jit(make_train_step(gen, disc, objective, opt, opt, num_classes=4))
    labels = jnp.zeros((1, 64), jnp.int32)  # every real example is class 0 ...
    x = jnp.broadcast_to(jnp.asarray(means[0]), (1, 64, 2))  # ... and sits at its class mean
    _, m = step(state, {"x": x, "label": labels})
    assert float(m[f"d/{penalty}"]) == 0.0
    # the closure does use the labels it is given: real data under class-3 labels has gradient norm^2 100
    _, m = step(state, {"x": x, "label": labels + 3})
    assert float(m[f"d/{penalty}"]) == (100.0 if penalty == "r1" else 0.0)


def test_a_state_without_the_objectives_hparams_is_refused_at_trace_time_with_what_to_pass():
    exp = experiment.build(dataclasses.replace(SMALL, penalty="r1", penalty_weight=1.0))
    state = init_gan_state(jax.random.key(0), exp.generator, exp.discriminator, exp.g_optimizer, exp.d_optimizer,
                           data_shape=exp.data_shape)  # no hparams: the objective reads two of them
    with pytest.raises(ValueError, match=r"lacks \['label_smoothing', 'penalty_weight'\].*objective\.hparams"):
        jax.eval_shape(exp.train_step(), state, ring_batch(jax.random.key(1)))


def test_simultaneous_updates_take_g_gradient_at_d_before_its_update_and_reuse_its_latents():
    """--update_order=simultaneous: G's update equals that of an alternating step whose D did not move (d_lr=0),
    whatever D's own step; --g_latents=reuse: G sees D(G(z)) of the D update's z, so with the Wasserstein loss
    g/loss = -d/fake_output (the same D at the same fakes), which fresh latents do not give."""
    base = dict(loss="wasserstein")
    batch = ring_batch(jax.random.key(1))

    def run(**overrides):
        exp = experiment.build(dataclasses.replace(SMALL, **base, **overrides))
        return jax.jit(exp.train_step())(exp.init(jax.random.key(0)), batch)

    sim, sim_m = run(update_order="simultaneous")
    frozen_d, _ = run(d_lr=1e-30)  # Adam's update is lr * m/(sqrt(v)+eps): D stays put to float32 rounding
    moved, _ = run()
    for a, b in zip(leaves(sim.g.params), leaves(frozen_d.g.params)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert max(np.abs(a - b).max() for a, b in zip(leaves(sim.g.params), leaves(moved.g.params))) > 1e-6
    for a, b in zip(leaves(sim.d.params), leaves(moved.d.params)):  # D's own update is unchanged
        np.testing.assert_array_equal(a, b)

    _, reuse_m = run(update_order="simultaneous", g_latents="reuse")
    _, fresh_m = run(update_order="simultaneous")
    assert float(reuse_m["g/loss"]) == pytest.approx(-float(reuse_m["d/fake_output"]), rel=1e-5, abs=1e-6)
    assert abs(float(fresh_m["g/loss"]) + float(fresh_m["d/fake_output"])) > 1e-4
    with pytest.raises(experiment.ConfigError, match="--update_order='sim' is not one of"):
        experiment.validate(dataclasses.replace(SMALL, update_order="sim"))


def test_reused_latents_differentiate_the_d_update_g_forward():
    """--g_latents=reuse: the G update differentiates the D update's G forward (kept as a VJP: one G forward per
    step, as the reference loops); its update equals the one through a second G forward, which a G term that
    runs G itself (``runs_generator``) forces. DCGAN with BatchNorm in G and D, one step, float32."""
    config = Config(dataset="digits", model="dcgan", image_size=32, channels=1, width=8, latent_dim=16,
                    batch_size=8, g_latents="reuse")
    exp = experiment.build(config, num_classes=0)
    probe = objectives.Objective((objectives.Term(
        "probe", "g", lambda t: 0.0 * jnp.sum(t.g_fn(t.latents, t.fake_labels)), runs_generator=True),))
    forced = dataclasses.replace(exp, objective=exp.objective + probe)
    state = exp.init(jax.random.key(0))
    batch = {"x": np.random.default_rng(0).uniform(-1, 1, (1, 8, 32, 32, 1)).astype(np.float32)}
    reused_step, forced_step = exp.train_step(), forced.train_step()
    assert step_lib.Game(exp.generator, exp.discriminator, exp.objective, None, None, g_latents="reuse"
                         ).reuses_g_forward
    assert not step_lib.Game(exp.generator, exp.discriminator, forced.objective, None, None, g_latents="reuse"
                             ).reuses_g_forward
    reused, reused_m = jax.jit(reused_step)(state, batch)
    again, again_m = jax.jit(forced_step)(state, batch)
    np.testing.assert_allclose(float(reused_m["g/loss"]), float(again_m["g/loss"]), rtol=1e-6)
    for a, b in zip(leaves(reused.g.params), leaves(again.g.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    for a, b in zip(leaves(reused.g.model_state), leaves(again.g.model_state)):
        np.testing.assert_array_equal(a, b)
    fresh_step = jax.jit(experiment.build(dataclasses.replace(config, g_latents="fresh"), num_classes=0).train_step())
    fresh, _ = fresh_step(state, batch)
    assert max(np.abs(a - b).max() for a, b in zip(leaves(fresh.g.params), leaves(reused.g.params))) > 1e-6
    if onednn.available():  # G's four transposed convolutions (oneDNN backward-data calls) run forward once
        calls = [step.lower(state, batch).compile().as_text().count("ConvBwdData")
                 for step in (fresh_step, jax.jit(reused_step))]
        assert calls[0] - calls[1] == 4, calls


def test_reused_latents_update_g_batch_norm_statistics_once_per_step():
    """--g_latents=reuse: the G update's forward repeats the D update's (same parameters, same z), so G's
    BatchNorm running statistics take one update from that batch (the reference loops' single G forward), as
    G.apply on the D update's z gives; fresh latents update them twice (two batches)."""
    config = Config(dataset="ring8", model="pacgan_mlp", batch_size=16, update_order="simultaneous",
                    g_latents="reuse")
    exp = experiment.build(config)
    state = exp.init(jax.random.key(0))
    batch = ring_batch(jax.random.key(1), batch=16)
    after, _ = jax.jit(exp.train_step())(state, batch)
    _, d_key, _ = jax.random.split(state.key, 3)  # the step's key schedule (jaxgan.step.make_train_step)
    k_z = jax.random.split(jax.random.split(d_key, 1)[0], 3)[0]
    game = types.SimpleNamespace(generator=exp.generator, axis_name=None, num_classes=0)
    z, _ = step_lib.sample_latents(game, k_z, 16)
    _, expected = exp.generator.apply({"params": state.g.params, **state.g.model_state}, z, train=True,
                                      mutable=["batch_stats"])
    assert leaves(after.g.model_state) and len(leaves(after.g.model_state)) == len(leaves(expected))
    for a, b in zip(leaves(after.g.model_state), leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    fresh, _ = jax.jit(experiment.build(dataclasses.replace(config, g_latents="fresh")).train_step())(state, batch)
    assert max(np.abs(a - b).max() for a, b in zip(leaves(fresh.g.model_state), leaves(expected))) > 1e-4
