"""Train a GAN: ``jaxgan-train --flagfile=quickstart.cfg --workdir=W`` (``python -m jaxgan.cli.train``,
or ``python launch/train.py`` in a checkout). ``--flagfile`` takes a shipped config by name (jaxgan/configs).

Every field of `jaxgan.experiment.Config` is a flag (``--help`` lists them with the launcher's own). Running
the same command again resumes from the newest checkpoint in ``--workdir``.
"""
from __future__ import annotations

import sys

from absl import flags  # noqa: E402

from jaxgan import interrupts  # noqa: E402  (imports no JAX)

STOP = interrupts.install()  # before JAX loads: a Ctrl-C from here on is a stop request (jaxgan.interrupts)

from jaxgan.experiment import Config, ConfigError  # noqa: E402
from jaxgan.cli import common as _common  # noqa: E402

_common.define_config_flags(Config)
flags.adopt_module_key_flags(_common)  # --help lists every Config flag
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
EXIT_INTERRUPTED_EARLY = interrupts.EXIT_INTERRUPTED  # 130: SIGINT/SIGTERM during start-up or before the
# first checkpoint (one line on stderr; nothing to resume)
# 0: finished, or stopped by SIGTERM/SIGINT after writing a checkpoint (the resume command is printed; also
#    for a signal during start-up when the workdir already has a checkpoint: it resumes the run)
# 2: a bad flag, workdir or dataset, or a workdir in use by another run (one "error:" line on stderr;
#    nothing written to --workdir)
# 74 (_common.EXIT_IO_ERROR): the disk filled up or the workdir became unwritable mid-run (one "error:" line)


def check_launcher_flags(config) -> None:
    """The launcher's own flags and explicitly given Config flags that would be ignored (`ConfigError`)."""
    from jaxgan.experiment import validate
    validate(config)  # bad values first (train repeats it with the device count)
    _common.check_explicit_flags(config, _common.given_flags())
    if FLAGS["num_samples"].present and not config.is_toy:  # sweeps score image runs with it; train does not
        raise ConfigError(f"--num_samples has no effect: it sizes the final 2D plot and mode metrics, not "
                          f"--dataset={config.dataset} runs (--eval_num_samples sizes their evaluations)")
    _common.check_int("num_processes", FLAGS.num_processes, 1, 2**16)
    _common.check_int("process_id", FLAGS.process_id, 0, FLAGS.num_processes - 1, " (< --num_processes)")
    _common.check_int("distributed_timeout", FLAGS.distributed_timeout, 1, 7 * 86400, " seconds")
    multi = FLAGS.distributed == "auto" or FLAGS.coordinator_address or FLAGS.num_processes > 1
    if FLAGS["distributed_timeout"].present and not multi:
        raise ConfigError("--distributed_timeout has no effect on a single-process run; it applies with "
                          "--coordinator_address/--num_processes or --distributed=auto")
    _common.check_writable("workdir", FLAGS.workdir, directory=True)


def main(argv):
    if not _common.begin(argv):
        return 2
    from jaxgan.data.images import DatasetError
    from jaxgan.reliability import TrainingInterrupted, resume_command
    from jaxgan.training import DivergenceError, train

    def run():
        config = _common.config_from_flags(Config)
        check_launcher_flags(config)
        _common.enable_compile_cache(FLAGS.jax_cache_dir)
        if FLAGS.distributed == "auto" or FLAGS.coordinator_address or FLAGS.num_processes > 1:
            from jaxgan import parallel  # before any other JAX use
            parallel.initialize_distributed(FLAGS.coordinator_address or None, FLAGS.num_processes, FLAGS.process_id,
                                            auto=FLAGS.distributed == "auto", timeout_s=FLAGS.distributed_timeout)
        if STOP.reason is not None:  # a signal during imports or flag parsing (later ones are read by train)
            print(f"{STOP.reason}: interrupted during start-up; nothing was written", file=sys.stderr, flush=True)
            return EXIT_INTERRUPTED_EARLY
        try:
            train(config, FLAGS.workdir, overwrite=FLAGS.overwrite)
        except TrainingInterrupted as e:
            if not e.step:
                print(e, file=sys.stderr, flush=True)  # "SIGINT: interrupted before the first checkpoint; ..."
                return EXIT_INTERRUPTED_EARLY
            print(f"{e.reason}: stopped after step {e.step} with a checkpoint in {e.checkpoint_dir}; resume with: "
                  f"{resume_command()}", flush=True)
            return 0

    try:
        return _common.run_with_clean_errors(run, (ConfigError, DatasetError, DivergenceError),
                                             {DivergenceError: EXIT_DIVERGED})
    except KeyboardInterrupt:  # a second signal, wherever it came
        print("error: interrupted twice; stopped at once (the newest complete checkpoint resumes the run)",
              file=sys.stderr)
        interrupts.exit_now(EXIT_INTERRUPTED_TWICE)


def entry_point() -> None:
    """The ``jaxgan-train`` console script, ``python -m jaxgan.cli.train`` and ``launch/train.py``."""
    _common.run_app(main, __doc__)


if __name__ == "__main__":
    entry_point()
