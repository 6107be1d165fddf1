"""Objectives: the D-side and G-side terms of a GAN game, composed by weighted sum.

An `Objective` is a tuple of `Term`s. Each term is a pure function of the discriminator outputs (and,
for penalties, of a discriminator closure and the data) that returns a scalar; the train step minimises,
per player, the weighted sum of that player's terms and reports every term separately in its metrics
(``d/<name>``, ``g/<name>``). Objectives add and scale like numbers, in the spirit of ``optax.chain``::

    objective = objectives.wasserstein() + 10.0 * objectives.gradient_penalty()

Scalars that a study may want to sweep without recompiling (label smoothing, a penalty weight, the
instance-noise scale) are *hyperparameters*: named float32 scalars that live in the train state
(``GANState.hparams``) and are read by the terms at run time, so `jax.vmap` can give every run its own
value. ``Objective.hparams`` holds their defaults. `weighted_by` makes a term's weight such a
hyperparameter, e.g. ``objectives.gradient_penalty().weighted_by("penalty_weight", 10.0)``.

Extension points (docs/extending.md): a term may read labels, D's and G's auxiliary outputs (``real_aux``,
``fake_aux``, ``g_aux``) and run lazily (`Objective.every`: every k-th update, weight times k); an objective may
carry *input transforms* of D (`InputTransform`, e.g. `instance_noise`) applied to real and fake alike, whose
state lives in ``GANState.transforms``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

from jaxgan import losses, penalties, realness


class TermInputs(NamedTuple):
    """What a term may look at. Shapes: outputs [B] (or [B, ...]), data [B, ...], labels [B] int32.

    ``d_fn(x, labels)`` runs D with the current parameters and no state updates; ``labels`` are the class
    labels of the examples in ``x`` (None for unconditional models). A term passes the labels of the batch it
    evaluates D on: ``real_labels`` for real data, ``fake_labels`` for generated data (`penalty_labels`).
    """
    real_outputs: jax.Array | None  # D(real); for G terms only when `Objective.g_needs_real`
    fake_outputs: jax.Array  # D(G(z))
    real: jax.Array  # the real batch as D saw it (after instance noise)
    fake: jax.Array  # the generated batch as D saw it
    d_fn: Callable[[jax.Array, jax.Array | None], jax.Array]  # (x, labels) -> D(x)
    key: jax.Array  # a fresh key for this term's randomness
    hparams: Mapping[str, jax.Array]
    real_labels: jax.Array | None = None  # [B] labels of `real` (conditional models)
    fake_labels: jax.Array | None = None  # [B] labels G was given for `fake`
    real_aux: Any = None  # D's auxiliary outputs on `real` when D returns (outputs, aux), e.g. class logits
    fake_aux: Any = None  # D's auxiliary outputs on `fake`
    g_aux: Any = None  # G terms: G's auxiliary outputs when G returns (x, aux), e.g. intermediate latents
    step: jax.Array | None = None  # int32 update counter of this player (D: D updates, G: steps); lazy terms
    transform_states: Mapping[str, Any] | None = None  # ``GANState.transforms`` (e.g. a running mean of D's outputs)
    latents: jax.Array | None = None  # [B, latent_dim] the z that generated `fake`
    # (z, labels) -> G(z) in data space, training mode, no state updates (before the input transforms):
    # differentiable in G's parameters in G terms, a constant (stop_gradient) in D terms; e.g. zCR
    g_fn: Callable[[jax.Array, jax.Array | None], jax.Array] | None = None
    # Data parallelism: the data axis (None on one device) and ``key`` before its per-device fold (the same on
    # every device; equal to ``key`` on one device), for a term that draws randomness for the global batch and
    # slices it, so that N devices compute what one device computes (StyleGAN2's path length).
    axis_name: str | None = None
    shared_key: jax.Array | None = None

    def d_on(self, labels: jax.Array | None) -> Callable[[jax.Array], jax.Array]:
        """The closure ``x -> D(x, labels)`` that `jaxgan.penalties` takes."""
        return lambda x: self.d_fn(x, labels)


TermFn = Callable[[TermInputs], jax.Array]


@dataclasses.dataclass(frozen=True)
class Term:
    name: str
    player: str  # "d" or "g"
    fn: TermFn
    weight: float = 1.0
    weight_hparam: str | None = None  # if set, the weight is multiplied by hparams[weight_hparam]
    needs_real: bool = False  # a G term that needs D(real)
    # a G term that runs G itself (``g_fn``) or reads G's auxiliary outputs (``g_aux``): the G update then runs
    # G's forward for its gradient; otherwise it may reuse the D update's G forward (``g_latents="reuse"``)
    runs_generator: bool = False
    needs_input_gradients: bool = False  # per-example input gradients of D (refused with BatchNorm in D)
    every: int = 1  # lazy regularization: evaluated when step % every == 0, with its weight times `every`
    # evaluates D through ``d_fn`` (inference mode) on batches of its own, e.g. consistency regularization:
    # refused with BatchNorm in D, whose inference-mode outputs differ from the training-mode ones
    per_example_d: bool = False
    metric_only: bool = False  # logged, never added to the player's loss (e.g. D's class accuracy)

    def weight_value(self, hparams: Mapping[str, Any]):
        weight = self.weight * self.every
        if self.weight_hparam is None:
            return weight
        return weight * hparams[self.weight_hparam]

    def value(self, inputs: TermInputs) -> jax.Array:
        """The term's value; a lazy term (``every > 1``) runs under `lax.cond` (no compute off its steps) and is 0
        on the steps it skips."""
        if self.every == 1:
            return self.fn(inputs)
        if inputs.step is None:
            raise ValueError(f"term {self.name!r} runs every {self.every} steps but TermInputs.step is None")
        return jax.lax.cond(inputs.step % self.every == 0, lambda: jnp.asarray(self.fn(inputs), jnp.float32),
                            lambda: jnp.zeros((), jnp.float32))


class TransformStats(NamedTuple):
    """What an input transform's `InputTransform.update` sees once per train step, after the D updates."""
    step: jax.Array  # int32: completed train steps before this one
    hparams: Mapping[str, jax.Array]
    real_outputs: jax.Array  # D(real) of the last D update (before that update), e.g. for ADA's sign(D(real))
    fake_outputs: jax.Array  # D(fake) of the last D update, e.g. for LeCam's running means
    axis_name: str | None = None  # the data-parallel axis: outputs are this device's share of the batch

    def mean(self, x: jax.Array) -> jax.Array:
        """The mean of ``x`` over the global batch (every device of the data axis gets the same value), so that
        a transform's state stays identical on every device."""
        m = jnp.mean(x)
        return m if self.axis_name is None else jax.lax.pmean(m, self.axis_name)


@runtime_checkable
class InputTransform(Protocol):
    """A transform of D's inputs, applied to real and fake alike (and to G's fakes in the G update).

    ``init()`` gives its state (a pytree, ``{}`` if none), kept in ``GANState.transforms[name]``;
    ``apply(state, key, x, step, hparams) -> x'`` transforms one batch [B, ...] (called once for real, once for
    fake, each with its own key); ``update(state, stats) -> (state', metrics)`` runs once per step after the D
    updates (e.g. an adaptive augmentation probability) and returns scalar metrics to log.
    """
    name: str
    hparams: Mapping[str, float]  # defaults of the run-time hparams it reads

    def init(self) -> Any: ...

    def apply(self, state: Any, key: jax.Array, x: jax.Array, step: jax.Array,
              hparams: Mapping[str, jax.Array]) -> jax.Array: ...

    def update(self, state: Any, stats: TransformStats) -> tuple[Any, dict[str, jax.Array]]: ...


@dataclasses.dataclass(frozen=True)
class InstanceNoise:
    """Gaussian noise of std ``hparams["instance_noise"]`` on D's inputs (Arjovsky & Bottou 2017; Sønderby et al.
    2017), decaying linearly to 0 over ``anneal_steps`` train steps (None: constant). Stateless: its counter is
    the step. Reports the scale as the metric ``instance_noise``."""
    scale: float = 0.1
    anneal_steps: int | None = None
    name: str = "instance_noise"

    @property
    def hparams(self) -> Mapping[str, float]:
        return {"instance_noise": float(self.scale)}

    def init(self):
        return {}

    def current_scale(self, step, hparams):
        scale = hparams["instance_noise"]
        if self.anneal_steps:
            scale = scale * jnp.maximum(0.0, 1.0 - step.astype(jnp.float32) / self.anneal_steps)
        return scale

    def apply(self, state, key, x, step, hparams):
        return x + self.current_scale(step, hparams) * jax.random.normal(key, x.shape, x.dtype)

    def update(self, state, stats):
        return state, {"instance_noise": self.current_scale(stats.step, stats.hparams)}


@dataclasses.dataclass(frozen=True)
class Objective:
    """A weighted sum of D terms and G terms. Add objectives with ``+``; scale them with ``*``."""
    terms: tuple[Term, ...]
    hparams: Mapping[str, float] = dataclasses.field(default_factory=dict)
    transforms: tuple[InputTransform, ...] = ()  # of D's inputs, applied in this order

    def __post_init__(self):
        names = [(t.player, t.name) for t in self.terms]
        duplicates = {n for n in names if names.count(n) > 1}
        if duplicates:
            raise ValueError(f"objective has duplicate terms {sorted(duplicates)}; give each term its own name")
        names = [t.name for t in self.transforms]
        if len(set(names)) != len(names):
            raise ValueError(f"objective has duplicate input transforms {names}")

    def __add__(self, other: "Objective") -> "Objective":
        if not isinstance(other, Objective):
            return NotImplemented
        return Objective(self.terms + other.terms, {**self.hparams, **other.hparams},
                         self.transforms + other.transforms)

    def __mul__(self, weight: float) -> "Objective":
        weight = float(weight)
        if weight < 0:
            raise ValueError(f"objective weight must be >= 0, got {weight}")
        return dataclasses.replace(self, terms=tuple(dataclasses.replace(t, weight=t.weight * weight)
                                                     for t in self.terms))

    __rmul__ = __mul__

    def weighted_by(self, hparam: str, default: float) -> "Objective":
        """Every term's weight is multiplied by the run-time hyperparameter ``hparam`` (default ``default``)."""
        if default < 0:
            raise ValueError(f"{hparam} must be >= 0, got {default}")
        return dataclasses.replace(self, terms=tuple(dataclasses.replace(t, weight_hparam=hparam) for t in self.terms),
                                   hparams={**self.hparams, hparam: float(default)})

    def every(self, k: int) -> "Objective":
        """Lazy regularization (StyleGAN2): every term runs on one update in ``k`` (the player's update counter,
        ``step % k == 0``) with its weight multiplied by ``k``, so its average contribution is unchanged."""
        if int(k) != k or k < 1:
            raise ValueError(f"every must be an integer >= 1, got {k}")
        return dataclasses.replace(self, terms=tuple(dataclasses.replace(t, every=int(k)) for t in self.terms))

    @property
    def d_terms(self) -> tuple[Term, ...]:
        return tuple(t for t in self.terms if t.player == "d")

    @property
    def g_terms(self) -> tuple[Term, ...]:
        return tuple(t for t in self.terms if t.player == "g")

    @property
    def g_needs_real(self) -> bool:
        return any(t.needs_real for t in self.g_terms)

    @property
    def g_runs_generator(self) -> bool:
        return any(t.runs_generator for t in self.g_terms)

    @property
    def has_gradient_penalty(self) -> bool:
        return any(t.needs_input_gradients for t in self.d_terms)

    @property
    def batch_norm_free_terms(self) -> tuple[str, ...]:
        """Names of the terms that need a D without BatchNorm (input gradients, or D on batches of their own)."""
        return tuple(dict.fromkeys(t.name for t in self.terms if t.needs_input_gradients or t.per_example_d))

    def evaluate(self, player: str, inputs: TermInputs) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Weighted total of ``player``'s terms and each term's unweighted value (for the metrics); metric-only
        terms are reported, not added."""
        terms = self.d_terms if player == "d" else self.g_terms
        keys = jax.random.split(inputs.key, max(len(terms), 1))
        shared = (None,) * len(terms) if inputs.shared_key is None else jax.random.split(inputs.shared_key,
                                                                                           max(len(terms), 1))
        total = jnp.zeros((), jnp.float32)
        values = {}
        for term, key, shared_key in zip(terms, keys, shared):
            value = term.value(inputs._replace(key=key, shared_key=shared_key))
            values[term.name] = value
            if not term.metric_only:
                total = total + term.weight_value(inputs.hparams) * value
        return total, values


def _loss_objective(d_fn: TermFn, g_fn: TermFn, hparams=None, g_needs_real=False) -> Objective:
    return Objective((Term("loss", "d", d_fn), Term("loss", "g", g_fn, needs_real=g_needs_real)), dict(hparams or {}))


  # ----------------------------------------------------------------------------- named losses

def non_saturating(label_smoothing: float = 0.0) -> Objective:
    """The JSD game with the non-saturating G loss -log D(G(z)) (Goodfellow et al. 2014, section 3).

    ``label_smoothing`` s (hparam): D's target for real examples is ``1 - s/2`` (TF-GAN's smoothing,
    `jaxgan.losses`); fake targets and G's loss are not smoothed.
    """
    return _loss_objective(
        lambda t: losses.modified_discriminator_loss(t.real_outputs, t.fake_outputs,
                                                     label_smoothing=t.hparams["label_smoothing"]),
        lambda t: losses.modified_generator_loss(t.fake_outputs),
        {"label_smoothing": label_smoothing})


def minimax(label_smoothing: float = 0.0) -> Objective:
    """The original minimax JSD game: G minimises log(1 - D(G(z))), which saturates when D wins.

    ``label_smoothing`` s (hparam): D's target for real examples is ``1 - s/2``, as in `non_saturating`.
    """
    return _loss_objective(
        lambda t: losses.minimax_discriminator_loss(t.real_outputs, t.fake_outputs,
                                                    label_smoothing=t.hparams["label_smoothing"]),
        lambda t: losses.minimax_generator_loss(t.fake_outputs),
        {"label_smoothing": label_smoothing})


def least_squares(real_label: float = 1.0, fake_label: float = 0.0) -> Objective:
    """LSGAN (Mao et al. 2017) with labels a = fake_label, b = c = real_label."""
    return _loss_objective(
        lambda t: losses.least_squares_discriminator_loss(t.real_outputs, t.fake_outputs, real_label=real_label,
                                                          fake_label=fake_label),
        lambda t: losses.least_squares_generator_loss(t.fake_outputs, real_label=real_label))


def wasserstein() -> Objective:
    """WGAN (Arjovsky et al. 2017); pair it with weight clipping or a gradient penalty."""
    return _loss_objective(lambda t: losses.wasserstein_discriminator_loss(t.real_outputs, t.fake_outputs),
                           lambda t: losses.wasserstein_generator_loss(t.fake_outputs))


def hinge(real_hinge: float = 1.0, generated_hinge: float = 1.0) -> Objective:
    """Hinge loss of SNGAN/SAGAN/BigGAN."""
    return _loss_objective(
        lambda t: losses.wasserstein_hinge_discriminator_loss(t.real_outputs, t.fake_outputs, real_hinge=real_hinge,
                                                              generated_hinge=generated_hinge),
        lambda t: losses.wasserstein_hinge_generator_loss(t.fake_outputs))


def relativistic() -> Objective:
    """Relativistic average GAN (RaSGAN); its G loss also looks at D(real)."""
    return _loss_objective(lambda t: losses.relativistic_discriminator_loss(t.real_outputs, t.fake_outputs),
                           lambda t: losses.relativistic_generator_loss(t.real_outputs, t.fake_outputs),
                           g_needs_real=True)


def f_gan(divergence: str) -> Objective:
    """f-GAN (Nowozin et al. 2016) for one of `losses.F_DIVERGENCES`, with the non-saturating G loss."""
    losses.f_divergence(divergence)  # validates the name now rather than at trace time
    return _loss_objective(
        lambda t: losses.f_divergence_discriminator_loss(t.real_outputs, t.fake_outputs, divergence),
        lambda t: losses.f_divergence_generator_loss(t.fake_outputs, divergence))


def realness_gan(outcomes: int = realness.DEFAULT_OUTCOMES, anchors: str = "gaussian_uniform", *,
                 generator: str = "relativistic_anchor", skew: float = 1.0) -> Objective:
    """Realness GAN (Xiangli et al. 2020; the functions of `jaxgan.realness`): D outputs [B, outcomes] logits, a
    distribution over outcomes. D term ``loss``: KL(A1 || D(x)) + KL(A0 || D(G(z))); G term ``loss``: one of
    `realness.GENERATOR_OBJECTIVES`. Metric-only D terms ``realness_real`` / ``realness_fake``: the mass D puts on
    the outcomes where the real anchor outweighs the fake one (`realness.real_side_mass`)."""
    if generator not in realness.GENERATOR_OBJECTIVES:
        raise ValueError(f"realness generator objective {generator!r} is not one of {realness.GENERATOR_OBJECTIVES}")
    a0, a1 = (a.astype("float32") for a in realness.anchors(anchors, outcomes, skew))
    return Objective((
        Term("loss", "d", lambda t: realness.discriminator_loss(t.real_outputs, t.fake_outputs, a0, a1)),
        Term("realness_real", "d", lambda t: realness.real_side_mass(t.real_outputs, a0, a1), metric_only=True),
        Term("realness_fake", "d", lambda t: realness.real_side_mass(t.fake_outputs, a0, a1), metric_only=True),
        Term("loss", "g", lambda t: realness.generator_loss(t.real_outputs, t.fake_outputs, a0, a1, generator),
             needs_real=generator != "anchors"),
    ))


  # ----------------------------------------------------------------------------- penalties as D terms

# Labels of a conditional D in the penalties: R1 and DRAGAN evaluate D at (perturbed) real examples with their
# own labels, R2 at generated examples with the labels G was given. WGAN-GP's interpolate between real example i
# and fake example i takes real example i's label (as StudioGAN and the BigGAN-PyTorch code do): the penalty then
# constrains D's slope along the line towards the real example, for that example's class.

def gradient_penalty(target: float = 1.0, one_sided: bool = False, epsilon: float = 1e-10) -> Objective:
    """WGAN-GP term on interpolates between real and fake (real labels); weight it with ``*`` (10 in the paper)."""
    return Objective((Term("gradient_penalty", "d", lambda t: penalties.gradient_penalty(
        t.d_on(t.real_labels), t.real, t.fake, t.key, target=target, one_sided=one_sided, epsilon=epsilon),
        needs_input_gradients=True),))


def r1() -> Objective:
    """R1 term E||grad D(real)||^2; Mescheder et al.'s gamma corresponds to the weight gamma / 2."""
    return Objective((Term("r1", "d", lambda t: penalties.r1_penalty(t.d_on(t.real_labels), t.real),
                           needs_input_gradients=True),))


def r2() -> Objective:
    """R2 term E||grad D(fake)||^2, D given the labels G was given for the fakes."""
    return Objective((Term("r2", "d", lambda t: penalties.r2_penalty(t.d_on(t.fake_labels), t.fake),
                           needs_input_gradients=True),))


def dragan(target: float = 1.0, perturbation: float = 0.5) -> Objective:
    """DRAGAN term on perturbed real data (Kodali et al. 2017), real labels."""
    return Objective((Term("dragan", "d", lambda t: penalties.dragan_penalty(
        t.d_on(t.real_labels), t.real, t.key, target=target, perturbation=perturbation),
        needs_input_gradients=True),))


  # ----------------------------------------------------------------------------- auxiliary outputs, transforms

def acgan(label_smoothing: float = 0.0, aux_key: str = "class_logits") -> Objective:
    """ACGAN's auxiliary-classifier terms (Odena et al. 2017) for a D that returns ``(outputs, {aux_key: [B, K]})``.

    D term ``acgan``: softmax cross entropy of D's class logits on real examples (their labels; TF-GAN's
    ``label_smoothing`` on this part only) plus on generated ones (the labels G was given), as
    `losses.acgan_discriminator_loss`; G term ``acgan``: the cross entropy on generated ones
    (`losses.acgan_generator_loss`). Add it to an adversarial loss: ``non_saturating() + acgan()``. Metric-only
    D terms ``class_accuracy_real`` / ``class_accuracy_fake``: the fraction of real (fake) examples whose arg-max
    class logit is their label (the label G was given), logged as ``d/class_accuracy_real`` / ``_fake``.
    """
    def one_hot(logits, labels):
        return jax.nn.one_hot(labels, logits.shape[-1])

    def d_term(t: TermInputs):
        real, fake = t.real_aux[aux_key], t.fake_aux[aux_key]
        return (losses.acgan_generator_loss(fake, one_hot(fake, t.fake_labels))
                + losses.acgan_generator_loss(real, one_hot(real, t.real_labels), label_smoothing=label_smoothing))

    def g_term(t: TermInputs):
        fake = t.fake_aux[aux_key]
        return losses.acgan_generator_loss(fake, one_hot(fake, t.fake_labels))

    def accuracy(logits, labels):
        return jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))

    return Objective((Term("acgan", "d", d_term), Term("acgan", "g", g_term),
                      Term("class_accuracy_real", "d", lambda t: accuracy(t.real_aux[aux_key], t.real_labels),
                           metric_only=True),
                      Term("class_accuracy_fake", "d", lambda t: accuracy(t.fake_aux[aux_key], t.fake_labels),
                           metric_only=True)))


def instance_noise(scale: float = 0.1, anneal_steps: int | None = None) -> Objective:
    """Instance noise on D's inputs (`InstanceNoise`) as an objective to add; its scale is the hparam
    ``instance_noise``."""
    transform = InstanceNoise(scale, anneal_steps)
    return Objective((), dict(transform.hparams), (transform,))


LOSSES: dict[str, Callable[[], Objective]] = {
    "non_saturating": non_saturating,
    "minimax": minimax,
    "least_squares": least_squares,
    "wasserstein": wasserstein,
    "hinge": hinge,
    "relativistic": relativistic,
    **{name: (lambda name=name: f_gan(name)) for name in ("kl", "reverse_kl", "pearson", "hellinger", "js")},
    "realness": lambda: realness_gan(),  # D outputs --realness_outcomes logits (jaxgan.models.heads)
}

PENALTIES: dict[str, Callable[[], Objective] | None] = {
    "none": None,
    "gradient_penalty": gradient_penalty,
    "r1": r1,
    "r2": r2,
    "dragan": dragan,
}


def build(loss: str, penalty: str = "none", penalty_weight: float = 0.0, label_smoothing: float = 0.0) -> Objective:
    """The objective named by ``--loss``/``--penalty``; the penalty weight is the hparam ``penalty_weight``."""
    if loss not in LOSSES:
        raise ValueError(f"--loss={loss!r} is not one of {sorted(LOSSES)}")
    if penalty not in PENALTIES:
        raise ValueError(f"--penalty={penalty!r} is not one of {sorted(PENALTIES)}")
    if penalty_weight < 0:
        raise ValueError(f"--penalty_weight must be >= 0, got {penalty_weight}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"--label_smoothing must be in [0, 1), got {label_smoothing}")
    objective = LOSSES[loss]()
    if "label_smoothing" in objective.hparams:
        objective = dataclasses.replace(objective, hparams={**objective.hparams, "label_smoothing": label_smoothing})
    elif label_smoothing:
        raise ValueError(f"--label_smoothing applies to the JSD losses (non_saturating, minimax), not --loss={loss}")
    if PENALTIES[penalty] is not None:
        objective = objective + PENALTIES[penalty]().weighted_by("penalty_weight", penalty_weight)
    return objective
