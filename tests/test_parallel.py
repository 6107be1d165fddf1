"""Data parallelism, seed axis, multi-host and resharding (jaxgan.parallel), on 4 simulated CPU devices."""
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, PartitionSpec as P

from conftest import subprocess_xla_flags
from jaxgan import experiment, parallel, training
from jaxgan.checkpoint import Checkpointer
from jaxgan.experiment import Config, ConfigError

REPO = pathlib.Path(__file__).resolve().parent.parent
CACHE = REPO / ".jax_cache"

pytestmark = pytest.mark.skipif(jax.device_count() < 4, reason="needs 4 (simulated) devices; see conftest.py")


def rel_diff(a, b) -> float:
    a, b = jax.tree.leaves(a), jax.tree.leaves(b)
    num = sum(float(np.sum((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2)) for x, y in zip(a, b))
    den = sum(float(np.sum(np.asarray(x, np.float64) ** 2)) for x in a)
    return (num / den) ** 0.5


def mlp_config(**kw):
    return Config(**{**dict(dataset="ring8", model="mlp", width=16, depth=2, batch_size=32, steps=50), **kw})


def toy_batches(config, n):
    data = training.make_data(config)
    return [jax.tree.map(np.asarray, next(data)) for _ in range(n)]


def train_one_device(config, batches, key=jax.random.key(0)):
    exp = experiment.build(config)
    state = jax.jit(exp.init)(key)
    step = jax.jit(exp.train_step())
    for batch in batches:
        state, metrics = step(state, batch)
    return state, metrics


def train_data_parallel(config, batches, mesh, key=jax.random.key(0)):
    exp = experiment.build(config, axis_name=parallel.DATA_AXIS)
    state = parallel.init_replicated(exp.init, key, mesh)
    step = parallel.data_parallel_step(exp.train_step(parallel.DATA_AXIS), mesh)
    for batch in batches:
        state, metrics = step(state, parallel.shard_batch(batch, mesh))
    return state, metrics


# ------------------------------------------------------------------------------------------ equivalence

@pytest.mark.parametrize("axis_type", [AxisType.Auto, AxisType.Explicit], ids=["auto", "explicit"])
def test_mlp_four_devices_equal_one_device(axis_type):
    config = mlp_config()
    batches = toy_batches(config, 50)
    ref, ref_metrics = train_one_device(config, batches)
    mesh = parallel.make_mesh(4, 1, axis_type=axis_type)
    got, metrics = train_data_parallel(config, batches, mesh)
    assert got.g.params["Dense_0"]["kernel"].sharding.spec == P() or \
        got.g.params["Dense_0"]["kernel"].sharding.is_fully_replicated
    assert int(got.step) == 50
    assert rel_diff(ref.g.params, got.g.params) < 1e-5
    assert rel_diff(ref.d.params, got.d.params) < 1e-5
    np.testing.assert_allclose(float(metrics["g/total"]), float(ref_metrics["g/total"]), rtol=1e-5)


def test_gradients_are_averaged_not_summed():
    # Adam hides a gradient scale error (its first step is ~lr * sign(g)); plain SGD does not.
    config = mlp_config(optimizer="sgd", g_lr=0.05, d_lr=0.05)
    batches = toy_batches(config, 2)
    ref, _ = train_one_device(config, batches)
    got, _ = train_data_parallel(config, batches, parallel.make_mesh(4, 1))
    assert rel_diff(ref.d.params, got.d.params) < 1e-6
    assert rel_diff(ref.g.params, got.g.params) < 1e-6


def test_dcgan_cross_replica_batch_norm_four_devices_equal_one_device():
    config = Config(dataset="digits", model="dcgan", width=8, latent_dim=16, image_size=32, channels=1, batch_size=8,
                    steps=50)
    rng = np.random.default_rng(0)
    batches = [{"x": rng.uniform(-1, 1, (1, 8, 32, 32, 1)).astype(np.float32)} for _ in range(50)]
    ref, _ = train_one_device(config, batches)
    got, _ = train_data_parallel(config, batches, parallel.make_mesh(4, 1))
    assert "batch_stats" in got.g.model_state and "batch_stats" in got.d.model_state
    assert rel_diff(ref.g.params, got.g.params) < 1e-5
    assert rel_diff(ref.g.model_state, got.g.model_state) < 1e-5  # running BatchNorm statistics are global


def test_pmap_gives_the_shard_map_result():
    config = mlp_config()
    batches = toy_batches(config, 5)
    mesh = parallel.make_mesh(4, 1)
    want, _ = train_data_parallel(config, batches, mesh)

    exp = experiment.build(config, axis_name="data")
    pstep = jax.pmap(exp.train_step("data"), axis_name="data")  # the same per-device step
    state = jax.jit(exp.init)(jax.random.key(0))
    state = jax.tree.map(lambda x: jnp.stack([x] * 4), state)  # replicated on a leading device axis
    for batch in batches:  # [n_critic, B, ...] -> [devices, n_critic, B / devices, ...]
        local = jax.tree.map(lambda x: np.swapaxes(x.reshape((x.shape[0], 4, -1) + x.shape[2:]), 0, 1), batch)
        state, _ = pstep(state, local)
    got = jax.tree.map(lambda x: x[0], state.g.params)
    np.testing.assert_allclose(jax.tree.leaves(got)[0], jax.tree.leaves(want.g.params)[0], rtol=1e-6, atol=1e-7)
    assert rel_diff(want.g.params, got) < 1e-6


# ---------------------------------------------------------------------------------------------- seed axis

def test_seed_axis_sharded_equals_vmapped_on_one_device():
    config = mlp_config()
    batches = toy_batches(config, 10)
    keys = jax.random.split(jax.random.key(1), 8)
    exp = experiment.build(config)
    ref = jax.jit(jax.vmap(exp.init))(keys)
    vstep = jax.jit(jax.vmap(exp.train_step(), in_axes=(0, None)))
    for batch in batches:
        ref, ref_metrics = vstep(ref, batch)
    # 8 seeds on 4 devices (2 per device); and 8 seeds on a 2 (seed) x 2 (data) mesh
    for seed_devices, data_devices in [(4, 1), (2, 2)]:
        _check_seed_mesh(config, batches, keys, ref, ref_metrics, seed_devices, data_devices)


def _check_seed_mesh(config, batches, keys, ref, ref_metrics, seed_devices, data_devices):
    mesh = parallel.make_mesh(data_devices, seed_devices)
    exp_p = experiment.build(config, axis_name="data")
    state = parallel.init_seeds(exp_p.init, keys, mesh)
    assert state.g.params["Dense_0"]["kernel"].sharding.spec == P("seed")
    assert state.g.params["Dense_0"]["kernel"].addressable_shards[0].data.shape[0] == 8 // seed_devices
    step = parallel.seed_parallel_step(jax.vmap(exp_p.train_step("data"), in_axes=(0, None)), mesh)
    for batch in batches:
        state, metrics = step(state, parallel.shard_batch(batch, mesh))
    assert metrics["g/total"].shape == (8,)
    for i in range(8):  # every run equals its own vmapped run
        one = lambda t: jax.tree.map(lambda x: x[i], t)  # noqa: E731
        assert rel_diff(one(ref.g.params), one(state.g.params)) < 1e-5
    if data_devices == 1:  # no collectives over the seed axis: the same numbers
        np.testing.assert_allclose(np.asarray(metrics["g/total"]), np.asarray(ref_metrics["g/total"]), rtol=1e-6)


# ---------------------------------------------------------------------------------------------- resharding

def _mlp_state_on(mesh_or_none, steps=2):
    config = mlp_config()
    batches = toy_batches(config, steps)
    if mesh_or_none is None:
        return train_one_device(config, batches)[0]
    return train_data_parallel(config, batches, mesh_or_none)[0]


def test_restore_across_meshes(tmp_path):
    exp = experiment.build(mlp_config())
    abstract = jax.eval_shape(exp.init, jax.random.key(0))
    mesh4 = parallel.make_mesh(4, 1)
    state4 = _mlp_state_on(mesh4)
    with Checkpointer(tmp_path / "four", save_every=1) as ckpt:
        ckpt.save(2, state4, {"batches": 2})
    with Checkpointer(tmp_path / "four", save_every=1) as ckpt:
        on_one, data_state = ckpt.restore(2, abstract)  # 4 devices -> 1
        on_two, _ = ckpt.restore(2, parallel.abstract_on_mesh(abstract, parallel.make_mesh(2, 1)))  # 4 -> 2
    assert data_state == {"batches": 2}
    assert len(jax.tree.leaves(on_one.g.params)[0].sharding.device_set) == 1
    assert len(jax.tree.leaves(on_two.g.params)[0].sharding.device_set) == 2
    assert rel_diff(state4.g.params, on_one.g.params) == 0 and rel_diff(state4.d.params, on_two.d.params) == 0
    assert jax.dtypes.issubdtype(on_one.key.dtype, jax.dtypes.prng_key)

    state1 = _mlp_state_on(None)
    with Checkpointer(tmp_path / "one", save_every=1) as ckpt:
        ckpt.save(2, state1, {})
    with Checkpointer(tmp_path / "one", save_every=1) as ckpt:
        on_four, _ = ckpt.restore(2, parallel.abstract_on_mesh(abstract, mesh4))  # 1 -> 4
    assert jax.tree.leaves(on_four.g.params)[0].sharding.mesh == mesh4
    assert rel_diff(state1.g.params, on_four.g.params) == 0
    # training continues on the new mesh
    step = parallel.data_parallel_step(experiment.build(mlp_config(), axis_name="data").train_step("data"), mesh4)
    on_four, _ = step(on_four, parallel.shard_batch(toy_batches(mlp_config(), 1)[0], mesh4))
    assert int(on_four.step) == 3

    # stacked runs: seed-sharded over 4 devices -> 1 device
    keys = jax.random.split(jax.random.key(3), 4)
    stacked = parallel.init_seeds(exp.init, keys, parallel.make_mesh(1, 4))
    with Checkpointer(tmp_path / "seeds", save_every=1) as ckpt:
        ckpt.save(0, stacked, {})
    with Checkpointer(tmp_path / "seeds", save_every=1) as ckpt:
        back, _ = ckpt.restore(0, jax.eval_shape(jax.vmap(exp.init), keys))
    assert rel_diff(stacked.g.params, back.g.params) == 0


_WRITE_ON_EIGHT = """
import sys, jax
from jaxgan import experiment, parallel
from jaxgan.checkpoint import Checkpointer
assert jax.device_count() == 8, jax.devices()
config = experiment.Config(dataset="ring8", model="mlp", width=16, depth=2, batch_size=32)
exp = experiment.build(config)
state = parallel.init_replicated(exp.init, jax.random.key(5), parallel.make_mesh(8, 1))
with Checkpointer(sys.argv[1], save_every=1) as ckpt:
    ckpt.save(0, state, {"written_on": 8})
"""


def test_checkpoint_from_eight_devices_restores_on_one_and_four(tmp_path):
    env = {**os.environ, "XLA_FLAGS": subprocess_xla_flags(8), "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", _WRITE_ON_EIGHT, str(tmp_path / "eight")], env=env, check=True, timeout=120)
    exp = experiment.build(mlp_config())
    abstract = jax.eval_shape(exp.init, jax.random.key(5))
    want = jax.jit(exp.init)(jax.random.key(5))
    with Checkpointer(tmp_path / "eight", save_every=1) as ckpt:
        one, data_state = ckpt.restore(0, abstract)
        four, _ = ckpt.restore(0, parallel.abstract_on_mesh(abstract, parallel.make_mesh(4, 1)))
    assert data_state == {"written_on": 8}
    assert rel_diff(want.g.params, one.g.params) == 0 and rel_diff(want.g.params, four.g.params) == 0
    assert len(jax.tree.leaves(four.g.params)[0].sharding.device_set) == 4


# ---------------------------------------------------------------------------------------------- multi-host

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker_env(devices: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices),
               XLA_FLAGS=subprocess_xla_flags(devices), PYTHONUNBUFFERED="1")
    return env


MH_FLAGS = dict(dataset="ring8", model="mlp", width=16, depth=2, batch_size=32, steps=20, log_every=10,
                checkpoint_every=10, num_samples=100)


def test_two_processes_times_two_devices_equal_one_process_with_four(tmp_path):
    port = _free_port()
    workdir = tmp_path / "multihost"
    args = [f"--{k}={v}" for k, v in MH_FLAGS.items()] + [f"--workdir={workdir}", f"--jax_cache_dir={CACHE}",
                                                          f"--coordinator_address=127.0.0.1:{port}",
                                                          "--num_processes=2", "--distributed_timeout=60"]
    logs = [open(tmp_path / f"p{i}.log", "w") for i in range(2)]
    procs = [subprocess.Popen([sys.executable, str(REPO / "launch" / "train.py"), *args, f"--process_id={i}"],
                              env=_worker_env(2), stdout=logs[i], stderr=subprocess.STDOUT, cwd=tmp_path)
             for i in range(2)]
    try:
        # meanwhile, the reference in this process: 1 process, 4 devices, the same global batches
        ref = training.train(Config(**MH_FLAGS, mesh_data=4), tmp_path / "reference")
        deadline = time.monotonic() + 150
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.5)
        hung = [p.pid for p in procs if p.poll() is None]
    finally:
        for p in procs:  # jax.distributed traps SIGTERM: SIGKILL by pid
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
        for f in logs:
            f.close()
    out = "\n".join((tmp_path / f"p{i}.log").read_text()[-3000:] for i in range(2))
    assert not hung, f"workers {hung} hung and were killed:\n{out}"
    assert [p.returncode for p in procs] == [0, 0], out
    _, got = training.load_run(workdir)
    assert int(got.step) == 20
    assert rel_diff(ref.g.params, got.g.params) < 1e-5
    # only process 0 wrote logs: one metrics line per log step; checkpoints written by both through orbax
    assert len((workdir / "metrics.jsonl").read_text().splitlines()) == 2
    assert (workdir / "samples.png").exists() and 20 in Checkpointer(workdir / "checkpoints", save_every=1).all_steps()


def test_local_cluster_script_kills_all_on_failure(tmp_path):
    result = subprocess.run(["bash", str(REPO / "launch" / "local_cluster.sh"), "2", "--no_such_flag=1"],
                            env={**_worker_env(1), "WORKDIR_LOGS": str(tmp_path)}, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0
    assert "exited with status" in result.stderr


# ---------------------------------------------------------------------------------------------- bad input

def test_batch_not_divisible_by_data_axis():
    mesh = parallel.make_mesh(4, 1)
    with pytest.raises(parallel.ParallelError, match=r"B=30 .* not divisible by the 4 devices"):
        parallel.shard_batch({"x": np.zeros((1, 30, 2), np.float32)}, mesh)
    with pytest.raises(parallel.ParallelError, match="--batch_size=30 .* not divisible by the 4 devices"):
        parallel.check_global_batch(30, mesh)
    with pytest.raises(ConfigError, match="--batch_size=30 .* not divisible by --mesh_data=4"):
        experiment.validate(mlp_config(batch_size=30, mesh_data=4))
    step = parallel.data_parallel_step(lambda s, b: (s, {}), mesh)
    with pytest.raises(parallel.ParallelError, match="not divisible"):
        step({}, {"x": jnp.zeros((1, 6, 2))})


def test_mesh_larger_than_device_count():
    with pytest.raises(parallel.ParallelError, match=r"needs 8 devices, but only 4 cpu device\(s\).*device_count"):
        parallel.make_mesh(8, 1)
    with pytest.raises(parallel.ParallelError, match="needs 8 devices"):
        parallel.make_mesh(4, 2)
    with pytest.raises(parallel.ParallelError, match="--mesh_seed=3 does not divide"):
        parallel.make_mesh(0, 3)
    with pytest.raises(ConfigError, match="--mesh_seed must be >= 1"):
        experiment.validate(mlp_config(mesh_seed=0))
    with pytest.raises(parallel.ParallelError, match="a single run has no seed axis"):
        parallel.training_mesh(mlp_config(mesh_seed=2))
    with pytest.raises(parallel.ParallelError, match="seed_parallel_step"):
        parallel.data_parallel_step(lambda s, b: (s, {}), parallel.make_mesh(2, 2))
    with pytest.raises(parallel.ParallelError, match="multiple of --mesh_seed=4"):
        parallel.shard_seeds(jnp.zeros((6, 3)), parallel.make_mesh(1, 4))


def test_coordinator_that_does_not_answer():
    port = _free_port()  # nothing listens there
    start = time.monotonic()
    with pytest.raises(parallel.DistributedError, match=f"127.0.0.1:{port} did not answer within 1 s"):
        parallel.wait_for_coordinator(f"127.0.0.1:{port}", 1.0)
    assert time.monotonic() - start < 10
    with pytest.raises(parallel.DistributedError, match="not HOST:PORT"):
        parallel.initialize_distributed("localhost", 2, 1)
    with pytest.raises(parallel.DistributedError, match=r"--process_id must be in \[0, 2\)"):
        parallel.initialize_distributed("localhost:1234", 2, 2)
    # the launcher: one error line and exit status 2 instead of jax's abort
    result = subprocess.run([sys.executable, str(REPO / "launch" / "train.py"), "--workdir=" + os.devnull + "_w",
                             f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", "--process_id=1",
                             "--distributed_timeout=2"], env=_worker_env(1), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"error: the coordinator at --coordinator_address=127.0.0.1:{port} did not answer within 2 s" in \
        result.stderr
