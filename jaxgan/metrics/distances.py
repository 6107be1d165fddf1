"""Sample-based GAN metrics on features and logits: KID, Inception Score, precision/recall/density/coverage.

All computations are float64 NumPy on the host; the features come from any embedding network.

- `kernel_distance`: Kernel Inception Distance (Bińkowski et al. 2018), the unbiased MMD^2 with the cubic
  polynomial kernel, averaged over random subsets (the StyleGAN2-ADA / KID-paper protocol).
- `inception_score`: exp(E_x KL(p(y|x) || p(y))) over splits (Salimans et al. 2016), from logits.
- `precision_recall_density_coverage`: improved precision and recall (Kynkäänniemi et al. 2019) and
  density and coverage (Naeem et al. 2020) from k-nearest-neighbour balls, with pairwise distances
  computed in row blocks so memory stays bounded.
"""
from __future__ import annotations

import jax
import numpy as np
import scipy.special

from jaxgan.metrics.frechet import as_features

__all__ = [
    "inception_score",
    "kernel_distance",
    "polynomial_mmd2_unbiased",
    "precision_recall_density_coverage",
]


def _numpy_rng(key) -> np.random.Generator:
    """A NumPy Generator from an int seed or a typed `jax.random.key`."""
    if isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        seed = np.asarray(jax.random.bits(key, (4,), np.uint32))
        return np.random.default_rng(seed)
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return np.random.default_rng(int(key))
    raise TypeError(f"key must be an int seed or a typed jax.random.key(...); got {key!r}.")


def polynomial_mmd2_unbiased(x, y, *, degree: int = 3, gamma: float | None = None, coef0: float = 1.0) -> float:
    """Unbiased MMD^2 between samples x [m, D] and y [n, D] with k(a, b) = (gamma a.b + coef0)^degree.

    MMD^2_u = sum_{i!=j} k(x_i, x_j) / (m(m-1)) + sum_{i!=j} k(y_i, y_j) / (n(n-1)) - 2 sum_{i,j} k(x_i, y_j) / (mn).
    `gamma` defaults to 1/D. Needs m, n >= 2.
    """
    x = as_features(x, "x")
    y = as_features(y, "y")
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise ValueError(f"the unbiased MMD needs at least 2 samples per set; got {m} and {n}.")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dimensions differ: {x.shape[1]} and {y.shape[1]}.")
    g = 1.0 / x.shape[1] if gamma is None else float(gamma)
    kxx = (g * (x @ x.T) + coef0) ** degree
    kyy = (g * (y @ y.T) + coef0) ** degree
    kxy = (g * (x @ y.T) + coef0) ** degree
    return float(
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
        - 2.0 * kxy.sum() / (m * n)
    )


def kernel_distance(
    features_a,
    features_b,
    *,
    num_subsets: int = 100,
    max_subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    key=0,
) -> tuple[float, float]:
    """Kernel Inception Distance: unbiased polynomial-kernel MMD^2 averaged over random subsets.

    Protocol (that of the KID paper's code and StyleGAN2-ADA): m = min(N_a, N_b, max_subset_size); for
    each of `num_subsets` subsets, draw `rng.choice(N_a, m, replace=False)` rows of features_a, then
    `rng.choice(N_b, m, replace=False)` rows of features_b, with `rng` the NumPy Generator made from `key`
    (`np.random.default_rng(key)` for an int), and compute `polynomial_mmd2_unbiased` on the pair.

    Args:
      features_a: [N_a, D] features (e.g. real).
      features_b: [N_b, D] features (e.g. generated).
      num_subsets: number of random subsets (>= 1).
      max_subset_size: largest subset size m (>= 2).
      degree, gamma, coef0: kernel k(x, y) = (gamma x.y + coef0)^degree; gamma=None means 1/D.
      key: int seed or typed `jax.random.key`; same key, same subsets.

    Returns:
      (kid_mean, kid_std): mean and standard deviation (ddof=0) of the per-subset MMD^2 values.
      KID is unbiased, so it can be slightly negative for identical distributions.
    """
    a = as_features(features_a, "features_a")
    b = as_features(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: features_a has D={a.shape[1]}, features_b has D={b.shape[1]}.")
    if int(num_subsets) != num_subsets or num_subsets < 1:
        raise ValueError(f"num_subsets must be a positive integer; got {num_subsets!r}.")
    if int(max_subset_size) != max_subset_size or max_subset_size < 2:
        raise ValueError(f"max_subset_size must be an integer >= 2; got {max_subset_size!r}.")
    m = min(a.shape[0], b.shape[0], int(max_subset_size))
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples in each set; got N_a={a.shape[0]}, N_b={b.shape[0]}.")
    rng = _numpy_rng(key)
    values = np.empty((int(num_subsets),), np.float64)
    for i in range(int(num_subsets)):
        ia = rng.choice(a.shape[0], m, replace=False)
        ib = rng.choice(b.shape[0], m, replace=False)
        values[i] = polynomial_mmd2_unbiased(a[ia], b[ib], degree=degree, gamma=gamma, coef0=coef0)
    return float(values.mean()), float(values.std())


def inception_score(logits, num_splits: int = 10) -> tuple[float, float]:
    """Inception Score exp(E_x KL(p(y|x) || p(y))) from classifier logits, mean and std over splits.

    Args:
      logits: [N, K] unnormalised class scores; p(y|x) = softmax(logits), computed as a float64
        log-softmax so confident (one-hot) predictions stay exact.
      num_splits: the N samples are cut into this many contiguous near-equal parts (`np.array_split`);
        p(y) is the mean prediction within a part, and each part gives one score.

    Returns:
      (mean, std) of the per-split scores (std with ddof=0). The score lies in [1, K].
    """
    lg = as_features(logits, "logits")
    if int(num_splits) != num_splits or num_splits < 1:
        raise ValueError(f"num_splits must be a positive integer; got {num_splits!r}.")
    if lg.shape[0] < num_splits:
        raise ValueError(f"need at least num_splits={num_splits} samples; got N={lg.shape[0]}.")
    scores = []
    for part in np.array_split(lg, int(num_splits), axis=0):
        log_p = scipy.special.log_softmax(part, axis=1)
        log_py = scipy.special.logsumexp(log_p, axis=0) - np.log(part.shape[0])
        kl = np.sum(np.exp(log_p) * (log_p - log_py[None, :]), axis=1)
        scores.append(np.exp(np.mean(kl)))
    scores = np.asarray(scores)
    return float(scores.mean()), float(scores.std())


def _block_rows(n_cols: int, max_elements: int) -> int:
    return max(1, int(max_elements) // max(1, n_cols))


def _pairwise_distances_blocks(x: np.ndarray, y: np.ndarray, max_elements: int):
    """Yields (start, stop, D) with D [stop-start, N_y] Euclidean distances from x[start:stop] to y."""
    y_sq = np.einsum("ij,ij->i", y, y)
    rows = _block_rows(y.shape[0], max_elements)
    for start in range(0, x.shape[0], rows):
        xb = x[start : start + rows]
        d2 = np.einsum("ij,ij->i", xb, xb)[:, None] + y_sq[None, :] - 2.0 * (xb @ y.T)
        yield start, start + xb.shape[0], np.sqrt(np.maximum(d2, 0.0))


def _knn_radii(x: np.ndarray, k: int, max_elements: int) -> np.ndarray:
    """Distance from each row of x to its k-th nearest neighbour in x (itself excluded)."""
    radii = np.empty((x.shape[0],), np.float64)
    for start, stop, d in _pairwise_distances_blocks(x, x, max_elements):
        # Index k of the sorted row: index 0 is the point itself (distance 0).
        radii[start:stop] = np.partition(d, k, axis=1)[:, k]
    return radii


def precision_recall_density_coverage(
    real_features, fake_features, k: int = 5, *, max_block_elements: int = 2**24
) -> dict[str, float]:
    """Improved precision/recall (Kynkäänniemi et al. 2019) and density/coverage (Naeem et al. 2020).

    Each real point x_i gets the ball B(x_i, r_i), r_i the distance to its k-th nearest real neighbour;
    each fake point y_j likewise gets B(y_j, s_j) from the fake set. Balls are closed (distance <= radius).

      precision = fraction of fakes inside at least one real ball,
      recall    = fraction of reals inside at least one fake ball,
      density   = (1 / (k M)) sum_j #{i : y_j in B(x_i, r_i)}   (M fakes; can exceed 1),
      coverage  = fraction of reals whose own ball B(x_i, r_i) contains at least one fake.

    Args:
      real_features: [N, D] features of real samples (N > k).
      fake_features: [M, D] features of generated samples (M > k).
      k: neighbourhood size (5 in both papers).
      max_block_elements: largest distance block held at once (rows x columns, float64); the default
        2**24 is 128 MiB.

    Returns:
      dict with float values under "precision", "recall", "density", "coverage".
    """
    real = as_features(real_features, "real_features")
    fake = as_features(fake_features, "fake_features")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dimensions differ: real has D={real.shape[1]}, fake has D={fake.shape[1]}.")
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer; got {k!r}.")
    k = int(k)
    if real.shape[0] <= k or fake.shape[0] <= k:
        raise ValueError(
            f"need more than k={k} samples in each set; got {real.shape[0]} real and {fake.shape[0]} fake."
        )
    real_radii = _knn_radii(real, k, max_block_elements)
    fake_radii = _knn_radii(fake, k, max_block_elements)

    # Per fake: how many real balls contain it (precision, density).
    real_balls_hit = np.empty((fake.shape[0],), np.int64)
    for start, stop, d in _pairwise_distances_blocks(fake, real, max_block_elements):
        real_balls_hit[start:stop] = np.sum(d <= real_radii[None, :], axis=1)
    # Per real: inside any fake ball (recall); its own ball holds a fake (coverage).
    in_fake_ball = np.empty((real.shape[0],), bool)
    covered = np.empty((real.shape[0],), bool)
    for start, stop, d in _pairwise_distances_blocks(real, fake, max_block_elements):
        in_fake_ball[start:stop] = np.any(d <= fake_radii[None, :], axis=1)
        covered[start:stop] = d.min(axis=1) <= real_radii[start:stop]

    return {
        "precision": float(np.mean(real_balls_hit > 0)),
        "recall": float(np.mean(in_fake_ball)),
        "density": float(np.mean(real_balls_hit) / k),
        "coverage": float(np.mean(covered)),
    }
