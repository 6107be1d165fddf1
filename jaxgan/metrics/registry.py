"""Registry of the image metrics: ``--metrics`` / ``--eval_metrics`` names to `Metric` objects, one line each.

`jaxgan.evaluation.evaluate` (so ``launch/evaluate.py`` and ``--eval_every``), config validation (minimum
sample counts) and sweeps (`jaxgan.sweep`) all read this table. Adding a metric: a class on the protocol of
`jaxgan.metrics.protocol` and one line here (``docs/extending.md``); ``tests/test_registries.py`` evaluates it.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxgan.metrics.image_metrics import FrechetDistance, InceptionScore, KernelDistance, PrecisionRecall
from jaxgan.metrics.protocol import NEEDS, Context, EvaluationError, Metric, Summary, check_samples, summarize

METRICS: dict[str, Metric] = {
    "fid": FrechetDistance(),
    "kid": KernelDistance(),
    "is": InceptionScore(),
    "pr": PrecisionRecall(),
}


def parse_metrics(metrics: str | Sequence[str], flag: str = "--metrics") -> tuple[str, ...]:
    """``"fid,kid"`` or ``("fid", "kid")`` -> ordered, de-duplicated tuple; unknown names raise EvaluationError."""
    names = metrics.split(",") if isinstance(metrics, str) else list(metrics)
    names = [str(n).strip().lower() for n in names if str(n).strip()]
    if not names:
        raise EvaluationError(f"{flag} is empty; accepted: a comma-separated subset of {','.join(METRICS)}")
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        described = ", ".join(f"{n}: {m.description}" for n, m in METRICS.items())
        raise EvaluationError(f"{flag}: unknown metric(s) {unknown}; accepted: a comma-separated subset of "
                              f"{','.join(METRICS)} ({described})")
    return tuple(dict.fromkeys(names))


def min_samples(names: Sequence[str]) -> int:
    """The generated samples the metrics ``names`` need at least (the largest of their ``min_samples``)."""
    return max([METRICS[n].min_samples for n in names], default=1)


def needs(names: Sequence[str]) -> frozenset:
    """What the metrics ``names`` need accumulated (a subset of ``("stats", "rows", "logits")``)."""
    return frozenset().union(*(METRICS[n].needs for n in names))


def compute(names: Sequence[str], fake: Summary, real: Summary | None, context: Context) -> tuple[dict, dict]:
    """({key: value}, {protocol key: protocol}) of the metrics ``names``, in order, generated ``fake`` against
    ``real``; each metric checks its sample counts first (`EvaluationError`)."""
    values, protocol = {}, {}
    for name in names:
        metric = METRICS[name]
        check_samples(metric, fake.count)
        out, entry = metric.result(fake, real, context)
        values.update(out)
        protocol[context.name(name)] = entry
    return values, protocol


def score_of_logits(logits, num_splits: int = 1) -> tuple[float, float]:
    """The registry's ``is`` metric (mean, std) of in-memory ``logits`` [N, K] over ``num_splits`` parts."""
    metric = METRICS["is"]
    if num_splits != metric.num_splits:
        metric = type(metric)(num_splits=num_splits)
    logits = np.asarray(logits)
    fake = summarize(np.zeros((logits.shape[0], 0), np.float32), logits, needs=metric.needs, num_splits=num_splits)
    values, _ = metric.result(fake, None, Context())
    return values["is"], values["is_std"]


__all__ = ["METRICS", "NEEDS", "parse_metrics", "min_samples", "needs", "compute", "score_of_logits"]
