"""Write generator samples of a run: ``jaxgan-sample --workdir=W --num=N --seed=S --out=F.npy``
(``python -m jaxgan.cli.sample``, or ``python launch/sample.py`` in a checkout).

Samples come from the newest checkpoint (or ``--step``), with EMA weights when the run used EMA and
BatchNorm in inference mode. The format follows ``--out`` unless ``--format`` is given: ``F.npy`` writes
float32 data-space samples [N, ...]; ``F.png`` one grid picture; ``--nogrid`` one PNG per sample into the
directory ``--out`` (png: images only). A suffix that contradicts ``--format`` is refused.
Exit codes: 0 written; 2 bad input (one "error:" line on stderr, nothing written); 130 interrupted (SIGINT/SIGTERM:
one line on stderr).
"""
from __future__ import annotations

import pathlib

from absl import flags  # noqa: E402

from jaxgan import interrupts  # noqa: E402  (imports no JAX)

STOP = interrupts.install()  # before JAX loads: Ctrl-C stops cleanly (jaxgan.interrupts)

from jaxgan.experiment import ConfigError  # noqa: E402
from jaxgan.cli import common as _common  # noqa: E402

flags.DEFINE_string("workdir", None, "workdir of a training run", required=True)
flags.DEFINE_integer("num", 64, "number of samples")
flags.DEFINE_integer("seed", 0, "seed of the latents")
flags.DEFINE_string("out", None, "output file (.npy or .png) or directory (png, --nogrid)", required=True)
flags.DEFINE_enum("format", None, ["npy", "png"], "npy: float32 samples; png: pictures (image models); default: "
                  "from --out (.png: png, .npy: npy, --nogrid: png)")
flags.DEFINE_bool("grid", True, "png: one grid picture (else one file per sample)")
flags.DEFINE_float("truncation", None, "truncation trick (image models): latents resampled until |z| <= truncation")
flags.DEFINE_integer("label", None, "class of every sample (conditional models; default: random classes)")
flags.DEFINE_integer("step", None, "checkpoint step (default: the newest)")
FLAGS = flags.FLAGS

MAX_NUM = 10**7
MAX_GRID = 4096  # samples in one --format=png grid picture (64 x 64 tiles)
MAX_BYTES = 2**31  # float32 samples held in memory and written
BATCH = 1000  # samples per generator call beyond this many


def output_format(out: str, fmt: str | None, grid: bool) -> str:
    """"npy" or "png" for ``--out``/``--format``/``--grid``; raises ConfigError for a contradiction."""
    suffix = pathlib.Path(out).suffix.lower()
    if fmt is None:
        fmt = "png" if suffix == ".png" or (not grid and suffix != ".npy") else "npy" if suffix == ".npy" else None
        if fmt is None:
            raise ConfigError(f"--out={out}: cannot tell the format from the suffix {suffix!r}; end it in .npy or "
                              f".png, or pass --format=npy|png")
    if fmt == "npy" and suffix != ".npy":
        raise ConfigError(f"--out={out} does not end in .npy, the file --format=npy writes (np.save would append "
                          f".npy); use --out=NAME.npy, or --format=png for pictures")
    if fmt == "npy" and FLAGS["grid"].present:
        raise ConfigError("--grid/--nogrid has no effect: it applies to --format=png")
    if fmt == "png" and grid and suffix != ".png":
        raise ConfigError(f"--out={out} does not end in .png, the grid picture --format=png writes; use "
                          f"--out=NAME.png, or --nogrid to write one PNG per sample into the directory --out")
    if fmt == "png" and not grid and suffix in (".png", ".npy"):
        raise ConfigError(f"--out={out}: --nogrid writes one PNG per sample into the directory --out; give a "
                          f"directory name (no .png/.npy suffix)")
    return fmt


def check_flags() -> str:
    """Checks the flags that need no workdir; returns the output format."""
    _common.check_int("num", FLAGS.num, 1, MAX_NUM)
    _common.check_int("seed", FLAGS.seed, 0, 2**32 - 1)
    _common.check_positive_float("truncation", FLAGS.truncation)
    if FLAGS.label is not None:
        _common.check_int("label", FLAGS.label, 0, 2**31 - 1)
    if FLAGS.step is not None:
        _common.check_int("step", FLAGS.step, 0, 2**31 - 1)
    fmt = output_format(FLAGS.out, FLAGS.format, FLAGS.grid)
    if fmt == "png" and FLAGS.grid:
        _common.check_int("num", FLAGS.num, 1, MAX_GRID, " for one --format=png grid (--nogrid: one file each)")
    _common.check_writable("out", FLAGS.out, directory=fmt == "png" and not FLAGS.grid)
    return fmt


def check_run(exp, fmt: str) -> None:
    """Checks the flags against the run: png and truncation need images, --label a conditional run."""
    import numpy as np
    if fmt == "png" and exp.config.is_toy:
        raise ConfigError("--format=png is for image models; 2D samples are written with --format=npy")
    if FLAGS.truncation is not None and exp.config.is_toy:
        raise ConfigError(f"--truncation applies to image models, not the 2D --dataset={exp.config.dataset}")
    if FLAGS.label is not None:
        if not exp.num_classes:
            raise ConfigError("--label needs a class-conditional run (trained with --conditional)")
        if not 0 <= FLAGS.label < exp.num_classes:
            raise ConfigError(f"--label={FLAGS.label} is not in [0, {exp.num_classes})")
    size = 4 * int(np.prod(exp.data_shape))
    _common.check_int("num", FLAGS.num, 1, MAX_BYTES // size, f" for this run's {exp.data_shape} samples (2 GiB "
                                                              f"of float32)")


def generate(exp, state, key, num: int):
    """[num, ...] float32 samples; calls of at most BATCH samples (one call, with ``key`` itself, up to BATCH)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxgan.step import sample
    from jaxgan.experiment import sample_params

    def call(k, n):
        labels = None if FLAGS.label is None else jnp.full((n,), FLAGS.label, jnp.int32)
        return np.asarray(sample(exp.generator, sample_params(state, exp.config), state.g.model_state, k, n,
                                 labels=labels, num_classes=exp.num_classes, truncation=FLAGS.truncation), np.float32)

    if num <= BATCH:
        return call(key, num)
    out = np.empty((num, *exp.data_shape), np.float32)
    for i, start in enumerate(range(0, num, BATCH)):
        out[start:start + BATCH] = call(jax.random.fold_in(key, i), BATCH)[:num - start]
    return out


def write(out: pathlib.Path, x, fmt: str, grid: bool) -> None:
    import numpy as np

    from jaxgan import logging as log_lib
    if fmt == "npy":
        with log_lib.atomic_open(out) as f:
            np.save(f, x)
    elif grid:
        out.parent.mkdir(parents=True, exist_ok=True)
        log_lib.save_image_grid(out, x)
    else:
        out.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(x):
            log_lib.save_png(out / f"sample_{i:05d}.png", log_lib.image_grid(image[None], ncols=1, padding=0))


def main(argv):
    if not _common.begin(argv):
        return 2

    def run():
        import jax

        from jaxgan.training import load_run

        fmt = check_flags()
        exp, state = load_run(FLAGS.workdir, FLAGS.step)
        check_run(exp, fmt)
        x = generate(exp, state, jax.random.key(FLAGS.seed), FLAGS.num)
        out = pathlib.Path(FLAGS.out)
        write(out, x, fmt, FLAGS.grid)  # an OSError (disk full) is run_with_clean_errors' one line
        print(f"wrote {FLAGS.num} samples {tuple(x.shape[1:])} to {out}")

    return interrupts.run_or_stop_at_once(lambda: _common.run_with_clean_errors(run, (ConfigError,)), STOP,
                                          "interrupted; stopped at once")


def entry_point() -> None:
    """The ``jaxgan-sample`` console script, ``python -m jaxgan.cli.sample`` and ``launch/sample.py``."""
    _common.run_app(main, __doc__)


if __name__ == "__main__":
    entry_point()
