"""Augmentation of D's inputs (jaxgan.augment): DiffAugment's and ADA's operations against NumPy float64
references on fixed inputs and draws, gradients to G through every operation, ADA's p rule, its sweep and
resume, and the --augment flags' errors."""
import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import ndimage

from conftest import state_leaves
from jaxgan import augment, experiment, objectives, sweep
from jaxgan.augment import ada, diffaugment as da
from jaxgan.experiment import Config, ConfigError
from jaxgan.checkpoint import Checkpointer
from jaxgan.objectives import TransformStats
from jaxgan.state import init_gan_state
from jaxgan.step import make_train_step

B, H, W = 4, 8, 8


def images(channels=3, seed=0, h=H, w=W):
    return np.random.default_rng(seed).uniform(-1, 1, (B, h, w, channels)).astype(np.float32)


KEY = jax.random.key(7)


# ---------------------------------------------------------------------------------------------- DiffAugment

def np_color(x, b, s, c):
    x = x.astype(np.float64) + b[:, None, None, None]
    m = x.mean(-1, keepdims=True)
    x = (x - m) * s[:, None, None, None] + m
    m = x.mean((1, 2, 3), keepdims=True)
    return (x - m) * c[:, None, None, None] + m


def test_color_matches_numpy():
    x = images()
    b, s, c = (np.asarray(v, np.float64) for v in da.color_draws(KEY, B))
    assert np.all((-0.5 <= b) & (b < 0.5)) and np.all((0 <= s) & (s < 2)) and np.all((0.5 <= c) & (c < 1.5))
    np.testing.assert_allclose(np.asarray(da.color(KEY, jnp.asarray(x))), np_color(x, b, s, c), atol=2e-6)


def np_translation(x, tx, ty):
    """The reference's definition, pixel by pixel: out[i, j] = x[i + tx, j + ty] inside, else 0."""
    out = np.zeros_like(x)
    for n in range(x.shape[0]):
        for i in range(x.shape[1]):
            for j in range(x.shape[2]):
                si, sj = i + tx[n], j + ty[n]
                if 0 <= si < x.shape[1] and 0 <= sj < x.shape[2]:
                    out[n, i, j] = x[n, si, sj]
    return out


def test_translation_matches_numpy_exactly():
    x = images()
    tx, ty = (np.asarray(v) for v in da.translation_draws(KEY, x.shape))
    np.testing.assert_array_equal(np.asarray(da.translation(KEY, jnp.asarray(x))), np_translation(x, tx, ty))
    for h, shift in ((8, 1), (16, 2), (32, 4)):  # int(size / 8 + 0.5) pixels each way, every value drawn
        t = np.asarray(da.translation_draws(jax.random.key(1), (4000, h, h))[0])
        assert sorted(set(t.tolist())) == list(range(-shift, shift + 1))


def np_cutout(x, ox, oy, ratio=0.5):
    """The reference's scatter: a size x size grid around the offset, indices clamped, set to 0 in a mask."""
    n, h, w = x.shape[:3]
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    mask = np.ones((n, h, w))
    for b in range(n):
        for gi in range(ch):
            for gj in range(cw):
                mask[b, min(max(gi + ox[b] - ch // 2, 0), h - 1), min(max(gj + oy[b] - cw // 2, 0), w - 1)] = 0
    return x * mask[..., None]


@pytest.mark.parametrize("size", [8, 6])  # even and odd cut sizes (4 and 3)
def test_cutout_matches_numpy_exactly(size):
    x = images(h=size, w=size)
    ox, oy = (np.asarray(v) for v in da.cutout_draws(KEY, x.shape))
    np.testing.assert_array_equal(np.asarray(da.cutout(KEY, jnp.asarray(x))), np_cutout(x, ox, oy).astype(np.float32))
    cut = int(size * 0.5 + 0.5)
    o = np.asarray(da.cutout_draws(jax.random.key(2), (4000, size, size))[0])
    assert sorted(set(o.tolist())) == list(range(size + 1 - cut % 2))  # the reference's randint(0, H + 1 - ch % 2)


def test_flip_and_policy_order():
    x = jnp.asarray(images())
    flipped = np.asarray(da.flip_draws(KEY, B))
    expected = np.where(flipped[:, None, None, None], np.asarray(x)[:, :, ::-1], np.asarray(x))
    np.testing.assert_array_equal(np.asarray(da.flip(KEY, x)), expected)
    k1, k2, k3 = jax.random.split(KEY, 3)
    policy = ("translation", "cutout", "color")
    np.testing.assert_array_equal(np.asarray(jax.jit(da.augment, static_argnums=2)(KEY, x, policy)),
                                  np.asarray(jax.jit(lambda: da.color(k3, da.cutout(k2, da.translation(k1, x))))()))


OPS = {**{f"diffaugment.{name}": (lambda k, x, f=f: f(k, x)) for name, f in da.OPS.items()},
       "ada (p=1)": lambda k, x: ada.augment(k, x, 1.0)}


@pytest.mark.parametrize("name", sorted(OPS))
def test_gradients_reach_the_generator(name):
    """d/dparams of a scalar of op(G(params)), G a tanh-dense 'generator': finite and non-zero, and equal to a
    central finite difference along a random direction (float64)."""
    z = jax.random.normal(jax.random.key(0), (B, 5))
    w = jax.random.normal(jax.random.key(1), (5, H * W * 3)) * 0.3
    weights = jax.random.normal(jax.random.key(2), (B, H, W, 3))

    @jax.jit
    def loss(params):
        x = jnp.tanh(z @ params).reshape(B, H, W, 3)
        return jnp.sum(OPS[name](KEY, x) * weights)
    grad = jax.jit(jax.grad(loss))(w)
    assert np.all(np.isfinite(grad)) and float(jnp.abs(grad).max()) > 1e-3
    v = jax.random.normal(jax.random.key(3), w.shape)
    eps = 1e-2
    fd = (loss(w + eps * v) - loss(w - eps * v)) / (2 * eps)
    assert float(jnp.sum(grad * v)) == pytest.approx(float(fd), rel=2e-2)


# ---------------------------------------------------------------------------------------------- ADA

def np_matrix(rows):
    return np.array(rows, np.float64)


def np_geometric(d, n, h, w):
    """The reference's G_inv for example n (augment.py: products of translate2d_inv, scale2d_inv, rotate2d_inv)."""
    def translate_inv(tx, ty):
        return np_matrix([[1, 0, -tx], [0, 1, -ty], [0, 0, 1]])

    def scale_inv(sx, sy):
        return np_matrix([[1 / sx, 0, 0], [0, 1 / sy, 0], [0, 0, 1]])

    def rotate_inv(theta):  # rotate2d(-theta)
        c, s = math.cos(-theta), math.sin(-theta)
        return np_matrix([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    g = np.eye(3)
    g = g @ scale_inv(1 - 2 * d["xflip"][n], 1)
    g = g @ rotate_inv(-math.pi / 2 * d["rotate90"][n])
    g = g @ translate_inv(np.round(d["xint"][n, 0] * w), np.round(d["xint"][n, 1] * h))
    g = g @ scale_inv(d["scale"][n], d["scale"][n])
    g = g @ rotate_inv(-d["rotate_pre"][n])
    g = g @ scale_inv(d["aniso"][n], 1 / d["aniso"][n])
    g = g @ rotate_inv(-d["rotate_post"][n])
    return g @ translate_inv(d["xfrac"][n, 0] * w, d["xfrac"][n, 1] * h)


def np_resample(x, g):
    """Bilinear reads at G_inv @ (x, y, 1) in centred pixel coordinates, the image mirrored beyond its edges
    (scipy's order-1 map_coordinates, mode 'mirror' = numpy's 'reflect')."""
    h, w = x.shape[:2]
    ys, xs = np.meshgrid(np.arange(h) - (h - 1) / 2, np.arange(w) - (w - 1) / 2, indexing="ij")
    src = np.einsum("ij,hwj->hwi", g, np.stack([xs, ys, np.ones_like(xs)], -1))
    coords = [src[..., 1] + (h - 1) / 2, src[..., 0] + (w - 1) / 2]
    return np.stack([ndimage.map_coordinates(x[..., c].astype(np.float64), coords, order=1, mode="mirror")
                     for c in range(x.shape[-1])], -1)


def np_color_matrix(d, n):
    """The reference's C for example n: brightness, contrast, luma flip, hue rotation, saturation."""
    b, c = d["brightness"][n], d["contrast"][n]
    m = np_matrix([[1, 0, 0, b], [0, 1, 0, b], [0, 0, 1, b], [0, 0, 0, 1]])
    m = np.diag([c, c, c, 1]) @ m
    v = np.array([1, 1, 1, 0]) / math.sqrt(3)
    m = (np.eye(4) - 2 * np.outer(v, v) * d["lumaflip"][n]) @ m
    theta = d["hue"][n]  # Rodrigues about the unit luma axis
    k = np_matrix([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    rot = np.eye(4)
    rot[:3, :3] = np.eye(3) + math.sin(theta) * k + (1 - math.cos(theta)) * k @ k
    m = rot @ m
    return (np.outer(v, v) + (np.eye(4) - np.outer(v, v)) * d["saturation"][n]) @ m


def np_ada(x, d):
    out = []
    for n in range(x.shape[0]):
        y = np_resample(x[n], np_geometric(d, n, *x.shape[1:3]))
        c = np_color_matrix(d, n)
        if x.shape[-1] == 3:
            y = y @ c[:3, :3].T + c[:3, 3]
        else:
            row = c[:3].mean(0)
            y = y * row[:3].sum() + row[3]
        out.append(y)
    return np.stack(out)


@pytest.mark.parametrize("channels,p", [(3, 1.0), (3, 0.5), (1, 1.0)])
def test_ada_matches_numpy(channels, p):
    x = images(channels)
    d = {k: np.asarray(v, np.float64) for k, v in ada.draws(KEY, B, p).items()}
    g = np.asarray(ada.geometric_matrix(ada.draws(KEY, B, p), H, W))
    for n in range(B):
        np.testing.assert_allclose(g[n], np_geometric(d, n, H, W), atol=1e-5)
        np.testing.assert_allclose(np.asarray(ada.color_matrix(ada.draws(KEY, B, p)))[n], np_color_matrix(d, n),
                                   atol=1e-5)
    out = np.asarray(jax.jit(ada.augment)(KEY, jnp.asarray(x), p))
    np.testing.assert_allclose(out, np_ada(x, d), atol=5e-5)
    assert not np.allclose(out, x)


def identity_draws():
    zeros = np.zeros(B)
    return {"xflip": zeros.astype(np.int32), "rotate90": zeros.astype(np.int32), "xint": np.zeros((B, 2)),
            "scale": zeros + 1, "rotate_pre": zeros, "aniso": zeros + 1, "rotate_post": zeros,
            "xfrac": np.zeros((B, 2)), "brightness": zeros, "contrast": zeros + 1, "lumaflip": zeros.astype(np.int32),
            "hue": zeros, "saturation": zeros + 1}


def test_ada_pixel_blitting_is_an_exact_permutation():
    x = images()
    d = identity_draws()
    d["xflip"] = np.array([1, 0, 1, 0], np.int32)
    d["rotate90"] = np.array([0, 1, 2, 0], np.int32)
    d["xint"] = np.array([[0, 0], [0, 0], [0, 0], [0.1, 0.05]])  # round(0.8), round(0.4): one column
    out = np.asarray(ada.resample(jnp.asarray(x), ada.geometric_matrix({k: jnp.asarray(v) for k, v in d.items()},
                                                                       H, W)))
    for n in range(B):  # output (x, y) reads flip(rot90(shift(...))) of the centred coordinates
        idx = np.asarray(np_geometric(d, n, H, W))
        assert np.allclose(idx, np.round(idx))  # integer coordinates: a permutation with reflection
        np.testing.assert_array_equal(out[n], np_resample(x[n], idx).astype(np.float32))
    np.testing.assert_array_equal(out[0], x[0][:, ::-1])
    np.testing.assert_array_equal(out[1], np.rot90(x[1], 1))  # one quarter turn (numpy's direction)
    np.testing.assert_array_equal(out[2], x[2][::-1])  # x-flip, then half a turn: a vertical flip
    np.testing.assert_array_equal(out[3], np.pad(x[3], ((0, 0), (1, 1), (0, 0)), mode="reflect")[:, :W])


@pytest.mark.parametrize("channels", [3, 1])
def test_ada_with_p0_is_the_identity_exactly(channels):
    x = jnp.asarray(images(channels))
    transform = ada.ADA(batch_size=B)
    state = transform.init()
    np.testing.assert_array_equal(np.asarray(jax.jit(transform.apply)(state, KEY, x, jnp.int32(0), {})), x)


def test_ada_draws_follow_p():
    n, p = 20000, 0.3
    d = {k: np.asarray(v) for k, v in ada.draws(jax.random.key(3), n, p).items()}
    tol = 4 * math.sqrt(p * (1 - p) / n)
    for name in ("scale", "aniso", "contrast", "saturation"):
        assert abs(np.mean(d[name] != 1) - p) < tol, name
    for name in ("brightness", "hue"):
        assert abs(np.mean(d[name] != 0) - p) < tol, name
    assert abs(np.mean(np.any(d["xfrac"] != 0, axis=1)) - p) < tol
    p_rot = 1 - math.sqrt(1 - p)  # each rotation; some rotation with probability p
    assert abs(np.mean(d["rotate_pre"] != 0) - p_rot) < tol
    assert abs(np.mean((d["rotate_pre"] != 0) | (d["rotate_post"] != 0)) - p) < tol
    assert abs(np.mean(d["xflip"]) - p / 2) < tol and abs(np.mean(d["rotate90"] != 0) - 0.75 * p) < tol
    assert set(np.unique(d["rotate90"])) == {0, 1, 2, 3}


def scripted_p(signs_per_step, target, batch_size, interval, kimg):
    """The paper's rule by hand: every `interval` steps r_t = mean of the steps' E[sign D(real)];
    p <- clip(p + sign(r_t - target) * batch_size * interval / (kimg * 1000), 0, 1)."""
    p, acc, ps = 0.0, [], []
    for s in signs_per_step:
        acc.append(s)
        if len(acc) == interval:
            rt = float(np.mean(acc))
            p = min(max(p + float(np.sign(rt - target)) * batch_size * interval / (kimg * 1000), 0.0), 1.0)
            acc = []
        ps.append(p)
    return ps


def test_ada_p_follows_the_rule_on_scripted_outputs():
    rng = np.random.default_rng(0)
    # D(real) [8] per step: mostly positive, then mostly negative (p rises, saturates at 1, falls, stops at 0)
    fractions = [1.0] * 12 + [0.75] * 3 + [0.25] * 15 + [0.5] * 3
    outputs = [np.where(rng.permutation(8) < round(f * 8), 1.0, -1.0) * rng.uniform(0.1, 3, 8) for f in fractions]
    transform = ada.ADA(batch_size=8, target=0.6, interval=3, kimg=0.08)  # steps of 8 * 3 / 80 = 0.3
    state = transform.init()
    update = jax.jit(transform.update)
    ps, rts = [], []
    for step, out in enumerate(outputs):
        stats = TransformStats(jnp.int32(step), {"ada_target": jnp.float32(0.6)}, jnp.asarray(out, jnp.float32),
                               jnp.zeros(8))
        state, metrics = update(state, stats)
        ps.append(float(metrics["ada_p"]))
        rts.append(float(metrics["ada_rt"]))
    expected = scripted_p([np.mean(np.sign(o)) for o in outputs], 0.6, 8, 3, 0.08)
    np.testing.assert_allclose(ps, expected, atol=1e-6)
    assert max(ps) == 1.0 and ps[-1] == 0.0 and ps[2] == pytest.approx(0.3)
    assert rts[14] == pytest.approx(np.mean([np.mean(np.sign(o)) for o in outputs[12:15]]))


def test_ada_update_uses_the_global_batch_mean():
    """Under a data axis each device sees its share of D(real); p and r_t are those of the whole batch on every
    device (stats.mean = pmean of the device means)."""
    transform = ada.ADA(batch_size=8, interval=1, kimg=0.08)
    out = jnp.array([1., 1., 1., 1., 1., 1., -1., -1.])  # global r_t = 0.5 < 0.6; device 0 alone would say 1.0

    def update(o):
        return transform.update(transform.init(), TransformStats(jnp.int32(0), {"ada_target": jnp.float32(0.6)},
                                                                 o, o, axis_name="data"))[1]
    metrics = jax.vmap(update, axis_name="data")(out.reshape(2, 4))
    np.testing.assert_allclose(metrics["ada_rt"], [0.5, 0.5])
    np.testing.assert_allclose(metrics["ada_p"], [0.0, 0.0])


# ---------------------------------------------------------------------------------------------- wiring, flags

ADA_RUN = Config(dataset="digits", model="dcgan", image_size=28, width=8, latent_dim=16, batch_size=8, steps=4,
                 log_every=1, checkpoint_every=2, augment="ada", ada_interval=1, ada_kimg=0.016)  # p moves by 0.5


def test_build_objective_adds_the_transform():
    exp = experiment.build_objective(dataclasses.replace(ADA_RUN, augment="diffaugment:cutout,color",
                                                         instance_noise=0.1))
    assert [t.name for t in exp.transforms] == ["diffaugment", "instance_noise"]
    assert exp.transforms[0].policy == ("cutout", "color")
    objective = experiment.build_objective(dataclasses.replace(ADA_RUN, ada_target=0.7))
    assert objective.hparams["ada_target"] == 0.7 and objective.transforms[0].batch_size == 8
    assert experiment.build_objective(dataclasses.replace(ADA_RUN, augment="")).transforms == ()
    bare = experiment.build_objective(dataclasses.replace(ADA_RUN, augment="diffaugment"))  # the paper's policy
    assert bare.transforms[0].policy == ("color", "translation", "cutout")


@pytest.mark.parametrize("overrides,message", [
    (dict(augment="diffaugment:color,rotate"), r"--augment='diffaugment:color,rotate' has unknown operations "
                                               r"\[.rotate.\]; accepted: .*ada, diffaugment .*diffaugment:OPS"),
    (dict(augment="diffaugment:"), "--augment='diffaugment:' names no operation"),
    (dict(augment="diffaug"), "--augment='diffaug' is not one of"),
    (dict(augment="cutout"), "--augment='cutout' is not one of"),
    (dict(augment="diffaugment:color,color"), "repeats an operation"),
    (dict(dataset="ring8", model="mlp", image_size=32, augment="diffaugment:color"),
     "--augment=diffaugment:color has no effect: it applies to image datasets, not the 2D --dataset=ring8"),
    (dict(ada_target=1.0), r"--ada_target must be in \[0, 1\)"),
    (dict(ada_interval=0), "--ada_interval must be an integer >= 1"),
    (dict(ada_kimg=0.0), "--ada_kimg must be a finite number > 0"),
    (dict(augment="diffaugment:color", ada_target=0.5), "--ada_target=0.5 has no effect: it applies to --augment=ada"),
])
def test_bad_augment_flags_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError, match=message) as e:
        experiment.validate(dataclasses.replace(ADA_RUN, **overrides))
    assert "\n" not in str(e.value)


def test_launcher_refuses_a_bad_augment_in_one_line(tmp_path):
    from test_validation import IMAGE, TINY, error_lines, run_cases
    results = run_cases(tmp_path, [("op", IMAGE + ["--augment=diffaugment:zoom"]),
                                   ("2d", TINY + ["--augment=ada"])])
    for name, flag in (("op", "--augment='diffaugment:zoom'"), ("2d", "--augment")):
        r = results[name]
        assert r["rc"] == 2 and not r["exists"], r
        (line,) = error_lines(r["stderr"])
        assert flag in line, line


class TinyG(nn.Module):
    """z [B, 4] -> tanh images [B, 8, 8, 1]."""
    latent_dim: int = 4

    @nn.compact
    def __call__(self, z, labels=None, *, train=False):
        return jnp.tanh(nn.Dense(H * W)(z)).reshape(-1, H, W, 1)


class TinyD(nn.Module):
    """A dense D plus 10 x the top-left pixel: its sign on the scripted reals below is known (r_t = 0.5 at p=0)."""
    @nn.compact
    def __call__(self, x, labels=None, *, train=False):
        return nn.Dense(1)(x.reshape(x.shape[0], -1))[:, 0] + 10 * x[:, 0, 0, 0]


def tiny_game(ada_target=0.6):
    objective = objectives.non_saturating() + augment.objective("ada", batch_size=8, ada_target=ada_target,
                                                                ada_interval=2, ada_kimg=0.032)  # steps of 0.5
    opt = optax.adam(1e-2)
    step = make_train_step(TinyG(), TinyD(), objective, opt, opt)

    def init(key, hparams):
        return init_gan_state(key, TinyG(), TinyD(), opt, opt, data_shape=(H, W, 1), hparams=hparams,
                              transforms=objective.transforms)
    return objective, init, step


def tiny_batches(steps):
    """Real batches [1, 8, 8, 8, 1]: the top-left pixel > 0 in 6 of 8 examples."""
    x = np.random.default_rng(0).uniform(0.5, 1, (steps, 1, 8, H, W, 1)).astype(np.float32)
    x[:, :, 6:, 0, 0, 0] *= -1
    return [{"x": jnp.asarray(b)} for b in x]


def test_ada_target_sweep_vmapped_equals_separate_runs():
    """A sweep over --ada_target makes it a per-run hparam of one program (sweep.plan), and a vmapped step over
    runs that differ in it equals each run stepped alone."""
    (group,) = sweep.plan(ADA_RUN, seeds=[3], sweep=[("ada_target", [0.0, 0.9])])
    assert [r.hparams["ada_target"] for r in group.runs] == [0.0, 0.9] and group.config.augment == "ada"
    objective, init, step = tiny_game()
    targets = [0.0, 0.9]
    states = [init(jax.random.key(1), {**objective.hparams, "ada_target": t}) for t in targets]
    batches = tiny_batches(6)
    separate, separate_p = [], []
    for state in states:
        ps = []
        for batch in batches:
            state, metrics = jax.jit(step)(state, batch)
            ps.append(float(metrics["ada_p"]))
        separate.append(state)
        separate_p.append(ps)
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
    vstep = jax.jit(jax.vmap(step, in_axes=(0, None)))
    vmapped_p = []
    for batch in batches:
        stacked, metrics = vstep(stacked, batch)
        vmapped_p.append(np.asarray(metrics["ada_p"]))
    for i in range(2):
        run = jax.tree.map(lambda x: x[i], stacked)
        for a, b in zip(state_leaves(run), state_leaves(separate[i])):
            np.testing.assert_allclose(a, b, atol=1e-6)
        assert [float(p[i]) for p in vmapped_p] == separate_p[i]
    assert separate_p[0][1] == 0.5 and separate_p[1][1] == 0.0  # r_t = 0.5: above one target, below the other


def test_resume_with_ada_state_is_exact(tmp_path):
    """Interrupted at step 3 (mid-interval: the sign accumulator is non-zero), checkpointed, restored into a fresh
    state and continued: equal to the uninterrupted run, p and accumulator included."""
    objective, init, step = tiny_game(ada_target=0.0)  # r_t = 0.5 > 0: p rises at step 2
    step = jax.jit(step)
    batches = tiny_batches(6)
    full = init(jax.random.key(2), objective.hparams)
    for batch in batches:
        full, _ = step(full, batch)
    part = init(jax.random.key(2), objective.hparams)
    for batch in batches[:3]:
        part, _ = step(part, batch)
    assert int(part.transforms["ada"]["count"]) == 1 and float(part.transforms["ada"]["signs"]) != 0
    assert float(part.transforms["ada"]["p"]) == 0.5
    with Checkpointer(tmp_path / "ckpt", save_every=1, async_save=False) as ckpt:
        ckpt.save(3, part, {"position": 3})
        resumed, _ = ckpt.restore(3, jax.eval_shape(lambda: init(jax.random.key(9), objective.hparams)))
    for batch in batches[3:]:
        resumed, _ = step(resumed, batch)
    for a, b in zip(state_leaves(full), state_leaves(resumed)):
        np.testing.assert_array_equal(a, b)

