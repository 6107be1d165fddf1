"""Model-steps/s of a many-seed ring8 study: vmapped chunks vs sequential in-process vs separate processes.

    python benchmarks/sweep_speedup.py [--runs=64 --steps=300 --chunks=1,4,8,16,64 --processes=3]

Schedules (every one trains the same ``runs`` GANs for ``steps`` steps; ``jaxgan.sweep.make_trainer``):
  * ``vmap chunk=C``: C runs vmapped in one program, ``runs / C`` chunks one after another, steps under
    `lax.scan` (100 per jitted call, data drawn inside). ``C=1`` is the best sequential schedule (no vmap).
  * ``sequential loop``: one run after another with one jitted call per step and host-side batches
    (`jaxgan.training.ToyData`), i.e. ``launch/train.py``'s loop without its files.
  * ``separate processes``: ``launch/train.py`` as a user would start it, once per seed (compile cache on, warmed
    by one untimed process). Only ``--processes`` are timed; the 64-run figure is extrapolated from their mean
    wall time (process start, imports, compilation from the cache, training, checkpoints, final samples/plots).
In-process figures exclude compilation (one untimed warm-up call per program). Prints a table and, last, one
JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxgan import experiment as experiment_lib  # noqa: E402
from jaxgan import sweep  # noqa: E402
from jaxgan.experiment import Config  # noqa: E402
from jaxgan.training import make_data  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def time_chunked(config: Config, runs: int, steps: int, chunk: int, call_steps: int) -> float:
    """Seconds to train ``runs`` runs for ``steps`` steps, ``chunk`` at a time (compilation excluded)."""
    exp = experiment_lib.build(config)
    vmapped = chunk > 1
    train = sweep.make_trainer(exp, config, vmapped)
    init = jax.jit(jax.vmap(exp.init) if vmapped else exp.init)

    def chunk_state(c0):
        keys = [jax.random.key(config.seed + c0 + j) for j in range(chunk)]
        if vmapped:
            keys = jnp.stack(keys)
            hp = {k: jnp.full((chunk,), v, jnp.float32) for k, v in exp.hparams.items()}
            return init(keys, hp), jax.vmap(lambda k: jax.random.fold_in(k, 0x5EED))(keys)
        return init(keys[0]), jax.random.fold_in(keys[0], 0x5EED)

    lengths = sorted({min(call_steps, steps - t) for t in range(0, steps, call_steps)})
    state, dkeys = chunk_state(0)
    for length in lengths:  # compile every program used below
        state, m = train(state, dkeys, jnp.int32(0), None, length=length)
    jax.block_until_ready(m)
    start = time.perf_counter()
    for c0 in range(0, runs, chunk):
        state, dkeys = chunk_state(c0)
        t = 0
        while t < steps:
            length = min(call_steps, steps - t)
            state, m = train(state, dkeys, jnp.int32(t), None, length=length)
            t += length
        jax.block_until_ready(m)
    return time.perf_counter() - start


def time_loop(config: Config, runs: int, steps: int) -> float:
    """One run after another, one jitted step per call, host batches (launch/train.py's loop)."""
    exp = experiment_lib.build(config)
    step = jax.jit(exp.train_step(), donate_argnums=0)
    init = jax.jit(exp.init)
    state = init(jax.random.key(0))
    data = make_data(config)
    state, m = step(state, next(data))
    jax.block_until_ready(m)
    start = time.perf_counter()
    for i in range(runs):
        c = Config(**{**config.__dict__, "seed": config.seed + i})
        data = make_data(c)
        state = init(jax.random.key(c.seed))
        for _ in range(steps):
            state, m = step(state, next(data))
        jax.block_until_ready(m)
    return time.perf_counter() - start


def time_processes(config: Config, steps: int, processes: int, cache_dir: str) -> list[float]:
    """Wall seconds of each of ``processes`` separate launch/train.py runs (after one untimed warm-up)."""
    flags = [f"--dataset={config.dataset}", f"--batch_size={config.batch_size}", f"--steps={steps}",
             f"--log_every={steps}", f"--checkpoint_every={steps}", f"--jax_cache_dir={cache_dir}"]
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(processes + 1):
            cmd = [sys.executable, os.path.join(REPO, "launch", "train.py"), f"--workdir={tmp}/run{i}",
                   f"--seed={i}"] + flags
            start = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True, cwd=REPO)
            if i:  # the first process fills the compile cache
                times.append(time.perf_counter() - start)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=64)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--chunks", default="1,4,8,16,64")
    parser.add_argument("--call_steps", type=int, default=100)
    parser.add_argument("--processes", type=int, default=3, help="separate processes timed (0: skip)")
    parser.add_argument("--no_loop", action="store_true", help="skip the one-call-per-step sequential schedule")
    args = parser.parse_args()

    config = Config(dataset="ring8", batch_size=args.batch_size, steps=args.steps)
    platform = jax.default_backend()
    device = jax.devices()[0].device_kind
    model_steps = args.runs * args.steps
    rates: dict[str, float] = {}
    for chunk in [int(c) for c in args.chunks.split(",")]:
        if args.runs % chunk:
            continue
        secs = time_chunked(config, args.runs, args.steps, chunk, args.call_steps)
        rates[f"chunk{chunk}"] = model_steps / secs
        print(f"vmap chunk={chunk:<3d} {secs:8.2f} s  {model_steps / secs:9.1f} model-steps/s", flush=True)
    if not args.no_loop:
        secs = time_loop(config, args.runs, args.steps)
        rates["loop"] = model_steps / secs
        print(f"sequential loop     {secs:8.2f} s  {rates['loop']:9.1f} model-steps/s", flush=True)
    proc_times = []
    if args.processes:
        with tempfile.TemporaryDirectory() as cache:
            proc_times = time_processes(config, args.steps, args.processes, cache)
        per_process = float(np.mean(proc_times))
        rates["processes"] = args.steps / per_process  # one process at a time: runs x steps / (runs x per_process)
        print(f"separate processes  {per_process:8.2f} s each (timed {len(proc_times)}, extrapolated x{args.runs}: "
              f"{per_process * args.runs:.1f} s)  {rates['processes']:9.1f} model-steps/s", flush=True)

    default = sweep.default_chunk(platform, "mlp", args.runs)
    best_vmap = max((v, k) for k, v in rates.items() if k.startswith("chunk") and k != "chunk1")
    sequential = max(rates.get("chunk1", 0.0), rates.get("loop", 0.0))
    summary = {
        "benchmark": "sweep_speedup", "platform": platform, "device": device, "runs": args.runs,
        "steps": args.steps, "batch_size": args.batch_size, "model": "mlp 3x128", "rates": rates,
        "default_chunk": default, "best_chunk": best_vmap[1],
        "default_vs_sequential": rates.get(f"chunk{default}", float("nan")) / sequential if sequential else None,
        "best_vs_sequential": best_vmap[0] / sequential if sequential else None,
        "default_vs_processes": (rates.get(f"chunk{default}", float("nan")) / rates["processes"]
                                 if "processes" in rates else None),
        "process_seconds": proc_times,
    }
    print(f"default chunk {default}: {summary['default_vs_sequential']:.2f}x best sequential in-process"
          + (f", {summary['default_vs_processes']:.1f}x separate processes" if "processes" in rates else ""))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
