"""Model-steps/s of a many-seed study: vmapped chunks vs sequential in-process vs separate processes.

    python benchmarks/sweep_speedup.py [--runs=64 --steps=300 --chunks=1,4,8,16,64 --processes=3]
    python benchmarks/sweep_speedup.py --model=dcgan [--runs=8 --steps=24 --chunks=1,2,4,8 --width=32
        --batch_size=64 --onednn_batch=concurrent,grouped,loop]

``--model=mlp`` (the default): ring8 MLP GANs. ``--model=dcgan``: DCGAN on 32x32x1 images (the digits
quickstart's network at ``--width``, ``--batch_size``), each run fed its own random images (uniform in [-1, 1],
made once on the device, so the figures are the training steps' alone); vmapped chunks are timed in every
``--onednn_batch`` mode of ``jaxgan.models.onednn.batch_mode`` (how a vmapped convolution runs its models'
convolutions), ``chunk=1`` is the sequential schedule. The separate-process and per-step-loop schedules are
the MLP study's only.

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
from jaxgan.models import onednn  # noqa: E402
from jaxgan.training import make_data  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def time_chunked(config: Config, runs: int, steps: int, chunk: int, call_steps: int,
                 image_batches: bool = False) -> float:
    """Seconds to train ``runs`` runs for ``steps`` steps, ``chunk`` at a time (compilation excluded).
    ``image_batches``: each run gets random images of the config's shape (drawn once per call length)."""
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
    batches = {length: None for length in lengths}
    if image_batches:
        shape = ((chunk,) if vmapped else ()) + (config.n_critic, config.batch_size, config.image_size,
                                                   config.image_size, config.channels)
        batches = {length: {"x": jax.random.uniform(jax.random.key(length), (length,) + shape, jnp.float32, -1, 1)}
                   for length in lengths}
    state, dkeys = chunk_state(0)
    for length in lengths:  # compile every program used below
        state, m = train(state, dkeys, jnp.int32(0), batches[length], length=length)
    jax.block_until_ready(m)
    start = time.perf_counter()
    for c0 in range(0, runs, chunk):
        state, dkeys = chunk_state(c0)
        t = 0
        while t < steps:
            length = min(call_steps, steps - t)
            state, m = train(state, dkeys, jnp.int32(t), batches[length], length=length)
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
    parser.add_argument("--model", choices=("mlp", "dcgan"), default="mlp")
    parser.add_argument("--runs", type=int, default=None, help="default: 64 (mlp), 8 (dcgan)")
    parser.add_argument("--steps", type=int, default=None, help="default: 300 (mlp), 24 (dcgan)")
    parser.add_argument("--batch_size", type=int, default=None, help="default: 256 (mlp), 64 (dcgan)")
    parser.add_argument("--width", type=int, default=32, help="dcgan: channels of the first D layer")
    parser.add_argument("--chunks", default=None, help="default: 1,4,8,16,64 (mlp), 1,2,4,8 (dcgan)")
    parser.add_argument("--call_steps", type=int, default=None, help="steps per jitted call; default 100 (mlp), "
                        "4 (dcgan: image models inline their steps)")
    parser.add_argument("--onednn_batch", default="concurrent",
                        help="dcgan: comma-separated jaxgan.models.onednn.batch_mode modes for vmapped chunks")
    parser.add_argument("--processes", type=int, default=None, help="separate processes timed (0: skip); "
                        "default 3 (mlp), 0 (dcgan)")
    parser.add_argument("--no_loop", action="store_true", help="skip the one-call-per-step sequential schedule")
    args = parser.parse_args()
    image = args.model == "dcgan"
    defaults = dict(runs=(8, 64), steps=(24, 300), batch_size=(64, 256), chunks=("1,2,4,8", "1,4,8,16,64"),
                    call_steps=(4, 100), processes=(0, 3))
    for name, (for_image, for_mlp) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, for_image if image else for_mlp)
    modes = args.onednn_batch.split(",") if image else ["concurrent"]
    for mode in modes:
        if mode not in onednn.BATCH_MODES:
            parser.error(f"--onednn_batch={mode!r}; accepted: {', '.join(onednn.BATCH_MODES)}")
    if image and args.processes:
        parser.error("--processes: the separate-process schedule is the MLP study's only (use --processes=0)")

    if image:
        config = Config(dataset="digits", model="dcgan", image_size=32, channels=1, width=args.width, latent_dim=64,
                        batch_size=args.batch_size, steps=args.steps)
    else:
        config = Config(dataset="ring8", batch_size=args.batch_size, steps=args.steps)
    platform = jax.default_backend()
    device = jax.devices()[0].device_kind
    model_steps = args.runs * args.steps
    rates: dict[str, float] = {}
    for chunk in [int(c) for c in args.chunks.split(",")]:
        if args.runs % chunk:
            continue
        for mode in modes if chunk > 1 else modes[:1]:
            name = f"chunk{chunk}" + (f"_{mode}" if image and chunk > 1 else "")
            with onednn.batch_mode(mode):
                secs = time_chunked(config, args.runs, args.steps, chunk, args.call_steps, image_batches=image)
            rates[name] = model_steps / secs
            print(f"vmap chunk={chunk:<3d} {mode if image and chunk > 1 else '':10s} {secs:8.2f} s  "
                  f"{rates[name]:9.1f} model-steps/s", flush=True)
    if not args.no_loop and not image:
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

    default = sweep.default_chunk(platform, args.model, args.runs)
    default_name = f"chunk{default}" + (f"_{modes[0]}" if image and default > 1 else "")
    vmapped = [(v, k) for k, v in rates.items() if k.startswith("chunk") and not k.startswith("chunk1_")
               and k != "chunk1"]
    best_vmap = max(vmapped) if vmapped else (float("nan"), None)
    sequential = max(rates.get("chunk1", 0.0), rates.get("loop", 0.0))
    model_desc = (f"dcgan 32x32x1 width {args.width}" if image else "mlp 3x128")
    summary = {
        "benchmark": "sweep_speedup", "platform": platform, "device": device, "runs": args.runs,
        "steps": args.steps, "batch_size": args.batch_size, "model": model_desc, "rates": rates,
        "default_chunk": default, "best_chunk": best_vmap[1],
        "default_vs_sequential": rates.get(default_name, float("nan")) / sequential if sequential else None,
        "best_vs_sequential": best_vmap[0] / sequential if sequential else None,
        "vs_sequential": {k: v / sequential for k, v in rates.items()} if sequential else None,
        "default_vs_processes": (rates.get(default_name, float("nan")) / rates["processes"]
                                 if "processes" in rates else None),
        "process_seconds": proc_times,
    }
    print(f"default chunk {default}: {summary['default_vs_sequential']:.2f}x best sequential in-process"
          + (f", {summary['default_vs_processes']:.1f}x separate processes" if "processes" in rates else ""))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
