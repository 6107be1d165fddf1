"""Per-layer convolution timings: forward, input-grad (dgrad), weight-grad (wgrad) per implementation.

Layers are the DCGAN 64x64x3 batch-64 shapes (G: transposed convs, D: stride-2 convs) plus D's 4x4 valid
logit conv and one SNGAN-style 3x3 stride-1 'SAME' conv. Each (layer, pass, implementation) is jitted,
warmed up, then timed `--repeats` times, implementations interleaved, with `block_until_ready`; the
table shows the median ms and GFLOP/s from the nominal MAC count (2*MACs, padding taps included).
Timings on a shared machine are noisy (+-10-30 %); re-run and compare medians.

  python benchmarks/conv_layers.py [--repeats 7] [--impls xla,phase,gemm,dnnl,auto] [--layers G.up1,D.down1]

"dnnl" = oneDNN's kernels (jaxgan.models.onednn); "auto" is "dnnl" on cpu where the extension is available,
the per-pass rule of jaxgan.models.layers with JAXGAN_NATIVE=0.

The last line is JSON: {"device": ..., "results": [{"layer", "pass", "impl", "ms", "gflops"}, ...]}.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp

from jaxgan.models.layers import Conv, ConvTranspose

B = 64
# name: (module class, features, kernel, stride, padding, input shape HWC)
LAYERS = {
    "G.up0": (ConvTranspose, 512, 4, 1, "VALID", (1, 1, 100)),
    "G.up1": (ConvTranspose, 256, 4, 2, ((2, 2), (2, 2)), (4, 4, 512)),
    "G.up2": (ConvTranspose, 128, 4, 2, ((2, 2), (2, 2)), (8, 8, 256)),
    "G.up3": (ConvTranspose, 64, 4, 2, ((2, 2), (2, 2)), (16, 16, 128)),
    "G.up4": (ConvTranspose, 3, 4, 2, ((2, 2), (2, 2)), (32, 32, 64)),
    "D.down0": (Conv, 64, 4, 2, ((1, 1), (1, 1)), (64, 64, 3)),
    "D.down1": (Conv, 128, 4, 2, ((1, 1), (1, 1)), (32, 32, 64)),
    "D.down2": (Conv, 256, 4, 2, ((1, 1), (1, 1)), (16, 16, 128)),
    "D.down3": (Conv, 512, 4, 2, ((1, 1), (1, 1)), (8, 8, 256)),
    "D.out": (Conv, 1, 4, 1, "VALID", (4, 4, 512)),
    "S.conv3": (Conv, 128, 3, 1, "SAME", (16, 16, 128)),
}


def _passes(layer, impl):
  cls, feat, k, s, pad, hwc = layer
  if impl == "corr":  # only the transposed conv's dedicated weight gradient; fwd/dgrad as xla
    if cls is not ConvTranspose:
      return None, 0
    impl = "xla/xla/corr"
  m = cls(feat, (k, k), strides=(s, s), padding=pad, use_bias=False, implementation=impl)
  x = jax.random.normal(jax.random.key(0), (B,) + hwc)
  p = m.init(jax.random.key(1), x)
  y = m.apply(p, x)
  g = jax.random.normal(jax.random.key(2), y.shape)
  fwd = jax.jit(m.apply)
  dgrad = jax.jit(lambda p, x, g: jax.vjp(lambda x: m.apply(p, x), x)[1](g)[0])
  wgrad = jax.jit(lambda p, x, g: jax.vjp(lambda p: m.apply(p, x), p)[1](g)[0])
  hin, win, cin = hwc
  macs = B * (hin * win if cls is ConvTranspose else y.shape[1] * y.shape[2]) * k * k * cin * feat
  return {"fwd": lambda: fwd(p, x), "dgrad": lambda: dgrad(p, x, g), "wgrad": lambda: wgrad(p, x, g)}, 2 * macs


def _time(fn):
  t = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - t


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--repeats", type=int, default=7)
  ap.add_argument("--impls", default="xla,phase,gemm,corr,dnnl,auto")
  ap.add_argument("--layers", default=",".join(LAYERS))
  args = ap.parse_args()
  impls, names = args.impls.split(","), args.layers.split(",")
  results = []
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), batch {B}, "
        f"median of {args.repeats} runs; ms (GFLOP/s)")
  print(f"{'layer':8s} {'pass':6s} " + " ".join(f"{i:>15s}" for i in impls))
  for name in names:
    fns = {}
    for impl in impls:
      fns[impl], f = _passes(LAYERS[name], impl)
      flops = f or flops
    for ps in ("fwd", "dgrad", "wgrad"):
      run = [i for i in impls if fns[i] is not None]
      for impl in run:  # compile + warm up
        _time(fns[impl][ps]); _time(fns[impl][ps])
      times = {impl: [] for impl in run}
      for _ in range(args.repeats):  # interleaved
        for impl in run:
          times[impl].append(_time(fns[impl][ps]))
      row = []
      for impl in impls:
        if impl not in run:
          row.append(f"{'-':>15s}")
          continue
        ms = 1e3 * statistics.median(times[impl])
        results.append({"layer": name, "pass": ps, "impl": impl, "ms": round(ms, 3),
                        "gflops": round(flops / ms / 1e6, 1)})
        row.append(f"{ms:8.1f} ({flops / ms / 1e6:4.0f})")
      print(f"{name:8s} {ps:6s} " + " ".join(row), flush=True)
  totals = {i: sum(r["ms"] for r in results if r["impl"] == i) for i in impls}
  print(f"{'sum':15s} " + " ".join(f"{totals[i]:15.1f}" for i in impls))
  print(json.dumps({"device": jax.devices()[0].device_kind, "backend": jax.default_backend(), "batch": B,
                    "repeats": args.repeats, "totals_ms": totals, "results": results}))


if __name__ == "__main__":
  main()
