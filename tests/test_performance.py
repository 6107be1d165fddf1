"""Performance features keep the numbers: several steps per call, bfloat16 compute, the torch twin of DCGAN, the
benchmark's FLOP count and figures."""
import dataclasses
import functools
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import state_leaves
from jaxgan import experiment
from jaxgan.data import toy
from jaxgan.experiment import Config, ConfigError
from jaxgan.models import layers
from jaxgan.reliability import guard_step, metric_names, nan_record_init
from jaxgan.step import make_multi_step
from jaxgan.training import ToyData, train

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "benchmarks"))

RING = Config(dataset="ring8", width=32, depth=2, batch_size=32)
DIGITS = Config(dataset="digits", model="dcgan", image_size=32, channels=1, width=8, batch_size=8)


def assert_trees_close(a, b, **tol):
    for x, y in zip(state_leaves(a), state_leaves(b), strict=True):
        np.testing.assert_allclose(x, y, **tol)


def test_multi_step_equals_single_steps(unroll=False):
    exp = experiment.build(RING)
    step = guard_step(exp.train_step(), "stop")
    data = ToyData(toy.toy_sampler("ring8")[0], 0, 1, 32)
    batches = data.take(4)
    state = exp.init(jax.random.key(0))
    record = nan_record_init(metric_names(exp.train_step(), state, {"x": batches["x"][0]}))
    single = jax.jit(step)
    s1, r1 = state, record
    for i in range(4):
        s1, m1, r1 = single(s1, {"x": batches["x"][i]}, r1)
    s4, m4, r4 = jax.jit(make_multi_step(step, 4, unroll=unroll))(state, batches, record)
    assert int(s4.step) == 4
    assert_trees_close((s1, m1, r1), (s4, m4, r4), rtol=1e-5, atol=1e-6)


def test_toy_data_take_equals_next():
    sampler = toy.toy_sampler("ring8")[0]
    a, b = ToyData(sampler, 3, 2, 16), ToyData(sampler, 3, 2, 16)
    stacked = a.take(3)["x"]
    for i in range(3):
        np.testing.assert_array_equal(stacked[i], next(b)["x"])
    np.testing.assert_array_equal(a.take(1)["x"][0], next(b)["x"])


def test_training_with_steps_per_call_equals_one_step_per_call(tmp_path):
    base = dataclasses.replace(RING, steps=10, log_every=4, checkpoint_every=8, num_samples=64)
    one = train(base, tmp_path / "one")
    four = train(dataclasses.replace(base, steps_per_call=4), tmp_path / "four")  # 4 + 4 + 2 single steps
    assert int(four.step) == 10
    assert_trees_close((one.g.params, one.d.params, one.d.opt_state), (four.g.params, four.d.params, four.d.opt_state),
                       rtol=1e-5, atol=1e-6)
    rows = [l for l in (tmp_path / "four" / "metrics.jsonl").read_text().splitlines() if l.strip()]
    assert [json.loads(r)["step"] for r in rows] == [4, 8, 10]


def test_steps_per_call_must_divide_the_intervals():
    with pytest.raises(ConfigError, match="--log_every=100 must be a multiple of --steps_per_call=3"):
        experiment.validate(dataclasses.replace(RING, steps_per_call=3))
    with pytest.raises(ConfigError, match="--compute_dtype"):
        experiment.validate(dataclasses.replace(DIGITS, compute_dtype="float16"))


def _float_leaves(tree):
    return [leaf for leaf in jax.tree.leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.floating)]


@pytest.mark.parametrize("overrides", [dict(), dict(model="sngan", width=16), dict(model="sagan", width=16)])
def test_bfloat16_step_keeps_float32_state(overrides):
    """Abstract evaluation (no compile): parameters, optimizer and model state, metrics all stay float32."""
    config = dataclasses.replace(DIGITS, compute_dtype="bfloat16", **overrides)
    exp = experiment.build(config)
    assert exp.generator.dtype == jnp.bfloat16 and exp.discriminator.dtype == jnp.bfloat16
    state = exp.init(jax.random.key(0))
    batch = {"x": jnp.zeros((1, 8, 32, 32, 1), jnp.float32)}
    new, metrics = jax.eval_shape(exp.train_step(), state, batch)
    for leaf in _float_leaves((new.g, new.d, new.g_ema_params, metrics)):
        assert leaf.dtype == jnp.float32, leaf
    images = jax.eval_shape(lambda v: exp.generator.apply(v, jnp.zeros((2, exp.generator.latent_dim)), train=False),
                            {"params": new.g.params, **new.g.model_state})
    assert images.dtype == jnp.float32


def test_bfloat16_step_is_close_to_float32():
    """One WGAN-GP step (layer-norm DCGAN critic; the penalty runs D in float32) in bf16 vs f32 from one init."""
    config = dataclasses.replace(DIGITS, d_normalization="layer_norm", loss="wasserstein", penalty="gradient_penalty")
    batch = {"x": jax.random.uniform(jax.random.key(1), (1, 8, 32, 32, 1), minval=-1, maxval=1)}
    runs = {}
    for dtype in ("float32", "bfloat16"):
        exp = experiment.build(dataclasses.replace(config, compute_dtype=dtype))
        state = exp.init(jax.random.key(0))
        runs[dtype] = (exp, state) + tuple(jax.jit(exp.train_step())(state, batch))
    (_, s32, n32, m32), (exp16, s16, n16, m16) = runs["float32"], runs["bfloat16"]
    assert_trees_close(s32.g.params, s16.g.params, rtol=0, atol=0)  # the same float32 init
    for leaf in _float_leaves((n16.g, n16.d)):
        assert leaf.dtype == jnp.float32
    for name, value in m32.items():
        tol = 0.15 if name.endswith("grad_norm") else 0.05
        np.testing.assert_allclose(m16[name], value, rtol=tol, atol=tol, err_msg=name)
    # Adam's first update is ~lr * sign(grad): bf16 flips the sign only of tiny gradient entries, so the
    # updates agree in most places (compared as whole vectors)
    for player in ("g", "d"):
        flat = [np.concatenate([x.ravel() for x in state_leaves(getattr(n, player).params)]) for n in (n32, n16, s32)]
        assert np.linalg.norm(flat[1] - flat[0]) <= 0.5 * np.linalg.norm(flat[0] - flat[2]), player
    z = jax.random.normal(jax.random.key(2), (4, exp16.generator.latent_dim))
    variables = {"params": n32.g.params, **n32.g.model_state}
    x16 = exp16.generator.apply(variables, z, train=False)
    x32 = exp16.generator.clone(dtype=jnp.float32).apply(variables, z, train=False)
    assert x16.dtype == jnp.float32
    np.testing.assert_allclose(x16, x32, atol=0.05)


# ---------------------------------------------------------------------------------------------------------------
# The torch twin of DCGAN used by benchmarks/step_throughput.py --compare_torch is the same network.
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size,channels,counts", [(64, 3, (3_576_704, 2_765_568)), (32, 1, (1_066_880, 661_248)),
                                                   (128, 3, (12_786_560, 11_164_416))])
def test_torch_dcgan_has_the_same_parameter_count(size, channels, counts):
    pytest.importorskip("torch")
    import torch_dcgan
    config = dataclasses.replace(DIGITS, image_size=size, channels=channels, width=0)
    exp = experiment.build(config)
    shapes = jax.eval_shape(exp.init, jax.random.key(0))
    ours = tuple(int(sum(np.prod(x.shape) for x in jax.tree.leaves(p))) for p in (shapes.g.params, shapes.d.params))
    twin = torch_dcgan.TorchDCGAN(size, channels)
    assert ours == counts
    assert (torch_dcgan.num_params(twin.g), torch_dcgan.num_params(twin.d)) == counts


@pytest.mark.parametrize("size,channels", [(32, 1), (64, 3)])
def test_torch_dcgan_computes_the_same_outputs(size, channels):
    torch = pytest.importorskip("torch")
    import torch_dcgan
    config = dataclasses.replace(DIGITS, image_size=size, channels=channels, width=16)
    exp = experiment.build(config)
    state = exp.init(jax.random.key(0))
    g_params, d_params = state.g.params, state.d.params
    twin = torch_dcgan.TorchDCGAN(size, channels, exp.generator.latent_dim, exp.generator.ngf)
    torch_dcgan.load_flax_params(twin.g, twin.d, g_params, d_params)
    z = jax.random.normal(jax.random.key(1), (8, exp.generator.latent_dim))
    x = jax.random.uniform(jax.random.key(2), (8, size, size, channels), minval=-1, maxval=1)
    fake = exp.generator.apply({"params": g_params, **state.g.model_state}, z, train=True, mutable=["batch_stats"])[0]
    logits = exp.discriminator.apply({"params": d_params, **state.d.model_state}, x, train=True,
                                     mutable=["batch_stats"])[0]
    with torch.no_grad():  # train mode: batch statistics, as in the step
        t_fake = twin.g(torch.from_numpy(np.array(z))).permute(0, 2, 3, 1).numpy()
        t_logits = twin.d(torch.from_numpy(np.array(x)).permute(0, 3, 1, 2).contiguous()).numpy()
    np.testing.assert_allclose(t_fake, np.asarray(fake), atol=2e-5)
    np.testing.assert_allclose(t_logits, np.asarray(logits), rtol=1e-4, atol=2e-5)


# ---------------------------------------------------------------------------------------------------------------
# The FLOP count behind step_throughput's "fraction of peak" (XLA's cost analysis does not count cuDNN convs).
# ---------------------------------------------------------------------------------------------------------------
def _brute_force_conv_flops(b, cin, cout, in_hw, k_hw, out_hw, strides, pads, lhs_dil, rhs_dil):
    """2 * B * Cin * Cout * #(output pixel, kernel tap) pairs that read a real input pixel, on the explicit 2D
    frame of the dilated, padded input (not per dimension, as the code under test does)."""
    lo = [p[0] for p in pads]
    frame = np.zeros([lo[d] + (in_hw[d] - 1) * lhs_dil[d] + 1 + max(pads[d][1], 0) + 64 for d in (0, 1)], bool)
    frame[lo[0]:lo[0] + (in_hw[0] - 1) * lhs_dil[0] + 1:lhs_dil[0],
          lo[1]:lo[1] + (in_hw[1] - 1) * lhs_dil[1] + 1:lhs_dil[1]] = True
    pairs = 0
    for oy in range(out_hw[0]):
        for ox in range(out_hw[1]):
            for ky in range(k_hw[0]):
                for kx in range(k_hw[1]):
                    y, x = oy * strides[0] + ky * rhs_dil[0], ox * strides[1] + kx * rhs_dil[1]
                    pairs += bool(frame[y, x]) if y >= 0 and x >= 0 else 0
    return 2.0 * b * cin * cout * pairs


@pytest.mark.parametrize("strides,pads,lhs_dil,rhs_dil", [
    ((1, 1), ((1, 1), (1, 1)), (1, 1), (1, 1)),      # 3x3 SAME
    ((2, 2), ((1, 2), (0, 1)), (1, 1), (1, 1)),      # strided, uneven padding
    ((1, 1), ((2, 2), (2, 2)), (2, 2), (1, 1)),      # a transposed conv (DCGAN's up-sampling layers)
    ((1, 2), ((0, 0), (1, 1)), (1, 1), (2, 1)),      # kernel dilation
])
def test_model_flops_counts_only_products_with_real_inputs(strides, pads, lhs_dil, rhs_dil):
    import step_throughput
    b, cin, cout, hw, k = 2, 3, 5, (6, 7), (3, 4)
    x, w = jnp.ones((b, *hw, cin)), jnp.ones((*k, cin, cout))

    def conv(x, w):
        return jax.lax.conv_general_dilated(x, w, strides, pads, lhs_dil, rhs_dil, ("NHWC", "HWIO", "NHWC"))

    out_hw = conv(x, w).shape[1:3]
    want = _brute_force_conv_flops(b, cin, cout, hw, k, out_hw, strides, pads, lhs_dil, rhs_dil)
    assert step_throughput.model_flops(jax.make_jaxpr(conv)(x, w)) == want
    # every (output, tap, real input) triple is one product in each pass: the forward, the input gradient and
    # the weight gradient (JAX emits the last two as convolutions of other shapes, paddings and dilations)
    grads = jax.make_jaxpr(jax.grad(lambda x, w: jnp.sum(conv(x, w)), argnums=(0, 1)))(x, w)
    assert step_throughput.model_flops(grads) == 3 * want


def test_model_flops_of_dots_scans_and_the_dcgan_step(monkeypatch):
    import step_throughput
    a, b = jnp.ones((4, 3, 5)), jnp.ones((4, 5, 7))
    bmm = lambda a, b: jnp.einsum("bik,bkj->bij", a, b)  # noqa: E731
    assert step_throughput.model_flops(jax.make_jaxpr(bmm)(a, b)) == 2 * 4 * 3 * 5 * 7
    scanned = lambda a, b: jax.lax.scan(lambda c, _: (c, bmm(a, b)), 0.0, None, length=6)[1]  # noqa: E731
    assert step_throughput.model_flops(jax.make_jaxpr(scanned)(a, b)) == 6 * 2 * 4 * 3 * 5 * 7
    # a DCGAN step: close to XLA:CPU's own count of the same program with plain convolutions (XLA adds the
    # elementwise work: BatchNorm, activations, losses, Adam). XLA:GPU has no count for cuDNN's convolutions.
    if jax.default_backend() != "cpu":
        return
    config = dataclasses.replace(DIGITS, width=32, batch_size=16)
    state = jax.eval_shape(experiment.build(config).init, jax.random.key(0))
    batch = {"x": jax.ShapeDtypeStruct((1, 16, 32, 32, 1), jnp.float32)}
    ours = step_throughput.network_flops(config, state, batch)
    monkeypatch.setattr(layers, "_resolve", functools.partial(lambda resolve, impl, *a: resolve("xla", *a),
                                                              layers._resolve))
    xla = jax.jit(experiment.build(config).train_step()).lower(state, batch).cost_analysis()["flops"]
    assert 0.95 * xla < ours < xla


def test_step_throughput_reports_consistent_figures(capsys):
    """The benchmark end to end on a tiny DCGAN: its JSON line agrees with itself and with `network_flops`."""
    import step_throughput
    twin_args = step_throughput.parse_args(["--model=sagan", "--image_size=32", "--compare_torch"])
    assert step_throughput.make_torch_twins(twin_args, None, (0, 0)) == {}  # no twin: skipped with a message
    assert "--model=sagan at 32 px has no torch twin" in capsys.readouterr().out
    twin_args = step_throughput.parse_args(["--model=dcgan", "--n_critic=2", "--compare_torch"])
    assert step_throughput.make_torch_twins(twin_args, None, (0, 0)) == {}  # its step has one D update
    assert "not --n_critic=2; skipped" in capsys.readouterr().out
    r = step_throughput.main(["--model=dcgan", "--image_size=32", "--channels=1", "--width=4", "--batch_size=4",
                              "--blocks=2", "--block_steps=2", "--warmup=1", "--peak"])
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line == json.loads(json.dumps(r))
    config = dataclasses.replace(DIGITS, image_size=32, channels=1, width=4, batch_size=4, dataset="random_images",
                                 seed=0)
    exp = experiment.build(config)
    state = jax.eval_shape(exp.init, jax.random.key(0))
    batch = {"x": jax.ShapeDtypeStruct((1, 4, 32, 32, 1), jnp.float32)}
    assert r["flops_per_step"] == step_throughput.network_flops(config, state, batch) > 0
    assert r["images_per_sec"] == pytest.approx(r["steps_per_sec"] * 4, rel=1e-3)
    rate = r["steps_per_sec"] * r["flops_per_step"]  # FLOP/s (the JSON's figures are rounded)
    assert r["gflops_per_sec"] == pytest.approx(rate / 1e9, abs=0.006)
    assert r["fraction_of_peak"] == pytest.approx(rate / 1e12 / r["matmul_peak_tflops"], rel=1e-3, abs=6e-5)
    assert r["params_g"] == sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.g.params))


def test_model_flops_amortizes_lazy_regularizers():
    """A lazy term's cond (``counter % k == 0``, as `jaxgan.objectives.Term` emits it) counts on one step in k;
    ``lazy="max"`` counts it always; any other cond counts its costliest branch."""
    import step_throughput
    a = jnp.ones((8, 8))
    heavy, light = 2 * 8 * 8 * 8 * 3, 2 * 8 * 8 * 8  # three matmuls vs one

    def lazy(counter, a):
        return jax.lax.cond(counter % 4 == 0, lambda: a @ a @ a @ a, lambda: a @ a)

    def other(counter, a):
        return jax.lax.cond(counter > 4, lambda: a @ a @ a @ a, lambda: a @ a)

    jaxpr = jax.make_jaxpr(lazy)(jnp.int32(0), a)
    assert step_throughput.model_flops(jaxpr) == light + (heavy - light) / 4
    assert step_throughput.model_flops(jaxpr, lazy="max") == heavy
    assert step_throughput.model_flops(jax.make_jaxpr(other)(jnp.int32(0), a)) == heavy


def test_network_flops_of_stylegan2_equals_a_hand_count(monkeypatch):
    """The counter sees StyleGAN2's convolutions (`layers.conv`, oneDNN custom calls under "auto" on CPU,
    forced to XLA convolutions as `step_throughput.network_jaxpr` does) and its dense layers: G's and D's forward
    passes at 32 px, channels capped at 8, against a count layer by layer."""
    import step_throughput
    from jaxgan.models import stylegan2
    b, lat, ch, c, s = 4, 16, 8, 1, 32
    g = stylegan2.StyleGAN2Generator(s, c, lat, ch, mapping_layers=2)
    d = stylegan2.StyleGAN2Discriminator(s, ch)
    monkeypatch.setattr(layers, "_resolve", functools.partial(lambda resolve, impl, k, *a: resolve("xla", k, *a),
                                                              layers._resolve))
    z, x = jax.ShapeDtypeStruct((b, lat), jnp.float32), jax.ShapeDtypeStruct((b, s, s, c), jnp.float32)
    g_vars = jax.eval_shape(lambda: g.init(jax.random.key(0), jnp.zeros(z.shape), train=False))
    d_vars = jax.eval_shape(lambda: d.init(jax.random.key(0), jnp.zeros(x.shape), train=False))
    g_flops = step_throughput.model_flops(jax.make_jaxpr(lambda v, z: g.apply(v, z, train=False))(g_vars, z))
    d_flops = step_throughput.model_flops(jax.make_jaxpr(lambda v, x: d.apply(v, x, train=False))(d_vars, x))
    same = lambda r: (3 * r - 2) ** 2  # noqa: E731 - (output, tap) pairs of a padded 3x3 conv at r x r
    affine, demod = 2 * b * lat * ch, 2 * b * ch * ch  # a layer's style dense layer; its demodulation einsum
    want_g = 2 * (2 * b * lat * lat)  # mapping network
    want_g += affine + 2 * b * ch * ch * same(4) + demod + affine + 2 * b * 4 * 4 * ch * c  # 4x4 layer, toRGB
    for r in (8, 16, 32):  # up conv: stride-2 transposed 3x3, each of the (r/2)^2 inputs meets 9 taps; conv; toRGB
        want_g += affine + 2 * b * ch * ch * 9 * (r // 2) ** 2 + demod + affine + 2 * b * ch * ch * same(r) + demod
        want_g += affine + 2 * b * r * r * ch * c
    want_d = 2 * b * s * s * c * ch  # fromRGB
    for r in (32, 16, 8):  # skip 1x1 after the FIR downsample; conv0; conv1 stride 2 on the FIR-filtered input
        want_d += 2 * b * (r // 2) ** 2 * ch * ch + 2 * b * ch * ch * same(r) + 2 * b * ch * ch * 9 * (r // 2) ** 2
    want_d += 2 * b * (ch + 1) * ch * same(4) + 2 * b * 16 * ch * ch + 2 * b * ch  # mbstd conv, fc, out
    assert (g_flops, d_flops) == (want_g, want_d)


def test_step_throughput_config_from_flagfile_options_and_set(capsys):
    """--flagfile keeps the model/objective/optimization flags and image shape, drops data and loop flags; the
    dedicated options override it, --set overrides both; bad --set values are one error line, exit 2."""
    import step_throughput
    args = step_throughput.parse_args(["--flagfile=stylegan2_digits32.cfg", "--batch_size=16",
                                       "--set", "penalty_every=8", "--set=style_mixing=0.5"])
    config = step_throughput.make_config(args)
    assert (config.model, config.image_size, config.channels, config.mapping_layers) == ("stylegan2", 32, 1, 2)
    assert (config.batch_size, config.penalty_every, config.style_mixing) == (16, 8, 0.5)
    assert (config.dataset, config.steps, config.log_every) == ("random_images", Config.steps, Config.log_every)
    assert {"dataset", "steps", "log_every"} <= set(args.flagfile_ignored) and args.batch_size == 16
    args = step_throughput.parse_args(["--model=biggan", "--conditional", "--image_size=32", "--width=4",
                                       "--batch_size=4", "--num_classes=7"])
    exp = experiment.build(step_throughput.make_config(args), num_classes=args.num_classes)
    batch = step_throughput.random_batch(exp, exp.config, jax.random.key(0), leading=(3,))
    assert batch["label"].shape == (3, 1, 4) and batch["label"].dtype == jnp.int32
    assert 0 <= int(batch["label"].min()) and int(batch["label"].max()) < 7
    for bad in (["--set", "no_such_field=1"], ["--set", "mapping_layers=two"], ["--set", "conditional"]):
        with pytest.raises(SystemExit) as e:
            step_throughput.parse_args(bad)
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: --set")
    for bad in ("jaxgan,both", "examples@fastest"):
        with pytest.raises(SystemExit) as e:
            step_throughput.parse_args([f"--torch_variant={bad}"])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and err == [f"error: --torch_variant={bad}: accepted: jaxgan, examples, each "
                                             "optionally with @MODE, MODE one of default, reduce-overhead, "
                                             "max-autotune, max-autotune-no-cudagraphs (comma-separated)"]
    assert step_throughput.parse_args(["--torch_variant=examples@max-autotune,jaxgan"]).torch_variants == [
        "examples@max-autotune", "jaxgan"]


def test_gpu_suite_times_each_twin_eager_and_compiled_and_parses_every_case(monkeypatch):
    """benchmarks/gpu_suite.py: DCGAN's and SNGAN's torch steps eager and jaxgan's under each torch.compile mode;
    the models without a twin (StyleGAN2, BigGAN) are timed alone; every case's flags parse (flagfiles
    included, from the repository root, where the suite runs); a bad mode is one error line naming the flag."""
    import gpu_suite
    import step_throughput
    modes = ["default", "max-autotune"]
    assert gpu_suite.torch_variants("--model=dcgan --image_size=32", modes) == \
        "jaxgan,examples,jaxgan@default,jaxgan@max-autotune"
    assert gpu_suite.torch_variants("--model=sngan", []) == "jaxgan"
    monkeypatch.chdir(pathlib.Path(__file__).resolve().parent.parent)
    models = set()
    for _, flags in gpu_suite.CASES:
        variants = gpu_suite.torch_variants(flags, modes)
        args = step_throughput.parse_args(flags.split() + ([f"--torch_variant={variants}"] if variants else []))
        models.add(args.model)
        assert (variants is None) == (args.model not in step_throughput.TORCH_TWINS)
    assert models == {"dcgan", "sngan", "stylegan2", "biggan"}
    with pytest.raises(SystemExit) as e:
        gpu_suite.main(["--out=/dev/null", "--torch_compile=fastest"])
    assert e.value.code == 2
