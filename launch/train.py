"""Train a GAN: ``python launch/train.py --flagfile=launch/configs/quickstart.cfg --workdir=W``.

Every field of `jaxgan.experiment.Config` is a flag (``--helpfull`` lists them). Running the same command
again resumes from the newest checkpoint in ``--workdir``.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402

from jaxgan.experiment import Config, ConfigError  # noqa: E402
from launch import _common  # noqa: E402

_common.define_config_flags(Config)
flags.DEFINE_string("workdir", None, "directory for checkpoints, logs and samples", required=True)
flags.DEFINE_bool("overwrite", False, "start afresh in a workdir made by another configuration")
flags.DEFINE_string("jax_cache_dir", "~/.cache/jaxgan/jax", "persistent compilation cache ('' to disable)")
FLAGS = flags.FLAGS

EXIT_DIVERGED = 3


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.INFO)
    from jaxgan.data.images import DatasetError
    from jaxgan.training import DivergenceError, train

    def run():
        config = _common.config_from_flags(Config)
        _common.enable_compile_cache(FLAGS.jax_cache_dir)
        train(config, FLAGS.workdir, overwrite=FLAGS.overwrite)

    return _common.run_with_clean_errors(run, (ConfigError, DatasetError, DivergenceError),
                                         {DivergenceError: EXIT_DIVERGED})


if __name__ == "__main__":
    app.run(main)
