"""Fréchet distance (FID / FCD) between Gaussians fitted to feature sets, with streaming statistics.

The Fréchet distance between N(mu1, S1) and N(mu2, S2) is

    |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2}),

computed here in float64 with the matrix square root of pytorch-fid (`scipy.linalg.sqrtm`, retried with a
small diagonal offset when the result is not finite; a negligible imaginary part is dropped, a large one is
an error). The features are whatever network embedding the caller chose (Inception pool3 for FID, a small
classifier's penultimate layer for FCD); this module only does the statistics.

Streaming: `FeatureStats` keeps (count, sum, sum of outer products) in float64 so that a 50k-sample FID
never holds all features; partial statistics from devices or hosts combine with `merge`. Inside a sharded
program, `feature_moments(features, axis_name)` computes the same three moments of a device batch and
`psum`s them over the mesh axis; `FeatureStats.from_moments` turns them into statistics on the host.
"""
from __future__ import annotations

import dataclasses
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

__all__ = [
    "FeatureStats",
    "feature_moments",
    "frechet_distance",
    "frechet_distance_from_stats",
]


def as_features(x, name: str) -> np.ndarray:
    """Returns `x` as a float64 [N, D] array, or raises ValueError naming `name` and the shape."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2D array [N, D] of features; got shape {a.shape}.")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains non-finite values (NaN or inf); features must be finite.")
    return a


def _warn_if_singular(count: int, dim: int) -> None:
    if count <= dim:
        warnings.warn(
            f"Covariance estimated from N={count} samples of D={dim} features: with N <= D the sample "
            f"covariance is singular (rank at most N-1) and the Fréchet distance estimate is strongly "
            f"biased; use more samples than feature dimensions for comparable numbers.",
            stacklevel=3,
        )


def frechet_distance_from_stats(mu1, sigma1, mu2, sigma2, *, eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

    Args:
      mu1, mu2: means, shape [D].
      sigma1, sigma2: covariance matrices, shape [D, D] (symmetric positive semi-definite).
      eps: diagonal offset added to both covariances when `sqrtm(sigma1 @ sigma2)` is not finite
        (singular products), as in pytorch-fid.

    Returns:
      The distance as a Python float. It can be a tiny negative number (~1e-12 relative) from
      rounding when the two Gaussians are equal; it is not clipped.

    Raises:
      ValueError: on mismatched shapes, or when the matrix square root has an imaginary part larger
        than 1e-3 on its diagonal (a sign of badly conditioned covariances).
    """
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    if mu1.ndim != 1 or mu1.shape != mu2.shape:
        raise ValueError(f"mu1 and mu2 must be vectors of the same length [D]; got {mu1.shape} and {mu2.shape}.")
    d = mu1.shape[0]
    if sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(
            f"sigma1 and sigma2 must be [D, D] = [{d}, {d}] to match the means; got {sigma1.shape} and {sigma2.shape}."
        )
    diff = mu1 - mu2
    with warnings.catch_warnings():
        # Singular products (dead ReLU features, N <= D) are expected; the checks below judge the result.
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
        if not np.all(np.isfinite(covmean)):
            offset = np.eye(d) * eps
            covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
        if not np.all(np.isfinite(covmean)):
            raise ValueError(
                f"sqrtm(sigma1 @ sigma2) is not finite even with a diagonal offset eps={eps}; "
                "the covariances are degenerate (check for constant or NaN features)."
            )
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0.0, atol=1e-3):
            largest = np.max(np.abs(covmean.imag))
            raise ValueError(
                f"sqrtm(sigma1 @ sigma2) has an imaginary component of magnitude {largest:.3g} "
                "(accepted: <= 1e-3 on the diagonal); the covariances are badly conditioned, "
                "usually because there are too few samples for the feature dimension."
            )
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


@dataclasses.dataclass(frozen=True)
class FeatureStats:
    """Streaming first and second moments of a feature set, in float64.

    Attributes:
      count: number of feature vectors seen (int).
      sum: float64 [D], the sum of the feature vectors.
      sum_outer: float64 [D, D], the sum of the outer products x x^T.

    Immutable: `update` and `merge` return new statistics. Example::

        stats = FeatureStats.empty(dim)
        for batch in batches:                 # batch: [B, D]
            stats = stats.update(batch)
        fid = stats.frechet_distance(reference_stats)

    The covariance is computed from raw moments, (sum_outer - N mean mean^T) / (N - 1); in float64 this
    is accurate to ~1e-16 * |mean|^2 / var relative, ample for network features.
    """

    count: int
    sum: np.ndarray
    sum_outer: np.ndarray

    @classmethod
    def empty(cls, dim: int) -> "FeatureStats":
        """Statistics of zero samples of dimension `dim` (a positive int)."""
        if int(dim) != dim or dim < 1:
            raise ValueError(f"dim must be a positive integer; got {dim!r}.")
        dim = int(dim)
        return cls(0, np.zeros((dim,), np.float64), np.zeros((dim, dim), np.float64))

    @classmethod
    def from_features(cls, features) -> "FeatureStats":
        """Statistics of a whole feature set [N, D] in one go."""
        f = as_features(features, "features")
        return cls.empty(f.shape[1]).update(f)

    @classmethod
    def from_moments(cls, count, sum, sum_outer) -> "FeatureStats":  # noqa: A002 - mirrors the fields
        """Statistics from (count, sum [D], sum_outer [D, D]), e.g. the output of `feature_moments`."""
        s = np.asarray(sum, dtype=np.float64)
        so = np.asarray(sum_outer, dtype=np.float64)
        if s.ndim != 1 or so.shape != (s.shape[0], s.shape[0]):
            raise ValueError(f"expected sum [D] and sum_outer [D, D]; got {s.shape} and {so.shape}.")
        c = np.asarray(count)
        if c.shape != () or c < 0:
            raise ValueError(f"count must be a non-negative scalar; got {count!r}.")
        return cls(int(c), s, so)

    @property
    def dim(self) -> int:
        """Feature dimension D."""
        return self.sum.shape[0]

    def update(self, features) -> "FeatureStats":
        """Returns the statistics with the batch `features` [B, D] added (B may be 0)."""
        f = as_features(features, "features")
        if f.shape[1] != self.dim:
            raise ValueError(f"features have dimension {f.shape[1]}, but these statistics have D={self.dim}.")
        return FeatureStats(self.count + f.shape[0], self.sum + f.sum(axis=0), self.sum_outer + f.T @ f)

    def merge(self, other: "FeatureStats") -> "FeatureStats":
        """Statistics of the union of both sample sets (e.g. per-device or per-host partials)."""
        if not isinstance(other, FeatureStats):
            raise TypeError(f"merge expects a FeatureStats; got {type(other).__name__}.")
        if other.dim != self.dim:
            raise ValueError(f"cannot merge statistics of dimension {self.dim} and {other.dim}.")
        return FeatureStats(self.count + other.count, self.sum + other.sum, self.sum_outer + other.sum_outer)

    @property
    def mean(self) -> np.ndarray:
        """float64 [D] sample mean; needs count >= 1."""
        if self.count < 1:
            raise ValueError("mean of empty FeatureStats (count=0); update it with features first.")
        return self.sum / self.count

    @property
    def covariance(self) -> np.ndarray:
        """float64 [D, D] unbiased sample covariance (ddof=1, as np.cov); needs count >= 2.

        Warns when count <= D: the estimate is then singular and the Fréchet distance biased.
        """
        if self.count < 2:
            raise ValueError(f"covariance needs at least 2 samples; these statistics have count={self.count}.")
        _warn_if_singular(self.count, self.dim)
        mean = self.mean
        cov = (self.sum_outer - self.count * np.outer(mean, mean)) / (self.count - 1)
        return (cov + cov.T) / 2.0

    def frechet_distance(self, other: "FeatureStats", *, eps: float = 1e-6) -> float:
        """Fréchet distance between the Gaussians fitted to `self` and `other`."""
        return frechet_distance_from_stats(self.mean, self.covariance, other.mean, other.covariance, eps=eps)

    def save(self, path: str | os.PathLike) -> None:
        """Writes the statistics to an .npz file (keys count, sum, sum_outer)."""
        np.savez(path, count=np.int64(self.count), sum=self.sum, sum_outer=self.sum_outer)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FeatureStats":
        """Reads statistics written by `save`."""
        with np.load(path) as z:
            return cls.from_moments(z["count"], z["sum"], z["sum_outer"])


def frechet_distance(features_a, features_b, *, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets.

    Args:
      features_a: [N_a, D] features (any float dtype; converted to float64).
      features_b: [N_b, D] features.
      eps: diagonal offset for the square-root retry, see `frechet_distance_from_stats`.

    Returns:
      |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^{1/2}) as a float, with unbiased (ddof=1)
      covariances. Warns when N <= D for either set (singular covariance, biased estimate).
    """
    a = as_features(features_a, "features_a")
    b = as_features(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: features_a has D={a.shape[1]}, features_b has D={b.shape[1]}.")
    return FeatureStats.from_features(a).frechet_distance(FeatureStats.from_features(b), eps=eps)


def feature_moments(features: jax.Array, axis_name=None, *, mask: jax.Array | None = None):
    """(count, sum, sum_outer) of a device batch of features, summed over `axis_name` when given.

    Meant for sharded evaluation: call it inside `jax.shard_map` (or any mapped context binding
    `axis_name`) on the local shard, and the result is the moments of the global batch, replicated.
    Feed it to `FeatureStats.from_moments` (after `jax.device_get`) and accumulate on the host in float64.

    Args:
      features: [B, D] float array (the local shard under shard_map).
      axis_name: mesh axis name (or tuple of names) to `lax.psum` over; None for a single device.
      mask: optional [B] bool/0-1 array; rows with mask 0 (padding) are left out.

    Returns:
      count: int32 scalar, number of (unmasked) rows.
      sum: [D] sum of the rows, in the dtype of `features` (float32 unless x64 is enabled).
      sum_outer: [D, D] sum of the row outer products x x^T, same dtype, computed at highest precision.
    """
    if features.ndim != 2:
        raise ValueError(f"features must be [B, D]; got shape {features.shape}.")
    if mask is None:
        weights = jnp.ones_like(features[:, 0])
    else:
        if mask.shape != features.shape[:1]:
            raise ValueError(f"mask must have shape [B] = {features.shape[:1]}; got {mask.shape}.")
        weights = mask.astype(features.dtype)
    count = jnp.sum(weights.astype(jnp.int32))
    weighted = features * weights[:, None]
    total = jnp.sum(weighted, axis=0)
    outer = jnp.matmul(weighted.T, features, precision=jax.lax.Precision.HIGHEST)
    if axis_name is not None:
        count, total, outer = jax.lax.psum((count, total, outer), axis_name)
    return count, total, outer
