"""BigGAN and BigGAN-deep (jaxgan.models.biggan, biggan_deep): parameter counts against the published ones,
the hierarchical latent split and the shared-embedding concatenation, orthogonal initialisation, clear errors,
and a data-parallel step (cross-replica BatchNorm) equal to one device, and an exact resume."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import state_leaves
from jaxgan import experiment, models, parallel
from jaxgan.checkpoint import Checkpointer
from jaxgan.config import Config, ConfigError
from jaxgan.models import biggan, biggan_deep
from jaxgan.regularizers.orthogonal import as_rows


def _param_count(module, *inputs) -> int:
    """Parameters of ``module`` (no allocation: shapes only, `jax.eval_shape`)."""
    specs = [jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in inputs]
    variables = jax.eval_shape(lambda *a: module.init(jax.random.key(0), *a, train=False), *specs)
    return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(variables["params"]))


def _counts(g, d, size: int, latent: int) -> tuple[int, int]:
    y = ((2,), jnp.int32)
    return (_param_count(g, ((2, latent), jnp.float32), y),
            _param_count(d, ((2, size, size, 3), jnp.float32), y))


# (G, D) parameters of the reference configurations and where the numbers come from. Spectral-norm vectors and
# BatchNorm running statistics are not parameters (PyTorch buffers; our 'batch_stats').
PUBLISHED = {
    # ImageNet 128x128 BigGAN, ch=96, dim_z=120 (hierarchical, 6 x 20), shared_dim=128, 1000 classes, attention
    # at 64: the paper (Brock et al. 2019, Table 1, last rows: G 70.4M, D 88.0M); exactly 70,433,988 and
    # 87,982,370 in PyTorch-StudioGAN's training logs logs/IMAGENET/BigGAN2048-train-2020_11_17_15_17_48.log
    # and BigGAN256-train-2021_01_24_03_52_15.log ("Number of parameters"), the same as BigGAN-PyTorch's
    # BigGAN.py with scripts/launch_BigGAN_bs256x8.sh's settings (sum of p.numel() over parameters()).
    "biggan_imagenet128": (70_433_988, 87_982_370),
    # CIFAR-10 BigGAN (StudioGAN src/configs/CIFAR10/BigGAN.yaml: z_dim 80, g_shared_dim 128, g/d_conv_dim 96,
    # attention after G block 2 and D block 1): StudioGAN's log logs/CIFAR10/BigGAN-train-2021_01_15_14_48_48.log,
    # "Number of parameters: 9416196" (G) and "2415170" (D).
    "biggan_cifar10": (9_416_196, 2_415_170),
    # ImageNet 128x128 BigGAN-deep, ch=128, dim_z=128, shared_dim=128, depth 2, attention at 64 (the paper's
    # Table 8; BigGAN-PyTorch scripts/launch_BigGAN_deep.sh): not printed in the paper to the unit, so this is
    # BigGAN-PyTorch's BigGANdeep.py Generator/Discriminator with those arguments, counted with torch
    # (sum of p.numel() over parameters()); D matches the paper's rounded 34.6M.
    "biggan_deep_imagenet128": (50_244_484, 34_590_210),
}


def test_biggan_imagenet128_parameter_counts_equal_the_published_ones():
    g = biggan.BigGANGenerator(latent_dim=120, image_size=128, num_classes=1000, ch=96)
    d = biggan.BigGANDiscriminator(image_size=128, num_classes=1000, ch=96)
    assert _counts(g, d, 128, 120) == PUBLISHED["biggan_imagenet128"]


def test_biggan_cifar10_parameter_counts_equal_studiogans():
    g = biggan.BigGANGenerator(latent_dim=80, image_size=32, num_classes=10, ch=96)
    d = biggan.BigGANDiscriminator(image_size=32, num_classes=10, ch=96)
    assert _counts(g, d, 32, 80) == PUBLISHED["biggan_cifar10"]


def test_biggan_deep_imagenet128_parameter_counts_equal_the_reference_implementation():
    g = biggan_deep.BigGANDeepGenerator(latent_dim=128, image_size=128, num_classes=1000, ch=128)
    d = biggan_deep.BigGANDeepDiscriminator(image_size=128, num_classes=1000, ch=128)
    assert _counts(g, d, 128, 128) == PUBLISHED["biggan_deep_imagenet128"]


def test_hierarchical_latent_split_sizes():
    assert biggan.latent_split(120, 128) == (20,) * 6   # the paper: 5 blocks + the stem
    assert biggan.latent_split(80, 32) == (20,) * 4     # StudioGAN's CIFAR-10 BigGAN
    assert biggan.latent_split(140, 256) == (20,) * 7
    assert biggan.latent_split(128, 512) == (16,) * 8
    with pytest.raises(ValueError, match="latent_dim must be a positive multiple of 6, got 128"):
        biggan.latent_split(128, 128)


SMALL = dict(image_size=32, channels=1, num_classes=3)


@pytest.fixture(scope="module")
def small_biggan():
    """A conditional 32 px BigGAN of width 4 (G 16 channels, D 8), latent 8 = 4 chunks of 2, and its variables
    (with the intermediates G sowed during init)."""
    g = biggan.BigGANGenerator(latent_dim=8, ch=4, shared_dim=6, **SMALL)
    d = biggan.BigGANDiscriminator(ch=4, **SMALL)
    z, y = jax.random.normal(jax.random.key(1), (5, 8)), jnp.array([0, 1, 2, 1, 0])
    g_vars = jax.jit(lambda k: g.init(k, z, y, train=False, mutable=True))(jax.random.key(2))
    d_vars = jax.jit(lambda k: d.init(k, jnp.zeros((5, 32, 32, 1)), y, train=False))(jax.random.key(3))
    return g, d, z, y, g_vars, d_vars


def test_each_block_is_conditioned_on_the_shared_embedding_then_its_own_z_chunk(small_biggan):
    g, _, z, y, variables, _ = small_biggan
    conds = variables["intermediates"]["cond"]  # sown by the init call: one per block
    embedding = np.asarray(variables["params"]["shared_embed"]["embedding"])
    assert len(conds) == 3
    for i, cond in enumerate(conds):
        want = np.concatenate([embedding[np.asarray(y)], np.asarray(z)[:, 2 * (i + 1):2 * (i + 2)]], axis=1)
        np.testing.assert_array_equal(np.asarray(cond), want)
    params = variables["params"]
    assert params["stem"]["kernel"].shape == (2, 4 * 4 * 16)        # only chunk 0 reaches the stem
    assert params["block0"]["bn1"]["gamma_dense"]["kernel"].shape == (6 + 2, 16)


def _map_inputs(g, num_classes: int) -> tuple[int, set]:
    """(input size of G's stem, input sizes of every conditional BatchNorm's gain and bias maps), from shapes."""
    z = jax.ShapeDtypeStruct((2, g.latent_dim), jnp.float32)
    y = jax.ShapeDtypeStruct((2,), jnp.int32) if num_classes else None
    params = jax.eval_shape(lambda z, y: g.init(jax.random.key(0), z, y, train=False), z, y)["params"]
    maps = {leaf.shape[0] for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
            if path[-2].key in ("gamma_dense", "beta_dense")}
    return params["stem"]["kernel"].shape[0], maps


def test_biggan_deep_feeds_the_embedding_and_the_whole_z_to_the_stem_and_every_batch_norm():
    deep = dict(latent_dim=8, ch=4, shared_dim=6, image_size=32, channels=1)
    assert _map_inputs(biggan_deep.BigGANDeepGenerator(num_classes=3, **deep), 3) == (6 + 8, {6 + 8})
    assert _map_inputs(biggan_deep.BigGANDeepGenerator(**deep), 0) == (8, {8})
    # BigGAN without classes: each block's BatchNorms see its z chunk alone
    assert _map_inputs(biggan.BigGANGenerator(**deep), 0) == (2, {2})


def _matrices(params):
    """(path, [out, fan_in] weight) of every conv/dense kernel and embedding table (PyTorch's weight.view(out, -1);
    an embedding [num, dim] is PyTorch's weight as is)."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = path[-1].key
        if name == "kernel":
            yield jax.tree_util.keystr(path), np.asarray(as_rows(leaf), np.float64)
        elif name == "embedding":
            yield jax.tree_util.keystr(path), np.asarray(leaf, np.float64)


def test_orthogonal_initialisation_gives_orthonormal_rows_or_columns(small_biggan):
    _, _, _, _, g_vars, d_vars = small_biggan
    seen = 0
    for params in (g_vars["params"], d_vars["params"]):
        for path, w in _matrices(params):
            gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w  # rows orthonormal / columns orthonormal
            np.testing.assert_allclose(gram, np.eye(len(gram)), atol=2e-6, err_msg=path)
            seen += 1
        biases = [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0] if path[-1].key == "bias"]
        assert biases and all(not np.any(np.asarray(b)) for b in biases)
    assert seen > 40  # every conv, dense and embedding of G and D


def _config(**kw):
    return Config(**{**dict(dataset="digits", model="biggan", conditional=True, image_size=32, channels=1,
                            width=4, latent_dim=8, batch_size=8, n_critic=1, loss="hinge", optimizer="sgd",
                            g_lr=0.01, d_lr=0.01, g_ortho_weight=1e-4), **kw})


@pytest.mark.parametrize("kw, message", [
    (dict(image_size=48), "--image_size=48 is not supported by --model=biggan; accepted: 32, 64, 128, 256, 512"),
    (dict(model="biggan_deep", image_size=28), "--image_size=28 is not supported by --model=biggan_deep"),
    (dict(latent_dim=10), r"--latent_dim=10 does not split into the 4 equal chunks .* --latent_dim=80"),
    (dict(latent_dim=0, image_size=256), r"--latent_dim=120 does not split into the 7 equal chunks"),
    (dict(attention_resolution=32), r"--attention_resolution=32 is not valid for --model=biggan at "
                                    r"--image_size=32; accepted: 0 \(default 16\), 8, 16"),
])
def test_unsupported_sizes_and_options_are_clear_errors(kw, message):
    with pytest.raises(ConfigError, match=message):
        experiment.validate(_config(**kw))


def test_biggan_deep_takes_any_latent_size_and_its_attention_resolutions():
    experiment.validate(_config(model="biggan_deep", latent_dim=10, attention_resolution=8))
    assert biggan_deep.attention_resolutions(128) == (8, 16, 32, 64)


@pytest.mark.slow  # two compilations of a BigGAN train step: ~5 min cold on 2 loaded cores
@pytest.mark.skipif(jax.device_count() < 2, reason="needs 2 (simulated) devices; see conftest.py")
def test_resume_is_exact_and_data_parallel_steps_equal_one_device_with_cross_replica_batch_norm(tmp_path):
    """One device, 4 steps (orthogonal regularization, EMA of G), checkpointed after 2, restored into a fresh
    state and continued: every leaf of the final state is bitwise the straight run's (parameters, EMA, spectral
    norm vectors, BatchNorm statistics, optimizer states, step, key). The same 4 steps on 2 devices (4 examples
    each) give one device's parameters and BatchNorm statistics: the cross-replica BatchNorm of G reduces over
    the global batch of 8, not over each device's 4. Plain SGD: the biases of convs followed by a BatchNorm have
    a gradient of 0 up to rounding, which Adam's first step would blow up to +-lr whatever its size (as
    `tests/test_parallel.py` notes)."""
    config = _config(ema_decay=0.9)
    rng = np.random.default_rng(0)
    batches = [{"x": rng.uniform(-1, 1, (1, 8, 32, 32, 1)).astype(np.float32),
                "label": rng.integers(0, 10, (1, 8)).astype(np.int32)} for _ in range(4)]
    exp = experiment.build(config, num_classes=10)
    state = initial = jax.jit(exp.init)(jax.random.key(0))
    step = jax.jit(exp.train_step()).lower(initial, batches[0]).compile()  # one compilation, or an error
    for i, batch in enumerate(batches):
        if i == 2:
            with Checkpointer(tmp_path / "ckpt", save_every=1, async_save=False) as ckpt:
                ckpt.save(2, state, {"position": 2})
                resumed, _ = ckpt.restore(2, jax.eval_shape(exp.init, jax.random.key(9)))
        state, metrics = step(state, batch)
    for batch in batches[2:]:
        resumed, _ = step(resumed, batch)
    for a, b in zip(state_leaves(state), state_leaves(resumed), strict=True):
        np.testing.assert_array_equal(b, a)
    assert not np.array_equal(state_leaves(state.g_ema_params)[0], state_leaves(state.g.params)[0])  # the EMA lags G
    mesh = parallel.make_mesh(2, 1)
    dp_exp = experiment.build(config, num_classes=10, axis_name=parallel.DATA_AXIS)
    dp_state = jax.device_put(initial, parallel.replicated(mesh))  # the same initial state, one compilation less
    dp_step = parallel.data_parallel_step(dp_exp.train_step(parallel.DATA_AXIS), mesh)
    for batch in batches:
        dp_state, dp_metrics = dp_step(dp_state, parallel.shard_batch(batch, mesh))
    for ref, got in ((state.g.params, dp_state.g.params), (state.d.params, dp_state.d.params),
                     (state.g.model_state, dp_state.g.model_state), (state.g_ema_params, dp_state.g_ema_params)):
        for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got)):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(float(dp_metrics["g/total"]), float(metrics["g/total"]), rtol=1e-4)


def test_the_registry_builds_both_from_the_config():
    config = _config()
    g, d = models.build_models(config, (32, 32, 1), 10, axis_name="data")
    assert isinstance(g, biggan.BigGANGenerator) and g.bn_axis_name == "data" and g.latent_dim == 8
    assert isinstance(d, biggan.BigGANDiscriminator) and (g.ch, d.ch) == (4, 4)
    g, d = models.build_models(dataclasses.replace(config, model="biggan_deep"), (32, 32, 1), 10)
    assert isinstance(g, biggan_deep.BigGANDeepGenerator) and isinstance(d, biggan_deep.BigGANDeepDiscriminator)
