"""Train-step throughput of a jaxgan model (steps/s, images/s, compile time, FLOPs), optionally vs PyTorch.

    python benchmarks/step_throughput.py --model=dcgan --image_size=64 --channels=3 --batch_size=64
    python benchmarks/step_throughput.py --model=dcgan --image_size=32 --channels=1 --compare_torch
    python benchmarks/step_throughput.py --model=mlp --batch_size=256 --steps_per_call=1,10,100
    python benchmarks/step_throughput.py --model=sngan --image_size=32 --channels=3
    python benchmarks/step_throughput.py --model=dcgan --compute_dtype=bfloat16

What is timed: the real train step (`jaxgan.experiment.Experiment.train_step`, the one ``launch/train.py`` runs:
n_critic D updates then one G update, Adam, the --loss objective, metrics), jitted with the state donated, on random
data already on the device (no input pipeline, no logging). The program is compiled ahead of time
(``jit(...).lower(...).compile()``: that is ``compile_sec``), warmed up, then ``--blocks`` blocks of
``--block_steps`` steps are timed with ``block_until_ready`` and the median block gives steps/s. FLOPs per step
come from XLA's ``cost_analysis()`` of the compiled program (per call, divided by ``steps_per_call``).

``--steps_per_call=K`` runs K steps per jitted call (`jaxgan.step.make_multi_step`, ``lax.scan``; ``--unroll``
inlines them). A comma-separated list measures several values, interleaved.

``--compare_torch`` (DCGAN 32/64 px only; needs ``pip install torch``, skipped with a message otherwise) builds the
identical network and step in PyTorch eager (``benchmarks/torch_dcgan.py``), asserts equal parameter counts, and
alternates timed blocks of jaxgan and torch in this process (same load on the shared machine), printing both
medians and the paired ratio (median of per-block-pair ratios). ``--torch_variant=examples`` times the
pytorch/examples loop instead (one G forward per step; jaxgan's step samples fresh latents for the G update).

``--conv_impl`` overrides the convolution formulation of `jaxgan.models.layers` (default ``auto``; ``xla`` = plain
flax/XLA convolutions) to measure the variants.

The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxgan import experiment as experiment_lib  # noqa: E402
from jaxgan.experiment import Config  # noqa: E402
from jaxgan.models import layers  # noqa: E402
from jaxgan.step import make_multi_step  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="dcgan", choices=["mlp", "dcgan", "sngan", "sagan"])
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--width", type=int, default=0, help="0: the model's default")
    p.add_argument("--loss", default="non_saturating")
    p.add_argument("--penalty", default="none")
    p.add_argument("--d_normalization", default="")
    p.add_argument("--n_critic", type=int, default=1)
    p.add_argument("--compute_dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--steps_per_call", default="1", help="K or a comma-separated list of K")
    p.add_argument("--unroll", action="store_true", help="inline the K steps instead of lax.scan")
    p.add_argument("--conv_impl", default="auto", help="jaxgan.models.layers implementation override")
    p.add_argument("--blocks", type=int, default=5, help="timed blocks (per implementation)")
    p.add_argument("--block_sec", type=float, default=2.0, help="target seconds per block (sets steps per block)")
    p.add_argument("--block_steps", type=int, default=0, help="steps per block (0: from --block_sec)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls after compilation")
    p.add_argument("--compare_torch", action="store_true")
    p.add_argument("--torch_variant", default="jaxgan", choices=["jaxgan", "examples"])
    p.add_argument("--torch_channels_last", action="store_true")
    p.add_argument("--torch_threads", type=int, default=0, help="0: torch's default")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def make_config(args) -> Config:
    toy = args.model == "mlp"
    return Config(dataset="ring8" if toy else "random_images", model=args.model, image_size=args.image_size,
                  channels=args.channels, batch_size=args.batch_size, width=args.width, loss=args.loss,
                  penalty=args.penalty, d_normalization=args.d_normalization, n_critic=args.n_critic,
                  seed=args.seed, **({"compute_dtype": args.compute_dtype}
                                     if "compute_dtype" in Config.__dataclass_fields__ else {}))


def random_batch(exp, config: Config, key, leading=()):
    shape = tuple(leading) + (config.n_critic, config.batch_size) + tuple(exp.data_shape)
    return {"x": jax.random.uniform(key, shape, jnp.float32, -1.0, 1.0)}


def _flops(compiled) -> float | None:
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - some backends do not implement it
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    return None if not cost or "flops" not in cost else float(cost["flops"])


class JaxRunner:
    """A compiled (multi-)step on donated state; ``run(n)`` does n calls and blocks."""

    def __init__(self, exp, config: Config, steps_per_call: int, unroll: bool):
        self.k = steps_per_call
        step = exp.train_step()
        if steps_per_call > 1:
            multi = make_multi_step(lambda s, b: step(s, b), steps_per_call, unroll=unroll)
            fn = multi
        else:
            fn = step
        key = jax.random.key(config.seed)
        self.state = jax.jit(exp.init)(key)
        self.batch = random_batch(exp, config, jax.random.fold_in(key, 1),
                                  leading=(steps_per_call,) if steps_per_call > 1 else ())
        jitted = jax.jit(fn, donate_argnums=0)
        t0 = time.perf_counter()
        lowered = jitted.lower(self.state, self.batch)
        t1 = time.perf_counter()
        self.compiled = lowered.compile()
        t2 = time.perf_counter()
        self.trace_sec, self.compile_sec = t1 - t0, t2 - t1
        flops = _flops(self.compiled)
        # XLA counts a while loop's body once: under lax.scan the program's count is already per step
        per_call = steps_per_call if (unroll or steps_per_call == 1) else 1
        self.flops_per_step = None if flops is None else flops / per_call

    def run(self, calls: int):
        for _ in range(calls):
            self.state, metrics = self.compiled(self.state, self.batch)
        jax.block_until_ready((self.state, metrics))
        return metrics


def time_block(fn, n: int) -> float:
    t0 = time.perf_counter()
    fn(n)
    return time.perf_counter() - t0


def count_params(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def main(argv=None):
    args = parse_args(argv)
    if args.conv_impl != "auto":  # benchmark-only override of the layers' "auto" choice
        original = layers._resolve
        layers._resolve = lambda impl, *a: original(args.conv_impl if impl == "auto" else impl, *a)
    config = make_config(args)
    exp = experiment_lib.build(config)
    device = jax.devices()[0]
    device_name = f"{device.platform}:{device.device_kind}"
    ks = [int(k) for k in args.steps_per_call.split(",")]
    images_per_step = config.batch_size * config.n_critic

    runners = {}
    for k in ks:
        r = JaxRunner(exp, config, k, args.unroll)
        runners[f"jaxgan k={k}" if len(ks) > 1 else "jaxgan"] = r
        print(f"[{device_name}] {args.model} {config.image_size if args.model != 'mlp' else ''} k={k}: trace "
              f"{r.trace_sec:.2f} s, compile {r.compile_sec:.2f} s, "
              f"flops/step {r.flops_per_step / 1e9 if r.flops_per_step else float('nan'):.3f} G", flush=True)
    g_params = count_params(next(iter(runners.values())).state.g.params)
    d_params = count_params(next(iter(runners.values())).state.d.params)
    print(f"jaxgan parameters: G {g_params:,}  D {d_params:,}")

    torch_model = None
    if args.compare_torch:
        if args.model != "dcgan" or args.image_size not in (32, 64):
            print(f"--compare_torch: only --model=dcgan at 32 or 64 px has a torch twin; skipped")
        else:
            try:
                import torch
                import torch_dcgan
            except ImportError as e:
                print(f"--compare_torch: torch is not importable ({e}); skipped (pip install torch)")
            else:
                if args.torch_threads:
                    torch.set_num_threads(args.torch_threads)
                torch_model = torch_dcgan.TorchDCGAN(args.image_size, args.channels, exp.generator.latent_dim,
                                                     exp.generator.ngf, variant=args.torch_variant,
                                                     channels_last=args.torch_channels_last)
                tg, td = torch_dcgan.num_params(torch_model.g), torch_dcgan.num_params(torch_model.d)
                print(f"torch parameters:  G {tg:,}  D {td:,}  (torch {torch.__version__}, "
                      f"{torch.get_num_threads()} threads, variant {args.torch_variant})")
                assert (tg, td) == (g_params, d_params), f"parameter counts differ: torch {(tg, td)} vs jaxgan " \
                                                         f"{(g_params, d_params)}"
                real = torch.rand(args.batch_size, args.channels, args.image_size, args.image_size) * 2 - 1

                def torch_run(n, model=torch_model, real=real):
                    for _ in range(n):
                        model.step(real)

    # warm up and size the blocks: each block ~ --block_sec
    fns, calls_per_block, steps_per_call = {}, {}, {}
    for name, r in runners.items():
        r.run(args.warmup)
        dt = time_block(r.run, 1)
        fns[name], steps_per_call[name] = r.run, r.k
        calls_per_block[name] = args.block_steps // r.k if args.block_steps else max(1, round(args.block_sec / dt))
    if torch_model is not None:
        torch_run(2)
        dt = time_block(torch_run, 1)
        fns["torch"], steps_per_call["torch"] = torch_run, 1
        calls_per_block["torch"] = args.block_steps or max(1, round(args.block_sec / dt))

    rates = {name: [] for name in fns}
    for _ in range(args.blocks):  # interleaved: one block of each, in turn
        for name, fn in fns.items():
            dt = time_block(fn, calls_per_block[name])
            rates[name].append(calls_per_block[name] * steps_per_call[name] / dt)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(f"\n{'variant':<16} {'steps/s':>9} {'images/s':>10} {'min-max steps/s':>18} {'steps/block':>12}")
    for name, rs in rates.items():
        med = statistics.median(rs)
        print(f"{name:<16} {med:>9.3f} {med * images_per_step:>10.1f} {min(rs):>8.3f}-{max(rs):<9.3f} "
              f"{calls_per_block[name] * steps_per_call[name]:>12}")
    main_name = next(iter(runners))
    r0 = runners[main_name]
    sps = statistics.median(rates[main_name])
    result = {"model": args.model, "steps_per_sec": round(sps, 4), "images_per_sec": round(sps * images_per_step, 2),
              "compile_sec": round(r0.compile_sec, 3), "trace_sec": round(r0.trace_sec, 3),
              "flops_per_step": r0.flops_per_step, "device": device_name,
              "gflops_per_sec": None if r0.flops_per_step is None else round(sps * r0.flops_per_step / 1e9, 2),
              "image_size": None if args.model == "mlp" else args.image_size,
              "channels": None if args.model == "mlp" else args.channels, "batch_size": args.batch_size,
              "n_critic": args.n_critic, "compute_dtype": args.compute_dtype, "conv_impl": args.conv_impl,
              "steps_per_call": ks[0], "params_g": g_params, "params_d": d_params, "blocks": args.blocks,
              "load_avg_1m": load, "xla_flags": os.environ.get("XLA_FLAGS", "")}
    if len(ks) > 1:
        result["steps_per_sec_by_k"] = {str(r.k): round(statistics.median(rates[n]), 4) for n, r in runners.items()}
        result["compile_sec_by_k"] = {str(r.k): round(r.compile_sec, 3) for r in runners.values()}
    if torch_model is not None:
        tps = statistics.median(rates["torch"])
        paired = [a / b for a, b in zip(rates[main_name], rates["torch"])]
        print(f"\nratio jaxgan/torch: {sps / tps:.3f} (medians), paired {statistics.median(paired):.3f} "
              f"(min {min(paired):.3f}, max {max(paired):.3f}) over {len(paired)} interleaved block pairs")
        result.update(torch_steps_per_sec=round(tps, 4), torch_images_per_sec=round(tps * args.batch_size, 2),
                      ratio=round(sps / tps, 4), paired_ratio=round(statistics.median(paired), 4),
                      torch_variant=args.torch_variant, torch_channels_last=args.torch_channels_last)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
