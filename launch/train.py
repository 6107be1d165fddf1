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

EXIT_DIVERGED = 3  # a NaN/Inf stopped the run (--on_nan=stop, or skip/rollback gave up)
EXIT_INTERRUPTED_TWICE = 130  # a second SIGINT/SIGTERM stopped it at once (the newest checkpoint is intact)
# 0: finished, or stopped by SIGTERM/SIGINT after writing a checkpoint (the resume command is printed)
# 2: a bad flag, workdir or dataset (one "error:" line on stderr; nothing written to --workdir)


def main(argv):
    if len(argv) > 1:
        print(f"error: unexpected arguments {argv[1:]}; flags are written --name=value", file=sys.stderr)
        return 2
    logging.set_verbosity(logging.INFO)
    from jaxgan.data.images import DatasetError
    from jaxgan.reliability import TrainingInterrupted, resume_command
    from jaxgan.training import DivergenceError, train

    def run():
        config = _common.config_from_flags(Config)
        _common.enable_compile_cache(FLAGS.jax_cache_dir)
        try:
            train(config, FLAGS.workdir, overwrite=FLAGS.overwrite)
        except TrainingInterrupted as e:
            print(f"{e.reason}: stopped after step {e.step} with a checkpoint in {e.checkpoint_dir}; resume with: "
                  f"{resume_command()}", flush=True)
            return 0
        except KeyboardInterrupt:
            print("error: interrupted twice; stopped at once (the newest complete checkpoint resumes the run)",
                  file=sys.stderr)
            return EXIT_INTERRUPTED_TWICE

    return _common.run_with_clean_errors(run, (ConfigError, DatasetError, DivergenceError),
                                         {DivergenceError: EXIT_DIVERGED})


if __name__ == "__main__":
    app.run(main, flags_parser=_common.parse_flags_one_line)
