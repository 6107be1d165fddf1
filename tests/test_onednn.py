"""jaxgan.models.onednn / jaxgan.native: oneDNN convolutions equal XLA's, in forward and reverse mode to any
order and under vmap; the extension builds wherever a compiler and the oneDNN wheels are present."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxgan import native
from jaxgan.models import layers, onednn


def _buildable():
  """A compiler and the oneDNN wheels are here (and no JAXGAN_NATIVE=0): the extension must then build."""
  try:
    native._toolchain()
  except LookupError:
    return False
  return True


def test_extension_builds_where_it_can():
  if not _buildable():
    pytest.skip("no C++ compiler or no oneDNN wheels here: jaxgan falls back to XLA's convolutions")
  assert onednn.available(), native.why_unavailable("onednn_conv")


needs_onednn = pytest.mark.skipif(not (_buildable() and onednn.available()),
                                  reason="oneDNN extension unavailable")


def test_build_failures_are_reported(monkeypatch, tmp_path):
  monkeypatch.setenv("JAXGAN_NATIVE_CACHE", str(tmp_path))
  monkeypatch.setenv("JAXGAN_NATIVE", "0")
  with pytest.raises(LookupError, match="JAXGAN_NATIVE=0"):
    native._build("onednn_conv")
  if not _buildable():
    return
  monkeypatch.setenv("JAXGAN_NATIVE", "1")
  monkeypatch.setenv("CXX", "false")  # a "compiler" that fails: reason given, no library or temp file left
  with pytest.raises(LookupError, match="compiling onednn_conv.cc failed"):
    native._build("onednn_conv")
  assert list(tmp_path.iterdir()) == []


def _xla(x, w, s, pads):
  return lax.conv_general_dilated(x, w, s, pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _rel(a, b):
  return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


# (x shape NHWC, kernel shape HWIO, strides, pads): DCGAN-style, stride 1 "SAME", uneven strides and pads,
# 1x1 kernel, a kernel larger than the stride with no padding, batch 1
GEOMETRIES = [((2, 8, 8, 3), (4, 4, 3, 5), (2, 2), ((1, 1), (1, 1))),
              ((2, 7, 6, 4), (3, 3, 4, 4), (1, 1), ((1, 1), (1, 1))),
              ((3, 9, 8, 2), (5, 3, 2, 3), (3, 2), ((2, 0), (1, 2))),
              ((2, 5, 5, 6), (1, 1, 6, 2), (1, 1), ((0, 0), (0, 0))),
              ((1, 10, 7, 3), (4, 3, 3, 2), (2, 3), ((0, 0), (0, 0)))]


@needs_onednn
@pytest.mark.parametrize("case", range(len(GEOMETRIES)))
def test_passes_match_xla(case):
  xs, ws, s, pads = GEOMETRIES[case]
  kx, kw, kg = jax.random.split(jax.random.key(case), 3)
  x, w = jax.random.normal(kx, xs), jax.random.normal(kw, ws)
  y_ref, vjp = jax.vjp(lambda x, w: _xla(x, w, s, pads), x, w)
  g = jax.random.normal(kg, y_ref.shape)
  dx_ref, dw_ref = vjp(g)
  y = jax.jit(onednn.conv, static_argnums=(2, 3))(x, w, s, pads)
  assert y.shape == y_ref.shape and _rel(y, y_ref) < 1e-5
  dx = onednn.conv_input_grad(g, w, s, pads, xs[1:3])
  dw = onednn.conv_kernel_grad(x, g, s, pads, ws[:2])
  assert dx.shape == dx_ref.shape and _rel(dx, dx_ref) < 1e-5
  assert dw.shape == dw_ref.shape and _rel(dw, dw_ref) < 1e-5
  # the same numbers again (one machine, one thread count: deterministic)
  np.testing.assert_array_equal(onednn.conv_kernel_grad(x, g, s, pads, ws[:2]), dw)


def _numpy_passes(x, w, g, s, pads):
  """float64 reference: y = conv(x, w), its input gradient and kernel gradient with cotangent g, tap by tap."""
  x, w, g = (np.asarray(a, np.float64) for a in (x, w, g))
  xp = np.pad(x, ((0, 0), *pads, (0, 0)))
  (kh, kw), (ho, wo) = w.shape[:2], g.shape[1:3]
  window = lambda a, b: (slice(None), slice(a, a + s[0] * (ho - 1) + 1, s[0]),
                         slice(b, b + s[1] * (wo - 1) + 1, s[1]))
  y, dxp, dw = 0.0, np.zeros_like(xp), np.zeros_like(w)
  for a in range(kh):
    for b in range(kw):
      y = y + xp[window(a, b)] @ w[a, b]
      dxp[window(a, b)] += g @ w[a, b].T
      dw[a, b] = np.einsum("nijc,nijo->co", xp[window(a, b)], g)
  dx = dxp[:, pads[0][0]:pads[0][0] + x.shape[1], pads[1][0]:pads[1][0] + x.shape[2]]
  return y, dx, dw


@needs_onednn
def test_random_geometries():
  """12 random strides (1-3), kernels (1-5), paddings (0-6, also wider than the kernel) and sizes: all three
  passes against a float64 NumPy reference, and the transposed conv (paddings 0 to kernel-1, the ones that map
  onto a convolution's) against XLA's. (XLA:CPU itself returns garbage, ~1e26, for the input gradient of one
  of these: x [1,5,4,12], kernel [4,1,12,3], stride 1, pads ((6,0),(5,3)).)"""
  rng = np.random.default_rng(0)
  checked = 0
  while checked < 12:
    k, s = tuple(int(v) for v in rng.integers(1, 6, 2)), tuple(int(v) for v in rng.integers(1, 4, 2))
    pads = tuple((int(rng.integers(0, 7)), int(rng.integers(0, 7))) for _ in range(2))
    hw = tuple(int(v) for v in rng.integers(1, 12, 2))
    if any(hw[d] + sum(pads[d]) < k[d] for d in (0, 1)):
      continue
    n, c, o = (int(v) for v in rng.integers(1, 20, 3))
    x = jnp.asarray(rng.normal(size=(n % 3 + 1, *hw, c)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(*k, c, o)), jnp.float32)
    out = [(hw[d] + sum(pads[d]) - k[d]) // s[d] + 1 for d in (0, 1)]
    g = jnp.asarray(rng.normal(size=(x.shape[0], *out, o)), jnp.float32)
    # transposed: lax.conv_transpose pads (lo, hi) map onto the convolution's (k-1-lo, k-1-hi)
    tpads = tuple((int(rng.integers(0, k[d])), int(rng.integers(0, k[d]))) for d in (0, 1))
    t_out = [(hw[d] - 1) * s[d] + sum(tpads[d]) - k[d] + 2 for d in (0, 1)]
    assert onednn.supported("convt", x, w, s, tpads) == (min(t_out) > 0)
    assert not onednn.supported("convt", x, w, s, ((k[0], 0), (0, 0)))
    with_convt = min(t_out) > 0

    @jax.jit  # one program per geometry
    def passes(x, w, g):
      mine = (onednn.conv(x, w, s, pads), onednn.conv_input_grad(g, w, s, pads, hw),
              onednn.conv_kernel_grad(x, g, s, pads, k))
      return mine + ((onednn.convt(x, w, s, tpads), layers.convt_xla(x, w, s, tpads)) if with_convt else ())

    results = passes(x, w, g)
    for mine, ref in zip(results[:3], _numpy_passes(x, w, g, s, pads)):
      assert _rel(mine, ref) < 1e-5
    if with_convt:
      assert _rel(results[3], results[4]) < 1e-5
    checked += 1


@needs_onednn
@pytest.mark.parametrize("case", [0, 2])
def test_higher_order_reverse_mode(case):
  """Gradient penalties: the gradient of |d out/dx|^2 and of |d out/dw|^2 (each VJP's VJP), and a third
  order (the gradient of a second-order quantity's squared norm)."""
  xs, ws, s, pads = GEOMETRIES[case]
  x, w = jax.random.normal(jax.random.key(1), xs), jax.random.normal(jax.random.key(2), ws)

  def penalties(conv):
    out = lambda x, w: jnp.sum(jnp.tanh(conv(x, w, s, pads)))
    gx = lambda x, w: jnp.sum(jax.grad(out, 0)(x, w) ** 2)
    gw = lambda x, w: jnp.sum(jax.grad(out, 1)(x, w) ** 2)
    third = lambda x, w: jnp.sum(jax.grad(gx, 1)(x, w) ** 2)
    return [jax.grad(f, (0, 1))(x, w) for f in (gx, gw, third)]

  for mine, ref in zip(penalties(onednn.conv), penalties(_xla)):
    for a, b in zip(mine, ref):
      assert _rel(a, b) < 1e-4


@needs_onednn
def test_vmap_batches_and_broadcasts():
  """Leading vmap dimensions: batched in every operand, or in some (the others broadcast), nested twice."""
  s, pads = (2, 2), ((1, 1), (1, 1))
  x = jax.random.normal(jax.random.key(0), (3, 2, 8, 8, 3))   # [models, N, H, W, C]
  w = jax.random.normal(jax.random.key(1), (4, 4, 4, 3, 5))   # [kernels, kh, kw, C, O]
  both = lambda f: jax.vmap(jax.vmap(lambda x, w: f(x, w, s, pads), (0, None)), (None, 0))  # [kernels, models]
  assert _rel(both(onednn.conv)(x, w), both(_xla)(x, w)) < 1e-5
  loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w, s, pads)))
  per_model = lambda f: jax.vmap(jax.grad(loss(f), (0, 1)), (0, 0))(x, w[:3])
  for a, b in zip(per_model(onednn.conv), per_model(_xla)):
    assert _rel(a, b) < 1e-5
  convt = jax.vmap(lambda x: onednn.convt(x, w[0, :, :, :, :3].swapaxes(2, 3), (2, 2), ((2, 2), (2, 2))))
  ref = jax.vmap(lambda x: layers.convt_xla(x, w[0, :, :, :, :3].swapaxes(2, 3), (2, 2), ((2, 2), (2, 2))))
  assert _rel(convt(x), ref(x)) < 1e-5


@needs_onednn
@pytest.mark.parametrize("mode", onednn.BATCH_MODES)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_vmapped_passes_in_every_batch_mode_match_float64(mode, dtype):
  """The three passes under vmap over 3 models (an odd count: the concurrent mode's rounds of one convolution
  per thread leave one over; the grouped mode transposes the activations), each model against a float64 NumPy
  reference of its own convolution, and a shared kernel (folded into the examples) as well. Each model's
  numbers do not depend on the mode beyond float rounding."""
  s, pads = (2, 1), ((1, 2), (0, 1))
  rng = np.random.default_rng(11)
  dt = jnp.dtype(dtype)
  x = jnp.asarray(rng.normal(size=(3, 2, 7, 6, 5)), dt)
  w = jnp.asarray(rng.normal(size=(3, 3, 2, 5, 4)), dt)
  g = jnp.asarray(rng.normal(size=(3, 2, 4, 6, 4)), dt)
  with onednn.batch_mode(mode):
    passes = jax.jit(jax.vmap(lambda x, w, g: (onednn.conv(x, w, s, pads),
                                               onednn.conv_input_grad(g, w, s, pads, (7, 6)),
                                               onednn.conv_kernel_grad(x, g, s, pads, (3, 2)))))
    shared = jax.jit(jax.vmap(lambda x, g: (onednn.conv(x, w[0], s, pads),
                                            onednn.conv_input_grad(g, w[0], s, pads, (7, 6)))))
    got, got_shared = passes(x, w, g), shared(x, g)
  for i in range(3):
    ref = _numpy_passes(x[i], w[i], g[i], s, pads)
    ref_shared = _numpy_passes(x[i], w[0], g[i], s, pads)[:2]
    for mine, want in zip([a[i] for a in got] + [a[i] for a in got_shared], list(ref) + list(ref_shared)):
      if dt == jnp.bfloat16:
        _assert_bf16_close(mine, want, ulps=0.5)
      else:
        assert mine.shape == want.shape and _rel(mine, want) < 1e-5
  with pytest.raises(ValueError, match="batch_mode='group'; accepted: 'concurrent', 'grouped', 'loop'"):
    with onednn.batch_mode("group"):
      pass


@needs_onednn
def test_layers_use_onednn_where_supported():
  x = jnp.ones((2, 8, 8, 3))
  program = lambda impl, dtype=jnp.float32: jax.jit(
      lambda x: layers.Conv(4, (4, 4), strides=2, dtype=dtype, implementation=impl).init_with_output(
          jax.random.key(0), x)[0]).lower(x).as_text()
  assert "JaxganOnednnConvFwd" in program("auto") and "JaxganOnednnConvFwd" in program("dnnl")
  assert "JaxganOnednn" not in program("xla")
  for impl in ("auto", "dnnl"):  # bfloat16 compute: parameters cast to bfloat16, the conv on oneDNN in bfloat16
    assert "JaxganOnednnConvFwd" in program(impl, jnp.bfloat16)
    assert "tensor<4x4x3x4xbf16>) -> tensor<2x4x4x4xbf16>" in program(impl, jnp.bfloat16)
  with pytest.raises(ValueError, match="implementation='dnnl' needs float32 or bfloat16"):
    program("dnnl", jnp.float16)
  negative = layers.ConvTranspose(4, (3, 3), strides=(2, 2), padding=((0, 1), (3, -1)), implementation="dnnl")
  with pytest.raises(ValueError, match="non-negative paddings"):  # a crop: oneDNN cannot, XLA can ("auto")
    negative.init(jax.random.key(0), jnp.ones((1, 4, 5, 3)))


@needs_onednn
def test_forward_mode_matches_central_differences_and_xla():
  """jax.jvp of each pass at once (they are bilinear, so the central difference (f(a+da, b+db) - f(a-da, b-db))/2
  is exactly the JVP) against float64 NumPy, and the conv's against jax.jvp of XLA's convolution."""
  xs, ws, s, pads = GEOMETRIES[2]
  keys = jax.random.split(jax.random.key(3), 6)
  x, dx = jax.random.normal(keys[0], xs), jax.random.normal(keys[1], xs)
  w, dw = jax.random.normal(keys[2], ws), jax.random.normal(keys[3], ws)
  y_shape = _xla(x, w, s, pads).shape
  g, dg = jax.random.normal(keys[4], y_shape), jax.random.normal(keys[5], y_shape)

  @jax.jit
  def tangents(x, w, g, dx, dw, dg):
    conv = jax.jvp(lambda x, w: onednn.conv(x, w, s, pads), (x, w), (dx, dw))[1]
    dgrad = jax.jvp(lambda g, w: onednn.conv_input_grad(g, w, s, pads, xs[1:3]), (g, w), (dg, dw))[1]
    wgrad = jax.jvp(lambda x, g: onednn.conv_kernel_grad(x, g, s, pads, ws[:2]), (x, g), (dx, dg))[1]
    return conv, dgrad, wgrad, jax.jvp(lambda x, w: _xla(x, w, s, pads), (x, w), (dx, dw))[1]

  conv, dgrad, wgrad, conv_xla = tangents(x, w, g, dx, dw, dg)
  plus, minus = (_numpy_passes(x + e * dx, w + e * dw, g + e * dg, s, pads) for e in (1.0, -1.0))
  for mine, p, m in zip((conv, dgrad, wgrad), plus, minus):
    assert _rel(mine, (p - m) / 2) < 1e-5
  assert _rel(conv, conv_xla) < 1e-5


def _net(conv, convt):
  """A small G/D-like net: strided conv, tanh, strided transposed conv, loss sum(sin)."""
  def loss(x, w1, w2):
    h = jnp.tanh(conv(x, w1, (2, 2), ((1, 1), (1, 1))))
    return jnp.sum(jnp.sin(convt(h, w2, (2, 2), ((2, 2), (2, 2)))))
  return loss


@needs_onednn
def test_hessian_vector_products_both_ways():
  """Forward-over-reverse (jvp of grad) and reverse-over-forward (grad of the directional derivative) HVPs
  through oneDNN convolutions equal each other and XLA's forward-over-reverse; vmap of jvp (a few directions
  at once) equals one jvp per direction."""
  keys = jax.random.split(jax.random.key(4), 6)
  primals = (jax.random.normal(keys[0], (2, 8, 8, 3)), jax.random.normal(keys[1], (4, 4, 3, 5)) / 4,
             jax.random.normal(keys[2], (4, 4, 5, 2)) / 4)
  v = tuple(jax.random.normal(k, p.shape) for k, p in zip(keys[3:], primals))
  mine, ref = _net(onednn.conv, onednn.convt), _net(_xla, layers.convt_xla)
  fwd_rev = lambda f: jax.jvp(jax.grad(f, (0, 1, 2)), primals, v)[1]
  rev_fwd = lambda f: jax.grad(lambda *p: jax.jvp(f, p, v)[1], (0, 1, 2))(*primals)
  hvps = jax.jit(lambda: (fwd_rev(mine), rev_fwd(mine), fwd_rev(ref)))()
  for a, b, c in zip(*hvps):
    assert _rel(a, c) < 1e-4 and _rel(b, c) < 1e-4
  directions = jax.tree.map(lambda a: jnp.stack([a, -2 * a, jnp.cos(a)]), v)
  batched = jax.jit(jax.vmap(lambda d: jax.jvp(mine, primals, d)[1]))(directions)
  one_by_one = [jax.jvp(ref, primals, jax.tree.map(lambda a: a[i], directions))[1] for i in range(3)]
  assert _rel(batched, jnp.stack(one_by_one)) < 1e-5


@needs_onednn
def test_derivative_programs_call_the_three_kernels():
  """A gradient runs the forward once, then one input- and one weight-gradient kernel, and no XLA convolution;
  a Hessian-vector product only these kernels too."""
  x, w = jnp.ones((2, 8, 8, 3)), jnp.ones((4, 4, 3, 5))
  loss = lambda x, w: jnp.sum(jnp.tanh(onednn.conv(x, w, (2, 2), ((1, 1), (1, 1)))))
  grad = jax.jit(jax.grad(loss, (0, 1))).lower(x, w).as_text()
  for name, count in [("Fwd", 1), ("BwdData", 1), ("BwdWeights", 1)]:
    assert grad.count(f"@jaxgan_JaxganOnednnConv{name}(") == count, name
  hvp = jax.jit(lambda x, w: jax.jvp(jax.grad(loss, (0, 1)), (x, w), (x, w))[1]).lower(x, w).as_text()
  assert "convolution" not in grad + hvp and "JaxganOnednnConvBwdWeights" in hvp


@needs_onednn
def test_each_device_of_a_data_parallel_program_gets_its_share_of_the_threads(monkeypatch):
  """One device: every core, set explicitly (an XLA thread keeps the count its last program set). Under
  shard_map on N devices each device's oneDNN calls run cores // N threads (at least 1), and the results equal
  XLA's convolution per shard."""
  from jax.sharding import PartitionSpec as P

  from jaxgan import parallel
  monkeypatch.setenv("OMP_NUM_THREADS", "8")
  assert [onednn.threads_per_device(n) for n in (1, 2, 4, 8, 16)] == [8, 4, 2, 1, 1]
  monkeypatch.delenv("OMP_NUM_THREADS")
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((4, 8, 8, 3)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 3, 5)), jnp.float32)

  def loss(x, w):  # forward and both gradient passes
    return jnp.sum(onednn.conv(x, w, (2, 2), ((1, 1), (1, 1))) ** 2)

  def xla_loss(x, w):
    return jnp.sum(lax.conv_general_dilated(x, w, (2, 2), ((1, 1), (1, 1)),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC")) ** 2)

  grads = jax.grad(loss, argnums=(0, 1))
  cores = len(os.sched_getaffinity(0))
  assert jax.jit(grads).lower(x, w).as_text().count(f"threads = {cores} : i64") == 3
  mesh = parallel.make_mesh(2, 1)
  sharded = jax.jit(jax.shard_map(grads, mesh=mesh, in_specs=(P(parallel.DATA_AXIS), P()),
                                  out_specs=(P(parallel.DATA_AXIS), P(parallel.DATA_AXIS)), check_vma=False))
  text = sharded.lower(x, w).as_text()
  share = onednn.threads_per_device(2)
  assert share == max(1, cores // 2)
  assert text.count(f"threads = {share} : i64") == 3  # fwd, dgrad, wgrad
  dx, dw = sharded(x, w)
  for half in range(2):
    want = jax.grad(xla_loss, argnums=(0, 1))(x[2 * half:2 * half + 2], w)
    np.testing.assert_allclose(dx[2 * half:2 * half + 2], want[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw[3 * half:3 * half + 3], want[1], rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# bfloat16: operands and results bf16, accumulation in float32 (the weight gradient on widened float32 operands).
# ---------------------------------------------------------------------------------------------------------------
BF16_ULP = 2.0 ** -7  # bfloat16 keeps 8 significant bits: rounding to it moves a value by at most 2^-8 of itself


def _assert_bf16_close(mine, ref, ulps):
  """|mine - ref| <= ulps * 2^-7 |ref| elementwise, plus 1e-4 of max |ref| for the float32 accumulation's
  rounding where terms cancel (a result near 0). One rounding of the exact value to bfloat16 is within 0.5 ulp;
  a bfloat16 accumulation (rounding every partial sum) would miss that bound by several ulps."""
  assert mine.dtype == jnp.bfloat16 and mine.shape == ref.shape
  mine, ref = np.asarray(mine, np.float64), np.asarray(ref, np.float64)
  err = np.abs(mine - ref) - ulps * BF16_ULP * np.abs(ref) - 1e-4 * np.max(np.abs(ref))
  assert np.max(err) <= 0, (np.max(err), np.max(np.abs(mine - ref) / (np.abs(ref) + 1e-30)))


def _bf16(rng, shape):
  return jnp.asarray(rng.normal(size=shape), jnp.bfloat16)


@needs_onednn
@pytest.mark.parametrize("case", [0, 2, 3])
def test_bfloat16_passes_match_float64_and_xla(case):
  """Each pass and the transposed conv in bfloat16: within half an ulp (one rounding) of float64 NumPy on the
  same bfloat16 inputs, and within one ulp of XLA's bfloat16 convolutions (each rounded once)."""
  xs, ws, s, pads = GEOMETRIES[case]
  rng = np.random.default_rng(case)
  x, w = _bf16(rng, xs), _bf16(rng, ws)
  y_xla, vjp = jax.vjp(lambda x, w: _xla(x, w, s, pads), x, w)
  g = _bf16(rng, y_xla.shape)
  tw = _bf16(rng, (*ws[:2], ws[3], ws[2]))  # convt of g back to x's channels
  tpads = tuple((k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(ws[:2], pads))

  @jax.jit
  def passes(x, w, g, tw):
    return (onednn.conv(x, w, s, pads), onednn.conv_input_grad(g, w, s, pads, xs[1:3]),
            onednn.conv_kernel_grad(x, g, s, pads, ws[:2]), onednn.convt(g, tw, s, tpads),
            layers.convt_xla(g, tw, s, tpads))

  y, dx, dw, t, t_xla = passes(x, w, g, tw)
  for mine, ref in zip((y, dx, dw), _numpy_passes(x, w, g, s, pads)):
    _assert_bf16_close(mine, ref, ulps=0.5)
  for mine, ref in zip((y, dx, dw, t), (y_xla, *vjp(g), t_xla)):
    _assert_bf16_close(mine, ref, ulps=1)


@needs_onednn
def test_bfloat16_gradients_and_vmap_match_xla():
  """jax.grad of a float32 loss of bfloat16 convolutions (the cotangent is rounded to bf16 at the conv, as
  for XLA's), per model under vmap (batched operands and a broadcast one), and the vmapped forward."""
  s, pads = (2, 2), ((1, 1), (1, 1))
  rng = np.random.default_rng(5)
  x, w, c = _bf16(rng, (3, 2, 8, 8, 3)), _bf16(rng, (3, 4, 4, 3, 5)), jnp.asarray(rng.normal(size=(2, 4, 4, 5)))
  loss = lambda f: lambda x, w: jnp.sum(f(x, w, s, pads).astype(jnp.float32) * c)
  grads = lambda f, axes: jax.jit(jax.vmap(jax.grad(loss(f), (0, 1)), axes))
  for axes, w_ in (((0, 0), w), ((0, None), w[0])):
    for mine, ref in zip(grads(onednn.conv, axes)(x, w_), grads(_xla, axes)(x, w_)):
      # a broadcast kernel's gradient: XLA folds the models into one conv (one rounding); here the per-model
      # bfloat16 gradients are summed (one more rounding)
      _assert_bf16_close(mine, ref, ulps=1 if mine.ndim == 5 else 2)
  fwd = lambda f: jax.jit(jax.vmap(lambda x, w: f(x, w, s, pads)))
  _assert_bf16_close(fwd(onednn.conv)(x, w), fwd(_xla)(x, w), ulps=1)


@needs_onednn
def test_bfloat16_dcgan_step_runs_its_convolutions_on_onednn():
  """--compute_dtype=bfloat16: every convolution of the DCGAN train step (G and D, forward and both
  gradients) is a oneDNN custom call on bfloat16 operands, none an XLA convolution; parameters stay float32."""
  import re

  from jaxgan import experiment
  config = experiment.Config(dataset="digits", model="dcgan", image_size=32, channels=1, width=8, batch_size=8,
                             compute_dtype="bfloat16")
  exp = experiment.build(config)
  state = exp.init(jax.random.key(0))
  text = jax.jit(exp.train_step()).lower(state, {"x": jnp.zeros((1, 8, 32, 32, 1))}).as_text()
  calls = re.findall(r"@jaxgan_JaxganOnednnConv(\w+)\(.*\} : \((tensor<\S+>), (tensor<\S+>)\) -> (tensor<\S+>)",
                     text)
  assert {name for name, *_ in calls} == {"Fwd", "BwdData", "BwdWeights"}
  assert all(t.endswith("xbf16>") for _, *types in calls for t in types), calls
  assert "convolution" not in text
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state.g.params))


@needs_onednn
def test_mixed_dtypes_never_reach_onednn():
  """A bfloat16 input with a float32 kernel (the function form does not promote; Conv/ConvTranspose do): not
  for oneDNN ('dnnl' refuses, 'auto' takes XLA's path, which rejects mixed dtypes as lax.conv does); float16 is
  not a oneDNN dtype here."""
  x, w = jnp.ones((2, 8, 8, 3), jnp.bfloat16), jnp.ones((4, 4, 3, 5), jnp.float32)
  s, pads = (2, 2), ((1, 1), (1, 1))
  assert not onednn.supported("conv", x, w, s, pads) and not onednn.supported("convt", x, w, s, pads)
  assert onednn.supported("conv", x, w.astype(jnp.bfloat16), s, pads)
  assert not onednn.supported("conv", x.astype(jnp.float16), w.astype(jnp.float16), s, pads)
  with pytest.raises(ValueError, match="jaxgan_conv_fwd: operand dtypes differ"):
    layers.conv(x, w, s, pads, implementation="auto")
  with pytest.raises(ValueError, match="input and kernel of one dtype"):
    layers.conv(x, w, s, pads, implementation="dnnl")
