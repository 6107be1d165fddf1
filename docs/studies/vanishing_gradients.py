"""Study (b), vanishing generator gradients: G frozen far from the data, D trained towards optimality.

    python docs/studies/vanishing_gradients.py --flagfile=launch/configs/studies/vanishing_gradients.cfg \
        --seeds=8 --workdir=W [--FIELD=VALUE ...]

Runs each ``--losses`` group of the flagfile over ``--seeds`` seeds in one vmapped program (the trainer of
`jaxgan.sweep`, with the sweep's keys and data streams: the same runs as ``launch/sweep.py`` on this flagfile)
and logs, every ``--log_every`` steps and per seed, besides the step's own metrics (``g/grad_norm`` is the norm
of G's *parameter* gradient of its loss against the just-updated D):

* ``d/fake_dx``: mean over the fakes of D's batch of ||grad_x f(x)||, f = D's output (logit or critic value):
  the quantity a gradient penalty targets;
* ``d/fake_dprob_dx``: mean ||grad_x sigmoid(f(x))||, the input gradient of the probability D of Arjovsky &
  Bottou's Theorem 2.4 (its hypothesis: this goes to 0 as D -> D*);
* ``d/fake_prob``: mean sigmoid(f(x)) on the fakes;
* ``d/minimax_dx``, ``d/ns_dx``: mean ||grad_x L_G(x)|| per fake of the minimax loss log(1 - sigmoid(f)) =
  sigmoid(f) ||grad f|| and of the non-saturating -log sigmoid(f) = (1 - sigmoid(f)) ||grad f||.

These are metric-only D terms (`jaxgan.objectives.Term(metric_only=True)`): they never enter a loss. Before
training it checks, per seed, that the frozen G's samples are far from every mode (the supports are disjoint
in practice): ``--check_samples`` samples of G, their smallest distance to a mode in units of the mode std.
Writes ``W/results.json`` (every logged metric per group, seed and step, and the per-seed check) and
``W/curves.png``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from jaxgan import experiment, objectives, penalties, step, sweep
from jaxgan.cli import common
from jaxgan.config import Config
from jaxgan.logging import atomic_open

METRICS = ("fake_dx", "fake_dprob_dx", "fake_prob", "minimax_dx", "ns_dx")


def read_study(path: str, overrides: list[str] = ()) -> tuple[Config, list[str]]:
    """(base Config, ``--losses`` entries) of a study flagfile; flags of ``launch/sweep.py`` alone (such as
    ``--w1_samples``) are left out; ``overrides`` (``--FIELD=VALUE``, ``--losses=...``) come after the file's
    lines."""
    fields = {f.name for f in dataclasses.fields(Config)}
    lines, losses = [], []
    for line in pathlib.Path(path).read_text().splitlines() + list(overrides):
        flag = line.split("#", 1)[0].strip()
        if flag.startswith("--losses="):
            losses = flag.split("=", 1)[1].split(",")
        elif flag.lstrip("-").partition("=")[0] in fields:
            lines.append(flag)
        elif line in overrides:
            raise ValueError(f"{flag}: not a field of jaxgan.config.Config nor --losses")
    with tempfile.NamedTemporaryFile("w", suffix=".cfg") as f:
        f.write("\n".join(lines))
        f.flush()
        return Config(**common.read_flagfile(f.name, Config)), losses


def input_gradient_terms() -> objectives.Objective:
    """The metric-only D terms of the module docstring, on the fakes D is trained on (shapes: fake [B, 2])."""
    def stats(t: objectives.TermInputs):
        f = t.d_fn(t.fake, t.fake_labels).astype(jnp.float32)  # [B]
        grad = jnp.linalg.norm(penalties.input_gradients(t.d_on(t.fake_labels), t.fake).reshape(f.shape[0], -1),
                               axis=-1)  # [B]
        p = jax.nn.sigmoid(f)
        return {"fake_dx": grad, "fake_dprob_dx": p * (1 - p) * grad, "fake_prob": p, "minimax_dx": p * grad,
                "ns_dx": (1 - p) * grad}

    def term(name):
        return objectives.Term(name, "d", lambda t: jnp.mean(stats(t)[name]), needs_input_gradients=True,
                               metric_only=True)
    return objectives.Objective(tuple(term(name) for name in METRICS))


def separation(exp, params, num: int, seed: int) -> dict[str, float]:
    """How far ``num`` samples of the generator ``params`` lie from the mixture's modes (one run)."""
    x = np.asarray(step.sample(exp.generator, params, {}, jax.random.key(10_000 + seed), num, num_classes=0))
    means, std = exp.mixture.means, exp.mixture.std
    dist = np.min(np.linalg.norm(x[:, None, :] - means[None], axis=-1), axis=1)
    return {"max_norm": float(np.max(np.linalg.norm(x, axis=1))), "min_dist_std": float(dist.min() / std),
            "within_3std": float(np.mean(dist < 3 * std))}


def run_group(group: sweep.Group, check_samples: int) -> dict:
    """Trains the runs of one group together; returns {"name", "seeds", "check", "steps", "metrics": {name: [steps,
    runs]}}."""
    config = group.config
    exp = experiment.build(config)
    exp = dataclasses.replace(exp, objective=exp.objective + input_gradient_terms())
    train = sweep.make_trainer(exp, config, vmapped=True)
    keys = jnp.stack([jax.random.key(run.seed) for run in group.runs])
    hparams = {n: jnp.asarray([run.hparams[n] for run in group.runs], jnp.float32) for n in group.runs[0].hparams}
    state = jax.jit(jax.vmap(exp.init))(keys, hparams)
    g0 = jax.device_get(state.g.params)
    check = [separation(exp, jax.tree.map(lambda a: a[i], g0), check_samples, run.seed)
             for i, run in enumerate(group.runs)]
    dkeys = jnp.stack([jax.random.fold_in(k, 0x5EED) for k in keys])
    steps, logged = [], {}
    for t0 in range(0, config.steps, config.log_every):
        state, metrics = train(state, dkeys, jnp.asarray(t0, jnp.int32), None, length=config.log_every)
        steps.append(t0 + config.log_every)
        for name, value in jax.device_get(metrics).items():
            logged.setdefault(name, []).append([float(f"{v:.5g}") for v in np.asarray(value)[-1]])  # [runs]
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(g0),
                                                             jax.tree.leaves(jax.device_get(state.g.params))))
    return {"name": group.name, "seeds": [run.seed for run in group.runs], "check": check,
            "g_max_weight_change": moved, "steps": steps, "metrics": logged}


def plot(results: list[dict], out: pathlib.Path) -> None:
    """Median over seeds (line) and the per-seed range (band) of four metrics against steps, log scale."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [("g/grad_norm", "||grad_theta L_G|| (G's parameter gradient)"), ("d/fake_dx", "||grad_x f|| on fakes"),
              ("d/fake_dprob_dx", "||grad_x sigmoid(f)|| on fakes"), ("d/fake_prob", "sigmoid(f) on fakes")]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    for ax, (key, title) in zip(axes, panels):
        for r in results:
            v = np.asarray(r["metrics"][key])  # [steps, runs]
            ax.plot(r["steps"], np.median(v, axis=1), label=r["name"])
            ax.fill_between(r["steps"], v.min(axis=1), v.max(axis=1), alpha=0.2)
        ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("D step")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=90)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flagfile", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--check_samples", type=int, default=100_000)
    args, overrides = parser.parse_known_args(argv)  # the rest: --FIELD=VALUE config overrides
    try:
        base, losses = read_study(args.flagfile, overrides)
        groups = sweep.plan(base, seeds=args.seeds, groups=[sweep.parse_group_entry(e) for e in losses])
        for group in groups:
            experiment.validate(group.config)
    except (OSError, ValueError) as e:  # ConfigError and SweepError are ValueErrors
        print(f"error: {e}", file=sys.stderr)
        return 2
    results = []
    for group in groups:
        results.append(run_group(group, args.check_samples))
        print(f"{group.name}: done", flush=True)
    workdir = pathlib.Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    with atomic_open(workdir / "results.json") as f:
        f.write(json.dumps({"flagfile": args.flagfile, "config": dataclasses.asdict(base), "groups": results}).encode())
    plot(results, workdir / "curves.png")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
