"""The train step's extension points (docs/extending.md), each with one real use: an input transform of D with
state in GANState (instance noise; a toy adaptive flip), D's and G's auxiliary outputs (ACGAN; a G-side term),
lazy regularization (R1 every 4 D updates) and weight clipping as an optax transformation."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxgan import experiment, objectives, penalties
from jaxgan.checkpoint import Checkpointer
from jaxgan.experiment import Config
from jaxgan.objectives import Term, TransformStats
from jaxgan.state import init_gan_state
from jaxgan.step import clip_weights_transform, make_train_step

SMALL = Config(dataset="ring8", width=16, depth=1, batch_size=16)


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def ring_batch(key, n_critic=1, batch=16):
    return {"x": jax.random.normal(key, (n_critic, batch, 2))}


  # ----------------------------------------------------------------------------- (a) input transforms

def test_instance_noise_is_a_stateless_input_transform_equal_to_the_hparam_only_form():
    """--instance_noise builds an `InstanceNoise` transform; a state with only the ``instance_noise`` hparam (the
    form of earlier versions, and of sweeps) gets the same noise, bit for bit; no state is added to GANState."""
    exp = experiment.build(dataclasses.replace(SMALL, instance_noise=0.3, instance_noise_anneal_steps=10))
    assert [type(t).__name__ for t in exp.objective.transforms] == ["InstanceNoise"]
    state = exp.init(jax.random.key(0))
    assert state.transforms == {}
    legacy = dataclasses.replace(exp.objective, transforms=())
    legacy_step = make_train_step(exp.generator, exp.discriminator, legacy, exp.g_optimizer, exp.d_optimizer,
                                  instance_noise_anneal_steps=10)
    batch = ring_batch(jax.random.key(1))
    s1, m1 = jax.jit(exp.train_step())(state.replace(step=jnp.int32(4)), batch)
    s2, m2 = jax.jit(legacy_step)(state.replace(step=jnp.int32(4)), batch)
    assert float(m1["instance_noise"]) == pytest.approx(0.3 * 0.6)
    for a, b in zip(leaves((s1.g, s1.d, m1)), leaves((s2.g, s2.d, m2))):
        np.testing.assert_array_equal(a, b)


@dataclasses.dataclass(frozen=True)
class AdaptiveFlip:
    """A toy of ADA's adaptive augmentation: each example is negated with probability ``p`` (its state); after the
    D updates ``p`` moves by ``rate`` towards making mean D(real) equal ``target``."""
    rate: float = 0.25
    target: float = 0.0
    name: str = "flip"
    hparams = {}

    def init(self):
        return {"p": jnp.float32(1.0)}

    def apply(self, state, key, x, step, hparams):
        flip = jax.random.bernoulli(key, state["p"], (x.shape[0],) + (1,) * (x.ndim - 1))
        return jnp.where(flip, -x, x)

    def update(self, state, stats: TransformStats):
        p = jnp.clip(state["p"] + self.rate * jnp.sign(jnp.mean(stats.real_outputs) - self.target), 0.0, 1.0)
        return {"p": p}, {"flip_p": p}


def test_a_stateful_input_transform_is_applied_to_d_inputs_and_updates_its_state_in_gan_state(tmp_path):
    exp = experiment.build(SMALL)
    reads_p = Term("flip_p_seen", "d", lambda t: t.transform_states["flip"]["p"])  # terms see transform states
    objective = exp.objective + objectives.Objective((reads_p,), {}, (AdaptiveFlip(),))
    init = lambda key: init_gan_state(key, exp.generator, exp.discriminator, exp.g_optimizer, exp.d_optimizer,
                                      data_shape=(2,), hparams=exp.hparams, transforms=objective.transforms)
    state = init(jax.random.key(0))
    step = jax.jit(make_train_step(exp.generator, exp.discriminator, objective, exp.g_optimizer, exp.d_optimizer))
    batch = ring_batch(jax.random.key(1))
    new, m = step(state, batch)
    # p = 1: D saw every real example negated (D is an MLP without state: train and inference modes agree)
    d_neg = exp.discriminator.apply({"params": state.d.params}, -batch["x"][0], None, train=False)
    np.testing.assert_allclose(m["d/real_output"], np.mean(np.asarray(d_neg)), rtol=1e-6)
    expected_p = np.clip(1.0 + 0.25 * np.sign(float(m["d/real_output"])), 0.0, 1.0)
    assert float(new.transforms["flip"]["p"]) == expected_p == float(m["flip_p"])
    assert float(m["d/flip_p_seen"]) == 1.0  # the state the step started from
    # the transform state is a pytree leaf of GANState: it vmaps and checkpoints
    stacked = jax.vmap(init)(jax.random.split(jax.random.key(0), 2))
    assert stacked.transforms["flip"]["p"].shape == (2,)
    with Checkpointer(tmp_path / "ckpt", save_every=1, async_save=False) as ckpt:
        ckpt.save(1, new, {"position": 0})
        restored, _ = ckpt.restore(1, jax.eval_shape(lambda: new))
    assert float(restored.transforms["flip"]["p"]) == float(new.transforms["flip"]["p"])


def test_a_state_without_stateful_transforms_keeps_the_checkpoint_tree_of_earlier_versions():
    """An empty ``GANState.transforms`` is no node of the tree: checkpoints written before the field existed
    restore into it (the six fields of the older GANState, nothing more)."""
    state = experiment.build(SMALL).init(jax.random.key(0))
    paths = {jax.tree_util.keystr(path[:1]) for path, _ in jax.tree_util.tree_flatten_with_path(state)[0]}
    assert paths == {".step", ".key", ".g", ".d", ".g_ema_params", ".hparams"}


  # ----------------------------------------------------------------------------- (b) D's auxiliary outputs

SQUARE = ((1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0))


class ClassHeadD(nn.Module):
    """D(x) = (a * x_0, {"class_logits": -0.5 ||x - mu_k||^2 for the 4 corners mu_k}): ACGAN's class head."""

    @nn.compact
    def __call__(self, x, labels=None, *, train=False):
        a = self.param("a", lambda k: jnp.ones(()))
        logits = -0.5 * jnp.sum(jnp.square(x[:, None, :] - jnp.asarray(SQUARE)), axis=-1)
        return a * x[:, 0], {"class_logits": logits}


class CornerG(nn.Module):
    """G(z, y) = mu_y (z ignored but for a zero-weight parameter)."""
    latent_dim: int = 2

    @nn.compact
    def __call__(self, z, labels=None, *, train=False):
        b = self.param("b", lambda k: jnp.zeros(()))
        return jnp.asarray(SQUARE)[labels] + b * z


def _cross_entropy(x, label):
    logits = -0.5 * np.sum((np.asarray(SQUARE) - x) ** 2, axis=-1)
    return -(logits[label] - np.log(np.sum(np.exp(logits))))


def test_acgan_terms_read_the_class_logits_that_d_returns_as_an_auxiliary_output():
    """The corners are symmetric, so every fake G(z, y) = mu_y has the same cross entropy c0 whatever y G drew;
    the real part is computed here in NumPy from the batch's own labels."""
    objective = objectives.non_saturating() + objectives.acgan()
    opt = optax.sgd(0.0)
    state = init_gan_state(jax.random.key(0), CornerG(), ClassHeadD(), opt, opt, data_shape=(2,), num_classes=4,
                           hparams=objective.hparams)
    step = jax.jit(make_train_step(CornerG(), ClassHeadD(), objective, opt, opt, num_classes=4))
    x = np.array([[0.5, 0.0], [0.0, 2.0], [-1.0, -1.0], [0.3, -0.2]], np.float32)
    y = np.array([0, 1, 1, 3], np.int32)
    _, m = step(state, {"x": jnp.asarray(x)[None], "label": jnp.asarray(y)[None]})
    c0 = _cross_entropy(np.asarray(SQUARE[0]), 0)
    real_part = np.mean([_cross_entropy(xi, yi) for xi, yi in zip(x, y)])
    np.testing.assert_allclose(m["g/acgan"], c0, rtol=1e-6)
    np.testing.assert_allclose(m["d/acgan"], c0 + real_part, rtol=1e-6)
    np.testing.assert_allclose(m["d/total"], m["d/loss"] + m["d/acgan"], rtol=1e-6)


  # ----------------------------------------------------------------------------- (c) lazy regularization

def _sgd_step(objective, state, exp):
    opt = optax.sgd(1.0)
    step = jax.jit(make_train_step(exp.generator, exp.discriminator, objective, optax.sgd(0.0), opt))
    return step(state, ring_batch(jax.random.key(1)))


def test_lazy_r1_runs_every_4th_d_update_with_4_times_its_weight():
    exp = experiment.build(dataclasses.replace(SMALL, loss="wasserstein"))
    state = init_gan_state(jax.random.key(0), exp.generator, exp.discriminator, optax.sgd(0.0), optax.sgd(1.0),
                           data_shape=(2,), hparams={"penalty_weight": 0.5})
    lazy = objectives.wasserstein() + objectives.r1().every(4).weighted_by("penalty_weight", 0.5)
    eager = objectives.wasserstein() + (4.0 * objectives.r1()).weighted_by("penalty_weight", 0.5)
    plain = objectives.wasserstein()
    real = ring_batch(jax.random.key(1))["x"][0]

    def r1_here(params):  # E ||grad_x D(x)||^2, independently of jaxgan.penalties
        d = lambda x: exp.discriminator.apply({"params": params}, x[None], None, train=False)[0]
        return np.mean(np.sum(np.square(np.asarray(jax.vmap(jax.grad(d))(real))), axis=-1))

    for step_count, reference in ((0, eager), (4, eager), (1, plain), (7, plain)):
        s = state.replace(step=jnp.int32(step_count))
        new_lazy, m = _sgd_step(lazy, s, exp)
        new_ref, _ = _sgd_step(reference, s, exp)
        for a, b in zip(leaves(new_lazy.d.params), leaves(new_ref.d.params)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
        expected = r1_here(state.d.params) if reference is eager else 0.0
        np.testing.assert_allclose(m["d/r1"], expected, rtol=1e-5)
        np.testing.assert_allclose(m["d/total"], m["d/loss"] + (2.0 * expected), rtol=1e-5)
    # on penalty steps the D gradient is grad(loss) + 4 * 0.5 * grad(R1): one step's params moved by exactly that
    new_lazy, _ = _sgd_step(lazy, state, exp)
    new_plain, _ = _sgd_step(plain, state, exp)
    grad_r1 = jax.grad(lambda p: jnp.asarray(r1_jax(exp, p, real)))(state.d.params)
    for lazy_p, plain_p, g in zip(leaves(new_lazy.d.params), leaves(new_plain.d.params), leaves(grad_r1)):
        np.testing.assert_allclose(plain_p - lazy_p, 2.0 * g, rtol=1e-4, atol=1e-6)


def r1_jax(exp, params, real):
    d = lambda x: exp.discriminator.apply({"params": params}, x[None], None, train=False)[0]
    return jnp.mean(jnp.sum(jnp.square(jax.vmap(jax.grad(d))(real)), axis=-1))


def test_lazy_terms_need_a_positive_integer_period():
    with pytest.raises(ValueError, match="every"):
        objectives.r1().every(0)


  # ----------------------------------------------------------------------------- (d) G's auxiliary outputs

class ScaledG(nn.Module):
    """G(z) = a * z, returning (x, {"a": [B] copies of a}): a stand-in for the intermediate latents path-length
    regularization reads."""
    latent_dim: int = 2

    @nn.compact
    def __call__(self, z, labels=None, *, train=False):
        a = self.param("a", lambda k: jnp.full((), 0.7))
        return a * z, {"a": jnp.full((z.shape[0],), a)}


def test_a_g_term_reads_gs_auxiliary_outputs_and_its_gradient_reaches_g():
    exp = experiment.build(SMALL)
    aux_term = objectives.Objective((Term("a_squared", "g", lambda t: jnp.mean(jnp.square(t.g_aux["a"]))),))
    opt_g = optax.sgd(0.1)
    state = init_gan_state(jax.random.key(0), ScaledG(), exp.discriminator, opt_g, optax.sgd(0.0), data_shape=(2,),
                           hparams=exp.objective.hparams)
    batch = ring_batch(jax.random.key(1))
    results = {}
    for name, objective in (("with", exp.objective + aux_term), ("without", exp.objective)):
        step = jax.jit(make_train_step(ScaledG(), exp.discriminator, objective, opt_g, optax.sgd(0.0)))
        results[name] = step(state, batch)
    assert float(results["with"][1]["g/a_squared"]) == pytest.approx(0.49, rel=1e-6)
    moved = float(results["with"][0].g.params["a"]) - float(results["without"][0].g.params["a"])
    assert moved == pytest.approx(-0.1 * 2 * 0.7, rel=1e-5)  # - lr * d(a^2)/da


  # ----------------------------------------------------------------------------- (e) weight clipping in optax

def test_weight_clipping_is_part_of_ds_optimizer_and_lands_within_two_ulps_of_clipping_after_the_update():
    c = 0.01
    exp = experiment.build(dataclasses.replace(SMALL, loss="wasserstein", clip_weights=c, optimizer="rmsprop",
                                               d_lr=0.5))
    plain = experiment.make_optimizer(exp.config, exp.config.d_lr)
    state = exp.init(jax.random.key(0))
    # same optimizer-state layout as the unclipped optimizer: checkpoints of earlier versions restore
    assert jax.tree.structure(state.d.opt_state) == jax.tree.structure(plain.init(state.d.params))
    step = jax.jit(exp.train_step())
    for _ in range(2):  # step 1 clips the initial weights, step 2 weights already in range
        grads = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), state.d.params)
        u, _ = plain.update(grads, state.d.opt_state, state.d.params)
        clipped_after = penalties.clip_weights(optax.apply_updates(state.d.params, u), c)
        v, _ = exp.d_optimizer.update(grads, state.d.opt_state, state.d.params)
        new = leaves(optax.apply_updates(state.d.params, v))
        for p, n, ref in zip(leaves(state.d.params), new, leaves(clipped_after)):
            assert np.abs(n).max() <= c
            # a parameter p far outside the range (initial weights) lands on the float grid of p, not of c
            assert np.all(np.abs(n - ref) <= 2 * np.spacing(np.maximum(np.abs(p), np.float32(c))))
            inside = np.abs(ref) < c
            np.testing.assert_array_equal(n[inside], ref[inside])  # unclipped parameters: bit for bit
        state, _ = step(state, ring_batch(jax.random.key(1)))
    assert max(np.abs(p).max() for p in leaves(state.d.params)) <= c


def test_clip_weights_transform_chains_as_a_stateless_link():
    opt = optax.chain(optax.sgd(1.0), clip_weights_transform(0.5))
    params = {"w": jnp.array([0.2, 0.4, -0.45])}
    updates, _ = opt.update({"w": jnp.array([-0.1, -0.3, 0.2])}, opt.init(params), params)
    np.testing.assert_array_equal(optax.apply_updates(params, updates)["w"], np.float32([0.3, 0.5, -0.5]))
    with pytest.raises(ValueError, match="> 0"):
        clip_weights_transform(0.0)
