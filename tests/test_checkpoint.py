"""Checkpoint integrity: every kind of damage to the newest checkpoint falls back to the previous one exactly,
with one warning line; all damaged is a one-line error; readers never touch a live workdir; the NaN guard's
"last good" checkpoint is verified and finite."""
import dataclasses
import hashlib
import logging
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import REPO, subprocess_xla_flags
from jaxgan import experiment, training
from jaxgan.checkpoint import CheckpointError, Checkpointer

# width 64: the larger arrays are stored out of line in OCDBT data files, where TensorStore has no checksum
# (a flipped bit there restores silently with other values unless the integrity record catches it)
CONFIG = experiment.Config(dataset="ring8", model="mlp", width=64, depth=2, batch_size=32, steps=2,
                           checkpoint_every=1, log_every=1, num_samples=100)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A workdir with checkpoints 1 and 2 of two different states, and those states on the host."""
    exp = experiment.build(CONFIG)
    states = {step: jax.jit(exp.init)(jax.random.key(step)) for step in (1, 2)}
    workdir = tmp_path_factory.mktemp("template")
    (workdir / "config.json").write_text(CONFIG.to_json())
    with Checkpointer(workdir / "checkpoints", save_every=1) as ckpt:
        for step, state in states.items():
            ckpt.save(step, state, {"position": step * 32})
    abstract = jax.eval_shape(exp.init, jax.random.key(0))
    return workdir, abstract, {step: host_leaves(s) for step, s in states.items()}


@pytest.fixture
def workdir(template, tmp_path):
    shutil.copytree(template[0], tmp_path / "run")
    return tmp_path / "run"


def host_leaves(state) -> dict:
    """{key path: host array} of every leaf (typed PRNG keys as their key data)."""
    return {jax.tree_util.keystr(path): np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(
        x.dtype, jax.dtypes.prng_key) else x) for path, x in jax.tree_util.tree_flatten_with_path(state)[0]}


def snapshot(directory: pathlib.Path) -> dict:
    """{relative path: sha256 of the content, or "dir"} of everything under ``directory``."""
    return {str(p.relative_to(directory)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*"))}


def assert_state_equal(state, expected_leaves: dict):
    leaves = host_leaves(state)
    assert leaves.keys() == expected_leaves.keys()
    for path, value in leaves.items():
        assert value.dtype == expected_leaves[path].dtype, path
        np.testing.assert_array_equal(value, expected_leaves[path], err_msg=path)


def skip_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]


def data_file(step_dir: pathlib.Path) -> pathlib.Path:
    """The largest array data file of the state item."""
    return max((p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"),
               key=lambda p: p.stat().st_size)


def flip_bit(path: pathlib.Path, at: float = 0.5):
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 1 << 4
    path.write_bytes(bytes(data))


def garble(path: pathlib.Path):
    path.write_bytes(np.random.default_rng(0).integers(0, 256, path.stat().st_size, dtype=np.uint8).tobytes())


DAMAGE = {
    "truncate data file": lambda d: data_file(d).write_bytes(data_file(d).read_bytes()[:100]),
    "empty data file": lambda d: data_file(d).write_bytes(b""),
    "delete data file": lambda d: data_file(d).unlink(),
    "garble _METADATA": lambda d: garble(d / "state" / "_METADATA"),
    "truncate _METADATA": lambda d: (d / "state" / "_METADATA").write_text(
        (d / "state" / "_METADATA").read_text()[:500]),
    "garble manifest": lambda d: garble(d / "state" / "manifest.ocdbt"),
    "flip one bit in manifest": lambda d: flip_bit(d / "state" / "manifest.ocdbt"),
    "delete manifest": lambda d: (d / "state" / "manifest.ocdbt").unlink(),
    "garble array metadata": lambda d: garble(d / "state" / "array_metadatas" / "process_0"),
    "garble data iterator state": lambda d: garble(d / "data" / "metadata"),
    "change data iterator state": lambda d: (d / "data" / "metadata").write_text('{"position": 32}'),
    "delete integrity record file": lambda d: (d / "integrity" / "metadata").unlink(),
    "delete integrity record": lambda d: shutil.rmtree(d / "integrity"),
    "flip one bit in integrity record": lambda d: flip_bit(d / "integrity" / "metadata", 0.6),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one_exactly(template, workdir, damage, caplog):
    _, abstract, saved = template
    directory = workdir / "checkpoints"
    before_1 = snapshot(directory / "1")
    DAMAGE[damage](directory / "2")
    damaged = snapshot(directory)
    caplog.set_level(logging.WARNING)

    # a reader falls back and changes nothing
    with Checkpointer(directory, read_only=True) as ckpt:
        step, state, data_state = ckpt.restore_latest(abstract)
    assert (step, data_state) == (1, {"position": 32})
    assert_state_equal(state, saved[1])
    lines = skip_lines(caplog)
    assert len(lines) == 1 and lines[0].startswith(f"checkpoint 2 in {directory} skipped: ") and "\n" not in lines[0]
    assert len(lines[0]) < 500, lines[0]
    assert snapshot(directory) == damaged

    # a writer falls back the same way and sets the damaged one aside (renamed, not deleted) for the resumed run
    caplog.clear()
    with Checkpointer(directory, save_every=1) as ckpt:
        step, state, _ = ckpt.restore_latest(abstract)
        assert step == 1 and len(skip_lines(caplog)) == 1
        assert_state_equal(state, saved[1])
        assert ckpt.all_steps() == [1]
        ckpt.save(2, state, {"position": 64})  # the resumed run writes step 2 again
    assert snapshot(directory / "1") == before_1
    assert {k.removeprefix("2.damaged/"): v for k, v in snapshot(directory).items()
            if k.startswith("2.damaged/")} == {k.removeprefix("2/"): v for k, v in damaged.items()
                                               if k.startswith("2/")}
    with Checkpointer(directory, read_only=True) as ckpt:
        step, state, _ = ckpt.restore_latest(abstract)
    assert step == 2
    assert_state_equal(state, saved[1])


def test_one_flipped_bit_in_a_data_file_never_restores_a_different_state(template, tmp_path, caplog):
    """Without the integrity record a flipped bit in array data restores silently with other values. Now the
    restore is the newest checkpoint exactly (the bit was in bytes restore does not read) or the previous one
    exactly, with one warning line; most positions are caught."""
    _, abstract, saved = template
    caplog.set_level(logging.WARNING)
    fell_back = 0
    for i, at in enumerate(np.linspace(0.05, 0.95, 10)):
        directory = tmp_path / str(i)
        shutil.copytree(template[0] / "checkpoints", directory)
        flip_bit(data_file(directory / "2"), at)
        caplog.clear()
        with Checkpointer(directory, read_only=True) as ckpt:
            step, state, _ = ckpt.restore_latest(abstract)
        assert_state_equal(state, saved[step])
        assert len(skip_lines(caplog)) == (step == 1)
        fell_back += step == 1
    assert fell_back >= 5


@pytest.mark.parametrize("harmless", ["garble _CHECKPOINT_METADATA", "delete commit_success.txt"])
def test_damage_outside_the_data_restores_the_newest_exactly(template, workdir, harmless, caplog):
    """Files restore does not read: the newest checkpoint still verifies and restores exactly."""
    _, abstract, saved = template
    step_dir = workdir / "checkpoints" / "2"
    if harmless.startswith("garble"):
        garble(step_dir / "_CHECKPOINT_METADATA")
    else:
        (step_dir / "commit_success.txt").unlink()
    caplog.set_level(logging.WARNING)
    with Checkpointer(workdir / "checkpoints", read_only=True) as ckpt:
        step, state, _ = ckpt.restore_latest(abstract)
    assert step == 2 and not skip_lines(caplog)
    assert_state_equal(state, saved[2])


def test_every_checkpoint_damaged_is_one_line_error(template, workdir):
    _, abstract, _ = template
    directory = workdir / "checkpoints"
    flip_bit(data_file(directory / "2"))
    garble(directory / "1" / "state" / "_METADATA")
    damaged = snapshot(workdir)
    with Checkpointer(directory, save_every=1) as ckpt, pytest.raises(CheckpointError) as error:
        ckpt.restore_latest(abstract)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"every checkpoint in {directory} is damaged: step 2: ")
    assert "; step 1: it is unreadable" in message
    assert snapshot(workdir) == damaged  # nothing set aside when there is nothing to resume from

    with pytest.raises(CheckpointError, match=r"; --overwrite starts afresh"):  # the trainer
        training.train(CONFIG, workdir)
    with pytest.raises(CheckpointError, match=r"^every checkpoint in .* is damaged: step 2: .*; step 1: "):
        training.load_run(workdir)  # sample, evaluate
    with pytest.raises(CheckpointError, match=r"^checkpoint 2 in .* is damaged: "):
        training.load_run(workdir, step=2)
    assert {k: v for k, v in snapshot(workdir).items() if k.startswith("checkpoints")} == \
        {k: v for k, v in damaged.items() if k.startswith("checkpoints")}


@pytest.mark.slow
def test_sample_on_a_damaged_workdir_is_one_error_line(template, workdir, tmp_path):
    """launch/sample.py: the newest damaged -> samples from the previous one with one warning line naming the
    damaged one; all damaged -> one error line, exit code 2."""
    directory = workdir / "checkpoints"
    flip_bit(data_file(directory / "2"))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": subprocess_xla_flags(1)}
    command = [sys.executable, str(REPO / "launch" / "sample.py"), f"--workdir={workdir}", "--num=5",
               "--format=npy"]
    result = subprocess.run([*command, f"--out={tmp_path / 'a.npy'}"], capture_output=True, text=True,
                            timeout=120, cwd=REPO, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [line for line in result.stderr.splitlines() if "skipped" in line] and "Traceback" not in result.stderr
    assert np.load(tmp_path / "a.npy").shape == (5, 2)
    garble(directory / "1" / "state" / "_METADATA")
    result = subprocess.run([*command, f"--out={tmp_path / 'b.npy'}"], capture_output=True, text=True,
                            timeout=120, cwd=REPO, env=env)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr[-3000:]
    assert "every checkpoint in" in errors[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "b.npy").exists()


def test_reader_leaves_an_in_flight_checkpoint_alone_and_creates_nothing(template, workdir, tmp_path):
    """load_run (sample, evaluate) on a workdir whose trainer is writing step 3: the tmp dir stays."""
    _, _, saved = template
    in_flight = workdir / "checkpoints" / "3.orbax-checkpoint-tmp"
    (in_flight / "state").mkdir(parents=True)
    (in_flight / "state" / "_METADATA").write_text('{"tree_metadata": {"par')
    before = snapshot(workdir)
    _, state = training.load_run(workdir)
    assert_state_equal(state, saved[2])
    _, state = training.load_run(workdir, step=1)
    assert_state_equal(state, saved[1])
    assert snapshot(workdir) == before

    empty = tmp_path / "no_checkpoints"
    empty.mkdir()
    (empty / "config.json").write_text(CONFIG.to_json())
    with pytest.raises(experiment.ConfigError, match="has no checkpoint yet"):
        training.load_run(empty)
    assert sorted(p.name for p in empty.iterdir()) == ["config.json"]


def test_checkpoint_without_integrity_record_restores_with_a_warning(template, tmp_path, caplog):
    """Checkpoints written before integrity records (state and data items only) restore, unverified."""
    _, abstract, saved = template
    exp = experiment.build(CONFIG)
    state = jax.jit(exp.init)(jax.random.key(1))
    with ocp.CheckpointManager(tmp_path / "old", item_names=("state", "data")) as manager:
        manager.save(5, args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave({"p": 1})))
    caplog.set_level(logging.WARNING)
    with Checkpointer(tmp_path / "old", read_only=True) as ckpt:
        step, restored, data_state = ckpt.restore_latest(abstract)
    assert (step, data_state) == (5, {"p": 1})
    assert_state_equal(restored, saved[1])
    assert [r.getMessage() for r in caplog.records if "no integrity record" in r.getMessage()]


def test_last_good_checkpoint_is_verified_and_finite(template, tmp_path, caplog):
    """A checkpoint with NaN parameters written through the normal save path verifies (it is what was saved)
    but is never the NaN guard's last good checkpoint, nor what --on_nan=rollback restores."""
    _, abstract, saved = template
    exp = experiment.build(CONFIG)
    good = jax.jit(exp.init)(jax.random.key(1))
    nan = good.replace(d=good.d.replace(params=jax.tree.map(lambda p: p.at[..., 0].set(jnp.nan), good.d.params)))
    with Checkpointer(tmp_path / "ckpt", save_every=1) as ckpt:
        ckpt.save(10, good, {"p": 10})
        ckpt.save(20, nan, {"p": 20})
    caplog.set_level(logging.WARNING)
    with Checkpointer(tmp_path / "ckpt", read_only=True) as ckpt:
        assert ckpt.restore_latest(abstract)[0] == 20  # intact, so it verifies
        (step, state, _), damaged = training._last_good(ckpt, abstract)
    assert step == 10 and damaged == ""
    assert_state_equal(state, saved[1])
    assert any("checkpoint 20" in line and "NaN/Inf" in line for line in skip_lines(caplog))

    # the rollback itself restores the finite one (data position too), with the learning rates lowered
    class Data:
        def set_state(self, s):
            self.state = s
    data = Data()
    config = dataclasses.replace(CONFIG, nan_lr_factor=0.5)
    t, rolled = training._rollback(exp, config, (step, state, {"p": 10}), jax.random.key(0), data, {}, nan, "m", 1)
    assert t == 10 and data.state == {"p": 10}
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(rolled.d.params))


def test_restore_onto_a_mesh_verifies(template, workdir):
    """The digests are of whole arrays: a checkpoint restored replicated on 2 devices verifies too."""
    from jaxgan import parallel
    _, abstract, saved = template
    with Checkpointer(workdir / "checkpoints", read_only=True) as ckpt:
        step, state, _ = ckpt.restore_latest(parallel.abstract_on_mesh(abstract, parallel.make_mesh(2, 1)))
    assert step == 2 and len(jax.tree.leaves(state.g.params)[0].sharding.device_set) == 2
    assert_state_equal(state, saved[2])


def test_divergence_message_when_every_checkpoint_is_damaged():
    from jaxgan import reliability
    line = "every checkpoint in /c is damaged: step 20: it is unreadable: state/_METADATA is missing"
    message = reliability.divergence_message(23, ["d/loss"], 25, None, "/c", damaged=line)
    assert f"; no good checkpoint: {line}; --overwrite starts afresh" in message and "rerun" not in message
    assert "no checkpoint was written yet" in reliability.divergence_message(23, ["d/loss"], 25, None, "/c")
