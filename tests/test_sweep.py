"""Sweeps: vmapped chunks equal separate runs, per-run hparams, chunking, bad input, results/report files."""
import dataclasses
import json
import math
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxgan import experiment as experiment_lib
from jaxgan import sweep
from jaxgan.experiment import Config
from jaxgan.training import make_data

from conftest import REPO

BASE = Config(dataset="ring8", width=16, depth=1, batch_size=32, steps=6, log_every=3, num_samples=200,
              g_lr=1e-3, d_lr=1e-3)
SWEEP = [("g_lr", [1e-3, 3e-3])]
SEEDS = [5, 9]


def separate_run(config: Config):
    """What launch/train.py does (training.train without files): jit(init)(key(seed)), jit(step) on ToyData."""
    exp = experiment_lib.build(config)
    data = make_data(config)
    state = jax.jit(exp.init)(jax.random.key(config.seed))
    step = jax.jit(exp.train_step(), donate_argnums=0)
    for _ in range(config.steps):
        state, _ = step(state, next(data))
    return jax.device_get(state.g.params), jax.device_get(state.d.params)


def max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in
               zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def leaf(tree, i):
    return jax.tree.map(lambda x: x[i], tree)


@pytest.fixture(scope="module")
def groups():
    return sweep.plan(BASE, seeds=SEEDS, sweep=SWEEP)


@pytest.fixture(scope="module")
def vmapped(groups):
    return sweep.run_group(groups[0], chunk=4, w1_samples=100)


@pytest.fixture(scope="module")
def sequential(groups):
    return sweep.run_group(groups[0], chunk=1)


@pytest.fixture(scope="module")
def separate(groups):
    return [separate_run(run.config) for run in groups[0].runs]


def test_plan_crosses_hparams_with_seeds(groups):
    (group,) = groups
    assert [(r.hparams["g_lr"], r.seed) for r in group.runs] == [(1e-3, 5), (1e-3, 9), (3e-3, 5), (3e-3, 9)]
    assert [r.config.g_lr for r in group.runs] == [1e-3, 1e-3, 3e-3, 3e-3]
    assert group.runs[2].configuration == "g_lr=0.003"


def test_sequential_chunks_bit_identical_to_separate_runs(sequential, separate):
    for i, (g, d) in enumerate(separate):
        assert max_diff(leaf(sequential.final_params, i), g) == 0.0
        assert max_diff(leaf(sequential.final_d_params, i), d) == 0.0


def test_vmapped_sweep_equals_separate_runs(vmapped, separate):
    # Batched matmuls under vmap sum in another order on XLA:CPU: equal to float32 rounding, not bit-identical.
    for i, (g, d) in enumerate(separate):
        assert max_diff(leaf(vmapped.final_params, i), g) < 1e-6
        assert max_diff(leaf(vmapped.final_d_params, i), d) < 1e-6


def test_per_run_learning_rates_differ(vmapped, separate):
    # Same seed, different g_lr: different generators; each equals its own separate run (checked above).
    assert max_diff(leaf(vmapped.final_params, 0), leaf(vmapped.final_params, 2)) > 1e-4
    # A run trained with the other run's lr would not match: the lr really is per run.
    assert max_diff(leaf(vmapped.final_params, 2), separate[0][0]) > 1e-4


def test_chunking_equals_one_chunk(groups, vmapped):
    chunked = sweep.run_group(groups[0], chunk=3)  # chunks of 3 and 1 (padded to 3)
    assert chunked.chunk == 3
    assert max_diff(chunked.final_params, vmapped.final_params) < 1e-6
    for a, b in zip(chunked.evals, vmapped.evals):
        assert [e["step"] for e in a] == [3, 6]
        assert a[-1]["modes_captured"] == b[-1]["modes_captured"]


def test_results_and_report(tmp_path, vmapped, sequential):
    records = sweep.write_outputs(tmp_path, [vmapped], {"seeds": 2, "steps": BASE.steps})
    data = json.loads((tmp_path / "results.json").read_text())
    assert len(data["runs"]) == 4 and data["runs"] == json.loads(json.dumps(records))
    run = data["runs"][3]
    assert run["seed"] == 9 and run["hparams"]["g_lr"] == pytest.approx(3e-3) and run["diverged"] is False
    assert [e["step"] for e in run["evals"]] == [3, 6]
    assert set(run["final"]) >= {"modes_captured", "high_quality_fraction", "reverse_kl", "w1", "d/total", "finite"}
    samples = np.load(tmp_path / "samples.npy")
    assert samples.shape == (4, 200, 2)
    np.testing.assert_array_equal(samples, vmapped.samples)
    # Final mode metrics in results.json are those of samples.npy.
    from jaxgan.metrics import modes
    means = experiment_lib.build(BASE).mixture.means
    assert run["final"]["modes_captured"] == modes.mode_metrics(samples[3], means, 0.01)["modes_captured"]
    # report.md: mean ± s.e. per configuration equals numpy's on results.json.
    report = (tmp_path / "report.md").read_text()
    for config in ("g_lr=0.001", "g_lr=0.003"):
        line = next(line for line in report.splitlines() if line.startswith(f"| {config} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[1:3] == ["2", "0"]
        for cell, key, scale in zip(cells[3:], ("modes_captured", "high_quality_fraction", "reverse_kl", "w1"),
                                    (1, 100, 1, 1)):
            vals = np.asarray([r["final"][key] for r in data["runs"] if r["configuration"] == config]) * scale
            mean, se = (float(x) for x in re.match(r"(\S+) ± (\S+)", cell).groups())
            assert mean == pytest.approx(vals.mean(), abs=6e-4)
            assert se == pytest.approx(vals.std(ddof=1) / math.sqrt(len(vals)), abs=6e-4)
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert len(list((tmp_path / "samples").glob("*.png"))) == 2


def test_divergence_is_recorded_not_fatal():
    config = dataclasses.replace(BASE, steps=3, log_every=3, loss="wasserstein", num_samples=50)
    (group,) = sweep.plan(config, seeds=[0], sweep=[("g_lr", [1e-3, 1e30]), ("d_lr", [1e30])])
    res = sweep.run_group(group, chunk=2)
    assert res.diverged_step[0] is not None and res.diverged_step[1] is not None  # d_lr=1e30 blows up both
    records = sweep.results_records([res])
    assert all(r["diverged"] for r in records)
    json.dumps(records, allow_nan=False)  # non-finite numbers stored as null


@pytest.mark.parametrize("flag, message", [
    ("batch_size:32,64", "--sweep=batch_size:32,64: batch_size changes array shapes"),
    ("learning_rate:1e-4", "unknown hyperparameter 'learning_rate'"),
    ("g_lr:1e-4,fast", "--sweep=g_lr:1e-4,fast: 'fast' is not a number"),
    ("g_lr", "expected NAME:V1,V2"),
    ("g_lr:1e-4,,2e-4", "empty value"),
    ("steps:10,20", "steps is not a sweepable hyperparameter"),
])
def test_bad_sweep_flags(flag, message):
    with pytest.raises(sweep.SweepError, match=re.escape(message)):
        sweep.parse_sweep_flag(flag)


def test_bad_plans():
    with pytest.raises(sweep.SweepError, match="penalty_weight: has no effect"):
        sweep.plan(BASE, seeds=1, sweep=[("penalty_weight", [1.0, 10.0])])
    with pytest.raises(sweep.SweepError, match="unknown loss 'wgan'"):
        sweep.plan(BASE, seeds=1, groups=["wgan"])
    with pytest.raises(sweep.SweepError, match=r"--sweep: .*--g_lr must be > 0"):
        sweep.plan(BASE, seeds=1, sweep=[("g_lr", [-1.0])])
    groups = sweep.plan(BASE, seeds=2, groups=["non_saturating", "wasserstein+clip_weights=0.01+n_critic=2"])
    assert [g.name for g in groups] == ["non_saturating", "wasserstein+clip_weights=0.01+n_critic=2"]
    assert groups[1].config.clip_weights == 0.01 and groups[1].config.n_critic == 2
    assert [r.index for g in groups for r in g.runs] == [0, 1, 2, 3]
    # A program field in --sweep becomes separate groups.
    groups = sweep.plan(dataclasses.replace(BASE, loss="wasserstein"), seeds=1,
                        sweep=[("clip_weights", [0.01, 0.1]), ("d_lr", [1e-4, 1e-3])])
    assert [(g.name, len(g.runs)) for g in groups] == [("clip_weights=0.01", 2), ("clip_weights=0.1", 2)]


def test_launcher_bad_input_is_one_line():
    proc = subprocess.run([sys.executable, "launch/sweep.py", "--workdir=/nonexistent", "--seeds=2",
                           "--sweep=width:8,16"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("error: --sweep=width:8,16: width changes array shapes")


def test_random_search_draws_log_uniform_within_range():
    (group,) = sweep.plan(BASE, seeds=2, sweep=[("g_lr", [1e-4, 1e-2]), ("label_smoothing", [0.0, 0.2])],
                          search="random", trials=5, search_seed=3)
    assert len(group.runs) == 10
    lrs = [r.hparams["g_lr"] for r in group.runs[::2]]
    assert len(set(lrs)) == 5 and all(1e-4 <= v <= 1e-2 for v in lrs)
    assert all(0.0 <= r.hparams["label_smoothing"] <= 0.2 for r in group.runs)
    again = sweep.plan(BASE, seeds=2, sweep=[("g_lr", [1e-4, 1e-2]), ("label_smoothing", [0.0, 0.2])],
                       search="random", trials=5, search_seed=3)
    assert [r.hparams for r in again[0].runs] == [r.hparams for r in group.runs]
