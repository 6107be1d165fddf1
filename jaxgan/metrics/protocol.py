"""The image-metric protocol: what `jaxgan.evaluation.evaluate`, ``--eval_every`` and sweeps compute through.

A metric (`Metric`) names what it needs from the samples (``needs``: streamed feature moments ``"stats"``,
feature rows ``"rows"``, classifier/Inception ``"logits"``) and how many generated samples it needs at least
(``min_samples``); `FeatureAccumulator` accumulates exactly that, batch by batch, into a `Summary` of each side
(generated and reference); ``metric.result(fake, real, context)`` turns the two summaries into numbers plus the
protocol entry that makes them comparable. The registry of names is `jaxgan.metrics.registry.METRICS`.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Protocol

import numpy as np
import scipy.special

from jaxgan.config import ConfigError
from jaxgan.metrics.frechet import FeatureStats

NEEDS = ("stats", "rows", "logits")


class EvaluationError(ConfigError):
    """Bad evaluation input (metric names, sample counts, weights files, reference split): a one-line message."""


@dataclasses.dataclass
class Summary:
    """One side (generated or reference) as the metrics see it.

    Attributes:
      count: samples seen (N).
      stats: float64 streamed moments of all N feature vectors (None unless a metric needs ``"stats"``).
      rows: float32 [min(N, cap), D]: the first feature rows (None unless a metric needs ``"rows"``).
      score: (mean, std) of the Inception-Score formula on the logits over ``num_splits`` parts (None unless
        a metric needs ``"logits"`` and N >= num_splits).
    """

    count: int
    stats: FeatureStats | None = None
    rows: np.ndarray | None = None
    score: tuple[float, float] | None = None


@dataclasses.dataclass(frozen=True)
class Context:
    """What a metric knows besides the two summaries.

    ``names``: this extractor's name for each metric (``{"fid": "fcd", "kid": "kcd", "is": "classifier_score"}``
    for the digits classifier); ``feature_dim``: D; ``seed``: of any random subsets; ``warn``: records a warning
    (one line) in the evaluation record.
    """

    names: dict = dataclasses.field(default_factory=dict)
    feature_dim: int = 0
    seed: int = 0
    warn: Callable[[str], None] = lambda message: None

    def name(self, metric: str) -> str:
        return self.names.get(metric, metric)


class Metric(Protocol):
    """An image metric of the registry.

    ``name``: its ``--metrics`` name; ``label``, ``description``: how messages call it; ``min_samples``: generated samples it needs
    at least (``min_samples_reason``: why, for messages); ``needs``: a subset of `NEEDS`; ``result(fake, real, context) -> ({key: value}, protocol)`` (real
    may be None for metrics of the generated side only); ``reference_result(real, context) -> {key: value}``:
    the same formula on the reference side where that means something, else {}.
    """

    name: str
    label: str
    description: str
    min_samples: int
    min_samples_reason: str
    needs: frozenset

    def result(self, fake: Summary, real: Summary | None, context: Context) -> tuple[dict, dict]: ...

    def reference_result(self, real: Summary, context: Context) -> dict: ...


def check_samples(metric: Metric, count: int, flag: str = "--num_samples") -> None:
    """Raises `EvaluationError` when ``count`` generated samples are fewer than ``metric.min_samples``."""
    if count < metric.min_samples:
        raise EvaluationError(f"--metrics={metric.name} needs {flag} >= {metric.min_samples} "
                              f"({metric.min_samples_reason}), got {count}")


class StreamingScore:
    """The Inception Score of `jaxgan.metrics.distances.inception_score` accumulated batch by batch.

    The N samples (N known in advance) fall into ``num_splits`` contiguous parts as `np.array_split` cuts them;
    per part it keeps sum_i p_i [K] and sum_i sum_y p_iy log p_iy, which is all exp(mean KL(p_i || p)) needs.
    Also counts argmax classes (for `classes_covered`).
    """

    def __init__(self, total: int, num_classes: int, num_splits: int = 10):
        if total < num_splits:
            raise EvaluationError(f"the score needs at least num_splits={num_splits} samples; got {total}")
        sizes = [len(p) for p in np.array_split(np.arange(total), num_splits)]
        self._ends = np.cumsum(sizes)
        self._sizes = np.asarray(sizes, np.float64)
        self._sum_p = np.zeros((num_splits, num_classes), np.float64)
        self._sum_plogp = np.zeros((num_splits,), np.float64)
        self.class_counts = np.zeros((num_classes,), np.int64)
        self.total, self.seen = total, 0

    def update(self, logits) -> None:
        lg = np.asarray(logits, np.float64)
        idx = self.seen + np.arange(lg.shape[0])
        if idx.size and idx[-1] >= self.total:
            raise ValueError(f"more than the announced {self.total} samples")
        part = np.searchsorted(self._ends, idx, side="right")
        log_p = scipy.special.log_softmax(lg, axis=1)
        p = np.exp(log_p)
        plogp = np.sum(np.where(p > 0, p * log_p, 0.0), axis=1)
        np.add.at(self._sum_p, part, p)
        np.add.at(self._sum_plogp, part, plogp)
        self.class_counts += np.bincount(np.argmax(lg, axis=1), minlength=self.class_counts.shape[0])
        self.seen += lg.shape[0]

    def score(self) -> tuple[float, float]:
        """(mean, std) over the splits, as `inception_score`."""
        if self.seen != self.total:
            raise ValueError(f"saw {self.seen} of the announced {self.total} samples")
        p_y = self._sum_p / self._sizes[:, None]
        cross = np.sum(np.where(self._sum_p > 0, self._sum_p * np.log(np.where(p_y > 0, p_y, 1.0)), 0.0), axis=1)
        scores = np.exp((self._sum_plogp - cross) / self._sizes)
        return float(scores.mean()), float(scores.std())

    def classes_covered(self, min_count: int = 1) -> int:
        return int(np.sum(self.class_counts >= min_count))


class FeatureAccumulator:
    """Accumulates (features [B, D], logits [B, K]) batches of ``total`` samples into what ``needs`` names:
    `FeatureStats` of every sample, the first ``cap`` feature rows, the streamed score over ``num_splits``
    parts (when ``total >= num_splits``); argmax class counts always."""

    def __init__(self, feature_dim: int, num_classes: int, total: int, *, needs=NEEDS, cap: int = 10000,
                 num_splits: int = 10):
        unknown = set(needs) - set(NEEDS)
        if unknown:
            raise ValueError(f"unknown needs {sorted(unknown)}; accepted: {NEEDS}")
        self.total, self.cap, self.kept = total, cap, 0
        self.stats = FeatureStats.empty(feature_dim) if "stats" in needs else None
        self.rows: list[np.ndarray] | None = [] if "rows" in needs else None
        use_score = "logits" in needs and total >= num_splits
        self.score = StreamingScore(total, num_classes, num_splits) if use_score else None
        self.class_counts = np.zeros((num_classes,), np.int64)
        self.feature_dim = feature_dim

    def update(self, features, logits) -> None:
        if self.stats is not None:
            self.stats = self.stats.update(features)
        if self.rows is not None and self.kept < self.cap:
            take = np.asarray(features[: self.cap - self.kept], np.float32)
            self.rows.append(take)
            self.kept += take.shape[0]
        if self.score is not None:
            self.score.update(logits)
        self.class_counts += np.bincount(np.argmax(np.asarray(logits), axis=1), minlength=self.class_counts.shape[0])

    def features(self) -> np.ndarray:
        """The kept feature rows, float32 [min(N, cap), D]."""
        if not self.rows:
            return np.zeros((0, self.feature_dim), np.float32)
        return np.concatenate(self.rows)

    def classes_covered(self) -> int:
        return int(np.sum(self.class_counts >= 1))

    def summary(self) -> Summary:
        return Summary(self.total, self.stats, None if self.rows is None else self.features(),
                       None if self.score is None else self.score.score())


def summarize(features, logits, *, needs=NEEDS, cap: int = 10000, num_splits: int = 10) -> Summary:
    """The `Summary` of in-memory ``features`` [N, D] and ``logits`` [N, K] (one batch)."""
    features, logits = np.asarray(features), np.asarray(logits)
    acc = FeatureAccumulator(features.shape[1], logits.shape[1], features.shape[0], needs=needs, cap=cap,
                             num_splits=num_splits)
    acc.update(features, logits)
    return acc.summary()


__all__ = ["NEEDS", "EvaluationError", "Summary", "Context", "Metric", "check_samples", "StreamingScore",
           "FeatureAccumulator", "summarize"]
