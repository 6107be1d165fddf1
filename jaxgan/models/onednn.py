"""oneDNN convolutions on XLA:CPU (FFI custom calls), differentiable in forward and reverse mode to any order.

XLA:CPU computes convolutions with Eigen kernels that run slower than oneDNN's on the strided convolutions of
DCGAN-style networks (measured in docs/performance.md). jaxgan ships a small XLA FFI extension
(``jaxgan/native/onednn_conv.cc``, compiled on first use by ``jaxgan.native``) that runs the three passes of a
strided, padded 2-D convolution on oneDNN:

    conv(x, w)               y = C_w x           x [N,H,W,C], w [kh,kw,C,O] -> y [N,Ho,Wo,O]
    conv_input_grad(g, w)    C_w^T g             g [N,Ho,Wo,O]             -> [N,H,W,C]
    conv_kernel_grad(x, g)   d<g, C_w x>/dw      x, g                      -> [kh,kw,C,O]

with ``C_w`` = ``lax.conv_general_dilated(., w, strides, pads)`` (NHWC/HWIO). The three are bilinear and each
one's transposes are the others, so they are JAX primitives with ``defbilinear`` rules
(`jaxgan.models.conv_passes`), like ``lax.conv_general_dilated``: ``jax.jvp``, ``jax.grad``, Hessian-vector
products and gradient penalties nest to any order, and every derivative program calls these three custom
calls and no other convolution. A transposed convolution is ``conv_input_grad`` of a convolution with the
kernel flipped and its in/out channels swapped (``convt``).

Float32 or bfloat16 (both operands of one dtype, which the result has too; in bfloat16 oneDNN accumulates in
float32 and rounds the result once) on the cpu backend, non-negative paddings (``supported``); ``available()``
says whether the extension could be built and loaded.

Under ``jax.vmap`` (a sweep of models, `jaxgan.sweep`) the custom calls get leading batch dimensions
(``jax.ffi.ffi_call``'s ``vmap_method="expand_dims"`` semantics) and run the batch's convolutions in one call, as
`batch_mode` chooses: "concurrent" (the default) runs them side by side, one convolution per OpenMP thread on a
kernel planned for one thread (whole rounds of as many convolutions as threads; a remainder runs one after another
on every thread); "grouped" runs them as one grouped oneDNN convolution (the activations transposed so that the
models' channels sit side by side); "loop" runs them one after another on every thread. Except in "loop", a
kernel shared by the whole batch folds the batch into the examples instead (one convolution). Small
convolutions keep few threads busy, so running several at once pays most there; "concurrent" was the fastest
or within noise of the fastest on every DCGAN size measured (docs/performance.md,
``benchmarks/sweep_speedup.py --model=dcgan``).
A program on one device runs them on every core; a program on N (simulated) CPU devices gives each device's
calls its share of the cores (``threads_per_device``).
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.interpreters import mlir

from jaxgan import native
from jaxgan.models import conv_passes

_TARGETS = {"fwd": "JaxganOnednnConvFwd", "dgrad": "JaxganOnednnConvBwdData",
            "wgrad": "JaxganOnednnConvBwdWeights"}
_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))


@functools.cache
def available() -> bool:
  """True when the oneDNN extension is built, loaded and registered with XLA:CPU."""
  lib = native.load("onednn_conv")
  if lib is None:
    logging.warning("jaxgan: oneDNN convolutions unavailable (%s); using XLA's convolutions",
                    native.why_unavailable("onednn_conv"))
    return False
  for symbol in _TARGETS.values():
    jax.ffi.register_ffi_target(f"jaxgan_{symbol}", jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
  return True


def supported(kind: str, x, w, s, pads) -> bool:
  """Whether conv ("conv") or convt ("convt") of these arrays (both float32 or both bfloat16) can run here on
  oneDNN."""
  if x.dtype != w.dtype or x.dtype not in _DTYPES or x.ndim != 4 or w.ndim != 4 or 0 in x.shape + w.shape:
    return False
  if kind == "convt":
    pads, out = _convt_as_conv(x.shape[1:3], w.shape[:2], s, pads)
  else:
    out = _out_hw(x.shape[1:3], w.shape[:2], s, pads)
  return (min(p for lo_hi in pads for p in lo_hi) >= 0 and min(out) > 0 and jax.default_backend() == "cpu"
          and available())


def _check():
  if not available():
    raise RuntimeError("the oneDNN extension is not available: " + native.why_unavailable("onednn_conv"))


def _lowering(pass_):
  """The FFI custom call of a pass (cpu). With leading (vmap) dimensions (``variant`` = the `batch_mode`): the
  handler runs the batch side by side ("concurrent") or one after another ("loop"); "grouped" and a kernel
  shared by the whole batch (in either mode but "loop") lower through `_batched` instead."""
  target = f"jaxgan_{_TARGETS[pass_]}"
  rule = jax.ffi.ffi_lowering(target)

  def lower(ctx, a, b, *, geom, variant):
    threads = threads_per_device(_program_devices(ctx))
    attrs = dict(strides=np.asarray(geom.strides, np.int64),
                 padding=np.asarray([p for lo_hi in geom.pads for p in lo_hi], np.int64), threads=np.int64(threads))
    mode = variant or "concurrent"
    kernel = ctx.avals_in[1] if pass_ != "wgrad" else None
    shared_kernel = kernel is not None and all(d == 1 for d in kernel.shape[:-4])
    if ctx.avals_in[0].ndim > 4 and (mode == "grouped" or (shared_kernel and mode != "loop")):
      batched = functools.partial(_batched, pass_, target, ctx.avals_out[0], attrs)
      return mlir.lower_fun(batched, multiple_results=False)(ctx, a, b)
    return rule(ctx, a, b, **attrs, groups=np.int64(-1 if mode == "concurrent" else 0))

  return lower, "cpu"


def _batched(pass_, target, out_aval, attrs, a, b):
  """One oneDNN call for a pass whose operands a, b carry leading (vmap) dimensions (each the batch size or 1).

  A kernel shared by every index (forward and input gradient) folds the batch into the examples: one
  convolution of [B*N, H, W, C]. Otherwise the B convolutions run as one grouped convolution (B groups): the
  activations [B, N, H, W, C] are transposed to [N, H, W, B*C] (XLA's transpose, which it can fuse into the
  producer), the kernels [B, kh, kw, C, O] are the grouped kernel as they are (GHWIO), and the result comes
  back the same way. A broadcast operand of a grouped call is materialised."""
  lead = out_aval.shape[:-4]
  size = int(np.prod(lead))
  call = lambda shape, *ops, groups: jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(shape, out_aval.dtype))(
      *ops, **attrs, groups=np.int64(groups))
  kernel = b if pass_ != "wgrad" else None
  if kernel is not None and all(d == 1 for d in kernel.shape[:-4]):
    # a [.., N, H, W, C] activation with a shared kernel: the batch joins the examples
    act = jnp.broadcast_to(a, lead + a.shape[-4:]).reshape((size * a.shape[-4],) + a.shape[-3:])
    out = call((act.shape[0],) + out_aval.shape[-3:], act, kernel.reshape(kernel.shape[-4:]), groups=0)
    return out.reshape(out_aval.shape)
  a, b = (jnp.broadcast_to(t, lead + t.shape[-4:]).reshape((size,) + t.shape[-4:]) for t in (a, b))
  if size == 1:
    return call(out_aval.shape[-4:], a[0], b[0], groups=0).reshape(out_aval.shape)
  side_by_side = lambda t: jnp.moveaxis(t, 0, 3).reshape(t.shape[1:4] + (size * t.shape[4],))
  if pass_ == "wgrad":   # (x, g) -> kernels [B, kh, kw, C, O]
    out = call((size,) + out_aval.shape[-4:], side_by_side(a), side_by_side(b), groups=size)
    return out.reshape(out_aval.shape)
  n, h, w, c = out_aval.shape[-4:]  # fwd (x, w) -> y, dgrad (g, w) -> x: activations out
  out = call((n, h, w, size * c), side_by_side(a), b, groups=size)
  return jnp.moveaxis(out.reshape(n, h, w, size, c), 3, 0).reshape(out_aval.shape)


def threads_per_device(devices: int) -> int:
  """oneDNN threads for each device of a program on ``devices`` CPU devices: its share of the cores
  (``$OMP_NUM_THREADS`` or the CPU affinity; every core for one device), at least 1, so that simulated devices,
  which share the cores, do not run a team of all-core threads each. Always explicit: OpenMP's thread count is
  a setting of the calling thread, which XLA reuses across programs, so a program that left it unset would run
  with whatever the thread's last program set (and round differently)."""
  cores = int(os.environ.get("OMP_NUM_THREADS") or 0) or len(os.sched_getaffinity(0))
  return max(1, cores // max(devices, 1))


def _program_devices(ctx) -> int:
  """The number of devices the program being lowered runs on (shard_map: its mesh; jit: its sharding)."""
  axis_context = ctx.module_context.axis_context
  mesh = getattr(axis_context, "mesh", None)
  return int(mesh.size) if mesh is not None else int(getattr(axis_context, "num_devices", 1) or 1)


_PASSES = conv_passes.Passes("jaxgan_onednn_conv", lowering=_lowering)


def _out_hw(hw, k, s, pads):
  return tuple((hw[d] + sum(pads[d]) - k[d]) // s[d] + 1 for d in (0, 1))


BATCH_MODES = ("concurrent", "grouped", "loop")
_batch_mode: contextvars.ContextVar[str] = contextvars.ContextVar("jaxgan_onednn_batch_mode", default="concurrent")


@contextlib.contextmanager
def batch_mode(mode: str):
  """How the convolutions traced inside run under ``jax.vmap`` (module docstring): "concurrent" (the default),
  "grouped" or "loop". For benchmarks and tests; the choice is recorded in the traced program (a parameter of
  the primitives), so jit caches stay correct."""
  if mode not in BATCH_MODES:
    raise ValueError(f"batch_mode={mode!r}; accepted: {', '.join(map(repr, BATCH_MODES))}")
  token = _batch_mode.set(mode)
  try:
    yield
  finally:
    _batch_mode.reset(token)


def conv(x, w, s, pads):
  """y = lax.conv_general_dilated(x, w, s, pads) (NHWC, HWIO); x, w both float32 or both bfloat16."""
  _check()
  return _PASSES.fwd(x, w, conv_passes.Geometry.of("conv", x.shape, w.shape, s, pads), _batch_mode.get())


def conv_input_grad(g, w, s, pads, hw):
  """C_w^T g: the input gradient of ``conv`` with cotangent g, for inputs of spatial size hw."""
  _check()
  return _PASSES.dgrad(g, w, conv_passes.Geometry("conv", *_static(s, pads), tuple(hw), tuple(w.shape[-4:-2])),
                       _batch_mode.get())


def conv_kernel_grad(x, g, s, pads, k):
  """d<g, C_w x>/dw for a kernel of spatial size k (the weight gradient of ``conv``)."""
  _check()
  return _PASSES.wgrad(x, g, conv_passes.Geometry("conv", *_static(s, pads), tuple(x.shape[-3:-1]), tuple(k)),
                       _batch_mode.get())


def _static(s, pads):
  return tuple(int(v) for v in s), tuple((int(lo), int(hi)) for lo, hi in pads)


def convt(x, w, s, pads):
  """lax.conv_transpose's convolution (no kernel flip): y[o] = sum_k xdil[o + k - lo] w[k], xdil[s*i] = x[i],
  as the adjoint of the stride-s conv with kernel flip(w) (in/out swapped) and low padding k-1-lo."""
  conv_pads, out = _convt_as_conv(x.shape[1:3], w.shape[:2], s, pads)
  return conv_input_grad(x, jnp.flip(w, (0, 1)).swapaxes(2, 3), tuple(s), conv_pads, out)


def _convt_as_conv(hw, k, s, pads):
  """(pads of the equivalent conv, output spatial size) of lax.conv_transpose-style pads."""
  out = tuple((hw[d] - 1) * s[d] + 1 + sum(pads[d]) - k[d] + 1 for d in (0, 1))
  lo = [k[d] - 1 - pads[d][0] for d in (0, 1)]
  hi = [s[d] * (hw[d] - 1) + k[d] - out[d] - lo[d] for d in (0, 1)]
  return ((lo[0], hi[0]), (lo[1], hi[1])), out
