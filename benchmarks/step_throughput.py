"""Train-step throughput of a jaxgan model (steps/s, images/s, compile time, FLOPs), optionally vs PyTorch.

    python benchmarks/step_throughput.py --model=dcgan --image_size=64 --channels=3 --batch_size=64
    python benchmarks/step_throughput.py --model=dcgan --image_size=32 --channels=1 --compare_torch
    python benchmarks/step_throughput.py --model=mlp --batch_size=256 --steps_per_call=1,10,100
    python benchmarks/step_throughput.py --model=sngan --image_size=32 --channels=3
    python benchmarks/step_throughput.py --model=dcgan --compute_dtype=bfloat16
    python benchmarks/step_throughput.py --model=sngan --image_size=128 --batch_size=64 --compare_torch --peak  # GPU
    python benchmarks/step_throughput.py --flagfile=launch/configs/stylegan2_digits32.cfg
    python benchmarks/step_throughput.py --flagfile=digits32_biggan.cfg --model=biggan_deep
    python benchmarks/step_throughput.py --model=stylegan2 --image_size=32 --width=32 --set mapping_layers=2 \
        --set penalty=r1 --set penalty_weight=0.005 --set penalty_every=16
    python benchmarks/step_throughput.py --model=biggan --conditional --image_size=32 --num_classes=10

The settings: ``--flagfile`` (a path or a shipped config's name) gives a launcher flagfile's model, objective
and optimization flags and its image size and channels; its data, loop, evaluation and mesh flags (--dataset,
--steps, --log_every, ...) are ignored, since the benchmark times the step on random data of that shape (a 2D
flagfile's mixture is kept). The options --model ... --seed override it, and ``--set KEY=VALUE`` (repeatable)
overrides any `Config` field last. Without a flagfile the defaults are --model=dcgan at 64x64x3.
``--conditional`` draws random integer labels in [0, --num_classes) (10; the dataset's count in training, e.g.
1000 for ImageNet). The JSON line records the flagfile and every Config field that differs from its default.

What is timed: the real train step (`jaxgan.experiment.Experiment.train_step`, the one ``launch/train.py`` runs:
n_critic D updates then one G update, Adam, the --loss objective, metrics), jitted with the state donated, on random
data already on the device (no input pipeline, no logging). The program is compiled ahead of time
(``jit(...).lower(...).compile()``: that is ``compile_sec``), warmed up, then ``--blocks`` blocks of
``--block_steps`` steps are timed with ``block_until_ready`` and the median block gives steps/s. FLOPs per step
are those of the network's convolutions and matmuls in one step, counted on the jaxpr (`network_flops`), with
lazy regularizers (StyleGAN2's R1 every --penalty_every D updates, path length every 4 G updates) amortized
over their period (``flops_per_step``; ``flops_per_step_all_lazy``: a step on which they all run); XLA's
own ``cost_analysis()`` of the compiled program is reported beside it (``xla_flops_per_step``; it does not
count custom calls: cuDNN convolutions on GPU, oneDNN's on CPU).

``--steps_per_call=K`` runs K steps per jitted call (`jaxgan.step.make_multi_step`, ``lax.scan``; ``--unroll``
inlines them). A comma-separated list measures several values, interleaved.

``--compare_torch`` (DCGAN and SNGAN at 32/64/128 px; needs ``pip install torch``, skipped with a message
otherwise) builds the identical network and step in PyTorch eager (``benchmarks/torch_dcgan.py``,
``benchmarks/torch_sngan.py``) on the accelerator JAX uses (CUDA when JAX runs on a GPU, with
``cudnn.benchmark``; else CPU), in the same ``--compute_dtype`` (bfloat16 = ``torch.autocast``), asserts equal
parameter counts, and alternates timed blocks of jaxgan and torch in this process (same load on the shared
machine), printing both medians and the paired ratio (median of per-block-pair ratios).
The torch steps timed are ``--torch_variant`` (default ``jaxgan,examples``): ``jaxgan`` is jaxgan's step
(fresh latents and a second G forward for the G update), ``examples`` the pytorch/examples reference loop (DCGAN;
the D update's fake serves the G update: one G forward per step), the schedule of jaxgan's
``--set g_latents=reuse``. ``VARIANT@MODE`` (e.g. ``examples@max-autotune``) runs that step with G and D under
``torch.compile(mode=MODE)`` (compiled in the warm-up, before timing). The JSON's flat torch fields are the
first variant's; ``torch_by_variant`` has each.

``--peak`` measures an 8192^3 matmul in ``--compute_dtype`` (JAX's default precision: TF32 for float32 on
Ampere/Hopper GPUs) and reports the fraction of it, and of the datasheet peak for H100/H200, that each step reaches
(``flops_per_step``; the torch step computes the same network, so the same count).

``--conv_impl`` overrides the convolution formulation of `jaxgan.models.layers` (default ``auto``; ``xla`` = plain
flax/XLA convolutions) to measure the variants.

The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.extend.core import Literal  # noqa: E402
import numpy as np  # noqa: E402

from jaxgan import experiment as experiment_lib  # noqa: E402
from jaxgan.data import toy  # noqa: E402
from jaxgan.experiment import Config  # noqa: E402
from jaxgan.models import layers  # noqa: E402
from jaxgan.step import make_multi_step  # noqa: E402


BENCH_DEFAULTS = {"model": "dcgan", "image_size": 64, "channels": 3}  # where they differ from Config's
# Config fields that become benchmark options of the same name (default None: flagfile, then BENCH_DEFAULTS/Config)
CONFIG_OPTIONS = ("model", "image_size", "channels", "batch_size", "width", "loss", "penalty", "d_normalization",
                  "n_critic", "compute_dtype", "seed")
# Flagfile sections the benchmark replaces (random data, its own loop) and the data fields it keeps
IGNORED_SECTIONS = ("data", "loop", "evaluation", "mesh")
KEPT_DATA_FIELDS = ("image_size", "channels")


def parse_args(argv=None):
    """The benchmark's options; ``args.config_fields`` holds the Config fields they resolve to (BENCH_DEFAULTS,
    then ``--flagfile``, then the dedicated options, then ``--set``), and each dedicated option its final value.
    Bad ``--flagfile``/``--set`` values: one ``error:`` line, exit 2."""
    from jaxgan import models
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, choices=list(models.MODELS), help="default: dcgan")
    p.add_argument("--image_size", type=int, default=None, help="default: 64")
    p.add_argument("--channels", type=int, default=None, help="default: 3")
    p.add_argument("--batch_size", type=int, default=None, help="default: 64")
    p.add_argument("--width", type=int, default=None, help="0: the model's default")
    p.add_argument("--loss", default=None, help="default: non_saturating")
    p.add_argument("--penalty", default=None, help="default: none")
    p.add_argument("--d_normalization", default=None)
    p.add_argument("--n_critic", type=int, default=None, help="default: 1")
    p.add_argument("--compute_dtype", default=None, choices=["float32", "bfloat16"])
    p.add_argument("--conditional", action="store_true", help="class-conditional G and D (random labels)")
    p.add_argument("--num_classes", type=int, default=10, help="classes of --conditional's random labels")
    p.add_argument("--flagfile", default="", help="a jaxgan flagfile (path or shipped config name): its model, "
                   "objective and optimization flags, image_size and channels; data, loop, evaluation and mesh "
                   "flags are ignored (random data, the benchmark's loop)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="set any Config field (repeatable; last wins, over --flagfile and the options above)")
    p.add_argument("--steps_per_call", default="1", help="K or a comma-separated list of K")
    p.add_argument("--unroll", action="store_true", help="inline the K steps instead of lax.scan")
    p.add_argument("--conv_impl", default="auto", help="jaxgan.models.layers implementation override")
    p.add_argument("--blocks", type=int, default=5, help="timed blocks (per implementation)")
    p.add_argument("--block_sec", type=float, default=2.0, help="target seconds per block (sets steps per block)")
    p.add_argument("--block_steps", type=int, default=0, help="steps per block (0: from --block_sec)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls after compilation")
    p.add_argument("--compare_torch", action="store_true")
    p.add_argument("--torch_variant", default="jaxgan,examples",
                   help="comma-separated torch steps to time: jaxgan (jaxgan's step), examples (the pytorch/examples "
                        "reference loop: one G forward per step; DCGAN only); either with @MODE runs G and D "
                        "under torch.compile(mode=MODE), MODE one of " + ", ".join(TORCH_COMPILE_MODES))
    p.add_argument("--torch_channels_last", action="store_true")
    p.add_argument("--torch_threads", type=int, default=0, help="0: torch's default")
    p.add_argument("--peak", action="store_true",
                   help="also measure a large matmul's TFLOP/s in --compute_dtype and report the fraction of it "
                        "(and of the datasheet peak, for known GPUs) that the step reaches")
    p.add_argument("--seed", type=int, default=None, help="default: 0")
    args = p.parse_args(argv)
    args.torch_variants = [v for v in args.torch_variant.split(",") if v]
    unknown = sorted(v for v in args.torch_variants if v.partition("@")[0] not in ("jaxgan", "examples")
                     or ("@" in v and v.partition("@")[2] not in TORCH_COMPILE_MODES))
    if unknown or not args.torch_variants:
        print(f"error: --torch_variant={args.torch_variant}: accepted: jaxgan, examples, each optionally with "
              f"@MODE, MODE one of {', '.join(TORCH_COMPILE_MODES)} (comma-separated)", file=sys.stderr)
        sys.exit(2)
    try:
        args.config_fields, args.flagfile_ignored = resolve_config_fields(args)
    except (ValueError, OSError) as e:  # OSError: an unreadable --flagfile
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    config = make_config(args)
    for name in CONFIG_OPTIONS:  # the final values, as the rest of the script (torch twins, JSON) reads them
        setattr(args, name, None if config.is_toy and name in KEPT_DATA_FIELDS else getattr(config, name))
    args.conditional = config.conditional
    return args


def parse_field(name: str, text: str):
    """``text`` as the value of Config field ``name`` (bool: true/false/1/0); ValueError naming what is wrong."""
    from jaxgan.config import field_type
    if name not in Config.__dataclass_fields__:
        raise ValueError(f"--set {name}={text}: {name!r} is not a Config field (the flags of launch/train.py)")
    kind = field_type(name)
    if kind is bool:
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"--set {name}={text}: accepted: true, false, 1, 0")
        return text.lower() in ("true", "1")
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"--set {name}={text}: accepted: {'an integer' if kind is int else 'a number'}") from None


def read_benchmark_flagfile(path: str) -> tuple[dict, list[str]]:
    """(the Config fields of flagfile ``path`` that the benchmark keeps, the names it ignores)."""
    from jaxgan.cli import common
    from jaxgan.config import section_fields
    found = path if os.path.isfile(path) else common.find_shipped_config(path)
    if found is None:
        raise ValueError(f"--flagfile={path}: no such file, nor a shipped config (launch/configs/)")
    fields = common.read_flagfile(found, Config)
    ignored = {n for s in IGNORED_SECTIONS for n in section_fields(s)} - set(KEPT_DATA_FIELDS)
    if fields.get("dataset", "") in toy.TOY_DATASETS:  # 2D data is generated: keep the mixture as configured
        ignored -= {"dataset", "mixture_modes", "mixture_radius", "mixture_std", "mixture_spacing"}
    return {k: v for k, v in fields.items() if k not in ignored}, sorted(set(fields) & ignored)


def resolve_config_fields(args) -> tuple[dict, list[str]]:
    """The Config fields the options set (see `parse_args`), without ``dataset`` unless a 2D flagfile named it;
    and the flagfile's ignored field names."""
    from jaxgan import models
    fields, ignored = read_benchmark_flagfile(args.flagfile) if args.flagfile else ({}, [])
    fields.update({k: getattr(args, k) for k in CONFIG_OPTIONS if getattr(args, k) is not None})
    if args.conditional:
        fields["conditional"] = True
    for item in args.set:
        name, eq, text = item.partition("=")
        if not eq:
            raise ValueError(f"--set {item}: expected KEY=VALUE")
        fields[name.strip()] = parse_field(name.strip(), text.strip())
    if not args.flagfile:  # a flagfile's omissions are Config's defaults
        fields.setdefault("model", BENCH_DEFAULTS["model"])
        if models.MODELS[fields["model"]].data == "image":
            fields = {k: v for k, v in BENCH_DEFAULTS.items() if k in KEPT_DATA_FIELDS} | fields
    return fields, ignored


def make_config(args) -> Config:
    """The benchmarked Config: ``args.config_fields`` on random image data (``random_images``) or, for the 2D
    models, on ring8 (or the 2D dataset a flagfile named)."""
    from jaxgan import models
    fields = dict(args.config_fields)
    if models.MODELS[fields.get("model", Config.model)].data == "2d":
        fields.setdefault("dataset", "ring8")
    else:
        fields["dataset"] = "random_images"
    return Config(**fields)


def random_batch(exp, config: Config, key, leading=()):
    """Uniform [-1, 1] data {"x": [*leading, n_critic, B, *data_shape]}, plus "label" [*leading, n_critic, B]
    int32 in [0, num_classes) for a class-conditional experiment."""
    shape = tuple(leading) + (config.n_critic, config.batch_size) + tuple(exp.data_shape)
    batch = {"x": jax.random.uniform(key, shape, jnp.float32, -1.0, 1.0)}
    if exp.num_classes:
        label_shape = shape[:len(shape) - len(exp.data_shape)]
        batch["label"] = jax.random.randint(jax.random.fold_in(key, 1), label_shape, 0, exp.num_classes, jnp.int32)
    return batch


def _flops(compiled) -> float | None:
    """XLA's FLOP count of a compiled program (None where the backend has none)."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - some backends do not implement it
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    return None if not cost or "flops" not in cost else float(cost["flops"])


def _valid_taps(out: int, kernel: int, inp: int, stride: int, lo: int, lhs_dil: int, rhs_dil: int) -> int:
    """(output position, kernel tap) pairs of one spatial dimension that land on a real input element
    (not on padding or on the holes of an input dilation)."""
    n = 0
    for o in range(out):
        for k in range(kernel):
            q = o * stride + k * rhs_dil - lo
            n += q >= 0 and q % lhs_dil == 0 and q // lhs_dil < inp
    return n


def _conv_flops(eqn) -> float:
    lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
    out = eqn.outvars[0].aval.shape
    p = eqn.params
    dn = p["dimension_numbers"]
    pairs = 1
    for d in range(len(p["window_strides"])):
        pairs *= _valid_taps(out[dn.out_spec[2 + d]], rhs[dn.rhs_spec[2 + d]], lhs[dn.lhs_spec[2 + d]],
                             p["window_strides"][d], p["padding"][d][0], p["lhs_dilation"][d], p["rhs_dilation"][d])
    cin = lhs[dn.lhs_spec[1]] // p["feature_group_count"]
    return 2.0 * out[dn.out_spec[0]] * out[dn.out_spec[1]] * cin * pairs


def _dot_flops(eqn) -> float:
    lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    size = lambda shape, dims: float(np.prod([shape[d] for d in dims])) if dims else 1.0  # noqa: E731
    free_l = [d for d in range(len(lhs)) if d not in lc and d not in lb]
    free_r = [d for d in range(len(rhs)) if d not in rc and d not in rb]
    return 2.0 * size(lhs, lb) * size(lhs, free_l) * size(rhs, free_r) * size(lhs, lc)


def _lazy_period(index, producers: dict) -> int | None:
    """k where a cond's ``index`` is ``int(counter % k == 0)`` with a literal k (the predicate of a lazy
    regularizer, `jaxgan.objectives.Term`: its branch 1 runs on one update in k), else None."""
    e = producers.get(index)
    if e is None or e.primitive.name != "convert_element_type":
        return None
    e = producers.get(e.invars[0])
    if e is None or e.primitive.name != "eq" or not (isinstance(e.invars[1], Literal) and e.invars[1].val == 0):
        return None
    e = producers.get(e.invars[0])
    if e is None or not (e.primitive.name == "rem" or e.params.get("name") == "remainder"):
        return None
    k = e.invars[1]
    return int(k.val) if isinstance(k, Literal) and int(k.val) >= 1 else None


def model_flops(jaxpr, lazy: str = "amortized") -> float:
    """FLOPs of the convolutions and matmuls of a (closed) jaxpr, counting only products with real inputs
    (padding and dilation holes excluded, like XLA's cost analysis and the usual MFU convention), so that the
    formulations of `jaxgan.models.layers` count the same; scan bodies count ``length`` times, while bodies once.
    A cond counts its costliest branch, except a lazy regularizer's (``counter % k == 0``, `_lazy_period`):
    ``lazy="amortized"`` counts it on one call in k (the mean cost per step over a run), ``"max"`` as always
    taken (a step on which every lazy term runs). Elementwise work is not counted (a few % of a conv net's)."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    producers = {v: eqn for eqn in jaxpr.eqns for v in eqn.outvars}
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            total += _conv_flops(eqn)
        elif name == "dot_general":
            total += _dot_flops(eqn)
        elif name == "cond":
            costs = [model_flops(b, lazy) for b in eqn.params["branches"]]
            k = _lazy_period(eqn.invars[0], producers) if lazy == "amortized" and len(costs) == 2 else None
            total += max(costs) if k is None else costs[0] + (costs[1] - costs[0]) / k
        else:
            inner = 0.0
            for v in eqn.params.values():
                for sub in (v if isinstance(v, (tuple, list)) else (v,)):
                    if hasattr(sub, "eqns") or hasattr(getattr(sub, "jaxpr", None), "eqns"):
                        inner += model_flops(sub, lazy)
            total += inner * (eqn.params["length"] if name == "scan" else 1)
    return total


def network_jaxpr(config: Config, state, batch, steps_per_call: int = 1, num_classes: int | None = None):
    """The jaxpr of one train step of ``config`` as the network defines it: traced with every layer of
    `jaxgan.models.layers` forced to plain XLA convolutions (a fresh experiment, so no trace is shared with the
    timed program), since the faster formulations pad explicitly and would count some zeros, and oneDNN's are
    custom calls. ``num_classes``: that of the timed experiment (a class-conditional config's)."""
    original = layers._resolve
    layers._resolve = lambda impl, kind, *a: original("xla", kind, *a)
    try:
        step = experiment_lib.build(config, num_classes=num_classes).train_step()
        one = jax.tree.map(lambda x: x[0], batch) if steps_per_call > 1 else batch  # [K, n_critic, B, ...]
        return jax.make_jaxpr(step)(state, one)
    finally:
        layers._resolve = original


def network_flops(config: Config, state, batch, steps_per_call: int = 1, num_classes: int | None = None,
                  lazy: str = "amortized") -> float:
    """`model_flops` of `network_jaxpr`: counted on the jaxpr because XLA's cost analysis does not count
    cuDNN's convolutions (custom calls) on GPU."""
    return model_flops(network_jaxpr(config, state, batch, steps_per_call, num_classes), lazy)


class JaxRunner:
    """A compiled (multi-)step on donated state; ``run(n)`` does n calls and blocks."""

    def __init__(self, exp, config: Config, steps_per_call: int, unroll: bool):
        self.k = steps_per_call
        step = exp.train_step()
        if steps_per_call > 1:
            multi = make_multi_step(lambda s, b: step(s, b), steps_per_call, unroll=unroll)
            fn = multi
        else:
            fn = step
        key = jax.random.key(config.seed)
        self.state = jax.jit(exp.init)(key)
        self.batch = random_batch(exp, config, jax.random.fold_in(key, 1),
                                  leading=(steps_per_call,) if steps_per_call > 1 else ())
        jitted = jax.jit(fn, donate_argnums=0)
        t0 = time.perf_counter()
        lowered = jitted.lower(self.state, self.batch)
        t1 = time.perf_counter()
        self.compiled = lowered.compile()
        t2 = time.perf_counter()
        self.trace_sec, self.compile_sec = t1 - t0, t2 - t1
        jaxpr = network_jaxpr(config, self.state, self.batch, steps_per_call, exp.num_classes)
        self.flops_per_step = model_flops(jaxpr)  # lazy regularizers amortized
        self.flops_per_step_all_lazy = model_flops(jaxpr, lazy="max")
        self.xla_flops_per_step = _flops(self.compiled)
        if self.xla_flops_per_step is not None:  # XLA counts a while loop's body once: under lax.scan it is per step
            self.xla_flops_per_step /= steps_per_call if (unroll or steps_per_call == 1) else 1

    def run(self, calls: int):
        for _ in range(calls):
            self.state, metrics = self.compiled(self.state, self.batch)
        jax.block_until_ready((self.state, metrics))
        return metrics


def changed_fields(config: Config) -> dict:
    """{field: value} of ``config`` where it differs from Config's defaults: the benchmarked settings."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(Config)
            if getattr(config, f.name) != f.default}


def time_block(fn, n: int) -> float:
    t0 = time.perf_counter()
    fn(n)
    return time.perf_counter() - t0


def count_params(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


TORCH_TWINS = {"dcgan": ("torch_dcgan", (32, 64, 128)), "sngan": ("torch_sngan", (32, 64, 128))}  # module, sizes
TORCH_COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def make_torch_twins(args, exp, counts) -> dict:
    """{torch variant: the PyTorch twin of the benchmarked network and step} on the accelerator JAX uses (else
    CPU), one per ``--torch_variant`` the model has; empty with a message when there is none (model, size or
    torch missing). Asserts equal parameter counts."""
    if args.model not in TORCH_TWINS or args.image_size not in TORCH_TWINS[args.model][1]:
        print(f"--compare_torch: --model={args.model} at {args.image_size} px has no torch twin "
              f"(twins: {', '.join(f'{m} {sizes}' for m, (_, sizes) in TORCH_TWINS.items())}); skipped")
        return {}
    if args.model == "dcgan" and args.n_critic != 1:
        print(f"--compare_torch: the DCGAN twin makes one D update per step, not --n_critic={args.n_critic}; skipped")
        return {}
    module_name, _ = TORCH_TWINS[args.model]
    try:
        import importlib
        import torch
        twin_module = importlib.import_module(module_name)
    except ImportError as e:
        print(f"--compare_torch: torch is not importable ({e}); skipped (pip install torch)")
        return {}
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.backends.cudnn.benchmark = True  # what a tuned PyTorch training script sets
    models = {}
    for variant in args.torch_variants:
        step, _, mode = variant.partition("@")
        kw = dict(device=device, compute_dtype=args.compute_dtype, compile_mode=mode or None)
        if args.model == "dcgan":
            models[variant] = twin_module.TorchDCGAN(args.image_size, args.channels, exp.generator.latent_dim,
                                                     exp.generator.ngf, variant=step,
                                                     channels_last=args.torch_channels_last, **kw)
        elif step == "jaxgan":
            models[variant] = twin_module.TorchSNGAN(args.image_size, args.channels, exp.generator.latent_dim,
                                                     exp.generator.ch, loss=args.loss, n_critic=args.n_critic, **kw)
        else:
            print(f"--compare_torch: --model={args.model} has no torch variant {variant!r}; skipped")
    for variant, model in models.items():
        tg, td = twin_module.num_params(model.g), twin_module.num_params(model.d)
        print(f"torch parameters:  G {tg:,}  D {td:,}  (torch {torch.__version__}, {device}, "
              f"{torch.get_num_threads()} CPU threads, variant {variant})")
        assert (tg, td) == tuple(counts), f"parameter counts differ: torch {(tg, td)} vs jaxgan {tuple(counts)}"
    return models


def torch_runner(model, args):
    """``run(n)``: n steps of the torch twin on one random batch already on its device, then a device sync."""
    import torch
    real = torch.rand(*((args.n_critic,) if args.n_critic > 1 else ()), args.batch_size, args.channels,
                      args.image_size, args.image_size, device=model.device) * 2 - 1
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)

    def run(n):
        for _ in range(n):
            model.step(real)
        sync()
    return run


# Dense (no sparsity) peak TFLOP/s from NVIDIA's H100 SXM datasheet (the H200 has the same compute);
# "float32" is JAX's default float32 matmul/conv precision on these GPUs (TF32 tensor cores).
DATASHEET_TFLOPS = {"H100": {"bfloat16": 989.4, "float32": 494.7}, "H200": {"bfloat16": 989.4, "float32": 494.7}}


def datasheet_tflops(device_kind: str, dtype: str) -> float | None:
    for name, peaks in DATASHEET_TFLOPS.items():
        if name in device_kind:
            return peaks[dtype]
    return None


@functools.lru_cache(maxsize=None)
def matmul_tflops(dtype: str, n: int = 8192, repeats: int = 10) -> float:
    """Measured rate of an n x n x n matmul in ``dtype`` at JAX's default precision: the attainable peak (measured
    once per process and arguments)."""
    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (n, n), jnp.dtype(dtype))
    b = jax.random.normal(kb, (n, n), jnp.dtype(dtype))
    f = jax.jit(lambda a, b: a @ b)
    f(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a, b).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / statistics.median(times) / 1e12


def main(argv=None):
    args = parse_args(argv)
    if args.conv_impl != "auto":  # benchmark-only override of the layers' "auto" choice
        original = layers._resolve
        layers._resolve = lambda impl, *a: original(args.conv_impl if impl == "auto" else impl, *a)
    config = make_config(args)
    if args.flagfile_ignored:
        print(f"--flagfile: ignored {', '.join('--' + n for n in args.flagfile_ignored)} (random data, this loop)")
    exp = experiment_lib.build(config, num_classes=args.num_classes)
    device = jax.devices()[0]
    device_name = f"{device.platform}:{device.device_kind}"
    ks = [int(k) for k in args.steps_per_call.split(",")]
    images_per_step = config.batch_size * config.n_critic

    runners = {}
    for k in ks:
        r = JaxRunner(exp, config, k, args.unroll)
        runners[f"jaxgan k={k}" if len(ks) > 1 else "jaxgan"] = r
        print(f"[{device_name}] {args.model} {'' if config.is_toy else config.image_size} k={k}: trace "
              f"{r.trace_sec:.2f} s, compile {r.compile_sec:.2f} s, "
              f"flops/step {r.flops_per_step / 1e9 if r.flops_per_step else float('nan'):.3f} G", flush=True)
    g_params = count_params(next(iter(runners.values())).state.g.params)
    d_params = count_params(next(iter(runners.values())).state.d.params)
    print(f"jaxgan parameters: G {g_params:,}  D {d_params:,}")

    torch_models = make_torch_twins(args, exp, (g_params, d_params)) if args.compare_torch else {}
    # warm up and size the blocks: each block ~ --block_sec
    fns, calls_per_block, steps_per_call = {}, {}, {}
    for name, r in runners.items():
        r.run(args.warmup)
        dt = time_block(r.run, 1)
        fns[name], steps_per_call[name] = r.run, r.k
        calls_per_block[name] = args.block_steps // r.k if args.block_steps else max(1, round(args.block_sec / dt))
    for variant, model in torch_models.items():
        name, torch_run = f"torch {variant}", torch_runner(model, args)
        torch_run(2)
        dt = time_block(torch_run, 1)
        fns[name], steps_per_call[name] = torch_run, 1
        calls_per_block[name] = args.block_steps or max(1, round(args.block_sec / dt))

    rates = {name: [] for name in fns}
    for _ in range(args.blocks):  # interleaved: one block of each, in turn
        for name, fn in fns.items():
            dt = time_block(fn, calls_per_block[name])
            rates[name].append(calls_per_block[name] * steps_per_call[name] / dt)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(f"\n{'variant':<16} {'steps/s':>9} {'images/s':>10} {'min-max steps/s':>18} {'steps/block':>12}")
    for name, rs in rates.items():
        med = statistics.median(rs)
        print(f"{name:<16} {med:>9.3f} {med * images_per_step:>10.1f} {min(rs):>8.3f}-{max(rs):<9.3f} "
              f"{calls_per_block[name] * steps_per_call[name]:>12}")
    main_name = next(iter(runners))
    r0 = runners[main_name]
    sps = statistics.median(rates[main_name])
    result = {"model": args.model, "steps_per_sec": round(sps, 4), "images_per_sec": round(sps * images_per_step, 2),
              "compile_sec": round(r0.compile_sec, 3), "trace_sec": round(r0.trace_sec, 3),
              "flops_per_step": r0.flops_per_step, "flops_per_step_all_lazy": r0.flops_per_step_all_lazy,
              "xla_flops_per_step": r0.xla_flops_per_step,
              "device": device_name,
              "gflops_per_sec": None if r0.flops_per_step is None else round(sps * r0.flops_per_step / 1e9, 2),
              "image_size": None if config.is_toy else args.image_size,
              "channels": None if config.is_toy else args.channels, "batch_size": args.batch_size,
              "n_critic": args.n_critic, "compute_dtype": args.compute_dtype, "conv_impl": args.conv_impl,
              "steps_per_call": ks[0], "params_g": g_params, "params_d": d_params, "blocks": args.blocks,
              "load_avg_1m": load, "xla_flags": os.environ.get("XLA_FLAGS", ""), "flagfile": args.flagfile or None,
              "num_classes": exp.num_classes, "config": changed_fields(config)}
    if len(ks) > 1:
        result["steps_per_sec_by_k"] = {str(r.k): round(statistics.median(rates[n]), 4) for n, r in runners.items()}
        result["compile_sec_by_k"] = {str(r.k): round(r.compile_sec, 3) for r in runners.values()}
    by_variant = {}
    for variant, model in torch_models.items():
        tps = statistics.median(rates[f"torch {variant}"])
        paired = [a / b for a, b in zip(rates[main_name], rates[f"torch {variant}"])]
        print(f"\nratio jaxgan/torch {variant}: {sps / tps:.3f} (medians), paired {statistics.median(paired):.3f} "
              f"(min {min(paired):.3f}, max {max(paired):.3f}) over {len(paired)} interleaved block pairs")
        by_variant[variant] = dict(torch_steps_per_sec=round(tps, 4), torch_images_per_sec=round(tps * images_per_step, 2),
                                   ratio=round(sps / tps, 4), paired_ratio=round(statistics.median(paired), 4))
    if by_variant:  # the flat fields: the first variant's (jaxgan's own step by default)
        first = next(iter(torch_models))
        result.update(**by_variant[first], torch_variant=first, torch_by_variant=by_variant,
                      torch_channels_last=args.torch_channels_last,
                      torch_device=str(torch_models[first].device))
    if args.peak:
        peak = matmul_tflops(args.compute_dtype, n=8192 if device.platform != "cpu" else 2048)
        sheet = datasheet_tflops(device.device_kind, args.compute_dtype)
        achieved = {"jaxgan": sps * (r0.flops_per_step or float("nan")) / 1e12}
        for variant in torch_models:
            achieved[f"torch {variant}"] = (statistics.median(rates[f"torch {variant}"])
                                            * (r0.flops_per_step or float("nan")) / 1e12)
        print(f"\nmatmul peak ({args.compute_dtype}, measured): {peak:.1f} TFLOP/s"
              + (f"; datasheet {sheet:.1f}" if sheet else ""))
        for name, tf in achieved.items():
            print(f"{name:<8} {tf:8.2f} TFLOP/s = {tf / peak:.1%} of the measured matmul peak"
                  + (f", {tf / sheet:.1%} of the datasheet peak" if sheet else ""))
        result.update(matmul_peak_tflops=round(peak, 4), datasheet_peak_tflops=sheet,
                      fraction_of_peak=round(achieved["jaxgan"] / peak, 4),
                      fraction_of_datasheet_peak=None if not sheet else round(achieved["jaxgan"] / sheet, 4))
        if torch_models:
            result.update(torch_fraction_of_peak=round(achieved[f"torch {next(iter(torch_models))}"] / peak, 4))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    try:
        main()
    except experiment_lib.ConfigError as e:  # a bad model/option combination, named by jaxgan's validation
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
