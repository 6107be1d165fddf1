"""Tests for jaxgan.metrics.modes: hand-built sample sets with known answers."""
import itertools
import math

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from jaxgan.metrics import modes


def ring(k=8, radius=1.0):
    t = 2 * np.pi * np.arange(k) / k
    return radius * np.stack([np.cos(t), np.sin(t)], axis=1)


def grid():
    return np.array(list(itertools.product(range(-4, 5, 2), range(-4, 5, 2))), dtype=np.float64)


RING_STD = 0.01
GRID_STD = 0.05


def test_all_modes_equal_counts():
    means = ring()
    samples = np.repeat(means, 7, axis=0)
    m = modes.mode_metrics(samples, means, RING_STD)
    assert m["modes_captured"] == 8
    assert m["high_quality_fraction"] == 1.0
    assert m["reverse_kl"] == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_array_equal(m["mode_counts"], np.full(8, 7))
    assert m["num_samples"] == 56 and m["num_high_quality"] == 56


def test_all_modes_grid_jax_input():
    means = grid()
    samples = jnp.asarray(np.tile(means, (4, 1)), dtype=jnp.float32)
    m = modes.mode_metrics(samples, jnp.asarray(means), GRID_STD)
    assert m["modes_captured"] == 25
    assert m["high_quality_fraction"] == 1.0
    assert m["reverse_kl"] == pytest.approx(0.0, abs=1e-12)


def test_one_mode():
    means = ring()
    samples = np.repeat(means[3:4], 100, axis=0)
    m = modes.mode_metrics(samples, means, RING_STD)
    assert m["modes_captured"] == 1
    assert m["high_quality_fraction"] == 1.0
    assert m["reverse_kl"] == pytest.approx(math.log(8), rel=1e-12)
    expected = np.zeros(8, dtype=np.int64)
    expected[3] = 100
    np.testing.assert_array_equal(m["mode_counts"], expected)


def test_off_mode_noise():
    means = ring()
    rng = np.random.default_rng(0)
    # Radius 0.5 and 1.5: at least 0.5 away from every mean on the unit ring.
    angles = rng.uniform(0, 2 * np.pi, 50)
    radii = np.where(rng.uniform(size=50) < 0.5, 0.5, 1.5)
    samples = radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    samples = np.concatenate([samples, np.array([[np.nan, 0.0], [np.inf, 1.0]])])
    m = modes.mode_metrics(samples, means, RING_STD)
    assert m["modes_captured"] == 0
    assert m["high_quality_fraction"] == 0.0
    assert m["num_high_quality"] == 0
    # Documented convention: no HQ sample -> log K.
    assert m["reverse_kl"] == pytest.approx(math.log(8))
    np.testing.assert_array_equal(m["mode_counts"], np.zeros(8))


def test_mixed_set_known_fraction():
    means = grid()
    far = np.array([[1.0, 1.0], [-1.0, 3.0], [3.0, -3.0], [100.0, 100.0], [-1.0, -1.0]])  # 1 away from modes
    samples = np.concatenate([
        np.repeat(means[0:1], 10, axis=0),
        np.repeat(means[3:4], 5, axis=0) + np.array([0.1, 0.0]),  # 2 std away: still HQ
        far,
    ])
    m = modes.mode_metrics(samples, means, GRID_STD)
    assert m["modes_captured"] == 2
    assert m["high_quality_fraction"] == pytest.approx(15 / 20, abs=0)
    p = np.array([10 / 15, 5 / 15])
    assert m["reverse_kl"] == pytest.approx(float(np.sum(p * np.log(25 * p))), rel=1e-12)
    assert m["mode_counts"][0] == 10 and m["mode_counts"][3] == 5 and m["mode_counts"].sum() == 15


@pytest.mark.parametrize("threshold", [3.0, 10.0])
def test_threshold_boundary(threshold):
    means = ring()
    direction = np.array([np.cos(0.3), np.sin(0.3)])
    r = threshold * RING_STD
    inside = means[2] + r * (1 - 1e-6) * direction
    outside = means[2] + r * (1 + 1e-6) * direction
    m_in = modes.mode_metrics(inside[None], means, RING_STD, threshold=threshold)
    m_out = modes.mode_metrics(outside[None], means, RING_STD, threshold=threshold)
    assert m_in["high_quality_fraction"] == 1.0 and m_in["modes_captured"] == 1
    assert m_in["mode_counts"][2] == 1
    assert m_out["high_quality_fraction"] == 0.0 and m_out["modes_captured"] == 0


def test_nearest_mode_assignment_and_high_dim():
    # 10 modes in 50-D (one-hot * 10); a sample between two modes but nearer mode 4.
    d = 50
    means = 10.0 * np.eye(10, d)
    x = 0.6 * means[4] + 0.4 * means[7]
    m = modes.mode_metrics(x[None], means, std=1.0, threshold=10.0)
    # dist to mode 4 = sqrt(4^2 + 4^2) = 5.66 < 10 -> HQ at mode 4.
    assert m["modes_captured"] == 1 and m["mode_counts"][4] == 1


def test_mode_metrics_bad_inputs():
    with pytest.raises(ValueError, match="dimension"):
        modes.mode_metrics(np.zeros((3, 2)), np.zeros((4, 3)), 0.1)
    with pytest.raises(ValueError, match="std"):
        modes.mode_metrics(np.zeros((3, 2)), np.zeros((4, 2)), 0.0)
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        modes.mode_metrics(np.zeros(3), np.zeros((4, 2)), 0.1)


def test_w1_shift_is_norm_of_shift():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(200, 2))
    v = np.array([0.3, -0.4])
    assert modes.wasserstein1(a, a + v) == pytest.approx(0.5, rel=1e-12)
    a3 = rng.normal(size=(100, 3))
    v3 = np.array([1.0, 2.0, 2.0])
    assert modes.wasserstein1(a3 + v3, a3) == pytest.approx(3.0, rel=1e-12)


def test_w1_matches_scipy_in_1d():
    rng = np.random.default_rng(2)
    a = rng.normal(size=300)
    b = rng.exponential(size=300) - 0.5
    expected = scipy.stats.wasserstein_distance(a, b)
    assert modes.wasserstein1(a[:, None], b[:, None]) == pytest.approx(expected, rel=1e-10)


def test_w1_self_and_permutation_is_zero():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(150, 2))
    assert modes.wasserstein1(a, a) == 0.0
    assert modes.wasserstein1(a, a[rng.permutation(150)]) == 0.0


def test_w1_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        modes.wasserstein1(np.zeros((3, 2)), np.zeros((4, 2)))


def test_w1_to_mixture_known_cases():
    # One mode, std 0: the reference is N copies of the mean.
    means = np.array([[1.0, 2.0]])
    x = np.repeat(means, 64, axis=0)
    assert modes.wasserstein1_to_mixture(x, means, 0.0, seed=0) == 0.0
    assert modes.wasserstein1_to_mixture(x + np.array([3.0, 4.0]), means, 0.0, seed=0) == pytest.approx(5.0)
    # Subset of size n.
    assert modes.wasserstein1_to_mixture(x + np.array([0.0, 1.0]), means, 0.0, seed=0, n=10) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="n must be"):
        modes.wasserstein1_to_mixture(x, means, 0.0, seed=0, n=65)


def test_w1_to_mixture_deterministic_and_sensible():
    means = ring()
    good = modes.sample_mixture(means, RING_STD, 500, seed=7)
    collapsed = np.repeat(means[:1], 500, axis=0)
    w_good = modes.wasserstein1_to_mixture(good, means, RING_STD, seed=11)
    assert w_good == modes.wasserstein1_to_mixture(good, means, RING_STD, seed=11)
    w_collapsed = modes.wasserstein1_to_mixture(collapsed, means, RING_STD, seed=11)
    # Good samples: only mode-count imbalance and within-mode noise; collapsed: mean distance to mode 0
    # of the ring's modes, about (1/8) * sum_k |m_k - m_0| = 1.207.
    assert w_good < 0.2
    assert w_collapsed == pytest.approx(np.mean(np.linalg.norm(means - means[0], axis=1)), abs=0.1)
