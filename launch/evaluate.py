"""Score a run: ``python launch/evaluate.py --workdir=W --metrics=fid,kid,is,pr --num_samples=N --reference=train``.

Scores the newest checkpoint (or ``--step``) with EMA weights when the run used EMA and BatchNorm in inference
mode, and writes ``W/eval.json`` (or ``--out``) atomically. Digits runs default to the offline digits classifier
(FCD, classifier score, classes covered; trained once and cached); other datasets use pytorch-fid's Inception,
which needs ``--inception_weights=FILE.npz`` converted once from the published .pth
(``python -m jaxgan.metrics.features convert IN.pth OUT.npz``).

eval.json: {"metrics": {name: value}, "reference_metrics": {...}, "protocol": {checkpoint_step, dataset,
image_size, channels, model, weights ("ema"|"raw"), ema_decay, batch_norm, n_fake, n_real, reference_split,
reference, reference_cache, feature_extractor {name, network, weights_sha256, weights_path, input, resize, ...},
resize, metrics {per-metric n_fake/n_real and settings}, seed, batch_size, latents, max_feature_samples},
"warnings": [...], "seconds": float, "workdir": str}.
Exit codes: 0 written; 2 bad input (one "error:" line on stderr).
"""
from __future__ import annotations

import os
import pathlib
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from jaxgan.experiment import ConfigError  # noqa: E402
from launch import _common  # noqa: E402

flags.DEFINE_string("workdir", None, "workdir of a training run", required=True)
flags.DEFINE_string("metrics", "fid,kid,is,pr", "comma-separated subset of fid, kid, is, pr")
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
flags.DEFINE_string("out", "", "output file (default: WORKDIR/eval.json)")
flags.DEFINE_string("jax_cache_dir", "~/.cache/jaxgan/jax", "persistent compilation cache ('' to disable)")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        print(f"error: unexpected arguments {argv[1:]}; flags are written --name=value", file=sys.stderr)
        return 2
    _common.quiet_library_logs()

    def run():
        from jaxgan import evaluation
        from jaxgan.data.images import DatasetError
        from jaxgan.training import load_run

        _common.enable_compile_cache(FLAGS.jax_cache_dir)
        metrics = evaluation.parse_metrics(FLAGS.metrics)  # bad names fail before anything is loaded
        if FLAGS.inception_weights and not os.path.isfile(FLAGS.inception_weights):
            from jaxgan.metrics.features import _missing_weights_message
            raise ConfigError(_missing_weights_message(FLAGS.inception_weights))
        workdir = pathlib.Path(FLAGS.workdir)
        if not workdir.is_dir():
            raise ConfigError(f"--workdir={workdir} is not a directory")
        try:
            exp, state = load_run(workdir, FLAGS.step)
            record = evaluation.evaluate(
                exp, state, metrics=metrics, num_samples=FLAGS.num_samples, reference=FLAGS.reference,
                feature_extractor=FLAGS.feature_extractor or None, inception_weights=FLAGS.inception_weights,
                classifier_path=FLAGS.classifier_path, seed=FLAGS.seed, batch_size=FLAGS.batch_size,
                num_real=FLAGS.num_real or None, max_feature_samples=FLAGS.max_feature_samples,
                cache_dir=FLAGS.cache_dir or None)
        except DatasetError as e:
            raise ConfigError(str(e)) from None
        record["workdir"] = str(workdir.resolve())
        out = pathlib.Path(FLAGS.out) if FLAGS.out else workdir / "eval.json"
        evaluation.write_json_atomic(out, record)
        for message in record["warnings"]:
            print(f"warning: {message}", file=sys.stderr)
        numbers = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                            for k, v in record["metrics"].items())
        p = record["protocol"]
        print(f"step {p['checkpoint_step']} ({p['weights']} weights, {p['feature_extractor']['name']} features, "
              f"{p['n_fake']} generated vs {p['n_real']} {p['reference_split']}): {numbers}")
        print(f"wrote {out}")

    return _common.run_with_clean_errors(run, (ConfigError,))


if __name__ == "__main__":
    app.run(main, flags_parser=_common.parse_flags_one_line)
