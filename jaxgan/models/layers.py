"""Drop-in ``Conv`` / ``ConvTranspose`` with fast CPU formulations.

Same parameters as ``flax.linen.Conv`` / ``flax.linen.ConvTranspose`` (``kernel`` [kh, kw, in, out], optional
``bias``, same initialisers and shapes), same outputs and gradients (to float32 rounding). Only *how* the
convolution is computed differs, chosen by the field ``implementation`` (None, the default: the process-wide
or model-wide choice "auto", "xla" or "dnnl" of `set_default_implementation` / `use_implementation` / a model's
``conv_impl`` field, i.e. ``--conv_impl``; "auto" unless set):

* ``"xla"``   -- plain ``lax.conv_general_dilated`` (exactly what flax does).
* ``"phase"`` -- stride-s conv as space-to-depth + one stride-1 conv; stride-s transposed conv as s*s
  sub-pixel ("phase") stride-1 convs + depth-to-space. Gradients by autodiff (stride-1 convs only).
* ``"gemm"``  -- im2col + one ``dot_general`` (conv), or one ``dot_general`` + col2im, its exact adjoint
  (transposed conv). Gradients by autodiff (GEMMs + pads/slices).
* ``"F/D/W"`` -- e.g. ``"xla/phase/gemm"``: the forward computed with F, the input gradient (dgrad) with the
  linear transpose of D and the weight gradient (wgrad) with that of W (three bilinear primitives,
  `jaxgan.models.conv_passes`).
* ``"dnnl"``  -- oneDNN's convolution kernels through XLA FFI custom calls (``jaxgan.models.onednn``,
  ``jaxgan/native``): cpu, float32 or bfloat16 (input and kernel of one dtype), non-negative paddings; raises
  where it cannot run. Not mixed with the others.
* ``"auto"``  -- on cpu ``"dnnl"`` wherever it can run (float32 or bfloat16, extension built), else the per-pass
  rule below; on gpu/tpu (``jax.default_backend()``) ``"xla"``, except ``"xla/xla/corr"`` for strided transposed
  convs (`_auto_accelerator`: XLA:GPU's own weight gradient of those materialises the dilated input; the GPU
  measurement is in docs/performance.md).

Fast paths cover 2-D NHWC convolutions with ``feature_group_count=1`` and no input/kernel dilation (any
stride, kernel size and padding); anything else silently uses ``"xla"`` (correct, maybe slow).
Every implementation is differentiable in forward and reverse mode to any order (``jax.jvp``, ``jax.grad``,
Hessian-vector products, gradient penalties) and under ``jax.vmap``: "dnnl" and "F/D/W" are primitives whose
derivatives are their other passes (`jaxgan.models.conv_passes`), so the forward, input- and weight-gradient
formulations chosen here are the ones every derivative program runs.

Why oneDNN first on cpu: its kernels run the same convolutions faster than the best XLA formulations, layer by
layer and over whole DCGAN/SNGAN steps (figures and commands: docs/performance.md).

Why the XLA formulations: XLA:CPU lowers the weight gradient of a transposed convolution (and to a lesser
degree the input gradient of a strided conv) to convolutions its Eigen path does not take, which run far below
the machine's speed; the rule below picks, per layer and pass, the formulation that avoids them. The per-layer
timings it was chosen from (``python benchmarks/conv_layers.py --repeats 3``) are in docs/performance.md,
"Per-layer timings behind the CPU rule".

Auto rule on cpu without oneDNN ("fwd/dgrad/wgrad"; hw = input height*width; see ``_auto_cpu``)::

    ConvTranspose stride 1: 1x1 input -> "gemm/gemm/corr" (G.up0, a dense projection), else "xla"
    ConvTranspose stride>1: features <= 16 -> "xla/xla/corr" (G.up4, to-image)
                            else          -> "phase/xla/corr" (G.up1-3)
    Conv stride 1                     -> "xla" (D.out, SNGAN 3x3)
    Conv stride>1: in_features <= 16  -> "phase/phase/xla" (D.down0, from-image)
                   hw <= 64           -> "xla/gemm/xla" (D.down3)
                   else               -> "xla/phase/xla" (D.down1, D.down2)

The last revision (G.up1/2 dgrad phase -> xla, D.down3 fwd gemm -> xla, D.down0 xla -> phase/phase/xla) was
chosen on whole training steps, which vary less than single layers (docs/performance.md). jaxgan/xla_flags.py
keeps XLA:CPU's convolutions off YNNPACK, whose strided-conv weight gradients are slower still.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax.linen.dtypes import promote_dtype
from jax import lax

from jaxgan import native as native_ext
from jaxgan.models import conv_passes, onednn

_DN = ("NHWC", "HWIO", "NHWC")
Pads = tuple[tuple[int, int], ...]


# --------------------------------------------------------------------------------------------------------
# Formulations. All take x [N,H,W,C], w [kh,kw,C,O] and static (strides, pads, precision).
# Conv:           y[o] = sum_k xpad[s*o + k] w[k]                       (pads applied to x)
# ConvTranspose:  y[o] = sum_k xdil[o + k - lo] w[k], xdil[s*i] = x[i]  (lax.conv_transpose, no kernel flip)
# --------------------------------------------------------------------------------------------------------
def _pad(x, pads):  # spatial pads (may be negative = crop)
  return lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), *((lo, hi, 0) for lo, hi in pads), (0, 0, 0)))


def conv_xla(x, w, s, pads, precision=None):
  return lax.conv_general_dilated(x, w, s, pads, dimension_numbers=_DN, precision=precision)


def conv_phase(x, w, s, pads, precision=None):
  """Space-to-depth: a stride-s conv with kernel k is a stride-1 conv with kernel ceil(k/s) on s*s*C channels."""
  if tuple(s) == (1, 1):
    return conv_xla(x, w, s, pads, precision)
  (sh, sw), (kh, kw, c, o) = s, w.shape
  (ph, pw) = (-(-kh // sh), -(-kw // sw))
  ho = (x.shape[1] + sum(pads[0]) - kh) // sh + 1
  wo = (x.shape[2] + sum(pads[1]) - kw) // sw + 1
  hs, ws = ho + ph - 1, wo + pw - 1  # space-to-depth extent: rows s*hs, cols s*ws of the padded input
  x = _pad(x, ((pads[0][0], sh * hs - x.shape[1] - pads[0][0]), (pads[1][0], sw * ws - x.shape[2] - pads[1][0])))
  n = x.shape[0]
  x = x.reshape(n, hs, sh, ws, sw, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, hs, ws, sh * sw * c)
  w = jnp.pad(w, ((0, ph * sh - kh), (0, pw * sw - kw), (0, 0), (0, 0)))
  w = w.reshape(ph, sh, pw, sw, c, o).transpose(0, 2, 1, 3, 4, 5).reshape(ph, pw, sh * sw * c, o)
  return lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=_DN, precision=precision)


def _im2col(x, k, s, pads):
  """Patches [N, Ho, Wo, kh*kw*C] (tap-major, channel-minor: matches w.reshape(kh*kw*C, O))."""
  x = _pad(x, pads)
  ho, wo = (x.shape[1] - k[0]) // s[0] + 1, (x.shape[2] - k[1]) // s[1] + 1
  taps = [x[:, i:i + s[0] * (ho - 1) + 1:s[0], j:j + s[1] * (wo - 1) + 1:s[1], :]
          for i in range(k[0]) for j in range(k[1])]
  return jnp.concatenate(taps, axis=-1)


def conv_gemm(x, w, s, pads, precision=None):
  cols = _im2col(x, w.shape[:2], s, pads)
  return lax.dot_general(cols, w.reshape(-1, w.shape[-1]), (((3,), (0,)), ((), ())), precision=precision)


def _convt_out(x, w, s, pads):
  return [(x.shape[1 + d] - 1) * s[d] + 1 + sum(pads[d]) - w.shape[d] + 1 for d in (0, 1)]


def convt_xla(x, w, s, pads, precision=None):
  return lax.conv_general_dilated(x, w, (1, 1), pads, lhs_dilation=s, dimension_numbers=_DN,
                                  precision=precision)


def _interleave(phases, s, out):
  """Depth-to-space: y[s*q + r] = phases[rh][rw][q]; phases may be one row shorter; crop to `out`."""
  qh, qw = -(-out[0] // s[0]), -(-out[1] // s[1])
  rows = [jnp.stack([_pad(p, ((0, qh - p.shape[1]), (0, qw - p.shape[2]))) for p in row], axis=3)
          for row in phases]
  y = jnp.stack(rows, axis=2)  # [N, qh, sh, qw, sw, O]
  y = y.reshape(y.shape[0], qh * s[0], qw * s[1], y.shape[-1])
  return y[:, :out[0], :out[1]]


def convt_phase(x, w, s, pads, precision=None):
  """Sub-pixel: output phase r of a stride-s transposed conv is a stride-1 conv with taps w[k0_r::s]."""
  if tuple(s) == (1, 1):
    return convt_xla(x, w, s, pads, precision)
  out = _convt_out(x, w, s, pads)
  phases = []
  for rh in range(s[0]):
    row = []
    for rw in range(s[1]):
      k0, q, d, t = [], [], [], []
      for dim, r in enumerate((rh, rw)):
        k0.append((pads[dim][0] - r) % s[dim])             # first tap of this phase
        q.append(-(-(out[dim] - r) // s[dim]))             # outputs in this phase
        d.append((r + k0[-1] - pads[dim][0]) // s[dim])    # input offset of the first tap
        t.append(len(range(k0[-1], w.shape[dim], s[dim])))  # taps in this phase
      if min(t) == 0 or min(q) <= 0:
        row.append(jnp.zeros((x.shape[0], max(q[0], 0), max(q[1], 0), w.shape[-1]), x.dtype))
        continue
      xr = _pad(x, [(-d[i], q[i] + t[i] - 1 - x.shape[1 + i] + d[i]) for i in (0, 1)])
      wr = w[k0[0]::s[0], k0[1]::s[1]]
      row.append(lax.conv_general_dilated(xr, wr, (1, 1), "VALID", dimension_numbers=_DN,
                                          precision=precision))
    phases.append(row)
  return _interleave(phases, s, out)


def convt_gemm(x, w, s, pads, precision=None):
  """cols = x @ w[in, kh*kw*out]; col2im: tap k of input i lands on output s*i + lo - k."""
  kh, kw, c, o = w.shape
  out = _convt_out(x, w, s, pads)
  cols = lax.dot_general(x, w.transpose(2, 0, 1, 3).reshape(c, -1), (((3,), (0,)), ((), ())),
                         precision=precision).reshape(*x.shape[:3], kh, kw, o)
  zero = jnp.zeros((), x.dtype)
  y = None
  for i in range(kh):
    for j in range(kw):
      lo = (pads[0][0] - i, pads[1][0] - j)
      cfg = [(0, 0, 0)] + [(lo[dd], out[dd] - (x.shape[1 + dd] - 1) * s[dd] - 1 - lo[dd], s[dd] - 1)
                           for dd in (0, 1)] + [(0, 0, 0)]
      tap = lax.pad(cols[:, :, :, i, j], zero, cfg)
      y = tap if y is None else y + tap
  return y


def convt_wgrad_corr(x, g, w_shape, s, pads, precision=None):
  """Weight gradient of a transposed conv as the weight gradient of a *strided* conv (a kind XLA:CPU runs
  fast): dW[K-1-k, c, o] = sum_i x[i, c] gpad[s*i + k, o], i.e. the stride-s conv of g (kernel [K, K, O, C],
  low padding K-1-lo) back-propagated to its kernel with cotangent x."""
  kh, kw, c, o = w_shape
  lo = [kh - 1 - pads[0][0], kw - 1 - pads[1][0]]
  hi = [s[d] * (x.shape[1 + d] - 1) + w_shape[d] - g.shape[1 + d] - lo[d] for d in (0, 1)]
  gp = _pad(g, ((lo[0], hi[0]), (lo[1], hi[1])))
  (dv,) = jax.linear_transpose(lambda v: conv_xla(gp, v, s, ((0, 0), (0, 0)), precision),
                               jax.ShapeDtypeStruct((kh, kw, o, c), x.dtype))(x)
  return jnp.flip(dv, (0, 1)).swapaxes(2, 3)


_FORMS = {"conv": {"xla": conv_xla, "phase": conv_phase, "gemm": conv_gemm},
          "convt": {"xla": convt_xla, "phase": convt_phase, "gemm": convt_gemm}}
# oneDNN: all three passes as FFI custom calls, primitives differentiable to any order; not mixed with the others.
_NATIVE = {"conv": lambda x, w, s, pads, precision=None: onednn.conv(x, w, tuple(s), pads),
           "convt": lambda x, w, s, pads, precision=None: onednn.convt(x, w, tuple(s), pads)}
_EXTRA_WGRAD = {"convt": {"corr": convt_wgrad_corr}}


def _xla_fwd(x, w, *, geom, variant):
  fwd, _, _, precision = variant
  return _FORMS[geom.kind][fwd](x, w, geom.strides, geom.pads, precision)


def _xla_dgrad(g, w, *, geom, variant):
  """The linear transpose of the input -> output map of formulation D (x [N, *geom.x_hw, C])."""
  _, dgrad, _, precision = variant
  x = jax.ShapeDtypeStruct((g.shape[0], *geom.x_hw, w.shape[2]), g.dtype)
  (dx,) = jax.linear_transpose(lambda x_: _FORMS[geom.kind][dgrad](x_, w, geom.strides, geom.pads, precision),
                               x)(g)
  return dx


def _xla_wgrad(x, g, *, geom, variant):
  """The linear transpose of the kernel -> output map of formulation W, or a dedicated one (_EXTRA_WGRAD)."""
  _, _, wgrad, precision = variant
  w_shape = (*geom.k_hw, x.shape[3], g.shape[3])
  if wgrad in _EXTRA_WGRAD.get(geom.kind, {}):
    return _EXTRA_WGRAD[geom.kind][wgrad](x, g, w_shape, geom.strides, geom.pads, precision)
  (dw,) = jax.linear_transpose(lambda w_: _FORMS[geom.kind][wgrad](x, w_, geom.strides, geom.pads, precision),
                               jax.ShapeDtypeStruct(w_shape, x.dtype))(g)
  return dw


# Mixed per-pass formulations ("F/D/W") as bilinear primitives: forward by F, input/weight gradients by the
# linear transposes of D/W; jvp/transposes/vmap rules from conv_passes (forward and reverse mode, any order).
_XLA_PASSES = conv_passes.Passes("jaxgan_conv", impls={"fwd": _xla_fwd, "dgrad": _xla_dgrad, "wgrad": _xla_wgrad})


def _mixed(kind, fwd, dgrad, wgrad, x, w, s, pads, precision):
  """y of `kind` with the forward by `fwd` and input/weight gradients by `dgrad`/`wgrad` (any derivative)."""
  geom = conv_passes.Geometry.of(kind, x.shape, w.shape, s, pads)
  return _XLA_PASSES.fwd(x, w, geom, (fwd, dgrad, wgrad, precision))


def _auto_accelerator(kind, s):
  """GPU/TPU: XLA's convolutions (cuDNN on GPU), except a strided transposed conv's weight gradient, which XLA:GPU
  computes by materialising the dilated, padded input and one fprop convolution over it (the largest part of a
  DCGAN 128 px step; docs/performance.md); "corr" is the weight gradient of a strided conv instead."""
  return "xla/xla/corr" if kind == "convt" and max(s) > 1 else "xla"


# --------------------------------------------------------------------------------------------------------
# The "auto" rule (cpu), derived from the table in the module docstring.
# --------------------------------------------------------------------------------------------------------
def _auto_cpu(kind, s, cin, cout, hw):
  """Per-pass choice "fwd/dgrad/wgrad" for a layer on cpu; hw = input spatial size. See the docstring table."""
  area = hw[0] * hw[1]
  if kind == "convt":
    if max(s) == 1:
      return "gemm/gemm/corr" if area == 1 else "xla"  # 1x1 -> KxK projection (DCGAN G.up0) is a GEMM
    if cout <= 16:
      return "xla/xla/corr"                             # to-image layer (G.up4)
    return "phase/xla/corr"                             # G.up1-3
  if max(s) == 1:
    return "xla"                                        # stride-1 convs (D.out, SNGAN 3x3)
  if cin <= 16:
    return "phase/phase/xla"                            # from-image layer (D.down0)
  return "xla/gemm/xla" if area <= 64 else "xla/phase/xla"


def _resolve(impl, kind, s, cin, cout, hw, native=False):
  """impl -> [fwd, dgrad, wgrad] names; `native`: oneDNN can run this call (onednn.supported)."""
  if impl == "dnnl" and not native:
    raise ValueError("implementation='dnnl' needs float32 or bfloat16 (input and kernel of one dtype) on the cpu "
                     "backend, non-negative paddings and the oneDNN extension (jaxgan.native: "
                     f"{native_ext.why_unavailable('onednn_conv') or 'available'}); use 'auto' to fall back")
  if impl == "auto":
    if native:
      impl = "dnnl"
    else:
      impl = _auto_cpu(kind, s, cin, cout, hw) if jax.default_backend() == "cpu" else _auto_accelerator(kind, s)
  if impl == "dnnl":
    return ["dnnl"] * 3
  names = impl.split("/") if "/" in impl else [impl] * 3
  if (len(names) != 3 or any(n not in _FORMS[kind] for n in names[:2])
      or names[2] not in {**_FORMS[kind], **_EXTRA_WGRAD.get(kind, {})}):
    raise ValueError(f"implementation={impl!r}; accepted: 'auto', 'dnnl', 'xla', 'phase', 'gemm', or 'F/D/W' "
                     "with F, D, W each one of 'xla', 'phase', 'gemm' (W may also be 'corr' for ConvTranspose).")
  return names


def _apply(kind, impl, x, w, s, pads, precision):
  fwd, dgrad, wgrad = _resolve(impl, kind, s, w.shape[2], w.shape[3], x.shape[1:3],
                               impl in ("auto", "dnnl") and onednn.supported(kind, x, w, s, pads))
  if fwd == "dnnl":
    return _NATIVE[kind](x, w, s, pads)
  if fwd == dgrad == wgrad:
    return _FORMS[kind][fwd](x, w, s, pads, precision)
  return _mixed(kind, fwd, dgrad, wgrad, x, w, s, pads, precision)


def conv(x: jax.Array, w: jax.Array, strides: Sequence[int] = (1, 1), padding: Pads = ((0, 0), (0, 0)),
         implementation: str | None = None) -> jax.Array:
  """The function form of `Conv`: x [N, H, W, C] correlated with w [kh, kw, C, O] (HWIO), explicit
  ``padding`` ((lo, hi), (lo, hi)) and ``strides``, no bias, in ``implementation`` (None: the default of
  `default_implementation`). For networks whose weights are transformed before the conv (equalized learning
  rate, weight modulation)."""
  impl = implementation or default_implementation()
  _check_choice(impl, "implementation")
  return _apply("conv", impl, x, w, tuple(strides), tuple(tuple(p) for p in padding), None)


def conv_transpose(x: jax.Array, w: jax.Array, strides: Sequence[int], padding: Pads,
                   implementation: str | None = None) -> jax.Array:
  """The function form of `ConvTranspose`: ``lax.conv_transpose(x, w, strides, padding)`` (no kernel flip: the
  correlation of w over x dilated by ``strides``, explicit ((lo, hi), (lo, hi)) padding), in ``implementation``
  (None: `default_implementation`)."""
  impl = implementation or default_implementation()
  _check_choice(impl, "implementation")
  return _apply("convt", impl, x, w, tuple(strides), tuple(tuple(p) for p in padding), None)


# --------------------------------------------------------------------------------------------------------
# The default implementation (layers whose ``implementation`` is None, the default)
# --------------------------------------------------------------------------------------------------------
IMPLEMENTATIONS = ("auto", "xla", "dnnl")
_default = "auto"
_scoped: contextvars.ContextVar[str | None] = contextvars.ContextVar("jaxgan_conv_impl", default=None)


def _check_choice(impl, where):
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f"{where}={impl!r}; accepted: {', '.join(map(repr, IMPLEMENTATIONS))}")


def set_default_implementation(impl: str) -> None:
  """Process-wide implementation of the layers whose ``implementation`` is None, outside `use_implementation`
  blocks and models with a ``conv_impl``: "auto" (initially), "xla" or "dnnl". Read when a layer is traced;
  programs already traced (``jax.jit`` caches) keep the one they had."""
  global _default
  _check_choice(impl, "set_default_implementation")
  _default = impl


def default_implementation() -> str:
  """What a layer with ``implementation=None`` uses here: the innermost `use_implementation` block's, else
  `set_default_implementation`'s."""
  return _scoped.get() or _default


@contextlib.contextmanager
def use_implementation(impl: str | None):
  """Layers with ``implementation=None`` traced inside the block use `impl` ("auto", "xla", "dnnl"; None: no
  change). The models' ``conv_impl`` field (``--conv_impl``) applies this to their layers."""
  if impl is None:
    yield
    return
  _check_choice(impl, "conv_impl")
  token = _scoped.set(impl)
  try:
    yield
  finally:
    _scoped.reset(token)


def with_conv_impl(method):
  """Decorator of a model's ``__call__`` (below ``nn.compact``): runs it in ``use_implementation(self.conv_impl)``,
  so every layer inside (submodules included) defaults to the model's ``conv_impl``."""
  @functools.wraps(method)
  def wrapper(self, *args, **kwargs):
    with use_implementation(self.conv_impl):
      return method(self, *args, **kwargs)
  return wrapper


# --------------------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------------------
def _tuple(v, n):
  return (1,) * n if v is None else (v,) * n if isinstance(v, int) else tuple(v)


def _explicit_pads(padding, n):
  """Flax padding -> 'SAME'/'VALID' or ((lo, hi),) * n; raises for flax's CIRCULAR/REFLECT/CAUSAL."""
  pad = nn.linear.canonicalize_padding(padding, n)
  if isinstance(pad, str) and pad not in ("SAME", "VALID"):
    raise NotImplementedError(f"padding={padding!r} is not supported by jaxgan layers; "
                              "use flax.linen.Conv/ConvTranspose.")
  return pad


def _flatten_batch(x, n_spatial):
  batch = x.shape[:x.ndim - n_spatial - 1]
  return x.reshape((-1,) + x.shape[len(batch):]), batch


class Conv(nn.Module):
  """``flax.linen.Conv`` (same fields and params) plus ``implementation``; see the module docstring."""
  features: int
  kernel_size: int | Sequence[int]
  strides: None | int | Sequence[int] = 1
  padding: Any = "SAME"
  input_dilation: None | int | Sequence[int] = 1
  kernel_dilation: None | int | Sequence[int] = 1
  feature_group_count: int = 1
  use_bias: bool = True
  mask: Any = None
  dtype: Any = None
  param_dtype: Any = jnp.float32
  precision: Any = None
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros_init()
  implementation: str | None = None  # None: default_implementation()

  @nn.compact
  def __call__(self, inputs):
    ks = (self.kernel_size,) if isinstance(self.kernel_size, int) else tuple(self.kernel_size)
    nd = len(ks)
    x, batch = _flatten_batch(inputs, nd)
    strides, in_dil, k_dil = (_tuple(v, nd) for v in (self.strides, self.input_dilation, self.kernel_dilation))
    cin = x.shape[-1]
    kernel = self.param("kernel", self.kernel_init, ks + (cin // self.feature_group_count, self.features),
                        self.param_dtype)
    if self.mask is not None:
      kernel = kernel * self.mask
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
    x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
    pad = _explicit_pads(self.padding, nd)
    fast = nd == 2 and self.feature_group_count == 1 and set(in_dil + k_dil) == {1}
    if fast:
      pads = lax.padtype_to_pads(x.shape[1:3], ks, strides, pad) if isinstance(pad, str) else pad
      y = _apply("conv", self.implementation or default_implementation(), x, kernel, strides,
                 tuple(map(tuple, pads)), self.precision)
    else:
      dn = lax.conv_dimension_numbers(x.shape, kernel.shape, _dn(nd))
      y = lax.conv_general_dilated(x, kernel, strides, pad, lhs_dilation=in_dil, rhs_dilation=k_dil,
                                   dimension_numbers=dn, feature_group_count=self.feature_group_count,
                                   precision=self.precision)
    if bias is not None:
      y = y + bias
    return y.reshape(batch + y.shape[1:])


def _dn(nd):
  sp = "HWD"[:nd] if nd <= 3 else None
  return ("N" + sp + "C", sp + "IO", "N" + sp + "C")


def _convt_pads(k, s, padding):
  """lax.conv_transpose's padding for 'SAME'/'VALID' (jax._src.lax.convolution._conv_transpose_padding)."""
  if padding == "SAME":
    pad_len, pad_a = k + s - 2, (k - 1 if s > k - 1 else int(np.ceil((k + s - 2) / 2)))
  else:  # VALID
    pad_len, pad_a = k + s - 2 + max(k - s, 0), k - 1
  return pad_a, pad_len - pad_a


class ConvTranspose(nn.Module):
  """``flax.linen.ConvTranspose`` (same fields and params) plus ``implementation``; see the module docstring."""
  features: int
  kernel_size: int | Sequence[int]
  strides: None | Sequence[int] = None
  padding: Any = "SAME"
  kernel_dilation: None | Sequence[int] = None
  use_bias: bool = True
  mask: Any = None
  dtype: Any = None
  param_dtype: Any = jnp.float32
  precision: Any = None
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros_init()
  transpose_kernel: bool = False
  implementation: str | None = None  # None: default_implementation()

  @nn.compact
  def __call__(self, inputs):
    ks = (self.kernel_size,) if isinstance(self.kernel_size, int) else tuple(self.kernel_size)
    nd = len(ks)
    x, batch = _flatten_batch(inputs, nd)
    strides, k_dil = _tuple(self.strides, nd), _tuple(self.kernel_dilation, nd)
    cin = x.shape[-1]
    shape = ks + ((self.features, cin) if self.transpose_kernel else (cin, self.features))
    kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
    if self.mask is not None:
      kernel = kernel * self.mask
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
    x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
    pad = _explicit_pads(self.padding, nd)
    if nd == 2 and set(k_dil) == {1}:
      if self.transpose_kernel:  # what lax.conv_transpose does: flip spatially, swap in/out
        kernel = jnp.flip(kernel, (0, 1)).swapaxes(2, 3)
      pads = (tuple(_convt_pads(k, s, pad) for k, s in zip(ks, strides)) if isinstance(pad, str)
              else tuple(map(tuple, pad)))
      y = _apply("convt", self.implementation or default_implementation(), x, kernel, strides, pads,
                 self.precision)
    else:
      y = lax.conv_transpose(x, kernel, strides, pad, rhs_dilation=k_dil, dimension_numbers=_dn(nd),
                             transpose_kernel=self.transpose_kernel, precision=self.precision)
    if bias is not None:
      y = y + bias
    return y.reshape(batch + y.shape[1:])


__all__ = ["Conv", "ConvTranspose", "IMPLEMENTATIONS", "set_default_implementation", "default_implementation",
           "use_implementation", "with_conv_impl", "conv_xla", "conv_phase", "conv_gemm", "convt_xla", "convt_phase",
           "convt_gemm"]
