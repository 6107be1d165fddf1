"""Mode-coverage metrics for Gaussian-mixture benchmarks (VEEGAN / PacGAN style) and exact empirical W1.

The metrics follow VEEGAN (Srivastava et al., 2017) as reused by PacGAN (Lin et al., 2018):

* a sample is **high quality** (HQ) if its distance to the nearest mixture mean is below
  ``threshold * std`` (``threshold = 3`` for the 2D ring / grid benchmarks, 10 for the 1200-D one);
* **modes captured** is the number of mixture components that are the nearest mean of at least one HQ sample;
* **reverse KL** is ``KL(p || uniform_K)`` where ``p`` is the histogram of HQ samples over their nearest modes.

Both papers evaluate 2500 samples per trained generator; drawing them is the caller's business.

Everything here is NumPy / SciPy on the host (float64); JAX arrays are accepted and converted.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

__all__ = ["mode_metrics", "wasserstein1", "wasserstein1_to_mixture", "sample_mixture"]

# Upper bound on the number of float64 elements of one [chunk, K, D] difference block (about 64 MB).
_CHUNK_ELEMENTS = 8_000_000


def _as_2d(name: str, x: Any) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must have shape [N, D]; got shape {a.shape}.")
    return a


def _check_mixture(samples: Any, means: Any, std: float) -> tuple[np.ndarray, np.ndarray, float]:
    x = _as_2d("samples", samples)
    mu = _as_2d("means", means)
    if mu.shape[0] == 0:
        raise ValueError(f"means must contain at least one mode; got shape {mu.shape}.")
    if x.shape[1] != mu.shape[1]:
        raise ValueError(
            f"samples and means must have the same dimension D; got samples {x.shape} and means {mu.shape}.")
    std = float(std)
    if not (std > 0.0 and math.isfinite(std)):
        raise ValueError(f"std must be a finite positive number; got {std!r}.")
    return x, mu, std


def _nearest_modes(x: np.ndarray, mu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of and Euclidean distance to the nearest mean, for each row of ``x``.

    Computed from explicit differences (not the ``|x|^2 - 2 x.m + |m|^2`` expansion), so distances near
    the HQ boundary are exact to float64 rounding; rows are processed in chunks to bound memory.
    """
    n, d = x.shape
    k = mu.shape[0]
    idx = np.empty(n, dtype=np.int64)
    dist = np.empty(n, dtype=np.float64)
    chunk = max(1, _CHUNK_ELEMENTS // max(1, k * d))
    for start in range(0, n, chunk):
        xs = x[start:start + chunk]
        sq = np.sum((xs[:, None, :] - mu[None, :, :]) ** 2, axis=-1)  # [c, K]
        # Non-finite samples (a diverged generator) are never near any mode.
        sq = np.where(np.isfinite(sq), sq, np.inf)
        j = np.argmin(sq, axis=1)
        idx[start:start + chunk] = j
        dist[start:start + chunk] = np.sqrt(sq[np.arange(xs.shape[0]), j])
    return idx, dist


def mode_metrics(samples: Any, means: Any, std: float, *, threshold: float = 3.0) -> dict[str, Any]:
    """VEEGAN/PacGAN mode-coverage metrics of generated samples against a Gaussian mixture.

    Args:
      samples: ``[N, D]`` generated samples (NumPy or JAX array). The benchmarks use ``N = 2500``;
        choosing ``N`` is the caller's business (more samples find more rare modes).
      means: ``[K, D]`` mixture means.
      std: the common (isotropic) standard deviation of the mixture components, > 0.
      threshold: a sample is high quality when ``||x - nearest mean|| < threshold * std`` (strict).
        3.0 for the 2D benchmarks; VEEGAN uses 10.0 for its 1200-D mixture.

    Returns:
      A dict with
        * ``modes_captured`` (int): number of modes that are the nearest mean of at least one HQ sample.
        * ``high_quality_fraction`` (float): fraction of the ``N`` samples that are HQ (0.0 when ``N == 0``).
        * ``reverse_kl`` (float): ``KL(p || u) = sum_k p_k log(K p_k)`` with ``p_k = counts_k / sum(counts)``
          and ``u`` uniform over the ``K`` modes (natural log; ``0 log 0 = 0``). It lies in ``[0, log K]``.
          **When there is no HQ sample** ``p`` is undefined; we return ``log K``, the value for total collapse
          onto one mode, so averages over seeds stay finite. ``high_quality_fraction == 0`` tells the two
          cases apart.
        * ``mode_counts`` (``np.ndarray`` int64 ``[K]``): number of HQ samples whose nearest mode is ``k``.
        * ``num_high_quality`` (int) and ``num_samples`` (int).

    Non-finite samples count as not high quality.
    """
    x, mu, std = _check_mixture(samples, means, std)
    threshold = float(threshold)
    if not (threshold > 0.0 and math.isfinite(threshold)):
        raise ValueError(f"threshold must be a finite positive number; got {threshold!r}.")
    n, k = x.shape[0], mu.shape[0]
    if n == 0:
        counts = np.zeros(k, dtype=np.int64)
        hq = np.zeros(0, dtype=bool)
    else:
        idx, dist = _nearest_modes(x, mu)
        hq = dist < threshold * std
        counts = np.bincount(idx[hq], minlength=k).astype(np.int64)
    num_hq = int(counts.sum())
    if num_hq == 0:
        rkl = math.log(k)
    else:
        p = counts[counts > 0] / num_hq
        rkl = float(np.sum(p * np.log(p * k)))
        rkl = max(rkl, 0.0)  # clamp float rounding below zero for exactly uniform counts
    return {
        "modes_captured": int(np.count_nonzero(counts)),
        "high_quality_fraction": float(num_hq / n) if n else 0.0,
        "reverse_kl": float(rkl),
        "mode_counts": counts,
        "num_high_quality": num_hq,
        "num_samples": int(n),
    }


def wasserstein1(samples_a: Any, samples_b: Any) -> float:
    """Exact Wasserstein-1 distance between two equal-size empirical distributions.

    With uniform weights ``1/N`` on both sets the optimal transport plan is a permutation, so
    ``W1 = min_sigma (1/N) sum_i ||a_i - b_sigma(i)||_2``, solved exactly with
    ``scipy.optimize.linear_sum_assignment`` on the float64 Euclidean cost matrix.
    Cost is O(N^2) memory and roughly O(N^3) time: fine for N up to a few thousand.

    Args:
      samples_a: ``[N, D]``.
      samples_b: ``[N, D]`` (same ``N`` and ``D``).

    Returns:
      W1 as a Python float (0.0 for two empty sets; ``inf`` if any coordinate is non-finite).
    """
    a = _as_2d("samples_a", samples_a)
    b = _as_2d("samples_b", samples_b)
    if a.shape != b.shape:
        raise ValueError(
            f"samples_a and samples_b must have the same shape [N, D]; got {a.shape} and {b.shape}.")
    if a.shape[0] == 0:
        return 0.0
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return math.inf
    cost = cdist(a, b, metric="euclidean")
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].mean())


def sample_mixture(means: Any, std: float, n: int, *, seed: int | np.random.Generator) -> np.ndarray:
    """``n`` i.i.d. samples ``[n, D]`` (float64) from the isotropic mixture with uniform mode weights.

    ``seed`` is an int (or a ``np.random.Generator``); the same seed gives the same samples.
    """
    mu = _as_2d("means", means)
    std = float(std)
    if mu.shape[0] == 0:
        raise ValueError(f"means must contain at least one mode; got shape {mu.shape}.")
    if not (std >= 0.0 and math.isfinite(std)):
        raise ValueError(f"std must be a finite non-negative number; got {std!r}.")
    if int(n) < 0:
        raise ValueError(f"n must be >= 0; got {n!r}.")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    comp = rng.integers(mu.shape[0], size=int(n))
    return mu[comp] + std * rng.standard_normal((int(n), mu.shape[1]))


def wasserstein1_to_mixture(samples: Any, means: Any, std: float, *, seed: int, n: int | None = None) -> float:
    """Empirical W1 between generated samples and an equal number of exact mixture samples.

    Draws ``n`` i.i.d. samples from the mixture (isotropic ``std``, uniform mode weights) with
    ``np.random.default_rng(seed)`` and returns :func:`wasserstein1` against ``n`` of the given samples
    (all of them when ``n`` is None; otherwise a random subset of size ``n`` chosen with the same generator).

    This is the exact W1 between two *empirical* distributions, hence a (positively biased, noisy) estimate
    of the population W1 between the generator and the mixture: even a perfect generator scores > 0, by
    an amount that shrinks with ``n``. Compare numbers only at equal ``n``. Meant for N up to a few thousand
    (the assignment is roughly cubic in N).

    Args:
      samples: ``[N, D]`` generated samples.
      means: ``[K, D]`` mixture means.
      std: component standard deviation (>= 0).
      seed: int seed of the reference draw.
      n: number of points per side, ``1 <= n <= N``; default ``N``.
    """
    x = _as_2d("samples", samples)
    mu = _as_2d("means", means)
    if x.shape[1] != mu.shape[1]:
        raise ValueError(
            f"samples and means must have the same dimension D; got samples {x.shape} and means {mu.shape}.")
    rng = np.random.default_rng(seed)
    total = x.shape[0]
    if n is None:
        n = total
    n = int(n)
    if not 1 <= n <= total:
        raise ValueError(f"n must be in [1, {total}] (the number of samples); got {n}.")
    if n < total:
        x = x[rng.choice(total, size=n, replace=False)]
    ref = sample_mixture(mu, std, n, seed=rng)
    return wasserstein1(x, ref)
