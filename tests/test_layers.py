"""jaxgan.models.layers: every implementation equals flax.linen.Conv / ConvTranspose (params, outputs, grads,
forward mode, Hessian-vector products); --conv_impl and the Python default reach every layer."""
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgan.models import layers, onednn
from jaxgan.models.layers import Conv, ConvTranspose

# Pure formulations, "auto" and custom_vjp mixes that put every formulation in every pass at least once
# over the two lists (each pure formulation's passes are its autodiff; the mixes use linear transposes).
# "auto" on cpu is "dnnl" (oneDNN) where the extension is available (so "dnnl" itself is not listed again);
# "auto-xla" is the rule without it.
IMPLS = ["auto", "auto-xla", "xla", "phase", "gemm", "gemm/phase/xla"]
T_IMPLS = ["auto", "auto-xla", "xla", "phase", "gemm", "phase/gemm/corr", "gemm/xla/phase",
           "xla/xla/corr"]  # last: gpu auto

# (flax kwargs, input shape NHWC)
CONV_CASES = [
    (dict(features=6, kernel_size=(4, 4), strides=(2, 2), padding=((1, 1), (1, 1))), (2, 8, 8, 3)),
    (dict(features=4, kernel_size=(3, 3), strides=1, padding="SAME"), (2, 7, 6, 3)),
    (dict(features=4, kernel_size=(3, 3), strides=2, padding="SAME", use_bias=False), (3, 7, 6, 3)),
    (dict(features=4, kernel_size=(4, 4), strides=1, padding="VALID"), (2, 4, 4, 8)),
    (dict(features=3, kernel_size=(5, 3), strides=(3, 2), padding=((2, 0), (1, 2))), (2, 9, 8, 2)),
]
CONVT_CASES = [
    (dict(features=6, kernel_size=(4, 4), strides=(2, 2), padding=((2, 2), (2, 2))), (2, 4, 4, 5)),
    (dict(features=3, kernel_size=(4, 4), strides=(2, 2), padding="SAME", use_bias=False), (2, 5, 3, 8)),
    (dict(features=5, kernel_size=(4, 4), strides=(1, 1), padding="VALID", use_bias=False), (3, 1, 1, 7)),
    (dict(features=4, kernel_size=(3, 3), strides=(2, 2), padding="VALID", transpose_kernel=True), (2, 3, 3, 3)),
    (dict(features=4, kernel_size=(3, 3), strides=(3, 2), padding=((0, 1), (3, -1))), (2, 4, 5, 3)),
]


def _module(cls, kw, impl, x_shape, monkeypatch):
  """cls(**kw) with `impl`; "auto-xla" is "auto" with oneDNN unavailable."""
  if impl == "auto-xla":
    monkeypatch.setattr(layers.onednn, "supported", lambda *a: False)
    impl = "auto"
  return cls(**kw, implementation=impl)


def _rel(a, b):
  return float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30))


@functools.lru_cache(maxsize=None)
def _reference(kind, case):
  kw, x_shape = (CONV_CASES if kind == "conv" else CONVT_CASES)[case]
  return _run(nn.Conv(**kw) if kind == "conv" else nn.ConvTranspose(**kw), x_shape)


def _run(module, x_shape):
  """Initial params, then output and vjp (random cotangent) at random params, in one jitted call."""
  x = jax.random.normal(jax.random.key(1), x_shape)
  p0 = module.init(jax.random.key(0), x)
  p = jax.tree.map(lambda a: jax.random.normal(jax.random.key(a.size), a.shape), p0)  # nonzero bias too

  @jax.jit
  def f(p, x):
    y, vjp = jax.vjp(module.apply, p, x)
    return y, vjp(jax.random.normal(jax.random.key(2), y.shape))

  return p0, f(p, x)


def _compare(mine, ref):
  (p0, (y, grads)), (p0_ref, (y_ref, grads_ref)) = mine, ref
  # same names, shapes and initial values (same initialisers and rng use)
  assert jax.tree.map(jnp.shape, p0) == jax.tree.map(jnp.shape, p0_ref)
  for a, b in zip(jax.tree.leaves(p0), jax.tree.leaves(p0_ref)):
    np.testing.assert_array_equal(a, b)
  assert y.shape == y_ref.shape and _rel(y, y_ref) < 1e-5
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)):  # d/dparams (kernel, bias), d/dx
    assert a.shape == b.shape and _rel(a, b) < 1e-5


def _check(ref, mine, x_shape):
  _compare(_run(mine, x_shape), _run(ref, x_shape))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", range(len(CONV_CASES)))
def test_conv_matches_flax(case, impl, monkeypatch):
  kw, x_shape = CONV_CASES[case]
  _compare(_run(_module(Conv, kw, impl, x_shape, monkeypatch), x_shape), _reference("conv", case))


@pytest.mark.parametrize("impl", T_IMPLS)
@pytest.mark.parametrize("case", range(len(CONVT_CASES)))
def test_conv_transpose_matches_flax(case, impl, monkeypatch):
  kw, x_shape = CONVT_CASES[case]
  _compare(_run(_module(ConvTranspose, kw, impl, x_shape, monkeypatch), x_shape), _reference("convt", case))


def test_fallback_and_defaults(impl="phase"):
  # dilation / groups / 1-D take the xla path and still match flax; defaults are flax's
  for kw, shape in [(dict(features=4, kernel_size=(3, 3), kernel_dilation=2), (2, 9, 9, 4)),
                    (dict(features=4, kernel_size=(3, 3), feature_group_count=2, strides=2), (2, 8, 8, 4)),
                    (dict(features=4, kernel_size=(3,), strides=2), (2, 9, 3)),
                    (dict(features=4, kernel_size=3), (9, 9, 3)),            # no batch dim
                    (dict(features=4, kernel_size=(4, 4), strides=2, padding=1), (2, 3, 8, 8, 3))]:  # 2 batch dims
    _check(nn.Conv(**kw), Conv(**kw, implementation=impl), shape)
  _check(nn.ConvTranspose(4, (3,), strides=(2,)), ConvTranspose(4, (3,), strides=(2,), implementation=impl),
         (2, 5, 3))


def test_dtype_and_param_dtype():
  kw = dict(features=4, kernel_size=(4, 4), strides=(2, 2), padding=((2, 2), (2, 2)),
            dtype=jnp.bfloat16, param_dtype=jnp.float32)
  x = jnp.ones((2, 4, 4, 3))
  ref, mine = nn.ConvTranspose(**kw), ConvTranspose(**kw, implementation="phase")
  p = ref.init(jax.random.key(0), x)
  y_ref, y = ref.apply(p, x), mine.apply(p, x)
  assert y.dtype == y_ref.dtype == jnp.bfloat16
  assert _rel(y.astype(jnp.float32), y_ref.astype(jnp.float32)) < 2e-2


def test_auto_rule_and_second_order():
  # the cpu rule gives valid per-pass names for the DCGAN shapes
  for kind, s, cin, cout, hw in [("convt", (1, 1), 100, 512, (1, 1)), ("convt", (2, 2), 512, 256, (4, 4)),
                                 ("convt", (2, 2), 128, 64, (16, 16)), ("convt", (2, 2), 64, 3, (32, 32)),
                                 ("conv", (2, 2), 3, 64, (64, 64)), ("conv", (2, 2), 64, 128, (32, 32)),
                                 ("conv", (2, 2), 256, 512, (8, 8)), ("conv", (1, 1), 128, 128, (16, 16))]:
    assert len(layers._resolve(layers._auto_cpu(kind, s, cin, cout, hw), kind, s, cin, cout, hw)) == 3
    assert len(layers._resolve(layers._auto_accelerator(kind, s), kind, s, cin, cout, hw)) == 3  # gpu/tpu
  with pytest.raises(ValueError, match="implementation"):
    Conv(4, (3, 3), implementation="fast").init(jax.random.key(0), jnp.ones((1, 4, 4, 1)))
  # reverse-over-reverse (gradient penalties) through the custom_vjp
  kw = dict(features=4, kernel_size=(4, 4), strides=(2, 2), padding=((1, 1), (1, 1)))
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
  ref = nn.Conv(**kw)
  p = ref.init(jax.random.key(0), x)

  def penalty(m):
    def f(p):
      gx = jax.grad(lambda x: jnp.sum(jnp.tanh(m.apply(p, x))))(x)
      return jnp.sum(gx ** 2)
    return jax.grad(f)(p)

  for impl in ["gemm/phase/xla"] + (["dnnl"] if onednn.available() else []):
    for a, b in zip(jax.tree.leaves(penalty(Conv(**kw, implementation=impl))), jax.tree.leaves(penalty(ref))):
      assert _rel(a, b) < 1e-5


# forward mode: oneDNN, plain XLA, and per-pass mixes (the XLA primitives; "auto-xla" is a mix too)
JVP_IMPLS = {"conv": ["dnnl", "xla", "auto-xla", "gemm/phase/xla"], "convt": ["dnnl", "xla", "auto-xla",
                                                                             "phase/gemm/corr"]}


@pytest.mark.parametrize("kind", ["conv", "convt"])
def test_forward_mode_matches_flax_and_central_differences(kind, monkeypatch):
  """jax.jvp in params and input (y = conv(x, kernel) + bias is bilinear + linear, so the central difference
  (f(p+t, x+dx) - f(p-t, x-dx))/2 is exactly the JVP) equals flax's and the central difference; vmap of jvp
  over a few tangents (kernel batched, primal not) equals one jvp per tangent."""
  kw, x_shape = (CONV_CASES if kind == "conv" else CONVT_CASES)[0]
  ref = (nn.Conv if kind == "conv" else nn.ConvTranspose)(**kw)
  x = jax.random.normal(jax.random.key(1), x_shape)
  p = ref.init(jax.random.key(0), x)
  keys = iter(jax.random.split(jax.random.key(5), 8))
  t = jax.tree.map(lambda a: jax.random.normal(next(keys), a.shape), p)
  dx = jax.random.normal(next(keys), x_shape)
  ts = jax.tree.map(lambda a: jnp.stack([a, jnp.sin(a), -a]), t)
  y_ref, ty_ref = jax.jit(lambda p, x: jax.jvp(ref.apply, (p, x), (t, dx)))(p, x)
  batched_ref = jax.jit(lambda p, x: [jax.jvp(ref.apply, (p, x), (jax.tree.map(lambda a: a[i], ts), dx))[1]
                                      for i in range(3)])(p, x)
  for impl in JVP_IMPLS[kind]:
    if impl == "dnnl" and not onednn.available():
      continue
    mine = _module(Conv if kind == "conv" else ConvTranspose, kw, impl, x_shape, monkeypatch)

    @jax.jit
    def f(p, x):
      y, ty = jax.jvp(mine.apply, (p, x), (t, dx))
      plus, minus = mine.apply(jax.tree.map(jnp.add, p, t), x + dx), mine.apply(jax.tree.map(jnp.subtract, p, t),
                                                                               x - dx)
      return y, ty, (plus - minus) / 2, jax.vmap(lambda t: jax.jvp(mine.apply, (p, x), (t, dx))[1])(ts)

    y, ty, central, batched = f(p, x)
    assert _rel(y, y_ref) < 1e-5 and _rel(ty, ty_ref) < 1e-5, impl
    assert _rel(ty, central) < 1e-5, impl
    for i in range(3):
      assert _rel(batched[i], batched_ref[i]) < 1e-5, impl


class _Net(nn.Module):
  """Strided Conv, tanh, strided ConvTranspose (both with `impls`), loss-ready output."""
  impls: tuple[str, str]

  @nn.compact
  def __call__(self, x):
    h = jnp.tanh(Conv(5, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)), implementation=self.impls[0])(x))
    return ConvTranspose(3, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)), implementation=self.impls[1])(h)


def test_hessian_vector_products_match_xla():
  """The HVP of a loss in (params, input), forward-over-reverse and reverse-over-forward, through per-pass mixes
  (the XLA primitives; oneDNN's: test_onednn), equals the forward-over-reverse HVP with plain XLA convolutions."""
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
  p = _Net(("xla", "xla")).init(jax.random.key(0), x)
  v = jax.tree.map(lambda a: jax.random.normal(jax.random.key(a.size + 3), a.shape), (p, x))
  hvps = {}
  for impls in [("xla", "xla"), ("xla/phase/gemm", "phase/gemm/corr")]:
    loss = lambda p, x, net=_Net(impls): jnp.sum(jnp.sin(net.apply(p, x)))
    hvps[impls] = jax.jit(lambda p, x, loss=loss: (  # forward-over-reverse, reverse-over-forward
        jax.jvp(jax.grad(loss, (0, 1)), (p, x), v)[1],
        jax.grad(lambda p, x: jax.jvp(loss, (p, x), v)[1], (0, 1))(p, x)))(p, x)
  ref = jax.tree.leaves(hvps[("xla", "xla")][0])
  for impls, (fwd_rev, rev_fwd) in hvps.items():
    for a, b, c in zip(jax.tree.leaves(fwd_rev), jax.tree.leaves(rev_fwd), ref):
      assert _rel(a, c) < 1e-4 and _rel(b, c) < 1e-4, impls


def _has_onednn(fn, *args):
  """Whether the lowered program of fn(*args) calls a oneDNN kernel; it must convolve either way."""
  text = jax.jit(fn).lower(*args).as_text()
  assert "JaxganOnednnConv" in text or "stablehlo.convolution" in text
  return "JaxganOnednnConv" in text


@pytest.mark.parametrize("model", ["dcgan", "sngan"])
def test_conv_impl_flag_reaches_every_convolution(model):
  """--conv_impl=xla gives G and D programs with no oneDNN call, dnnl (and auto, where oneDNN is here) ones
  with them; Config(conv_impl=...) is validated like the flag."""
  from jaxgan import experiment, models
  base = experiment.Config(dataset="digits", model=model, image_size=32, channels=1, width=4, batch_size=4)
  for impl in ["xla", "auto", "dnnl"]:
    config = dataclasses.replace(base, conv_impl=impl)
    if impl == "dnnl" and not onednn.available():
      with pytest.raises(experiment.ConfigError, match="--conv_impl=dnnl needs the cpu backend"):
        experiment.validate(config)
      continue
    experiment.validate(config)
    g, d = models.build_models(config, (32, 32, 1), 0)
    z, x = jnp.ones((2, g.latent_dim)), jnp.ones((2, 32, 32, 1))
    for net, inputs in [(g, z), (d, x)]:
      uses = _has_onednn(lambda a, net=net: net.init_with_output(jax.random.key(0), a, train=False)[0], inputs)
      assert uses == (impl != "xla" and onednn.available()), (impl, type(net).__name__)


def test_conv_impl_errors_and_python_default(monkeypatch):
  """Bad --conv_impl values are one-line ConfigErrors naming the flag and what is accepted; from Python,
  set_default_implementation / use_implementation pick the implementation of layers left at None, and a
  layer's own field wins."""
  from jaxgan import experiment
  base = experiment.Config(dataset="digits", model="dcgan", image_size=32, channels=1, width=4, batch_size=4)
  bad = [(dict(conv_impl="fast"), r"^--conv_impl='fast' is not one of auto, xla, dnnl$"),
         (dict(dataset="ring8", model="mlp", conv_impl="xla"),
          r"^--conv_impl=xla has no effect")]
  monkeypatch.setattr(onednn, "available", lambda: False)
  bad.append((dict(conv_impl="dnnl"), r"^--conv_impl=dnnl needs the cpu backend and jaxgan's oneDNN extension"))
  for fields, message in bad:
    with pytest.raises(experiment.ConfigError, match=message) as error:
      experiment.validate(dataclasses.replace(base, **fields))
    assert "\n" not in str(error.value)
  monkeypatch.undo()
  with pytest.raises(ValueError, match="set_default_implementation='fast'; accepted: 'auto', 'xla', 'dnnl'"):
    layers.set_default_implementation("fast")
  monkeypatch.setattr(layers, "_default", "auto")  # restored after the test
  x = jnp.ones((2, 8, 8, 3))
  init = lambda layer: lambda x: layer.init_with_output(jax.random.key(0), x)[0]
  layer = Conv(4, (4, 4), strides=2)
  layers.set_default_implementation("xla")
  assert layers.default_implementation() == "xla" and not _has_onednn(init(layer), x)
  if onednn.available():
    with layers.use_implementation("dnnl"):
      assert _has_onednn(init(layer), x)
      with layers.use_implementation("xla"):
        assert not _has_onednn(init(layer), x) and _has_onednn(init(Conv(4, (4, 4), implementation="dnnl")), x)
      assert layers.default_implementation() == "dnnl"
  assert layers.default_implementation() == "xla"
