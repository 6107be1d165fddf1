"""Sweeps: vmapped chunks equal separate runs, per-run hparams, chunking, bad input, results/report files."""
import dataclasses
import json
import math
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxgan import experiment as experiment_lib
from jaxgan import parallel, sweep
from jaxgan.experiment import Config
from jaxgan.training import make_data

from conftest import REPO, subprocess_xla_flags

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


def assert_evals_close(got, want):
    """Per run, per evaluation: the same steps and metric names, values equal to float32 rounding."""
    for a, b in zip(got, want):
        assert [e["step"] for e in a] == [e["step"] for e in b]
        for ea, eb in zip(a, b):
            assert set(ea) == set(eb)
            for k in ea:
                assert ea[k] == pytest.approx(eb[k], rel=1e-5, abs=1e-6), k


def test_seed_sharded_chunks_equal_one_device(groups, vmapped, monkeypatch):
    mesh = sweep.sweep_mesh(dataclasses.replace(BASE, mesh_seed=2))
    shardings = []  # of the trained state, after every jitted call
    make_trainer = sweep.make_trainer

    def recording_trainer(*args, **kwargs):
        train = make_trainer(*args, **kwargs)

        def train_and_record(*a, **k):
            state, metrics = train(*a, **k)
            shardings.append(state.g.params["Dense_0"]["kernel"].sharding)
            return state, metrics
        return train_and_record
    monkeypatch.setattr(sweep, "make_trainer", recording_trainer)
    sharded = sweep.run_group(groups[0], chunk=4, w1_samples=100, mesh=mesh)
    assert sharded.chunk == 4 and sharded.seed_devices == 2
    # Each of the 2 devices trained 2 of the 4 runs.
    assert shardings and all(s.spec == P("seed") and len(s.device_set) == 2 for s in shardings)
    assert max_diff(sharded.final_params, vmapped.final_params) < 1e-6
    assert max_diff(sharded.final_d_params, vmapped.final_d_params) < 1e-6
    np.testing.assert_allclose(sharded.samples, vmapped.samples, atol=1e-6)
    assert sharded.diverged_step == vmapped.diverged_step
    assert_evals_close(sharded.evals, vmapped.evals)
    # The default chunk (8 MLP runs on CPU, capped at the 4 runs) is a multiple of the 2 devices; the report says so.
    assert sweep.resolve_chunk(None, 3, platform="cpu", model="mlp", seed_devices=2) == 4
    assert sweep.resolve_chunk(None, 5, platform="cpu", model="dcgan", seed_devices=4) == 4
    report = sweep.format_report(sweep.results_records([sharded]), {}, [sharded])
    assert "4 runs, chunk 4 over 2 devices" in report


def test_seed_devices_bad_chunk_or_device_count(groups):
    mesh = sweep.sweep_mesh(dataclasses.replace(BASE, mesh_seed=2))
    with pytest.raises(sweep.SweepError, match=re.escape("--chunk=3 is not a multiple of --mesh_seed=2") +
                       ".*use --chunk=2 or --chunk=4"):
        sweep.run_group(groups[0], chunk=3, mesh=mesh)
    too_many = jax.device_count() * 2
    with pytest.raises(parallel.ParallelError, match=f"needs {too_many} devices, but only {jax.device_count()} cpu"):
        sweep.sweep_mesh(dataclasses.replace(BASE, mesh_seed=too_many))
    with pytest.raises(sweep.SweepError, match="--mesh_data=2: a sweep does not split batches"):
        sweep.sweep_mesh(dataclasses.replace(BASE, mesh_seed=2, mesh_data=2))
    assert sweep.sweep_mesh(BASE) is None  # --mesh_seed=1: one device


def test_launcher_seed_devices(tmp_path):
    common = [sys.executable, "launch/sweep.py", "--dataset=ring8", "--width=8", "--depth=1", "--batch_size=16",
              "--steps=2", "--log_every=2", "--num_samples=50", "--w1_samples=0", f"--jax_cache_dir={REPO}/.jax_cache"]
    env = {**os.environ, "XLA_FLAGS": subprocess_xla_flags(2), "JAX_PLATFORMS": "cpu"}
    bad = subprocess.run(common + ["--workdir=/nonexistent", "--seeds=2", "--mesh_seed=2", "--chunk=3"], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert bad.stderr.startswith("error: --chunk=3 is not a multiple of --mesh_seed=2")
    ok = subprocess.run(common + [f"--workdir={tmp_path}", "--seeds=4", "--mesh_seed=2"], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "4 runs, chunk 4 over 2 devices" in (tmp_path / "report.md").read_text()
    assert len(json.loads((tmp_path / "results.json").read_text())["runs"]) == 4


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
    with pytest.raises(sweep.SweepError, match="penalty_weight.* has no effect"):
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


# ------------------------------------------------------------------------------------------ image (digits) sweeps

DIGITS = Config(dataset="digits", model="dcgan", image_size=28, width=8, latent_dim=16, batch_size=8, ema_decay=0.9,
                steps=2, log_every=1)
DIGITS_SAMPLES = 16


@pytest.fixture(scope="module")
def digits_classifier_params():
    """A random (untrained) `ConvClassifier` for 28x28x1 images, made in numpy: no training, no compilation."""
    from jaxgan.metrics import classifier
    shapes = jax.eval_shape(classifier.ConvClassifier(num_classes=10).init, jax.random.key(0),
                            np.zeros((1, 28, 28, 1), np.float32))
    rng = np.random.default_rng(0)

    def draw(s):  # fan-in scaled weights, zero biases
        if len(s.shape) == 1:
            return np.zeros(s.shape, np.float32)
        return (rng.normal(size=s.shape) / np.sqrt(np.prod(s.shape[:-1]))).astype(np.float32)
    return jax.tree.map(draw, shapes)


@pytest.fixture(scope="module")
def digits_classifier(digits_classifier_params):
    """That classifier as the `jaxgan.evaluation.Extractor` a sweep takes (logits only; no features)."""
    from jaxgan import evaluation
    from jaxgan.metrics import classifier

    def apply(images):
        return np.zeros((len(images), 0), np.float32), np.asarray(
            classifier.classifier_logits(digits_classifier_params, images))
    return evaluation.Extractor("classifier", "random", 0, 10, apply, {}, {"is": "classifier_score"})


@pytest.fixture(scope="module")
def digits_group():
    (group,) = sweep.plan(DIGITS, seeds=[3, 4])
    return group


@pytest.fixture(scope="module")
def digits_vmapped(digits_group, digits_classifier):
    return sweep.run_group(digits_group, chunk=2, num_samples=DIGITS_SAMPLES, classifier=digits_classifier)


def test_digits_sweep_samples_and_classes_covered(tmp_path, digits_vmapped, digits_classifier_params):
    from jaxgan.metrics import classifier
    res = digits_vmapped
    assert res.chunk == 2 and res.model_steps == 4 and res.diverged_step == [None, None]
    assert res.samples.shape == (2, DIGITS_SAMPLES, 28, 28, 1) and res.samples.dtype == np.float32
    assert np.all(np.isfinite(res.samples)) and np.abs(res.samples).max() <= 1.0  # tanh output
    assert not np.array_equal(res.samples[0], res.samples[1])  # the seeds differ
    for i in range(2):
        assert [e["step"] for e in res.evals[i]] == [1, 2]
        covered = res.evals[i][-1]["classes_covered"]
        assert covered == int(covered) and 1 <= covered <= 10
        # The final metric is that of the samples returned (and written to samples.npy), recounted in numpy.
        logits = np.asarray(classifier.classifier_logits(digits_classifier_params, res.samples[i]), np.float64)
        assert covered == len(np.unique(np.argmax(logits, axis=1)))
        # classifier score = launch/evaluate.py's: the mean over 10 contiguous splits (np.array_split) of
        # exp(E_x KL(p(y|x) || p(y))), recomputed in float64
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        score = np.mean([np.exp(np.mean(np.sum(q * (np.log(q) - np.log(q.mean(0))[None]), axis=1)))
                         for q in np.array_split(p, 10)])
        assert res.evals[i][-1]["classifier_score"] == pytest.approx(score, rel=1e-5)
        assert 1.0 <= score <= 10.0
    records = sweep.write_outputs(tmp_path, [res], {"seeds": 2, "steps": DIGITS.steps})
    np.testing.assert_array_equal(np.load(tmp_path / "samples.npy"), res.samples)
    assert [r["final"]["classes_covered"] for r in records] == [e[-1]["classes_covered"] for e in res.evals]
    assert "| classes |" in (tmp_path / "report.md").read_text()
    assert "| cls. score |" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "samples" / "base.png").stat().st_size > 0


def test_digits_vmapped_chunk_equals_separate_runs(digits_group, digits_vmapped, digits_classifier):
    sequential = sweep.run_group(digits_group, chunk=1, num_samples=DIGITS_SAMPLES, classifier=digits_classifier)
    assert sequential.chunk == 1
    # The generator's EMA weights (sampled), its BatchNorm statistics and D, run by run.
    assert max_diff(digits_vmapped.final_params, sequential.final_params) < 1e-6
    assert max_diff(digits_vmapped.final_d_params, sequential.final_d_params) < 1e-6
    np.testing.assert_allclose(digits_vmapped.samples, sequential.samples, atol=1e-6)
    assert_evals_close(digits_vmapped.evals, sequential.evals)


def test_digits_seed_sharded_equals_one_device(digits_group, digits_vmapped, digits_classifier):
    # Image models under vmap have convolutions that XLA's SPMD partitioner cannot split over the seed axis (XLA's
    # grouped convolutions, oneDNN's custom calls); the sweep runs each device's share of the runs under shard_map
    # instead (one run per device here).
    mesh = sweep.sweep_mesh(dataclasses.replace(DIGITS, mesh_seed=2))
    sharded = sweep.run_group(digits_group, chunk=2, num_samples=DIGITS_SAMPLES,
                              classifier=digits_classifier, mesh=mesh)
    assert sharded.seed_devices == 2
    assert max_diff(sharded.final_params, digits_vmapped.final_params) < 1e-6
    assert max_diff(sharded.final_d_params, digits_vmapped.final_d_params) < 1e-6
    np.testing.assert_allclose(sharded.samples, digits_vmapped.samples, atol=1e-6)
    assert_evals_close(sharded.evals, digits_vmapped.evals)


def test_image_steps_scanned_off_cpu_equal_inlined(monkeypatch):
    """Image sweeps inline their steps on CPU (slow convolutions in while loops) and scan them elsewhere: the same
    steps either way. Checked on CPU by pretending to be another backend."""
    config = dataclasses.replace(DIGITS, width=4, batch_size=4)
    exp = experiment_lib.build(config, num_classes=0)
    batches = {"x": jax.random.uniform(jax.random.key(5), (2, 1, 4, 28, 28, 1), minval=-1, maxval=1)}
    results, whiles = {}, {}
    for slow in (True, False):
        monkeypatch.setattr(sweep, "inline_multi_steps", lambda has_convolutions, slow=slow: has_convolutions and slow)
        train = sweep.make_trainer(exp, config, vmapped=False)
        state = jax.jit(exp.init)(jax.random.key(0))  # distinct buffers: the trainer donates the state
        args = (state, jax.random.key(1), jax.numpy.int32(0), batches)
        whiles[slow] = train.lower(*args, length=2).as_text().count("stablehlo.while")
        results[slow] = train(*args, length=2)
    assert whiles[False] == whiles[True] + 1  # the scan over the steps (the step has its own while loops)
    (inlined, m_inlined), (scanned, m_scanned) = results[True], results[False]
    assert max_diff(inlined.g.params, scanned.g.params) < 1e-6
    assert max_diff(inlined.d.params, scanned.d.params) < 1e-6
    assert max_diff(m_inlined, m_scanned) < 1e-5
    assert jax.tree.leaves(m_scanned)[0].shape[0] == 2  # metrics of every step, either way


@pytest.mark.parametrize("runs, expected, expected_conv", [(3, 3, 3), (8, 8, 4), (10, 5, 4), (17, 6, 4), (64, 8, 4)])
def test_default_chunks_are_balanced_on_cpu(runs, expected, expected_conv):
    """The CPU default of 8 MLP runs per chunk (4 convolutional GANs), balanced: equal chunks (one compiled
    program) and no small leftover chunk, whose runs vmap poorly."""
    chunk = sweep.default_chunk("cpu", "mlp", runs)
    assert chunk == expected and chunk <= 8 and -(-runs // chunk) == -(-runs // 8)
    conv = sweep.default_chunk("cpu", "dcgan", runs)
    assert conv == expected_conv and -(-runs // conv) == -(-runs // 4)
