"""The accelerator figures of the README in one process: DCGAN and SNGAN steps vs their PyTorch twins.

    python benchmarks/gpu_suite.py --out=gpu.jsonl                   # every case below
    python benchmarks/gpu_suite.py --out=gpu.jsonl --only=dcgan-32   # cases whose name starts with this

Runs `step_throughput.main` (with ``--compare_torch --peak``) for each case, float32 and bfloat16, appending its
JSON line to ``--out`` as soon as it is measured (a case that fails is recorded with its error and the suite
goes on), then prints a table. The matmul peak is measured once per dtype (`step_throughput.matmul_tflops`
caches it). Meant for a GPU; on CPU use
``step_throughput.py`` directly.

The torch steps of a case with a twin: its eager steps (DCGAN: jaxgan's step and the pytorch/examples loop;
SNGAN: jaxgan's) and jaxgan's step under ``torch.compile`` in each ``--torch_compile`` mode (default: default and
max-autotune; ``--torch_compile=`` for eager only). StyleGAN2 and BigGAN have no torch twin: their cases time
jaxgan alone (the shipped flagfiles' networks on random data).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import step_throughput  # noqa: E402

# name, step_throughput flags. "Large batches": the batch sizes of the papers' GPU runs or more.
CASES = [
    ("dcgan-32-b256", "--model=dcgan --image_size=32 --channels=3 --batch_size=256"),
    ("dcgan-64-b64", "--model=dcgan --image_size=64 --channels=3 --batch_size=64"),
    ("dcgan-128-b128", "--model=dcgan --image_size=128 --channels=3 --batch_size=128"),
    ("sngan-32-b256", "--model=sngan --image_size=32 --channels=3 --batch_size=256"),
    ("sngan-128-b64", "--model=sngan --image_size=128 --channels=3 --batch_size=64"),
    ("stylegan2-256-b32", "--flagfile=launch/configs/stylegan2_ffhq256.cfg --batch_size=32"),
    ("biggan-128-b256", "--flagfile=launch/configs/imagenet128_biggan.cfg --batch_size=256"),
]
EAGER_TORCH = {"dcgan": "jaxgan,examples", "sngan": "jaxgan"}


def torch_variants(case_flags: str, compile_modes: list[str]) -> str | None:
    """The ``--torch_variant`` of a case: its eager steps, then jaxgan's step under each torch.compile mode;
    None for a model without a twin."""
    model = next((f.split("=", 1)[1] for f in case_flags.split() if f.startswith("--model=")), None)
    if model not in EAGER_TORCH:
        return None
    return ",".join([EAGER_TORCH[model]] + [f"jaxgan@{mode}" for mode in compile_modes])
DTYPES = ("float32", "bfloat16")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="JSON lines file (appended)")
    p.add_argument("--only", default="", help="comma-separated prefixes of case names")
    p.add_argument("--dtypes", default=",".join(DTYPES))
    p.add_argument("--blocks", type=int, default=5)
    p.add_argument("--block_sec", type=float, default=1.0)
    p.add_argument("--extra", default="", help="flags appended to every case")
    p.add_argument("--torch_compile", default="default,max-autotune",
                   help="comma-separated torch.compile modes for jaxgan's torch step ('' : eager only)")
    args = p.parse_args(argv)
    modes = [m for m in args.torch_compile.split(",") if m]
    unknown = [m for m in modes if m not in step_throughput.TORCH_COMPILE_MODES]
    if unknown:
        p.error(f"--torch_compile={args.torch_compile}: accepted: "
                f"{', '.join(step_throughput.TORCH_COMPILE_MODES)} (comma-separated)")
    prefixes = [x for x in args.only.split(",") if x]
    rows = []
    for name, flags in CASES:
        if prefixes and not any(name.startswith(x) for x in prefixes):
            continue
        for dtype in args.dtypes.split(","):
            variants = torch_variants(flags, modes)
            argv_case = (flags.split() + [f"--compute_dtype={dtype}", "--peak", f"--blocks={args.blocks}",
                                          f"--block_sec={args.block_sec}"]
                         + (["--compare_torch", f"--torch_variant={variants}"] if variants else [])
                         + args.extra.split())
            print(f"\n===== {name} {dtype}: {' '.join(argv_case)}", flush=True)
            t0 = time.perf_counter()
            try:
                result = step_throughput.main(argv_case)
            except Exception as e:  # noqa: BLE001 - record it and go on with the other cases
                traceback.print_exc()
                result = {"error": f"{type(e).__name__}: {e}"[:500]}
            result.update(case=name, dtype=dtype, wall_sec=round(time.perf_counter() - t0, 1))
            rows.append(result)
            with open(args.out, "a") as f:
                f.write(json.dumps(result) + "\n")
    print(f"\n{'case':<16} {'dtype':<9} {'jaxgan img/s':>12} {'torch img/s':>12} {'ratio':>6} "
          f"{'jax %peak':>9} {'torch %peak':>11} {'compile s':>9}")
    for r in rows:
        if "error" in r:
            print(f"{r['case']:<16} {r['dtype']:<9} ERROR {r['error'][:80]}")
            continue
        pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
        print(f"{r['case']:<16} {r['dtype']:<9} {r['images_per_sec']:>12.0f} {r.get('torch_images_per_sec', 0):>12.0f} "
              f"{r.get('ratio', float('nan')):>6.2f} {pct(r.get('fraction_of_peak')):>9} "
              f"{pct(r.get('torch_fraction_of_peak')):>11} {r['compile_sec']:>9.1f}")


if __name__ == "__main__":
    main()
