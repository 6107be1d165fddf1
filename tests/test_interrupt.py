"""Ctrl-C from the first moment of a launcher: one line, no traceback, nothing swallowed, the run stops.

Python's own handler raises KeyboardInterrupt wherever the main thread is; inside JAX's garbage-collection
callback that exception is printed as "Exception ignored" and dropped, and a training run went on to its end
(exit 0). `jaxgan.interrupts.SignalRequest` never raises there. The subprocess tests send SIGINT while
launch/train.py imports JAX, while it starts up (compiles, before its first checkpoint), and while it trains.
"""
import gc
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import REPO, subprocess_xla_flags
from jaxgan import interrupts, reliability
from jaxgan.checkpoint import Checkpointer

CACHE = str(REPO / ".jax_cache")
ENV = {**os.environ, "XLA_FLAGS": subprocess_xla_flags(1), "JAX_PLATFORMS": "cpu"}
# a run far too long to finish within the test: reaching its end would be a timeout
TRAIN = ["--dataset=ring8", "--width=16", "--depth=2", "--batch_size=32", "--steps=1000000", "--log_every=5",
         "--checkpoint_every=100000"]


@pytest.fixture
def restore_signals():
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.fixture
def signal_from_gc_callback():
    """``send(sig)``: the next garbage collection runs a callback that sends ``sig`` to this process once and runs
    Python code while it is pending, so the handler runs inside the callback (as inside JAX's
    ``_xla_gc_callback``). Arm it inside the block that expects the signal's exception: the next collection can
    be an automatic one, triggered by any allocation after ``send``."""
    pending = []

    def callback(phase, info):
        if phase == "start" and pending:
            os.kill(os.getpid(), pending.pop())
            for _ in range(1000):  # backward jumps: the pending handler runs here
                pass

    gc.callbacks.append(callback)
    yield pending.append
    gc.callbacks.remove(callback)


def _run_python_code(seconds=10.0):
    # Busy Python code for up to ``seconds``; the expected KeyboardInterrupt ends it early (the redelivery runs on a
    # timer thread 10 ms later, which a loaded 2-core machine may schedule late: 1 s was too short under a full suite)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass


def test_a_second_signal_inside_a_gc_callback_is_raised_not_dropped(restore_signals, signal_from_gc_callback,
                                                                     monkeypatch):
    dropped = []
    monkeypatch.setattr(sys, "unraisablehook", dropped.append)
    on_entry = signal.getsignal(signal.SIGINT)  # Python's default_int_handler, or SIG_IGN in a background job
    with reliability.StopRequest() as stop:
        stop.request()  # the first request (a signal, or a Ctrl-C during start-up)
        with pytest.raises(KeyboardInterrupt, match="second SIGINT"):
            signal_from_gc_callback(signal.SIGINT)  # armed inside: any collection from here on may send it
            gc.collect()
            _run_python_code()
    assert dropped == []  # Python's handler would have raised in the callback: "Exception ignored", and lost
    assert signal.getsignal(signal.SIGINT) is on_entry  # the handlers found on entry are back


def test_at_once_raises_outside_a_gc_callback(restore_signals, signal_from_gc_callback, monkeypatch):
    dropped = []
    monkeypatch.setattr(sys, "unraisablehook", dropped.append)
    with interrupts.SignalRequest(at_once=True) as request:
        with pytest.raises(KeyboardInterrupt, match="^SIGTERM$"):
            signal_from_gc_callback(signal.SIGTERM)
            gc.collect()
            _run_python_code()
    assert dropped == [] and request.reason == "SIGTERM"


def test_training_loop_request_takes_over_a_signal_received_during_start_up(restore_signals, capsys):
    outer = interrupts.SignalRequest().__enter__()
    os.kill(os.getpid(), signal.SIGINT)
    _run_python_code(0.01)
    assert outer.reason == "SIGINT" and "SIGINT received" in capsys.readouterr().err
    with reliability.StopRequest() as stop:
        assert stop.reason == "SIGINT" and stop.should_stop(1, sync_point=False)
        with pytest.raises(KeyboardInterrupt, match="second SIGINT"):  # the second signal stops at once
            os.kill(os.getpid(), signal.SIGINT)
            _run_python_code()
        assert signal.getsignal(signal.SIGINT) == outer._handle
    outer.__exit__()
    # a request made inside stands outside too
    fresh = interrupts.SignalRequest().__enter__()
    with reliability.StopRequest(signals=(signal.SIGINT,)) as stop:
        assert stop.reason is None
        os.kill(os.getpid(), signal.SIGINT)
        _run_python_code(0.01)
    assert fresh.reason == "SIGINT"


# ----------------------------------------------------------------------------------------- launch/train.py

def _start(script, workdir, *args):
    command = [sys.executable, str(REPO / "launch" / script), f"--workdir={workdir}", f"--jax_cache_dir={CACHE}",
               *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=ENV)


def _wait_for(proc, condition, what, timeout=120):
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (rc {proc.returncode}) before {what}: {proc.communicate()[1][-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {what} within {timeout} s")
        time.sleep(0.005)


def _importing_jax(proc):
    """True once the process has mapped jaxlib's extension: JAX is being imported (the handler is in place)."""
    try:
        with open(f"/proc/{proc.pid}/maps") as f:
            return "jaxlib" in f.read()
    except OSError:
        return False


def _finish(proc, timeout=120):
    out, err = proc.communicate(timeout=timeout)  # a run that went on would time out here (1e6 steps)
    assert "Traceback" not in err and "Exception ignored" not in err, err[-3000:]
    return out, err


def _last_lines(out, err):
    """The launcher's own lines (absl log lines start with a level letter and a date)."""
    return [line for line in (out + err).splitlines() if line and not re.match(r"[IWEF]\d{4} ", line)]


def _logged_steps(workdir):
    path = workdir / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines(keepends=True)
            if line.endswith("\n")] if path.exists() else []


def _assert_stopped_before_the_first_checkpoint(proc, out, err, workdir):
    assert proc.returncode == interrupts.EXIT_INTERRUPTED == 130, err[-3000:]
    assert _last_lines(out, err) == ["SIGINT received: stopping at the next safe point (send it again to stop at once)",
                                     "SIGINT: interrupted before the first checkpoint; nothing to resume"]
    assert Checkpointer(workdir / "checkpoints", save_every=100000).latest_step() is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/maps")
def test_train_sigint_while_importing_jax(tmp_path):
    proc = _start("train.py", tmp_path / "w", *TRAIN)
    _wait_for(proc, lambda: _importing_jax(proc), "import of jaxlib")
    proc.send_signal(signal.SIGINT)
    out, err = _finish(proc)
    assert proc.returncode == interrupts.EXIT_INTERRUPTED, err[-3000:]
    assert _last_lines(out, err)[-1] == "SIGINT: interrupted during start-up; nothing was written"
    assert not (tmp_path / "w").exists()


def test_train_sigint_during_start_up_stops_before_the_first_step(tmp_path):
    workdir = tmp_path / "w"
    proc = _start("train.py", workdir, *TRAIN)
    _wait_for(proc, lambda: (workdir / "config.json").exists(), "config.json")  # next: compile init, restore
    proc.send_signal(signal.SIGINT)
    out, err = _finish(proc)
    if proc.returncode == 0:  # the loop had started: the first step ran and was checkpointed
        assert re.fullmatch(r"SIGINT: stopped after step 1 with a checkpoint in \S+; resume with: .+",
                            _last_lines(out, err)[-1])
    else:
        _assert_stopped_before_the_first_checkpoint(proc, out, err, workdir)
        assert _logged_steps(workdir) == []


def test_train_sigint_during_training_checkpoints_and_prints_the_resume_command(tmp_path):
    workdir = tmp_path / "w"
    proc = _start("train.py", workdir, *TRAIN)
    _wait_for(proc, lambda: _logged_steps(workdir), "logged step")
    proc.send_signal(signal.SIGINT)
    out, err = _finish(proc)
    assert proc.returncode == 0, err[-3000:]
    match = re.fullmatch(r"SIGINT: stopped after step (\d+) with a checkpoint in \S+; resume with: .+",
                         _last_lines(out, err)[-1])
    assert match and 5 <= int(match.group(1)) < 1000000
    assert Checkpointer(workdir / "checkpoints", save_every=100000).latest_step() == int(match.group(1))


def test_train_second_sigint_stops_at_once(tmp_path):
    workdir = tmp_path / "w"
    proc = _start("train.py", workdir, *TRAIN)
    _wait_for(proc, lambda: (workdir / "config.json").exists(), "config.json")
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = _finish(proc)
    assert proc.returncode == 130, err[-3000:]
    assert _last_lines(out, err)[-1] == ("error: interrupted twice; stopped at once (the newest complete checkpoint "
                                         "resumes the run)")


def _wait_for_line(proc, pattern, timeout=120):
    """Reads stderr up to a line matching ``pattern`` (the process keeps running); returns the lines read."""
    lines, found = [], threading.Event()

    def read():
        for line in proc.stderr:
            lines.append(line)
            if re.search(pattern, line):
                found.set()
                return

    threading.Thread(target=read, daemon=True).start()
    if not found.wait(timeout):
        proc.kill()
        pytest.fail(f"no line matching {pattern!r} within {timeout} s: {''.join(lines)[-3000:]}")
    return "".join(lines)


def test_sweep_sigint_while_it_trains_checkpoints_and_exits_0(tmp_path):
    """A study stops like a run: after the current call, with a checkpoint of the chunk in progress, exit 0 and
    the resume command (tests/test_study_resume.py reruns it)."""
    workdir = tmp_path / "w"
    proc = _start("sweep.py", workdir, "--dataset=ring8", "--width=8", "--depth=1", "--batch_size=16", "--seeds=2",
                  "--steps=1000000", "--log_every=10", "--checkpoint_every=1000000")
    _wait_for_line(proc, r"step 10/1000000")  # training
    proc.send_signal(signal.SIGINT)
    out, err = _finish(proc)
    assert proc.returncode == 0, err[-3000:]
    (line,) = _last_lines(out, "")  # stdout: the one line
    assert re.match(r"SIGINT: study stopped after step \d+ of a chunk; its state is in .*/w/study and finished "
                    r"groups in .*/w/results.json; resume with: cd .* && .*launch/sweep.py .*--steps=1000000", line), line
    step = int(re.search(r"after step (\d+)", line).group(1))
    assert (workdir / "study" / "group_000" / "chunk_00000_checkpoints" / str(step)).is_dir()
    assert not (workdir / "results.json").exists()  # no group finished
