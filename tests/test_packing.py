"""PacGAN packing (`jaxgan.packing`, ``--packing``): packing 1 is today's D, the packed D input is the NumPy
concatenation of groups, every loss and penalty trains packed, bad values are one-line errors."""
import dataclasses

import jax
import numpy as np
import pytest

from conftest import REPO
from jaxgan import experiment, objectives
from jaxgan.cli import common as _common
from jaxgan.config import Config, ConfigError
from jaxgan.packing import Packing, packing
from jaxgan.state import init_gan_state
from jaxgan.step import make_train_step
from test_validation import TINY, error_lines, run_cases

BATCH = 8


def _numpy_packed(x: np.ndarray, m: int) -> np.ndarray:
    """Group j = samples j*m .. j*m+m-1, concatenated along the last axis in that order."""
    return np.concatenate([x[i::m] for i in range(m)], axis=-1)


@pytest.mark.parametrize("shape,m", [((12, 2), 3), ((8, 5, 5, 3), 2), ((4, 2), 1)])
def test_packed_input_is_the_numpy_concatenation_of_groups(shape, m):
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    packed = np.asarray(Packing(m).apply({}, None, x, 0, {}))
    np.testing.assert_array_equal(packed, _numpy_packed(x, m))
    assert packed.shape[1:] == Packing(m).example_shape(shape[1:])


def test_packing_refuses_a_batch_that_is_not_whole_groups_and_a_bad_m():
    with pytest.raises(ValueError, match="packing=3 needs a batch that is a multiple of 3, got 8"):
        Packing(3).apply({}, None, np.zeros((8, 2), np.float32), 0, {})
    with pytest.raises(ValueError, match="packing must be an integer >= 1, got 0"):
        Packing(0)


def _ring8(**changes) -> Config:
    return Config(dataset="ring8", width=8, depth=1, latent_dim=4, batch_size=BATCH, **changes)


def _steps(exp, objective, n=3):
    """``n`` train steps of the ring8 MLP of ``exp`` under ``objective``; (final state, last metrics)."""
    hparams = {**exp.hparams, **objective.hparams}
    state = init_gan_state(jax.random.key(0), exp.generator, exp.discriminator, exp.g_optimizer, exp.d_optimizer,
                           data_shape=exp.data_shape, hparams=hparams, transforms=objective.transforms)
    step = jax.jit(make_train_step(exp.generator, exp.discriminator, objective, exp.g_optimizer, exp.d_optimizer))
    for t in range(n):
        x = jax.random.normal(jax.random.fold_in(jax.random.key(1), t), (1, BATCH, 2))
        state, metrics = step(state, {"x": x})
    return state, metrics


@pytest.mark.parametrize("noise", [0.0, 0.1])
def test_packing_one_is_exactly_todays_discriminator(noise):
    """Bitwise equal states after three steps, with and without another input transform before it."""
    config = _ring8(instance_noise=noise)
    exp = experiment.build(config)
    base = experiment.build_objective(config)
    assert experiment.build_objective(dataclasses.replace(config, packing=1)).transforms == base.transforms
    ref, _ = _steps(exp, base)
    for objective in (base + packing(1), dataclasses.replace(base, transforms=base.transforms + (Packing(1),))):
        if noise and len(objective.transforms) == 2:
            continue  # an explicit identity transform splits the noise key: a different (valid) noise draw
        got, _ = _steps(exp, objective)
        for a, b in zip(_arrays(ref), _arrays(got), strict=True):
            np.testing.assert_array_equal(a, b)


def _arrays(state):
    """The leaves of a state as NumPy arrays (PRNG keys as their key data)."""
    as_data = lambda a: jax.random.key_data(a) if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key) else a  # noqa: E731
    return [np.asarray(as_data(a)) for a in jax.tree.leaves(state)]


def _d_numpy(params, x):
    """The depth-1 MLP discriminator in float64: Dense -> LeakyReLU(0.2) -> Dense."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    h = x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
    h = np.where(h > 0, h, 0.2 * h)
    return (h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"])[:, 0]


def test_the_step_feeds_d_the_packed_groups_of_real_samples():
    """D(real) of a --packing=2 step equals the float64 D of the NumPy-packed batch; D was built for 4 inputs."""
    config = _ring8(packing=2)
    exp = experiment.build(config)
    state = exp.init(jax.random.key(0))
    assert state.d.params["Dense_0"]["kernel"].shape == (4, 8)
    x = np.random.default_rng(1).normal(size=(1, BATCH, 2)).astype(np.float32)
    _, metrics = jax.jit(exp.train_step())(state, {"x": x})
    want = _d_numpy(state.d.params, _numpy_packed(x[0].astype(np.float64), 2))
    assert want.shape == (BATCH // 2,)
    np.testing.assert_allclose(float(metrics["d/real_output"]), want.mean(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("loss,penalty", [(loss, "none") for loss in sorted(objectives.LOSSES)]
                         + [("wasserstein", p) for p in sorted(objectives.PENALTIES) if p != "none"])
def test_every_loss_and_penalty_trains_one_packed_ring8_step(loss, penalty):
    config = _ring8(loss=loss, penalty=penalty, packing=2, penalty_weight=1.0 if penalty != "none" else 10.0)
    experiment.validate(config)
    exp = experiment.build(config)
    assert exp.objective.transforms[-1] == Packing(2)
    state = exp.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (1, BATCH, 2))
    new, metrics = jax.jit(exp.train_step())(state, {"x": x})
    assert all(np.all(np.isfinite(np.asarray(v))) for v in jax.tree.leaves(metrics)), metrics
    assert float(metrics["finite"]) == 1.0
    assert not np.array_equal(new.d.params["Dense_0"]["kernel"], state.d.params["Dense_0"]["kernel"])
    if penalty != "none":
        assert float(metrics[f"d/{penalty}"]) >= 0


@pytest.mark.parametrize("changes,message", [
    (dict(packing=0), "--packing must be an integer >= 1 (1: no packing), got 0"),
    (dict(packing=3), "--batch_size=8 is not a multiple of --packing=3: D packs each device's batch into groups"),
    (dict(packing=2, mesh_data=8), "--batch_size=8 is not a multiple of --packing=2 times --mesh_data=8"),
    (dict(packing=2, zcr_d_weight=5.0), "--zcr_d_weight=5.0 needs --packing=1"),
])
def test_bad_packing_is_a_config_error(changes, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        experiment.validate(_ring8(**changes))


def test_packing_a_conditional_model_is_refused():
    config = Config(dataset="digits", model="dcgan", image_size=28, width=8, batch_size=16, conditional=True,
                    packing=2)
    with pytest.raises(ConfigError, match="--packing=2 applies to unconditional models, not --conditional"):
        experiment.validate(config)


def test_the_launcher_refuses_bad_packing_with_one_error_line(tmp_path):
    cases = [("zero", TINY + ["--packing=0"]), ("batch", TINY + ["--packing=5"]),
             ("conditional", ["--dataset=digits", "--model=dcgan", "--image_size=28", "--width=8", "--batch_size=16",
                              "--conditional", "--packing=2"])]
    results = run_cases(tmp_path, cases)
    for name, _ in cases:
        r = results[name]
        lines = error_lines(r["stderr"])
        assert r["rc"] == 2 and len(lines) == 1 and "--packing" in lines[0] and not r["exists"], (name, r)


def test_the_pacgan2_flagfile_packs_pairs():
    config = Config(**_common.read_flagfile(REPO / "launch" / "configs" / "ring8_pacgan2.cfg", Config))
    assert config.packing == 2 and config.batch_size % 2 == 0
    experiment.validate(config)
    assert experiment.build(config).objective.transforms[-1] == Packing(2)
