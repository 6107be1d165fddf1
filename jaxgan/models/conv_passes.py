"""The three passes of a 2-D convolution as bilinear JAX primitives, for any formulation of the passes.

A convolution-like op ``y = B(x, w)`` (bilinear in the input x and the kernel w) has three passes, each
bilinear too::

    fwd(x, w)     B(x, w)                           x [N,H,W,C], w [kh,kw,C,O] -> y [N,Ho,Wo,O]
    dgrad(g, w)   B(., w)^T g   (input gradient)    g [N,Ho,Wo,O], w           -> [N,H,W,C]
    wgrad(x, g)   B(x, .)^T g   (weight gradient)   x, g                       -> [kh,kw,C,O]

and each pass's transpose with respect to either operand is another pass::

    fwd:    x <- dgrad(ct, w)    w <- wgrad(x, ct)
    dgrad:  g <- fwd(ct, w)      w <- wgrad(ct, g)
    wgrad:  x <- dgrad(g, ct)    g <- fwd(x, ct)

`Passes` makes them three primitives with ``jax.interpreters.ad.defbilinear`` rules (JVP
``fwd(dx, w) + fwd(x, dw)``, the transposes above), which is how ``lax.conv_general_dilated`` is differentiable:
``jax.jvp``, ``jax.grad``, Hessian-vector products (jvp of grad), gradient penalties (grad of grad), ... to any
order, and every program calls the same three passes. A formulation of the passes is either an XLA lowering of
its own (``lowering``: oneDNN's FFI custom calls, `jaxgan.models.onednn`) or JAX functions on 4-D operands
(``impls``: the per-pass XLA formulations of `jaxgan.models.layers`, "F/D/W"), inlined into the program.

Batching: the operands of a pass may carry leading (vmap) dimensions, the same number on both, each either the
batch size or 1 (broadcast along it; ``jax.ffi.ffi_call``'s ``vmap_method="expand_dims"``). The batching rule
moves the vmapped axis to the front and gives the unbatched operand a leading 1, so vmap of a pass is one bind
of the same primitive: oneDNN's lowering then runs the batch in one call (`jaxgan.models.onednn.batch_mode`),
JAX functions are vmapped. Transposes sum the cotangent over the leading dimensions an operand was broadcast along.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

PASSES = ("fwd", "dgrad", "wgrad")


@dataclasses.dataclass(frozen=True)
class Geometry:
  """Static description of B: kind "conv" (``lax.conv_general_dilated(x, w, strides, pads)``, NHWC/HWIO) or
  "convt" (``lax.conv_transpose`` with explicit pads and no kernel flip), and the spatial sizes of x and w."""
  kind: str
  strides: tuple[int, int]
  pads: tuple[tuple[int, int], tuple[int, int]]
  x_hw: tuple[int, int]
  k_hw: tuple[int, int]

  @classmethod
  def of(cls, kind, x_shape, w_shape, strides, pads) -> "Geometry":
    """From the NHWC input and HWIO kernel shapes (leading vmap dimensions allowed)."""
    return cls(kind, tuple(int(v) for v in strides), tuple((int(lo), int(hi)) for lo, hi in pads),
               tuple(x_shape[-3:-1]), tuple(w_shape[-4:-2]))

  @property
  def y_hw(self) -> tuple[int, int]:
    (s, p, x, k) = (self.strides, self.pads, self.x_hw, self.k_hw)
    if self.kind == "conv":
      return tuple((x[d] + sum(p[d]) - k[d]) // s[d] + 1 for d in (0, 1))
    return tuple((x[d] - 1) * s[d] + 1 + sum(p[d]) - k[d] + 1 for d in (0, 1))


def _lead(a, b, name):
  """The broadcast leading (vmap) dimensions of two operands with 4 dimensions each after them."""
  la, lb = a.shape[:-4], b.shape[:-4]
  if a.ndim < 4 or len(la) != len(lb) or any(m != n and 1 not in (m, n) for m, n in zip(la, lb)):
    raise ValueError(f"{name}: operands {a.shape} and {b.shape} need 4 dimensions after the same number of "
                     "leading (vmap) dimensions, each equal or 1")
  if a.dtype != b.dtype:
    raise ValueError(f"{name}: operand dtypes differ ({a.dtype}, {b.dtype})")
  return tuple(max(m, n) for m, n in zip(la, lb))


def _sum_to(r, shape):
  """Sums r over the leading dimensions that `shape` broadcasts (size 1) and r does not."""
  axes = tuple(d for d in range(len(shape) - 4) if shape[d] == 1 and r.shape[d] != 1)
  return jnp.sum(r, axes, keepdims=True) if axes else r


def _over_lead(f, a, b, **params):
  """f(a, b, **params) on 4-D operands, vmapped over the leading dimensions (size-1 ones broadcast)."""
  if a.ndim == 4:
    return f(a, b, **params)
  size = max(a.shape[0], b.shape[0])
  axes = tuple(0 if t.shape[0] == size else None for t in (a, b))
  a, b = (t if ax == 0 else t[0] for t, ax in zip((a, b), axes))
  return jax.vmap(lambda a, b: _over_lead(f, a, b, **params), axes)(a, b)


@functools.cache
def _jitted(prim, params):
  """Eager calls: one jitted bind per primitive and parameters (which lowers it)."""
  return jax.jit(lambda a, b: prim.bind(a, b, **dict(params)))


class Passes:
  """The three passes of one formulation as primitives ``<name>_fwd``, ``<name>_dgrad``, ``<name>_wgrad``.

  Each is bound with the parameters ``geom`` (a `Geometry`) and ``variant`` (hashable, passed on to the
  formulation: e.g. the per-pass names and precision of the XLA formulations).

  Args:
    name: primitive name prefix.
    impls: {"fwd" | "dgrad" | "wgrad": f(a, b, *, geom, variant)} on 4-D operands, lowered inline on every
      platform (vmapped over leading dimensions); or None with ``lowering``.
    lowering: pass name -> (MLIR lowering rule, for operands with leading dimensions too; its platform).
  """

  def __init__(self, name: str, impls: dict[str, Callable] | None = None,
               lowering: Callable[[str], tuple[Callable, str | None]] | None = None):
    self.prims = {p: Primitive(f"{name}_{p}") for p in PASSES}
    for p, prim in self.prims.items():
      prim.def_abstract_eval(functools.partial(self._shape, p))
      prim.def_impl(lambda a, b, _prim=prim, **params: _jitted(_prim, tuple(sorted(params.items())))(a, b))
      batching.primitive_batchers[prim] = functools.partial(_batch, prim)
      if impls is not None:
        mlir.register_lowering(prim, mlir.lower_fun(functools.partial(_over_lead, impls[p]),
                                                     multiple_results=False))
      else:
        rule, platform = lowering(p)
        mlir.register_lowering(prim, rule, platform=platform)
    fwd, dgrad, wgrad = (self.prims[p] for p in PASSES)
    ad.defbilinear(fwd, lambda ct, x, w, **kw: _sum_to(dgrad.bind(ct, w, **kw), x.aval.shape),
                   lambda ct, x, w, **kw: _sum_to(wgrad.bind(x, ct, **kw), w.aval.shape))
    ad.defbilinear(dgrad, lambda ct, g, w, **kw: _sum_to(fwd.bind(ct, w, **kw), g.aval.shape),
                   lambda ct, g, w, **kw: _sum_to(wgrad.bind(ct, g, **kw), w.aval.shape))
    ad.defbilinear(wgrad, lambda ct, x, g, **kw: _sum_to(dgrad.bind(g, ct, **kw), x.aval.shape),
                   lambda ct, x, g, **kw: _sum_to(fwd.bind(x, ct, **kw), g.aval.shape))

  def _shape(self, p, a, b, *, geom: Geometry, variant: Any):
    lead = _lead(a, b, self.prims[p].name)
    tail = {"fwd": lambda: (a.shape[-4], *geom.y_hw, b.shape[-1]),
            "dgrad": lambda: (a.shape[-4], *geom.x_hw, b.shape[-2]),
            "wgrad": lambda: (*geom.k_hw, a.shape[-1], b.shape[-1])}[p]()
    return jax.core.ShapedArray(lead + tail, a.dtype)

  def fwd(self, x, w, geom: Geometry, variant: Any = None):
    """y = B(x, w): x [..., N, H, W, C], w [..., kh, kw, C, O] -> [..., N, Ho, Wo, O]."""
    return self.prims["fwd"].bind(x, w, geom=geom, variant=variant)

  def dgrad(self, g, w, geom: Geometry, variant: Any = None):
    """B(., w)^T g: g [..., N, Ho, Wo, O], w -> [..., N, H, W, C] (H, W = geom.x_hw)."""
    return self.prims["dgrad"].bind(g, w, geom=geom, variant=variant)

  def wgrad(self, x, g, geom: Geometry, variant: Any = None):
    """B(x, .)^T g: x, g -> [..., kh, kw, C, O] (kh, kw = geom.k_hw)."""
    return self.prims["wgrad"].bind(x, g, geom=geom, variant=variant)


def _batch(prim, args, dims, **params):
  """vmap: the mapped axis to the front, a leading 1 on an unmapped operand; one bind, output mapped at 0."""
  args = [t[None] if d is None else jnp.moveaxis(t, d, 0) for t, d in zip(args, dims)]
  return prim.bind(*args, **params), 0
