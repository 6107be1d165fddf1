"""PacGAN's 2D experiment (fjxmlzn/PacGAN): its networks (`jaxgan.models.pacgan_mlp`), the fixed training set of
the 2D datasets (`jaxgan.data.toy.FixedTrainingSet`, ``--toy_train_size``) and the flagfiles reproducing it."""
import dataclasses

import jax
import numpy as np
import pytest

from conftest import REPO
from jaxgan import experiment, sweep
from jaxgan.cli import common as _common
from jaxgan.config import Config, ConfigError
from jaxgan.data import toy
from jaxgan.models import pacgan_mlp
from jaxgan.training import make_data

COUNT = lambda tree: sum(x.size for x in jax.tree.leaves(tree))  # noqa: E731


def _flagfile(name: str) -> Config:
    return Config(**_common.read_flagfile(REPO / "launch" / "configs" / name, Config))


@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_parameter_counts_are_the_reference_layer_sizes(m):
    """From the reference's layer sizes: G = Linear(2->400, no bias) + 3 Linear(400->400, no bias) + Linear(400->2)
    + 4 BatchNorms (scale, shift); D = LinearMaxout(2m -> 200x5) + 2 LinearMaxout(200 -> 200x5) + Linear(200 -> 1)."""
    config = dataclasses.replace(_flagfile("pacgan_ring.cfg"), packing=m, batch_size=100 * m)
    experiment.validate(config)
    state = jax.eval_shape(experiment.build(config).init, jax.random.key(0))
    g = 2 * 400 + 3 * 400 * 400 + (400 * 2 + 2) + 4 * (400 + 400)
    d = (2 * m * 1000 + 1000) + 2 * (200 * 1000 + 1000) + (200 + 1)
    assert (COUNT(state.g.params), COUNT(state.d.params)) == (g, d) == (484_802, 2000 * m + 403_201)


def test_maxout_groups_consecutive_pieces_as_numpy():
    h = np.random.default_rng(0).normal(size=(3, 7, 10)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(pacgan_mlp.maxout(h, 5)), h.reshape(3, 7, 2, 5).max(-1))


def test_discriminator_is_three_maxout_layers_and_a_linear_output_as_numpy():
    d = pacgan_mlp.PacGANDiscriminator()
    x = np.random.default_rng(1).normal(size=(6, 4)).astype(np.float32)
    params = d.init(jax.random.key(0), x, train=False)["params"]
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    h = x.astype(np.float64)
    for i in range(3):
        h = (h @ p[f"Dense_{i}"]["kernel"] + p[f"Dense_{i}"]["bias"]).reshape(6, 200, 5).max(-1)
    want = (h @ p["Dense_3"]["kernel"] + p["Dense_3"]["bias"])[:, 0]
    np.testing.assert_allclose(np.asarray(d.apply({"params": params}, x, train=False)), want, rtol=2e-5, atol=1e-6)


def test_initialization_is_the_references():
    """Weights N(0, 0.02^2), biases 0, no bias in G's hidden layers, BatchNorm scale 1 / shift 0."""
    config = _flagfile("pacgan_grid.cfg")
    state = experiment.build(config).init(jax.random.key(0))
    g, d = state.g.params, state.d.params
    assert [sorted(g[f"Dense_{i}"]) for i in range(5)] == [["kernel"]] * 4 + [["bias", "kernel"]]
    assert all(np.all(g[f"BatchNorm_{i}"]["scale"] == 1) and np.all(g[f"BatchNorm_{i}"]["bias"] == 0)
               for i in range(4))
    kernels = [np.asarray(v["kernel"]) for v in (*[g[f"Dense_{i}"] for i in range(5)], *d.values())]
    for k in kernels:  # the smallest has 2*400 weights: std within ~6 standard errors
        assert abs(k.mean()) < 6 * 0.02 / np.sqrt(k.size) and abs(k.std() / 0.02 - 1) < 6 / np.sqrt(2 * k.size)
    assert all(np.all(np.asarray(v["bias"]) == 0) for v in d.values()) and np.all(np.asarray(g["Dense_4"]["bias"]) == 0)


@pytest.mark.parametrize("size,n", [(250, 100), (10, 32)])
def test_the_fixed_training_set_draws_each_point_once_per_epoch(size, n):
    """Batches of n samples may straddle epochs (size 250, batch 100) or span several (size 10, batch 32)."""
    sampler, _ = toy.toy_sampler("ring8", train_size=size)
    key = jax.random.key(3)
    steps = 3 * size // n + 2
    indices = jax.jit(jax.vmap(sampler.point_indices, in_axes=(None, 0, None)), static_argnums=2)
    idx = np.asarray(indices(key, np.arange(steps), n)).reshape(-1)
    epochs = [idx[e * size:(e + 1) * size] for e in range(len(idx) // size)]
    assert len(epochs) >= 3
    for order in epochs:
        np.testing.assert_array_equal(np.sort(order), np.arange(size))
    assert not np.array_equal(epochs[0], epochs[1])  # reshuffled every epoch
    every_point = np.asarray(jax.jit(sampler.points)(key, np.arange(size)))
    batch = jax.jit(sampler.batch, static_argnums=2)(key, 1, n)
    np.testing.assert_allclose(np.asarray(batch), every_point[idx[n:2 * n]], rtol=1e-6, atol=1e-7)


def test_the_fixed_set_is_per_seed_and_training_draws_its_epochs():
    """ToyData (what launch/train.py feeds) of one epoch holds every point of the seed's set once."""
    config = Config(dataset="ring8", toy_train_size=96, batch_size=32, n_critic=1)
    data = make_data(config)
    epoch = np.concatenate([np.asarray(next(data)["x"][0]) for _ in range(3)])
    sampler, _ = toy.toy_sampler("ring8", train_size=96)
    data_key = jax.random.fold_in(jax.random.key(config.seed), 0x5EED)  # ToyData's
    points = jax.jit(sampler.points)
    every_point = np.asarray(points(data_key, np.arange(96)))
    # each drawn sample is exactly one point of the set, and every point is drawn once
    nearest = np.argmin(np.sum((epoch[:, None] - every_point[None]) ** 2, axis=-1), axis=1)
    np.testing.assert_array_equal(np.sort(nearest), np.arange(96))
    np.testing.assert_allclose(epoch, every_point[nearest], rtol=1e-6, atol=1e-7)
    other = np.asarray(points(jax.random.fold_in(jax.random.key(1), 0x5EED), np.arange(96)))
    assert np.min(np.abs(np.sort(other, axis=0) - np.sort(every_point, axis=0))) >= 0 and not np.allclose(
        np.sort(other, axis=0), np.sort(every_point, axis=0), atol=1e-3)
    again = make_data(config)
    np.testing.assert_array_equal(np.asarray(next(again)["x"]), epoch[None, :32])


def _separate_run(config: Config):
    exp = experiment.build(config)
    data = make_data(config)
    state = jax.jit(exp.init)(jax.random.key(config.seed))
    step = jax.jit(exp.train_step())
    for _ in range(config.steps):
        state, _ = step(state, next(data))
    return jax.device_get(state.g.params), jax.device_get(state.d.params)


@pytest.mark.slow  # ~20 s on 2 free cores (a sweep program and two separate runs compile)
def test_a_vmapped_sweep_of_packed_pacgan_runs_on_a_fixed_set_equals_separate_runs():
    base = Config(dataset="ring8", model="pacgan_mlp", width=8, packing=2, toy_train_size=48, batch_size=32, steps=4,
                  log_every=2, num_samples=100, g_lr=1e-3, d_lr=1e-3)
    group, = sweep.plan(base, seeds=[5, 9], sweep=[])
    result = sweep.run_group(group, chunk=2, w1_samples=50)
    for i, run in enumerate(group.runs):
        g, d = _separate_run(run.config)
        for got, want in ((result.final_params, g), (result.final_d_params, d)):
            for a, b in zip(jax.tree.leaves(jax.tree.map(lambda x: x[i], got)), jax.tree.leaves(want), strict=True):
                np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


@pytest.mark.parametrize("changes,message", [
    (dict(toy_train_size=-1), "--toy_train_size must be >= 0 (0: fresh samples), got -1"),
    (dict(toy_train_size=10, steps=10**6, batch_size=4096), "--toy_train_size needs --steps * --n_critic * "),
])
def test_bad_values_are_config_errors(changes, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")):
        experiment.validate(Config(dataset="ring8", **changes))


def test_toy_train_size_is_refused_for_image_data():
    with pytest.raises(ConfigError, match="--toy_train_size=10 has no effect: it applies to the 2D datasets"):
        experiment.validate(Config(dataset="digits", model="dcgan", image_size=28, toy_train_size=10))


@pytest.mark.parametrize("name,dataset,std", [("pacgan_ring.cfg", "ring8", 0.01), ("pacgan_grid.cfg", "grid25", 0.05)])
def test_the_flagfiles_are_the_references_settings(name, dataset, std):
    config = _flagfile(name)
    experiment.validate(config)
    assert (config.dataset, config.model, config.packing, config.toy_train_size) == (dataset, "pacgan_mlp", 1, 100_000)
    assert (config.batch_size, config.g_lr, config.d_lr, config.b1, config.b2) == (100, 1e-4, 1e-4, 0.8, 0.999)
    assert (config.loss, config.steps, config.num_samples) == ("non_saturating", 400_000, 2500)
    _, mixture = toy.toy_sampler(config.dataset, **experiment.toy_mixture_options(config))
    assert mixture.std == std
