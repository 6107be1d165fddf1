"""Input validation of launch/train.py: one ``error:`` line naming the flag, exit code 2, nothing written.

Starting Python + JAX costs seconds, so most cases go through the launcher's own code path (absl flag parsing
with `_common.parse_flags_one_line`, then `main`) inside one driver subprocess that runs them one after another
and reports exit code, stderr and whether the workdir exists. A few cases run as separate real processes too,
and fuzz tests throw random garbage at the flag parser and the image-folder loader.
"""
import json
import os
import random
import string
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, subprocess_xla_flags
from jaxgan.data import images

CACHE = str(REPO / ".jax_cache")
ENV = {**os.environ, "XLA_FLAGS": subprocess_xla_flags(1), "JAX_PLATFORMS": "cpu",
       "PYTHONPATH": str(REPO)}
SEED = int(os.environ.get("JAXGAN_TEST_SEED", time.time_ns() % 10_000))

# Runs cases [(name, [args...], workdir, device_count)] through launch/train.py's parse + main in one process.
_DRIVER = r"""
import contextlib, io, json, os, sys
import jax
jax.config.update("jax_num_cpu_devices", int(sys.argv[2]))
from absl import flags
import jaxgan.cli.train as lt
results = {}
for name, args, workdir in json.loads(open(sys.argv[1]).read()):
    flags.FLAGS.unparse_flags()
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            argv = lt._common.parse_flags_one_line(["launch/train.py", *args, f"--workdir={workdir}"])
            rc = lt.main(argv)
        except SystemExit as e:
            rc = e.code
        except BaseException as e:  # a traceback in real life
            import traceback
            traceback.print_exc(file=err)
            rc = "Traceback"
    results[name] = {"rc": rc, "stderr": err.getvalue(), "exists": os.path.exists(workdir)}
print("RESULTS" + json.dumps(results))
"""


def run_cases(tmp_path, cases, device_count=1, timeout=300):
    spec = [(name, args, next((a.split("=", 1)[1] for a in args if a.startswith("--workdir=")),
                              str(tmp_path / f"w_{i}"))) for i, (name, args) in enumerate(cases)]
    path = tmp_path / "cases.json"
    path.write_text(json.dumps(spec))
    result = subprocess.run([sys.executable, "-c", _DRIVER, str(path), str(device_count)], capture_output=True,
                            text=True, timeout=timeout, cwd=REPO, env=ENV)
    assert result.returncode == 0 and "RESULTS" in result.stdout, result.stderr[-3000:]
    return json.loads(result.stdout.split("RESULTS", 1)[1])


def error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("error:")]


TINY = ["--dataset=ring8", "--width=16", "--depth=2", "--batch_size=32", f"--jax_cache_dir={CACHE}"]
IMAGE = ["--dataset=digits", "--model=dcgan", "--image_size=28", "--width=8", "--batch_size=16",
         f"--jax_cache_dir={CACHE}"]

# (the flag the message must name, the bad arguments); one per validation rule
RULES = [
    ("n_critic", TINY + ["--n_critic=0"]),
    ("n_critic", TINY + ["--n_critic=abc"]),  # not an integer: absl's parser, one line
    ("batch_size", TINY + ["--batch_size=0"]),
    ("steps", TINY + ["--steps=-3"]),
    ("steps", TINY + ["--steps=99999999999"]),  # int32 step counter
    ("log_every", TINY + ["--log_every=0"]),
    ("checkpoint_every", TINY + ["--checkpoint_every=0"]),
    ("keep_checkpoints", TINY + ["--keep_checkpoints=0"]),
    ("num_samples", TINY + ["--num_samples=0"]),
    ("depth", TINY + ["--depth=0"]),
    ("width", TINY + ["--width=-1"]),
    ("width", TINY + ["--width=10000000"]),
    ("latent_dim", TINY + ["--latent_dim=-2"]),
    ("seed", TINY + ["--seed=-1"]),
    ("g_lr", TINY + ["--g_lr=0"]),
    ("d_lr", TINY + ["--d_lr=nan"]),
    ("b1", TINY + ["--b1=1.0"]),
    ("b2", TINY + ["--b2=-0.1"]),
    ("ema_decay", TINY + ["--ema_decay=1.5"]),
    ("ema_start", TINY + ["--ema_start=10"]),
    ("penalty_weight", TINY + ["--penalty=gradient_penalty", "--penalty_weight=0"]),
    ("label_smoothing", TINY + ["--loss=wasserstein", "--label_smoothing=0.1"]),
    ("clip_weights", TINY + ["--loss=wasserstein", "--penalty=gradient_penalty", "--clip_weights=0.01"]),
    ("instance_noise", TINY + ["--instance_noise=-1"]),
    ("instance_noise_anneal_steps", TINY + ["--instance_noise_anneal_steps=100"]),
    ("loss", TINY + ["--loss=nonsaturating"]),
    ("penalty", TINY + ["--penalty=gp"]),
    ("optimizer", TINY + ["--optimizer=lbfgs"]),
    ("lr_decay", TINY + ["--lr_decay=cosine"]),
    ("on_nan", TINY + ["--on_nan=ignore"]),
    ("nan_lr_factor", TINY + ["--nan_lr_factor=1.5"]),
    ("max_rollbacks", TINY + ["--max_rollbacks=0"]),
    ("model", TINY + ["--model=dcgan"]),
    ("model", TINY + ["--model=resnet"]),
    ("mixture_modes", TINY + ["--dataset=grid25", "--mixture_modes=7"]),
    ("mixture_std", TINY + ["--mixture_std=-0.1"]),
    ("conditional", TINY + ["--conditional"]),
    ("d_normalization", TINY + ["--d_normalization=layer_norm"]),
    ("mixture_modes", IMAGE + ["--mixture_modes=8"]),
    ("image_size", IMAGE + ["--image_size=30"]),
    ("channels", IMAGE + ["--channels=2"]),
    ("d_normalization", IMAGE + ["--d_normalization=group_norm"]),
    ("attention_resolution", IMAGE + ["--attention_resolution=8"]),
    ("penalty", IMAGE + ["--penalty=gradient_penalty"]),  # BatchNorm in D couples the examples
    ("dataset", IMAGE + ["--dataset=mnits"]),  # an unknown dataset: named, before anything is written
    ("dataset", TINY + ["--dataset=mnits"]),  # with --model=mlp: the dataset is named, not the model
    ("penalty_weight", TINY + ["--penalty_weight=5"]),  # no --penalty: it would be ignored
    ("b1", TINY + ["--optimizer=sgd", "--b1=0.9"]),  # Adam's beta1; sgd has no momentum
    ("b1", TINY + ["--optimizer=sgd", "--b1=0.5"]),  # given explicitly at its default: still refused
    ("b2", TINY + ["--optimizer=rmsprop", "--b2=0.9"]),
    ("nan_lr_factor", TINY + ["--nan_lr_factor=0.1"]),  # --on_nan=stop would ignore it
    ("mixture_spacing", TINY + ["--mixture_spacing=3"]),  # a grid25 option on ring8
    ("image_size", TINY + ["--image_size=28"]),  # 2D data
    ("depth", IMAGE + ["--depth=4"]),  # an MLP option on dcgan
    ("num_samples", IMAGE + ["--num_samples=100"]),  # the 2D plot's sample count
    ("ema_start", TINY + ["--ema_decay=0.99", "--ema_start=5", "--steps=5"]),  # the EMA would never start
    ("num_processes", TINY + ["--num_processes=0"]),
    ("process_id", TINY + ["--process_id=1"]),  # not < --num_processes=1
    ("distributed_timeout", TINY + ["--distributed_timeout=-1"]),
    ("distributed_timeout", TINY + ["--distributed_timeout=60"]),  # no multi-process run: it would be ignored
    ("workdir", TINY + ["--workdir=/dev/null/w"]),  # cannot be created
    ("no_such_flag", TINY + ["--no_such_flag=1"]),
    ("unexpected arguments", TINY + ["stray"]),
    ("flagfile", TINY + ["--flagfile=/nonexistent/file.cfg"]),
]


@pytest.fixture(scope="module")
def rule_results(tmp_path_factory):
    return run_cases(tmp_path_factory.mktemp("rules"), [(f"{i}", args) for i, (_, args) in enumerate(RULES)])


@pytest.mark.parametrize("index", range(len(RULES)), ids=[f"{flag}-{i}" for i, (flag, _) in enumerate(RULES)])
def test_each_rule_gives_one_error_line_naming_the_flag_and_writes_nothing(rule_results, index):
    flag, args = RULES[index]
    result = rule_results[str(index)]
    assert result["rc"] == 2, result
    lines = error_lines(result["stderr"])
    assert len(lines) == 1, result["stderr"][-3000:]
    assert "Traceback" not in result["stderr"]
    name = flag if " " in flag else f"--{flag}"
    # absl names an unknown flag as 'name'; a dataset error names the value
    assert name in lines[0] or f"'{flag}'" in lines[0] or (flag == "dataset" and "mnits" in lines[0]), lines[0]
    assert not result["exists"], "the workdir was created"


def test_batch_not_divisible_by_devices(tmp_path):
    results = run_cases(tmp_path, [("odd", IMAGE + ["--batch_size=30"]), ("ok", IMAGE + ["--batch_size=32",
                                                                                         "--penalty=gp"])],
                        device_count=4)
    [line] = error_lines(results["odd"]["stderr"])
    assert results["odd"]["rc"] == 2 and "--batch_size=30" in line and "4 devices" in line
    assert not results["odd"]["exists"]
    assert "--batch_size" not in error_lines(results["ok"]["stderr"])[0]  # 32 passes; the next rule fails


def test_real_processes_report_one_line_and_write_nothing(tmp_path):
    image = [a for a in TINY if not a.startswith("--depth")]  # an MLP flag: refused with --model=dcgan
    for args, needle in ((TINY + ["--n_critic=x"], "--n_critic"), (TINY + ["--g_lr=-1"], "--g_lr"),
                         (image + ["--dataset=folder:/nonexistent", "--model=dcgan"], "/nonexistent")):
        workdir = tmp_path / "w"
        result = subprocess.run([sys.executable, str(REPO / "launch" / "train.py"), *args,
                                 f"--workdir={workdir}"], capture_output=True, text=True, timeout=120, cwd=REPO,
                                env=ENV)
        assert result.returncode == 2, result.stderr[-2000:]
        [line] = error_lines(result.stderr)
        assert needle in line and "Traceback" not in result.stderr
        assert not workdir.exists()


def test_workdir_of_another_configuration_is_refused_unless_overwrite(tmp_path):
    workdir = tmp_path / "w"
    base = TINY + ["--steps=2", "--log_every=1", "--num_samples=50", f"--workdir={workdir}"]
    results = run_cases(tmp_path, [  # in order, in one process
        ("first", base),
        ("other", base + ["--g_lr=1e-3"]),
        ("longer", base + ["--steps=3"]),  # a RESUMABLE_FIELDS change: extends the run
        ("overwrite", base + ["--g_lr=1e-3", "--overwrite"]),
    ])
    assert results["first"]["rc"] == 0, results["first"]
    assert results["other"]["rc"] == 2, results["other"]
    [line] = error_lines(results["other"]["stderr"])
    assert "different configuration" in line and "--g_lr=0.001" in line and "--overwrite" in line
    assert results["longer"]["rc"] == 0, results["longer"]
    assert results["overwrite"]["rc"] == 0, results["overwrite"]
    assert json.loads((workdir / "config.json").read_text())["g_lr"] == 1e-3
    # --overwrite started afresh: its metrics and checkpoints only (not the old run's step 3)
    assert [json.loads(x)["step"] for x in (workdir / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    from jaxgan.checkpoint import Checkpointer
    assert max(Checkpointer(workdir / "checkpoints", save_every=1000).all_steps()) == 2


# ------------------------------------------------------------------------------------------------------ fuzz

def _garbage(rng):
    kind = rng.randrange(9)
    if kind == 0:
        return "".join(rng.choice(string.printable[:-5]) for _ in range(rng.randrange(0, 20)))
    if kind == 1:
        return "".join(chr(rng.randrange(0x80, 0x3000)) for _ in range(rng.randrange(1, 8)))
    if kind == 2:
        return str(rng.choice([-1, 0, 1, 2**31, 2**63, 10**30, -(10**30)]) + rng.randrange(3))
    if kind == 3:
        return rng.choice(["nan", "inf", "-inf", "1e999", "-0.0", "1e-320", "0x10", "1_000", " 5 "])
    if kind == 4:
        return rng.choice(["", "--", "=", "true", "false", "None", "[]", "{}", "folder:", "folder:/dev/null"])
    if kind == 5:
        return str(rng.uniform(-1e6, 1e6))
    if kind == 6:
        return "/" + "/".join(rng.choice(["..", "tmp", "x" * 300, "proc", "dev"]) for _ in range(3))
    if kind == 7:
        return rng.choice(["ring8", "grid25", "lines", "digits", "mlp", "dcgan", "sagan", "hinge", "r1"])
    return str(rng.randrange(-5, 100))


def test_fuzz_flag_parser_never_tracebacks_or_hangs(tmp_path):
    from jaxgan.experiment import Config
    import dataclasses
    rng = random.Random(SEED)
    names = [f.name for f in dataclasses.fields(Config)] + ["workdir", "overwrite", "flagfile", "jax_cache_dir"]
    # the overrides come last, so a valid garbage value for them is replaced by a tiny run (absl still parses the
    # earlier occurrence, so invalid garbage is still an error)
    tiny = TINY + ["--steps=2", "--log_every=1", "--num_samples=50", "--n_critic=1", "--latent_dim=0",
                   "--sample_every=0", "--checkpoint_every=1000"]
    cases = []
    for i in range(16):
        args = []
        for _ in range(rng.randrange(1, 4)):
            name = rng.choice(names) if rng.random() < 0.9 else "".join(rng.choice("abcxyz_") for _ in range(6))
            form = rng.randrange(4)
            args.append(f"--{name}={_garbage(rng)}" if form < 2 else f"-{name}={_garbage(rng)}" if form == 2
                        else _garbage(rng))
        args = [a for a in args if not a.startswith(("--workdir", "-workdir"))] + tiny
        cases.append((f"{i}", args))
    results = run_cases(tmp_path, cases, timeout=400)
    for name, args in cases:
        result = results[name]
        assert result["rc"] in (0, 2, 3), (args, result)
        assert "Traceback" not in result["stderr"], (args, result["stderr"][-3000:])
        if result["rc"]:
            assert len(error_lines(result["stderr"])) == 1, (args, result["stderr"][-3000:])
    # and one through a real process, with a timeout
    for name, args in cases[:1]:
        workdir = tmp_path / f"real_{name}"
        result = subprocess.run([sys.executable, str(REPO / "launch" / "train.py"), *args, f"--workdir={workdir}"],
                                capture_output=True, text=True, timeout=120, cwd=REPO, env=ENV)
        assert result.returncode in (0, 2, 3) and "Traceback" not in result.stderr, (args, result.stderr[-3000:])


def _garbage_images(folder, rng, count):
    folder.mkdir(parents=True, exist_ok=True)
    buf = folder / "_real.png"
    Image.fromarray(np.uint8(np.arange(64 * 64 * 3).reshape(64, 64, 3) % 251)).save(buf)
    real_png = buf.read_bytes()
    Image.fromarray(np.uint8(np.arange(64 * 64 * 3).reshape(64, 64, 3) % 251)).save(folder / "_real.jpg")
    real_jpg = (folder / "_real.jpg").read_bytes()
    buf.unlink()
    (folder / "_real.jpg").unlink()
    paths = []
    for i in range(count):
        kind = rng.randrange(4)
        data = (os.urandom(rng.randrange(0, 2000)) if kind == 0 else
                real_png[:rng.randrange(0, len(real_png))] if kind == 1 else
                real_jpg[:rng.randrange(0, len(real_jpg) // 2)] if kind == 2 else
                bytearray(real_png[:60]) + os.urandom(rng.randrange(0, 500)))
        path = folder / f"{i:03d}{rng.choice(['.png', '.jpg', '.jpeg', '.PNG'])}"
        path.write_bytes(bytes(data))
        paths.append(path)
    return paths


def test_fuzz_image_loader_gives_dataset_errors_naming_the_file(tmp_path):
    rng = random.Random(SEED)
    for path in _garbage_images(tmp_path / "garbage", rng, 120):
        try:
            image = images.load_image_file(str(path))
        except images.DatasetError as e:
            assert str(path) in str(e) and "\n" not in str(e)
        else:  # a truncated file that still decodes (e.g. cut after the image data) is fine
            images.prepare_image(image, 32, 3)


def test_garbage_image_folder_through_the_launcher(tmp_path):
    rng = random.Random(SEED)
    folder = tmp_path / "imgs"
    for i in range(16):
        (folder / f"{i}.png").parent.mkdir(parents=True, exist_ok=True)
        (folder / f"{i}.png").write_bytes(os.urandom(rng.randrange(0, 3000)))
    workdir = tmp_path / "w"
    result = subprocess.run([sys.executable, str(REPO / "launch" / "train.py"), f"--dataset=folder:{folder}",
                             "--model=dcgan", "--image_size=32", "--width=8", "--batch_size=8", "--steps=2",
                             f"--workdir={workdir}", f"--jax_cache_dir={CACHE}"],
                            capture_output=True, text=True, timeout=120, cwd=REPO, env=ENV)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    [line] = error_lines(result.stderr)
    # one bad file, or (--skip_corrupt_images' folder check) all of them counted
    assert ("cannot read image file" in line or "image files cannot" in line) and str(folder) in line
    assert not workdir.exists()  # the first batch is read before anything is written
