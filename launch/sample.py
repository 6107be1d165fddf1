"""Write generator samples of a run: ``python launch/sample.py --workdir=W --num=N --seed=S --out=F.npy``.

Samples come from the newest checkpoint (or ``--step``), with EMA weights when the run used EMA and
BatchNorm in inference mode. ``--format=npy`` writes float32 data-space samples [N, ...]; ``png`` writes a
grid (``--grid``) or one file per image into the directory ``--out`` (images only).
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
flags.DEFINE_integer("num", 64, "number of samples")
flags.DEFINE_integer("seed", 0, "seed of the latents")
flags.DEFINE_string("out", None, "output file (.npy or .png) or directory (png, --nogrid)", required=True)
flags.DEFINE_enum("format", "npy", ["npy", "png"], "npy: float32 samples; png: pictures (image models)")
flags.DEFINE_bool("grid", True, "png: one grid picture (else one file per sample)")
flags.DEFINE_float("truncation", None, "truncation trick: latents resampled until |z| <= truncation")
flags.DEFINE_integer("label", None, "class of every sample (conditional models; default: random classes)")
flags.DEFINE_integer("step", None, "checkpoint step (default: the newest)")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    _common.quiet_library_logs()

    def run():
        import jax
        import jax.numpy as jnp
        import numpy as np

        from jaxgan import logging as log_lib
        from jaxgan.step import sample
        from jaxgan.training import load_run, sample_params

        if FLAGS.num < 1:
            raise ConfigError(f"--num must be >= 1, got {FLAGS.num}")
        if FLAGS.truncation is not None and FLAGS.truncation <= 0:
            raise ConfigError(f"--truncation must be > 0, got {FLAGS.truncation}")
        exp, state = load_run(FLAGS.workdir, FLAGS.step)
        labels = None
        if FLAGS.label is not None:
            if not exp.num_classes:
                raise ConfigError("--label needs a class-conditional run (trained with --conditional)")
            if not 0 <= FLAGS.label < exp.num_classes:
                raise ConfigError(f"--label={FLAGS.label} is not in [0, {exp.num_classes})")
            labels = jnp.full((FLAGS.num,), FLAGS.label, jnp.int32)
        x = np.asarray(sample(exp.generator, sample_params(state, exp.config), state.g.model_state,
                              jax.random.key(FLAGS.seed), FLAGS.num, labels=labels, num_classes=exp.num_classes,
                              truncation=FLAGS.truncation), np.float32)
        out = pathlib.Path(FLAGS.out)
        if FLAGS.format == "npy":
            out.parent.mkdir(parents=True, exist_ok=True)
            np.save(out, x)
        elif exp.config.is_toy:
            raise ConfigError("--format=png is for image models; 2D samples are written with --format=npy")
        elif FLAGS.grid:
            log_lib.save_image_grid(out, x)
        else:
            out.mkdir(parents=True, exist_ok=True)
            for i, image in enumerate(x):
                log_lib.save_png(out / f"sample_{i:05d}.png", log_lib.image_grid(image[None], ncols=1, padding=0))
        print(f"wrote {FLAGS.num} samples {tuple(x.shape[1:])} to {out}")

    return _common.run_with_clean_errors(run, (ConfigError,))


if __name__ == "__main__":
    app.run(main)
