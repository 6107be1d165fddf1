"""PacGAN's Table 1 next to ours, and the budget curves, from the ``results.json`` of the two study sweeps.

    python launch/sweep.py --flagfile=launch/configs/studies/pacgan_table1_ring.cfg --workdir=WR --seeds=10 \
        --chunk=10 --steps=N --log_every=K
    python launch/sweep.py --flagfile=launch/configs/studies/pacgan_table1_grid.cfg --workdir=WG --seeds=10 \
        --chunk=10 --steps=N --log_every=K
    python docs/studies/pacgan_table1/table.py WR WG [--out=DIR]

Prints (markdown) the final table, mean ± standard error over the seeds of each row, beside the published row
and the distance between them in standard errors of the difference, and the curves: the same three metrics at
every evaluation step, mean ± s.e. over the seeds; writes ``DIR/curves.png`` (default: this script's folder).
The metrics are `jaxgan.metrics.modes.mode_metrics` on 2,500 samples per run: modes with at least one
high-quality sample (within 3 std of its nearest mode), the fraction of high-quality samples, and the reverse KL
of the high-quality samples' mode histogram to the uniform one (natural log), the definitions of PacGAN's code.
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib

import numpy as np

# Lin et al. 2018, Table 1 (mean of 10 trials +- standard error): (modes, % high quality, reverse KL)
PUBLISHED = {
    "ring8": {1: ((6.3, 0.5), (98.2, 0.2), (0.45, 0.09)), 2: ((7.9, 0.1), (95.6, 2.0), (0.07, 0.03)),
              3: ((7.8, 0.1), (97.7, 0.3), (0.10, 0.02)), 4: ((7.8, 0.1), (95.9, 1.4), (0.07, 0.02))},
    "grid25": {1: ((17.3, 0.8), (94.8, 0.7), (0.70, 0.07)), 2: ((23.8, 0.7), (91.3, 0.8), (0.13, 0.04)),
               3: ((24.6, 0.4), (94.2, 0.4), (0.06, 0.02)), 4: ((24.8, 0.2), (93.6, 0.6), (0.04, 0.01))},
}
METRICS = (("modes_captured", 1.0), ("high_quality_fraction", 100.0), ("reverse_kl", 1.0))


def packing_of(group: str) -> int:
    """The packing degree m of a study group name ("non_saturating+packing=3+batch_size=300" -> 3)."""
    for part in group.split("+"):
        if part.startswith("packing="):
            return int(part.split("=")[1])
    return 1


def mean_se(values) -> tuple[float, float]:
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0


def load(workdir: str) -> tuple[str, int, dict[int, list[dict]]]:
    """(dataset, steps, {m: runs}) of a finished study workdir."""
    results = json.loads((pathlib.Path(workdir) / "results.json").read_text())
    runs: dict[int, list[dict]] = {}
    for run in results["runs"]:
        runs.setdefault(packing_of(run["group"]), []).append(run)
    return results["study"]["base"]["dataset"], results["study"]["steps"], runs


def final_table(dataset: str, steps: int, runs: dict[int, list[dict]]) -> str:
    lines = [f"{dataset}, {steps} steps ({steps / 1000:g} epochs of the 100,000-point set at batch 100), "
             f"{len(next(iter(runs.values())))} seeds per row; published: PacGAN's Table 1 (400 epochs); "
             "|z|: |ours - published| / sqrt(se_ours^2 + se_pub^2)", "",
             "| row | modes | published | \\|z\\| | % HQ | published | \\|z\\| | rev. KL | published | \\|z\\| |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for m in sorted(runs):
        cells = [f"PacGAN{m}" if m > 1 else "GAN"]
        for (name, scale), (pub, pub_se) in zip(METRICS, PUBLISHED[dataset][m]):
            mean, se = mean_se([scale * r["final"][name] for r in runs[m]])
            z = abs(mean - pub) / max(math.hypot(se, pub_se), 1e-12)
            cells += [f"{mean:.2f} ± {se:.2f}", f"{pub} ± {pub_se}", f"{z:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def curves(runs: dict[int, list[dict]]) -> dict[int, dict[str, np.ndarray]]:
    """{m: {"step": [T], metric: [T, seeds]}} over the evaluations of every run."""
    out = {}
    for m, rs in runs.items():
        steps = [e["step"] for e in rs[0]["evals"]]
        out[m] = {"step": np.asarray(steps)}
        for name, scale in METRICS:
            out[m][name] = np.asarray([[scale * e[name] for e in r["evals"]] for r in rs]).T
    return out


def curve_table(dataset: str, curve: dict[int, dict[str, np.ndarray]]) -> str:
    lines = [f"{dataset}: mean ± s.e. over the seeds at each evaluation", "",
             "| step | " + " | ".join(f"{'GAN' if m == 1 else f'PacGAN{m}'} modes / % HQ / rev. KL"
                                       for m in sorted(curve)) + " |",
             "|---|" + "---|" * len(curve)]
    for t, step in enumerate(curve[min(curve)]["step"]):
        cells = []
        for m in sorted(curve):
            cells.append(" / ".join("{:.2f} ± {:.2f}".format(*mean_se(curve[m][name][t])) for name, _ in METRICS))
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(datasets: list[tuple[str, dict]], path: pathlib.Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(datasets), 3, figsize=(13, 3.6 * len(datasets)), squeeze=False)
    for row, (dataset, curve) in enumerate(datasets):
        for col, (name, _) in enumerate(METRICS):
            ax = axes[row, col]
            for m in sorted(curve):
                mean = curve[m][name].mean(axis=1)
                se = curve[m][name].std(axis=1, ddof=1) / math.sqrt(curve[m][name].shape[1])
                label = "GAN" if m == 1 else f"PacGAN{m}"
                ax.plot(curve[m]["step"], mean, label=label)
                ax.fill_between(curve[m]["step"], mean - se, mean + se, alpha=0.2)
                pub = PUBLISHED[dataset][m][col][0]
                ax.axhline(pub, ls=":", lw=0.8, color=ax.lines[-1].get_color())
            ax.set_title(f"{dataset}: {name} (dotted: published, 400k steps)", fontsize=9)
            ax.set_xlabel("step")
        axes[row, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("workdirs", nargs="+", help="finished study workdirs (ring8 and/or grid25)")
    p.add_argument("--out", default=str(pathlib.Path(__file__).parent))
    args = p.parse_args(argv)
    plotted = []
    for workdir in args.workdirs:
        dataset, steps, runs = load(workdir)
        curve = curves(runs)
        print(final_table(dataset, steps, runs), "\n")
        print(curve_table(dataset, curve), "\n")
        plotted.append((dataset, curve))
    plot(plotted, pathlib.Path(args.out) / "curves.png")


if __name__ == "__main__":
    main()
