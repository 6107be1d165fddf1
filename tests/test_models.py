"""Tests for jaxgan.models: DCGAN, SNGAN/SAGAN/BigGAN-style ResNets, blocks, latent sampling."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import flax.linen as nn

from jaxgan import step as step_lib
from jaxgan.models import blocks, dcgan, resnet


def _key(seed):
    # XLA's RngBitGenerator compiles far faster on CPU than threefry; the models accept any typed key.
    return jax.random.key(seed, impl="unsafe_rbg")


def _param_count(module, *args, **kwargs):
    shapes = jax.eval_shape(lambda k: module.init(k, *args, train=False, **kwargs), _key(0))
    return sum(math.prod(x.shape) for x in jax.tree.leaves(shapes["params"]))


def _init(module, *args, seed=0):
    return jax.jit(lambda k, *a: module.init(k, *a, train=False))(_key(seed), *args)


def _shapes(g, d, z, labels=None):
    """Output shapes/dtypes of G and D (init + train-mode apply), traced only: nothing is compiled."""
    def run(kg, kd):
        gv = g.init(kg, z, labels, train=False)
        imgs, _ = g.apply(gv, z, labels, train=True, mutable=["batch_stats"])
        dv = d.init(kd, imgs, labels, train=False)
        logits, _ = d.apply(dv, imgs, labels, train=True, mutable=["batch_stats"])
        return imgs, logits, gv, dv
    return jax.eval_shape(run, _key(0), _key(1))


def _normal(seed, shape, scale=1.0, shift=0.0):
    return jnp.asarray(np.random.default_rng(seed).normal(shift, scale, size=shape), jnp.float32)


# ---------------------------------------------------------------------------------------------- DCGAN

@pytest.mark.parametrize("size,channels,g_count,d_count", [
    (64, 3, 3_576_704, 2_765_568),   # pytorch/examples DCGAN (docs/performance.md)
    (32, 1, 1_066_880, 661_248),
    (32, 3, 1_068_928, 663_296),
    # 128 px, counted by hand: G kernels 16*(100*1024 + 1024*512 + 512*256 + 256*128 + 128*64 + 64*3) plus
    # BN 2*(1024+512+256+128+64); D kernels 16*(3*64 + 64*128 + 128*256 + 256*512 + 512*1024 + 1024) plus
    # BN 2*(128+256+512+1024)
    (128, 3, 12_786_560, 11_164_416),
])
def test_dcgan_param_counts_match_pytorch(size, channels, g_count, d_count):
    g = dcgan.DCGANGenerator(latent_dim=100, image_size=size, channels=channels, ngf=64)
    d = dcgan.DCGANDiscriminator(image_size=size, channels=channels, ndf=64)
    assert _param_count(g, jnp.zeros((2, 100))) == g_count
    assert _param_count(d, jnp.zeros((2, size, size, channels))) == d_count


@pytest.mark.parametrize("size,channels,num_classes,normalization", [
    (28, 1, 0, "batch_norm"), (28, 3, 10, "layer_norm"), (32, 1, 0, "none"), (32, 3, 4, "batch_norm"),
    (64, 1, 0, "layer_norm"), (64, 3, 0, "batch_norm"), (128, 3, 2, "batch_norm")])
def test_dcgan_shapes(size, channels, num_classes, normalization):
    b = 3
    g = dcgan.DCGANGenerator(latent_dim=16, image_size=size, channels=channels, ngf=8, num_classes=num_classes)
    d = dcgan.DCGANDiscriminator(image_size=size, channels=channels, ndf=8, num_classes=num_classes,
                                 normalization=normalization)
    labels = jnp.zeros((b,), jnp.int32) if num_classes else None
    imgs, logits, gv, dv = _shapes(g, d, jnp.zeros((b, 16)), labels)
    assert imgs.shape == (b, size, size, channels) and imgs.dtype == jnp.float32
    assert logits.shape == (b,) and logits.dtype == jnp.float32
    assert ("batch_stats" in dv) == (normalization == "batch_norm")


def test_dcgan_forward_values_conditional_28():
    g = dcgan.DCGANGenerator(latent_dim=8, image_size=28, channels=1, ngf=8, num_classes=10)
    d = dcgan.DCGANDiscriminator(image_size=28, channels=1, ndf=8, num_classes=10)
    z, y = _normal(0, (4, 8)), jnp.array([3, 7, 0, 9], jnp.int32)

    @jax.jit
    def run(kg, kd):
        gv = g.init(kg, z, y, train=False)
        imgs, g_upd = g.apply(gv, z, y, train=True, mutable=["batch_stats"])
        dv = d.init(kd, imgs, y, train=False)
        logits, _ = d.apply(dv, imgs, y, train=True, mutable=["batch_stats"])
        return imgs, logits, g.apply(gv, z, y, train=False), g_upd

    imgs, logits, imgs_eval, g_upd = run(_key(0), _key(1))
    assert imgs.shape == (4, 28, 28, 1) and float(jnp.max(jnp.abs(imgs))) <= 1.0
    assert float(jnp.std(imgs)) > 1e-3 and not np.allclose(imgs, imgs_eval)
    assert set(g_upd) == {"batch_stats"}
    assert bool(jnp.all(jnp.isfinite(logits))) and logits.shape == (4,)


def test_dcgan_errors():
    def init(module, x, labels=None):
        return jax.eval_shape(lambda k: module.init(k, x, labels, train=False), _key(0))

    with pytest.raises(ValueError, match=r"image_size=48.*28, 32, 64"):
        init(dcgan.DCGANGenerator(latent_dim=4, image_size=48), jnp.zeros((1, 4)))
    with pytest.raises(ValueError, match=r"image_size=48.*28, 32, 64"):
        init(dcgan.DCGANDiscriminator(image_size=48, channels=1), jnp.zeros((1, 48, 48, 1)))
    with pytest.raises(ValueError, match=r"image_size=16"):
        dcgan.wgan_gp_critic(16, 1)
    with pytest.raises(ValueError, match="group_norm"):
        init(dcgan.DCGANDiscriminator(image_size=32, channels=1, normalization="group_norm"),
             jnp.zeros((1, 32, 32, 1)))
    with pytest.raises(ValueError, match="batch_norm"):
        dcgan.wgan_gp_critic(32, 1, normalization="batch_norm")
    with pytest.raises(ValueError, match=r"\[1, 28, 28, 1\]"):
        init(dcgan.DCGANDiscriminator(image_size=32, channels=1), jnp.zeros((1, 28, 28, 1)))
    with pytest.raises(ValueError, match="num_classes=10"):
        init(dcgan.DCGANDiscriminator(image_size=32, channels=1, num_classes=10), jnp.zeros((1, 32, 32, 1)))


def test_wgan_gp_critic_is_per_example():
    critic = dcgan.wgan_gp_critic(32, 1, ndf=8)
    assert critic.normalization == "layer_norm"
    x = _normal(0, (4, 32, 32, 1))

    @jax.jit
    def run(k):
        v = critic.init(k, x, train=False)
        f = lambda xx: critic.apply(v, xx, train=True)  # noqa: E731
        return v, f(x), f(x[:1]), jax.grad(lambda xx: f(xx).sum())(x), jax.grad(lambda xx: f(xx).sum())(x[:1])

    v, full, single, grads, g0 = run(_key(1))
    assert "batch_stats" not in v
    np.testing.assert_allclose(full[0], single[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grads[0], g0[0], rtol=1e-4, atol=1e-6)   # per-example input gradients (GP)


def test_batchnorm_in_d_train_uses_batch_stats_eval_uses_running_stats():
    d = dcgan.DCGANDiscriminator(image_size=32, channels=1, ndf=8)
    x = _normal(0, (4, 32, 32, 1), scale=0.5, shift=0.3)
    x2 = x.at[1].set(-x[1])                       # change another example

    @jax.jit
    def run(k):
        v = d.init(k, x, train=False)
        tr, upd = d.apply(v, x, train=True, mutable=["batch_stats"], capture_intermediates=True)
        tr2, _ = d.apply(v, x2, train=True, mutable=["batch_stats"])
        v2 = {"params": v["params"], "batch_stats": upd["batch_stats"]}
        return (tr, tr2, d.apply(v, x, train=False), d.apply(v, x2, train=False), d.apply(v2, x, train=False),
                upd)

    tr, tr2, ev, ev2, ev_updated, upd = run(_key(1))
    assert abs(float(tr[0] - tr2[0])) > 1e-6      # train: example 0 sees the batch statistics
    assert float(ev[0]) == float(ev2[0])          # eval: running statistics only
    assert not np.allclose(tr, ev)
    # running mean update: flax momentum 0.9 -> 0.9 * 0 + 0.1 * batch mean of the first BN's input
    h = upd["intermediates"]["down1"]["__call__"][0]
    np.testing.assert_allclose(upd["batch_stats"]["norm1"]["mean"], 0.1 * h.mean(axis=(0, 1, 2)),
                               rtol=1e-4, atol=1e-7)
    assert not np.allclose(ev_updated, ev)


# ---------------------------------------------------------------------------------------------- ResNet

@pytest.mark.parametrize("size,attn,num_classes,g_sn", [
    (32, 16, 0, False), (32, 8, 5, True), (64, 32, 5, False), (64, None, 0, True), (128, 64, 3, False)])
def test_resnet_shapes(size, attn, num_classes, g_sn):
    b = 2
    g = resnet.ResNetGenerator(latent_dim=16, image_size=size, channels=3, ch=8, attention_resolution=attn,
                               num_classes=num_classes, shared_embedding_dim=8, spectral_norm=g_sn)
    d_attn = attn if attn in resnet.discriminator_attention_resolutions(size) else None
    d = resnet.ResNetDiscriminator(image_size=size, channels=3, ch=8, attention_resolution=d_attn,
                                   num_classes=num_classes)
    labels = jnp.zeros((b,), jnp.int32) if num_classes else None
    imgs, logits, gv, dv = _shapes(g, d, jnp.zeros((b, 16)), labels)
    assert imgs.shape == (b, size, size, 3) and logits.shape == (b,) and logits.dtype == jnp.float32
    assert ("attention" in gv["params"]) == (attn is not None)
    assert ("attention" in dv["params"]) == (d_attn is not None)
    assert ("embed" in dv["params"]) == (num_classes > 0)
    if attn is not None:
        assert gv["params"]["attention"]["theta"]["kernel"].shape[-1] * 8 == \
            gv["params"]["attention"]["o"]["kernel"].shape[-1]


def test_resnet_errors():
    def init(module, x):
        return jax.eval_shape(lambda k: module.init(k, x, train=False), _key(0))

    with pytest.raises(ValueError, match=r"image_size=256.*32, 64, 128"):
        init(resnet.ResNetGenerator(latent_dim=4, image_size=256), jnp.zeros((1, 4)))
    with pytest.raises(ValueError, match=r"attention_resolution=32.*16, 8"):
        init(resnet.ResNetDiscriminator(image_size=32, ch=8, attention_resolution=32), jnp.zeros((1, 32, 32, 3)))
    with pytest.raises(ValueError, match=r"attention_resolution=4.*8, 16, 32"):
        init(resnet.ResNetGenerator(latent_dim=4, image_size=32, ch=8, attention_resolution=4), jnp.zeros((1, 4)))


def test_resnet_forward_values():
    g = resnet.ResNetGenerator(latent_dim=16, image_size=32, channels=3, ch=8, attention_resolution=16)
    z = _normal(0, (3, 16))

    @jax.jit
    def run(k):
        v = g.init(k, z, train=False)
        return g.apply(v, z, train=True, mutable=["batch_stats"])

    imgs, upd = run(_key(0))
    assert imgs.shape == (3, 32, 32, 3) and float(jnp.max(jnp.abs(imgs))) <= 1.0
    assert float(jnp.std(imgs)) > 1e-3 and set(upd) == {"batch_stats"}


def _sn_pairs(variables):
    """Yields (name, kernel, sigma) for every spectrally normalised parameter.

    flax stores ``<prefix>/<sn module>/'<layer>/<param>/sigma'`` in batch_stats and the parameter itself at
    ``<prefix>/<layer>/<param>`` in params.
    """
    flat = jax.tree_util.tree_flatten_with_path(variables["batch_stats"])[0]
    for path, value in flat:
        keys = [p.key for p in path]
        if not keys[-1].endswith("/sigma"):
            continue
        layer, param, _ = keys[-1].split("/")
        node = variables["params"]
        for k in keys[:-2] + [layer, param]:
            node = node[k]
        yield "/".join(keys[:-2] + [layer, param]), np.asarray(node), float(value)


def _power_iterate(module, args, n=30, seed=0):
    """Init, then ``n`` train-mode applies (each one power-iteration step per SN layer), in one jit."""
    @jax.jit
    def run(k):
        v = module.init(k, *args, train=False)

        def body(stats, _):
            _, upd = module.apply({"params": v["params"], "batch_stats": stats}, *args, train=True,
                                  mutable=["batch_stats"])
            return upd["batch_stats"], None
        return {"params": v["params"], "batch_stats": jax.lax.scan(body, v["batch_stats"], None, length=n)[0]}
    return run(_key(seed))


@pytest.mark.parametrize("which", ["D", "G"])
def test_spectral_norm_normalises_largest_singular_value(which):
    if which == "D":   # every layer: 2 blocks x 3 convs, 2 blocks x 2 convs, 4 attention convs, out, embed
        module, n_sn = resnet.ResNetDiscriminator(image_size=32, channels=3, ch=8, attention_resolution=16,
                                                  num_classes=4), 16
        args = (_normal(0, (2, 32, 32, 3)), jnp.array([0, 3], jnp.int32))
    else:              # stem, 3 blocks x 3 convs, 4 attention convs, output conv
        module, n_sn = resnet.ResNetGenerator(latent_dim=16, image_size=32, channels=3, ch=8, spectral_norm=True,
                                              attention_resolution=8), 15
        args = (_normal(1, (2, 16)),)
    v = _power_iterate(module, args)
    pairs = list(_sn_pairs(v))
    assert len(pairs) == n_sn
    for name, kernel, sigma in pairs:
        w = kernel.reshape(-1, kernel.shape[-1]) / sigma
        top = np.linalg.svd(w.astype(np.float64), compute_uv=False)[0]
        assert abs(top - 1.0) < 0.05, (name, top)


def _np_max_pool2(a):
    b, h, w, c = a.shape
    return a.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


@pytest.mark.parametrize("pool_keys", [True, False])
def test_self_attention_identity_at_init_and_matches_numpy(pool_keys):
    att = blocks.SelfAttention(spectral_norm=True, pool_keys=pool_keys)
    x = _normal(0, (2, 4, 6, 16))

    @jax.jit
    def run(k, gamma):
        v = att.init(k, x, train=False)
        params = dict(v["params"], gamma=gamma)
        out, upd = att.apply({"params": params, "batch_stats": v["batch_stats"]}, x, train=True,
                             mutable=["batch_stats"])
        return v, att.apply(v, x, train=False), att.apply(v, x, train=True, mutable=["batch_stats"])[0], out, upd

    v, id_eval, id_train, out, upd = run(_key(1), jnp.float32(0.7))
    assert float(v["params"]["gamma"]) == 0.0
    np.testing.assert_array_equal(id_eval, x)      # gamma = 0: exactly the identity
    np.testing.assert_array_equal(id_train, x)

    stats = upd["batch_stats"]          # train=True stores the sigma that this call used

    def w(name):
        k = np.asarray(v["params"][name]["kernel"], np.float64)[0, 0]
        return k / float(stats[f"{name}_sn"][f"{name}/kernel/sigma"])

    xn = np.asarray(x, np.float64)
    b, hh, ww, c = xn.shape
    f, gk, hv = xn @ w("theta"), xn @ w("phi"), xn @ w("g")
    if pool_keys:
        gk, hv = _np_max_pool2(gk), _np_max_pool2(hv)
    f, gk, hv = f.reshape(b, -1, c // 8), gk.reshape(b, -1, c // 8), hv.reshape(b, -1, c // 2)
    s = f @ gk.transpose(0, 2, 1)
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    o = (a @ hv).reshape(b, hh, ww, c // 2) @ w("o")
    np.testing.assert_allclose(out, xn + 0.7 * o, rtol=1e-4, atol=1e-5)


def test_conditional_batchnorm_identity_at_init_and_formula():
    k, c, b = 5, 6, 10
    x = _normal(0, (b, 3, 3, c), scale=2.0, shift=1.0)
    labels = jnp.arange(b, dtype=jnp.int32) % k
    e = _normal(1, (b, 4))
    rng = np.random.default_rng(0)
    gt, bt, wg, wb = (jnp.asarray(rng.normal(size=shape), jnp.float32) for shape in [(k, c), (k, c), (4, c), (4, c)])
    cbn = blocks.ConditionalBatchNorm(num_classes=k)

    @jax.jit
    def run(k1, k2):
        v = cbn.init(k1, x, labels, train=False)
        _, init_inter = cbn.apply(v, x, labels, train=True, mutable=["batch_stats", "intermediates"])
        params = {"gamma_embed": {"embedding": gt}, "beta_embed": {"embedding": bt}}
        out, _ = cbn.apply({"params": params, "batch_stats": v["batch_stats"]}, x, labels, train=True,
                           mutable=["batch_stats"])
        vs = cbn.init(k2, x, e, train=False)
        _, init_inter_s = cbn.apply(vs, x, e, train=False, mutable=["intermediates"])
        params = {"gamma_dense": {"kernel": wg}, "beta_dense": {"kernel": wb}}
        out_s = cbn.apply({"params": params, "batch_stats": vs["batch_stats"]}, x, e, train=False)
        return init_inter["intermediates"], out, init_inter_s["intermediates"], out_s

    inter, out, inter_s, out_s = run(_key(1), _key(2))
    # at init: gamma == 1 and beta == 0 exactly, for every class / embedding
    for it in (inter, inter_s):
        np.testing.assert_array_equal(it["scale"][0], np.ones((b, c)))
        np.testing.assert_array_equal(it["offset"][0], np.zeros((b, c)))

    # trained-like random tables, train mode: y = (1 + G[y]) * (x - mu) / sqrt(var + eps) + B[y]
    xn, yn = np.asarray(x, np.float64), np.asarray(labels)
    gt, bt, wg, wb = (np.asarray(a, np.float64) for a in (gt, bt, wg, wb))
    mu, var = xn.mean((0, 1, 2)), xn.var((0, 1, 2))
    want = (1 + gt[yn])[:, None, None] * (xn - mu) / np.sqrt(var + 1e-5) + bt[yn][:, None, None]
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)
    # shared-embedding form, eval mode with the initial running stats (mean 0, var 1)
    en = np.asarray(e, np.float64)
    want = (1 + en @ wg)[:, None, None] * xn / np.sqrt(1 + 1e-5) + (en @ wb)[:, None, None]
    np.testing.assert_allclose(out_s, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shared_dim", [0, 8])
def test_resnet_generator_cbn_is_identity_for_every_class_at_init(shared_dim):
    k = 7
    g = resnet.ResNetGenerator(latent_dim=8, image_size=32, channels=3, ch=8, num_classes=k,
                               shared_embedding_dim=shared_dim)
    z, y = _normal(0, (k, 8)), jnp.arange(k, dtype=jnp.int32)

    @jax.jit
    def run(key):
        v = g.init(key, z, y, train=False)
        return g.apply(v, z, y, train=True, mutable=["batch_stats", "intermediates"])[1]["intermediates"]

    flat = jax.tree_util.tree_flatten_with_path(run(_key(0)))[0]
    scales = [a for p, a in flat if "scale" in jax.tree_util.keystr(p)]
    offsets = [a for p, a in flat if "offset" in jax.tree_util.keystr(p)]
    assert len(scales) == len(offsets) == 6       # 3 up-blocks x 2 cBNs
    for s, o in zip(scales, offsets):
        assert s.shape == (k, 32)
        np.testing.assert_array_equal(s, np.ones_like(s))
        np.testing.assert_array_equal(o, np.zeros_like(o))


def test_projection_discriminator_logit_difference():
    k = 5
    d = resnet.ResNetDiscriminator(image_size=32, channels=3, ch=8, num_classes=k)
    x = _normal(0, (4, 32, 32, 3))
    y1, y2 = jnp.array([0, 1, 2, 3], jnp.int32), jnp.array([4, 3, 1, 1], jnp.int32)

    @jax.jit
    def run(key):
        v = d.init(key, x, y1, train=False)
        f = lambda y: d.apply(v, x, y, train=True, mutable=["batch_stats", "intermediates"])  # noqa: E731
        return v, f(y1), f(y2)

    v, (l1, u1), (l2, u2) = run(_key(0))
    h = np.asarray(u1["intermediates"]["features"][0], np.float64)
    np.testing.assert_array_equal(h, u2["intermediates"]["features"][0])
    sigma = float(u1["batch_stats"]["embed_sn"]["embed/embedding/sigma"])  # the sigma those calls used
    assert sigma == float(u2["batch_stats"]["embed_sn"]["embed/embedding/sigma"])
    emb = np.asarray(v["params"]["embed"]["embedding"], np.float64) / sigma
    want = np.sum((emb[np.asarray(y1)] - emb[np.asarray(y2)]) * h, axis=-1)
    assert np.max(np.abs(want)) > 1e-3
    np.testing.assert_allclose(np.asarray(l1) - np.asarray(l2), want, rtol=1e-3,
                               atol=1e-5 * np.abs(h).sum(-1).max())


# ---------------------------------------------------------------------------------------------- sampling

class _LatentsOut(nn.Module):
    """A "generator" that returns its latents, so `jaxgan.step.sample` (what launch/sample.py calls) shows its z."""
    latent_dim: int = 100

    def __call__(self, z, labels=None, *, train=False):
        return z


def _sampled_latents(key, num, truncation):
    return np.asarray(step_lib.sample(_LatentsOut(), {}, {}, key, num, truncation=truncation))


@pytest.mark.parametrize("t", [0.5, 1.0, 2.0])
def test_sampler_truncation_trick(t):
    n = 200_000
    z = _sampled_latents(jax.random.key(0), n // 100, t)
    assert z.shape == (n // 100, 100) and z.dtype == np.float32
    z = z.ravel()
    assert np.all(np.abs(z) <= t)
    assert np.mean(np.abs(z) >= t * (1 - 1e-6)) < 1e-4    # no mass piled on the bounds (not clipping)
    phi, cdf = scipy.stats.norm.pdf(t), scipy.stats.norm.cdf(t)
    var = 1 - 2 * t * phi / (2 * cdf - 1)
    se = var * math.sqrt(2 / n) * 2                        # generous standard error of the variance
    assert abs(z.var() - var) < 5 * se, (z.var(), var)
    assert abs(z.mean()) < 5 * math.sqrt(var / n)
    assert scipy.stats.kstest(z[:20_000], scipy.stats.truncnorm(-t, t).cdf).pvalue > 1e-3


def test_sampler_without_truncation_and_bad_values():
    key = jax.random.key(3)
    z = _sampled_latents(key, 1000, None)
    np.testing.assert_array_equal(z, jax.random.normal(jax.random.split(key)[0], (1000, 100)))
    assert abs(float(z.var()) - 1.0) < 0.02 and float(np.max(np.abs(z))) > 3.0
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="truncation"):
            _sampled_latents(key, 2, bad)
