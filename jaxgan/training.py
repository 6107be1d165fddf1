"""The training loop behind ``launch/train.py``: data -> jitted step -> metrics, samples, checkpoints.

``train(config, workdir)`` resumes from the newest checkpoint in ``workdir`` when there is one, so running
the same command again continues a run (and a run of 2N steps equals N steps, stop, N more).

Files in ``workdir``: ``config.json`` (the resolved config; a different config is refused unless
``overwrite``), ``run_info.json`` (versions, devices, git revision), ``metrics.jsonl``, ``tb/`` (TensorBoard),
``checkpoints/``, ``samples/`` (grids or 2D scatter plots every ``sample_every`` steps), ``samples.png`` and
``losses.png`` at the end, and for 2D mixtures ``final_metrics.json`` (mode coverage of 2500 samples).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import platform
import subprocess
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jaxgan import experiment as experiment_lib
from jaxgan import logging as log_lib
from jaxgan.checkpoint import Checkpointer
from jaxgan.data import toy
from jaxgan.experiment import Config, ConfigError
from jaxgan.step import sample

# Fields that may change between invocations on one workdir (extending a run, logging more often).
RESUMABLE_FIELDS = ("steps", "log_every", "sample_every", "checkpoint_every", "keep_checkpoints", "num_samples")


class DivergenceError(RuntimeError):
    """A loss or parameter became NaN/Inf; the message names the step, the term and the last checkpoint."""


class ToyData:
    """Batches ``{"x": [n_critic, B, 2]}`` of a toy dataset; batch t is drawn from ``fold_in(key, t)``."""

    def __init__(self, sampler, seed: int, n_critic: int, batch_size: int):
        key = jax.random.fold_in(jax.random.key(seed), 0x5EED)
        self._sample = jax.jit(lambda t: sampler(jax.random.fold_in(key, t), n_critic * batch_size)
                               .reshape(n_critic, batch_size, -1))
        self._t = 0
        self.num_classes = 0

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
                                      process_count=process_count)
        self.num_classes = self._it.num_classes

    def __next__(self) -> dict:
        batch = next(self._it)
        return {k: v.reshape((self._n, -1) + v.shape[1:]) for k, v in batch.items()}

    def get_state(self) -> dict:
        return self._it.get_state()

    def set_state(self, state: dict) -> None:
        self._it.set_state(state)


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
    devices = jax.devices()
    return {"versions": versions, "python": platform.python_version(), "platform": jax.default_backend(),
            "device_kind": devices[0].device_kind, "device_count": len(devices),
            "process_count": jax.process_count(), "git_revision": revision}


def _atomic_write(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def check_workdir(config: Config, workdir: pathlib.Path, overwrite: bool) -> None:
    """Refuses a workdir whose stored config differs (other than `RESUMABLE_FIELDS`) unless ``overwrite``."""
    path = workdir / "config.json"
    if not path.exists() or overwrite:
        return
    try:
        stored = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path} is unreadable ({e}); pass --overwrite to start afresh") from None
    current = dataclasses.asdict(config)
    diff = [f"--{k}={current.get(k)!r} (workdir has {v!r})" for k, v in sorted(stored.items())
            if k not in RESUMABLE_FIELDS and current.get(k) != v]
    if diff:
        raise ConfigError(f"workdir {workdir} was created by a different configuration: {'; '.join(diff)}; use "
                          f"another --workdir or pass --overwrite")


def sample_params(state, config: Config):
    """EMA weights when EMA is on, else the raw generator weights."""
    return state.g_ema_params if config.ema_decay else state.g.params


def _save_samples(exp, state, config: Config, path: pathlib.Path, latents_key, num: int, writer=None, step=0):
    x = np.asarray(sample(exp.generator, sample_params(state, config), state.g.model_state, latents_key, num,
                          num_classes=exp.num_classes))
    if config.is_toy:
        log_lib.plot_samples_2d(x, path, means=None if exp.mixture is None else exp.mixture.means)
    else:
        log_lib.save_image_grid(path, x)
        if writer is not None:
            writer.write_images(step, {"samples": x})
    return x


def _first_nonfinite(metrics: dict) -> str:
    for name, value in metrics.items():
        if name != "finite" and not math.isfinite(float(value)):
            return name
    return "a parameter"


def train(config: Config, workdir: str | os.PathLike, *, overwrite: bool = False) -> Any:
    """Trains (or resumes) the run of ``config`` in ``workdir``; returns the final GANState."""
    experiment_lib.validate(config)
    workdir = pathlib.Path(workdir)
    check_workdir(config, workdir, overwrite)
    data = make_data(config)
    exp = experiment_lib.build(config, num_classes=data.num_classes)
    workdir.mkdir(parents=True, exist_ok=True)
    _atomic_write(workdir / "config.json", config.to_json())
    _atomic_write(workdir / "run_info.json", json.dumps({**run_info(), "num_classes": exp.num_classes}, indent=1))

    key = jax.random.key(config.seed)
    abstract = jax.eval_shape(exp.init, key)
    checkpointer = Checkpointer(workdir / "checkpoints", save_every=config.checkpoint_every,
                                keep=config.keep_checkpoints)
    restored = None if overwrite else checkpointer.restore_latest(abstract)
    if restored is None:
        start, state = 0, jax.jit(exp.init)(key)
    else:
        start, state, data_state = restored
        data.set_state(data_state)
        logging.info("resumed from %s at step %d", checkpointer.directory, start)

    writer = log_lib.MetricWriter(workdir)
    writer.truncate_after(start)
    step_fn = jax.jit(exp.train_step(), donate_argnums=0)
    latents_key = jax.random.fold_in(key, 7)
    (workdir / "samples").mkdir(exist_ok=True)
    progress = log_lib.ProgressLine(config.steps)
    last_time, last_step = time.perf_counter(), start
    try:
        for t in range(start, config.steps):
            batch = next(data)
            state, metrics = step_fn(state, batch)
            done = t + 1
            if done % config.log_every == 0 or done == config.steps:
                scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
                if scalars["finite"] != 1.0:
                    raise DivergenceError(
                        f"step {done}: {_first_nonfinite(scalars)} became NaN/Inf; last good checkpoint: step "
                        f"{checkpointer.latest_step()} in {checkpointer.directory}")
                now = time.perf_counter()
                scalars["steps_per_sec"] = (done - last_step) / max(now - last_time, 1e-9)
                last_time, last_step = now, done
                writer.write_scalars(done, scalars)
                line = progress.update(done, {k: scalars[k] for k in ("d/total", "g/total")}, force=done == config.steps)
                if line:
                    logging.info("%s", line)
            if config.sample_every and done % config.sample_every == 0:
                _save_samples(exp, state, config, workdir / "samples" / f"step_{done:07d}.png", latents_key, 64,
                              writer, done)
            if checkpointer.save(done, state, data.get_state()):
                checkpointer.wait()  # the step donates `state`: finish reading it before the next step
        if config.steps > start and checkpointer.latest_step() != config.steps:
            checkpointer.save(config.steps, state, data.get_state(), force=True)
    finally:
        checkpointer.close()
        writer.close()

    num = config.num_samples if config.is_toy else 64
    x = _save_samples(exp, state, config, workdir / "samples.png", latents_key, num)
    log_lib.plot_losses(workdir / "metrics.jsonl", workdir / "losses.png")
    if exp.mixture is not None:
        from jaxgan.metrics import modes
        result = modes.mode_metrics(x, exp.mixture.means, exp.mixture.std)
        result = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in result.items()}
        _atomic_write(workdir / "final_metrics.json", json.dumps({"step": config.steps, **result}, indent=1))
        logging.info("mode coverage of %d samples: %s", num, {k: result[k] for k in
                                                              ("modes_captured", "high_quality_fraction")})
    return state


def load_run(workdir: str | os.PathLike, step: int | None = None):
    """(experiment, state) of a finished or running workdir, at checkpoint ``step`` (default: newest)."""
    workdir = pathlib.Path(workdir)
    path = workdir / "config.json"
    if not path.exists():
        raise ConfigError(f"--workdir={workdir} has no config.json; is it a jaxgan workdir?")
    fields = {f.name for f in dataclasses.fields(Config)}
    config = Config(**{k: v for k, v in json.loads(path.read_text()).items() if k in fields})
    info = json.loads((workdir / "run_info.json").read_text()) if (workdir / "run_info.json").exists() else {}
    exp = experiment_lib.build(config, num_classes=info.get("num_classes", 0))
    abstract = jax.eval_shape(exp.init, jax.random.key(config.seed))
    with Checkpointer(workdir / "checkpoints", save_every=config.checkpoint_every) as checkpointer:
        steps = checkpointer.all_steps()
        if not steps:
            raise ConfigError(f"--workdir={workdir} has no checkpoint yet")
        if step is None:
            step = max(steps)
        elif step not in steps:
            raise ConfigError(f"--step={step} has no checkpoint in {workdir}; available: {sorted(steps)}")
        state, _ = checkpointer.restore(step, abstract)
    return exp, state
