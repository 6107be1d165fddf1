"""XLA:CPU settings that jaxgan applies, through ``XLA_FLAGS``, before JAX starts its backends.

jaxlib 0.10 hands matrix multiplies, reductions *and convolutions* on CPU to the YNNPACK library
(``--xla_cpu_experimental_ynn_fusion_type``). For convolutions that is slower than XLA's own (Eigen) path on
the shapes GANs train with, above all the weight gradients of DCGAN's stride-2 convolutions, and so is the
whole DCGAN step (``benchmarks/step_throughput.py``; figures in docs/performance.md, "One XLA flag").
Keeping YNNPACK for dots and reductions matters as much: without it (no library fusions at all) BatchNorm's
reductions become slow reduce-windows and the step is no faster than the default.

So, unless told otherwise, ``import jaxgan`` appends

    --xla_cpu_experimental_ynn_fusion_type=individual_dot,reduce

to ``XLA_FLAGS``. It takes effect only if JAX has not created its CPU backend yet (importing jaxgan before
running any JAX computation is enough); it changes which kernels run, not what is computed (results agree to
float32 rounding; tests/test_layers.py). It is skipped when ``XLA_FLAGS`` already sets that flag (your value
wins) or when ``JAXGAN_XLA_DEFAULTS=0``. GPUs and TPUs are unaffected (the flag is read by the CPU compiler
only).
"""
from __future__ import annotations

import os
from typing import MutableMapping

YNN_FUSION_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
CPU_YNN_FUSIONS = "individual_dot,reduce"
OPT_OUT_VARIABLE = "JAXGAN_XLA_DEFAULTS"


def apply_cpu_defaults(environ: MutableMapping[str, str] | None = None) -> bool:
    """Appends jaxgan's XLA:CPU flag to ``environ["XLA_FLAGS"]`` (default: ``os.environ``).

    Returns True if it was added; False if the user's ``XLA_FLAGS`` already names the flag or
    ``JAXGAN_XLA_DEFAULTS=0``.
    """
    environ = os.environ if environ is None else environ
    if environ.get(OPT_OUT_VARIABLE, "1").strip() == "0":
        return False
    current = environ.get("XLA_FLAGS", "")
    if YNN_FUSION_FLAG in current:
        return False
    environ["XLA_FLAGS"] = f"{current} {YNN_FUSION_FLAG}={CPU_YNN_FUSIONS}".strip()
    return True
