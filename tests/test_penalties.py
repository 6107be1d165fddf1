"""Gradient penalties against analytic critics; NaN safety; weight clipping."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgan import penalties


def linear_critic(x):  # D(x) = 2 * sum(x): grad = 2 everywhere, ||grad|| = 2 sqrt(dim)
    return 2.0 * jnp.sum(x.reshape(x.shape[0], -1), axis=1)


def test_tf_gan_published_gradient_penalty():
    # TF-GAN GradientPenaltyTest: D = 2x on 4-dim data: ||grad|| = 4, (4 - 1)^2 = 9; target 2: (4/2 - 1)^2 = 1.
    real = jnp.array([[-12.3, 23.2, 16.3, -43.2]])
    fake = jnp.array([[3.1, 2.3, -12.3, 32.1]])
    key = jax.random.key(0)
    np.testing.assert_allclose(penalties.gradient_penalty(linear_critic, real, fake, key), 9.0, rtol=1e-6)
    np.testing.assert_allclose(penalties.gradient_penalty(linear_critic, real, fake, key, one_sided=True), 9.0,
                               rtol=1e-6)
    np.testing.assert_allclose(penalties.gradient_penalty(linear_critic, real, fake, key, target=2.0), 1.0, rtol=1e-6)
    np.testing.assert_allclose(penalties.gradient_penalty(linear_critic, real, fake, key, weights=2.3), 9.0 * 2.3,
                               rtol=1e-5)


def test_gradient_penalty_norm_runs_over_all_non_batch_axes():
    # images [B, H, W, C]: the per-example norm is 2 sqrt(H W C), not a per-pixel norm.
    real = jnp.ones((3, 4, 4, 2))
    fake = -jnp.ones((3, 4, 4, 2))
    expected = (2 * np.sqrt(4 * 4 * 2) - 1) ** 2
    np.testing.assert_allclose(penalties.gradient_penalty(linear_critic, real, fake, jax.random.key(1)), expected,
                               rtol=1e-5)


def test_gradient_penalty_one_sided_ignores_small_slopes():
    small = lambda x: 0.1 * jnp.sum(x, axis=1)  # noqa: E731  ||grad|| = 0.1 * sqrt(3) < 1
    real, fake = jnp.zeros((2, 3)), jnp.ones((2, 3))
    assert float(penalties.gradient_penalty(small, real, fake, jax.random.key(0), one_sided=True)) == 0.0
    np.testing.assert_allclose(penalties.gradient_penalty(small, real, fake, jax.random.key(0)),
                               (0.1 * np.sqrt(3) - 1) ** 2, rtol=1e-5)


def test_gradient_penalty_per_example_with_quadratic_critic():
    # D(x) = 0.5 ||x||^2: grad = x_hat, so the penalty is mean((||x_hat|| - 1)^2) with the same alphas.
    quadratic = lambda x: 0.5 * jnp.sum(x ** 2, axis=1)  # noqa: E731
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(8, 5)), rng.normal(size=(8, 5))
    key = jax.random.key(3)
    alpha = np.asarray(jax.random.uniform(key, (8, 1)))
    x_hat = real + alpha * (fake - real)
    expected = np.mean((np.sqrt(np.sum(x_hat ** 2, 1) + 1e-10) - 1) ** 2)
    np.testing.assert_allclose(penalties.gradient_penalty(quadratic, jnp.asarray(real), jnp.asarray(fake), key),
                               expected, rtol=1e-5)


def test_no_nan_when_the_gradient_is_exactly_zero():
    constant = lambda x: jnp.zeros(x.shape[0]) + 0.0 * jnp.sum(x, axis=1)  # noqa: E731
    real, fake = jnp.zeros((4, 3)), jnp.ones((4, 3))

    def penalty_of_params(w):
        return penalties.gradient_penalty(lambda x: w * constant(x), real, fake, jax.random.key(0), epsilon=0.0)

    value, grad = jax.value_and_grad(penalty_of_params)(1.0)
    assert float(value) == 1.0 and np.isfinite(float(grad))
    norm_grad = jax.grad(lambda x: jnp.sum(penalties.safe_norm(x)))(jnp.zeros((2, 3)))
    assert np.all(np.isfinite(np.asarray(norm_grad)))


def test_r1_r2_against_analytic_gradients():
    quadratic = lambda x: 0.5 * jnp.sum(x ** 2, axis=(1, 2))  # noqa: E731  grad = x
    x = jnp.asarray(np.random.default_rng(1).normal(size=(6, 3, 2)))
    expected = np.mean(np.sum(np.asarray(x) ** 2, axis=(1, 2)))
    np.testing.assert_allclose(penalties.r1_penalty(quadratic, x), expected, rtol=1e-5)
    np.testing.assert_allclose(penalties.r2_penalty(quadratic, x), expected, rtol=1e-5)
    np.testing.assert_allclose(penalties.r1_penalty(linear_critic, x), 4 * 6, rtol=1e-6)


def test_dragan_with_a_linear_critic_and_perturbation_range():
    real = jnp.asarray(np.random.default_rng(2).normal(size=(16, 4)))
    # linear critic: slope 2 * sqrt(4) = 4 anywhere, so (4 - 1)^2 regardless of the perturbation
    np.testing.assert_allclose(penalties.dragan_penalty(linear_critic, real, jax.random.key(0)), 9.0, rtol=1e-5)
    # quadratic critic: grad = x_hat, which lies between x and x + 0.5 std(x) u
    quadratic = lambda x: 0.5 * jnp.sum(x ** 2, axis=1)  # noqa: E731
    value = float(penalties.dragan_penalty(quadratic, real, jax.random.key(0)))
    k_noise, k_alpha = jax.random.split(jax.random.key(0))
    r = np.asarray(real)
    perturbed = r + 0.5 * r.std() * np.asarray(jax.random.uniform(k_noise, r.shape))
    alpha = np.asarray(jax.random.uniform(k_alpha, (16, 1)))
    x_hat = r + alpha * (perturbed - r)
    np.testing.assert_allclose(value, np.mean((np.sqrt(np.sum(x_hat ** 2, 1) + 1e-10) - 1) ** 2), rtol=1e-5)


def test_clip_weights():
    params = {"a": jnp.array([-1.0, 0.005, 2.0]), "b": {"c": jnp.array([[0.3]])}}
    clipped = penalties.clip_weights(params, 0.01)
    np.testing.assert_array_equal(clipped["a"], np.float32([-0.01, 0.005, 0.01]))
    np.testing.assert_array_equal(clipped["b"]["c"], np.float32([[0.01]]))


@pytest.mark.parametrize("penalty", ["gradient_penalty", "dragan"])
def test_penalties_are_differentiable_in_critic_params(penalty):
    # double backprop: d penalty / d w for D_w(x) = w * sum(x), ||grad|| = |w| sqrt(dim); penalty (|w| s - 1)^2
    x = jnp.ones((4, 9))
    s = np.sqrt(9)

    def value(w):
        d_fn = lambda inputs: w * jnp.sum(inputs, axis=1)  # noqa: E731
        if penalty == "gradient_penalty":
            return penalties.gradient_penalty(d_fn, x, -x, jax.random.key(0))
        return penalties.dragan_penalty(d_fn, x, jax.random.key(0))

    w = 0.7
    np.testing.assert_allclose(jax.grad(value)(w), 2 * (w * s - 1) * s, rtol=1e-4)
