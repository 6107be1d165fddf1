"""Studies of many GAN runs in one program: seeds x hyperparameters, vmapped in chunks.

A study is a list of *groups*; a group is one compiled program (one objective, one architecture) and holds
many *runs*, each with its own seed and its own run-time hyperparameters (``GANState.hparams``: learning
rates through ``optax.inject_hyperparams``, penalty weight, label smoothing, instance-noise scale, EMA
decay). Runs of a group are stacked (``jax.vmap`` of ``Experiment.init`` over keys and hparams) and trained
with ``jax.vmap(step)`` in *chunks* of ``chunk`` runs, chunk after chunk; several steps go into one jitted
call (`jaxgan.step.make_multi_step`, toy data drawn inside from ``fold_in(data_key, t)``).

Equivalence with single runs: run ``i`` starts from ``jax.random.key(seed_i)`` and sees the batches of
``ToyData(sampler, seed_i, ...)``, exactly what ``launch/train.py --seed=seed_i`` uses. With ``chunk=1``
(no vmap) the final parameters are bit-identical to ``launch/train.py`` on CPU (``lax.scan`` over steps
changes nothing); with ``chunk > 1`` XLA:CPU computes the batched matmuls of the vmapped step with another
summation order, so parameters agree to float32 rounding after one step (~1e-8) and then drift apart as
slowly as the game's own sensitivity allows (~1e-7 after 50 steps of a small MLP GAN).

Chunk size: on CPU, a handful of small MLP GANs vmapped together run faster than one after another, but
dozens at once run slower (stacked activations leave the cache); a vmapped convolution runs its runs'
oneDNN convolutions side by side, one per core (`jaxgan.models.onednn.batch_mode`), which pays most where the
convolutions are small (``docs/performance.md``, "Many seeds on CPU"; ``benchmarks/sweep_speedup.py``).
`default_chunk` encodes these measurements; pass ``chunk`` to override.

Several devices: with a ``mesh`` (`sweep_mesh`, ``launch/sweep.py --mesh_seed=K``) the runs of every chunk
are split over the K devices of the mesh's ``seed`` axis (`jaxgan.parallel`): the stacked state, data keys and
image batches are placed ``P("seed")`` and each device trains its ``chunk / K`` runs, vmapped, under
`jax.shard_map` with no collectives. ``chunk`` must then be a multiple of K. The numbers are those of the
one-device vmapped sweep (equal to float32 rounding: each device's batched matmuls hold ``chunk / K`` runs,
not ``chunk``).

Divergence is per run: a run whose metrics or parameters become non-finite is recorded (``diverged``,
``diverged_step``) and the others carry on.

Resuming: with a `StudyStore` (`open_study`, which refuses a workdir holding another study's `study_spec`),
`run_study` writes each finished chunk of runs, checkpoints the chunk in progress every ``checkpoint_every``
steps (the training loop's core, `jaxgan.training.run_calls`, and its `jaxgan.checkpoint.Checkpointer`), stops on
SIGTERM/SIGINT with a checkpoint, and on a rerun reads finished chunks back and resumes the one in progress.

Public API: `parse_sweep_flag`/`parse_group_entry` (input), `plan` -> [`Group`], `sweep_mesh`,
`run_group` -> `GroupResult`, `run_study`, `study_spec`/`open_study` -> `StudyStore`, `aggregate`,
`write_outputs` (results.json, samples.npy, report.md, plots).
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import os
import pathlib
import shutil
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxgan import config as config_lib
from jaxgan import experiment as experiment_lib
from jaxgan import parallel
from jaxgan import reliability
from jaxgan.data import toy
from jaxgan.experiment import Config, ConfigError
from jaxgan.models import MODELS
from jaxgan.step import inline_multi_steps, make_multi_step, sample

# How a study may vary each Config field: its metadata (jaxgan.config.option, sweep=...).
# Run-time hyperparameters: scalars in GANState.hparams; runs that differ only in them share one program.
RUNTIME_HPARAMS = config_lib.fields_where(sweep="runtime")
# Shape-preserving fields that change the compiled program: runs that differ in them form separate groups.
GROUP_FIELDS = config_lib.fields_where(sweep="group")
# Extra fields a --losses entry may set for its group (they change shapes, which is fine per group).
GROUP_ONLY_FIELDS = config_lib.fields_where(sweep="group_entry")
# Fields that change array shapes or the data: never swept inside one program.
SHAPE_FIELDS = config_lib.fields_where(sweep="shape") + GROUP_ONLY_FIELDS


class SweepError(ConfigError):
    """Bad sweep input; the message names the flag and what is accepted."""


# ----------------------------------------------------------------------------------------------- input

def _parse_value(flag: str, name: str, text: str):
    text = text.strip()
    kind = config_lib.field_type(name)  # str, int or float: no sweepable field is a bool
    if kind is str:
        if not text:
            raise SweepError(f"{flag}: empty value for {name}")
        return text
    try:
        if kind is int:
            return int(text)
        value = float(text)
    except ValueError:
        expected = "an integer" if kind is int else "a number"
        raise SweepError(f"{flag}: {text!r} is not {expected} (values of {name} are a comma-separated list, e.g. "
                         f"{name}:1e-4,2e-4)") from None
    if not math.isfinite(value):
        raise SweepError(f"{flag}: {text!r} is not a finite number")
    return value


def _check_name(flag: str, name: str, allowed: Sequence[str]) -> None:
    if name in allowed:
        return
    if name in SHAPE_FIELDS:
        raise SweepError(f"{flag}: {name} changes array shapes or the data, so runs with different values cannot "
                         f"share one program; sweepable: {', '.join(allowed)}")
    if name == "seed":
        raise SweepError(f"{flag}: sweep seeds with --seeds=N (seeds --seed .. --seed+N-1)")
    if name in {f.name for f in dataclasses.fields(Config)}:
        raise SweepError(f"{flag}: {name} is not a sweepable hyperparameter; sweepable: {', '.join(allowed)}")
    raise SweepError(f"{flag}: unknown hyperparameter {name!r}; sweepable: {', '.join(allowed)}")


def parse_sweep_flag(text: str) -> tuple[str, list]:
    """``"g_lr:1e-4,2e-4"`` -> ``("g_lr", [1e-4, 2e-4])``; raises `SweepError` naming the flag."""
    flag = f"--sweep={text}"
    if ":" not in text:
        raise SweepError(f"{flag}: expected NAME:V1,V2,... (e.g. --sweep=g_lr:1e-4,2e-4)")
    name, values = text.split(":", 1)
    name = name.strip()
    _check_name(flag, name, RUNTIME_HPARAMS + GROUP_FIELDS)
    parts = [v for v in values.split(",")]
    if not values.strip() or any(not p.strip() for p in parts):
        raise SweepError(f"{flag}: empty value in the list {values!r}")
    parsed = [_parse_value(flag, name, p) for p in parts]
    if len(set(parsed)) != len(parsed):
        raise SweepError(f"{flag}: repeated value in {values!r}")
    return name, parsed


def parse_group_entry(text: str) -> dict[str, Any]:
    """A ``--losses`` entry ``LOSS[+PENALTY][+FIELD=VALUE]...`` -> config overrides for one group.

    E.g. ``wasserstein+gradient_penalty``, ``wasserstein+clip_weights=0.01+n_critic=5``,
    ``non_saturating+r1+penalty_weight=1``.
    """
    from jaxgan import objectives
    flag = f"--losses={text}"
    parts = [p.strip() for p in text.split("+")]
    if not parts[0]:
        raise SweepError(f"{flag}: expected LOSS[+PENALTY][+FIELD=VALUE]...")
    if parts[0] not in objectives.LOSSES:
        raise SweepError(f"{flag}: unknown loss {parts[0]!r}; accepted: {', '.join(sorted(objectives.LOSSES))}")
    overrides: dict[str, Any] = {"loss": parts[0]}
    for part in parts[1:]:
        if "=" in part:
            name, value = (s.strip() for s in part.split("=", 1))
            _check_name(flag, name, RUNTIME_HPARAMS + GROUP_FIELDS + GROUP_ONLY_FIELDS)
            overrides[name] = _parse_value(flag, name, value)
        elif part in objectives.PENALTIES:
            overrides["penalty"] = part
        else:
            raise SweepError(f"{flag}: {part!r} is neither a penalty ({', '.join(sorted(objectives.PENALTIES))}) "
                             f"nor FIELD=VALUE")
    return overrides


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One run: its full config (seed and hyperparameter values included) and its group."""
    index: int
    group: str
    config: Config
    hparams: Mapping[str, float]  # the run-time hparams of its group's program, with this run's values
    seed: int
    swept: Mapping[str, Any]  # the swept values (and group overrides) that define its configuration

    @property
    def configuration(self) -> str:
        """Name of the configuration (everything but the seed)."""
        return ", ".join(f"{k}={v}" for k, v in self.swept.items()) or "base"


@dataclasses.dataclass
class Group:
    """Runs that share one compiled program."""
    name: str
    config: Config  # the program's config (hparam keys present; values are the first run's)
    runs: list[RunSpec]


def _replace(config: Config, values: Mapping[str, Any], flag: str) -> Config:
    try:
        new = dataclasses.replace(config, **values)
        experiment_lib.validate(new)
    except ConfigError as e:
        raise SweepError(f"{flag}: {e}") from None
    return new


def plan(base: Config, *, seeds: int | Sequence[int], sweep: Sequence[tuple[str, Sequence]] = (),
         groups: Sequence[str | Mapping[str, Any]] = (), search: str = "grid", trials: int = 0,
         search_seed: int = 0) -> list[Group]:
    """Expands a study into groups of runs.

    Args:
      base: the config every run starts from.
      seeds: N (seeds ``base.seed .. base.seed + N - 1``) or an explicit list.
      sweep: ``[(name, values)]`` from `parse_sweep_flag`. Run-time hparams are crossed inside a group;
        `GROUP_FIELDS` are crossed as separate groups.
      groups: ``--losses`` entries (strings or override dicts); empty: one group of ``base``.
      search: ``"grid"`` (full cross product) or ``"random"``: ``trials`` draws of the run-time hparams, each
        log-uniform between the min and max of its values (uniform if the min is 0); group fields stay a grid.
    Returns the groups, runs numbered 0.. in order (group, hparam combination, seed).
    """
    seed_list = list(range(base.seed, base.seed + int(seeds))) if isinstance(seeds, int) else list(seeds)
    if not seed_list:
        raise SweepError(f"--seeds must be >= 1, got {seeds}")
    names = [n for n, _ in sweep]
    if len(set(names)) != len(names):
        raise SweepError(f"--sweep: hyperparameter given twice: {sorted(n for n in set(names) if names.count(n) > 1)}")
    runtime = [(n, v) for n, v in sweep if n in RUNTIME_HPARAMS]
    static = [(n, v) for n, v in sweep if n not in RUNTIME_HPARAMS]
    entries = [parse_group_entry(g) if isinstance(g, str) else dict(g) for g in groups] or [{}]
    entry_names = [g if isinstance(g, str) else "+".join(f"{k}={v}" for k, v in g.items()) for g in groups] or [""]
    if search == "grid":
        combos = [dict(zip([n for n, _ in runtime], c)) for c in itertools.product(*[v for _, v in runtime])]
    elif search == "random":
        if trials < 1:
            raise SweepError(f"--search=random needs --trials >= 1, got {trials}")
        rng = np.random.default_rng(search_seed)
        combos = []
        for _ in range(trials):
            combo = {}
            for n, v in runtime:
                lo, hi = float(min(v)), float(max(v))
                combo[n] = float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if lo > 0 else float(rng.uniform(lo, hi))
            combos.append(combo)
    else:
        raise SweepError(f"--search={search!r} is not one of grid, random")
    out: list[Group] = []
    index = 0
    for entry, entry_name in zip(entries, entry_names):
        for static_combo in itertools.product(*[v for _, v in static]):
            static_values = dict(zip([n for n, _ in static], static_combo))
            overrides = {**entry, **static_values}
            flag = f"--losses={entry_name}" if entry_name else "--sweep"
            group_config = _replace(base, overrides, flag)
            # The program must hold every swept run-time hparam: build it with a non-zero value where any run has one.
            program_values = {}
            for n, v in runtime:
                nonzero = [x for x in ([c[n] for c in combos]) if x]
                program_values[n] = nonzero[0] if nonzero else combos[0][n]
            program_config = _replace(group_config, program_values, "--sweep")
            keys = _program_hparams(program_config)
            for n, _ in runtime:
                if n not in keys:
                    raise SweepError(f"--sweep={n}: has no effect on group {entry_name or program_config.loss!r} "
                                     f"(its run-time hyperparameters are {', '.join(sorted(keys))}); e.g. "
                                     f"penalty_weight needs a --penalty, label_smoothing a JSD loss")
            name = "+".join([entry_name] * bool(entry_name) + [f"{k}={v}" for k, v in static_values.items()]) or \
                program_config.loss
            runs = []
            for combo in combos:
                run_config = _replace(group_config, combo, "--sweep")
                hparams = {k: float(combo.get(k, getattr(run_config, k, v))) for k, v in keys.items()}
                swept = {**({"group": name} if len(entries) > 1 or static else {}), **combo}
                for seed in seed_list:
                    runs.append(RunSpec(index, name, dataclasses.replace(run_config, seed=seed), hparams, seed, swept))
                    index += 1
            out.append(Group(name, program_config, runs))
    names = [g.name for g in out]
    if len(set(names)) != len(names):
        raise SweepError(f"--losses: repeated group {sorted(n for n in set(names) if names.count(n) > 1)}")
    return out


def _program_hparams(config: Config) -> dict[str, float]:
    objective = experiment_lib.build_objective(config)
    return experiment_lib.initial_hparams(config, objective)


# ----------------------------------------------------------------------------------------------- chunks

def default_chunk(platform: str, model: str, runs: int) -> int:
    """Runs vmapped together, from measurements (``benchmarks/sweep_speedup.py``, ``docs/performance.md``).

    CPU: 8 for MLP GANs (faster than sequential at 4-16 runs, slower at 32-64); 4 for convolutional GANs
    (oneDNN runs the chunk's convolutions side by side, one per core: faster than sequential, most where the
    convolutions are small). Accelerators: all runs for MLPs
    (a 64-run chunk fills a GPU far better than one small MLP), 16 for convolutional GANs (memory). The
    figures: ``docs/performance.md``, "Figures behind the library's defaults". The chunks are then balanced
    (10 runs at 8: two chunks of 5, one compiled program, rather than 8 and a slow chunk of 2).
    """
    convolves = MODELS[model].convolves  # the model registry's spec: MLPs (mlp, pacgan_mlp) vmap well on CPU
    if platform == "cpu":
        chunk = 4 if convolves else 8
    else:
        chunk = 16 if convolves else 256
    chunk = max(1, min(chunk, runs))
    chunks = -(-runs // chunk)
    return -(-runs // chunks)


def check_chunk(chunk: int | None, seed_devices: int) -> None:
    """Raises `SweepError` unless an explicit ``chunk`` (None/0: the default) splits over ``seed_devices``."""
    k = int(seed_devices)
    if not chunk or k <= 1 or chunk % k == 0:
        return
    options = sorted({max(k, chunk // k * k), chunk // k * k + k})
    raise SweepError(f"--chunk={chunk} is not a multiple of --mesh_seed={k}: the runs of every chunk are split "
                     f"evenly over the {k} devices of the seed axis; use --chunk="
                     f"{' or --chunk='.join(map(str, options))} (or --chunk=0 for the default)")


def resolve_chunk(chunk: int | None, runs: int, *, platform: str, model: str, seed_devices: int = 1) -> int:
    """Runs per chunk: ``chunk`` (None/0: `default_chunk`) capped at ``runs``, then rounded up to a multiple of
    ``seed_devices`` (the padding runs of a chunk are dropped). An explicit ``chunk`` that is not a multiple of
    ``seed_devices`` raises `SweepError` (`check_chunk`)."""
    check_chunk(chunk, seed_devices)
    chunk = default_chunk(platform, model, runs) if not chunk else max(1, min(int(chunk), runs))
    k = max(1, int(seed_devices))
    return -(-chunk // k) * k


def sweep_mesh(config: Config, *, devices=None) -> Mesh | None:
    """The mesh that splits a sweep's chunks over ``config.mesh_seed`` devices (``--mesh_seed``), or None.

    A ``("seed", "data")`` mesh of ``mesh_seed x 1`` devices (`jaxgan.parallel.make_mesh`; too few devices
    raise `jaxgan.parallel.ParallelError` with the device count). Sweeps do not split batches: ``mesh_data``
    must be 0 (the default) or 1. None when ``mesh_seed`` is 1 (one device).
    """
    if config.mesh_data not in (0, 1):
        raise SweepError(f"--mesh_data={config.mesh_data}: a sweep does not split batches over devices; it splits "
                         f"the runs of each chunk over --mesh_seed devices. Use --mesh_data=0 or 1")
    if config.mesh_seed <= 1:
        return None
    return parallel.make_mesh(1, config.mesh_seed, devices=devices)


@dataclasses.dataclass
class GroupResult:
    """Per-run outcomes of a group, in the order of ``group.runs``."""
    group: Group
    final_params: Any  # stacked (numpy) pytree of G params (EMA where on), leading axis = runs
    final_d_params: Any
    samples: np.ndarray  # [runs, num_samples, ...]
    evals: list[list[dict]]  # per run: [{"step": s, metric: value, ...}]
    diverged_step: list[int | None]  # first step whose metrics/params were non-finite
    seconds: float  # training wall time (compilation included)
    model_steps: int  # runs x steps (padding excluded)
    chunk: int
    seed_devices: int = 1  # devices the runs of each chunk were split over (the mesh's seed axis)


def _stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _slice(tree, i):
    return jax.tree.map(lambda x: x[i], tree)


def _eval_points(steps: int, every: int) -> list[int]:
    return sorted(set(list(range(every, steps + 1, every)) + [steps]))


_RUNS = P(parallel.SEED_AXIS)  # [runs, ...]
_STEPS_RUNS = P(None, parallel.SEED_AXIS)  # [L, runs, ...]


class _Evaluator:
    """Final / periodic sample metrics: mode coverage for 2D mixtures; for digits, the classes covered and the
    classifier score of ``classifier`` (a `jaxgan.evaluation.Extractor`, the one ``launch/evaluate.py`` uses)."""

    def __init__(self, exp, config: Config, num_samples: int, classifier=None, w1_samples: int = 0,
                 mesh: Mesh | None = None):
        self.exp, self.config = exp, config
        self.num_samples = num_samples
        self.classifier = classifier
        self.w1_samples = w1_samples
        self._reference = None  # digits: the classifier's statistics of the whole dataset (fcd)
        gen = exp.generator

        def draw(params, model_state, key):
            return sample(gen, params, model_state, key, num_samples, num_classes=exp.num_classes)
        self._draw = jax.jit(parallel.on_seed_axis(jax.vmap(draw), mesh, (_RUNS,) * 3, _RUNS))
        self._draw_one = jax.jit(draw)

    def samples(self, params, model_state, keys, vmapped: bool) -> np.ndarray:
        if vmapped:
            return np.asarray(self._draw(params, model_state, keys))
        return np.asarray(self._draw_one(params, model_state, keys))[None]

    def metrics(self, x: np.ndarray, seed: int, final: bool) -> dict[str, float]:
        mixture = self.exp.mixture
        out: dict[str, float] = {}
        if mixture is not None:
            from jaxgan.metrics import modes
            m = modes.mode_metrics(x, mixture.means, mixture.std)
            out = {k: float(m[k]) for k in ("modes_captured", "high_quality_fraction", "reverse_kl")}
            if final and self.w1_samples:
                out["w1"] = float(modes.wasserstein1_to_mixture(x, mixture.means, mixture.std, seed=seed,
                                                                n=min(self.w1_samples, x.shape[0])))
        elif self.classifier is not None:
            from jaxgan import evaluation
            from jaxgan.metrics import registry
            finite = np.all(np.isfinite(x.reshape(x.shape[0], -1)), axis=1)
            features, logits = self.classifier.apply(np.clip(x[finite], -1, 1)) if finite.any() else (None, None)
            out["classes_covered"] = 0.0 if logits is None else float(len(np.unique(np.argmax(logits, axis=1))))
            if self.classifier.feature_dim:  # (an extractor of logits only has none)
                out["fcd"] = self.frechet_classifier_distance(features)
            # Coverage alone rewards noise, which the classifier also spreads over classes; the classifier score
            # (the Inception Score with the digits classifier) needs confident *and* varied predictions. It is
            # launch/evaluate.py's: evaluation.IS_SPLITS splits (NaN with fewer finite samples than splits).
            enough = logits is not None and len(logits) >= evaluation.IS_SPLITS
            out["classifier_score"] = (registry.score_of_logits(logits, num_splits=evaluation.IS_SPLITS)[0] if enough
                                       else math.nan)
        return out


    def frechet_classifier_distance(self, features) -> float:
        """The Fréchet distance in the classifier's features between the samples and every image of the dataset
        (all 1797 digits, whatever ``--subset``: a small-data run is judged against the whole distribution);
        NaN with fewer than 2 finite samples."""
        from jaxgan import evaluation
        if features is None or len(features) < 2:
            return math.nan
        if self._reference is None:
            c = self.config
            self._reference = evaluation.reference_statistics(self.classifier, dataset=c.dataset, split="train",
                                                              image_size=c.image_size, channels=c.channels)["stats"]
        from jaxgan.metrics.frechet import FeatureStats
        return float(FeatureStats.from_features(np.asarray(features, np.float64)).frechet_distance(self._reference))


def make_trainer(exp, config: Config, vmapped: bool, mesh: Mesh | None = None) -> Callable:
    """``train(state, data_keys, t0, batches, length=L) -> (state, metrics [L, ...])``, jitted, state donated.

    Runs steps ``t0 .. t0+L-1`` in one call (`jaxgan.step.make_multi_step`); with ``vmapped`` the state,
    ``data_keys`` and ``batches`` carry a runs axis (leading; second for ``batches``, after L). For toy data pass
    ``batches=None``: the batch of step t is drawn inside from ``fold_in(data_key, t)`` exactly as
    `jaxgan.training.ToyData` does; for image data pass host batches ``{"x": [L, (runs,) n_critic, B, ...], ...}``.
    With a ``mesh`` (vmapped only) each device runs the steps of its share of the runs
    (`jaxgan.parallel.on_seed_axis`): the inputs' runs axes are split over the seed axis (place them there with
    `_place_runs`), and so are the outputs: the state ``[runs, ...]`` ``P("seed")``, the metrics ``[L, runs]`` ``P(None, "seed")``.
    """
    raw_step = exp.train_step()
    n_critic, batch_size = config.n_critic, config.batch_size
    sampler = None
    if config.is_toy:
        sampler, _ = toy.toy_sampler(config.dataset, **experiment_lib.toy_mixture_options(config))

    def one_step(state, data_key, t, batch):
        if batch is None:  # toy data: the batch of step t of ToyData(seed)
            x = toy.draw_batch(sampler, data_key, t, n_critic * batch_size).reshape(n_critic, batch_size, -1)
            batch = {"x": x}
        return raw_step(state, batch)

    per_run = jax.vmap(one_step, in_axes=(0, 0, None, 0)) if vmapped else one_step

    def train_calls(state, data_keys, t0, batches, length):
        def run_steps(state, data_keys, t0, batches):
            def step(state, inputs):
                t, batch = inputs
                return per_run(state, data_keys, t, batch)
            # lax.scan, or the steps inlined where XLA runs convolutions slowly inside a while loop (image models on
            # CPU): the rule training's --steps_per_call follows
            steps = make_multi_step(step, length, unroll=inline_multi_steps(MODELS[config.model].convolves),
                                    every_metrics=True)
            return steps(state, (t0 + jnp.arange(length), batches))
        on_devices = parallel.on_seed_axis(run_steps, mesh, (_RUNS, _RUNS, P(), _STEPS_RUNS),
                                           (_RUNS, _STEPS_RUNS))
        return on_devices(state, data_keys, t0, batches)

    return jax.jit(train_calls, static_argnames="length", donate_argnums=0)


def _place_runs(tree, mesh: Mesh | None, axis: int = 0):
    """Stacked per-run arrays (runs on ``axis``, 0 or 1) split over the mesh's seed axis; as is without a mesh."""
    if mesh is None:
        return tree
    if axis == 0:
        return parallel.shard_seeds(tree, mesh)
    return jax.device_put(tree, NamedSharding(mesh, P(*([None] * axis), parallel.SEED_AXIS)))


@dataclasses.dataclass
class _Program:
    """What every chunk of a group is trained and evaluated with (built once per group by `_build_program`)."""
    exp: Any
    config: Config
    chunk: int
    mesh: Mesh | None
    seed_devices: int
    train_fn: Callable
    init: Callable  # (keys, hparams) -> GANState, stacked over the chunk's runs when vmapped
    final_eval: "_Evaluator"
    mid_eval: "_Evaluator"
    points: list[int]  # evaluation steps
    steps_per_call: int
    checkpoint_every: int  # 0: no checkpoints inside a chunk

    @property
    def vmapped(self) -> bool:
        return self.chunk > 1

    def next_boundary(self, t: int) -> int:
        """The next step after ``t`` where a call must end: an evaluation or a checkpoint step."""
        every = self.checkpoint_every
        nxt = min(p for p in self.points if p > t)
        return min(nxt, (t // every + 1) * every) if every else nxt


@dataclasses.dataclass
class _ChunkOut:
    """The outcome of one chunk, per member run (padding dropped); params stacked over the members."""
    params: Any
    d_params: Any
    samples: np.ndarray
    evals: list[list[dict]]
    diverged: list[int | None]
    seconds: float


def _build_program(group: Group, *, chunk, steps_per_call, eval_every, num_samples, eval_samples, w1_samples,
                   classifier, mesh, checkpoint_every) -> _Program:
    config = group.config
    if mesh is not None and parallel.data_size(mesh) != 1:
        raise SweepError(f"--mesh_data={parallel.data_size(mesh)}: a sweep does not split batches over devices; "
                         f"use a mesh with a data axis of 1 (sweep_mesh)")
    seed_devices = 1 if mesh is None else parallel.seed_size(mesh)
    mesh = mesh if seed_devices > 1 else None
    chunk = resolve_chunk(chunk, len(group.runs), platform=jax.default_backend(), model=config.model,
                          seed_devices=seed_devices)  # validates an explicit chunk before any data is loaded
    data_probe = None if config.is_toy else _image_data(group.runs[0].config)
    exp = experiment_lib.build(config, num_classes=0 if config.is_toy else data_probe.num_classes)
    eval_every = eval_every or config.log_every
    if num_samples is None:
        num_samples = config.num_samples if config.is_toy else 256
    eval_samples = eval_samples or num_samples
    final_eval = _Evaluator(exp, config, num_samples, classifier, w1_samples, mesh)
    mid_eval = final_eval if eval_samples == num_samples else _Evaluator(exp, config, eval_samples, classifier,
                                                                         mesh=mesh)
    vmapped = chunk > 1
    init = (jax.jit(parallel.on_seed_axis(jax.vmap(exp.init), mesh, (_RUNS, _RUNS), _RUNS)) if vmapped else
            jax.jit(exp.init))
    return _Program(exp, config, chunk, mesh, seed_devices, make_trainer(exp, config, vmapped, mesh), init,
                    final_eval, mid_eval, _eval_points(config.steps, eval_every),
                    steps_per_call or (eval_every if config.is_toy else 1), checkpoint_every)


def run_group(group: Group, *, chunk: int | None = None, steps_per_call: int = 0, eval_every: int = 0,
              num_samples: int | None = None, eval_samples: int = 0, w1_samples: int = 0, classifier=None,
              mesh: Mesh | None = None, log: Callable[[str], None] | None = None,
              store: "StudyStore | None" = None, group_index: int = 0, stop=None) -> GroupResult:
    """Trains every run of ``group``, ``chunk`` runs at a time (vmapped), chunk after chunk.

    Args:
      chunk: runs per vmapped chunk; None: `default_chunk`. 1 runs each run without vmap (bit-identical to
        ``launch/train.py``). The last chunk is padded with copies of its last run (their results dropped) so
        every chunk uses the same compiled program. With a ``mesh`` of K seed devices, an explicit chunk must
        be a multiple of K (`SweepError` otherwise); the default is rounded up to one.
      steps_per_call: steps per jitted call (``lax.scan``); 0: up to the next evaluation (toy data) or 1
        (image data, whose batches come from the host; on CPU, K > 1 inlines K steps in one program, not a loop:
        longer compilation, since XLA:CPU runs convolutions inside a while loop much slower;
        `jaxgan.step.inline_multi_steps`). Calls also end at checkpoint steps.
      eval_every: steps between evaluations (training metrics of that step + sample metrics); 0: config.log_every.
      num_samples: final samples per run (samples.npy and final metrics); None: config.num_samples for 2D data,
        256 for images.
      eval_samples: samples per run at intermediate evaluations; 0: as ``num_samples``.
      w1_samples: if > 0, the final metrics of 2D runs include the exact W1 to the mixture on that many samples.
      classifier: the digits classifier, a `jaxgan.evaluation.Extractor` (`jaxgan.evaluation.classifier_extractor`,
        what ``launch/evaluate.py`` uses), for ``classes_covered`` and ``classifier_score`` (the Inception Score
        with this classifier over `jaxgan.evaluation.IS_SPLITS` splits, in [1, 10]) on digit images.
      mesh: a `sweep_mesh` (``("seed", "data")``, data axis 1): the runs of every chunk are split over its
        seed axis, ``chunk / K`` runs per device. None, or a seed axis of 1: one device.
      store: a `StudyStore`: finished chunks are written there and read back instead of trained again, and the
        chunk in progress is checkpointed every ``group.config.checkpoint_every`` steps and resumed from its
        newest checkpoint. ``group_index`` names the group's folder in it.
      stop: a `jaxgan.reliability.StopRequest` (with a ``store``): when it is set, the chunk in progress is
        checkpointed after the current call and `jaxgan.reliability.TrainingInterrupted` raised.
    """
    prog = _build_program(group, chunk=chunk, steps_per_call=steps_per_call, eval_every=eval_every,
                          num_samples=num_samples, eval_samples=eval_samples, w1_samples=w1_samples,
                          classifier=classifier, mesh=mesh,
                          checkpoint_every=group.config.checkpoint_every if store is not None else 0)
    log = log or (lambda s: None)
    runs = group.runs
    outs: list[_ChunkOut] = []
    for c0 in range(0, len(runs), prog.chunk):
        members = list(range(c0, min(c0 + prog.chunk, len(runs))))
        done = None if store is None else store.load_chunk(group_index, c0, _param_structures(prog, runs, members))
        if done is None:
            if stop is not None and stop.should_stop(0, sync_point=True):
                raise reliability.TrainingInterrupted(0, stop.reason, str(store.root))
            checkpointer = None if store is None else store.checkpointer(group_index, c0, prog.config)
            try:
                done = _train_chunk(prog, group.name, runs, members, checkpointer, stop, log)
            finally:
                if checkpointer is not None:
                    checkpointer.close()
            if store is not None:
                store.save_chunk(group_index, c0, done)
        else:
            log(f"group {group.name}: runs {members[0]}-{members[-1]} of {len(runs)} read from {store.root}")
        outs.append(done)
    cat = lambda trees: jax.tree.map(lambda *xs: np.concatenate(xs), *trees)  # noqa: E731
    return GroupResult(group, cat([o.params for o in outs]), cat([o.d_params for o in outs]),
                       np.concatenate([o.samples for o in outs]), [e for o in outs for e in o.evals],
                       [d for o in outs for d in o.diverged], sum(o.seconds for o in outs),
                       len(runs) * prog.config.steps, prog.chunk, prog.seed_devices)


def _chunk_inputs(prog: _Program, runs: Sequence[RunSpec], members: list[int]):
    """(init arguments, data keys, latent keys) of a chunk; padded to ``prog.chunk`` runs when vmapped."""
    padded = members + [members[-1]] * (prog.chunk - len(members))
    keys = [jax.random.key(runs[i].seed) for i in padded]
    data_keys = [jax.random.fold_in(k, 0x5EED) for k in keys]
    latent_keys = [jax.random.fold_in(k, 7) for k in keys]  # training.py's latents_key
    if not prog.vmapped:
        return (keys[0], dict(runs[padded[0]].hparams)), data_keys[0], latent_keys[0]
    hp = {n: jnp.asarray([runs[i].hparams[n] for i in padded], jnp.float32) for n in runs[members[0]].hparams}
    args = _place_runs((jnp.stack(keys), hp), prog.mesh)
    dkeys, lkeys = _place_runs((jnp.stack(data_keys), jnp.stack(latent_keys)), prog.mesh)
    return args, dkeys, lkeys


def _param_structures(prog: _Program, runs, members):
    """Tree structures of (sample params, D params) of one run: how a stored chunk's leaves are put back."""
    args, _, _ = _chunk_inputs(prog, runs, members)
    abstract = jax.eval_shape(prog.init, *args)
    g_params = experiment_lib.sample_params(abstract, prog.config)
    return jax.tree.structure(g_params), jax.tree.structure(abstract.d.params)


def _host_batches(prog: _Program, iters, length: int):
    """``length`` image batches of every run of the chunk, ``[L, (runs,) n_critic, B, ...]``; None for toy data."""
    if iters is None:
        return None
    per = [[next(it) for _ in range(length)] for it in iters]  # [runs][length]
    stacked = [_stack([jax.tree.map(jnp.asarray, b) for b in run_batches]) for run_batches in per]
    if not prog.vmapped:
        return stacked[0]
    return _place_runs(jax.tree.map(lambda *xs: jnp.stack(xs, axis=1), *stacked), prog.mesh, 1)


def _train_chunk(prog: _Program, name: str, runs: Sequence[RunSpec], members: list[int], checkpointer, stop,
                 log) -> _ChunkOut:
    """Trains the runs ``members`` together (resuming from ``checkpointer``'s newest checkpoint if any) with the
    loop of training runs (`jaxgan.training.run_calls`): calls end at evaluation and checkpoint steps."""
    from jaxgan.training import run_calls
    config, steps, vmapped = prog.config, prog.config.steps, prog.vmapped
    args, dkeys, lkeys = _chunk_inputs(prog, runs, members)
    iters = None if config.is_toy else [_image_data(runs[i].config) for i in
                                        members + [members[-1]] * (prog.chunk - len(members))]
    t, state, evals, diverged, seconds = 0, None, [[] for _ in members], [None] * len(members), 0.0
    if checkpointer is not None:
        restored = checkpointer.restore_latest(jax.eval_shape(prog.init, *args))
        if restored is not None:
            t, state, saved = restored
            state = _place_runs(state, prog.mesh) if vmapped else state
            evals, diverged, seconds = _decode(saved["evals"]), saved["diverged"], saved["seconds"]
            for it, it_state in zip(iters or [], saved["iters"] or []):
                it.set_state(it_state)
            log(f"group {name}: runs {members[0]}-{members[-1]} resumed at step {t} from {checkpointer.directory}")
    state = prog.init(*args) if state is None else state
    start, metrics_last, samples = time.perf_counter(), None, None

    def call(t: int, n: int) -> None:
        nonlocal state, metrics_last
        state, metrics = prog.train_fn(state, dkeys, jnp.asarray(t, jnp.int32), _host_batches(prog, iters, n),
                                       length=n)
        metrics_last = _note_divergence(jax.device_get(metrics), n, t, diverged)

    def after(done: int, saving: bool) -> None:
        nonlocal samples
        if done in prog.points:
            samples = _evaluate_chunk(prog, state, lkeys, done, metrics_last, [runs[i] for i in members], evals)
            log(f"group {name}: runs {members[0]}-{members[-1]} of {len(runs)}, step {done}/{steps}"
                + (f" ({prog.seed_devices} devices)" if prog.mesh is not None else ""))

    def save(done: int) -> None:
        if checkpointer is None or done == steps:  # a finished chunk is stored by the caller (`StudyStore`)
            return
        saved = {"evals": _encode(evals), "diverged": diverged, "iters": [it.get_state() for it in iters or []],
                 "seconds": seconds + time.perf_counter() - start}
        checkpointer.save(done, state, saved, force=True)
        checkpointer.wait()  # the next call donates `state`: finish reading it first

    every = prog.checkpoint_every
    run_calls(t, steps, length=lambda t: min(prog.steps_per_call, prog.next_boundary(t) - t), call=call, after=after,
              save=save, should_save=lambda done: bool(every) and done % every == 0,
              stop=stop if checkpointer is not None else None,
              where="" if checkpointer is None else checkpointer.directory, stop_at_end=False)
    host = jax.device_get((experiment_lib.sample_params(state, config), state.d.params))
    n = len(members)
    take = (lambda tree: _slice(tree, slice(0, n))) if vmapped else (lambda tree: jax.tree.map(lambda x: x[None], tree))
    return _ChunkOut(take(host[0]), take(host[1]), samples, evals, diverged, seconds + time.perf_counter() - start)


def _note_divergence(metrics: dict, length: int, t: int, diverged: list[int | None]) -> dict:
    """Records in ``diverged`` (per member) the first non-finite step of steps ``t+1 .. t+length``; returns the
    metrics of the last step, ``{name: [runs]}``."""
    finite = np.asarray(metrics["finite"]).reshape(length, -1)  # [length, runs]
    for j in range(len(diverged)):
        bad = np.nonzero(finite[:, j] < 1)[0]
        if diverged[j] is None and bad.size:
            diverged[j] = t + int(bad[0]) + 1
    return {k: np.asarray(v)[-1].reshape(-1) for k, v in metrics.items()}


def _evaluate_chunk(prog: _Program, state, lkeys, t: int, metrics_last: dict, members: Sequence[RunSpec],
                    evals: list[list[dict]]) -> np.ndarray:
    """Appends step ``t``'s record (training metrics of the last step + sample metrics) to each member's
    ``evals``; returns the members' samples ``[members, num_samples, ...]``."""
    final = t == prog.config.steps
    evaluator = prog.final_eval if final else prog.mid_eval
    x = evaluator.samples(experiment_lib.sample_params(state, prog.config), state.g.model_state, lkeys, prog.vmapped)
    for j, run in enumerate(members):
        record = {"step": t, **{k: float(v[j]) for k, v in metrics_last.items()}}
        record.update(evaluator.metrics(x[j], run.seed, final))
        evals[j].append(record)
    return x[:len(members)]


def _encode(evals: list[list[dict]]) -> list[list[dict]]:
    """Evaluation records as strict JSON: non-finite numbers as the strings "nan", "inf", "-inf"."""
    return [[{k: (v if not isinstance(v, float) or math.isfinite(v) else repr(v)) for k, v in e.items()} for e in run]
            for run in evals]


def _decode(evals: list[list[dict]]) -> list[list[dict]]:
    return [[{k: (float(v) if isinstance(v, str) else v) for k, v in e.items()} for e in run] for run in evals]


# Study fields that may change between invocations on one workdir: they change when the state is saved, not what
# is computed (every other field, and the seeds, sweeps, groups, chunk and evaluation flags, must match).
RESUMABLE_STUDY_FIELDS = ("checkpoint_every", "keep_checkpoints")
# What write_outputs writes in a workdir (glob patterns): --overwrite removes them and the study's state.
STUDY_OUTPUTS = ("results.json", "report.md", "curves.png", "samples.npy", "samples_*.npy", "samples/*.png")


class StudyStore:
    """A study's state in ``<workdir>/study/``: the study's spec, finished chunks, checkpoints of the chunk in progress.

    ``spec.json``: what defines the study's numbers (base config, seeds, sweeps, groups, ...); a workdir is
    resumed only by the same spec (`open_study`). Per group ``g`` and chunk starting at run ``c``:
    ``group_<g>/chunk_<c>.npz`` (samples and final parameters of its runs) and ``chunk_<c>.json`` (their
    evaluation records and divergence steps), written atomically, the JSON last: it marks the chunk finished.
    While a chunk trains, ``group_<g>/chunk_<c>_checkpoints/`` holds its stacked state every
    ``--checkpoint_every`` steps (`jaxgan.checkpoint.Checkpointer`, with the evaluation records so far and the
    data positions); it is removed once the chunk is finished.
    """

    def __init__(self, workdir: str | os.PathLike):
        self.root = pathlib.Path(workdir) / "study"

    def _chunk_path(self, group_index: int, c0: int, suffix: str) -> pathlib.Path:
        return self.root / f"group_{group_index:03d}" / f"chunk_{c0:05d}{suffix}"

    def checkpointer(self, group_index: int, c0: int, config: Config):
        from jaxgan.checkpoint import Checkpointer
        return Checkpointer(self._chunk_path(group_index, c0, "_checkpoints"), save_every=config.checkpoint_every,
                            keep=config.keep_checkpoints)

    def save_chunk(self, group_index: int, c0: int, out: _ChunkOut) -> None:
        from jaxgan import logging as log_lib
        arrays = {"samples": out.samples}
        arrays.update((f"g{k}", x) for k, x in enumerate(jax.tree.leaves(out.params)))
        arrays.update((f"d{k}", x) for k, x in enumerate(jax.tree.leaves(out.d_params)))
        with log_lib.atomic_open(self._chunk_path(group_index, c0, ".npz")) as f:
            np.savez(f, **arrays)
        record = {"evals": _encode(out.evals), "diverged": out.diverged, "seconds": out.seconds}
        log_lib.atomic_write_text(self._chunk_path(group_index, c0, ".json"), json.dumps(record, allow_nan=False))
        shutil.rmtree(self._chunk_path(group_index, c0, "_checkpoints"), ignore_errors=True)

    def load_chunk(self, group_index: int, c0: int, structures) -> _ChunkOut | None:
        """The finished chunk, or None; ``structures``: tree structures of (sample params, D params)."""
        path = self._chunk_path(group_index, c0, ".json")
        if not path.exists():
            return None
        record = json.loads(path.read_text())
        with np.load(self._chunk_path(group_index, c0, ".npz")) as z:
            leaves = {k: z[k] for k in z.files}
        def unflatten(prefix, structure):
            return jax.tree.unflatten(structure, [leaves[f"{prefix}{k}"] for k in range(structure.num_leaves)])
        return _ChunkOut(unflatten("g", structures[0]), unflatten("d", structures[1]), leaves["samples"],
                         _decode(record["evals"]), record["diverged"], record["seconds"])


def study_spec(base: Config, **flags) -> dict:
    """The spec a workdir's study is compared against: the base config (but `RESUMABLE_STUDY_FIELDS`) and
    ``flags`` (seeds, sweeps, groups, search, chunk, evaluation options: everything that changes the numbers)."""
    config = {k: v for k, v in dataclasses.asdict(base).items() if k not in RESUMABLE_STUDY_FIELDS}
    return json.loads(json.dumps({"base": config, **flags}))


def _spec_differences(stored: Mapping, spec: Mapping) -> list[str]:
    out = []
    for key in sorted(set(stored) | set(spec)):
        if key == "base":
            a, b = stored.get("base", {}), spec.get("base", {})
            out += [f"--{k}={b.get(k)!r} (workdir has {a.get(k)!r})" for k in sorted(set(a) | set(b))
                    if a.get(k) != b.get(k)]
        elif stored.get(key) != spec.get(key):
            out.append(f"--{key}={spec.get(key)!r} (workdir has {stored.get(key)!r})")
    return out


def open_study(workdir: str | os.PathLike, spec: Mapping, *, overwrite: bool = False) -> StudyStore:
    """The `StudyStore` of ``workdir`` for the study ``spec`` (`study_spec`), created or resumed.

    A workdir holding another study (a different spec, or outputs of a study without one) raises `SweepError`
    unless ``overwrite``, which removes that study's state and outputs (`STUDY_OUTPUTS`) and nothing else.
    """
    from jaxgan import logging as log_lib
    workdir = pathlib.Path(workdir)
    store = StudyStore(workdir)
    path = store.root / "spec.json"
    if overwrite:
        shutil.rmtree(store.root, ignore_errors=True)
        for pattern in STUDY_OUTPUTS:
            for old in workdir.glob(pattern):
                old.unlink()
    elif path.exists():
        diff = _spec_differences(json.loads(path.read_text()), spec)
        if diff:
            raise SweepError(f"--workdir={workdir} holds a different study: {'; '.join(diff)}; use another --workdir "
                             f"or pass --overwrite")
    elif (workdir / "results.json").exists():
        raise SweepError(f"--workdir={workdir} holds the results of a study without {path.relative_to(workdir)} "
                         f"(another study, or an older version's); use another --workdir or pass --overwrite")
    store.root.mkdir(parents=True, exist_ok=True)
    log_lib.atomic_write_text(path, json.dumps(dict(spec), indent=1, sort_keys=True))
    return store


def _image_data(config: Config):
    from jaxgan.training import make_data
    return make_data(config)


def run_study(groups: Sequence[Group], *, store: StudyStore | None = None,
              on_group_done: Callable[[list[GroupResult]], None] | None = None, **kwargs) -> list[GroupResult]:
    """`run_group` on every group, one after another; ``on_group_done(results so far)`` after each.

    With a ``store`` (`open_study`) the study resumes where the store's previous invocation stopped, and
    SIGTERM/SIGINT (`jaxgan.reliability.StopRequest`) checkpoint the chunk in progress after the current call
    and raise `jaxgan.reliability.TrainingInterrupted`.
    """
    results: list[GroupResult] = []
    with (reliability.StopRequest() if store is not None else contextlib.nullcontext()) as stop:
        for index, group in enumerate(groups):
            results.append(run_group(group, store=store, group_index=index, stop=stop, **kwargs))
            if on_group_done is not None:
                on_group_done(results)
    return results


# ------------------------------------------------------------------------------------------- aggregation

# Metrics summarised in the report, in this order, with display names and scale (x100 for percentages).
REPORT_METRICS = (("modes_captured", "modes", 1.0), ("high_quality_fraction", "% HQ", 100.0),
                  ("reverse_kl", "rev. KL", 1.0), ("w1", "W1", 1.0), ("classes_covered", "classes", 1.0),
                  ("classifier_score", "cls. score", 1.0), ("fcd", "FCD", 1.0))


def _finite_or_none(v):
    return float(v) if isinstance(v, (int, float, np.floating)) and math.isfinite(float(v)) else None


def results_records(results: Sequence[GroupResult]) -> list[dict]:
    """One JSON-ready record per run (non-finite numbers become null)."""
    records = []
    for res in results:
        for i, run in enumerate(res.group.runs):
            final = res.evals[i][-1] if res.evals[i] else {}
            records.append({
                "run": run.index, "group": run.group, "configuration": run.configuration, "seed": run.seed,
                "loss": run.config.loss, "penalty": run.config.penalty,
                "hparams": dict(run.hparams), "swept": dict(run.swept),
                "diverged": res.diverged_step[i] is not None, "diverged_step": res.diverged_step[i],
                "final": {k: _finite_or_none(v) for k, v in final.items() if k != "step"},
                "evals": [{k: (v if k == "step" else _finite_or_none(v)) for k, v in e.items()} for e in res.evals[i]],
            })
    return records


def mean_se(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean and standard error (sample std with ddof=1 over sqrt(n); 0 for one value) of the finite values."""
    a = np.asarray([v for v in values if v is not None and math.isfinite(v)], np.float64)
    if a.size == 0:
        return math.nan, math.nan, 0
    se = float(np.std(a, ddof=1) / np.sqrt(a.size)) if a.size > 1 else 0.0
    return float(np.mean(a)), se, int(a.size)


def aggregate(records: Sequence[dict]) -> list[dict]:
    """Per configuration (in first-seen order): runs, diverged, and mean/s.e. of each final metric."""
    configs: dict[str, list[dict]] = {}
    for r in records:
        configs.setdefault(r["configuration"], []).append(r)
    rows = []
    for name, rs in configs.items():
        row = {"configuration": name, "runs": len(rs), "diverged": sum(r["diverged"] for r in rs)}
        for key, _, _ in REPORT_METRICS:
            vals = [r["final"].get(key) for r in rs]
            if any(v is not None for v in vals):
                row[key] = mean_se(vals)
        rows.append(row)
    return rows


def format_report(records: Sequence[dict], study: Mapping[str, Any], results: Sequence[GroupResult] = ()) -> str:
    rows = aggregate(records)
    keys = [k for k, _, _ in REPORT_METRICS if any(k in r for r in rows)]
    labels = {k: (lab, sc) for k, lab, sc in REPORT_METRICS}
    lines = ["# Sweep report", ""]
    lines.append(f"Base config: `{json.dumps(study.get('base', {}), sort_keys=True)}`" if study.get("base") else "")
    for k in ("command", "seeds", "steps", "sweep", "losses", "search", "platform"):
        if study.get(k) not in (None, "", []):
            lines.append(f"- {k}: `{study[k]}`")
    for res in results:
        devices = f" over {res.seed_devices} devices" if res.seed_devices > 1 else ""
        lines.append(f"- group `{res.group.name}`: {len(res.group.runs)} runs, chunk {res.chunk}{devices}, "
                     f"{res.seconds:.1f} s ({res.model_steps / max(res.seconds, 1e-9):.0f} model-steps/s incl. "
                     f"compilation)")
    lines += ["", "Final metrics, mean ± standard error over seeds (s.e. = sample std / sqrt(n)); diverged runs "
              "count with the metrics of their non-finite samples (0 modes, 0 % HQ).", ""]
    header = ["configuration", "runs", "diverged"] + [labels[k][0] for k in keys]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for r in rows:
        cells = [r["configuration"], str(r["runs"]), str(r["diverged"])]
        for k in keys:
            if k not in r:
                cells.append("–")
                continue
            m, se, _ = r[k]
            sc = labels[k][1]
            cells.append(f"{m * sc:.3f} ± {se * sc:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(line for line in lines if line is not None) + "\n"


def plot_curves(records: Sequence[dict], out_png: str | os.PathLike,
                metrics: Sequence[str] = ("modes_captured", "high_quality_fraction", "reverse_kl", "classes_covered",
                                          "fcd", "ada_p", "d/total", "g/total", "g/grad_norm")) -> None:
    """Per configuration, the mean of each metric over seeds with a ± 1 std band (spread of the runs).

    Gradient norms are drawn on a log scale.
    """
    from jaxgan import logging as log_lib
    configs: dict[str, list[dict]] = {}
    for r in records:
        configs.setdefault(r["configuration"], []).append(r)
    metrics = [m for m in metrics if any(m in e for r in records for e in r["evals"])]
    if not metrics:
        return
    fig, axes = log_lib.new_figure(1, len(metrics), (4.2, 3.4))
    for ax, m in zip(axes[0], metrics):
        for name, rs in configs.items():
            steps = [e["step"] for e in rs[0]["evals"]]
            vals = np.asarray([[np.nan if e.get(m) is None else e[m] for e in r["evals"]] for r in rs], np.float64)
            with np.errstate(all="ignore"):
                import warnings
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    mean, std = np.nanmean(vals, 0), np.nanstd(vals, 0)
            ax.plot(steps, mean, label=name, linewidth=1.0)
            ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
        ax.set_title(m, fontsize="small")
        if m.endswith("grad_norm"):
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
    if len(configs) <= 12:
        axes[0][0].legend(fontsize="x-small")
    fig.tight_layout()
    log_lib.save_figure(fig, out_png)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in name)[:120] or "base"


def write_outputs(workdir: str | os.PathLike, results: Sequence[GroupResult], study: Mapping[str, Any],
                  *, max_panels: int = 16, complete: bool = True) -> list[dict]:
    """Writes results.json, samples.npy, report.md, curves.png and sample plots; returns the records.

    ``complete``: whether ``results`` are all the study's groups (results.json's ``complete``; a study writes its
    outputs again as each group finishes)."""
    from jaxgan import logging as log_lib
    from jaxgan.workdir import check_path
    workdir = check_path(workdir)  # an empty path ('' is the current directory) is refused
    workdir.mkdir(parents=True, exist_ok=True)
    records = results_records(results)
    payload = {"study": dict(study), "complete": complete, "runs": records}
    log_lib.atomic_write_text(workdir / "results.json", json.dumps(payload, indent=1, allow_nan=False))
    shapes = {r.samples.shape[1:] for r in results}
    if len(shapes) == 1:
        np.save(workdir / "samples.npy", np.concatenate([r.samples for r in results]))
    else:  # groups with different sample shapes cannot share one array
        for r in results:
            np.save(workdir / f"samples_{_slug(r.group.name)}.npy", r.samples)
    log_lib.atomic_write_text(workdir / "report.md", format_report(records, study, results))
    plot_curves(records, workdir / "curves.png")
    (workdir / "samples").mkdir(exist_ok=True)
    for res in results:
        by_config: dict[str, list[int]] = {}
        for i, run in enumerate(res.group.runs):
            by_config.setdefault(run.configuration, []).append(i)
        for name, idx in by_config.items():
            idx = idx[:max_panels]
            x = res.samples[idx]
            path = workdir / "samples" / f"{_slug(name)}.png"
            if x.ndim == 3 and x.shape[-1] == 2:
                means = experiment_lib.build(res.group.config).mixture
                titles = []
                for i in idx:
                    final = res.evals[i][-1]
                    tag = f" {final['modes_captured']:.0f} modes" if "modes_captured" in final else ""
                    titles.append(f"seed {res.group.runs[i].seed}{tag}")
                log_lib.plot_samples_2d(x, path, means=None if means is None else means.means, titles=titles)
            elif x.ndim == 5:
                log_lib.save_image_grid(path, np.clip(np.nan_to_num(x[:, :8].reshape((-1,) + x.shape[2:])), -1, 1),
                                        ncols=8)
    return records
