"""Losses against TF-GAN's published test values and against float64 NumPy formulas."""
import numpy as np
import pytest
from scipy import integrate, stats

from jaxgan import losses

# TF-GAN losses_impl_test.py inputs and expected values.
REAL = np.array([-5.0, 1.4, 12.5, 2.7])
GEN = np.array([10.0, 4.4, -5.5, 3.6])
TF_WEIGHT = 2.3
TF_LABEL_SMOOTHING = 0.25  # TF-GAN's default for the minimax/modified D losses; ours is 0.0

TF_CASES = {
    # name: (generator loss fn, discriminator loss fn, expected g, expected d, d kwargs for TF's defaults)
    "least_squares": (losses.least_squares_generator_loss, losses.least_squares_discriminator_loss,
                      17.69625, 41.73375, {}),
    "modified": (losses.modified_generator_loss, losses.modified_discriminator_loss, 1.38582, 6.19637,
                 {"label_smoothing": TF_LABEL_SMOOTHING}),
    "wasserstein": (losses.wasserstein_generator_loss, losses.wasserstein_discriminator_loss, -3.125, 0.225, {}),
    "hinge": (losses.wasserstein_hinge_generator_loss, losses.wasserstein_hinge_discriminator_loss, -3.125, 6.75, {}),
}


def softplus(x):
    return np.logaddexp(0.0, x)


@pytest.mark.parametrize("name", sorted(TF_CASES))
def test_tf_gan_published_values(name):
    g_fn, d_fn, expected_g, expected_d, d_kwargs = TF_CASES[name]
    np.testing.assert_allclose(g_fn(GEN), expected_g, rtol=1e-5)
    np.testing.assert_allclose(d_fn(REAL, GEN, **d_kwargs), expected_d, rtol=1e-5)
    # patch discriminator outputs [2, 2] reduce to the same numbers
    np.testing.assert_allclose(g_fn(GEN.reshape(2, 2)), expected_g, rtol=1e-5)
    np.testing.assert_allclose(d_fn(REAL.reshape(2, 2), GEN.reshape(2, 2), **d_kwargs), expected_d, rtol=1e-5)
    # scalar weights scale the loss (TF's test_*_with_python_scalar_weight)
    np.testing.assert_allclose(g_fn(GEN, weights=TF_WEIGHT), expected_g * TF_WEIGHT, rtol=1e-5)
    np.testing.assert_allclose(d_fn(REAL, GEN, real_weights=TF_WEIGHT, generated_weights=TF_WEIGHT, **d_kwargs),
                               expected_d * TF_WEIGHT, rtol=1e-5)
    # reduction "none" keeps the shape
    assert g_fn(GEN, reduction="none").shape == (4,)


def test_minimax_matches_tf_up_to_its_constant():
    # TF-GAN: -minimax_discriminator_loss(ones, gen) = ours - softplus(-1) (the loss on the constant logit 1).
    tf_value = -4.82408
    ours = float(losses.minimax_generator_loss(GEN))
    np.testing.assert_allclose(ours - softplus(-1.0), tf_value, rtol=1e-5)
    np.testing.assert_allclose(ours, -np.mean(softplus(GEN)), rtol=1e-6)
    np.testing.assert_allclose(losses.minimax_discriminator_loss(REAL, GEN, label_smoothing=0.25), 6.19637, rtol=1e-5)


def test_default_label_smoothing_is_zero():
    expected = np.mean(softplus(-REAL)) + np.mean(softplus(GEN))
    np.testing.assert_allclose(losses.modified_discriminator_loss(REAL, GEN), expected, rtol=1e-6)
    smoothed = np.mean(softplus(REAL) - (1 - 0.1 / 2) * REAL) + np.mean(softplus(GEN))
    np.testing.assert_allclose(losses.modified_discriminator_loss(REAL, GEN, label_smoothing=0.1), smoothed, rtol=1e-6)


def test_acgan_published_values():
    gen_logits = np.array([[10.0, 4.4, -5.5, 3.6], [-4.0, 4.4, 5.2, 4.6], [1.1, 2.4, -3.5, 5.6], [1.1, 2.4, -3.5, 5.6]])
    real_logits = np.array([[-2.0, 0.4, 12.5, 2.7], [-1.2, 1.9, 12.3, 2.6], [-2.4, -1.7, 2.5, 2.7],
                            [1.1, 2.4, -3.5, 5.6]])
    one_hot = np.array([[0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0], [1, 0, 0, 0]])
    np.testing.assert_allclose(losses.acgan_generator_loss(gen_logits, one_hot), 3.84974, rtol=1e-5)
    np.testing.assert_allclose(losses.acgan_discriminator_loss(real_logits, gen_logits, one_hot), 9.43950, rtol=1e-5)
    patch = lambda a: a.reshape(2, 2, 4)  # noqa: E731
    np.testing.assert_allclose(losses.acgan_generator_loss(patch(gen_logits), patch(one_hot)), 3.84974, rtol=1e-5)
    # label smoothing: TF-GAN smooths the real term only; 9.500122 is TF-GAN's value on these inputs, and the
    # float64 formula below (softmax cross entropy against (1 - s) * onehot + s / K for the real term) agrees
    smoothed = losses.acgan_discriminator_loss(real_logits, gen_logits, one_hot, label_smoothing=0.1)
    np.testing.assert_allclose(smoothed, 9.500122, rtol=1e-6)

    def xent(targets, logits):
        log_p = logits - np.log(np.sum(np.exp(logits), axis=1, keepdims=True))
        return np.mean(-np.sum(targets * log_p, axis=1))
    reference = xent(one_hot, gen_logits) + xent(0.9 * one_hot + 0.1 / 4, real_logits)
    np.testing.assert_allclose(smoothed, reference, rtol=1e-6)


def _reference_losses(real, gen):
    """Per-element float64 losses from the published formulas."""
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    ra_real, ra_gen = real - gen.mean(), gen - real.mean()
    return {
        "modified_d": (-np.log(sig(real)), -np.log(1 - sig(gen))),
        "modified_g": -np.log(sig(gen)),
        "minimax_g": np.log(1 - sig(gen)),
        "ls_d": (0.5 * (real - 1) ** 2, 0.5 * gen ** 2),
        "ls_g": 0.5 * (gen - 1) ** 2,
        "wass_d": (-real, gen),
        "wass_g": -gen,
        "hinge_d": (np.maximum(0, 1 - real), np.maximum(0, 1 + gen)),
        "rel_d": (-np.log(sig(ra_real)), -np.log(1 - sig(ra_gen))),
        "rel_g": (-np.log(1 - sig(ra_real)), -np.log(sig(ra_gen))),
    }


def _sum_by_nonzero(values, weights):
    weights = np.broadcast_to(weights, values.shape)
    return np.sum(values * weights) / max(np.count_nonzero(weights), 1)


def test_all_losses_against_numpy_with_weights_and_patches():
    rng = np.random.default_rng(0)
    real, gen = rng.normal(size=(6, 3, 3)) * 2, rng.normal(size=(6, 3, 3)) * 2
    w_real = np.array([1.0, 0.0, 2.0, 0.5, 0.0, 1.0])[:, None, None]
    w_gen = np.array([0.0, 1.0, 1.0, 3.0, 1.0, 0.0])[:, None, None]
    ref = _reference_losses(real, gen)
    d_fns = {"modified_d": losses.modified_discriminator_loss, "ls_d": losses.least_squares_discriminator_loss,
             "wass_d": losses.wasserstein_discriminator_loss, "hinge_d": losses.wasserstein_hinge_discriminator_loss}
    for name, fn in d_fns.items():
        expected = _sum_by_nonzero(ref[name][0], w_real) + _sum_by_nonzero(ref[name][1], w_gen)
        got = fn(real, gen, real_weights=w_real[:, 0, 0], generated_weights=w_gen[:, 0, 0])
        np.testing.assert_allclose(got, expected, rtol=2e-5, err_msg=name)
    g_fns = {"modified_g": losses.modified_generator_loss, "minimax_g": losses.minimax_generator_loss,
             "ls_g": losses.least_squares_generator_loss, "wass_g": losses.wasserstein_generator_loss}
    for name, fn in g_fns.items():
        np.testing.assert_allclose(fn(gen, weights=w_gen[:, 0, 0]), _sum_by_nonzero(ref[name], w_gen), rtol=2e-5,
                                   err_msg=name)
    for name, fn in {"rel_d": losses.relativistic_discriminator_loss, "rel_g": losses.relativistic_generator_loss}.items():
        np.testing.assert_allclose(fn(real, gen), ref[name][0].mean() + ref[name][1].mean(), rtol=2e-5, err_msg=name)


def test_all_zero_weights_give_zero_not_nan():
    assert float(losses.modified_generator_loss(GEN, weights=0.0)) == 0.0


def test_bad_reduction_is_refused():
    with pytest.raises(ValueError, match="reduction='avg'"):
        losses.wasserstein_generator_loss(GEN, reduction="avg")


# f-GAN: at the optimal critic, the negative discriminator loss equals D_f(P || Q), computed here
# independently by quadrature of  integral q(x) f(p(x)/q(x)) dx  in float64.
F_GENERATORS = {
    "kl": (lambda u: u * np.log(u), lambda u: np.log(u) + 1),
    "reverse_kl": (lambda u: -np.log(u), lambda u: -1 / u),
    "pearson": (lambda u: (u - 1) ** 2, lambda u: 2 * (u - 1)),
    "hellinger": (lambda u: (np.sqrt(u) - 1) ** 2, lambda u: 1 - 1 / np.sqrt(u)),
    "js": (lambda u: u * np.log(u) - (u + 1) * np.log((u + 1) / 2), lambda u: np.log(2 * u / (u + 1))),
}
# Inverse of each output activation g_f: the logit v whose activation equals t.
ACTIVATION_INVERSES = {
    "kl": lambda t: t, "reverse_kl": lambda t: -np.log(-t), "pearson": lambda t: t,
    "hellinger": lambda t: -np.log(1 - t), "js": lambda t: -np.log(2 * np.exp(-t) - 1),
}


@pytest.mark.parametrize("divergence", sorted(F_GENERATORS))
def test_f_divergence_bound_is_tight_at_the_optimal_critic(divergence):
    p, q = stats.norm(0.0, 1.0), stats.norm(0.7, 1.2)
    f, f_prime = F_GENERATORS[divergence]
    expected, _ = integrate.quad(lambda x: q.pdf(x) * f(p.pdf(x) / q.pdf(x)), -12, 12, limit=200)
    x = np.linspace(-8, 8, 40001)
    dx = x[1] - x[0]
    v = ACTIVATION_INVERSES[divergence](f_prime(p.pdf(x) / q.pdf(x)))
    bound = -losses.f_divergence_discriminator_loss(v, v, divergence, real_weights=p.pdf(x) * dx,
                                                    generated_weights=q.pdf(x) * dx, reduction="sum")
    np.testing.assert_allclose(float(bound), expected, rtol=2e-3)
    # a suboptimal critic gives a smaller bound
    worse = -losses.f_divergence_discriminator_loss(0.5 * v, 0.5 * v, divergence, real_weights=p.pdf(x) * dx,
                                                    generated_weights=q.pdf(x) * dx, reduction="sum")
    assert float(worse) < float(bound)


def test_f_divergence_fake_term_is_finite_for_large_logits():
    for divergence in F_GENERATORS:
        value = losses.f_divergence_discriminator_loss(np.array([30.0, -30.0]), np.array([30.0, -30.0]), divergence)
        if divergence != "kl":  # KL's conjugate exp(v - 1) is legitimately huge but finite at 30
            assert np.isfinite(float(value)), divergence
    with pytest.raises(ValueError, match="divergence='chi'"):
        losses.f_divergence_generator_loss(GEN, "chi")


def test_value_function_at_equilibrium_is_minus_log_4():
    # D*(x) = 1/2 everywhere when p_g = p_data: logits 0, V = E log D + E log(1 - D) = -log 4.
    zeros = np.zeros(16)
    np.testing.assert_allclose(-losses.minimax_discriminator_loss(zeros, zeros), -np.log(4), rtol=1e-6)
