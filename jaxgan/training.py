"""The training loop behind ``launch/train.py``: data -> jitted step -> metrics, samples, checkpoints.

``train(config, workdir)`` resumes from the newest checkpoint in ``workdir`` when there is one, so running
the same command again continues a run (and a run of 2N steps equals N steps, stop, N more).

Files in ``workdir``: ``config.json`` (the resolved config; a different config is refused unless
``overwrite``), ``run_info.json`` (versions, devices, git revision), ``metrics.jsonl``, ``tb/`` (TensorBoard),
``checkpoints/``, ``samples/`` (grids or 2D scatter plots every ``sample_every`` steps), ``samples.png`` and
``losses.png`` at the end, and for 2D mixtures ``final_metrics.json`` (mode coverage of 2500 samples).
While a run is going, ``.lock`` names it: a second run on the same workdir is refused (`jaxgan.workdir`).
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jaxgan import config as config_lib
from jaxgan import experiment as experiment_lib
from jaxgan import logging as log_lib
from jaxgan import parallel
from jaxgan import reliability
from jaxgan import workdir as workdir_lib
from jaxgan.checkpoint import CheckpointError, Checkpointer
from jaxgan.data import toy
from jaxgan.experiment import Config, ConfigError, sample_params  # sample_params: re-exported
from jaxgan.models import MODELS
from jaxgan.step import inline_multi_steps, make_multi_step, sample

# Fields that may change between invocations on one workdir (extending a run, logging more often): their
# metadata (jaxgan.config.option, resume=True).
RESUMABLE_FIELDS = config_lib.resumable_fields()


DivergenceError = reliability.DivergenceError  # re-exported: the launcher and users catch it here


class ToyData:
    """Batches ``{"x": [n_critic, B, 2]}`` of a toy dataset; batch t is drawn from ``fold_in(key, t)``."""

    def __init__(self, sampler, seed: int, n_critic: int, batch_size: int):
        key = jax.random.fold_in(jax.random.key(seed), 0x5EED)
        draw = lambda t: toy.draw_batch(sampler, key, t, n_critic * batch_size).reshape(n_critic, batch_size, -1)
        self._sample = jax.jit(draw)
        self._sample_many = jax.jit(jax.vmap(draw))  # take(k): k batches in one call, the same numbers
        self._t = 0
        self.num_classes = 0

    def take(self, k: int) -> dict:
        """The next ``k`` batches stacked: ``{"x": [k, n_critic, B, 2]}`` (equal to ``k`` calls of next)."""
        batch = {"x": self._sample_many(self._t + jnp.arange(k))}
        self._t += k
        return batch

    def __next__(self) -> dict:
        batch = {"x": self._sample(self._t)}
        self._t += 1
        return batch

    def get_state(self) -> dict:
        return {"batches": self._t}

    def set_state(self, state: dict) -> None:
        self._t = int(state["batches"])


class ImageData:
    """Per-process image batches reshaped to ``{"x": [n_critic, B, S, S, C], "label": [n_critic, B]}``."""

    def __init__(self, config: Config, n_critic: int, batch_size: int, process_index: int = 0,
                 process_count: int = 1):
        from jaxgan.data.pipeline import make_image_dataset
        self._n = n_critic
        self._it = make_image_dataset(config.dataset, image_size=config.image_size, channels=config.channels,
                                      batch_size=n_critic * batch_size, seed=config.seed,
                                      data_dir=config.data_dir or None, process_index=process_index,
                                      process_count=process_count, skip_corrupt_images=config.skip_corrupt_images,
                                      subset=config.subset)
        self.num_classes = self._it.num_classes

    def __next__(self) -> dict:
        batch = next(self._it)
        return {k: v.reshape((self._n, -1) + v.shape[1:]) for k, v in batch.items()}

    def get_state(self) -> dict:
        return self._it.get_state()

    def set_state(self, state: dict) -> None:
        self._it.set_state(state)


def _take_batches(data, k: int) -> dict:
    """The next ``k`` batches of ``data`` stacked on a new leading axis (one device transfer)."""
    if hasattr(data, "take"):
        return data.take(k)
    batches = [next(data) for _ in range(k)]
    return {name: np.stack([np.asarray(b[name]) for b in batches]) for name in batches[0]}


def make_data(config: Config, *, process_index: int = 0, process_count: int = 1):
    if config.is_toy:
        sampler, _ = toy.toy_sampler(config.dataset, **experiment_lib.toy_mixture_options(config))
        return ToyData(sampler, config.seed, config.n_critic, config.batch_size)
    if config.batch_size % process_count:
        raise ConfigError(f"--batch_size={config.batch_size} is not divisible by the {process_count} processes")
    return ImageData(config, config.n_critic, config.batch_size // process_count, process_index, process_count)


def run_info() -> dict[str, Any]:
    """Versions, devices and git revision: what is needed to rerun a result."""
    import importlib.metadata as md
    versions = {}
    for package in ("jaxgan", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "tensorflow-datasets",
                    "numpy"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            versions[package] = None
    try:
        revision = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                  cwd=pathlib.Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        revision = None
    dirty = None
    if revision:  # uncommitted changes to tracked files: the revision alone does not reproduce the run
        try:
            dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                        text=True, timeout=5, cwd=pathlib.Path(__file__).parent).stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    devices = jax.devices()
    return {"versions": versions, "python": platform.python_version(), "platform": jax.default_backend(),
            "device_kind": devices[0].device_kind, "device_count": len(devices),
            "local_device_count": jax.local_device_count(), "process_count": jax.process_count(),
            "git_revision": revision, "git_dirty": dirty, "command": list(sys.argv), "cwd": os.getcwd(),
            "environment": {k: v for k, v in sorted(os.environ.items()) if k.startswith(("JAX_", "XLA_"))}}


def check_workdir(config: Config, workdir: pathlib.Path, overwrite: bool) -> None:
    """Refuses a workdir whose stored config differs (other than `RESUMABLE_FIELDS`) unless ``overwrite``."""
    path = workdir / "config.json"
    if not path.exists() or overwrite:
        return
    try:
        stored = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path} is unreadable ({e}); pass --overwrite to start afresh") from None
    # a field newer than the workdir compares as its default (the value the old run had in effect)
    current, stored = dataclasses.asdict(config), dataclasses.asdict(Config.from_dict(stored))
    diff = [f"--{k}={current[k]!r} (workdir has {v!r})" for k, v in sorted(stored.items())
            if k not in RESUMABLE_FIELDS and current[k] != v]
    if diff:
        raise ConfigError(f"workdir {workdir} was created by a different configuration: {'; '.join(diff)}; use "
                          f"another --workdir or pass --overwrite")


# What a run writes in its workdir (glob patterns): --overwrite removes them, and nothing else.
RUN_OUTPUTS = (log_lib.METRICS_FILENAME, "samples.png", "losses.png", "final_metrics.json",
               "eval.json", "eval_step_*.json")  # launch/evaluate.py's default outputs
RUN_OUTPUT_FOLDERS = ((log_lib.TB_DIRNAME, "events.out.tfevents.*"), ("samples", "step_*.png"))


def clear_previous_run(workdir: pathlib.Path) -> None:
    """--overwrite: removes what an earlier run wrote in ``workdir`` (checkpoints, metrics, TensorBoard events,
    sample grids, plots, final metrics, evaluations), so TensorBoard and the plots show only the new run.
    Files jaxgan does not write stay, and so do the folders holding them."""
    if (workdir / "checkpoints").exists():
        shutil.rmtree(workdir / "checkpoints")  # the old run's checkpoints must not be resumed
    for pattern in RUN_OUTPUTS:
        for path in workdir.glob(pattern):
            path.unlink()
    for folder, pattern in RUN_OUTPUT_FOLDERS:
        if (workdir / folder).is_dir():
            for path in (workdir / folder).glob(pattern):
                path.unlink()
            if not any((workdir / folder).iterdir()):
                (workdir / folder).rmdir()


def _save_samples(exp, state, config: Config, path: pathlib.Path, latents_key, num: int, writer=None, step=0):
    state = parallel.local_copy(state)  # a replicated multi-device state: sample on one local device
    x = np.asarray(sample(exp.generator, sample_params(state, config), state.g.model_state, latents_key, num,
                          num_classes=exp.num_classes))
    if config.is_toy:
        log_lib.plot_samples_2d(x, path, means=None if exp.mixture is None else exp.mixture.means)
    else:
        log_lib.save_image_grid(path, x)
        if writer is not None:
            writer.write_images(step, {"samples": x})
    return x


def _eval_extractor(config: Config):
    """The feature network of --eval_every (None when off): the digits classifier for digits, else Inception."""
    if not config.eval_every:
        return None
    from jaxgan import evaluation
    return evaluation.build_extractor(config.dataset, inception_weights=config.eval_inception_weights or None)


def _log_evaluation(exp, state, config: Config, extractor, writer, step: int) -> None:
    """--eval_every: `jaxgan.evaluation.evaluate` of the current state, logged as ``eval/<name>`` scalars."""
    from jaxgan import evaluation
    record = evaluation.evaluate(exp, state, metrics=config.eval_metrics, num_samples=config.eval_num_samples,
                                 extractor=extractor, seed=config.seed)
    scalars = {f"eval/{k}": float(v) for k, v in record["metrics"].items()}
    writer.write_scalars(step, scalars)
    logging.info("evaluation at step %d (%d samples, %s features): %s", step, config.eval_num_samples,
                 extractor.name, ", ".join(f"{k}={v:.4g}" for k, v in scalars.items()))


def _last_good(checkpointer: Checkpointer, abstract) -> tuple[tuple[int, Any, dict] | None, str]:
    """(step, state, data_state) of the newest checkpoint that verifies and holds only finite values (None when
    there is none), and "" or, when every checkpoint is damaged, the one line saying so."""
    try:
        return checkpointer.restore_latest(abstract, require_finite=True), ""
    except CheckpointError as e:
        return None, str(e)


def _rollback(exp, config: Config, restored: tuple[int, Any, dict] | None, key, data, initial_data_state, state,
              message: str, attempt: int) -> tuple[int, Any]:
    """--on_nan=rollback: ``restored`` (`_last_good`, or the initial state) with learning rates x nan_lr_factor."""
    g_lr, d_lr = reliability.learning_rates(state)  # the hyperparameters of the diverged state are still finite
    if restored is None:
        step, good, data_state = 0, jax.jit(exp.init)(key), initial_data_state
    else:
        step, good, data_state = restored
    data.set_state(data_state)
    good_g, good_d = reliability.learning_rates(good)
    # the rates become the diverged run's rates times the factor (compounding over repeated rollbacks)
    factor = config.nan_lr_factor
    good = reliability.set_learning_rates(good, g_lr * factor, d_lr * factor)
    logging.warning("%s; rollback %d of %d: restarting from step %d with learning rates g %.3g, d %.3g (--nan_lr_factor="
                    "%g times the diverged run's; the checkpoint had g %.3g, d %.3g)", message, attempt,
                    config.max_rollbacks, step, g_lr * factor, d_lr * factor, factor, good_g, good_d)
    return step, good


def run_calls(start: int, steps: int, *, length: Callable[[int], int], call: Callable[[int, int], None],
              after: Callable[[int, bool], int | None], save: Callable[[int], None],
              should_save: Callable[[int], bool], stop: reliability.StopRequest | None,
              sync_point: Callable[[int], bool] = lambda step: True, where: str = "", stop_at_end: bool = True) -> None:
    """The loop core of a training run (`train`) and of a study's chunk of runs (`jaxgan.sweep.run_group`).

    Steps ``start .. steps``, one jitted call at a time: ``call(t, n)`` runs steps ``t .. t+n-1`` with
    ``n = length(t)``. After each call, ending at step ``done``, in this order: the stop request is read
    (``stop.should_stop``; in multi-process runs a collective at the steps where ``sync_point(done)``); the state is
    to be saved when stopping, at ``steps`` or where ``should_save(done)``; ``after(done, saving)`` does the caller's
    work at that step (non-finite checks, metrics, evaluation, samples) and may return a step to continue from instead
    (a rollback: nothing is saved); ``save(done)``; on a stop, `jaxgan.reliability.TrainingInterrupted` naming
    ``where`` (the checkpoint directory). ``stop_at_end=False`` leaves a stop read at ``steps`` to the caller (a
    study writes the finished chunk's results first).
    """
    t = start
    while t < steps:
        n = length(t)
        call(t, n)
        done = t + n
        stopping = (stop is not None and (stop_at_end or done < steps)
                    and stop.should_stop(done, sync_point=sync_point(done)))
        saving = stopping or done == steps or should_save(done)
        restart = after(done, saving)
        if restart is not None:
            t = restart
            continue
        if saving:
            save(done)
        if stopping:
            raise reliability.TrainingInterrupted(done, stop.reason, where)
        t = done


class _RunLoop:
    """What `train` does around `run_calls`: its steps, the NaN guard's policy, metrics, evaluation, samples, saves.

    ``state`` is the current GANState (donated to every call).
    """

    def __init__(self, config: Config, exp, state, *, data, put_batch, step_fn, multi_fn, raw_step, mesh,
                 checkpointer: Checkpointer, abstract, writer, extractor, workdir: pathlib.Path, key,
                 initial_data_state, latents_key, start: int, per_call: int):
        self.config, self.exp, self.state, self.data, self.put_batch = config, exp, state, data, put_batch
        self.step_fn, self.multi_fn, self.raw_step, self.mesh = step_fn, multi_fn, raw_step, mesh
        self.per_call = per_call
        self.checkpointer, self.abstract, self.writer, self.extractor = checkpointer, abstract, writer, extractor
        self.workdir, self.key, self.latents_key = workdir, key, latents_key
        self.initial_data_state = initial_data_state
        self.progress = log_lib.ProgressLine(config.steps)
        self.last_time, self.last_step = time.perf_counter(), start
        self.record, self.rollbacks, self.skips_at_last_log, self.count, self.metrics = None, 0, 0, 0, None

    def length(self, t: int) -> int:
        """--steps_per_call=k: k steps whenever t is a multiple of k and k steps remain, else 1."""
        k = self.per_call
        return k if k > 1 and t % k == 0 and t + k <= self.config.steps else 1

    def is_log(self, done: int) -> bool:
        return done % self.config.log_every == 0 or done == self.config.steps

    def call(self, t: int, n: int) -> None:
        batch = self.put_batch(next(self.data)) if n == 1 else _take_batches(self.data, n)
        if self.record is None:
            shapes_step = self.raw_step if self.mesh is None else parallel.shard_map_step(self.raw_step, self.mesh)
            one = batch if n == 1 else jax.tree.map(lambda b: jax.ShapeDtypeStruct(b.shape[1:], b.dtype), batch)
            self.record = reliability.nan_record_init(reliability.metric_names(shapes_step, self.state, one))
        self.state, self.metrics, self.record = (self.step_fn if n == 1 else self.multi_fn)(self.state, batch,
                                                                                            self.record)

    def after(self, done: int, saving: bool) -> int | None:
        config, is_log = self.config, self.is_log(done)
        if is_log or saving:  # never log or save without checking the state is finite
            restart = self._check_finite(done, is_log)
            if restart is not None:
                return restart
        if is_log:
            self._log(done)
        if config.eval_every and (done % config.eval_every == 0 or done == config.steps):
            _log_evaluation(self.exp, self.state, config, self.extractor, self.writer, done)
        if config.sample_every and done % config.sample_every == 0 and parallel.is_primary():
            _save_samples(self.exp, self.state, config, self.workdir / "samples" / f"step_{done:07d}.png",
                          self.latents_key, 64, self.writer, done)
        return None

    def save(self, done: int) -> None:
        if self.checkpointer.latest_step() != done:
            self.checkpointer.save(done, self.state, self.data.get_state(), force=True)
            self.checkpointer.wait()  # the step donates `state`: finish reading it before the next step

    def _check_finite(self, done: int, is_log: bool) -> int | None:
        """--on_nan: raises `DivergenceError`, or returns the step a rollback restarts from (None: carry on)."""
        config, checkpointer = self.config, self.checkpointer
        first, self.count, bad = reliability.read_record(self.record)
        if config.on_nan == "skip":
            if is_log and self.count - self.skips_at_last_log >= done - self.last_step:
                good, damaged = _last_good(checkpointer, self.abstract)
                raise DivergenceError(reliability.divergence_message(
                    first, bad, done, good and good[0], checkpointer.directory, policy="skip",
                    extra=f"; --on_nan=skip gave up: all {done - self.last_step} steps since step {self.last_step} "
                          f"were non-finite", damaged=damaged))
            if is_log and self.count > self.skips_at_last_log:
                logging.warning("--on_nan=skip: discarded %d non-finite update(s) in steps %d-%d",
                                self.count - self.skips_at_last_log, self.last_step + 1, done)
        elif first >= 0:
            good, damaged = _last_good(checkpointer, self.abstract)
            message = reliability.divergence_message(first, bad, done, good and good[0], checkpointer.directory,
                                                     policy=config.on_nan, damaged=damaged)
            if config.on_nan == "rollback" and self.rollbacks < config.max_rollbacks and not damaged:
                self.rollbacks += 1
                t, self.state = _rollback(self.exp, config, good, self.key, self.data, self.initial_data_state,
                                          self.state, message, self.rollbacks)
                self.writer.truncate_after(t)
                self.record, self.last_time, self.last_step = None, time.perf_counter(), t
                return t
            if config.on_nan == "rollback":
                message += f"; gave up after --max_rollbacks={config.max_rollbacks} rollbacks"
            raise DivergenceError(message)
        return None

    def _log(self, done: int) -> None:
        scalars = {k: float(v) for k, v in jax.device_get(self.metrics).items()}
        if self.config.on_nan == "skip":
            scalars["nan_skipped"] = float(self.count)
            self.skips_at_last_log = self.count
        now = time.perf_counter()
        scalars["steps_per_sec"] = (done - self.last_step) / max(now - self.last_time, 1e-9)
        self.last_time, self.last_step = now, done
        self.writer.write_scalars(done, scalars)
        line = self.progress.update(done, {k: scalars[k] for k in ("d/total", "g/total")},
                                    force=done == self.config.steps)
        if line:
            logging.info("%s", line)


def train(config: Config, workdir: str | os.PathLike, *, overwrite: bool = False) -> Any:
    """Trains (or resumes) the run of ``config`` in ``workdir``; returns the final GANState."""
    # Everything that can refuse the run happens before anything is written, compiled or loaded in bulk:
    # flags (including the device count and the BatchNorm-with-penalty check), the workdir, then the data.
    experiment_lib.validate(config, device_count=None if config.is_toy else jax.device_count())
    # One writer per workdir (jaxgan.workdir): a second run is refused, naming the holder, before it writes;
    # an empty --workdir is refused; the lock is released however train() ends.
    with workdir_lib.hold(workdir) as workdir:
        return _train(config, workdir, overwrite)


def _train(config: Config, workdir: pathlib.Path, overwrite: bool) -> Any:
    """`train` while this run holds the workdir's lock."""
    check_workdir(config, workdir, overwrite)
    mesh = parallel.training_mesh(config)  # None: one device; else the ("seed", "data") mesh of --mesh_data
    data, put_batch, initial_data_state = _open_data(config, mesh)
    axis_name = None if mesh is None else parallel.DATA_AXIS  # per-device step, cross-replica BatchNorm
    exp = experiment_lib.build(config, num_classes=data.num_classes, axis_name=axis_name, validated=True)  # by train
    extractor = _eval_extractor(config)  # --eval_every: a missing weights file refuses the run before it starts
    _write_run_files(config, exp, workdir, overwrite)

    key = jax.random.key(config.seed)
    abstract = jax.eval_shape(exp.init, key)
    if mesh is not None:
        abstract = parallel.abstract_on_mesh(abstract, mesh)  # restore replicated onto this run's mesh
    checkpointer = Checkpointer(workdir / "checkpoints", save_every=config.checkpoint_every,
                                keep=config.keep_checkpoints)
    start, state = _restore_or_init(exp, key, mesh, data, checkpointer, abstract, overwrite)

    writer = log_lib.MetricWriter(workdir) if parallel.is_primary() else parallel.NullWriter()
    writer.truncate_after(start)
    raw_step = exp.train_step(axis_name)
    step_fn, multi_fn, per_call = _compiled_steps(config, raw_step, mesh)
    latents_key = jax.random.fold_in(key, 7)
    if parallel.is_primary():
        (workdir / "samples").mkdir(exist_ok=True)
    loop = _RunLoop(config, exp, state, data=data, put_batch=put_batch, step_fn=step_fn, multi_fn=multi_fn,
                    raw_step=raw_step, mesh=mesh, checkpointer=checkpointer, abstract=abstract, writer=writer,
                    extractor=extractor, workdir=workdir, key=key, initial_data_state=initial_data_state,
                    latents_key=latents_key, start=start, per_call=per_call)
    try:
        with reliability.StopRequest() as stop:
            if stop.reason is not None and jax.process_count() == 1:  # a signal during start-up (see StopRequest)
                raise reliability.TrainingInterrupted(start, stop.reason, checkpointer.directory)
            try:
                run_calls(start, config.steps, length=loop.length, call=loop.call, after=loop.after, save=loop.save,
                          should_save=checkpointer.should_save, stop=stop, sync_point=loop.is_log,
                          where=checkpointer.directory)
            finally:
                state = loop.state
        if config.steps > start and checkpointer.latest_step() != config.steps:
            checkpointer.save(config.steps, state, data.get_state(), force=True)
    finally:
        try:
            checkpointer.close()
        finally:  # closed even when the checkpointer's close fails (a full disk): its event thread must end
            writer.close()

    if parallel.is_primary():  # process 0 writes the samples, plots and final metrics
        _write_final_outputs(config, exp, state, workdir, latents_key)
    return state


def _open_data(config: Config, mesh) -> tuple[Any, Callable, dict]:
    """(data iterator, batch placer, its initial state) of this process; an image dataset reads one batch now, so
    unreadable files fail before anything is written or compiled."""
    data = make_data(config, process_index=jax.process_index(), process_count=jax.process_count())
    put_batch = parallel.batch_placer(mesh, global_batches=config.is_toy)  # identity without a mesh
    initial_data_state = data.get_state()
    if not config.is_toy:
        next(data)
        data.set_state(initial_data_state)
    return data, put_batch, initial_data_state


def _write_run_files(config: Config, exp, workdir: pathlib.Path, overwrite: bool) -> None:
    """Creates ``workdir`` and (process 0) writes config.json and run_info.json, after clearing a previous run
    when ``overwrite``; every process waits for them."""
    workdir.mkdir(parents=True, exist_ok=True)
    if parallel.is_primary():  # process 0 writes the workdir's files; every process checkpoints
        if overwrite:
            clear_previous_run(workdir)
        log_lib.atomic_write_text(workdir / "config.json", config.to_json())
        log_lib.atomic_write_text(workdir / "run_info.json", json.dumps({**run_info(), "num_classes": exp.num_classes}, indent=1))
    parallel.sync_processes("jaxgan_workdir_ready")


def _restore_or_init(exp, key, mesh, data, checkpointer: Checkpointer, abstract, overwrite: bool) -> tuple[int, Any]:
    """(start step, state): the newest checkpoint that verifies and is finite (``data`` set to its position; newer
    damaged ones are set aside, one line each), or step 0 and a fresh state (none, or ``overwrite``)."""
    try:
        restored = None if overwrite else checkpointer.restore_latest(abstract, require_finite=True)
    except CheckpointError as e:
        checkpointer.close()
        raise CheckpointError(f"{e}; --overwrite starts afresh (it deletes them)") from None
    if restored is None:
        return 0, (jax.jit(exp.init)(key) if mesh is None else parallel.init_replicated(exp.init, key, mesh))
    start, state, data_state = restored
    data.set_state(data_state)
    logging.info("resumed from %s at step %d", checkpointer.directory, start)
    return start, state


def _compiled_steps(config: Config, raw_step, mesh) -> tuple[Callable, Callable | None, int]:
    """(one-step function, k-step function or None, k = steps per call) of the guarded step, both jitted with the
    state and the NaN record donated: ``fn(state, batch, record) -> (state, metrics, record)``."""
    # The guard carries a device-side record of the first non-finite step (see jaxgan.reliability); with
    # --on_nan=skip it also discards non-finite updates inside the compiled step, so donation stays safe.
    guarded_step = reliability.guard_step(raw_step, config.on_nan)
    if mesh is None:
        step_fn = jax.jit(guarded_step, donate_argnums=(0, 2))
    else:  # jit(shard_map) over the data axis; at most a few steps in flight (CPU collectives deadlock otherwise)
        step_fn = parallel.data_parallel_step(guarded_step, mesh, num_args=3, donate_argnums=(0, 2))
    # --steps_per_call=k: k steps per jitted call whenever t is a multiple of k and k steps remain; log/checkpoint/
    # sample/eval intervals are multiples of k (validated), so they fall on call boundaries. lax.scan, except where
    # `jaxgan.step.inline_multi_steps` inlines the k steps (image models on CPU).
    per_call = config.steps_per_call if mesh is None else 1
    unroll = inline_multi_steps(MODELS[config.model].convolves)
    multi_fn = (jax.jit(make_multi_step(guarded_step, per_call, unroll=unroll), donate_argnums=(0, 2))
                if per_call > 1 else None)
    return step_fn, multi_fn, per_call


def _write_final_outputs(config: Config, exp, state, workdir: pathlib.Path, latents_key) -> None:
    """samples.png, losses.png and, for 2D mixtures, final_metrics.json (mode coverage) of the final ``state``."""
    num = config.num_samples if config.is_toy else 64
    x = _save_samples(exp, state, config, workdir / "samples.png", latents_key, num)
    log_lib.plot_losses(workdir / "metrics.jsonl", workdir / "losses.png",
                        show_wasserstein=config.loss == "wasserstein")
    if exp.mixture is not None:
        from jaxgan.metrics import modes
        result = modes.mode_metrics(x, exp.mixture.means, exp.mixture.std)
        result = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in result.items()}
        log_lib.atomic_write_text(workdir / "final_metrics.json", json.dumps({"step": config.steps, **result}, indent=1))
        logging.info("mode coverage of %d samples: %s", num, {k: result[k] for k in
                                                              ("modes_captured", "high_quality_fraction")})


def _onednn_here() -> bool:
    from jaxgan.models import onednn
    return jax.default_backend() == "cpu" and onednn.available()


def load_run(workdir: str | os.PathLike, step: int | None = None):
    """(experiment, state) of a finished or running workdir, at checkpoint ``step`` (default: the newest that
    verifies and is finite, skipping damaged ones with a warning each). Opens the checkpoints read-only: a
    running trainer's in-flight checkpoint is left alone, and nothing is created or removed."""
    if not str(workdir).strip():
        raise ConfigError("--workdir must not be empty")
    workdir = pathlib.Path(workdir)
    path = workdir / "config.json"
    if not path.exists():
        raise ConfigError(f"--workdir={workdir} has no config.json; is it a jaxgan workdir?")
    fields = {f.name for f in dataclasses.fields(Config)}
    config = Config(**{k: v for k, v in json.loads(path.read_text()).items() if k in fields})
    if config.conv_impl == "dnnl" and not _onednn_here():  # trained on a CPU with oneDNN, read elsewhere
        logging.info("the run used --conv_impl=dnnl, which is unavailable here; reading it with --conv_impl=auto")
        config = dataclasses.replace(config, conv_impl="auto")
    info = json.loads((workdir / "run_info.json").read_text()) if (workdir / "run_info.json").exists() else {}
    exp = experiment_lib.build(config, num_classes=info.get("num_classes", 0))
    abstract = jax.eval_shape(exp.init, jax.random.key(config.seed))
    with Checkpointer(workdir / "checkpoints", read_only=True) as checkpointer:
        steps = checkpointer.all_steps()
        if not steps:
            raise ConfigError(f"--workdir={workdir} has no checkpoint yet")
        if step is None:
            _, state, _ = checkpointer.restore_latest(abstract, require_finite=True)
        elif step not in steps:
            raise ConfigError(f"--step={step} has no checkpoint in {workdir}; available: {sorted(steps)}")
        else:
            state, _ = checkpointer.restore(step, abstract)
    return exp, state
