"""jaxgan.regularizers: each value against a float64 NumPy formula on fixed inputs (CR, bCR, zCR, LeCam, orthogonal
regularization, top-k), lazy R1 through a run, LeCam's anchors resumed exactly, a sweep over lecam_weight equal to
separate runs, and one-line errors for bad values."""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxgan import experiment, objectives, regularizers, sweep
from jaxgan.config import Config, ConfigError
from jaxgan.objectives import TermInputs, TransformStats
from jaxgan.regularizers import consistency, lecam, orthogonal, topk
from jaxgan.training import load_run, make_data, train

SMALL = Config(dataset="ring8", width=16, depth=1, batch_size=16, g_lr=1e-3, d_lr=1e-3)
B, H, W, C = 4, 6, 6, 2


def f64(x):
    return np.asarray(x, np.float64)


@pytest.fixture(scope="module")
def images():
    k = jax.random.split(jax.random.key(0), 4)
    return (jax.random.normal(k[0], (B, H, W, C)), jax.random.normal(k[1], (B, H, W, C)),
            jax.random.normal(k[2], (H * W * C,)) * 0.3, jax.random.normal(k[3], (B, 3)))


def linear_d(w):
    """D(x) = tanh(x . w) per example: nonlinear, so the squared difference is not a quadratic form of x."""
    return lambda x, labels: jnp.tanh(x.reshape(x.shape[0], -1) @ w)


def np_d(w, x):
    return np.tanh(f64(x).reshape(len(x), -1) @ f64(w))


def inputs(real, fake, d_fn, *, key=None, hparams=None, **kw):
    key = jax.random.key(7) if key is None else key
    return TermInputs(d_fn(real, None), d_fn(fake, None), real, fake, d_fn, key, hparams or {}, **kw)


def mirror_shift(key, x):  # a deterministic T: flip every image and roll it one pixel down
    return jnp.roll(x[:, :, ::-1], 1, axis=1)


def np_mirror_shift(x):
    return np.roll(f64(x)[:, :, ::-1], 1, axis=1)


  # ----------------------------------------------------------------------------- consistency

def test_cr_and_bcr_values_equal_the_numpy_formula(images):
    real, fake, w, _ = images
    t = inputs(real, fake, linear_d(w), hparams={"cr_weight": 10.0, "bcr_real_weight": 2.0, "bcr_fake_weight": 3.0})
    objective = consistency.cr(10.0, mirror_shift) + consistency.bcr(2.0, 3.0, mirror_shift)
    total, values = objective.evaluate("d", t)
    expect = {name: np.mean((np_d(w, x) - np_d(w, np_mirror_shift(x))) ** 2)
              for name, x in (("cr", real), ("bcr_real", real), ("bcr_fake", fake))}
    for name, value in expect.items():
        assert float(values[name]) == pytest.approx(value, rel=1e-5)
    assert float(total) == pytest.approx(10 * expect["cr"] + 2 * expect["bcr_real"] + 3 * expect["bcr_fake"],
                                         rel=1e-5)
    assert all(term.per_example_d for term in objective.terms)
    identity = consistency.cr(1.0, lambda key, x: x).evaluate("d", t._replace(hparams={"cr_weight": 1.0}))[1]
    assert float(identity["cr"]) == 0.0


def test_default_cr_transform_is_diffaugment_flip_then_translation(images):
    from jaxgan.augment import diffaugment
    real, _, w, _ = images
    key = jax.random.key(3)
    k_flip, k_translate = jax.random.split(key)
    expect = diffaugment.translation(k_translate, diffaugment.flip(k_flip, real), ratio=0.125)
    np.testing.assert_array_equal(consistency.flip_translation(key, real), expect)
    value = consistency.output_consistency(linear_d(w), real, expect, None)
    assert float(value) == pytest.approx(np.mean((np_d(w, real) - np_d(w, expect)) ** 2), rel=1e-5)


def test_zcr_terms_equal_the_numpy_formula(images):
    real, fake, w, _ = images
    a = jax.random.normal(jax.random.key(5), (3, H * W * C))
    z = images[3]
    g_fn = lambda z, labels: jnp.tanh(z @ a).reshape(-1, H, W, C)  # noqa: E731
    key, sigma = jax.random.key(11), 0.05
    t = inputs(real, fake, linear_d(w), key=key, hparams={"zcr_sigma": sigma}, latents=z, g_fn=g_fn)
    eps = sigma * f64(jax.random.normal(key, z.shape))
    x0, x1 = np.tanh(f64(z) @ f64(a)), np.tanh((f64(z) + eps) @ f64(a))
    assert float(consistency.zcr_d(t)) == pytest.approx(np.mean((np_d(w, x0) - np_d(w, x1)) ** 2), rel=1e-4)
    assert float(consistency.zcr_g(t)) == pytest.approx(-np.mean((x0 - x1) ** 2), rel=1e-4)
    objective = consistency.zcr(5.0, 0.5, sigma)
    assert [(t.name, t.player, t.weight_hparam) for t in objective.terms] == [("zcr", "d", "zcr_d_weight"),
                                                                              ("zcr", "g", "zcr_g_weight")]
    assert objective.hparams == {"zcr_sigma": sigma, "zcr_d_weight": 5.0, "zcr_g_weight": 0.5}


  # ----------------------------------------------------------------------------- LeCam

def test_lecam_anchors_follow_the_reference_ema_and_the_term_its_relu_formula():
    transform = lecam.LeCamAnchors(decay=0.9)
    state, rng = transform.init(), np.random.default_rng(0)
    anchors = None
    for step in range(4):
        real, fake = rng.normal(1.0, 1.0, 8), rng.normal(-1.0, 1.0, 8)
        stats = TransformStats(jnp.int32(step), {}, jnp.asarray(real, jnp.float32), jnp.asarray(fake, jnp.float32))
        state, metrics = transform.update(state, stats)
        means = np.array([np.mean(f64(np.float32(real))), np.mean(f64(np.float32(fake)))])
        anchors = means if anchors is None else 0.9 * anchors + 0.1 * means  # the first update copies the means
        np.testing.assert_allclose([state["real"], state["fake"]], anchors, rtol=1e-6)
        assert float(metrics["lecam/real_anchor"]) == float(state["real"])
    assert int(state["updates"]) == 4
    objective = lecam.lecam(0.3, decay=0.9)
    real_out, fake_out = jnp.asarray([2.0, -1.5, 0.25, 3.0]), jnp.asarray([-2.0, 1.0, 0.5, -0.1])
    t = TermInputs(real_out, fake_out, None, None, None, jax.random.key(0), {"lecam_weight": 0.3},
                   transform_states={"lecam": state})
    total, values = objective.evaluate("d", t)
    a_real, a_fake = f64(state["real"]), f64(state["fake"])
    expect = (np.mean(np.maximum(f64(real_out) - a_fake, 0) ** 2) + np.mean(np.maximum(a_real - f64(fake_out), 0)
                                                                             ** 2))
    assert float(values["lecam"]) == pytest.approx(expect, rel=1e-6)
    assert float(total) == pytest.approx(0.3 * expect, rel=1e-6)
    # before the first update the anchors hold no mean: the term is off
    fresh = t._replace(transform_states={"lecam": transform.init()})
    assert float(objective.evaluate("d", fresh)[1]["lecam"]) == 0.0


@pytest.mark.slow  # three short training runs (about 25 s on 2 loaded cores)
def test_lecam_anchors_are_logged_checkpointed_and_resumed_exactly(tmp_path):
    config = dataclasses.replace(SMALL, lecam_weight=0.5, lecam_decay=0.9, log_every=2, checkpoint_every=2,
                                 num_samples=100)
    full = train(dataclasses.replace(config, steps=6), tmp_path / "full")
    train(dataclasses.replace(config, steps=3), tmp_path / "resumed")  # checkpoints at steps 2 and 3
    resumed = train(dataclasses.replace(config, steps=6), tmp_path / "resumed")
    for a, b in zip(jax.tree.leaves((full.g, full.d, full.transforms)),
                    jax.tree.leaves((resumed.g, resumed.d, resumed.transforms))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(full.transforms["lecam"]["updates"]) == 6 and float(full.transforms["lecam"]["real"]) != 0.0
    _, loaded = load_run(tmp_path / "resumed")
    np.testing.assert_array_equal(loaded.transforms["lecam"]["fake"], resumed.transforms["lecam"]["fake"])
    from jaxgan.logging import read_metrics
    last = read_metrics(tmp_path / "full" / "metrics.jsonl")[-1]
    assert last["lecam/real_anchor"] == pytest.approx(float(full.transforms["lecam"]["real"]))
    assert last["d/lecam"] > 0


@pytest.mark.slow  # compiles a data-parallel step: about 12 s with the compile cache, 30 s without
@pytest.mark.skipif(jax.device_count() < 4, reason="needs 4 (simulated) devices; see conftest.py")
def test_lecam_and_ortho_on_four_devices_equal_one_device():
    """The anchors are means over the global batch (`TransformStats.mean`): equal on every device and to one
    device's; the orthogonal gradient is a function of the replicated parameters."""
    from jaxgan import parallel
    config = dataclasses.replace(SMALL, batch_size=32, lecam_weight=0.5, lecam_decay=0.5, g_ortho_weight=1e-3,
                                 d_ortho_weight=1e-3)
    data = make_data(config)
    batches = [jax.tree.map(np.asarray, next(data)) for _ in range(4)]
    exp = experiment.build(config)
    ref, step = exp.init(jax.random.key(0)), jax.jit(exp.train_step())
    for batch in batches:
        ref, _ = step(ref, batch)
    mesh = parallel.make_mesh(4, 1)
    exp4 = experiment.build(config, axis_name=parallel.DATA_AXIS)
    got = parallel.init_replicated(exp4.init, jax.random.key(0), mesh)
    step4 = parallel.data_parallel_step(exp4.train_step(parallel.DATA_AXIS), mesh)
    for batch in batches:
        got, _ = step4(got, parallel.shard_batch(batch, mesh))
    for a, b in zip(jax.tree.leaves((ref.transforms, ref.d.params, ref.g.params)),
                    jax.tree.leaves((got.transforms, got.d.params, got.g.params))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


  # ----------------------------------------------------------------------------- orthogonal

def ortho_params():
    k = jax.random.split(jax.random.key(2), 4)
    return {"dense": {"kernel": jax.random.normal(k[0], (3, 4)), "bias": jnp.ones((4,))},
            "conv": {"kernel": jax.random.normal(k[1], (2, 2, 3, 5)), "scale": jnp.ones((5,))},
            "embed": {"embedding": jax.random.normal(k[2], (10, 4))}}


def np_rows(kernel):  # PyTorch's weight.view(out, -1) of the same layer: [out, in, kh, kw] flattened
    kernel = f64(kernel)
    return np.moveaxis(kernel, -1, 0).reshape(kernel.shape[-1], -1) if kernel.ndim == 2 else \
        np.transpose(kernel, (3, 2, 0, 1)).reshape(kernel.shape[-1], -1)


def test_orthogonal_penalty_and_its_gradient_equal_biggans_formula():
    params = ortho_params()
    value, grads = 0.0, {}
    for name in ("dense", "conv"):
        w = np_rows(params[name]["kernel"])
        off = (w @ w.T) * (1 - np.eye(len(w)))
        value += 0.5 * np.sum(off ** 2)
        grads[name] = 2 * off @ w  # what BigGAN-PyTorch's utils.ortho adds to the gradient
    assert float(jax.jit(orthogonal.orthogonal_penalty)(params)) == pytest.approx(value, rel=1e-5)
    transform = orthogonal.add_orthogonal_regularization(1e-2)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = jax.jit(transform.update)(zeros, transform.init(params), params)
    expected = jax.tree.map(lambda g: 1e-2 * g, jax.jit(jax.grad(orthogonal.orthogonal_penalty))(params))
    for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np_rows(updates["dense"]["kernel"]), 1e-2 * grads["dense"], rtol=1e-5)
    np.testing.assert_allclose(np_rows(updates["conv"]["kernel"]), 1e-2 * grads["conv"], rtol=1e-5)
    for skipped in (updates["dense"]["bias"], updates["conv"]["scale"], updates["embed"]["embedding"]):
        assert not np.any(skipped)


def test_make_optimizer_chains_ortho_before_the_optimizer():
    config = dataclasses.replace(SMALL, optimizer="sgd")
    params = ortho_params()
    grads = jax.tree.map(jnp.ones_like, params)
    opt = experiment.make_optimizer(config, 0.1, ortho_weight=1e-2)
    updates, _ = jax.jit(opt.update)(grads, opt.init(params), params)
    extra = jax.jit(jax.grad(orthogonal.orthogonal_penalty))(params)
    for u, g, e in zip(*(jax.tree.leaves(t) for t in (updates, grads, extra))):
        np.testing.assert_allclose(u, -0.1 * (g + 1e-2 * e), rtol=1e-6)
    exp = experiment.build(dataclasses.replace(SMALL, g_ortho_weight=1e-4))
    g_state, d_state = exp.g_optimizer.init(params), exp.d_optimizer.init(params)
    assert type(g_state) is tuple and isinstance(g_state[0], optax.EmptyState) and type(d_state) is not tuple


  # ----------------------------------------------------------------------------- top-k

def test_topk_count_follows_the_schedule():
    for step, gamma, nu, period, batch in [(0, 0.99, 0.5, 10, 64), (25, 0.99, 0.5, 10, 64), (999, 0.9, 0.25, 100, 50),
                                           (10**6, 0.99, 0.5, 1, 64), (7, 0.8, 0.1, 1, 13)]:
        expect = max(math.ceil(gamma ** (step // period) * batch), math.ceil(nu * batch))
        assert int(topk.topk_count(step, batch, gamma, nu, period)) == expect
    outputs = jnp.asarray([0.3, -1.0, 2.0, 0.3, 5.0, -0.2])
    np.testing.assert_array_equal(topk.topk_mask(outputs, 3), [1, 0, 1, 0, 1, 0])  # ties: the earlier one
    np.testing.assert_array_equal(topk.topk_mask(outputs, jnp.int32(4)), [1, 0, 1, 1, 1, 0])


def test_topk_loss_averages_the_k_highest_fakes_with_a_traced_k():
    objective = regularizers.top_k(objectives.non_saturating(), gamma=0.5, min_fraction=0.25, decay_steps=2)
    fake_out = jnp.asarray([0.5, -2.0, 1.5, 3.0, -0.5, 0.0, 2.5, -1.0])
    t = TermInputs(None, fake_out, None, None, None, jax.random.key(0), {"label_smoothing": 0.0})
    loss = jax.jit(lambda step: objective.evaluate("g", t._replace(step=step))[1]["loss"])
    order = np.argsort(-f64(fake_out))
    for step, k in ((0, 8), (2, 4), (3, 4), (4, 2), (100, 2)):
        top = f64(fake_out)[order[:k]]
        assert float(loss(jnp.int32(step))) == pytest.approx(np.mean(np.log1p(np.exp(-top))), rel=1e-6)
    assert loss._cache_size() == 1  # one program for every k
    full = objectives.non_saturating().evaluate("g", t._replace(step=jnp.int32(0)))[1]["loss"]
    assert float(loss(jnp.int32(0))) == pytest.approx(float(full), rel=1e-6)
    with pytest.raises(ValueError, match="relativistic"):
        regularizers.top_k(objectives.relativistic())


  # ----------------------------------------------------------------------------- lazy R1

def test_lazy_r1_runs_every_k_d_updates_with_weight_times_k():
    k, weight = 3, 2.0
    config = dataclasses.replace(SMALL, penalty="r1", optimizer="sgd")  # updates linear in the gradient
    exp = experiment.build(dataclasses.replace(config, penalty_weight=weight, penalty_every=k))
    eager = experiment.build(dataclasses.replace(config, penalty_weight=k * weight))
    state, eager_state = exp.init(jax.random.key(0)), eager.init(jax.random.key(0))  # hparams: its own weight
    step, eager_step, data = jax.jit(exp.train_step()), jax.jit(eager.train_step()), make_data(exp.config)
    penalised = []
    for i in range(7):
        batch = next(data)
        if i == 0:
            eager_state, _ = eager_step(eager_state, batch)
        state, m = step(state, batch)
        penalised.append(float(m["d/r1"]) != 0.0)
        assert float(m["d/total"]) == pytest.approx(float(m["d/loss"]) + k * weight * float(m["d/r1"]), rel=1e-6)
        if i == 0:  # the penalised update is the eager one with weight times k
            for a, b in zip(jax.tree.leaves(state.d.params), jax.tree.leaves(eager_state.d.params)):
                np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert penalised == [i % k == 0 for i in range(7)]


  # ----------------------------------------------------------------------------- sweeps and validation

def separate_run(config: Config, batches):
    exp = experiment.build(config)
    state = exp.init(jax.random.key(config.seed))
    step = jax.jit(exp.train_step())
    for batch in batches:
        state, _ = step(state, batch)
    return jax.device_get((state.d.params, state.g.params))


@pytest.mark.parametrize("name,values", [("lecam_weight", [0.1, 2.0]), ("zcr_d_weight", [0.5, 20.0]),
                                         ("zcr_g_weight", [0.5, 20.0])])
def test_sweep_over_a_regularizer_weight_equals_separate_runs(name, values):
    """The study's plan puts the weight in the runs' hparams; the runs, stacked under jax.vmap in one program (as
    `jaxgan.sweep` runs a group), equal separate runs (CR/bCR weights are hparams in the same way, on images)."""
    base = dataclasses.replace(SMALL, steps=3, **{name: values[0]})
    (group,) = sweep.plan(base, seeds=[3], sweep=[(name, values)])
    assert [run.hparams[name] for run in group.runs] == values
    exp = experiment.build(group.config)
    data = make_data(base)
    batches = [next(data) for _ in range(base.steps)]
    hparams = {n: jnp.asarray([run.hparams[n] for run in group.runs], jnp.float32) for n in group.runs[0].hparams}
    keys = jnp.stack([jax.random.key(run.seed) for run in group.runs])
    states = jax.vmap(exp.init)(keys, hparams)
    step = jax.jit(jax.vmap(exp.train_step(), in_axes=(0, None)))
    for batch in batches:
        states, _ = step(states, batch)
    runs = [separate_run(run.config, batches) for run in group.runs]
    for i, params in enumerate(runs):
        vmapped = jax.tree.map(lambda x: x[i], (states.d.params, states.g.params))
        for a, b in zip(jax.tree.leaves(vmapped), jax.tree.leaves(params)):
            np.testing.assert_allclose(a, b, atol=1e-6)
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(runs[0]), jax.tree.leaves(runs[1])))
    assert diff > 1e-5  # the weight matters


BAD = [
    (dict(cr_weight=-1.0, dataset="digits", model="dcgan", d_normalization="layer_norm"), "--cr_weight must be"),
    (dict(lecam_weight=float("nan")), "--lecam_weight must be"),
    (dict(g_ortho_weight=-1e-4), "--g_ortho_weight must be"),
    (dict(zcr_g_weight=1.0, zcr_sigma=0.0), "--zcr_sigma must be > 0"),
    (dict(lecam_weight=0.1, lecam_decay=1.0), r"--lecam_decay must be in \[0, 1\)"),
    (dict(penalty="r1", penalty_every=0), "--penalty_every must be >= 1"),
    (dict(topk_gamma=1.5), r"--topk_gamma must be in \[0, 1\]"),
    (dict(topk_gamma=0.99, topk_min_fraction=0.0), r"--topk_min_fraction must be in \(0, 1\]"),
    (dict(topk_gamma=0.99, topk_decay_steps=0), "--topk_decay_steps must be >= 1"),
    (dict(topk_gamma=0.99, loss="relativistic"), "--topk_gamma needs a G loss that is a mean"),
    (dict(cr_weight=10.0), "--cr_weight=10.0 has no effect: it applies to image datasets"),
    (dict(bcr_fake_weight=1.0), "--bcr_fake_weight=1.0 has no effect"),
    (dict(zcr_sigma=0.1), "--zcr_sigma=0.1 has no effect: it applies to zCR"),
    (dict(lecam_decay=0.9), "--lecam_decay=0.9 has no effect"),
    (dict(penalty_every=4), "--penalty_every=4 has no effect"),
    (dict(topk_decay_steps=5), "--topk_decay_steps=5 has no effect"),
    (dict(dataset="digits", model="dcgan", image_size=28, cr_weight=10.0), "BatchNorm"),
]


@pytest.mark.parametrize("changes,message", BAD, ids=[next(iter(c)) + str(i) for i, (c, _) in enumerate(BAD)])
def test_bad_values_are_one_line_errors(changes, message):
    with pytest.raises(ConfigError, match=message) as info:
        experiment.validate(dataclasses.replace(SMALL, **changes))
    assert "\n" not in str(info.value)
