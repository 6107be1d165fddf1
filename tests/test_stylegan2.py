"""StyleGAN2 (jaxgan.models.stylegan2, stylegan2_ops, regularizers.path_length) against float64 NumPy references,
finite differences, defining properties and the published parameter counts; exact resume and data parallelism."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import state_leaves
from jaxgan import experiment, parallel
from jaxgan.checkpoint import Checkpointer
from jaxgan.config import Config, ConfigError
from jaxgan.models import stylegan2 as sg
from jaxgan.models import stylegan2_ops as ops
from jaxgan.objectives import TermInputs
from jaxgan.regularizers import path_length
from jaxgan.step import ema_decay, ema_update

RNG = np.random.default_rng(0)


# ----------------------------------------------------------------------------- NumPy float64 references

def np_upfirdn2d(x, f, up=1, down=1, pad=(0, 0, 0, 0), gain=1.0):
    """upfirdn2d by its definition: zeros after each sample, pad/crop, true 2-D convolution, subsample."""
    b, h, w, c = x.shape
    u = np.zeros((b, h * up, w * up, c))
    u[:, ::up, ::up] = x
    px0, px1, py0, py1 = pad
    u = np.pad(u, ((0, 0), (max(py0, 0), max(py1, 0)), (max(px0, 0), max(px1, 0)), (0, 0)))
    u = u[:, max(-py0, 0):u.shape[1] - max(-py1, 0), max(-px0, 0):u.shape[2] - max(-px1, 0)]
    f = np.asarray(f, np.float64) * gain
    kh, kw = f.shape
    out = np.zeros((b, u.shape[1] - kh + 1, u.shape[2] - kw + 1, c))
    for i in range(out.shape[1]):
        for j in range(out.shape[2]):
            out[:, i, j] = np.einsum("bijc,ij->bc", u[:, i:i + kh, j:j + kw], f[::-1, ::-1])
    return out[:, ::down, ::down]


def np_correlate(x, w, pad):
    """'valid' correlation after zero padding ``pad``: x [B, H, W, I], w [k, k, I, O]."""
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    k = w.shape[0]
    out = np.zeros((x.shape[0], x.shape[1] - k + 1, x.shape[2] - k + 1, w.shape[-1]))
    for i in range(out.shape[1]):
        for j in range(out.shape[2]):
            out[:, i, j] = np.einsum("bijc,ijco->bo", x[:, i:i + k, j:j + k], w)
    return out


F2D = np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64.0


def np_conv_resample(x, w, up=1, down=1):
    """StyleGAN2's conv2d_resample by its slow path: FIR-upsample (gain 4) then conv, or FIR then strided conv."""
    k = w.shape[0]
    if up == 2:  # pads of the reference: p + (4 + 2 - 1) // 2, p + (4 - 2) // 2 with p = k // 2
        x = np_upfirdn2d(x, F2D, up=2, pad=(k // 2 + 2, k // 2 + 1) * 2, gain=4.0)
        return np_correlate(x, w, 0)
    if down == 2:
        p = k // 2 + 1
        return np_correlate(np_upfirdn2d(x, F2D, pad=(p, p, p, p)), w, 0)[:, ::2, ::2]
    return np_correlate(x, w, k // 2)


def np_modulated_conv(x, w, s, demodulate=True, up=1):
    """Per-example kernels w * s_b (demodulated: each output channel's kernel divided by its norm)."""
    out = []
    for b in range(x.shape[0]):
        wb = w * s[b][None, None, :, None]
        if demodulate:
            wb = wb / np.sqrt(np.sum(wb ** 2, axis=(0, 1, 2)) + 1e-8)
        out.append(np_conv_resample(x[b:b + 1], wb, up=up)[0])
    return np.stack(out)


def np_minibatch_stddev(x, group):
    b = x.shape[0]
    n = b // group
    feature = np.zeros(b)
    for j in range(n):
        members = [j + g * n for g in range(group)]  # example i is in group i % n
        feature[members] = np.mean(np.sqrt(np.var(x[members], axis=0) + 1e-8))
    return np.concatenate([x, np.broadcast_to(feature[:, None, None, None], x.shape[:3] + (1,))], axis=-1)


def _close(actual, expected, tol=1e-5):
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=tol, atol=tol)


# ----------------------------------------------------------------------------- ops

@pytest.mark.parametrize("up,down,pad", [(2, 1, (2, 1, 2, 1)), (1, 2, (1, 1, 1, 1)), (1, 1, (-1, 2, 0, -2)),
                                         (2, 2, (1, 2, 2, 1))])
def test_upfirdn2d_separable_and_2d_filters_equal_the_definition(up, down, pad):
    x = RNG.standard_normal((2, 6, 5, 3))
    expected = np_upfirdn2d(x, F2D, up, down, pad, gain=up * up)
    for f in (ops.setup_filter(), ops.setup_filter(separable=False)):
        _close(ops.upfirdn2d(jnp.asarray(x, jnp.float32), f, up=up, down=down, padding=pad, gain=up * up), expected)


def test_fir_resampling_doubles_and_halves_the_size_and_keeps_a_constant_inside():
    x = jnp.ones((1, 8, 8, 2))
    up, down = ops.upsample2d(x), ops.downsample2d(x)
    assert up.shape == (1, 16, 16, 2) and down.shape == (1, 4, 4, 2)
    _close(up[:, 2:-2, 2:-2], 1.0)  # gain 4 restores the zeros' mean: a constant stays itself away from borders
    _close(down[:, 1:-1, 1:-1], 1.0)
    _close(up, np_upfirdn2d(np.ones((1, 8, 8, 2)), F2D, 2, 1, (2, 1, 2, 1), 4.0))


@pytest.mark.parametrize("up,down,k", [(1, 1, 3), (2, 1, 3), (1, 2, 3), (1, 2, 1)])
def test_resampling_conv_equals_the_reference_slow_path(up, down, k):
    x, w = RNG.standard_normal((2, 6, 6, 3)), RNG.standard_normal((k, k, 3, 4))
    out = ops.conv2d(jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32), up=up, down=down)
    _close(out, np_conv_resample(x, w, up, down), 1e-4)


@pytest.mark.parametrize("demodulate,up", [(True, 1), (False, 1), (True, 2)])
def test_modulated_conv_equals_per_example_kernels(demodulate, up):
    x, w = RNG.standard_normal((3, 5, 5, 4)), RNG.standard_normal((3, 3, 4, 6))
    s = RNG.standard_normal((3, 4)) + 1.0
    out = ops.modulated_conv2d(*(jnp.asarray(a, jnp.float32) for a in (x, w, s)), demodulate=demodulate, up=up)
    _close(out, np_modulated_conv(x, w, s, demodulate, up), 1e-4)


def test_demodulation_gives_unit_output_variance_for_unit_input():
    """What demodulation is for: with i.i.d. unit-variance inputs each output channel has variance ~1."""
    x = jax.random.normal(jax.random.key(0), (64, 16, 16, 32))
    w, s = jax.random.normal(jax.random.key(1), (3, 3, 32, 8)), 3.0 * jax.random.uniform(jax.random.key(2), (64, 32))
    var = float(jnp.var(ops.modulated_conv2d(x, w, s)[:, 1:-1, 1:-1]))
    assert 0.9 < var < 1.1, var


@pytest.mark.parametrize("batch,group", [(8, 4), (4, 4), (6, 2)])
def test_minibatch_stddev_equals_the_definition(batch, group):
    x = RNG.standard_normal((batch, 4, 4, 5))
    _close(ops.minibatch_stddev(jnp.asarray(x, jnp.float32), group), np_minibatch_stddev(x, group))


def test_the_discriminator_groups_consecutive_examples_so_real_and_fake_never_share_a_group():
    """D's minibatch stddev (`sg.minibatch_stddev_consecutive`, its only op across examples) groups examples
    4k..4k+3: on the train step's concat([real, fake]) it equals the definition on each half alone, as the
    reference's separate D calls (with its strided groups b % (B // 4) a group held 2 real and 2 fake
    examples), and 2 devices holding 4 examples each form one device's groups."""
    x = RNG.standard_normal((8, 4, 4, 5))
    expected = np.concatenate([np_minibatch_stddev(x[:4], 4), np_minibatch_stddev(x[4:], 4)])
    _close(sg.minibatch_stddev_consecutive(jnp.asarray(x, jnp.float32), 4), expected)
    _close(sg.minibatch_stddev_consecutive(jnp.asarray(x[:6], jnp.float32), 2),
           np.concatenate([np_minibatch_stddev(x[i:i + 2], 2) for i in (0, 2, 4)]))


def test_minibatch_stddev_refuses_a_batch_not_divisible_by_the_group():
    with pytest.raises(ValueError, match="not a multiple of the group size 4"):
        ops.minibatch_stddev(jnp.zeros((6, 4, 4, 2)), 4)


def test_equalized_dense_scales_by_lr_over_sqrt_fan_in():
    layer = ops.EqualDense(3, lr_multiplier=0.01, bias_init=0.5)
    params = layer.init(jax.random.key(0), jnp.zeros((1, 4)))["params"]
    x = RNG.standard_normal((2, 4))
    w, b = np.asarray(params["kernel"], np.float64), np.asarray(params["bias"], np.float64)
    assert np.std(w) > 10  # stored N(0, 1 / lr^2)
    _close(layer.apply({"params": params}, jnp.asarray(x, jnp.float32)), x @ (w * 0.01 / 2) + b * 0.01)


# ----------------------------------------------------------------------------- networks

def _tiny_g(**kw):
    return sg.StyleGAN2Generator(**{**dict(resolution=32, image_channels=1, latent_dim=4, channel_max=4,
                                           mapping_layers=2), **kw})


def test_parameter_counts_equal_the_published_config_f_at_1024():
    """stylegan2-ada-pytorch's print_module_summary at 1024 px (channel_base 32768, channel_max 512, as printed
    in its training logs): D "Total 29012513"; G "Total 28794124" with --cfg=auto's 2 mapping layers, which is
    config F's 8 mapping layers (each 262656 = 512 * 512 + 512 parameters) minus 6, i.e. 30370060 (the TF
    StyleGAN2 config-f G). Per-layer check from the same summary: synthesis.b4.conv1 has 2622465."""
    def count(module, x):
        variables = jax.eval_shape(lambda: module.init(jax.random.key(0), x, train=False))
        return variables, sum(v.size for v in jax.tree.leaves(variables["params"]))

    z = jnp.zeros((1, 512))
    g_vars, g8 = count(sg.StyleGAN2Generator(1024, 3, 512, 512, mapping_layers=8), z)
    _, g2 = count(sg.StyleGAN2Generator(1024, 3, 512, 512, mapping_layers=2), z)
    _, d = count(sg.StyleGAN2Discriminator(1024, 512), jnp.zeros((4, 1024, 1024, 3)))
    assert (g8, g2, d) == (30370060, 28794124, 29012513)
    b4 = g_vars["params"]["synthesis"]["b4_conv1"]
    assert sum(v.size for v in jax.tree.leaves(b4)) == 2622465
    assert g_vars["stylegan2"]["w_avg"].shape == (512,)  # a buffer, not a parameter


def test_one_definition_serves_every_size_and_refuses_others():
    for size in (32, 64):
        g = _tiny_g(resolution=size)
        out = jax.eval_shape(lambda g=g: g.init_with_output(jax.random.key(0), jnp.zeros((2, 4)), train=False))[0]
        assert out[0].shape == (2, size, size, 1) and out[1]["ws"].shape == (2, sg.num_ws(size), 4)
    assert sg.num_ws(256) == 14 and sg.num_ws(1024) == 18
    with pytest.raises(ValueError, match="supports image sizes"):
        _tiny_g(resolution=48).init(jax.random.key(0), jnp.zeros((1, 4)), train=False)
    with pytest.raises(ConfigError, match="--image_size=48 is not supported by --model=stylegan2"):
        experiment.validate(Config(dataset="digits", model="stylegan2", image_size=48))
    with pytest.raises(ConfigError, match="--conditional is not supported by --model=stylegan2"):
        experiment.validate(Config(dataset="digits", model="stylegan2", conditional=True))


def _init(g, key=0):
    return g.init(jax.random.key(key), jnp.zeros((1, g.latent_dim)), train=False)


def test_style_mixing_takes_w1_before_the_cutoff_and_w2_after():
    ws1, ws2 = jnp.zeros((2, 6, 3)), jnp.ones((2, 6, 3))
    mixed = np.asarray(sg.mix_styles(ws1, ws2, 4))
    assert (mixed[:, :4] == 0).all() and (mixed[:, 4:] == 1).all()
    g = _tiny_g(style_mixing=1.0)
    variables = _init(g)
    z = jax.random.normal(jax.random.key(1), (3, 4))
    w1 = np.asarray(g.apply(variables, z, train=False)[1]["ws"][:, 0])
    for seed in range(3):
        (_, aux), _ = g.apply(variables, z, train=True, rngs={"noise": jax.random.key(seed)}, mutable=["stylegan2"])
        ws = np.asarray(aux["ws"])
        cutoff = int(np.argmax(~np.all(np.isclose(ws, w1[:, None]), axis=(0, 2))))
        assert 1 <= cutoff < g.num_ws
        assert np.allclose(ws[:, :cutoff], w1[:, None]) and np.allclose(ws[:, cutoff:], ws[:, -1:])
        assert not np.allclose(ws[:, -1], w1)
    (_, aux), _ = _tiny_g(style_mixing=0.0).apply(variables, z, train=True, rngs={"noise": jax.random.key(0)},
                                                   mutable=["stylegan2"])
    np.testing.assert_allclose(aux["ws"], np.broadcast_to(w1[:, None], aux["ws"].shape), rtol=1e-6)


def test_truncation_psi_zero_gives_the_mean_w_image_and_one_is_the_identity():
    variables = _init(_tiny_g())
    w_avg = jax.random.normal(jax.random.key(3), (4,))
    variables = {**variables, "stylegan2": {**variables["stylegan2"], "w_avg": w_avg}}
    z = jax.random.normal(jax.random.key(1), (2, 4))
    x0, aux0 = _tiny_g(truncation_psi=0.0).apply(variables, z, train=False)
    mean_image = _tiny_g().apply(variables, jnp.broadcast_to(w_avg, (2, sg.num_ws(32), 4)), train=False)[0]
    np.testing.assert_allclose(aux0["ws"], np.broadcast_to(w_avg, aux0["ws"].shape), rtol=1e-6)
    np.testing.assert_allclose(x0, mean_image, rtol=1e-5, atol=1e-6)
    ws = jax.random.normal(jax.random.key(2), (2, 8, 4))
    np.testing.assert_array_equal(sg.truncate(ws, w_avg, 1.0), ws)
    half = np.asarray(sg.truncate(ws, w_avg, 0.5, cutoff=3))
    np.testing.assert_allclose(half[:, :3], np.asarray(w_avg + 0.5 * (ws[:, :3] - w_avg)), rtol=1e-6)
    np.testing.assert_array_equal(half[:, 3:], ws[:, 3:])


def test_w_avg_tracks_the_mean_w_in_training_only():
    g = _tiny_g(style_mixing=0.0)
    variables = _init(g)
    z = jax.random.normal(jax.random.key(1), (5, 4))
    (_, aux), updates = g.apply(variables, z, train=True, mutable=["stylegan2"])
    expected = 0.005 * np.mean(np.asarray(aux["ws"][:, 0]), axis=0)  # lerp from 0 with beta 0.995
    np.testing.assert_allclose(updates["stylegan2"]["w_avg"], expected, rtol=1e-5, atol=1e-8)


# ----------------------------------------------------------------------------- path length

def test_path_length_penalty_equals_finite_differences_of_g_in_w():
    g = _tiny_g(latent_dim=2, channel_max=2)
    with jax.enable_x64(True):
        variables = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), _init(g))
        synth = jax.jit(lambda ws, labels=None: g.apply(variables, ws, train=True)[0])
        ws = jax.random.normal(jax.random.key(1), (4, sg.num_ws(32), 2), jnp.float64)
        pl_mean, key = 0.3, jax.random.key(2)

        @jax.jit
        def terms(ws):
            t = TermInputs(None, jnp.zeros(4), None, None, None, key, {}, g_aux={"ws": ws, "pl_mean": pl_mean},
                           g_fn=synth)
            return path_length.penalty(t), path_length.mean_update(t)
        penalty, update = map(float, terms(ws))
        n = 4 // path_length.BATCH_SHRINK
        x = synth(ws[:n])
        y = np.asarray(jax.random.normal(key, x.shape, jnp.float32), np.float64) / np.sqrt(32 * 32)
        eps, base = 1e-5, np.asarray(ws[:n])
        coords = [(b, l, k) for b in range(n) for l in range(ws.shape[1]) for k in range(2)]
        shifted = np.stack([base] * (2 * len(coords)))
        for i, c in enumerate(coords):
            shifted[2 * i][c] += eps
            shifted[2 * i + 1][c] -= eps
        out = np.asarray(synth(jnp.asarray(shifted.reshape(-1, *base.shape[1:])))).reshape(2 * len(coords), n,
                                                                                          *x.shape[1:])
        grads = np.zeros_like(base)
        for i, (b, l, k) in enumerate(coords):
            grads[b, l, k] = np.sum((out[2 * i, b] - out[2 * i + 1, b]) * y[b]) / (2 * eps)
    lengths = np.sqrt(np.mean(np.sum(grads ** 2, axis=2), axis=1))
    new_mean = pl_mean + path_length.DECAY * (lengths.mean() - pl_mean)
    np.testing.assert_allclose(penalty, np.mean((lengths - new_mean) ** 2), rtol=1e-6)
    np.testing.assert_allclose(update, new_mean - pl_mean, rtol=1e-4, atol=1e-9)  # 0.01 (mean - m): cancels
    state = {"stylegan2": {"pl_mean": jnp.float32(pl_mean), "w_avg": jnp.zeros(2)}}
    absorbed = sg.StyleGAN2Generator.absorb_term_values(state, {"path_length_update": jnp.float32(update)})
    np.testing.assert_allclose(absorbed["stylegan2"]["pl_mean"], new_mean, rtol=1e-6)


def test_path_length_objective_is_lazy_every_4_and_needs_a_stylegan2():
    objective = path_length.path_length(2.0)
    assert {t.name: (t.every, t.metric_only) for t in objective.g_terms} == {
        "path_length": (4, False), "path_length_update": (4, True)}
    assert objective.hparams == {"path_length_weight": 2.0}
    with pytest.raises(ConfigError, match="--path_length_weight=2.0 has no effect: it applies to --model=stylegan2"):
        experiment.validate(Config(dataset="digits", model="dcgan", path_length_weight=2.0))


# ----------------------------------------------------------------------------- EMA by half-life

def test_ema_half_life_with_ramp_up_follows_the_reference_formula():
    hparams = {"ema_kimg": jnp.float32(10.0), "ema_rampup": jnp.float32(0.05), "ema_batch": jnp.float32(32.0)}
    for step in (0, 1, 100, 10000):
        half_life = min(10000.0, step * 32 * 0.05)
        expected = 0.5 ** (32 / max(half_life, 1e-8))
        np.testing.assert_allclose(float(ema_decay(jnp.int32(step), hparams)), expected, rtol=1e-6)
    no_ramp = {**hparams, "ema_rampup": jnp.float32(0.0)}
    np.testing.assert_allclose(float(ema_decay(jnp.int32(0), no_ramp)), 0.5 ** (32 / 10000), rtol=1e-6)
    p, e = {"w": jnp.ones(3)}, {"w": jnp.zeros(3)}
    np.testing.assert_array_equal(ema_update(e, p, jnp.int32(0), hparams)["w"], p["w"])  # first step copies


def test_ema_flags_validate():
    base = Config(dataset="digits", model="stylegan2", batch_size=8)
    experiment.validate(dataclasses.replace(base, ema_kimg=10.0, ema_rampup=0.05))
    for changes, message in [(dict(ema_kimg=10.0, ema_rampup=2.0), r"--ema_rampup must be in \[0, 1\]"),
                             (dict(ema_kimg=10.0, ema_decay=0.999), "both set the EMA of G"),
                             (dict(ema_rampup=0.05), "--ema_rampup=0.05 has no effect"),
                             (dict(style_mixing=1.5), r"--style_mixing must be a probability in \[0, 1\]"),
                             (dict(mapping_layers=0), "--mapping_layers must be an integer >= 1"),
                             (dict(batch_size=6), "--batch_size=6 must be a multiple of 4")]:
        with pytest.raises(ConfigError, match=message):
            experiment.validate(dataclasses.replace(base, **changes))
    hparams = experiment.initial_hparams(dataclasses.replace(base, ema_kimg=10.0, ema_rampup=0.05),
                                         experiment.build_objective(base))
    assert (hparams["ema_kimg"], hparams["ema_rampup"], hparams["ema_batch"]) == (10.0, 0.05, 8.0)


# ----------------------------------------------------------------------------- training and resume

# A tiny StyleGAN2 run that the resume and data-parallel tests share (one compiled one-device step): global
# batch 8 (4 per device on 2), lazy R1 every 2 and path length every 4, style mixing always (one cutoff per
# global batch), the EMA half-life in its ramp-up. Plain SGD: Adam's first step would turn the data-parallel
# run's rounding-sized gradient differences into +-lr.
STRAIGHT = Config(dataset="digits", model="stylegan2", image_size=32, width=4, latent_dim=4, batch_size=8,
                  mapping_layers=2, penalty="r1", penalty_weight=0.01, penalty_every=2, path_length_weight=2.0,
                  ema_kimg=10.0, ema_rampup=0.05, style_mixing=1.0, optimizer="sgd", g_lr=0.01, d_lr=0.01)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """6 steps of `STRAIGHT` on one device: (experiment, compiled step, batches, initial state, states after
    each step, metrics of each step, the checkpoint directory holding the state after 3 steps)."""
    exp = experiment.build(STRAIGHT, num_classes=0)
    xs = jax.random.uniform(jax.random.key(1), (6, 1, 8, 32, 32, 1), minval=-1, maxval=1)
    state = initial = jax.jit(exp.init)(jax.random.key(0))
    # compiled once, ahead of time: a restored state with other types or placements would raise, not recompile
    step = jax.jit(exp.train_step()).lower(state, {"x": xs[0]}).compile()
    ckpt_dir = tmp_path_factory.mktemp("sg2") / "ckpt"
    states, metrics = [], []
    for i, x in enumerate(xs):
        if i == 3:
            with Checkpointer(ckpt_dir, save_every=1, async_save=False) as ckpt:
                ckpt.save(3, state, {"position": 3})
        state, m = step(state, {"x": x})
        states.append(state)
        metrics.append(m)
    return exp, step, xs, initial, states, metrics, ckpt_dir


@pytest.mark.slow  # compiles init and one train step: ~2 min cold on 2 loaded cores
def test_resume_mid_interval_of_the_lazy_terms_and_in_the_ema_ramp_up_is_exact(straight_run):
    """6 steps of a tiny StyleGAN2 (path length every 4 and lazy R1 every 2, EMA half-life with ramp-up)
    straight, against the same run checkpointed after 3 steps (both lazy intervals half-way: their next step is
    4), restored into a fresh state and continued: every leaf of the final state is bitwise equal (parameters,
    EMA, w_avg, pl_mean, step, key). The straight run also shows the lazy terms on their steps only, pl_mean
    moving by the path-length update on those steps, and the ramp-up's first EMA copy."""
    exp, step, xs, initial, states, metrics, ckpt_dir = straight_run
    pl = lambda s: float(s.g.model_state["stylegan2"]["pl_mean"])  # noqa: E731
    pl_means = [pl(initial)] + [pl(s) for s in states]
    lazy = [(float(m["g/path_length_update"]) != 0, float(m["d/r1"]) != 0) for m in metrics]
    for i, m in enumerate(metrics):
        assert float(m["finite"]) == 1.0
        np.testing.assert_allclose(pl_means[i + 1] - pl_means[i], float(m["g/path_length_update"]), rtol=1e-5)
    # the ramp-up's half-life is 0 at step 0: the EMA copies G
    jax.tree.map(np.testing.assert_array_equal, states[0].g_ema_params, states[0].g.params)
    assert lazy == [(True, True), (False, False), (False, True), (False, False), (True, True), (False, False)]
    assert pl_means[1] > 0 and pl_means[6] != pl_means[3]  # pl_mean moves after the resume point
    # still in the ramp-up: the EMA decay changes each step
    assert 6 * STRAIGHT.batch_size * STRAIGHT.ema_rampup < 1000 * STRAIGHT.ema_kimg
    with Checkpointer(ckpt_dir, save_every=1, async_save=False) as ckpt:
        resumed, _ = ckpt.restore(3, jax.eval_shape(exp.init, jax.random.key(9)))
    for x in xs[3:]:
        resumed, _ = step(resumed, {"x": x})
    for a, b in zip(state_leaves(states[-1]), state_leaves(resumed), strict=True):
        np.testing.assert_array_equal(b, a)
    assert set(resumed.g.model_state["stylegan2"]) == {"w_avg", "pl_mean"}


@pytest.mark.slow  # compiles the data-parallel StyleGAN2 step: ~3 min cold on 2 loaded cores
@pytest.mark.skipif(jax.device_count() < 2, reason="needs 2 (simulated) devices; see conftest.py")
def test_data_parallel_steps_equal_one_device(straight_run):
    """The straight run's first two steps on 2 devices (4 examples each) against one device with the global
    batch of 8: style mixing (probability 1: one cutoff per global batch), noise inputs (drawn for the global
    batch), lazy R1, the minibatch-stddev groups of 4 consecutive examples (never across devices), w_avg's
    update (a mean over the global batch) and path length on step 0 (the first half of the global batch, split
    over the devices, with y drawn for it: penalty, gradient and pl_mean as on one device)."""
    _, _, xs, initial, states, metrics, _ = straight_run
    mesh = parallel.make_mesh(2, 1)
    dp_exp = experiment.build(STRAIGHT, num_classes=0, axis_name=parallel.DATA_AXIS)
    dp_state = jax.device_put(initial, parallel.replicated(mesh))
    dp_step = parallel.data_parallel_step(dp_exp.train_step(parallel.DATA_AXIS), mesh)
    for x, m in zip(xs[:2], metrics):
        dp_state, dp_m = dp_step(dp_state, parallel.shard_batch({"x": np.asarray(x)}, mesh))
        for name in ("d/r1", "g/path_length", "g/path_length_update", "g/total", "d/total"):
            np.testing.assert_allclose(float(dp_m[name]), float(m[name]), rtol=1e-4, err_msg=name)
    assert float(metrics[0]["d/r1"]) > 0 and float(metrics[1]["d/r1"]) == 0  # lazy: step 0 only
    assert float(metrics[0]["g/path_length"]) > 0 and float(metrics[1]["g/path_length"]) == 0
    state = states[1]
    for ref, got in ((state.g.params, dp_state.g.params), (state.d.params, dp_state.d.params),
                     (state.g.model_state, dp_state.g.model_state)):
        for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(ref)[0], jax.tree.leaves(got)):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=2e-4, atol=2e-5,
                                       err_msg=jax.tree_util.keystr(path))
