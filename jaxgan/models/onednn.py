"""oneDNN convolutions on XLA:CPU (FFI custom calls), with their gradients to any order.

XLA:CPU computes convolutions with Eigen kernels that run 1.5-3x slower than oneDNN's on the strided
convolutions of DCGAN-style networks (shared/notes/cpu-performance.md). jaxgan ships a small XLA FFI
extension (``jaxgan/native/onednn_conv.cc``, compiled on first use by ``jaxgan.native``) that runs the
three passes of a strided, padded 2-D convolution on oneDNN:

    conv(x, w)               y = C_w x           x [N,H,W,C], w [kh,kw,C,O] -> y [N,Ho,Wo,O]
    conv_input_grad(g, w)    C_w^T g             g [N,Ho,Wo,O]             -> [N,H,W,C]
    conv_kernel_grad(x, g)   d<g, C_w x>/dw      x, g                      -> [kh,kw,C,O]

with ``C_w`` = ``lax.conv_general_dilated(., w, strides, pads)`` (NHWC/HWIO). The three are bilinear and
each one's vector-Jacobian product is made of the others, so reverse mode nests to any order (gradient
penalties differentiate through them). A transposed convolution is ``conv_input_grad`` of a convolution with
the kernel flipped and its in/out channels swapped (``convt``).

Only float32 on the cpu backend, non-negative paddings (``supported``); ``available()`` says whether the
extension could be built and loaded. Under ``jax.vmap`` the custom calls get leading batch dimensions
(``vmap_method="expand_dims"``) and run one convolution per batch element, each on all cores.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jaxgan import native

_TARGETS = {"fwd": "JaxganOnednnConvFwd", "bwd_data": "JaxganOnednnConvBwdData",
            "bwd_weights": "JaxganOnednnConvBwdWeights"}


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
  """Whether conv ("conv") or convt ("convt") of these float32 arrays can run here on oneDNN."""
  if x.dtype != jnp.float32 or w.dtype != jnp.float32 or x.ndim != 4 or w.ndim != 4 or 0 in x.shape + w.shape:
    return False
  if kind == "convt":
    pads, out = _convt_as_conv(x.shape[1:3], w.shape[:2], s, pads)
  else:
    out = _out_hw(x.shape[1:3], w.shape[:2], s, pads)
  return (min(p for lo_hi in pads for p in lo_hi) >= 0 and min(out) > 0 and jax.default_backend() == "cpu"
          and available())


def _call(target, shape, a, b, s, pads):
  if not available():
    raise RuntimeError("the oneDNN extension is not available: " + native.why_unavailable("onednn_conv"))
  attrs = dict(strides=np.asarray(s, np.int64), padding=np.asarray([p for lo_hi in pads for p in lo_hi], np.int64))
  return jax.ffi.ffi_call(f"jaxgan_{_TARGETS[target]}", jax.ShapeDtypeStruct(shape, jnp.float32),
                          vmap_method="expand_dims")(a, b, **attrs)


def _out_hw(hw, k, s, pads):
  return tuple((hw[d] + sum(pads[d]) - k[d]) // s[d] + 1 for d in (0, 1))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv(x, w, s, pads):
  """y = lax.conv_general_dilated(x, w, s, pads) (NHWC, HWIO); x, w float32."""
  ho, wo = _out_hw(x.shape[1:3], w.shape[:2], s, pads)
  return _call("fwd", (x.shape[0], ho, wo, w.shape[3]), x, w, s, pads)


def _conv_fwd(x, w, s, pads):
  return conv(x, w, s, pads), (x, w)


def _conv_bwd(s, pads, res, g):
  x, w = res
  return conv_input_grad(g, w, s, pads, x.shape[1:3]), conv_kernel_grad(x, g, s, pads, w.shape[:2])


conv.defvjp(_conv_fwd, _conv_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv_input_grad(g, w, s, pads, hw):
  """C_w^T g: the input gradient of ``conv`` with cotangent g, for inputs of spatial size hw."""
  return _call("bwd_data", (g.shape[0], *hw, w.shape[2]), g, w, s, pads)


def _input_grad_fwd(g, w, s, pads, hw):
  return conv_input_grad(g, w, s, pads, hw), (g, w)


def _input_grad_bwd(s, pads, hw, res, dx):
  g, w = res  # <dx, C_w^T g> = <C_w dx, g>
  return conv(dx, w, s, pads), conv_kernel_grad(dx, g, s, pads, w.shape[:2])


conv_input_grad.defvjp(_input_grad_fwd, _input_grad_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv_kernel_grad(x, g, s, pads, k):
  """d<g, C_w x>/dw for a kernel of spatial size k (the weight gradient of ``conv``)."""
  return _call("bwd_weights", (*k, x.shape[3], g.shape[3]), x, g, s, pads)


def _kernel_grad_fwd(x, g, s, pads, k):
  return conv_kernel_grad(x, g, s, pads, k), (x, g)


def _kernel_grad_bwd(s, pads, k, res, dw):
  x, g = res  # <dw, dW(x, g)> = <C_dw x, g>
  return conv_input_grad(g, dw, s, pads, x.shape[1:3]), conv(x, dw, s, pads)


conv_kernel_grad.defvjp(_kernel_grad_fwd, _kernel_grad_bwd)


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
