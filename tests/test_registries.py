"""Every registry entry works the day it is added: models (one train step), losses and penalties (one ring8 MLP
step), image metrics (one evaluation of random features); plus the registries' lookups and messages."""
import dataclasses
import re

import jax
import numpy as np
import pytest

from jaxgan import experiment, models, objectives
from jaxgan.config import Config, ConfigError
from jaxgan.metrics import distances, registry
from jaxgan.metrics.frechet import FeatureStats
from jaxgan.metrics.protocol import Context, EvaluationError, summarize
from jaxgan.step import sample

BATCH = 4


def _tiny_config(name: str) -> Config:
    """The smallest run of model ``name``: its data kind, its smallest image size, width 8."""
    spec = models.MODELS[name]
    if spec.data == "2d":
        depth = {"depth": 1} if name == "mlp" else {}  # pacgan_mlp has the reference's fixed depths
        return Config(dataset="ring8", model=name, width=8, latent_dim=4, batch_size=BATCH, **depth)
    return Config(dataset="digits", model=name, image_size=min(spec.image_sizes), width=8, latent_dim=8,
                  batch_size=BATCH)


# Models whose own test files train full steps (resume, data parallelism) and sample: their compiles are the
# suite's most expensive, so they are not compiled a second time here.
TRAINED_IN_THEIR_OWN_TESTS = {"stylegan2", "biggan"}


@pytest.mark.parametrize("name", sorted(set(models.MODELS) - TRAINED_IN_THEIR_OWN_TESTS))
def test_every_model_trains_one_step_with_finite_metrics_and_the_right_shapes(name):
    config = _tiny_config(name)
    experiment.validate(config)
    exp = experiment.build(config, num_classes=0)
    shape = exp.data_shape
    assert shape == ((2,) if models.MODELS[name].data == "2d" else (config.image_size,) * 2 + (1,))
    state = jax.jit(exp.init)(jax.random.key(0))  # jitted: op-by-op, a deep model compiles every op on its own
    x = jax.random.uniform(jax.random.key(1), (config.n_critic, BATCH, *shape), minval=-1, maxval=1)
    new, metrics = jax.jit(exp.train_step())(state, {"x": x})
    assert all(np.all(np.isfinite(np.asarray(v))) for v in jax.tree.leaves(metrics)), metrics
    assert float(metrics["finite"]) == 1.0
    fake = jax.jit(lambda p, s: sample(exp.generator, p, s, jax.random.key(2), BATCH))(new.g.params,
                                                                                         new.g.model_state)
    assert fake.shape == (BATCH, *shape)
    logits = jax.jit(lambda v, x: exp.discriminator.apply(v, x, train=False))(
        {"params": new.d.params, **new.d.model_state}, fake)
    assert logits.shape == (BATCH,) and np.all(np.isfinite(np.asarray(logits)))


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_a_model_spec_states_what_its_networks_do(name):
    """The spec's claims against the built modules: defaults, widths, BatchNorm in D, data kind."""
    spec = models.MODELS[name]
    config = dataclasses.replace(_tiny_config(name), width=0, latent_dim=0)
    g, d = models.build_models(config, (2,) if spec.data == "2d" else (32, 32, 1), 0)
    assert g.latent_dim == spec.default_latent_dim
    # pacgan_mlp: the reference's G 400 / D 200 units
    assert models.model_widths(config) == ((400, 200) if name == "pacgan_mlp" else (spec.default_width,) * 2)
    assert spec.d_uses_batch_norm(config) == models.discriminator_uses_batch_norm(d)
    assert spec.convolves == (spec.data == "image")


def test_an_unknown_model_is_a_clear_error_not_the_resnet():
    config = Config(dataset="digits", model="resnet_typo", image_size=32)
    with pytest.raises(ConfigError, match=re.escape(f"--model='resnet_typo' is not one of {sorted(models.MODELS)}")):
        models.build_models(config, (32, 32, 1), 0)
    with pytest.raises(ConfigError, match="--model='resnet_typo' is not one of"):
        models.model_widths(config)


def test_model_options_are_refused_by_models_that_do_not_take_them():
    with pytest.raises(ConfigError, match="--d_normalization applies to --model=dcgan, not sngan"):
        models.validate_image_config(Config(dataset="digits", model="sngan", image_size=32,
                                            d_normalization="layer_norm"))
    with pytest.raises(ConfigError, match="--attention_resolution applies to --model=biggan or biggan_deep or sagan, not dcgan"):
        models.validate_image_config(Config(dataset="digits", model="dcgan", image_size=32, attention_resolution=16))
    with pytest.raises(ConfigError, match="--image_size=28 is not supported by --model=sagan; accepted: 32, 64, 128"):
        models.validate_image_config(Config(dataset="digits", model="sagan", image_size=28))


def _ring8_step(loss: str, penalty: str = "none"):
    config = Config(dataset="ring8", width=8, depth=1, latent_dim=4, batch_size=BATCH, loss=loss, penalty=penalty)
    if penalty != "none":
        config = dataclasses.replace(config, penalty_weight=1.0)
    exp = experiment.build(config)
    state = exp.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (1, BATCH, 2))
    new, metrics = jax.jit(exp.train_step())(state, {"x": x})
    return state, new, metrics


@pytest.mark.parametrize("loss", sorted(objectives.LOSSES))
def test_every_loss_trains_one_ring8_step_with_finite_metrics(loss):
    state, new, metrics = _ring8_step(loss)
    assert all(np.all(np.isfinite(np.asarray(v))) for v in jax.tree.leaves(metrics)), metrics
    moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(new.g.params), jax.tree.leaves(state.g.params))]
    assert any(moved)


@pytest.mark.parametrize("penalty", sorted(p for p in objectives.PENALTIES if p != "none"))
def test_every_penalty_trains_one_ring8_step_with_a_finite_positive_term(penalty):
    _, _, metrics = _ring8_step("wasserstein", penalty)
    assert all(np.all(np.isfinite(np.asarray(v))) for v in jax.tree.leaves(metrics)), metrics
    terms = [k for k in metrics if penalty in k]
    assert terms and all(float(metrics[k]) >= 0 for k in terms), sorted(metrics)


def _random_sides(n_fake: int, n_real: int = 40, dim: int = 6, classes: int = 5):
    rng = np.random.default_rng(0)
    fake = summarize(rng.normal(size=(n_fake, dim)), rng.normal(size=(n_fake, classes)) * 2)
    real = summarize(rng.normal(0.5, 1.0, size=(n_real, dim)), rng.normal(size=(n_real, classes)) * 2)
    return fake, real


EXPECTED_KEYS = {"fid": {"fid"}, "kid": {"kid", "kid_std"}, "is": {"is", "is_std"},
                 "pr": {"precision", "recall", "density", "coverage"}}


@pytest.mark.parametrize("name", sorted(registry.METRICS))
def test_every_metric_evaluates_random_features_to_finite_numbers_with_its_keys(name):
    metric = registry.METRICS[name]
    assert set(metric.needs) <= set(registry.NEEDS) and metric.min_samples >= 2
    fake, real = _random_sides(max(30, metric.min_samples))
    values, protocol = registry.compute([name], fake, real, Context(feature_dim=6, seed=0))
    assert set(values) == EXPECTED_KEYS.get(name, set(values)) and values
    assert all(np.isfinite(v) for v in values.values()) and list(protocol) == [name]
    assert protocol[name]["n_fake"] <= fake.count


@pytest.mark.parametrize("name", sorted(registry.METRICS))
def test_every_metric_refuses_fewer_than_its_minimum_samples(name):
    metric = registry.METRICS[name]
    fake, real = _random_sides(metric.min_samples - 1)
    with pytest.raises(EvaluationError, match=f"--metrics={name} needs --num_samples >= {metric.min_samples}"):
        registry.compute([name], fake, real, Context(feature_dim=6))


def test_metric_values_equal_the_direct_formulas():
    """The registry's metrics compute exactly what `jaxgan.metrics` computes on the same arrays."""
    rng = np.random.default_rng(1)
    f_fake = rng.normal(size=(50, 4)).astype(np.float32)  # the rows KID and PR keep are float32
    f_real = rng.normal(0.3, 1.2, size=(60, 4)).astype(np.float32)
    l_fake, l_real = rng.normal(size=(50, 3)) * 3, rng.normal(size=(60, 3))
    fake, real = summarize(f_fake, l_fake), summarize(f_real, l_real)
    values, _ = registry.compute(list(registry.METRICS), fake, real, Context({"fid": "fcd"}, 4, seed=3))
    assert values["fcd"] == pytest.approx(FeatureStats.from_features(f_fake).frechet_distance(
        FeatureStats.from_features(f_real)), rel=1e-10)
    assert values["kid"] == pytest.approx(distances.kernel_distance(f_real, f_fake, num_subsets=100,
                                                                    max_subset_size=1000, key=3)[0], rel=1e-10)
    assert (values["is"], values["is_std"]) == pytest.approx(distances.inception_score(l_fake, 10), rel=1e-10)
    pr = distances.precision_recall_density_coverage(f_real, f_fake, k=5)
    assert {k: values[k] for k in pr} == pytest.approx(pr)
    assert registry.score_of_logits(l_fake, 1) == pytest.approx(distances.inception_score(l_fake, 1), rel=1e-10)


def test_config_validation_reads_each_metrics_minimum_samples():
    for metrics, low in (("fid", 2), ("fid,pr", 6), ("kid,is", 10)):
        assert registry.min_samples(metrics.split(",")) == low
        config = Config(dataset="digits", model="dcgan", image_size=28, eval_every=2, eval_metrics=metrics,
                        eval_num_samples=low - 1)
        with pytest.raises(ConfigError, match=f"--eval_num_samples must be >= {low}"):
            experiment.validate(config)
        experiment.validate(dataclasses.replace(config, eval_num_samples=low))
