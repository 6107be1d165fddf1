"""jaxgan's XLA:CPU defaults: added to XLA_FLAGS at import, user settings win, and XLA obeys them."""
import os
import subprocess
import sys

from jaxgan import xla_flags

from conftest import REPO

FLAG = f"{xla_flags.YNN_FUSION_FLAG}={xla_flags.CPU_YNN_FUSIONS}"


def test_defaults_are_appended_to_the_users_flags():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    assert xla_flags.apply_cpu_defaults(env)
    assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=2 {FLAG}"
    assert not xla_flags.apply_cpu_defaults(env)  # idempotent
    assert env["XLA_FLAGS"].count(xla_flags.YNN_FUSION_FLAG) == 1
    empty = {}
    assert xla_flags.apply_cpu_defaults(empty) and empty["XLA_FLAGS"] == FLAG


def test_users_value_and_opt_out_win():
    mine = {"XLA_FLAGS": f"{xla_flags.YNN_FUSION_FLAG}=individual_dot"}
    assert not xla_flags.apply_cpu_defaults(mine)
    assert mine["XLA_FLAGS"] == f"{xla_flags.YNN_FUSION_FLAG}=individual_dot"
    off = {"JAXGAN_XLA_DEFAULTS": "0", "XLA_FLAGS": "--xla_cpu_enable_fast_math=false"}
    assert not xla_flags.apply_cpu_defaults(off)
    assert off["XLA_FLAGS"] == "--xla_cpu_enable_fast_math=false"


_PROBE = """
import jaxgan, jax, jax.numpy as jnp
from jax import lax
def f(x, w, a, b):
    return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")), a @ b
args = (jnp.ones((8, 16, 16, 32)), jnp.ones((3, 3, 32, 32)), jnp.ones((64, 64)), jnp.ones((64, 64)))
text = jax.jit(f).lower(*args).compile().as_text()
ynn = [line for line in text.splitlines() if '"__ynn_fusion"' in line and " fusion(" in line]
print("conv_in_ynn", any("conv_general_dilated" in line for line in ynn))
print("dot_in_ynn", any("dot_general" in line for line in ynn))
"""


def _probe(**env_changes):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAXGAN_XLA_DEFAULTS")}
    env.update(env_changes, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", _PROBE], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return dict(line.split() for line in out.stdout.strip().splitlines())


def test_xla_runs_convolutions_outside_ynnpack_after_import():
    # With jaxgan's defaults XLA keeps YNNPACK for the matmul but compiles the convolution itself (Eigen);
    # with the defaults switched off, jaxlib's own default hands the convolution to YNNPACK too.
    assert _probe() == {"conv_in_ynn": "False", "dot_in_ynn": "True"}
    assert _probe(JAXGAN_XLA_DEFAULTS="0") == {"conv_in_ynn": "True", "dot_in_ynn": "True"}
