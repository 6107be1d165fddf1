"""Data-parallel throughput against device count: ``python benchmarks/scaling.py [--devices=1,2,4,8]``.

Each device count runs in its own subprocess (its own ``XLA_FLAGS=--xla_force_host_platform_device_count=N``
on CPU), trains the same model with the same *global* batch for ``--steps`` timed steps after a warm-up,
and reports examples/s. 1 device uses the plain ``jax.jit`` step (what ``launch/train.py`` runs on one
device); N > 1 uses ``jaxgan.parallel.data_parallel_step`` (``jit(shard_map)``, pmean of gradients,
cross-replica BatchNorm, at most 8 steps in flight).

On CPU the simulated devices share the machine's physical cores, so this measures the overhead of the
sharded program (collectives, smaller per-device matmuls, dispatch), not a speed-up; on a multi-GPU/TPU host
(``--platform=gpu``) the devices are real and the same table shows the scaling.
Prints a table and one JSON line (``{"benchmark": "scaling", ...}``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker(args) -> dict:
    sys.path.insert(0, REPO)
    import jax
    import numpy as np

    from jaxgan import experiment, parallel
    n = jax.device_count() if args.platform != "cpu" else args.devices
    assert jax.device_count() >= n, (jax.devices(), n)
    if args.model == "mlp":
        config = experiment.Config(dataset="ring8", model="mlp", width=args.width or 128, depth=3,
                                   batch_size=args.batch_size or 512)
        shape = (2,)
    else:
        config = experiment.Config(dataset="digits", model="dcgan", width=args.width or 16, latent_dim=64,
                                   image_size=32, channels=1, batch_size=args.batch_size or 64)
        shape = (32, 32, 1)
    rng = np.random.default_rng(0)
    batches = [{"x": rng.uniform(-1, 1, (1, config.batch_size) + shape).astype(np.float32)} for _ in range(4)]
    key = jax.random.key(0)
    if n == 1:
        exp = experiment.build(config)
        state = jax.jit(exp.init)(key)
        step = jax.jit(exp.train_step(), donate_argnums=0)
        put = lambda b: jax.device_put(b)  # noqa: E731
    else:
        mesh = parallel.make_mesh(n, 1, devices=jax.devices()[:n])
        exp = experiment.build(config, axis_name=parallel.DATA_AXIS)
        state = parallel.init_replicated(exp.init, key, mesh)
        step = parallel.data_parallel_step(exp.train_step(parallel.DATA_AXIS), mesh)
        put = lambda b: parallel.shard_batch(b, mesh)  # noqa: E731
    batches = [put(b) for b in batches]
    t0 = time.perf_counter()
    state, metrics = step(state, batches[0])
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0
    for i in range(args.warmup):
        state, metrics = step(state, batches[i % 4])
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for i in range(args.steps):
        state, metrics = step(state, batches[i % 4])
    jax.block_until_ready((state, metrics))
    seconds = time.perf_counter() - t0
    return {"devices": n, "model": args.model, "global_batch": config.batch_size, "steps": args.steps,
            "seconds": seconds, "steps_per_sec": args.steps / seconds,
            "examples_per_sec": args.steps * config.batch_size / seconds, "first_step_s": compile_s,
            "platform": jax.default_backend(), "device_kind": jax.devices()[0].device_kind}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", default="1,2,4,8", help="comma-separated device counts")
    parser.add_argument("--models", default="mlp,dcgan", help="mlp (2D, width 128, batch 512) and/or dcgan (32x32x1)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch_size", type=int, default=0, help="global batch (0: the model's default)")
    parser.add_argument("--width", type=int, default=0)
    parser.add_argument("--platform", default="cpu", help="cpu (simulated devices) or gpu/tpu (real devices)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per subprocess")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="mlp", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.devices = int(args.devices)
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return

    rows = []
    for model in args.models.split(","):
        for n in [int(d) for d in args.devices.split(",")]:
            env = dict(os.environ)
            if args.platform == "cpu":
                env["JAX_PLATFORMS"] = "cpu"
                env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n}"
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", f"--devices={n}", f"--model={model}",
                   f"--steps={args.steps}", f"--warmup={args.warmup}", f"--batch_size={args.batch_size}",
                   f"--width={args.width}", f"--platform={args.platform}"]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
            lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
            if out.returncode or not lines:
                print(f"devices={n} model={model} failed:\n{out.stderr[-3000:]}", file=sys.stderr)
                continue
            rows.append(json.loads(lines[-1][len("RESULT "):]))
            print(f"  {model} on {n} device(s): {rows[-1]['examples_per_sec']:.0f} examples/s", file=sys.stderr)

    cores = os.cpu_count()
    print(f"\nData-parallel throughput, same global batch, {rows[0]['platform'] if rows else '?'} "
          f"({rows[0]['device_kind'] if rows else '?'}); {cores} CPU cores visible")
    if args.platform == "cpu":
        print(f"NOTE: simulated CPU devices share the {cores} physical cores: this measures the overhead of the "
              f"sharded step (collectives, smaller per-device work), not a speed-up.")
    print(f"{'model':6} {'devices':>7} {'batch':>6} {'steps/s':>9} {'examples/s':>11} {'vs 1 device':>11} "
          f"{'first step s':>12}")
    base = {}
    for r in rows:
        base.setdefault(r["model"], r["examples_per_sec"] if r["devices"] == 1 else None)
        rel = r["examples_per_sec"] / base[r["model"]] if base.get(r["model"]) else float("nan")
        print(f"{r['model']:6} {r['devices']:7d} {r['global_batch']:6d} {r['steps_per_sec']:9.1f} "
              f"{r['examples_per_sec']:11.0f} {rel:10.2f}x {r['first_step_s']:12.1f}")
    print(json.dumps({"benchmark": "scaling", "cpu_cores": cores, "simulated": args.platform == "cpu",
                      "results": rows}))


if __name__ == "__main__":
    main()
