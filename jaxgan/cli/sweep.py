"""Run a study: many seeds x hyperparameters x objectives, vmapped in chunks, in one process (``jaxgan-sweep``,
``python -m jaxgan.cli.sweep``, or ``python launch/sweep.py`` in a checkout).

    jaxgan-sweep --flagfile=studies/loss_zoo_ring8.cfg --workdir=W --seeds=32 \\
        [--sweep=g_lr:1e-4,2e-4 --sweep=penalty_weight:1,10] [--losses=non_saturating,wasserstein+gradient_penalty]

Every field of `jaxgan.experiment.Config` is a flag (the base config of every run). ``--sweep=NAME:V1,V2``
crosses values of a hyperparameter with the seeds: run-time hyperparameters (g_lr, d_lr, penalty_weight,
label_smoothing, instance_noise, ema_decay) share one program; program fields (loss, penalty, clip_weights,
b1, b2, optimizer, ...) become separate groups. ``--losses`` entries ``LOSS[+PENALTY][+FIELD=VALUE]...`` are
groups too. Writes ``W/results.json``, ``W/samples.npy``, ``W/report.md``, ``W/curves.png``, ``W/samples/``,
rewritten (atomically) as each group finishes.

Resuming: the study's state lives in ``W/study/`` (`jaxgan.sweep.StudyStore`): finished chunks of runs, and
checkpoints of the chunk in progress every ``--checkpoint_every`` steps. SIGTERM or Ctrl-C finishes the current
call, checkpoints and exits 0 printing the resume command; rerunning the same command resumes (finished groups
and chunks are read back, not trained again), and a killed study loses at most the steps since its last
checkpoint. A workdir holding another study (other base config, seeds, sweeps, groups, chunk or evaluation
flags) is refused unless ``--overwrite``.

Several devices: ``--mesh_seed=K`` (a Config field; 1, the default, = one device) splits the runs of every
vmapped chunk over K devices along the ``seed`` mesh axis (``jaxgan.parallel``), ``--chunk / K`` runs per
device, equal to the one-device sweep to float32 rounding. ``--chunk`` must then be a multiple of K (the
default chunk is rounded up to one); batches are not split (``--mesh_data`` must be 0 or 1). On CPU,
simulate devices with ``XLA_FLAGS=--xla_force_host_platform_device_count=K`` (they share the cores: no
speed-up).
"""
from __future__ import annotations

import json
import os
import sys

from absl import flags, logging  # noqa: E402

from jaxgan import interrupts  # noqa: E402  (imports no JAX)

STOP = interrupts.install()  # before JAX loads: Ctrl-C stops cleanly (jaxgan.interrupts)

from jaxgan.experiment import Config, ConfigError  # noqa: E402
from jaxgan.cli import common as _common  # noqa: E402

_common.define_config_flags(Config)
flags.adopt_module_key_flags(_common)  # --help lists every Config flag
flags.DEFINE_string("workdir", None, "directory for results.json, samples.npy, report.md and plots", required=True)
flags.DEFINE_integer("seeds", 8, "runs per configuration: seeds --seed .. --seed+N-1")
flags.DEFINE_multi_string("sweep", [], "NAME:V1,V2,... (repeatable); see the module docstring")
flags.DEFINE_list("losses", [], "groups LOSS[+PENALTY][+FIELD=VALUE]..., e.g. wasserstein+gradient_penalty")
flags.DEFINE_enum("search", "grid", ["grid", "random"], "grid: cross product; random: --trials log-uniform draws")
flags.DEFINE_integer("trials", 0, "configurations drawn by --search=random")
flags.DEFINE_integer("search_seed", 0, "seed of --search=random")
flags.DEFINE_integer("chunk", 0, "runs vmapped together (0: measured default per platform and model); a "
                                 "multiple of --mesh_seed, whose devices split each chunk")
flags.DEFINE_integer("eval_samples", 0, "samples per run at intermediate evaluations (0: --num_samples)")
flags.DEFINE_integer("w1_samples", 1000, "exact W1 to the mixture on this many final samples per run (0: off)")
flags.DEFINE_string("jax_cache_dir", "~/.cache/jaxgan/jax", "persistent compilation cache ('' to disable)")
flags.DEFINE_bool("overwrite", False, "start afresh in a workdir that holds another study (removes its state and "
                                      "outputs)")
FLAGS = flags.FLAGS


def check_launcher_flags() -> None:
    """The sweep's own flags (`ConfigError`); the Config fields are `jaxgan.experiment.validate`'s."""
    _common.check_int("seeds", FLAGS.seeds, 1, 10**5)
    _common.check_int("chunk", FLAGS.chunk, 0, 10**5, " (0: the measured default)")
    _common.check_int("trials", FLAGS.trials, 0, 10**5)
    _common.check_int("search_seed", FLAGS.search_seed, 0, 2**32 - 1)
    _common.check_int("eval_samples", FLAGS.eval_samples, 0, 10**7, " (0: --num_samples)")
    _common.check_int("w1_samples", FLAGS.w1_samples, 0, 5000, " (exact optimal transport, cubic in the samples; "
                                                               "0: off)")
    for name in ("trials", "search_seed"):
        if FLAGS[name].present and FLAGS.search != "random":
            raise ConfigError(f"--{name} has no effect: it applies to --search=random, not --search={FLAGS.search}")
    _common.check_writable("workdir", FLAGS.workdir, directory=True)


def check_flags_apply(base, groups) -> None:
    """Config flags that no group uses (`_common.check_sweep_flags_apply`), and --w1_samples on image data."""
    _common.check_sweep_flags_apply(base, groups, _common.given_flags())
    if FLAGS["w1_samples"].present and not base.is_toy:
        raise ConfigError(f"--w1_samples has no effect: it applies to the 2D datasets, not --dataset={base.dataset}")


def main(argv):
    if not _common.begin(argv):
        return 2
    from jaxgan.data.images import DatasetError
    from jaxgan import evaluation, sweep
    from jaxgan import workdir as workdir_lib
    from jaxgan.reliability import TrainingInterrupted, resume_command

    def run():
        import dataclasses
        import jax
        config = _common.config_from_flags(Config)
        workdir_lib.check_path(FLAGS.workdir)  # an empty --workdir is refused before anything runs
        check_launcher_flags()
        parsed = [sweep.parse_sweep_flag(s) for s in FLAGS.sweep]
        groups = sweep.plan(config, seeds=FLAGS.seeds, sweep=parsed, groups=FLAGS.losses, search=FLAGS.search,
                            trials=FLAGS.trials, search_seed=FLAGS.search_seed)
        check_flags_apply(config, groups)
        sweep.check_chunk(FLAGS.chunk, config.mesh_seed)
        mesh = sweep.sweep_mesh(config)  # None for --mesh_seed=1
        _common.enable_compile_cache(FLAGS.jax_cache_dir)
        per_call = config.steps_per_call if config.steps_per_call > 1 else 0  # 0: up to the next evaluation
        spec = sweep.study_spec(config, seeds=FLAGS.seeds, sweep=FLAGS.sweep, losses=FLAGS.losses, search=FLAGS.search,
                                trials=FLAGS.trials, search_seed=FLAGS.search_seed, chunk=FLAGS.chunk,
                                eval_samples=FLAGS.eval_samples, w1_samples=FLAGS.w1_samples,
                                platform=jax.default_backend())  # the default chunk and the numbers depend on it
        study = {"command": " ".join(["launch/sweep.py"] + sys.argv[1:]), "base": dataclasses.asdict(config),
                 "seeds": FLAGS.seeds, "steps": config.steps, "sweep": FLAGS.sweep, "losses": FLAGS.losses,
                 "search": FLAGS.search, "platform": jax.default_backend()}
        with workdir_lib.hold(FLAGS.workdir):  # one writer per workdir: a second sweep is refused before it runs
            store = sweep.open_study(FLAGS.workdir, spec, overwrite=FLAGS.overwrite)  # another study: refused
            # the digits classifier of launch/evaluate.py (jaxgan.evaluation: trained once, cached)
            classifier = evaluation.classifier_extractor() if config.dataset == "digits" else None
            logging.info("%d groups, %d runs, %d steps each", len(groups), sum(len(g.runs) for g in groups),
                         config.steps)
            write = lambda results: sweep.write_outputs(FLAGS.workdir, results, study,  # noqa: E731
                                                        complete=len(results) == len(groups))
            try:
                sweep.run_study(groups, store=store, on_group_done=write, chunk=FLAGS.chunk or None,
                                steps_per_call=per_call, eval_samples=FLAGS.eval_samples,
                                w1_samples=FLAGS.w1_samples if config.is_toy else 0,
                                classifier=classifier, mesh=mesh, log=lambda s: logging.info("%s", s))
            except TrainingInterrupted as e:
                where = f"after step {e.step} of a chunk" if e.step else "between chunks"
                print(f"{e.reason}: study stopped {where}; its state is in {store.root} and finished groups in "
                      f"{os.path.join(FLAGS.workdir, 'results.json')}; resume with: {resume_command()}", flush=True)
                return 0
        records = json.loads(open(os.path.join(FLAGS.workdir, "results.json")).read())["runs"]
        logging.info("%d runs, %d diverged; report: %s", len(records), sum(r["diverged"] for r in records),
                     os.path.join(FLAGS.workdir, "report.md"))
        print(open(os.path.join(FLAGS.workdir, "report.md")).read())

    return interrupts.run_or_stop_at_once(lambda: _common.run_with_clean_errors(run, (ConfigError, DatasetError)), STOP,
                                          "interrupted; stopped at once (rerun the command to resume from the last "
                                          "checkpoint)")


def entry_point() -> None:
    """The ``jaxgan-sweep`` console script, ``python -m jaxgan.cli.sweep`` and ``launch/sweep.py``."""
    _common.run_app(main, __doc__)


if __name__ == "__main__":
    entry_point()
