"""jaxgan.workdir (one writer per workdir, one-line disk errors) and the launchers' use of it; the multi-process
rendezvous of jaxgan.parallel.initialize_distributed."""
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import REPO, subprocess_xla_flags
from jaxgan import parallel
from jaxgan import workdir as workdir_lib
from jaxgan.checkpoint import Checkpointer

CACHE = str(REPO / ".jax_cache")
TINY = ["--dataset=ring8", "--model=mlp", "--width=16", "--depth=2", "--batch_size=32", "--num_samples=100"]


def launch(script, *args, cwd=REPO, timeout=300, **popen):
    cmd = [sys.executable, str(REPO / "launch" / script), *args, f"--jax_cache_dir={CACHE}"]
    env = {**os.environ, "XLA_FLAGS": subprocess_xla_flags(1), "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
    if popen:
        return subprocess.Popen(cmd, cwd=cwd, env=env, text=True, **popen)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# ------------------------------------------------------------------------------------------------ the lock

def test_second_lock_is_refused_naming_the_holder_and_released_cleanly(tmp_path):
    workdir = tmp_path / "a" / "b"
    with workdir_lib.WorkdirLock(workdir, command="first"):
        record = json.loads((workdir / ".lock").read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
        assert workdir_lib.is_locked(workdir)
        with pytest.raises(workdir_lib.WorkdirBusy) as e:
            workdir_lib.WorkdirLock(workdir).acquire()
        msg = str(e.value)
        assert "\n" not in msg and f"pid {os.getpid()} on host {socket.gethostname()} since {record['since']}" in msg
        assert "(first)" in msg
    # released: the lock file and the directories the lock made (still empty) are gone
    assert not (tmp_path / "a").exists()
    # a directory that existed stays; a lock file left by a dead process is not a held lock
    workdir.mkdir(parents=True)
    (workdir / ".lock").write_text(json.dumps({"pid": 999999, "host": "gone", "since": "long ago"}))
    assert not workdir_lib.is_locked(workdir)
    with workdir_lib.WorkdirLock(workdir):
        assert workdir_lib.read_holder(workdir)["pid"] == os.getpid()
    assert workdir.is_dir() and not (workdir / ".lock").exists()


def test_check_path_refuses_empty_and_files(tmp_path):
    for bad in ("", "  ", None):
        with pytest.raises(workdir_lib.WorkdirError, match="--workdir must not be empty"):
            workdir_lib.check_path(bad)
    (tmp_path / "f").write_text("x")
    with pytest.raises(workdir_lib.WorkdirError, match="exists and is not a directory"):
        workdir_lib.check_path(tmp_path / "f")


@pytest.mark.slow
def test_two_trainers_on_one_workdir(tmp_path):
    """A second launch/train.py on a busy workdir exits 2 naming the holder; after the holder is SIGKILLed a
    third one takes the (stale) lock and resumes from the newest checkpoint."""
    workdir = tmp_path / "w"
    flags = TINY + [f"--workdir={workdir}", "--log_every=200", "--checkpoint_every=200"]
    log = open(tmp_path / "first.log", "w")
    first = launch("train.py", *flags, "--steps=10000000", stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and first.poll() is None and not (
                (workdir_lib.read_holder(workdir) or {}).get("pid") == first.pid and (workdir / "checkpoints").is_dir()
                and any(d.name.isdigit() for d in (workdir / "checkpoints").iterdir())):
            time.sleep(0.2)
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        second = launch("train.py", *flags, "--steps=100")
        assert second.returncode == 2, second.stderr[-3000:]
        assert error_lines(second.stderr) == [second.stderr.strip().splitlines()[-1]]
        assert f"is in use by pid {first.pid} on host {socket.gethostname()} since " in second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
        log.close()
    assert workdir_lib.read_holder(workdir)["pid"] == first.pid and not workdir_lib.is_locked(workdir)
    newest = max(Checkpointer(workdir / "checkpoints", save_every=1).all_steps())
    third = launch("train.py", *flags, f"--steps={newest + 10}")
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"at step {newest}" in third.stderr and not (workdir / ".lock").exists()


def test_empty_workdir_is_refused_and_nothing_is_written(tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    for script, extra in (("train.py", ["--steps=2"]), ("sweep.py", ["--steps=2", "--seeds=1"])):
        result = launch(script, *TINY, *extra, "--workdir=", cwd=cwd)
        assert result.returncode == 2, result.stderr[-3000:]
        assert len(error_lines(result.stderr)) == 1 and "--workdir" in error_lines(result.stderr)[0]
        assert list(cwd.iterdir()) == []


# --------------------------------------------------------------------------------------- disk and permissions

def test_io_errors_are_described_in_one_line():
    full = OSError(errno.ENOSPC, "No space left on device", "/w/checkpoints/20/x")
    assert workdir_lib.describe_io_error(full).startswith("no space left on device writing /w/checkpoints/20/x;")
    tensorstore = ValueError('RESOURCE_EXHAUSTED: Error writing local file "/w/checkpoints/20/_sharding": Failed '
                             'writing: ...: No space left on device [os_error_code=\'28\']')
    wrapped = RuntimeError("save failed")
    wrapped.__cause__ = tensorstore
    assert workdir_lib.describe_io_error(wrapped).startswith(
        "no space left on device writing /w/checkpoints/20/_sharding;")
    assert workdir_lib.describe_io_error(OSError(errno.EROFS, "Read-only file system")).startswith(
        "read-only file system")
    assert workdir_lib.describe_io_error(OSError(errno.EACCES, "Permission denied", "/w")).startswith(
        "permission denied writing /w")
    assert workdir_lib.describe_io_error(ValueError("shapes do not match")) is None
    assert workdir_lib.describe_io_error(OSError(errno.ENOENT, "No such file")) is None


def test_launcher_turns_a_disk_error_into_one_line(capsys):
    from jaxgan.cli import common as _common

    def fails():
        raise OSError(errno.ENOSPC, "No space left on device", "/w/metrics.jsonl")
    workdir_lib._reported.clear()
    assert _common.run_with_clean_errors(fails, (), exit_on_io_error=False) == _common.EXIT_IO_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: no space left on device writing /w/metrics.jsonl;")
    with pytest.raises(ZeroDivisionError):  # other errors keep their traceback
        _common.run_with_clean_errors(lambda: 1 / 0, ())


@pytest.fixture
def tmpfs(tmp_path):
    """A mount point and a function that mounts a small tmpfs there (skips the test where mounting is not
    allowed, e.g. without root); unmounted afterwards."""
    point = tmp_path / "mnt"
    point.mkdir()

    def mount(options):
        if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
                          capture_output=True).returncode:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        mounted.append(True)
        return point
    mounted = []
    yield mount
    if mounted:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def test_read_only_workdir_is_one_line_before_anything_runs(tmpfs):
    point = tmpfs("ro,size=1m")
    with pytest.raises(workdir_lib.WorkdirError) as e:
        workdir_lib.WorkdirLock(point / "w").acquire()
    assert "\n" not in str(e.value) and "read-only file system" in str(e.value) and str(point / "w") in str(e.value)


@pytest.mark.slow
def test_full_disk_is_one_line_and_the_rerun_resumes(tmpfs):
    point = tmpfs("size=2m")  # the default MLP (width 128): the third or so checkpoint fills it
    flags = ["--dataset=ring8", "--model=mlp", "--num_samples=100", f"--workdir={point / 'w'}", "--log_every=10",
             "--checkpoint_every=10"]
    result = launch("train.py", *flags, "--steps=400")
    assert result.returncode == 74, result.stderr[-3000:]
    assert error_lines(result.stderr) == [result.stderr.strip().splitlines()[-1]]
    assert "no space left on device" in result.stderr and "Traceback" not in result.stderr
    steps = Checkpointer(point / "w" / "checkpoints", save_every=1).all_steps()
    assert steps and max(steps) < 400  # the incomplete checkpoint is not listed
    subprocess.run(["mount", "-o", "remount,size=64m", str(point)], check=True)
    rerun = launch("train.py", *flags, f"--steps={max(steps) + 10}")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"at step {max(steps)}" in rerun.stderr


# ------------------------------------------------------------------------------------------- multi-process

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(address, process_id, num_processes, out):
    try:
        parallel._join_process_zero(address, process_id, num_processes, 20)
        out.append("go")
    except parallel.DistributedError as e:
        out.append(str(e))


def test_process_zero_names_how_many_processes_connected():
    address = f"127.0.0.1:{_free_port()}"
    out = []
    joiner = threading.Thread(target=_join, args=(address, 1, 3, out))
    joiner.start()
    with pytest.raises(parallel.DistributedError) as e:
        parallel._gather_processes(address, 3, 2.0)
    joiner.join()
    expected = (f"process 0 waited 2 s for 3 processes; only 2 connected (process ids [0, 1]): start all "
                f"--num_processes=3 processes with the same --coordinator_address={address}")
    assert str(e.value).startswith(expected)
    assert out == [f"process 0: {e.value}"]  # the process that came hears why the run is not starting


def test_rendezvous_goes_ahead_and_refuses_mismatched_flags():
    address = f"127.0.0.1:{_free_port()}"
    out = []
    joiners = [threading.Thread(target=_join, args=(address, i, 3, out)) for i in (1, 2)]
    for j in joiners:
        j.start()
    parallel._gather_processes(address, 3, 20.0)
    for j in joiners:
        j.join()
    assert out == ["go", "go"]
    out.clear()
    joiner = threading.Thread(target=_join, args=(address, 1, 4, out))
    joiner.start()
    with pytest.raises(parallel.DistributedError, match="process 1 was started with --num_processes=4, process 0 "
                                                        "with 2"):
        parallel._gather_processes(address, 2, 20.0)
    joiner.join()
    assert "--num_processes=4" in out[0]
