"""Fréchet distance, streaming statistics, KID, Inception Score and PRDC against independent references."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.spatial.distance
import scipy.special

from jaxgan.metrics.distances import (
    inception_score,
    kernel_distance,
    polynomial_mmd2_unbiased,
    precision_recall_density_coverage,
)
from jaxgan.metrics.frechet import (
    FeatureStats,
    feature_moments,
    frechet_distance,
    frechet_distance_from_stats,
)


# ----------------------------------------------------------------------------- references


def _sym_sqrt(s):
    """Square root of a symmetric PSD matrix by eigendecomposition (negative rounding clipped)."""
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def _reference_fd(a, b):
    """FD with tr((S1 S2)^1/2) = sum sqrt(eig(S1^1/2 S2 S1^1/2)): no scipy.linalg.sqrtm involved."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    r = _sym_sqrt(s1)
    eig = np.linalg.eigvalsh(r @ s2 @ r)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sum(np.sqrt(np.clip(eig, 0, None))))


def _random_cov(rng, d):
    m = rng.normal(size=(d, d))
    return m @ m.T / d + 0.1 * np.eye(d)


# ----------------------------------------------------------------------------- Fréchet distance


def test_fd_matches_independent_float64_reference():
    rng = np.random.default_rng(0)
    d = 12
    a = rng.multivariate_normal(rng.normal(size=d), _random_cov(rng, d), size=400)
    b = rng.multivariate_normal(rng.normal(size=d), _random_cov(rng, d), size=300)
    ref = _reference_fd(a, b)
    assert ref > 1.0
    np.testing.assert_allclose(frechet_distance(a, b), ref, rtol=1e-9)
    np.testing.assert_allclose(frechet_distance(a.astype(np.float32), b.astype(np.float32)),
                               _reference_fd(a.astype(np.float32).astype(np.float64),
                                             b.astype(np.float32).astype(np.float64)), rtol=1e-9)


def test_fd_from_stats_equals_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, -1.0]), np.array([0.5, 0.5, 0.0])
    s1, s2 = np.array([1.0, 2.0, 0.5]), np.array([0.5, 2.0, 1.5])
    exact = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    np.testing.assert_allclose(frechet_distance_from_stats(mu1, np.diag(s1), mu2, np.diag(s2)), exact, rtol=1e-12)
    # Equal Gaussians with a full covariance: exactly 0 (up to rounding).
    cov = _random_cov(np.random.default_rng(1), 6)
    assert abs(frechet_distance_from_stats(np.ones(6), cov, np.ones(6), cov)) < 1e-10
    # Scaled covariance: tr(S + c^2 S - 2 c S) = (1 - c)^2 tr(S).
    np.testing.assert_allclose(frechet_distance_from_stats(np.zeros(6), cov, np.zeros(6), 4.0 * cov),
                               np.trace(cov), rtol=1e-9)


def test_fd_of_samples_approaches_closed_form():
    # Diagonal Gaussians, 200k samples each. Over 20 seeds at 50k samples the estimate deviated from the
    # exact 1.8537 by std 0.015 (max 0.033); at 200k the std is ~0.0075, so 0.04 is ~5 sigma.
    mu1, mu2 = np.array([0.0, 1.0, -1.0]), np.array([0.5, 0.5, 0.0])
    s1, s2 = np.array([1.0, 2.0, 0.5]), np.array([0.5, 2.0, 1.5])
    exact = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    rng = np.random.default_rng(2)
    n = 200_000
    a = mu1 + np.sqrt(s1) * rng.normal(size=(n, 3))
    b = mu2 + np.sqrt(s2) * rng.normal(size=(n, 3))
    assert abs(frechet_distance(a, b) - exact) < 0.04


def test_fd_of_a_set_with_itself_is_zero():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(500, 32)) * rng.uniform(0.1, 3.0, size=32) + 5.0
    assert abs(frechet_distance(a, a)) < 1e-6
    assert abs(frechet_distance(a, a[::-1])) < 1e-6


def test_fd_rejects_bad_inputs_with_clear_messages():
    a = np.zeros((10, 3))
    with pytest.raises(ValueError, match=r"features_b has D=4"):
        frechet_distance(a, np.zeros((10, 4)))
    with pytest.raises(ValueError, match=r"2D array \[N, D\].*\(10,\)"):
        frechet_distance(np.zeros(10), a)
    with pytest.raises(ValueError, match="non-finite"):
        frechet_distance(np.full((10, 3), np.nan), a)
    with pytest.raises(ValueError, match=r"\[D, D\] = \[3, 3\]"):
        frechet_distance_from_stats(np.zeros(3), np.eye(2), np.zeros(3), np.eye(3))


def test_fewer_samples_than_dimensions_warns_but_computes():
    rng = np.random.default_rng(4)
    small = rng.normal(size=(5, 10))
    big = rng.normal(size=(200, 10))
    with pytest.warns(UserWarning, match=r"N=5 samples of D=10 features.*biased"):
        value = frechet_distance(small, big)
    # Singular covariance: sqrtm still agrees with the eigen-based reference.
    np.testing.assert_allclose(value, _reference_fd(small, big), rtol=1e-6)
    with pytest.warns(UserWarning, match=r"N=5 samples of D=10"):
        FeatureStats.from_features(small).covariance


# ----------------------------------------------------------------------------- streaming statistics


def test_streaming_and_merge_equal_one_shot():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(1000, 16)) * 2.0 + rng.normal(size=16)
    one = FeatureStats.from_features(x)
    streamed = FeatureStats.empty(16)
    for lo, hi in [(0, 7), (7, 7), (7, 300), (300, 301), (301, 1000)]:
        streamed = streamed.update(x[lo:hi])
    merged = FeatureStats.from_features(x[:420]).merge(FeatureStats.from_features(x[420:]))
    for s in (streamed, merged):
        assert s.count == 1000
        np.testing.assert_allclose(s.mean, one.mean, rtol=1e-10)
        np.testing.assert_allclose(s.covariance, one.covariance, rtol=1e-10)
    np.testing.assert_allclose(one.mean, x.mean(0), rtol=1e-10)
    np.testing.assert_allclose(one.covariance, np.cov(x, rowvar=False), rtol=1e-10, atol=1e-12)
    y = rng.normal(size=(800, 16))
    np.testing.assert_allclose(streamed.frechet_distance(FeatureStats.from_features(y)),
                               frechet_distance(x, y), rtol=1e-10)


def test_feature_stats_save_load_roundtrip(tmp_path):
    x = np.random.default_rng(6).normal(size=(50, 4))
    s = FeatureStats.from_features(x)
    s.save(tmp_path / "ref.npz")
    t = FeatureStats.load(tmp_path / "ref.npz")
    assert t.count == 50
    np.testing.assert_array_equal(t.sum_outer, s.sum_outer)


def test_feature_stats_errors():
    with pytest.raises(ValueError, match="at least 2 samples.*count=1"):
        FeatureStats.empty(3).update(np.zeros((1, 3))).covariance
    with pytest.raises(ValueError, match="dimension 4, but these statistics have D=3"):
        FeatureStats.empty(3).update(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="positive integer"):
        FeatureStats.empty(0)


def test_feature_moments_psum_under_shard_map_equals_one_shot():
    assert jax.device_count() >= 4
    mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
    x = np.random.default_rng(7).normal(size=(64, 8)).astype(np.float32)
    mask = np.ones((64,), bool)
    mask[-5:] = False  # padding rows, e.g. the tail of the last eval batch
    put = functools.partial(jax.device_put, device=jax.NamedSharding(mesh, jax.P("data")))
    xs, ms = put(x), put(mask)

    sharded = jax.jit(jax.shard_map(functools.partial(feature_moments, axis_name="data"), mesh=mesh,
                                    in_specs=jax.P("data"), out_specs=(jax.P(), jax.P(), jax.P())))
    count, total, outer = sharded(xs)
    x64 = x.astype(np.float64)
    assert int(count) == 64
    np.testing.assert_allclose(np.asarray(total), x64.sum(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(outer), x64.T @ x64, rtol=1e-5, atol=1e-4)

    masked = jax.jit(jax.shard_map(lambda f, m: feature_moments(f, "data", mask=m), mesh=mesh,
                                   in_specs=(jax.P("data"), jax.P("data")), out_specs=(jax.P(), jax.P(), jax.P())))
    stats = FeatureStats.from_moments(*jax.device_get(masked(xs, ms)))
    ref = FeatureStats.from_features(x[:-5])
    assert stats.count == 59
    np.testing.assert_allclose(stats.mean, ref.mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.covariance, ref.covariance, rtol=1e-4, atol=1e-5)

    # Single device, no axis name: the same numbers.
    c1, t1, o1 = feature_moments(jnp.asarray(x))
    assert int(c1) == 64
    np.testing.assert_allclose(np.asarray(t1), np.asarray(total), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(o1), np.asarray(outer), rtol=1e-5, atol=1e-4)


# ----------------------------------------------------------------------------- KID


def _reference_mmd2(x, y, degree, gamma, coef0):
    """Unbiased MMD^2 written as averages over explicit index sets."""
    m, n = len(x), len(y)

    def k(a, b):
        return (gamma * np.einsum("id,jd->ij", a, b) + coef0) ** degree

    off_m, off_n = ~np.eye(m, dtype=bool), ~np.eye(n, dtype=bool)
    return k(x, x)[off_m].mean() + k(y, y)[off_n].mean() - 2 * k(x, y).mean()


def test_kid_matches_direct_numpy_with_the_same_subsets():
    rng = np.random.default_rng(8)
    a = rng.normal(size=(300, 16))
    b = rng.normal(size=(250, 16)) * 1.2 + 0.1
    mean, std = kernel_distance(a, b, num_subsets=20, max_subset_size=100, key=123)
    # The documented protocol: Generator(123); per subset, rows of a, then rows of b, without replacement.
    sub_rng = np.random.default_rng(123)
    values = []
    for _ in range(20):
        ia = sub_rng.choice(300, 100, replace=False)
        ib = sub_rng.choice(250, 100, replace=False)
        values.append(_reference_mmd2(a[ia], b[ib], degree=3, gamma=1 / 16, coef0=1.0))
    np.testing.assert_allclose(mean, np.mean(values), rtol=1e-10)
    np.testing.assert_allclose(std, np.std(values), rtol=1e-8)
    # Whole-set statistic with other kernel parameters.
    np.testing.assert_allclose(polynomial_mmd2_unbiased(a, b, degree=2, gamma=0.3, coef0=0.5),
                               _reference_mmd2(a, b, 2, 0.3, 0.5), rtol=1e-10)


def test_kid_key_handling():
    rng = np.random.default_rng(9)
    a, b = rng.normal(size=(60, 4)), rng.normal(size=(60, 4))
    k1 = kernel_distance(a, b, num_subsets=5, max_subset_size=30, key=jax.random.key(0))
    k2 = kernel_distance(a, b, num_subsets=5, max_subset_size=30, key=jax.random.key(0))
    k3 = kernel_distance(a, b, num_subsets=5, max_subset_size=30, key=jax.random.key(1))
    assert k1 == k2 and k1 != k3
    with pytest.raises(TypeError, match="typed jax.random.key"):
        kernel_distance(a, b, key="seed")


def test_kid_identical_distributions_small_and_shift_positive():
    rng = np.random.default_rng(10)
    a, same, shifted = rng.normal(size=(1000, 16)), rng.normal(size=(1000, 16)), rng.normal(size=(1000, 16)) + 0.25
    kid_same, std_same = kernel_distance(a, same, num_subsets=30, max_subset_size=500, key=0)
    kid_shift, std_shift = kernel_distance(a, shifted, num_subsets=30, max_subset_size=500, key=0)
    # Observed over 3 seeds: same ~0.001-0.006 (subset std ~0.004); shifted ~0.23 (subset std ~0.02).
    assert abs(kid_same) < 0.02
    assert kid_shift > 0.15 and kid_shift > 5 * std_shift


def test_kid_linear_kernel_estimates_squared_mean_difference():
    # With k(x, y) = x.y the population MMD^2 is |mu_a - mu_b|^2 = 16 * 0.5^2 = 4. The unbiased estimate
    # from 2000 points has std ~ |delta| sqrt(8/N) ~ 0.13, so 0.6 is well over 4 sigma.
    rng = np.random.default_rng(11)
    a, b = rng.normal(size=(2000, 16)), rng.normal(size=(2000, 16)) + 0.5
    kid, _ = kernel_distance(a, b, num_subsets=10, max_subset_size=1000, degree=1, gamma=1.0, coef0=0.0, key=1)
    assert abs(kid - 4.0) < 0.6


# ----------------------------------------------------------------------------- Inception Score


def test_inception_score_uniform_confident_is_num_classes():
    k, splits, per_class = 10, 10, 7
    labels = np.tile(np.arange(k), splits * per_class)  # every split holds each class 7 times
    logits = 60.0 * np.eye(k)[labels]
    mean, std = inception_score(logits, num_splits=splits)
    np.testing.assert_allclose(mean, k, rtol=1e-12)
    assert std < 1e-12


def test_inception_score_single_class_is_one():
    logits = np.tile(np.array([[9.0, 0.0, -3.0, 1.0]]), (100, 1))
    mean, std = inception_score(logits, num_splits=4)
    np.testing.assert_allclose(mean, 1.0, atol=1e-12)
    assert std < 1e-12


def test_inception_score_matches_softmax_reference():
    rng = np.random.default_rng(12)
    logits = rng.normal(size=(500, 7)) * 3
    scores = []
    for part in np.split(logits, 5):
        p = scipy.special.softmax(part, axis=1)
        py = p.mean(0)
        scores.append(np.exp(np.mean(np.sum(p * (np.log(p) - np.log(py)), axis=1))))
    mean, std = inception_score(logits, num_splits=5)
    np.testing.assert_allclose(mean, np.mean(scores), rtol=1e-10)
    np.testing.assert_allclose(std, np.std(scores), rtol=1e-8)
    assert 1.0 < mean < 7.0


# ----------------------------------------------------------------------------- precision / recall / density / coverage


def _reference_prdc(real, fake, k):
    """Brute force with scipy's direct (difference-based) distances and full matrices."""
    rr, ff, rf = (scipy.spatial.distance.cdist(u, v) for u, v in ((real, real), (fake, fake), (real, fake)))
    r_rad = np.sort(rr, axis=1)[:, k]
    f_rad = np.sort(ff, axis=1)[:, k]
    inside_real = rf <= r_rad[:, None]  # [real, fake]: fake j in real ball i
    return {
        "precision": inside_real.any(axis=0).mean(),
        "recall": (rf <= f_rad[None, :]).any(axis=1).mean(),
        "density": inside_real.sum(axis=0).mean() / k,
        "coverage": (rf.min(axis=1) <= r_rad).mean(),
    }


def test_prdc_matches_brute_force_in_small_blocks():
    rng = np.random.default_rng(13)
    real = rng.normal(size=(203, 6))
    fake = rng.normal(size=(157, 6)) * 1.3 + 0.4
    got = precision_recall_density_coverage(real, fake, k=5, max_block_elements=1000)  # ~5 rows per block
    ref = _reference_prdc(real, fake, 5)
    for name in ("precision", "recall", "density", "coverage"):
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-12, err_msg=name)
    assert 0.2 < got["precision"] < 1.0 and 0.2 < got["recall"] < 1.0


def test_prdc_identical_sets_and_far_away_sets():
    real = np.random.default_rng(14).normal(size=(120, 5))
    same = precision_recall_density_coverage(real, real.copy(), k=5)
    assert same["precision"] == 1.0 and same["recall"] == 1.0 and same["coverage"] == 1.0
    far = precision_recall_density_coverage(real, real + 1000.0, k=5)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_prdc_fake_covering_half_of_the_clusters():
    rng = np.random.default_rng(15)
    centres = 100.0 * np.eye(10)  # 10 clusters 141 apart; within-cluster spread ~1
    clusters = [c + rng.normal(size=(20, 10)) for c in centres]
    real = np.concatenate(clusters)
    fake = np.concatenate(clusters[:5])  # copies of the real points of clusters 0-4
    got = precision_recall_density_coverage(real, fake, k=5)
    assert got["precision"] == 1.0
    assert got["recall"] == 0.5
    assert got["coverage"] == 0.5


def test_prdc_density_on_a_lattice():
    # k=1: reals at 0..19 on a line have radius 1; fakes at 0.5..18.5 lie in exactly two real balls each
    # (distance 0.5 to both neighbours, 1.5 to the next), so density = 2 / k = 2; precision, recall, coverage 1.
    real = np.stack([np.arange(20.0), np.zeros(20)], axis=1)
    fake = np.stack([np.arange(19.0) + 0.5, np.zeros(19)], axis=1)
    got = precision_recall_density_coverage(real, fake, k=1)
    assert got == {"precision": 1.0, "recall": 1.0, "density": 2.0, "coverage": 1.0}


def test_prdc_needs_more_than_k_points():
    with pytest.raises(ValueError, match="more than k=5 samples.*5 real"):
        precision_recall_density_coverage(np.zeros((5, 2)), np.zeros((10, 2)), k=5)
