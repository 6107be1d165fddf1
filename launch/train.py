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
# multi-host (jaxgan.parallel.initialize_distributed); launch/local_cluster.sh N ... sets them for local processes
flags.DEFINE_string("coordinator_address", "", "HOST:PORT of process 0's coordinator; with --num_processes and "
                    "--process_id starts a multi-process run through jax.distributed")
flags.DEFINE_integer("num_processes", 1, "processes in a multi-process run")
flags.DEFINE_integer("process_id", 0, "this process's index in [0, --num_processes)")
flags.DEFINE_enum("distributed", "off", ["off", "auto"], "auto: a bare jax.distributed.initialize() that detects "
                  "a TPU pod slice, SLURM or Open MPI job from the environment")
flags.DEFINE_integer("distributed_timeout", 300, "seconds to wait for the coordinator and the other processes")
FLAGS = flags.FLAGS

EXIT_DIVERGED = 3  # a NaN/Inf stopped the run (--on_nan=stop, or skip/rollback gave up)
EXIT_INTERRUPTED_TWICE = 130  # a second SIGINT/SIGTERM stopped it at once (the newest checkpoint is intact)
# 0: finished, or stopped by SIGTERM/SIGINT after writing a checkpoint (the resume command is printed)
# 2: a bad flag, workdir or dataset (one "error:" line on stderr; nothing written to --workdir)


def main(argv):
    if len(argv) > 1:
        print(f"error: unexpected arguments {argv[1:]}; flags are written --name=value", file=sys.stderr)
        return 2
    _common.quiet_library_logs()
    from jaxgan.data.images import DatasetError
    from jaxgan.reliability import TrainingInterrupted, resume_command
    from jaxgan.training import DivergenceError, train

    def run():
        config = _common.config_from_flags(Config)
        _common.enable_compile_cache(FLAGS.jax_cache_dir)
        if FLAGS.distributed == "auto" or FLAGS.coordinator_address or FLAGS.num_processes > 1:
            from jaxgan import parallel  # before any other JAX use
            parallel.initialize_distributed(FLAGS.coordinator_address or None, FLAGS.num_processes, FLAGS.process_id,
                                            auto=FLAGS.distributed == "auto", timeout_s=FLAGS.distributed_timeout)
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
