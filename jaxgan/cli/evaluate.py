"""Score a run: ``jaxgan-evaluate --workdir=W --metrics=fid,kid,is,pr --num_samples=N --reference=train``
(``python -m jaxgan.cli.evaluate``, or ``python launch/evaluate.py`` in a checkout).

Scores the newest checkpoint (or ``--step``) with EMA weights when the run used EMA and BatchNorm in inference
mode, and writes ``W/eval_step_STEP.json`` (one record per checkpoint step) and ``W/eval.json`` (the record of
the newest step evaluated so far; an older ``--step`` leaves it alone), or only ``--out``, atomically. Digits
runs default to the offline digits classifier (FCD, classifier score, classes covered; trained once and cached);
other datasets use pytorch-fid's Inception, which needs ``--inception_weights=FILE.npz`` converted once from
the published .pth (``python -m jaxgan.metrics.features convert IN.pth OUT.npz``).

eval.json: {"metrics": {name: value}, "reference_metrics": {...}, "protocol": {checkpoint_step, dataset,
image_size, channels, model, weights ("ema"|"raw"), ema_decay, batch_norm, n_fake, n_real, reference_split,
reference, reference_cache, feature_extractor {name, network, weights_sha256, weights_path, input, resize, ...},
resize, metrics {per-metric n_fake/n_real and settings}, seed, batch_size, latents, max_feature_samples},
"warnings": [...], "seconds": float, "workdir": str}.
Exit codes: 0 written; 2 bad input (one "error:" line on stderr); 130 interrupted (SIGINT/SIGTERM: one line on
stderr).
"""
from __future__ import annotations

import json
import os
import pathlib
import sys

from absl import flags  # noqa: E402

from jaxgan import interrupts  # noqa: E402  (imports no JAX)

STOP = interrupts.install()  # before JAX loads: Ctrl-C stops cleanly (jaxgan.interrupts)

from jaxgan.experiment import ConfigError  # noqa: E402
from jaxgan.cli import common as _common  # noqa: E402
from jaxgan.metrics.registry import METRICS  # noqa: E402

flags.DEFINE_string("workdir", None, "workdir of a training run", required=True)
flags.DEFINE_string("metrics", ",".join(METRICS), "comma-separated subset of " + ", ".join(
    f"{name} ({metric.description})" for name, metric in METRICS.items()))
flags.DEFINE_integer("num_samples", 10000, "generated samples (Fréchet distance and score)")
flags.DEFINE_string("reference", "train", "real split to compare with: train or test (digits: train only)")
flags.DEFINE_integer("step", None, "checkpoint step (default: the newest)")
flags.DEFINE_string("feature_extractor", "", "inception or classifier ('': classifier for digits, else inception)")
flags.DEFINE_string("inception_weights", None, "converted FID Inception .npz (python -m jaxgan.metrics.features "
                                               "convert IN.pth OUT.npz)")
flags.DEFINE_string("classifier_path", None, "digits classifier .npz (trained and saved there if missing; "
                                             "default: in --cache_dir)")
flags.DEFINE_string("cache_dir", "", "cache of the classifier and reference statistics ('': $JAXGAN_CACHE_DIR "
                                     "or ~/.cache/jaxgan)")
flags.DEFINE_integer("seed", 0, "seed of the latents")
flags.DEFINE_integer("batch_size", 250, "samples per generator/extractor call")
flags.DEFINE_integer("num_real", 0, "reference examples (0: the whole split)")
flags.DEFINE_integer("max_feature_samples", 10000, "samples per side whose features KID and PR keep in memory")
flags.DEFINE_string("out", "", "output file (default: WORKDIR/eval_step_STEP.json, and WORKDIR/eval.json for "
                              "the newest step)")
flags.DEFINE_string("jax_cache_dir", "~/.cache/jaxgan/jax", "persistent compilation cache ('' to disable)")
FLAGS = flags.FLAGS

MAX_SAMPLES = 10**7
MAX_BATCH = 1000  # samples per generator/extractor call (the Inception network at 299 px: ~3 GB of activations)
MAX_FEATURE_SAMPLES = 10**5  # kept feature rows per side (KID's and PR's pairwise matrices grow as rows^2)


def check_flags() -> None:
    """The flags that need no workdir: ranges, names and writable outputs (`ConfigError`)."""
    _common.check_int("num_samples", FLAGS.num_samples, 2, MAX_SAMPLES)
    _common.check_int("batch_size", FLAGS.batch_size, 1, MAX_BATCH)
    _common.check_int("num_real", FLAGS.num_real, 0, MAX_SAMPLES, " (0: the whole split)")
    _common.check_int("max_feature_samples", FLAGS.max_feature_samples, 6, MAX_FEATURE_SAMPLES)
    _common.check_int("seed", FLAGS.seed, 0, 2**32 - 1)
    if FLAGS.step is not None:
        _common.check_int("step", FLAGS.step, 0, 2**31 - 1)
    if FLAGS.reference not in ("train", "test"):
        raise ConfigError(f"--reference={FLAGS.reference!r} is not one of train, test")
    if FLAGS.feature_extractor not in ("", "inception", "classifier"):
        raise ConfigError(f"--feature_extractor={FLAGS.feature_extractor!r} is not one of inception, classifier "
                          f"('': classifier for digits, else inception)")
    if FLAGS.out:
        _common.check_writable("out", FLAGS.out)
    if FLAGS.cache_dir:
        _common.check_writable("cache_dir", FLAGS.cache_dir, directory=True)
    if FLAGS.classifier_path and not os.path.isfile(FLAGS.classifier_path):  # trained and saved there
        _common.check_writable("classifier_path", FLAGS.classifier_path)


def check_extractor_flags(dataset: str) -> None:
    """--inception_weights and --classifier_path apply to one extractor each; the other would ignore them."""
    kind = FLAGS.feature_extractor or ("classifier" if dataset == "digits" else "inception")
    if kind == "classifier" and FLAGS.inception_weights:
        raise ConfigError(f"--inception_weights has no effect: --dataset={dataset} is scored with the classifier "
                          f"extractor; pass --feature_extractor=inception to use the Inception network")
    if kind == "inception" and FLAGS.classifier_path:
        raise ConfigError(f"--classifier_path has no effect: --dataset={dataset} is scored with the Inception "
                          f"extractor; pass --feature_extractor=classifier to use the digits classifier")


def write_records(workdir: pathlib.Path, record: dict, out: str = "") -> list[pathlib.Path]:
    """``out``, or WORKDIR/eval_step_STEP.json plus WORKDIR/eval.json when STEP is the newest evaluated."""
    from jaxgan import evaluation
    if out:
        evaluation.write_json_atomic(out, record)
        return [pathlib.Path(out)]
    step = record["protocol"]["checkpoint_step"]
    paths = [workdir / f"eval_step_{step}.json"]
    evaluation.write_json_atomic(paths[0], record)
    latest = workdir / "eval.json"
    try:
        newest = json.loads(latest.read_text())["protocol"]["checkpoint_step"]
    except (OSError, ValueError, KeyError, TypeError):
        newest = -1  # none yet, or unreadable: replaced
    if step >= newest:
        evaluation.write_json_atomic(latest, record)
        paths.append(latest)
    return paths


def main(argv):
    if not _common.begin(argv):
        return 2

    def run():
        from jaxgan import evaluation
        from jaxgan.data.images import DatasetError
        from jaxgan.training import load_run

        _common.enable_compile_cache(FLAGS.jax_cache_dir)
        metrics = evaluation.parse_metrics(FLAGS.metrics)  # bad names fail before anything is loaded
        check_flags()
        if FLAGS.inception_weights and not os.path.isfile(FLAGS.inception_weights):
            from jaxgan.metrics.features import missing_weights_message
            raise ConfigError(missing_weights_message(FLAGS.inception_weights))
        workdir = pathlib.Path(FLAGS.workdir)
        if not workdir.is_dir():
            raise ConfigError(f"--workdir={workdir} is not a directory")
        if not FLAGS.out:
            _common.check_writable("workdir", workdir, directory=True)
        try:
            exp, state = load_run(workdir, FLAGS.step)
            check_extractor_flags(exp.config.dataset)
            record = evaluation.evaluate(
                exp, state, metrics=metrics, num_samples=FLAGS.num_samples, reference=FLAGS.reference,
                feature_extractor=FLAGS.feature_extractor or None, inception_weights=FLAGS.inception_weights,
                classifier_path=FLAGS.classifier_path, seed=FLAGS.seed, batch_size=FLAGS.batch_size,
                num_real=FLAGS.num_real or None, max_feature_samples=FLAGS.max_feature_samples,
                cache_dir=FLAGS.cache_dir or None)
        except DatasetError as e:
            raise ConfigError(str(e)) from None
        record["workdir"] = str(workdir.resolve())
        paths = write_records(workdir, record, FLAGS.out)
        for message in record["warnings"]:
            print(f"warning: {message}", file=sys.stderr)
        numbers = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                            for k, v in record["metrics"].items())
        p = record["protocol"]
        print(f"step {p['checkpoint_step']} ({p['weights']} weights, {p['feature_extractor']['name']} features, "
              f"{p['n_fake']} generated vs {p['n_real']} {p['reference_split']}): {numbers}")
        print(f"wrote {', '.join(map(str, paths))}")

    return interrupts.run_or_stop_at_once(lambda: _common.run_with_clean_errors(run, (ConfigError,)), STOP,
                                          "interrupted; stopped at once (the evaluation is written at the end)")


def entry_point() -> None:
    """The ``jaxgan-evaluate`` console script, ``python -m jaxgan.cli.evaluate`` and ``launch/evaluate.py``."""
    _common.run_app(main, __doc__)


if __name__ == "__main__":
    entry_point()
