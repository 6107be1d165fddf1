"""Run a study: many seeds x hyperparameters x objectives, vmapped in chunks, in one process.

    python launch/sweep.py --flagfile=launch/configs/studies/loss_zoo_ring8.cfg --workdir=W --seeds=32 \\
        [--sweep=g_lr:1e-4,2e-4 --sweep=penalty_weight:1,10] [--losses=non_saturating,wasserstein+gradient_penalty]

Every field of `jaxgan.experiment.Config` is a flag (the base config of every run). ``--sweep=NAME:V1,V2``
crosses values of a hyperparameter with the seeds: run-time hyperparameters (g_lr, d_lr, penalty_weight,
label_smoothing, instance_noise, ema_decay) share one program; program fields (loss, penalty, clip_weights,
b1, b2, optimizer, ...) become separate groups. ``--losses`` entries ``LOSS[+PENALTY][+FIELD=VALUE]...`` are
groups too. Writes ``W/results.json``, ``W/samples.npy``, ``W/report.md``, ``W/curves.png``, ``W/samples/``.

Several devices: ``--mesh_seed=K`` (a Config field; 1, the default, = one device) splits the runs of every
vmapped chunk over K devices along the ``seed`` mesh axis (``jaxgan.parallel``), ``--chunk / K`` runs per
device, equal to the one-device sweep to float32 rounding. ``--chunk`` must then be a multiple of K (the
default chunk is rounded up to one); batches are not split (``--mesh_data`` must be 0 or 1). On CPU,
simulate devices with ``XLA_FLAGS=--xla_force_host_platform_device_count=K`` (they share the cores: no
speed-up).
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402

from jaxgan.experiment import Config, ConfigError  # noqa: E402
from launch import _common  # noqa: E402

_common.define_config_flags(Config)
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
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    _common.quiet_library_logs()
    from jaxgan.data.images import DatasetError
    from jaxgan import sweep

    def run():
        import dataclasses
        import jax
        config = _common.config_from_flags(Config)
        if FLAGS.seeds < 1:
            raise sweep.SweepError(f"--seeds must be >= 1, got {FLAGS.seeds}")
        if FLAGS.chunk < 0:
            raise sweep.SweepError(f"--chunk must be >= 0, got {FLAGS.chunk}")
        parsed = [sweep.parse_sweep_flag(s) for s in FLAGS.sweep]
        groups = sweep.plan(config, seeds=FLAGS.seeds, sweep=parsed, groups=FLAGS.losses, search=FLAGS.search,
                            trials=FLAGS.trials, search_seed=FLAGS.search_seed)
        sweep.check_chunk(FLAGS.chunk, config.mesh_seed)
        mesh = sweep.sweep_mesh(config)  # None for --mesh_seed=1
        _common.enable_compile_cache(FLAGS.jax_cache_dir)
        classifier_params = None
        if config.dataset == "digits":
            classifier_params = sweep.digits_classifier(config.image_size, config.channels,
                                                        os.path.expanduser("~/.cache/jaxgan"))
        total = sum(len(g.runs) for g in groups)
        logging.info("%d groups, %d runs, %d steps each", len(groups), total, config.steps)
        per_call = config.steps_per_call if config.steps_per_call > 1 else 0  # 0: up to the next evaluation
        results = sweep.run_study(groups, chunk=FLAGS.chunk or None, steps_per_call=per_call,
                                  eval_samples=FLAGS.eval_samples, w1_samples=FLAGS.w1_samples if config.is_toy else 0,
                                  classifier_params=classifier_params, mesh=mesh,
                                  log=lambda s: logging.info("%s", s))
        study = {"command": " ".join(["launch/sweep.py"] + sys.argv[1:]), "base": dataclasses.asdict(config),
                 "seeds": FLAGS.seeds, "steps": config.steps, "sweep": FLAGS.sweep, "losses": FLAGS.losses,
                 "search": FLAGS.search, "platform": jax.default_backend()}
        records = sweep.write_outputs(FLAGS.workdir, results, study)
        logging.info("%d runs, %d diverged; report: %s", len(records), sum(r["diverged"] for r in records),
                     os.path.join(FLAGS.workdir, "report.md"))
        print(open(os.path.join(FLAGS.workdir, "report.md")).read())

    return _common.run_with_clean_errors(run, (ConfigError, DatasetError))


if __name__ == "__main__":
    app.run(main)
