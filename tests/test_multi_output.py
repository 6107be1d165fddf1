"""Discriminators with more than one output: ACGAN's class head and Realness GAN's distribution over outcomes."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import special, stats

from jaxgan import experiment, objectives, realness, sweep
from jaxgan.config import Config, ConfigError
from jaxgan.models import heads
from jaxgan.models.mlp import MLPDiscriminator, MLPGenerator
from jaxgan.state import init_gan_state
from jaxgan.step import make_train_step

from test_validation import TINY, IMAGE, error_lines, run_cases


def _softmax64(logits):
    return special.softmax(np.asarray(logits, np.float64), axis=-1)


# ------------------------------------------------------------------------------------------------ Realness GAN

@pytest.fixture(scope="module")
def fixed_logits():
    rng = np.random.default_rng(7)
    return rng.normal(0, 2, size=(6, 5)), rng.normal(0, 2, size=(6, 5))


def test_realness_kl_terms_equal_scipy_in_float64(fixed_logits):
    real, fake = fixed_logits
    a0, a1 = realness.anchors("gaussian_uniform", 5)
    p_real, p_fake = _softmax64(real), _softmax64(fake)
    kl = lambda p, q: np.array([stats.entropy(pi, qi) for pi, qi in zip(np.broadcast_to(p, q.shape), q)])  # noqa
    d_ref = kl(a1, p_real).mean() + kl(a0, p_fake).mean()
    g_ref = {"relativistic": kl(p_real, p_fake).mean(),
             "relativistic_anchor": kl(p_real, p_fake).mean() - kl(a0, p_fake).mean(),
             "anchors": kl(a1, p_fake).mean() - kl(a0, p_fake).mean()}
    with jax.enable_x64(True):
        np.testing.assert_allclose(realness.kl_from_logits(a1, real), special.rel_entr(a1, p_real).sum(-1), rtol=1e-12)
        np.testing.assert_allclose(realness.discriminator_loss(real, fake, a0, a1), d_ref, rtol=1e-12)
        for name, ref in g_ref.items():
            np.testing.assert_allclose(realness.generator_loss(real, fake, a0, a1, name), ref, rtol=1e-12, err_msg=name)
    # the float32 path (training) within float32 rounding
    np.testing.assert_allclose(realness.discriminator_loss(jnp.float32(real), jnp.float32(fake), a0, a1), d_ref,
                               rtol=1e-5)
    assert float(realness.kl_from_logits(a1, np.log(np.maximum(a1, 1e-30)))) == pytest.approx(0.0, abs=1e-6)
    # the logged readout: D's mass on the outcomes where A1 > A0 (a D that outputs A1 puts A1's mass there)
    assert float(realness.real_side_mass(np.log(np.maximum(a1, 1e-30))[None], a0, a1)) == pytest.approx(
        a1[a1 > a0].sum(), rel=1e-5)
    # the objective's terms are these functions (D's loss; G's default, the paper's relativistic_anchor form)
    t = objectives.TermInputs(jnp.float32(real), jnp.float32(fake), None, None, None, jax.random.key(0), {})
    objective = objectives.realness_gan(5)
    assert float(objective.evaluate("d", t)[0]) == pytest.approx(d_ref, rel=1e-5)
    assert float(objective.evaluate("g", t)[0]) == pytest.approx(g_ref["relativistic_anchor"], rel=1e-5)


def test_realness_anchors_follow_the_reference_projection():
    # N=5, support linspace(-1, 1, 5) (step 0.5): a shift of +1 moves every atom up two outcomes, clipped at the
    # top; -1 moves them down two, clipped at the bottom (the reference's CategoricalLoss with skew +-1).
    np.testing.assert_allclose(realness.shift(np.full(5, 0.2), 1.0), [0, 0, 0.2, 0.2, 0.6], atol=1e-15)
    a = np.array([0.1, 0.2, 0.3, 0.25, 0.15])
    np.testing.assert_allclose(realness.shift(a, -1.0), [0.6, 0.25, 0.15, 0, 0], atol=1e-15)
    np.testing.assert_allclose(realness.shift(a, 0.0), a, atol=1e-12)  # no skew: the raw histogram
    # N=4 (step 2/3): +0.5 moves each atom 3/4 of a step up: 1/4 of its mass stays, 3/4 goes one outcome up
    # (0.0625 / 0.1875 of 0.25); the top atom is clipped and stays
    np.testing.assert_allclose(realness.shift(np.full(4, 0.25), 0.5), [0.0625, 0.25, 0.25, 0.4375], atol=1e-12)
    for name in realness.ANCHORS:
        for n in (2, 5, 20):
            a0, a1 = realness.anchors(name, n)
            assert a0.shape == a1.shape == (n,) and np.all(a0 >= 0) and np.all(a1 >= 0)
            assert a0.sum() == pytest.approx(1.0) and a1.sum() == pytest.approx(1.0)
            support = np.linspace(-1, 1, n)
            assert support @ a1 > 0 > support @ a0  # real anchor on the high outcomes, fake on the low ones
    # the reference's default: a narrow normal's histogram (mass in the middle bins) and a uniform's
    raw0, raw1 = realness.ANCHORS["gaussian_uniform"](5)
    np.testing.assert_allclose(raw1, 0.2)
    np.testing.assert_allclose(raw0, np.diff(stats.norm.cdf(np.linspace(-3, 3, 6))) / np.diff(stats.norm.cdf([-3, 3])))
    with pytest.raises(ValueError, match="outcomes must be an integer >= 2"):
        realness.anchors("gaussian_uniform", 1)


def test_realness_discriminator_outputs_n_logits_in_every_model():
    for config, shape in [(Config(dataset="ring8", loss="realness", realness_outcomes=5, width=8, depth=1), (2,)),
                          (Config(dataset="digits", model="dcgan", image_size=28, width=4, loss="realness",
                                  realness_outcomes=3, conditional=True), (28, 28, 1)),
                          (Config(dataset="digits", model="sngan", image_size=32, width=4, loss="realness",
                                  realness_outcomes=3), (32, 32, 1))]:
        exp = experiment.build(config, num_classes=10 if config.conditional else 0)
        state = jax.eval_shape(exp.init, jax.random.key(0))
        x, y = jnp.zeros((2, *shape)), jnp.zeros((2,), jnp.int32)
        out = jax.eval_shape(lambda d: exp.discriminator.apply({"params": d.params, **d.model_state}, x, y,
                                                               train=False), state.d)
        assert out.shape == (2, config.realness_outcomes), (config.model, out)


def test_projection_per_output_reduces_to_the_scalar_projection():
    rng = np.random.default_rng(0)
    logits, features, embed = rng.normal(size=(4, 3)), rng.normal(size=(4, 6)), rng.normal(size=(4, 18))
    want = logits + np.einsum("bnf,bf->bn", embed.reshape(4, 3, 6), features)
    np.testing.assert_allclose(heads.project(jnp.asarray(logits), embed, features), want, rtol=1e-5)
    one = heads.project(jnp.asarray(logits[:, :1]), embed[:, :6], features)
    np.testing.assert_allclose(one[:, 0], logits[:, 0] + np.sum(embed[:, :6] * features, axis=1), rtol=1e-5)


def _ring8_realness(steps, seeds, **overrides):
    """Final (modes captured, high-quality fraction) per seed of a vmapped ring8 (std 0.05) realness sweep."""
    base = Config(dataset="ring8", loss="realness", realness_outcomes=5, mixture_std=0.05, width=64, depth=2,
                  batch_size=256, steps=steps, g_lr=2e-3, d_lr=6e-3, b2=0.99, log_every=steps, checkpoint_every=steps,
                  steps_per_call=steps, num_samples=1000, **overrides)
    (group,) = sweep.plan(base, seeds=seeds)
    res = sweep.run_group(group, chunk=len(seeds), num_samples=1000)
    modes = np.array([e[-1]["modes_captured"] for e in res.evals])
    quality = np.array([e[-1]["high_quality_fraction"] for e in res.evals])
    return modes, quality


@pytest.mark.slow
def test_realness_gan_trains_on_the_ring():
    """ring8 (std 0.05, 3 std = 0.15), MLP 64x2, 5 outcomes, 300 steps of 256, 8 seeds vmapped in one program.
    Measured with seeds 0-15 (CPU): 8 modes in every seed; high-quality fraction 0.284 / 0.340 / 0.403 (min / mean
    / max, sd 0.035). An untrained G scores 0.0004-0.11 with 1-3 modes (tests/test_launch.py). With the reference
    code's G objective (--realness_generator=relativistic) the same seeds end with 4-8 modes (6 seeds below 8)."""
    modes, quality = _ring8_realness(300, list(range(8)))
    assert modes.min() >= 6 and np.median(modes) == 8, modes
    assert quality.min() >= 0.2, quality


# ------------------------------------------------------------------------------------------------ ACGAN

def _acgan_inputs(rng, k=4, b=32):
    real, fake = rng.normal(size=(b, k)), rng.normal(size=(b, k))
    real_labels, fake_labels = rng.integers(0, k, b), rng.integers(0, k, b)
    return objectives.TermInputs(None, jnp.zeros(b), jnp.zeros((b, 2)), jnp.zeros((b, 2)), None, jax.random.key(0),
                                 {}, jnp.asarray(real_labels), jnp.asarray(fake_labels),
                                 {"class_logits": jnp.asarray(real, jnp.float32)},
                                 {"class_logits": jnp.asarray(fake, jnp.float32)})


def test_acgan_terms_and_class_accuracy_against_numpy():
    rng = np.random.default_rng(3)
    t = _acgan_inputs(rng)
    real, fake = np.asarray(t.real_aux["class_logits"], np.float64), np.asarray(t.fake_aux["class_logits"], np.float64)
    yr, yf = np.asarray(t.real_labels), np.asarray(t.fake_labels)
    xent = lambda logits, y: np.mean(special.logsumexp(logits, axis=1) - logits[np.arange(len(y)), y])  # noqa
    objective = objectives.acgan()
    d_total, d_values = objective.evaluate("d", t)
    assert float(d_values["class_accuracy_real"]) == np.mean(np.argmax(real, 1) == yr)
    assert float(d_values["class_accuracy_fake"]) == np.mean(np.argmax(fake, 1) == yf)
    assert 0 < float(d_values["class_accuracy_real"]) < 1
    assert float(d_values["acgan"]) == pytest.approx(xent(real, yr) + xent(fake, yf), rel=1e-5)
    assert float(d_total) == pytest.approx(float(d_values["acgan"]), rel=1e-6)  # accuracies are not added
    _, g_values = objective.evaluate("g", t)
    assert float(g_values["acgan"]) == pytest.approx(xent(fake, yf), rel=1e-5)
    # weighted by the run-time hparam, metric-only terms still unweighted and not added
    weighted = objective.weighted_by("auxiliary_classifier_weight", 1.0)
    total, values = weighted.evaluate("d", t._replace(hparams={"auxiliary_classifier_weight": jnp.float32(0.25)}))
    assert float(total) == pytest.approx(0.25 * float(d_values["acgan"]), rel=1e-6)
    assert float(values["class_accuracy_real"]) == float(d_values["class_accuracy_real"])


def test_a_class_head_discriminator_trains_and_reports_its_accuracy_on_reals():
    """An MLP D with a class head (unconditioned) and a conditional G, one train step on labelled 2D data: the
    step's d/class_accuracy_real is the accuracy of D's head (parameters before the update) on the real batch."""
    k, b = 3, 64
    g, d = MLPGenerator(latent_dim=4, hidden=(16,), num_classes=k), MLPDiscriminator(hidden=(16,), class_head=k)
    objective = objectives.non_saturating() + objectives.acgan().weighted_by("auxiliary_classifier_weight", 1.0)
    opt = optax.adam(1e-3)
    state = init_gan_state(jax.random.key(0), g, d, opt, opt, data_shape=(2,), hparams=objective.hparams,
                           num_classes=k)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, k, b)
    x = (np.eye(k, 2)[labels] + 0.1 * rng.normal(size=(b, 2))).astype(np.float32)
    new, metrics = jax.jit(make_train_step(g, d, objective, opt, opt, num_classes=k))(
        state, {"x": x[None], "label": labels[None].astype(np.int32)})
    logits, aux = d.apply({"params": state.d.params}, x, train=False)
    assert logits.shape == (b,) and aux["class_logits"].shape == (b, k)
    want = np.mean(np.argmax(np.asarray(aux["class_logits"]), 1) == labels)
    assert float(metrics["d/class_accuracy_real"]) == pytest.approx(want, abs=1e-7)
    assert 0 <= float(metrics["d/class_accuracy_fake"]) <= 1 and float(metrics["g/acgan"]) > 0
    assert float(metrics["d/total"]) == pytest.approx(float(metrics["d/loss"]) + float(metrics["d/acgan"]), rel=1e-5)


def test_acgan_discriminators_are_unconditioned_with_a_class_head():
    for model, size in (("dcgan", 28), ("sngan", 32)):
        config = Config(dataset="digits", model=model, image_size=size, width=4, conditional=True,
                        auxiliary_classifier_weight=1.0)
        exp = experiment.build(config, num_classes=10)
        assert exp.generator.num_classes == 10 and exp.discriminator.num_classes == 0
        assert exp.discriminator.class_head == 10
        state = jax.eval_shape(exp.init, jax.random.key(0))
        assert "embed" not in state.d.params and "class_out" in state.d.params
        x, y = jnp.zeros((2, size, size, 1)), jnp.zeros((2,), jnp.int32)
        out = jax.eval_shape(lambda d: exp.discriminator.apply({"params": d.params, **d.model_state}, x, y,
                                                               train=False), state.d)
        assert out[0].shape == (2,) and out[1]["class_logits"].shape == (2, 10)
        assert exp.objective.hparams["auxiliary_classifier_weight"] == 1.0


ACGAN_DIGITS = Config(dataset="digits", model="dcgan", image_size=28, width=4, latent_dim=8, batch_size=8, steps=2,
                      conditional=True)


def test_a_sweep_of_the_class_weight_is_one_program_with_per_run_weights():
    (group,) = sweep.plan(ACGAN_DIGITS, seeds=[1], sweep=[("auxiliary_classifier_weight", [0.0, 3.0])])
    assert [r.hparams["auxiliary_classifier_weight"] for r in group.runs] == [0.0, 3.0]
    # the program is built with the non-zero weight, so it has the class head (the 0.0 run uses it with weight 0)
    assert group.config.auxiliary_classifier_weight == 3.0
    assert heads.discriminator_head(group.config, 10) == dict(num_classes=0, class_head=10, outputs=1)


def test_vmapped_runs_with_per_run_class_weights_equal_separate_runs():
    """What a sweep does with a run-time hparam (jax.vmap of the step over stacked states whose hparams differ),
    against each run alone: a class-head MLP D and a conditional G on labelled 2D data, three steps."""
    k, b = 3, 16
    g, d = MLPGenerator(latent_dim=4, hidden=(16,), num_classes=k), MLPDiscriminator(hidden=(16,), class_head=k)
    objective = objectives.non_saturating() + objectives.acgan().weighted_by("auxiliary_classifier_weight", 1.0)
    opt = optax.adam(1e-2)
    step = make_train_step(g, d, objective, opt, opt, num_classes=k)
    weights = (0.5, 3.0)
    states = [init_gan_state(jax.random.key(5), g, d, opt, opt, data_shape=(2,), num_classes=k,
                             hparams={**objective.hparams, "auxiliary_classifier_weight": w}) for w in weights]
    rng = np.random.default_rng(1)
    batches = [{"x": rng.normal(size=(1, b, 2)).astype(np.float32),
                "label": rng.integers(0, k, (1, b)).astype(np.int32)} for _ in range(3)]

    def run(step_fn, state):
        for batch in batches:
            state, _ = step_fn(state, batch)
        return state

    separate = [run(jax.jit(step), s) for s in states]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
    vmapped = run(jax.jit(jax.vmap(step, in_axes=(0, None))), stacked)
    for i, alone in enumerate(separate):
        for a, v in zip(jax.tree.leaves((alone.g.params, alone.d.params)),
                        jax.tree.leaves(jax.tree.map(lambda x, i=i: x[i], (vmapped.g.params, vmapped.d.params)))):
            np.testing.assert_allclose(v, a, atol=1e-6)
    # same seed and data, different weights: different discriminators
    assert max(float(np.max(np.abs(x - y))) for x, y in
               zip(jax.tree.leaves(separate[0].d.params), jax.tree.leaves(separate[1].d.params))) > 1e-4


# ------------------------------------------------------------------------------------------------ validation

@pytest.mark.parametrize("config, message", [
    (dict(dataset="digits", model="dcgan", image_size=28, auxiliary_classifier_weight=1.0),
     "--auxiliary_classifier_weight=1.0 needs --conditional"),
    (dict(dataset="digits", model="dcgan", image_size=28, conditional=True, auxiliary_classifier_weight=-1.0),
     "--auxiliary_classifier_weight must be a finite number >= 0"),
    (dict(loss="realness", realness_outcomes=1), "--realness_outcomes must be an integer in [2, 4096], got 1"),
    (dict(loss="realness", realness_outcomes=10**6), "--realness_outcomes must be an integer in [2, 4096]"),
    (dict(loss="realness", realness_generator="minimax"), "--realness_generator='minimax' is not one of"),
    (dict(dataset="ring8", model="pacgan_mlp", loss="realness"), "--loss=realness needs a D with --realness_outcomes "
     "outputs; --model=pacgan_mlp's D has one output; use --model="),
    (dict(loss="realness", realness_anchors="cauchy"), "--realness_anchors='cauchy' is not one of"),
    (dict(loss="realness", penalty="r1", penalty_weight=1.0), "--penalty=r1 needs a scalar D output"),
    (dict(realness_outcomes=5), "--realness_outcomes=5 has no effect: it applies to --loss=realness"),
])
def test_bad_multi_output_configs_are_clear_errors(config, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        experiment.validate(Config(**config))


def test_launcher_refuses_bad_multi_output_flags_in_one_line(tmp_path):
    results = run_cases(tmp_path, [
        ("acgan", IMAGE + ["--auxiliary_classifier_weight=1"]),
        ("outcomes", TINY + ["--loss=realness", "--realness_outcomes=1"]),
    ])
    for name, flag in (("acgan", "--auxiliary_classifier_weight"), ("outcomes", "--realness_outcomes")):
        r = results[name]
        assert r["rc"] == 2 and not r["exists"], r
        (line,) = error_lines(r["stderr"])
        assert flag in line, line
