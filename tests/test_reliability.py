"""Preemption and exact resume (SIGTERM, SIGKILL), the NaN/Inf guard (stop, skip, rollback), atomic checkpoints.

The kill tests run tiny MLP GANs on ring8 as subprocesses of ``launch/train.py``, stop them at a random step and
check that the resumed run ends with the uninterrupted run's generator parameters, bit for bit.
"""
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, subprocess_xla_flags
from jaxgan import experiment, reliability, training, xla_flags
from jaxgan.checkpoint import Checkpointer

CACHE = str(REPO / ".jax_cache")
TINY = ["--dataset=ring8", "--width=16", "--depth=2", "--batch_size=32", "--num_samples=200"]
STEPS = 60
KILL = [f"--steps={STEPS}", "--log_every=1", "--checkpoint_every=10"]
# one CPU device, so the subprocesses do not compete for the 2 cores with collectives
ENV = {**os.environ, "XLA_FLAGS": subprocess_xla_flags(1), "JAX_PLATFORMS": "cpu"}
SEED = int(os.environ.get("JAXGAN_TEST_SEED", time.time_ns() % 10_000))


def command(workdir, *args):
    return [sys.executable, str(REPO / "launch" / "train.py"), *TINY, f"--workdir={workdir}",
            f"--jax_cache_dir={CACHE}", *args]


def run(workdir, *args, timeout=300):
    return subprocess.run(command(workdir, *args), capture_output=True, text=True, timeout=timeout, cwd=REPO, env=ENV)


def error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def logged_steps(workdir):
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines(keepends=True) if line.endswith("\n")]


def start_and_wait(workdir, step, *args):
    """Starts a run and returns it once metrics.jsonl shows ``step`` (it keeps running)."""
    proc = subprocess.Popen(command(workdir, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO, env=ENV)
    deadline = time.monotonic() + 240
    while not any(s >= step for s in logged_steps(workdir)):
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"run ended (rc {proc.returncode}) before step {step}: {err[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no step {step} within 240 s")
        time.sleep(0.02)
    return proc


def generator_params(workdir, step=None):
    _, state = training.load_run(workdir, step)
    return int(state.step), jax.device_get(state.g.params), jax.device_get(state.g_ema_params)


def assert_bitwise_equal(a, b):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of STEPS steps: (workdir, generator params at STEPS)."""
    workdir = tmp_path_factory.mktemp("reference") / "w"
    result = run(workdir, *KILL)
    assert result.returncode == 0, result.stderr[-3000:]
    step, params, _ = generator_params(workdir)
    assert step == STEPS
    return workdir, params


def test_workdir_records_what_a_rerun_needs(reference):
    import dataclasses
    workdir = reference[0]
    config = json.loads((workdir / "config.json").read_text())
    # every resolved flag (a subset check: the Config may have grown since the subprocess started)
    assert {"dataset", "model", "loss", "g_lr", "seed", "steps", "on_nan"} <= set(config)
    assert set(config) <= {f.name for f in dataclasses.fields(experiment.Config)}
    assert config["width"] == 16 and config["steps"] == STEPS
    info = json.loads((workdir / "run_info.json").read_text())
    for package in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy"):
        assert info["versions"][package]
    assert info["device_kind"] and info["device_count"] == 1 and info["platform"] == "cpu"
    assert len(info["git_revision"]) == 40 and isinstance(info["git_dirty"], bool)
    assert info["command"][0].endswith("train.py") and f"--workdir={workdir}" in info["command"]
    # The flags the run used: the caller's plus jaxgan's XLA:CPU default (jaxgan/xla_flags.py).
    assert info["environment"]["XLA_FLAGS"] == (f'{ENV["XLA_FLAGS"]} {xla_flags.YNN_FUSION_FLAG}='
                                                f'{xla_flags.CPU_YNN_FUSIONS}')


def test_sigterm_at_a_random_step_then_resume_is_bit_exact(reference, tmp_path):
    workdir = tmp_path / "w"
    k = random.Random(SEED).randint(3, STEPS - 10)
    proc = start_and_wait(workdir, k, *KILL)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert not error_lines(err) and "Traceback" not in err
    match = re.search(r"SIGTERM: stopped after step (\d+) with a checkpoint in (\S+); resume with: (.+)", out)
    assert match, out
    stopped = int(match.group(1))
    assert k <= stopped < STEPS, (k, stopped)
    # the stop step was checkpointed (synchronously, so it is complete) and every step up to it was logged
    assert Checkpointer(workdir / "checkpoints", save_every=10).latest_step() == stopped
    assert logged_steps(workdir) == list(range(1, stopped + 1))
    # the printed command resumes the run
    resumed = subprocess.run(["bash", "-c", match.group(3)], capture_output=True, text=True, timeout=300, env=ENV)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert logged_steps(workdir) == list(range(1, STEPS + 1))
    step, params, _ = generator_params(workdir)
    assert step == STEPS
    assert_bitwise_equal(params, reference[1])


def test_sigkill_at_a_random_step_then_resume_is_bit_exact(reference, tmp_path):
    workdir = tmp_path / "w"
    k = random.Random(SEED + 1).randint(12, STEPS - 5)  # past the first periodic checkpoint (step 10)
    proc = start_and_wait(workdir, k, *KILL)
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    before = Checkpointer(workdir / "checkpoints", save_every=10).all_steps()
    assert before and max(before) >= 10
    result = run(workdir, *KILL)  # the same command again
    assert result.returncode == 0, result.stderr[-3000:]
    assert logged_steps(workdir) == list(range(1, STEPS + 1))  # no duplicated or missing metric lines
    step, params, _ = generator_params(workdir)
    assert step == STEPS
    assert_bitwise_equal(params, reference[1])


_WRITER = """
import os, signal, sys
import jax, jax.numpy as jnp
from jaxgan.checkpoint import Checkpointer
ckpt = Checkpointer(sys.argv[1], save_every=1)
small = {"w": jnp.ones((4,))}
ckpt.save(1, small, {"batches": 1}); ckpt.wait()
big = {"w": jax.random.normal(jax.random.key(0), (32, 1024, 1024))}  # 128 MB: the write takes a while
ckpt.save(2, big, {"batches": 2})  # asynchronous: returns while the data is written
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_checkpoint_write_killed_midway_is_never_restored(tmp_path):
    """SIGKILL during a checkpoint write leaves only a tmp dir, which restore ignores; the next save cleans it."""
    directory = tmp_path / "ckpt"
    result = subprocess.run([sys.executable, "-c", _WRITER, str(directory)], capture_output=True, text=True,
                            timeout=120, cwd=REPO, env={**ENV, "PYTHONPATH": str(REPO)})
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    names = sorted(p.name for p in directory.iterdir())
    assert "2" not in names and "1" in names, names
    with Checkpointer(directory, save_every=1) as ckpt:
        assert ckpt.all_steps() == [1]
        step, state, data_state = ckpt.restore_latest({"w": jax.ShapeDtypeStruct((4,), jnp.float32)})
        assert step == 1 and data_state == {"batches": 1}
        np.testing.assert_array_equal(np.asarray(state["w"]), np.ones(4))
    # the same with a hand-made partial write of a later step (a step dir's files truncated)
    partial = directory / "7.orbax-checkpoint-tmp"
    partial.mkdir(exist_ok=True)
    (partial / "_CHECKPOINT_METADATA").write_text('{"truncat')
    with Checkpointer(directory, save_every=1) as ckpt:
        assert ckpt.latest_step() == 1
        ckpt.save(2, {"w": jnp.zeros((4,))}, {"batches": 2}, force=True)
    assert not any(p.name.endswith("orbax-checkpoint-tmp") for p in directory.iterdir())


# ------------------------------------------------------------------------------------------------- NaN guard

DIVERGE = ["--optimizer=sgd", "--g_lr=1e3", "--d_lr=1e3", "--steps=30", "--log_every=5", "--checkpoint_every=5"]


def test_divergence_stops_with_message_and_exit_code_and_a_good_checkpoint(tmp_path):
    workdir = tmp_path / "w"
    result = run(workdir, *DIVERGE)
    assert result.returncode == reliability.EXIT_DIVERGED == 3, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    [line] = error_lines(result.stderr)
    match = re.search(r"diverged at step (\d+).*: loss term (d/loss|g/loss) became NaN/Inf first.*last good "
                      r"checkpoint: step (\d+) in (\S+);", line)
    assert match, line
    first, good = int(match.group(1)), int(match.group(3))
    assert good < first
    # every checkpoint left is finite; the last good one is the newest
    with Checkpointer(workdir / "checkpoints", save_every=5) as ckpt:
        assert max(ckpt.all_steps()) == good
    for step in Checkpointer(workdir / "checkpoints", save_every=5).all_steps():
        _, state = training.load_run(workdir, step)
        assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves((state.g.params, state.d.params)))


def test_rollback_recovers_and_finishes(tmp_path):
    workdir = tmp_path / "w"
    result = run(workdir, *DIVERGE, "--on_nan=rollback", "--nan_lr_factor=1e-6")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rollback 1 of 3" in result.stderr
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [5, 10, 15, 20, 25, 30]
    assert all(r["finite"] == 1.0 for r in records)
    _, state = training.load_run(workdir)
    assert int(state.step) == 30
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves((state.g.params, state.d.params)))
    lr = float(reliability.learning_rates(state)[0])
    assert lr <= 1e3 * 1e-6 * 1.0001  # the learning rates were lowered (and that is in the checkpoint)


def _tiny_experiment(**overrides):
    config = experiment.Config(**{"width": 8, "depth": 1, "batch_size": 16, **overrides})
    return experiment.build(config)


def test_guard_names_the_first_nonfinite_term_and_skip_discards_the_update():
    exp = _tiny_experiment()
    raw = exp.train_step()
    state = exp.init(jax.random.key(0))
    good = {"x": jax.random.normal(jax.random.key(1), (1, 16, 2))}
    bad = {"x": good["x"].at[0, 3, 0].set(jnp.nan)}
    names = reliability.metric_names(raw, state, good)
    record = reliability.nan_record_init(names)
    skip = jax.jit(reliability.guard_step(raw, "skip"))
    s1, m1, record = skip(state, good, record)
    assert float(m1["skipped"]) == 0.0 and reliability.read_record(record)[0] == -1
    s2, m2, record = skip(s1, bad, record)
    first, count, terms = reliability.read_record(record)
    assert float(m2["skipped"]) == 1.0 and first == 2 and count == 1
    assert "d/loss" in terms
    assert_bitwise_equal((s2.g.params, s2.d.params, s2.d.opt_state), (s1.g.params, s1.d.params, s1.d.opt_state))
    assert int(s2.step) == 2  # the step counter and key advance; the next batch is used normally
    s3, m3, record = skip(s2, good, record)
    assert float(m3["skipped"]) == 0.0 and reliability.read_record(record)[:2] == (2, 1)
    message = reliability.divergence_message(first, terms, 5, 1, "/ckpt")
    assert message.startswith("diverged at step 2 (detected at step 5): loss term d/loss became NaN/Inf first")
    assert "last good checkpoint: step 1 in /ckpt" in message
    # with "stop" the state is not protected but the record is the same
    stop = jax.jit(reliability.guard_step(raw, "stop"))
    _, m, record = stop(s1, bad, reliability.nan_record_init(names))
    assert float(m["finite"]) == 0.0 and reliability.read_record(record)[0] == 2


def test_set_learning_rates_reaches_inject_hyperparams_states():
    exp = _tiny_experiment(lr_decay="linear", g_lr=1e-3, d_lr=2e-3)
    state = exp.init(jax.random.key(0))
    assert reliability.learning_rates(state) == pytest.approx((1e-3, 2e-3))
    state = reliability.set_learning_rates(state, 5e-4, 1e-4)
    assert reliability.learning_rates(state) == pytest.approx((5e-4, 1e-4))
    assert float(state.hparams["g_lr"]) == pytest.approx(5e-4)


def test_stop_request_catches_signals_and_restores_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with reliability.StopRequest() as stop:
        assert not stop.should_stop(1, sync_point=True)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert stop.reason == "SIGTERM" and stop.should_stop(2, sync_point=False)
    assert signal.getsignal(signal.SIGTERM) is before


def test_resume_command_drops_overwrite():
    cmd = reliability.resume_command(["launch/train.py", "--workdir=/a b", "--overwrite", "--steps=5"], cwd="/r")
    assert cmd.startswith("cd /r && ") and "--overwrite" not in cmd
    assert "'--workdir=/a b'" in cmd and cmd.endswith("launch/train.py '--workdir=/a b' --steps=5")


def test_divergence_message_hint_depends_on_whether_a_checkpoint_exists():
    with_checkpoint = reliability.divergence_message(7, ["d/loss"], 10, 5, "/ckpt")
    assert with_checkpoint.endswith("; last good checkpoint: step 5 in /ckpt; rerun with --on_nan=rollback to "
                                    "continue from it with lower learning rates (--nan_lr_factor)")
    without = reliability.divergence_message(3, ["d/loss"], 5, None, "/ckpt")
    assert "no checkpoint was written yet in /ckpt" in without and "continue from it" not in without
    assert without.endswith("nothing to continue from: rerun with --on_nan=rollback to restart from step 0 with "
                            "lower learning rates (--nan_lr_factor), or with lower --g_lr/--d_lr and --overwrite")
    for policy in ("skip", "rollback"):  # these policies already acted; no rerun hint
        assert "rerun" not in reliability.divergence_message(3, ["d/loss"], 5, None, "/ckpt", policy=policy)


def test_overwrite_clears_the_previous_runs_outputs_and_keeps_unknown_files(tmp_path):
    import dataclasses
    config = experiment.Config(width=8, depth=1, batch_size=16, steps=4, log_every=2, sample_every=2,
                               checkpoint_every=2, num_samples=100)
    training.train(config, tmp_path)
    old_events = {p.name for p in (tmp_path / "tb").iterdir()}
    assert old_events and sorted(p.name for p in (tmp_path / "samples").iterdir()) == [
        "step_0000002.png", "step_0000004.png"]
    for name in ("eval.json", "eval_step_4.json", "notes.txt", "samples/mine.png", "tb/mine.txt"):
        (tmp_path / name).write_text("{}")
    training.train(dataclasses.replace(config, seed=1, steps=2, sample_every=0), tmp_path, overwrite=True)
    assert not old_events & {p.name for p in (tmp_path / "tb").iterdir()}  # TensorBoard shows only the new run
    assert sorted(p.name for p in (tmp_path / "tb").iterdir() if not p.name.startswith("events.")) == ["mine.txt"]
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["mine.png"]
    assert not (tmp_path / "eval.json").exists() and not (tmp_path / "eval_step_4.json").exists()
    assert (tmp_path / "notes.txt").exists()
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [2]
    assert json.loads((tmp_path / "final_metrics.json").read_text())["step"] == 2
    assert max(Checkpointer(tmp_path / "checkpoints", save_every=2).all_steps()) == 2  # not the old run's 4
