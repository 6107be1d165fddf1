"""Studies resume: a study stopped (SIGTERM) or killed (SIGKILL) mid-way and rerun ends with the results of an
uninterrupted one; a workdir holding another study is refused unless --overwrite."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxgan import reliability, sweep
from jaxgan.experiment import Config

from conftest import REPO

BASE = Config(dataset="ring8", width=8, depth=1, batch_size=16, steps=200, log_every=50, checkpoint_every=50,
              num_samples=100)
GROUPS = ["non_saturating", "least_squares"]


def plan():
    return sweep.plan(BASE, seeds=2, groups=GROUPS)


def spec(base=(), **changes):
    """The spec of the study of `plan` (as the launcher writes it), with ``changes``; ``base``: config fields."""
    return sweep.study_spec(dataclasses.replace(BASE, **dict(base)), **{"seeds": 2, "losses": GROUPS, **changes})


def records(results):
    return json.loads(json.dumps(sweep.results_records(results)))


@pytest.fixture(scope="module")
def uninterrupted():
    return sweep.run_study(plan())


def test_sigterm_mid_group_checkpoints_and_resumes_identically(tmp_path, uninterrupted):
    store = sweep.open_study(tmp_path, spec())
    written = []

    def log(line):  # SIGTERM to this process while the second group evaluates step 100: it stops after the next call
        if line.startswith("group least_squares: runs 0-1 of 2, step 100/"):
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(reliability.TrainingInterrupted) as stopped:
        sweep.run_study(plan(), store=store, log=log, on_group_done=lambda r: written.append(len(r)))
    assert (stopped.value.step, stopped.value.reason) == (150, "SIGTERM")
    assert written == [1]  # the first group's outputs were written as it finished
    assert (store.root / "group_000" / "chunk_00000.json").exists()
    assert not (store.root / "group_001" / "chunk_00000.json").exists()
    assert (store.root / "group_001" / "chunk_00000_checkpoints" / "150").is_dir()
    lines = []
    resumed = sweep.run_study(plan(), store=sweep.open_study(tmp_path, spec()), log=lines.append)
    assert lines[0].startswith("group non_saturating: runs 0-1 of 2 read from")  # not trained again
    assert any("resumed at step 150" in line for line in lines)
    assert records(resumed) == records(uninterrupted)
    for got, want in zip(resumed, uninterrupted):
        np.testing.assert_array_equal(got.samples, want.samples)
        for a, b in zip(jax.tree.leaves(got.final_params), jax.tree.leaves(want.final_params)):
            np.testing.assert_array_equal(a, b)
    assert not (store.root / "group_001" / "chunk_00000_checkpoints").exists()  # removed once the chunk finished


def test_different_study_refused_unless_overwrite(tmp_path):
    sweep.open_study(tmp_path, spec())
    sweep.open_study(tmp_path, spec(base={"checkpoint_every": 100}))  # when it saves does not change the numbers
    with pytest.raises(sweep.SweepError, match=r"holds a different study: --seeds=3 \(workdir has 2\); use another "
                                               r"--workdir or pass --overwrite"):
        sweep.open_study(tmp_path, spec(seeds=3))
    with pytest.raises(sweep.SweepError, match=r"--g_lr=0.001 \(workdir has 0.0002\)"):
        sweep.open_study(tmp_path, spec(base={"g_lr": 1e-3}))
    (tmp_path / "study" / "group_000").mkdir()
    (tmp_path / "results.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("mine")
    sweep.open_study(tmp_path, spec(seeds=3), overwrite=True)
    assert not (tmp_path / "results.json").exists() and not (tmp_path / "study" / "group_000").exists()
    assert (tmp_path / "notes.txt").exists()  # files a study does not write stay
    assert json.loads((tmp_path / "study" / "spec.json").read_text())["seeds"] == 3
    (tmp_path / "study" / "spec.json").unlink()  # results of a study with no spec (an older version's)
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(sweep.SweepError, match="holds the results of a study without study/spec.json"):
        sweep.open_study(tmp_path, spec())


def launch(cwd, *extra):
    cwd.mkdir(exist_ok=True)
    return subprocess.Popen(
        [sys.executable, str(REPO / "launch" / "sweep.py"), "--workdir=w", "--dataset=ring8", "--width=8",
         "--depth=1", "--batch_size=16", "--steps=300", "--log_every=100", "--checkpoint_every=50",
         "--num_samples=100", "--w1_samples=0", "--seeds=2", f"--losses={','.join(GROUPS)}",
         f"--jax_cache_dir={REPO}/.jax_cache", *extra],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"})


def finish(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def interrupt_in_second_group(cwd, sig):
    """Starts the study in ``cwd`` and sends ``sig`` once its second group has a checkpoint; (rc, stdout)."""
    proc = launch(cwd)
    checkpoints = cwd / "w" / "study" / "group_001" / "chunk_00000_checkpoints"
    deadline = time.monotonic() + 300
    while not (checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir())):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-3000:]
        time.sleep(0.005)
    proc.send_signal(sig)
    rc, out, _ = finish(proc)
    assert not (cwd / "w" / "study" / "group_001" / "chunk_00000.json").exists(), "it finished before the signal"
    first = json.loads((cwd / "w" / "results.json").read_text())
    assert first["complete"] is False and {r["group"] for r in first["runs"]} == {"non_saturating"}
    return rc, out


@pytest.mark.slow
def test_killed_or_stopped_study_rerun_gives_the_uninterrupted_results(tmp_path):
    """The launcher killed (SIGKILL) or stopped (SIGTERM) once the second group has a checkpoint, then rerun: the
    same results.json as an uninterrupted study (it has no wall-clock fields; report.md's group timings differ).
    A different study in the same workdir is refused with one line."""
    rc, _, err = finish(launch(tmp_path / "a"))
    assert rc == 0, err[-3000:]
    want = (tmp_path / "a" / "w" / "results.json").read_text()
    assert json.loads(want)["complete"] is True
    rc, _ = interrupt_in_second_group(tmp_path / "b", signal.SIGKILL)
    assert rc == -signal.SIGKILL
    rc, out = interrupt_in_second_group(tmp_path / "c", signal.SIGTERM)
    assert rc == 0 and "SIGTERM: study stopped after step" in out and "resume with: " in out, out
    for cwd in ("b", "c"):
        rc, _, err = finish(launch(tmp_path / cwd))
        assert rc == 0, err[-3000:]
        assert "resumed at step" in err and "non_saturating: runs 0-1 of 2 read from" in err
        assert (tmp_path / cwd / "w" / "results.json").read_text() == want
        np.testing.assert_array_equal(np.load(tmp_path / cwd / "w" / "samples.npy"),
                                      np.load(tmp_path / "a" / "w" / "samples.npy"))
    rc, _, err = finish(launch(tmp_path / "a", "--seeds=3"))
    assert rc == 2 and err.strip().splitlines() == [
        "error: --workdir=w holds a different study: --seeds=3 (workdir has 2); use another --workdir or pass "
        "--overwrite"], err
    assert (tmp_path / "a" / "w" / "results.json").read_text() == want  # nothing written
