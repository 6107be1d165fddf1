"""The torch twin of SNGAN (benchmarks/torch_sngan.py, used by step_throughput.py --model=sngan --compare_torch) is
the same network and the same step as jaxgan's --model=sngan."""
import dataclasses
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgan import experiment
from jaxgan.experiment import Config

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "benchmarks"))

SNGAN = Config(dataset="random_images", model="sngan", image_size=32, channels=3, width=8, batch_size=4)


def jaxgan_counts(config):
    shapes = jax.eval_shape(experiment.build(config).init, jax.random.key(0))
    return tuple(int(sum(np.prod(x.shape) for x in jax.tree.leaves(p))) for p in (shapes.g.params, shapes.d.params))


@pytest.mark.parametrize("size,width,counts", [(32, 8, (126_019, 66_849)), (64, 8, (733_763, 306_329)),
                                               (128, 8, (735_459, 601_497)), (32, 0, (4_276_739, 4_204_801))])
def test_torch_sngan_has_the_same_parameter_count(size, width, counts):
    pytest.importorskip("torch")
    import torch_sngan
    config = dataclasses.replace(SNGAN, image_size=size, width=width)
    exp = experiment.build(config)
    assert jaxgan_counts(config) == counts
    g = torch_sngan.Generator(exp.generator.latent_dim, size, 3, exp.generator.ch)
    d = torch_sngan.Discriminator(size, 3, exp.discriminator.ch)
    assert (torch_sngan.num_params(g), torch_sngan.num_params(d)) == counts


def random_variables(config):
    """jaxgan's variables with random values (init compiles slowly on CPU; only the shapes are needed)."""
    shapes = jax.eval_shape(experiment.build(config).init, jax.random.key(0))
    rng = np.random.default_rng(0)

    def fill(path, s):
        name = jax.tree_util.keystr(path)
        if name.endswith("'u']") or s.ndim == 0:
            return jnp.asarray(rng.normal(size=s.shape), jnp.float32)
        if s.ndim >= 2:
            return jnp.asarray(rng.normal(size=s.shape) / np.sqrt(np.prod(s.shape[:-1])), jnp.float32)
        base = 1.0 if name.endswith("'scale']") else 0.0
        return jnp.asarray(base + 0.1 * rng.normal(size=s.shape), jnp.float32)

    return [jax.tree_util.tree_map_with_path(fill, t) for t in
            (shapes.g.params, shapes.g.model_state, shapes.d.params, shapes.d.model_state)]


@pytest.mark.parametrize("compute_dtype", ["float32", "bfloat16"])
def test_torch_sngan_computes_the_same_outputs(compute_dtype):
    """Train mode in both: G with batch statistics; D runs one power iteration from the stored u (flax does it in
    both modes) and stores the new u (flax with update_stats=True, i.e. train=True)."""
    torch = pytest.importorskip("torch")
    import torch_sngan
    config = dataclasses.replace(SNGAN, compute_dtype=compute_dtype)
    exp = experiment.build(config)
    g_params, g_state, d_params, d_state = random_variables(config)
    g = torch_sngan.Generator(exp.generator.latent_dim, 32, 3, exp.generator.ch)
    d = torch_sngan.Discriminator(32, 3, exp.discriminator.ch)
    torch_sngan.load_flax_params(g, d, g_params, d_params, d_state)
    z = jax.random.normal(jax.random.key(1), (8, exp.generator.latent_dim))
    x = jax.random.uniform(jax.random.key(2), (8, 32, 32, 3), minval=-1, maxval=1)
    fake = jax.jit(lambda z: exp.generator.apply({"params": g_params, **g_state}, z, train=True,
                                                 mutable=["batch_stats"])[0])(z)
    logits, d_updates = jax.jit(lambda x: exp.discriminator.apply({"params": d_params, **d_state}, x, train=True,
                                                                  mutable=["batch_stats"]))(x)
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if compute_dtype == "bfloat16"
                else torch.autocast("cpu", enabled=False))
    with torch.no_grad(), autocast:
        t_fake = g(torch.from_numpy(np.array(z)))
        t_logits = d(torch.from_numpy(np.array(x)).permute(0, 3, 1, 2).contiguous())
    assert t_fake.dtype == torch.float32 and t_logits.dtype == torch.float32
    t_fake, t_logits = t_fake.permute(0, 2, 3, 1).numpy(), t_logits.numpy()
    fake, logits = np.asarray(fake), np.asarray(logits)
    tol = 1e-4 if compute_dtype == "float32" else 0.1  # bfloat16: each framework is ~3 % off its float32 output
    assert np.abs(t_fake - fake).max() < tol * np.abs(fake).max()
    assert np.abs(t_logits - logits).max() < tol * np.abs(logits).max()
    # the stored u after one train-mode forward (float32 in both, also under bfloat16)
    stats = d_updates["batch_stats"]
    for i, block in enumerate(d.blocks):
        for name in ("conv1", "conv2", "shortcut"):
            if getattr(block, name) is not None:
                u = np.asarray(stats[f"block{i}"][f"{name}_sn"][f"{name}/kernel/u"])
                np.testing.assert_allclose(getattr(block, name).u.numpy(), u, atol=1e-5)
    np.testing.assert_allclose(d.out.u.numpy(), np.asarray(stats["out_sn"]["out/kernel/u"]), atol=1e-5)


def _power_iteration(u, w):
    w = w.reshape(w.shape[0], -1)
    v = u @ w
    v = v / np.sqrt((v * v).sum() + 1e-12)
    u = v @ w.T
    return u / np.sqrt((u * u).sum() + 1e-12)


@pytest.mark.parametrize("loss,n_critic,compute_dtype", [("non_saturating", 1, "float32"), ("hinge", 2, "bfloat16")])
def test_torch_sngan_step_updates_sn_once_per_d_update(loss, n_critic, compute_dtype):
    """As jaxgan's step: one SN update per D update (real and fake in one D call), none in the G update."""
    torch = pytest.importorskip("torch")
    import torch_sngan
    twin = torch_sngan.TorchSNGAN(32, 3, 16, 8, loss=loss, n_critic=n_critic, compute_dtype=compute_dtype)
    sn = [m for m in twin.d.modules() if isinstance(m, torch_sngan.SN)]
    assert len(sn) == 11  # 4 blocks x 2 convs + 2 shortcuts + the dense layer
    u0 = [m.u.numpy().copy() for m in sn]
    w0 = [m.weight.detach().numpy().copy() for m in sn]
    real = torch.rand(n_critic, 4, 3, 32, 32) * 2 - 1
    d_loss, g_loss = twin.step(real if n_critic > 1 else real[0])
    assert d_loss.dtype == g_loss.dtype == torch.float32
    assert not d_loss.requires_grad and not g_loss.requires_grad
    assert np.isfinite(float(d_loss)) and np.isfinite(float(g_loss))
    if n_critic == 1:  # the D forward sees the weights before the D update
        for m, u, w in zip(sn, u0, w0):
            np.testing.assert_allclose(m.u.numpy(), _power_iteration(u, w), atol=1e-5)
    assert all(p.requires_grad for p in twin.d.parameters()) and twin.d.training
    assert all(not np.allclose(m.weight.detach().numpy(), w) for m, w in zip(sn, w0))  # D was updated
