"""The image metrics of the registry (`jaxgan.metrics.registry.METRICS`), one class each, on the `Metric` protocol
of `jaxgan.metrics.protocol`: the Fréchet distance (``fid``), the kernel distance (``kid``), the Inception /
classifier score (``is``) and improved precision/recall with density/coverage (``pr``).

Each ``result(fake, real, context)`` returns ``({key: value}, protocol)``; keys use the extractor's names
(``context.name("fid")`` is ``fcd`` with the digits classifier).
"""
from __future__ import annotations

import dataclasses
import warnings

from jaxgan.metrics import distances
from jaxgan.metrics.protocol import Context, EvaluationError, Summary, check_samples


@dataclasses.dataclass(frozen=True)
class FrechetDistance:
    """FID: the Fréchet distance of Gaussians fitted (streamed, float64) to the two sides' features."""

    name: str = "fid"
    label: str = "FID"
    description: str = "Fréchet distance"
    min_samples: int = 2
    min_samples_reason: str = "a covariance needs two samples"
    needs: frozenset = frozenset({"stats"})

    def result(self, fake: Summary, real: Summary, context: Context) -> tuple[dict, dict]:
        check_samples(self, fake.count)
        name, dim = context.name(self.name), context.feature_dim or fake.stats.dim
        for label, n in (("generated", fake.count), ("reference", real.count)):
            if n <= dim:
                context.warn(f"{name}: {n} {label} samples for {dim}-dimensional features: with N <= D the "
                             f"covariance is singular and the Fréchet distance is strongly biased (upwards); use "
                             f"more than {dim} samples for comparable numbers")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            distance = fake.stats.frechet_distance(real.stats)
        for w in caught:  # N <= D is reported above, naming the side; other warnings are passed on
            if issubclass(w.category, UserWarning) and "Covariance estimated from" not in str(w.message):
                context.warn(f"{name}: {w.message}")
        protocol = {"n_fake": fake.count, "n_real": real.count,
                    "statistics": "float64 streaming mean/covariance (ddof=1), scipy sqrtm"}
        return {name: distance}, protocol

    def reference_result(self, real: Summary, context: Context) -> dict:
        return {}


@dataclasses.dataclass(frozen=True)
class KernelDistance:
    """KID: the unbiased polynomial-kernel MMD^2 over random subsets of the kept feature rows (mean, std)."""

    name: str = "kid"
    label: str = "KID"
    description: str = "kernel distance"
    min_samples: int = 2
    min_samples_reason: str = "the unbiased MMD needs two samples per side"
    needs: frozenset = frozenset({"rows"})
    num_subsets: int = 100
    subset_size: int = 1000

    def result(self, fake: Summary, real: Summary, context: Context) -> tuple[dict, dict]:
        check_samples(self, fake.count)
        if fake.rows.shape[0] < 2 or real.rows.shape[0] < 2:
            raise EvaluationError(f"--metrics={self.name} needs >= 2 feature rows on each side (--max_feature_"
                                  f"samples), got {fake.rows.shape[0]} and {real.rows.shape[0]}")
        name = context.name(self.name)
        mean, std = distances.kernel_distance(real.rows, fake.rows, num_subsets=self.num_subsets,
                                              max_subset_size=self.subset_size, key=context.seed)
        protocol = {"n_fake": int(fake.rows.shape[0]), "n_real": int(real.rows.shape[0]),
                    "num_subsets": self.num_subsets,
                    "subset_size": int(min(self.subset_size, fake.rows.shape[0], real.rows.shape[0])),
                    "kernel": "(x.y / D + 1)^3, unbiased MMD^2", "std": "over subsets (ddof=0)"}
        return {name: mean, name + "_std": std}, protocol

    def reference_result(self, real: Summary, context: Context) -> dict:
        return {}


@dataclasses.dataclass(frozen=True)
class InceptionScore:
    """IS: exp(mean KL(p(y|x) || p(y))) of the generated logits, averaged over ``num_splits`` parts (mean, std)."""

    name: str = "is"
    label: str = "IS"
    description: str = "Inception/classifier score"
    num_splits: int = 10
    min_samples_reason: str = "the score is averaged over that many splits"
    needs: frozenset = frozenset({"logits"})

    @property
    def min_samples(self) -> int:
        return self.num_splits

    def result(self, fake: Summary, real: Summary | None, context: Context) -> tuple[dict, dict]:
        check_samples(self, fake.count)
        name = context.name(self.name)
        mean, std = fake.score
        return {name: mean, name + "_std": std}, {"n_fake": fake.count, "num_splits": self.num_splits,
                                                  "std": "over splits (ddof=0)"}

    def reference_result(self, real: Summary, context: Context) -> dict:
        return {} if real.score is None else {context.name(self.name): real.score[0]}


@dataclasses.dataclass(frozen=True)
class PrecisionRecall:
    """Improved precision / recall (k-NN manifolds) with density / coverage, on the kept feature rows."""

    name: str = "pr"
    label: str = "PR"
    description: str = "precision/recall/density/coverage"
    k: int = 5
    min_samples_reason: str = "the k-NN radii need more than k samples"
    needs: frozenset = frozenset({"rows"})
    keys: tuple = ("precision", "recall", "density", "coverage")

    @property
    def min_samples(self) -> int:
        return self.k + 1

    def result(self, fake: Summary, real: Summary, context: Context) -> tuple[dict, dict]:
        check_samples(self, fake.count)
        if fake.rows.shape[0] <= self.k or real.rows.shape[0] <= self.k:
            raise EvaluationError(f"--metrics={self.name} needs more than k={self.k} samples on each side")
        values = distances.precision_recall_density_coverage(real.rows, fake.rows, k=self.k)
        protocol = {"n_fake": int(fake.rows.shape[0]), "n_real": int(real.rows.shape[0]), "k": self.k,
                    "names": list(self.keys)}
        return {key: values[key] for key in self.keys}, protocol

    def reference_result(self, real: Summary, context: Context) -> dict:
        return {}


__all__ = ["FrechetDistance", "KernelDistance", "InceptionScore", "PrecisionRecall"]
