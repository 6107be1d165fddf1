"""Meshes, data parallelism (pmap semantics through `jax.shard_map`), sharded seed axes, multi-host helpers.

A mesh has two axes, ``("seed", "data")`` (`SEED_AXIS`, `DATA_AXIS`):

- ``data``: the global batch is split over it; the per-device step (``make_train_step(...,
  axis_name="data")``) averages gradients, BatchNorm statistics and metrics with ``lax.pmean``, so the
  state stays replicated and N devices compute what one device computes on the same global batch.
- ``seed``: independent runs stacked on a leading axis (``jax.vmap`` of init and step) are split over it;
  no collectives. 64 seeds on a ``seed=8`` mesh run 8 seeds per device.

Conventions: batches are ``{"x": [n_critic, B, ...], "label": [n_critic, B]}`` with B the *global* batch,
sharded ``P(None, "data")``; stacked (per-seed) trees have the seed axis first, sharded ``P("seed")``;
train states are replicated ``P()`` (or ``P("seed")`` when stacked).

Axis types: meshes are built with ``AxisType.Auto`` (JAX >= 0.9 makes ``jax.make_mesh`` axes Explicit by
default). The step is written without sharding annotations and runs per device inside ``shard_map``, where
both types behave the same; Auto additionally lets ``jax.jit``/``shard_map`` move a mis-placed input
(e.g. a batch still on one device) instead of raising ``in_specs ... does not match``, and keeps the
placement and indexing of seed-sharded runs (``P("seed")`` inputs under plain ``jit``) free of Explicit-mode
``ShardingTypeError``. Pass ``axis_type=AxisType.Explicit`` to `make_mesh` to get the strict behaviour; every helper
here places its inputs, so both work (``tests/test_parallel.py`` checks both).

CPU pitfall (``docs/parallel.md``): with more simulated devices than cores, unbounded async dispatch
of programs with collectives can deadlock the CPU thread pool. `ParallelStep` therefore blocks on the
metrics of the step ``max_in_flight`` calls ago, so at most that many steps are ever queued.

Porting from pmap: ``jax.pmap(step, axis_name="data")`` with state replicated on a leading device axis and
batches reshaped to ``[devices, n_critic, B / devices, ...]`` runs the very same per-device step and gives
the same numbers (tested); `data_parallel_step` does the same with global arrays and no leading axis.
"""
from __future__ import annotations

import collections
import contextlib
import socket
import time
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from jaxgan.config import ConfigError

DATA_AXIS = "data"
SEED_AXIS = "seed"
BATCH_SPEC = P(None, DATA_AXIS)  # [n_critic, B, ...]: split B over the data axis
DEFAULT_MAX_IN_FLIGHT = 8


class ParallelError(ConfigError):
    """A mesh, batch or cluster setting that cannot work; the message names the value and what is accepted."""


# ------------------------------------------------------------------------------------------------ meshes

def _device_summary(devices) -> str:
    platform = devices[0].platform if devices else "?"
    hint = ""
    if platform == "cpu":
        hint = ("; on CPU, simulate more devices with XLA_FLAGS=--xla_force_host_platform_device_count=N "
                "(before JAX starts)")
    return f"{len(devices)} {platform} device(s) over {jax.process_count()} process(es) are visible{hint}"


def make_mesh(data: int = 0, seed: int = 1, *, devices=None, axis_type: AxisType = AxisType.Auto) -> Mesh:
    """A ``("seed", "data")`` mesh of ``seed x data`` devices.

    Args:
      data: devices on the data axis; 0 = all devices not used by the seed axis (``len(devices) // seed``).
      seed: devices on the seed axis (independent stacked runs), >= 1.
      devices: the devices to use (default ``jax.devices()``, all processes); the first ``seed * data``
        are taken. In a multi-process run the mesh must use every device of every process.
      axis_type: ``AxisType.Auto`` (default) or ``AxisType.Explicit`` for both axes.
    Raises `ParallelError` for a mesh larger than the device count or one that does not divide it (data=0).
    """
    devices = list(jax.devices() if devices is None else devices)
    if not isinstance(seed, int) or seed < 1:
        raise ParallelError(f"--mesh_seed must be an integer >= 1, got {seed!r}")
    if not isinstance(data, int) or data < 0:
        raise ParallelError(f"--mesh_data must be an integer >= 0 (0: all devices), got {data!r}")
    if data == 0:
        if len(devices) % seed:
            raise ParallelError(f"--mesh_seed={seed} does not divide the device count: {_device_summary(devices)}")
        data = len(devices) // seed
    if data * seed > len(devices):
        raise ParallelError(f"the mesh --mesh_data={data} x --mesh_seed={seed} needs {data * seed} devices, but only "
                            f"{_device_summary(devices)}")
    if jax.process_count() > 1 and data * seed != jax.device_count():
        raise ParallelError(f"in a multi-process run the mesh must span all {jax.device_count()} devices of the "
                            f"{jax.process_count()} processes, got --mesh_data={data} x --mesh_seed={seed}; use "
                            f"--mesh_data=0")
    grid = np.asarray(devices[:data * seed], dtype=object).reshape(seed, data)
    return Mesh(grid, (SEED_AXIS, DATA_AXIS), axis_types=(axis_type, axis_type))


def mesh_from_config(config, *, devices=None) -> Mesh:
    """The mesh of ``config.mesh_data`` x ``config.mesh_seed`` (see `make_mesh`), checking the batch divides."""
    mesh = make_mesh(config.mesh_data, config.mesh_seed, devices=devices)
    check_global_batch(config.batch_size, mesh)
    return mesh


def training_mesh(config) -> Mesh | None:
    """The data-parallel mesh of a single run (``launch/train.py``), or None for one device.

    ``--mesh_data=0`` means all devices, except in a single-process CPU run, where it means 1: simulated CPU
    devices share the host's cores, so splitting the batch only adds overhead (pass ``--mesh_data=N`` to
    force it, e.g. to test). A multi-process run always uses every device of every process.
    """
    if config.mesh_seed != 1:
        raise ParallelError(f"--mesh_seed={config.mesh_seed}: a single run has no seed axis; the seed axis shards "
                            f"the stacked runs of a sweep (launch/sweep.py). Use --mesh_seed=1")
    n = config.mesh_data
    if n == 0:
        n = 1 if jax.default_backend() == "cpu" and jax.process_count() == 1 else jax.device_count()
    if n == 1 and jax.process_count() == 1:
        return None
    mesh = make_mesh(n, 1)
    check_global_batch(config.batch_size, mesh)
    return mesh


def data_size(mesh: Mesh) -> int:
    return int(mesh.shape.get(DATA_AXIS, 1))


def seed_size(mesh: Mesh) -> int:
    return int(mesh.shape.get(SEED_AXIS, 1))


def check_global_batch(batch_size: int, mesh: Mesh) -> None:
    """Raises `ParallelError` unless the global batch splits evenly over the data axis (and the processes)."""
    n = data_size(mesh)
    if batch_size % n:
        raise ParallelError(f"--batch_size={batch_size} (the global batch) is not divisible by the {n} devices of "
                            f"the data axis; use a multiple of {n} or set --mesh_data to a divisor of {batch_size}")
    if batch_size % jax.process_count():
        raise ParallelError(f"--batch_size={batch_size} is not divisible by the {jax.process_count()} processes")


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """``[n_critic, B, ...]`` split over B."""
    return NamedSharding(mesh, BATCH_SPEC)


def seed_sharding(mesh: Mesh) -> NamedSharding:
    """Stacked trees ``[S, ...]`` split over S."""
    return NamedSharding(mesh, P(SEED_AXIS))


# -------------------------------------------------------------------------------------------- placement

def _host(x):
    return np.asarray(jax.device_get(x))


def _place(tree, sharding_for: Callable[[Any], NamedSharding]):
    """Global arrays from values every process holds in full (numpy or jax, typed PRNG keys included)."""
    def put(x):
        sharding = sharding_for(x)
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            impl = jax.random.key_impl(x)
            data = put(jax.random.key_data(x))
            return jax.jit(lambda d: jax.random.wrap_key_data(d, impl=impl), out_shardings=sharding)(data)
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x
        host = _host(x)
        if jax.process_count() == 1:
            return jax.device_put(host, sharding)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
    return jax.tree.map(put, tree)


def replicate(tree, mesh: Mesh):
    """Places a tree (identical on every process) replicated over ``mesh``."""
    sharding = replicated(mesh)
    return _place(tree, lambda x: sharding)


def shard_seeds(tree, mesh: Mesh):
    """Places a stacked tree ``[S, ...]`` (identical on every process) with S split over the seed axis."""
    n = seed_size(mesh)
    for leaf in jax.tree.leaves(tree):
        if np.ndim(leaf) == 0 or np.shape(leaf)[0] % n:
            raise ParallelError(f"stacked runs of shape {np.shape(leaf)} cannot be split over the {n} devices of "
                                f"the seed axis: the number of runs must be a multiple of --mesh_seed={n}")
    sharding = seed_sharding(mesh)
    return _place(tree, lambda x: sharding)


def _check_batch(batch, mesh: Mesh, local: bool) -> None:
    n = data_size(mesh)
    for name, leaf in (batch.items() if isinstance(batch, dict) else enumerate(jax.tree.leaves(batch))):
        shape = np.shape(leaf)
        if len(shape) < 2:
            raise ParallelError(f"batch[{name!r}] has shape {shape}; expected [n_critic, B, ...]")
        b = shape[1] * (jax.process_count() if local else 1)
        if b % n:
            raise ParallelError(f"the global batch B={b} (batch[{name!r}] shape {shape}"
                                f"{', per process' if local else ''}) is not divisible by the {n} devices of the "
                                f"data axis; use a batch size that is a multiple of {n}")


def shard_batch(batch, mesh: Mesh):
    """A global batch ``[n_critic, B, ...]`` that every process holds in full -> arrays split over ``data``.

    Each device receives only its slice (toy data, where every process can draw the whole batch)."""
    _check_batch(batch, mesh, local=False)
    sharding = batch_sharding(mesh)

    def put(x):
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x
        host = _host(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
    return jax.tree.map(put, batch)


def shard_local_batch(batch, mesh: Mesh):
    """This process's part ``[n_critic, B / processes, ...]`` of the global batch -> global arrays.

    Multi-host input (``jax.make_array_from_process_local_data``): each process reads its own shard of the
    data and the processes' parts are concatenated along B in process order. With one process this is
    `shard_batch`."""
    _check_batch(batch, mesh, local=True)
    sharding = batch_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, _host(x)), batch)


def batch_placer(mesh: Mesh | None, *, global_batches: bool) -> Callable:
    """``put(batch)`` for the training loop: identity without a mesh; else `shard_batch` when every process
    produces the whole global batch (``global_batches``, toy data) or `shard_local_batch` when each process
    reads its own shard (image data, ``make_data(config, process_index=..., process_count=...)``)."""
    if mesh is None:
        return lambda batch: batch
    place = shard_batch if global_batches else shard_local_batch
    return lambda batch: place(batch, mesh)


def init_replicated(init_fn: Callable, key: jax.Array, mesh: Mesh, *args):
    """``init_fn(key, *args)`` computed directly into replicated arrays on ``mesh`` (every process runs it)."""
    return jax.jit(init_fn, out_shardings=replicated(mesh))(key, *args)


def on_seed_axis(fn: Callable, mesh: Mesh | None, in_specs, out_specs) -> Callable:
    """``fn`` (vmapped over stacked runs) run by every device of the mesh's seed axis on its share of the runs.

    `jax.shard_map` over ``mesh`` with no collectives over ``seed``: each of the K devices of the seed axis runs
    ``fn`` on ``S / K`` runs, the runs axes of ``in_specs``/``out_specs`` being ``"seed"`` (e.g. ``P("seed")``
    for ``[S, ...]``, ``P(None, "seed")`` for ``[L, S, ...]``; a data axis may split the batch too). Returns
    ``fn`` itself without a mesh. Not jitted. (Plain ``jax.jit`` on seed-sharded inputs would leave the split to
    XLA's SPMD partitioner, which cannot split the grouped convolutions that vmap makes of an image model's
    XLA convolutions: "output feature dimension ... divisible by feature_group_count"; nor oneDNN's custom
    calls, which it does not know.)
    """
    if mesh is None:
        return fn
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)


def init_seeds(init_fn: Callable, keys: jax.Array, mesh: Mesh, *args):
    """``jax.vmap(init_fn)(keys, *args)`` computed directly into seed-sharded arrays (keys: ``[S]`` typed), each
    device initialising its share of the runs (`on_seed_axis`)."""
    keys, args = shard_seeds((keys, args), mesh)
    runs = P(SEED_AXIS)
    return jax.jit(on_seed_axis(jax.vmap(init_fn), mesh, (runs,) * (1 + len(args)), runs))(keys, *args)


def abstract_on_mesh(abstract_tree, mesh: Mesh, spec: P = P()):
    """``jax.ShapeDtypeStruct`` leaves carrying ``NamedSharding(mesh, spec)``: restore a checkpoint onto a mesh.

    E.g. ``checkpointer.restore(step, abstract_on_mesh(jax.eval_shape(exp.init, key), mesh))``; use
    ``spec=P("seed")`` for stacked runs. A checkpoint written on any mesh restores onto any other."""
    sharding = NamedSharding(mesh, spec)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), abstract_tree)


def local_copy(tree):
    """A replicated tree -> the same values on one local device (for sampling and plots on one process)."""
    def get(x):
        if isinstance(x, jax.Array) and len(x.sharding.device_set) > 1:
            if not x.sharding.is_fully_replicated:
                raise ParallelError(f"local_copy needs replicated arrays, got sharding {x.sharding}")
            return x.addressable_data(0)
        return x
    return jax.tree.map(get, tree)


def is_primary() -> bool:
    """Whether this is process 0, the one that writes logs, plots and samples."""
    return jax.process_index() == 0


def sync_processes(name: str) -> None:
    """A barrier across processes (no-op with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


class NullWriter:
    """Stands in for `jaxgan.logging.MetricWriter` on processes other than 0: every method does nothing."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


# -------------------------------------------------------------------------------------------- the steps

class ParallelStep:
    """A jitted sharded step with at most ``max_in_flight`` calls queued (blocks on an older step's metrics).

    ``state, metrics = parallel_step(state, batch)``; ``parallel_step.sync()`` waits for everything."""

    def __init__(self, fn: Callable, mesh: Mesh, max_in_flight: int, check: Callable[[Any], None] | None,
                 batch_argnum: int = 1, place: Callable[[Any], Any] | None = None):
        if max_in_flight < 1:
            raise ParallelError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self.fn, self.mesh, self.max_in_flight = fn, mesh, max_in_flight
        self._check, self._batch_argnum, self._place = check, batch_argnum, place
        self._pending: collections.deque = collections.deque()

    def _on_mesh(self, tree) -> bool:
        leaves = jax.tree.leaves(tree)
        return not leaves or all(isinstance(x, jax.Array) and isinstance(x.sharding, NamedSharding)
                                 and x.sharding.mesh == self.mesh for x in leaves[:1])

    def __call__(self, *args):
        if self._check is not None:
            self._check(args[self._batch_argnum])
        if self._place is not None:  # e.g. a state made by a plain jax.jit(init): put it on the mesh first
            args = tuple(a if i == self._batch_argnum or self._on_mesh(a) else self._place(a)
                         for i, a in enumerate(args))
        out = self.fn(*args)
        leaves = jax.tree.leaves(out[1] if isinstance(out, tuple) and len(out) > 1 else out)
        if leaves:
            self._pending.append(leaves[0])
        while len(self._pending) > self.max_in_flight:
            jax.block_until_ready(self._pending.popleft())
        return out

    def sync(self):
        while self._pending:
            jax.block_until_ready(self._pending.popleft())

    def lower(self, *args):
        return self.fn.lower(*args)


def shard_map_step(step: Callable, mesh: Mesh, *, num_args: int = 2, batch_argnum: int = 1) -> Callable:
    """``jax.shard_map`` of a per-device step (not jitted): argument ``batch_argnum`` split ``P(None, "data")``,
    the other arguments and all outputs replicated. Global shapes in, global shapes out (works under
    ``jax.eval_shape``).

    ``check_vma=False`` gives pmap semantics: with the default ``check_vma=True``, ``jax.grad`` inside
    shard_map already sums the gradients of replicated parameters over the axis (the transpose of the
    implicit broadcast), and the step's own ``lax.pmean`` would then give N times the true gradient.
    """
    in_specs = tuple(BATCH_SPEC if i == batch_argnum else P() for i in range(num_args))
    return jax.shard_map(step, mesh=mesh, in_specs=in_specs, out_specs=P(), check_vma=False)


def data_parallel_step(step: Callable, mesh: Mesh, *, donate: bool = True, num_args: int = 2,
                       batch_argnum: int = 1, donate_argnums: tuple[int, ...] | None = None,
                       max_in_flight: int = DEFAULT_MAX_IN_FLIGHT) -> ParallelStep:
    """``step(state, batch)`` run per device under ``jax.jit(jax.shard_map(...))``, pmap semantics.

    Args:
      step: a per-device step built with ``axis_name="data"`` (``Experiment.train_step("data")``, models built
        with ``build(config, axis_name="data")`` for cross-replica BatchNorm): it sees ``B / data`` examples
        and averages gradients, model state and metrics over the axis.
      mesh: a `make_mesh` mesh; its seed axis must have size 1 (use `seed_parallel_step` for stacked runs).
      donate: donate the input state (the caller must not reuse it).
      num_args, batch_argnum: steps with more (replicated) arguments, e.g. ``reliability.guard_step``'s
        ``(state, batch, record)``: ``num_args=3``.
      donate_argnums: overrides ``donate`` (default ``(0,)`` when donating).
      max_in_flight: bound on queued steps (CPU collectives deadlock otherwise, see module docstring).
    Returns a `ParallelStep`: ``(state replicated P(), batch [n_critic, B, ...]) -> (state, metrics)``, all
    outputs replicated. A batch whose B does not divide over the data axis raises `ParallelError`; replicated
    arguments not yet on the mesh (a state from a plain ``jax.jit(init)``) are placed on it first.
    """
    if seed_size(mesh) != 1:
        raise ParallelError(f"data_parallel_step runs one model; the mesh has a seed axis of {seed_size(mesh)} "
                            f"devices: use seed_parallel_step for stacked runs, or --mesh_seed=1")
    fn = shard_map_step(step, mesh, num_args=num_args, batch_argnum=batch_argnum)
    if donate_argnums is None:
        donate_argnums = (0,) if donate else ()
    jitted = jax.jit(fn, donate_argnums=donate_argnums)
    return ParallelStep(jitted, mesh, max_in_flight, lambda batch: _check_batch(batch, mesh, local=False),
                        batch_argnum, lambda tree: replicate(tree, mesh))


def seed_parallel_step(vstep: Callable, mesh: Mesh, *, batch_per_seed: bool = False, donate: bool = True,
                       max_in_flight: int = DEFAULT_MAX_IN_FLIGHT) -> ParallelStep:
    """A vmapped step over stacked runs, with the runs split over the ``seed`` axis (and B over ``data``).

    Args:
      vstep: ``jax.vmap(step, in_axes=(0, 0 if batch_per_seed else None))`` of a step; when the mesh's data
        axis has more than one device the inner step must be built with ``axis_name="data"``.
      batch_per_seed: batches are ``[S, n_critic, B, ...]`` (one per run) instead of one shared
        ``[n_critic, B, ...]``.
    The state is stacked ``[S, ...]`` with S a multiple of the seed axis (`shard_seeds`/`init_seeds`); each
    device runs ``S / seed`` runs, vmapped, with no collectives over ``seed`` (`on_seed_axis`). Metrics come back
    ``[S]``.
    """
    batch_spec = P(SEED_AXIS, None, DATA_AXIS) if batch_per_seed else BATCH_SPEC
    fn = on_seed_axis(vstep, mesh, (P(SEED_AXIS), batch_spec), (P(SEED_AXIS), P(SEED_AXIS)))
    jitted = jax.jit(fn, donate_argnums=(0,) if donate else ())

    def check(batch):
        n = data_size(mesh)
        for leaf in jax.tree.leaves(batch):
            shape = np.shape(leaf)
            b = shape[2] if batch_per_seed else shape[1]
            if b % n:
                raise ParallelError(f"the global batch B={b} (shape {shape}) is not divisible by the {n} devices of "
                                    f"the data axis")
    return ParallelStep(jitted, mesh, max_in_flight, check)


# ---------------------------------------------------------------------------------------------- multi-host

class DistributedError(ParallelError):
    """The cluster could not be formed (coordinator unreachable, bad process flags)."""


def _parse_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise DistributedError(f"--coordinator_address={address!r} is not HOST:PORT (e.g. 10.0.0.1:1234)")
    return host.strip("[]"), int(port)


def _connect(address: str, timeout_s: float) -> socket.socket:
    """A TCP connection to ``HOST:PORT``, retried until it answers; `DistributedError` after ``timeout_s``."""
    host, port = _parse_address(address)
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        try:
            return socket.create_connection((host, port), timeout=min(2.0, max(timeout_s, 0.1)))
        except OSError as e:
            last = e
        if time.monotonic() >= deadline:
            raise DistributedError(f"the coordinator at --coordinator_address={address} did not answer within "
                                   f"{timeout_s:g} s ({last}); start process 0 first (it hosts the coordinator), "
                                   f"check HOST:PORT and the firewall, or raise --distributed_timeout")
        time.sleep(0.25)


def wait_for_coordinator(address: str, timeout_s: float) -> None:
    """Polls a TCP connection to ``HOST:PORT`` until it answers; `DistributedError` after ``timeout_s``."""
    _connect(address, timeout_s).close()


_HELLO = "jaxgan-rendezvous-1"  # first word of a process's greeting on the coordinator port (see `rendezvous`)


def _listen(port: int) -> socket.socket:
    """A listening socket on every address (IPv6 and IPv4 where possible), as jax's coordinator binds."""
    if socket.has_dualstack_ipv6():
        return socket.create_server(("::", port), family=socket.AF_INET6, dualstack_ipv6=True, reuse_port=False)
    return socket.create_server(("", port))


def _read_line(conn: socket.socket, deadline: float) -> str:
    """One ``\n``-terminated line (at most 1 kB) from ``conn`` before ``deadline``; '' on EOF or timeout."""
    data = b""
    while b"\n" not in data and len(data) < 1024:
        conn.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = conn.recv(1024)
        except OSError:
            return ""
        if not chunk:
            return ""
        data += chunk
    return data.split(b"\n", 1)[0].decode(errors="replace")


def _gather_processes(address: str, num_processes: int, timeout_s: float) -> None:
    """Process 0: waits on the coordinator's port until the other ``num_processes - 1`` processes greet it,
    then tells them to go on and closes the port for jax's coordinator. `DistributedError` naming how many
    connected when they do not all come within ``timeout_s`` (instead of jax's abort, "another task died")."""
    _, port = _parse_address(address)
    deadline = time.monotonic() + timeout_s
    try:
        server = _listen(port)
    except OSError as e:
        raise DistributedError(f"process 0 cannot listen on the port of --coordinator_address={address} ({e}); "
                               f"use a free port") from None
    joined: dict[int, socket.socket] = {}
    try:
        while len(joined) < num_processes - 1:
            server.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                conn, _ = server.accept()
            except (socket.timeout, TimeoutError):
                raise DistributedError(
                    f"process 0 waited {timeout_s:g} s for {num_processes} processes; only {len(joined) + 1} "
                    f"connected (process ids {sorted([0, *joined])}): start all --num_processes={num_processes} "
                    f"processes with the same --coordinator_address={address}, or raise --distributed_timeout"
                ) from None
            words = _read_line(conn, min(deadline, time.monotonic() + 5)).split()
            if len(words) != 3 or words[0] != _HELLO or not (words[1].isdigit() and words[2].isdigit()):
                conn.close()  # not one of ours (a port scan, a health check): ignore it
                continue
            pid, count = int(words[1]), int(words[2])
            problem = (f"was started with --num_processes={count}, process 0 with {num_processes}"
                       if count != num_processes else
                       "is already connected: two processes have the same --process_id" if pid in joined else
                       "is out of range" if not 0 < pid < num_processes else None)
            if problem:
                message = f"process {pid} {problem}; start every process with the same --num_processes and " \
                          f"a distinct --process_id in [0, {num_processes})"
                conn.sendall(f"error {message}\n".encode())
                conn.close()
                raise DistributedError(message)
            joined[pid] = conn
        for conn in joined.values():
            conn.sendall(b"go\n")
        for conn in joined.values():  # they hang up first, so the port is not left in TIME_WAIT here
            _read_line(conn, time.monotonic() + 5)
    except DistributedError as e:
        for conn in joined.values():
            with contextlib.suppress(OSError):
                conn.sendall(f"error process 0: {e}\n".encode())
        raise
    finally:
        for conn in joined.values():
            conn.close()
        server.close()


def _join_process_zero(address: str, process_id: int, num_processes: int, timeout_s: float) -> None:
    """Processes other than 0: greets process 0 on the coordinator's port and waits for its go-ahead."""
    deadline = time.monotonic() + timeout_s
    with _connect(address, timeout_s) as conn:
        conn.sendall(f"{_HELLO} {process_id} {num_processes}\n".encode())
        reply = _read_line(conn, deadline)
    if reply == "go":
        return
    if reply.startswith("error "):
        raise DistributedError(reply[len("error "):])
    raise DistributedError(f"process 0 at --coordinator_address={address} did not confirm within {timeout_s:g} s "
                           f"that all {num_processes} processes started; start all of them (process 0 with the "
                           f"same launcher) with the same --coordinator_address and --num_processes")


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, *, auto: bool = False, timeout_s: int = 300) -> None:
    """``jax.distributed.initialize`` with checks and a clear error when the coordinator does not answer.

    Explicit mode: ``coordinator_address="HOST:PORT"``, ``num_processes=N``, ``process_id=I`` (process 0 hosts
    the coordinator on PORT). ``auto=True``: a bare ``jax.distributed.initialize()`` that detects TPU pods,
    SLURM, Open MPI, ... from the environment. Call before any other JAX use.

    Explicit mode starts with a rendezvous of its own on the coordinator's port, before jax binds it (jax
    would abort a process whose peers do not come with a C++ fatal error, "another task died"): process 0
    waits up to ``timeout_s`` for the other processes to greet it and raises `DistributedError` saying how
    many connected; the others wait up to ``timeout_s`` for process 0 and raise `DistributedError` if it
    stays silent. A different ``num_processes`` or a repeated ``process_id`` is refused on both sides. All
    processes must therefore start through this function (``launch/train.py``, ``launch/local_cluster.sh``).
    Note: `jax.distributed` installs a SIGTERM handler (preemption notice); stop hung workers with SIGKILL.
    """
    if auto:
        if coordinator_address or (num_processes or 1) > 1 or (process_id or 0) != 0:
            raise DistributedError("--distributed=auto detects the cluster itself; do not also pass "
                                   "--coordinator_address/--num_processes/--process_id")
        jax.distributed.initialize(initialization_timeout=int(timeout_s))
        return
    if not coordinator_address:
        raise DistributedError("multi-process training needs --coordinator_address=HOST:PORT (or --distributed=auto)")
    _parse_address(coordinator_address)
    if num_processes is None or num_processes < 1:
        raise DistributedError(f"--num_processes must be >= 1, got {num_processes}")
    if process_id is None or not 0 <= process_id < num_processes:
        raise DistributedError(f"--process_id must be in [0, {num_processes}), got {process_id}")
    start = time.monotonic()
    if num_processes > 1:  # our own rendezvous first: a missing process is one clear error, not a C++ abort
        if process_id == 0:
            _gather_processes(coordinator_address, num_processes, timeout_s)
        else:
            _join_process_zero(coordinator_address, process_id, num_processes, timeout_s)
    remaining = max(1, int(round(timeout_s - (time.monotonic() - start))))
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, initialization_timeout=remaining)
