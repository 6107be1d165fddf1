"""Scoring a trained generator: FID / KID / IS / precision-recall, with the protocol in every record.

``evaluate(experiment, state, ...)`` draws ``num_samples`` generator samples (EMA weights when the run used
EMA, BatchNorm in inference mode, i.e. the stored running statistics), streams their features batch by
batch into :class:`~jaxgan.metrics.frechet.FeatureStats` (the Fréchet distance never holds all features),
and compares them with statistics of a real reference split, cached on disk. It returns a JSON-ready
dict: the numbers AND the protocol that makes them comparable (sample counts per metric, reference split,
feature extractor and its weights digest, resizing, checkpoint step, EMA, BatchNorm mode), because FID
numbers are easily incomparable across sample counts, splits, Inception ports and resizers.

Feature extractors:

* ``"inception"``: pytorch-fid's FID Inception-v3 (``jaxgan.metrics.features``), weights from a local
  converted ``.npz`` (``inception_weights``; checksum verified); images resized to 299x299 exactly as
  pytorch-fid does, gray repeated to RGB. Metric names: ``fid``, ``kid``, ``inception_score``.
* ``"classifier"`` (default for ``digits``; works offline): a small CNN trained by jaxgan on scikit-learn
  digits (trained once, cached; :func:`digits_classifier`), 28x28 gray input (other sizes resized with
  torch-style bilinear, RGB converted to gray by luminance). Metric names: ``fcd`` (Fréchet classifier
  distance), ``kcd`` (kernel classifier distance, the KID formula), ``classifier_score`` (the IS formula
  on classifier logits) and ``classes_covered`` (classes predicted for at least one sample; always given).

``metrics`` picks among ``fid`` (the Fréchet distance in the extractor's features), ``kid``, ``is`` and
``pr`` (improved precision/recall plus density/coverage): the metrics of `jaxgan.metrics.registry.METRICS`,
each on the protocol of `jaxgan.metrics.protocol` (what it needs accumulated, its minimum sample count). KID and PR need the features themselves: they
use the first ``max_feature_samples`` generated samples and a fixed random subset of that many reference
samples; the record states those counts separately from the Fréchet distance's counts.

Caches (default ``$JAXGAN_CACHE_DIR`` or ``~/.cache/jaxgan``): ``digits_classifier_28px_v1.npz`` (+ ``.json``
with its test accuracy and digest), and ``reference/<key>.npz`` + ``.json``: reference statistics keyed by
(dataset, split, image size, channels, extractor digest, n_real, feature subset size).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import pathlib
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jaxgan.metrics import registry
from jaxgan.metrics.frechet import FeatureStats
from jaxgan.metrics.protocol import (Context, EvaluationError, FeatureAccumulator, StreamingScore, Summary,
                                    check_samples)

__all__ = [
    "EXTRACTORS",
    "METRICS",
    "EvaluationError",
    "Extractor",
    "StreamingScore",
    "build_extractor",
    "classifier_extractor",
    "default_cache_dir",
    "digits_classifier",
    "evaluate",
    "inception_extractor",
    "parse_metrics",
    "reference_statistics",
    "write_json_atomic",
]

METRICS = tuple(registry.METRICS)  # the names; the metrics themselves: jaxgan.metrics.registry.METRICS
EXTRACTORS = ("inception", "classifier")
CLASSIFIER_SIZE = 28
CLASSIFIER_VERSION = 1
REFERENCE_VERSION = 1
IS_SPLITS = registry.METRICS["is"].num_splits  # of the reference side's score too
BN_MODE = "inference (the generator's stored BatchNorm running statistics; train=False)"


def default_cache_dir() -> pathlib.Path:
    """``$JAXGAN_CACHE_DIR``, else ``~/.cache/jaxgan``."""
    return pathlib.Path(os.environ.get("JAXGAN_CACHE_DIR") or os.path.expanduser("~/.cache/jaxgan"))


def write_json_atomic(path, record: dict) -> None:
    """Writes ``record`` as indented JSON to ``path`` via a temporary file and ``os.replace``."""
    from jaxgan.logging import atomic_write_text
    atomic_write_text(path, json.dumps(record, indent=1, sort_keys=False) + "\n")


def parse_metrics(metrics: str | Sequence[str]) -> tuple[str, ...]:
    """``"fid,kid"`` or ``("fid", "kid")`` -> ordered, de-duplicated tuple; unknown names raise EvaluationError."""
    return registry.parse_metrics(metrics)


# ----------------------------------------------------------------------------------------------
# Feature extractors
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Extractor:
    """A feature network: ``apply(images [B, S, S, C] in [-1, 1]) -> (features [B, D], logits [B, K])`` (NumPy).

    ``info`` is the protocol entry (name, weights digest, input size, resize rule, ...); ``digest`` keys the
    reference-statistics cache; ``names`` maps fid/kid/is to this extractor's metric names.
    """

    name: str
    digest: str
    feature_dim: int
    num_classes: int
    apply: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
    info: dict
    names: dict


def _params_digest(params) -> str:
    """SHA-256 over sorted parameter paths, shapes, dtypes and bytes (independent of file timestamps)."""
    from flax import traverse_util

    h = hashlib.sha256()
    for name, value in sorted(traverse_util.flatten_dict(jax.device_get(params), sep="/").items()):
        a = np.ascontiguousarray(np.asarray(value))
        h.update(f"{name}:{a.shape}:{a.dtype.str};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _digits_arrays_28():
    """scikit-learn digits at 28x28x1 in [-1, 1] (exactly the GAN's --dataset=digits preprocessing), split
    80/20 stratified with ``random_state=0``: (x_train, y_train, x_test, y_test)."""
    from sklearn.model_selection import train_test_split

    from jaxgan.data import digits as digits_lib

    images, labels = digits_lib.load_digits_arrays()
    x = np.stack([digits_lib.upsample_digit(im, CLASSIFIER_SIZE, 1) for im in images])
    x_tr, x_te, y_tr, y_te = train_test_split(x, np.asarray(labels), test_size=0.2, random_state=0, stratify=labels)
    return x_tr, y_tr, x_te, y_te


def digits_classifier(path=None, *, cache_dir=None, steps: int = 600) -> tuple[Any, dict]:
    """The digits evaluation classifier: loaded from ``path`` (or the cache), else trained once and saved.

    Trained with `jaxgan.metrics.classifier.train_classifier` (seed 0, ``steps`` Adam steps, batch 64) on 80% of
    scikit-learn digits at 28x28 (the GAN's own digits preprocessing), tested on the other 20%. Training is
    deterministic, so a re-trained cache has the same parameters (on the same platform).

    Args:
      path: an ``.npz`` written by `jaxgan.metrics.classifier.save_params`; if it does not exist, the classifier
        is trained and saved there. Default: ``<cache_dir>/digits_classifier_28px_v1.npz``.
      cache_dir: default `default_cache_dir()`.

    Returns:
      (params, meta) with meta = {"path", "params_sha256", "test_accuracy" (None if unknown), "trained_on"}.
    """
    from jaxgan.metrics import classifier as clf

    if path is None:
        name = f"digits_classifier_{CLASSIFIER_SIZE}px_v{CLASSIFIER_VERSION}.npz"
        path = pathlib.Path(cache_dir or default_cache_dir()) / name
    path = pathlib.Path(path)
    side = path.with_name(path.name + ".json")
    if path.exists():
        try:
            params = clf.load_params(path)
        except (OSError, ValueError, KeyError) as e:
            raise EvaluationError(f"classifier weights {str(path)!r} are unreadable or not a ConvClassifier ({e}); "
                                  f"delete the file to re-train it") from None
        meta = json.loads(side.read_text()) if side.exists() else {}
    else:
        x_tr, y_tr, x_te, y_te = _digits_arrays_28()
        logging.info("training the digits evaluation classifier (%d steps; cached at %s)", steps, path)
        params, history = clf.train_classifier(x_tr, y_tr, num_classes=10, steps=steps, batch_size=64, seed=0,
                                               test_images=x_te, test_labels=y_te)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
        clf.save_params(tmp, params)
        os.replace(tmp, path)
        meta = {"test_accuracy": history["test_accuracy"], "steps": steps,
                "trained_on": "scikit-learn digits 28x28, 80% stratified split (random_state=0); "
                              "test_accuracy on the other 20%"}
        write_json_atomic(side, meta)
    meta = {"test_accuracy": meta.get("test_accuracy"), "trained_on": meta.get("trained_on", "unknown"),
            "path": str(path), "params_sha256": _params_digest(params)}
    return params, meta


def _to_gray(x: np.ndarray) -> np.ndarray:
    if x.shape[-1] == 1:
        return x
    return (x[..., :3] @ np.asarray([0.299, 0.587, 0.114], np.float32))[..., None]


def classifier_extractor(path=None, *, cache_dir=None) -> Extractor:
    """The digits classifier as an `Extractor` (trained and cached on first use; see `digits_classifier`)."""
    from jaxgan.metrics import classifier as clf
    from jaxgan.metrics.features import resize_bilinear

    params, meta = digits_classifier(path, cache_dir=cache_dir)
    module = clf.module_from_params(params)
    forward = jax.jit(module.apply)

    def apply(images):
        x = _to_gray(np.asarray(images, np.float32))
        if x.shape[1:3] != (CLASSIFIER_SIZE, CLASSIFIER_SIZE):
            x = resize_bilinear(x, (CLASSIFIER_SIZE, CLASSIFIER_SIZE))
        logits, features = forward(params, jnp.asarray(x))
        return np.asarray(features), np.asarray(logits)

    info = {"name": "classifier", "network": "jaxgan digits ConvClassifier (penultimate ReLU features)",
            "weights_sha256": meta["params_sha256"], "weights_path": meta["path"],
            "test_accuracy": meta["test_accuracy"], "trained_on": meta["trained_on"],
            "input": f"{CLASSIFIER_SIZE}x{CLASSIFIER_SIZE}x1",
            "resize": f"bilinear to {CLASSIFIER_SIZE}x{CLASSIFIER_SIZE} (torch align_corners=False, no antialias) "
                      f"when the images have another size; RGB -> gray by luminance"}
    return Extractor("classifier", meta["params_sha256"], module.hidden, module.num_classes, apply, info,
                     {"fid": "fcd", "kid": "kcd", "is": "classifier_score"})


def inception_extractor(weights_path, *, batch_size: int = 50) -> Extractor:
    """pytorch-fid's FID Inception-v3 from a converted ``.npz`` (checksum verified) as an `Extractor`."""
    from jaxgan.metrics import features as feat
    from jaxgan.metrics.inception import NUM_CLASSES, POOL3_DIM

    if not weights_path:
        raise EvaluationError("--feature_extractor=inception needs --inception_weights=FILE.npz: "
                              + feat.missing_weights_message("FILE.npz"))
    try:
        params = feat.load_inception_params(weights_path)
    except FileNotFoundError as e:
        raise EvaluationError(str(e)) from None
    except ValueError as e:
        raise EvaluationError(str(e)) from None
    digest = feat.file_sha256(weights_path)

    def apply(images):
        x = np.clip(np.asarray(images, np.float32), -1.0, 1.0)
        if x.shape[-1] == 1:
            x = np.repeat(x, 3, axis=-1)
        return feat.inception_features(params, x, batch_size=batch_size)

    info = {"name": "inception", "network": "pytorch-fid FID Inception-v3 (pt_inception-2015-12-05), pool3",
            "weights_sha256": digest, "weights_path": os.fspath(weights_path),
            "input": f"{feat.INCEPTION_SIZE}x{feat.INCEPTION_SIZE}x3",
            "resize": f"bilinear to {feat.INCEPTION_SIZE}x{feat.INCEPTION_SIZE} (torch F.interpolate, "
                      f"align_corners=False, no antialias, as pytorch-fid); gray repeated to RGB; values "
                      f"clipped to [-1, 1]"}
    return Extractor("inception", digest, POOL3_DIM, NUM_CLASSES, apply, info,
                     {"fid": "fid", "kid": "kid", "is": "inception_score"})


def build_extractor(dataset: str, feature_extractor: str | None = None, *, inception_weights=None,
                    classifier_path=None, cache_dir=None) -> Extractor:
    """The `Extractor` named by ``feature_extractor`` (None: "classifier" for ``digits``, else "inception")."""
    kind = feature_extractor or ("classifier" if dataset == "digits" else "inception")
    if kind not in EXTRACTORS:
        raise EvaluationError(f"--feature_extractor={kind!r} is not one of {EXTRACTORS}")
    if kind == "classifier":
        return classifier_extractor(classifier_path, cache_dir=cache_dir)
    return inception_extractor(inception_weights)


# ----------------------------------------------------------------------------------------------
# Reference statistics
# ----------------------------------------------------------------------------------------------
def reference_statistics(extractor: Extractor, *, dataset: str, split: str, image_size: int, channels: int,
                         data_dir: str | None = None, num_real: int | None = None, feature_cap: int = 10000,
                         batch_size: int = 250, cache_dir=None) -> dict:
    """Statistics of a real split in `extractor`'s features, computed once and cached.

    Records are read through `jaxgan.data.pipeline.open_image_source` with the run's preprocessing, in a fixed
    permutation (``np.random.default_rng(0)``), so that the first ``feature_cap`` rows kept for KID/PR and a
    ``num_real`` subset are random samples of the split.

    Returns:
      {"stats": FeatureStats, "features": float32 [min(n_real, feature_cap), D], "n_real": int,
       "description": str, "score": [mean, std] (IS formula on the real logits), "classes_covered": int,
       "cache": path, "cached": bool}
    """
    from jaxgan.data.images import DatasetError
    from jaxgan.data.pipeline import open_image_source

    try:
        source = open_image_source(dataset, split=split, image_size=image_size, channels=channels,
                                   data_dir=data_dir or None)
    except DatasetError as e:
        raise EvaluationError(f"reference split {split!r} of dataset {dataset!r}: {e}") from None
    n_total = int(source.num_examples)
    n_real = n_total if not num_real else min(int(num_real), n_total)
    if n_real < 2:
        raise EvaluationError(f"the reference split {split!r} of {dataset!r} has {n_real} examples; need >= 2")
    key = {"version": REFERENCE_VERSION, "dataset": dataset, "split": split, "image_size": int(image_size),
           "channels": int(channels), "extractor": extractor.name, "extractor_sha256": extractor.digest,
           "n_real": n_real, "feature_cap": int(feature_cap),
           "data_dir": os.path.abspath(data_dir) if data_dir and dataset.startswith("folder:") else None}
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    directory = pathlib.Path(cache_dir or default_cache_dir()) / "reference"
    npz, side = directory / f"{name}.npz", directory / f"{name}.json"
    if npz.exists() and side.exists():
        try:
            meta = json.loads(side.read_text())
            with np.load(npz) as z:
                stats = FeatureStats.from_moments(z["count"], z["sum"], z["sum_outer"])
                rows = np.asarray(z["features"], np.float32)
            if meta.get("key") == key:
                return {"stats": stats, "features": rows, "n_real": n_real, "description": meta["description"],
                        "score": meta["score"], "classes_covered": meta["classes_covered"], "cache": str(npz),
                        "cached": True}
        except (OSError, ValueError, KeyError, json.JSONDecodeError):
            pass  # recompute and overwrite
    order = np.random.default_rng(0).permutation(n_total)[:n_real]
    acc = FeatureAccumulator(extractor.feature_dim, extractor.num_classes, n_real, cap=feature_cap,
                             num_splits=IS_SPLITS)
    t0 = time.perf_counter()
    for start in range(0, n_real, batch_size):
        x = np.stack([source.transform(source.records[int(i)])["x"] for i in order[start:start + batch_size]])
        acc.update(*extractor.apply(x))
    logging.info("reference statistics of %s/%s (%d images, %s features) took %.1f s; cached at %s",
                 dataset, split, n_real, extractor.name, time.perf_counter() - t0, npz)
    rows = acc.features()
    score = list(acc.score.score()) if acc.score is not None else None
    covered = acc.classes_covered()
    description = f"{source.description}, split {split!r}: {n_real} of {n_total} examples"
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{name}.{os.getpid()}.tmp.npz"
    np.savez(tmp, count=np.int64(acc.stats.count), sum=acc.stats.sum, sum_outer=acc.stats.sum_outer, features=rows)
    os.replace(tmp, npz)
    write_json_atomic(side, {"key": key, "description": description, "score": score, "classes_covered": covered})
    return {"stats": acc.stats, "features": rows, "n_real": n_real, "description": description, "score": score,
            "classes_covered": covered, "cache": str(npz), "cached": False}


# ----------------------------------------------------------------------------------------------
# evaluate
# ----------------------------------------------------------------------------------------------
def _warn(record_warnings: list, message: str) -> None:
    message = " ".join(str(message).split())
    if message not in record_warnings:
        record_warnings.append(message)
        logging.warning("%s", message)


def evaluate(experiment, state, *, metrics: str | Sequence[str] = METRICS, num_samples: int,
             reference: str = "train", feature_extractor: str | None = None, inception_weights=None,
             classifier_path=None, seed: int = 0, batch_size: int = 250, num_real: int | None = None,
             max_feature_samples: int = 10000, cache_dir=None, extractor: Extractor | None = None) -> dict:
    """Scores the generator of ``state`` against the real ``reference`` split of the experiment's dataset.

    Args:
      experiment: `jaxgan.experiment.Experiment` of the run (``load_run(workdir)[0]``).
      state: its `GANState`. Samples use the EMA weights when the run used EMA (`jaxgan.experiment.uses_ema`;
        else the raw weights) and BatchNorm in inference mode (the stored running statistics).
      metrics: subset of ``("fid", "kid", "is", "pr")``, a sequence or a comma-separated string.
      num_samples: generated samples for the Fréchet distance and the score (>= 2).
      reference: real split to compare with ("train" or "test"; any split name the dataset accepts).
      feature_extractor: "inception" or "classifier"; None: "classifier" for ``digits``, else "inception".
      inception_weights: converted FID Inception ``.npz`` (required for "inception").
      classifier_path: digits classifier ``.npz`` (trained and saved there if missing); default in the cache.
      seed: seed of the latents (sample i of batch b uses ``fold_in(key(seed), b)``).
      batch_size: generated samples per compiled generator call and extractor call.
      num_real: reference examples (None: the whole split).
      max_feature_samples: cap on the samples (each side) whose features KID and PR hold in memory.
      cache_dir: where the classifier and reference statistics are cached (default `default_cache_dir()`).
      extractor: a ready `Extractor` (overrides ``feature_extractor``; lets the training loop build it once).

    Returns:
      A JSON-ready dict {"metrics": {name: float|int}, "reference_metrics": {...}, "protocol": {...},
      "warnings": [str], "seconds": float}; see ``launch/evaluate.py`` for the full schema.

    Raises:
      EvaluationError: unknown metric, too few samples, 2D runs, missing/corrupt weights, unknown split.
    """
    t0 = time.perf_counter()
    config = experiment.config
    wanted = parse_metrics(metrics)
    _check_evaluate_arguments(config, wanted, num_samples=num_samples, batch_size=batch_size, num_real=num_real,
                              max_feature_samples=max_feature_samples)
    if extractor is None:
        extractor = build_extractor(config.dataset, feature_extractor, inception_weights=inception_weights,
                                    classifier_path=classifier_path, cache_dir=cache_dir)
    record_warnings: list[str] = []
    if extractor.name == "classifier" and config.dataset != "digits":
        _warn(record_warnings, f"the classifier extractor was trained on scikit-learn digits; on "
                               f"--dataset={config.dataset} its features measure digit-likeness only")

    ref = reference_statistics(extractor, dataset=config.dataset, split=reference, image_size=config.image_size,
                               channels=config.channels, data_dir=config.data_dir or None, num_real=num_real,
                               feature_cap=max_feature_samples, batch_size=batch_size, cache_dir=cache_dir)
    fake, step = _generated_features(experiment, state, extractor, num_samples=num_samples, batch_size=batch_size,
                                     seed=seed, feature_cap=max_feature_samples, needs=registry.needs(wanted))
    real = Summary(ref["n_real"], ref["stats"], ref["features"], None if ref["score"] is None else tuple(ref["score"]))
    context = Context(extractor.names, extractor.feature_dim, seed, lambda m: _warn(record_warnings, m))
    _warn_feature_cap(wanted, fake, real, context, max_feature_samples)
    out: dict[str, Any] = {"classes_covered": fake.classes_covered()} if extractor.name == "classifier" else {}
    values, protocol_metrics = registry.compute(wanted, fake.summary(), real, context)
    out.update(values)

    reference_metrics: dict[str, Any] = {}
    for name in wanted:
        reference_metrics.update(registry.METRICS[name].reference_result(real, context))
    if extractor.name == "classifier":
        reference_metrics["classes_covered"] = ref["classes_covered"]
    from jaxgan.experiment import uses_ema
    use_ema = uses_ema(config)
    protocol = {
        "checkpoint_step": step, "dataset": config.dataset, "image_size": config.image_size,
        "channels": config.channels, "model": config.model,
        "weights": "ema" if use_ema else "raw", "ema_decay": config.ema_decay if use_ema else None,
        **({"ema_kimg": config.ema_kimg} if config.ema_kimg else {}),
        "batch_norm": BN_MODE, "n_fake": num_samples, "n_real": ref["n_real"], "reference_split": reference,
        "reference": ref["description"], "reference_cache": ref["cache"],
        "feature_extractor": extractor.info, "resize": extractor.info["resize"],
        "metrics": protocol_metrics, "seed": seed, "batch_size": batch_size,
        "latents": f"N(0, I) of dim {experiment.generator.latent_dim}, batch b from fold_in(key({seed}), b)",
        "max_feature_samples": max_feature_samples,
    }
    return {"metrics": out, "reference_metrics": reference_metrics, "protocol": protocol,
            "warnings": record_warnings, "seconds": round(time.perf_counter() - t0, 3)}


def _check_evaluate_arguments(config, wanted: tuple[str, ...], *, num_samples, batch_size, num_real,
                              max_feature_samples) -> None:
    """Raises EvaluationError for a 2D run or a count `evaluate` cannot work with, naming the flag; each metric's
    ``min_samples`` bounds ``num_samples``, and the metrics that keep feature rows bound ``max_feature_samples``
    (the reference cache holds rows for all of them)."""
    if config.is_toy:
        raise EvaluationError(f"evaluation metrics are for image runs; --dataset={config.dataset} is a 2D dataset "
                              f"(its mode coverage is in final_metrics.json)")
    row_metrics = [n for n, m in registry.METRICS.items() if "rows" in m.needs]
    for name, value, low in (("num_samples", num_samples, 2), ("batch_size", batch_size, 1),
                             ("max_feature_samples", max_feature_samples, registry.min_samples(row_metrics))):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise EvaluationError(f"--{name} must be an integer >= {low}, got {value!r}")
    if num_real is not None and (not isinstance(num_real, (int, np.integer)) or num_real < 0):
        raise EvaluationError(f"--num_real must be an integer >= 0 (0: the whole split), got {num_real!r}")
    for name in wanted:
        check_samples(registry.METRICS[name], num_samples)


def _generated_features(experiment, state, extractor: Extractor, *, num_samples: int, batch_size: int, seed: int,
                        feature_cap: int, needs) -> tuple[FeatureAccumulator, int]:
    """(what the metrics ``needs`` of ``num_samples`` generated samples, the state's step). Streamed: one compiled
    generator call per batch of fixed shape, batch b from ``fold_in(key(seed), b)``, the last batch cut to
    ``num_samples``."""
    from jaxgan.experiment import sample_params
    from jaxgan.step import sample

    params = sample_params(state, experiment.config)
    model_state = state.g.model_state
    step = int(jax.device_get(state.step))
    gen = jax.jit(lambda p, ms, k: sample(experiment.generator, p, ms, k, batch_size,
                                          num_classes=experiment.num_classes))
    key = jax.random.key(seed)
    fake = FeatureAccumulator(extractor.feature_dim, extractor.num_classes, num_samples, needs=needs,
                              cap=feature_cap, num_splits=IS_SPLITS)
    for b in range(math.ceil(num_samples / batch_size)):
        x = np.asarray(gen(params, model_state, jax.random.fold_in(key, b)), np.float32)
        x = x[: num_samples - b * batch_size]
        if not np.all(np.isfinite(x)):
            raise EvaluationError(f"the generator of step {step} produced non-finite samples; nothing to score")
        fake.update(*extractor.apply(x))
    return fake, step


def _warn_feature_cap(wanted, fake: FeatureAccumulator, real: Summary, context: Context, cap: int) -> None:
    """Warns when the metrics that hold feature rows (KID, PR) see fewer samples than the Fréchet distance."""
    labels = [registry.METRICS[n].label for n in wanted if "rows" in registry.METRICS[n].needs]
    if not labels:
        return
    n_fake, n_real = fake.features().shape[0], real.rows.shape[0]
    if fake.total > n_fake or real.count > n_real:
        context.warn(f"{' and '.join(labels)} use {n_fake} of {fake.total} generated and {n_real} of {real.count} "
                     f"reference samples (--max_feature_samples={cap}: they hold the features in memory)")
