"""Reliability pieces of the training loop: the NaN/Inf guard, stop requests (SIGTERM/SIGINT, preemption), resume.

**Divergence guard.** `guard_step(step, policy)` wraps a train step so that it also carries a small device-side
`NanRecord`: the first step at which anything went non-finite, which metrics were non-finite at that step, and
how many steps were non-finite. Updating it costs a few scalar ops inside the compiled step and no host sync;
the loop reads it only at log steps and before every checkpoint (`check`), so the message can name the step and
the loss term that went non-finite *first*, even when the run is only checked every ``log_every`` steps. With
``policy="skip"`` the wrapper also discards a non-finite update inside the compiled program (``jnp.where`` on
every leaf), so the step can still donate its input state.

``--on_nan`` policies: ``stop`` (raise `DivergenceError`, exit code `EXIT_DIVERGED`), ``skip`` (drop the update
of a non-finite step and go on with the next batch; stop when a whole log window was non-finite), ``rollback``
(restore the last good checkpoint, multiply the learning rates by ``--nan_lr_factor``, go on; at most
``--max_rollbacks`` times per invocation). A state is checked before each checkpoint, so a non-finite state is
never saved over a good one and the newest checkpoint is always the last good one.

**Stop requests.** `StopRequest` turns SIGTERM and SIGINT into a flag that the loop reads after each step: the
current step finishes, a checkpoint is written synchronously and `TrainingInterrupted` is raised (the launcher
prints how to resume and exits 0). A signal received before the loop (launch/train.py installs a
`jaxgan.interrupts.SignalRequest` before it imports JAX) stops the run before its first step; with no checkpoint
yet, `TrainingInterrupted` has ``step`` 0 and there is nothing to resume. A second signal stops at once
(KeyboardInterrupt). With several processes,
`jax.distributed` owns SIGTERM (its preemption notifier); `StopRequest.should_stop` then asks
``multihost_utils.reached_preemption_sync_point`` every step, which turns true on every process at the same
step, and agrees on local SIGINTs at log steps with an all-gather, so every process saves the same step.
"""
from __future__ import annotations

import os
import shlex
import signal
import sys
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jaxgan import interrupts

NAN_POLICIES = ("stop", "skip", "rollback")
EXIT_DIVERGED = 3


class DivergenceError(RuntimeError):
    """A loss or parameter became NaN/Inf; the message names the step, the term and the last good checkpoint."""


class TrainingInterrupted(Exception):
    """Training stopped on request (SIGTERM/SIGINT/preemption) with a checkpoint at ``step`` (0: none yet)."""

    def __init__(self, step: int, reason: str, checkpoint_dir: str):
        self.step, self.reason, self.checkpoint_dir = step, reason, checkpoint_dir
        super().__init__(f"{reason}: stopped after step {step}; checkpoint in {checkpoint_dir}" if step else
                         f"{reason}: interrupted before the first checkpoint; nothing to resume")


# ------------------------------------------------------------------------------------------- divergence guard

def nan_record_init(metric_names: Sequence[str]) -> dict:
    """A fresh record: ``first_step`` -1, ``bad`` False per metric name, ``count`` 0 (all device scalars)."""
    return {"first_step": jnp.array(-1, jnp.int32), "count": jnp.array(0, jnp.int32),
            "bad": {name: jnp.array(False) for name in metric_names if name != "finite"}}


def nan_record_update(record: dict, metrics: Mapping[str, jax.Array], step: jax.Array) -> dict:
    """Notes ``step`` (the completed step's number) when ``metrics["finite"]`` says it was not finite."""
    is_bad = metrics["finite"] < 1
    first = jnp.logical_and(is_bad, record["first_step"] < 0)
    bad = {name: jnp.where(first, jnp.logical_not(jnp.all(jnp.isfinite(metrics[name]))), was)
           for name, was in record["bad"].items()}
    return {"first_step": jnp.where(first, jnp.asarray(step, jnp.int32), record["first_step"]),
            "count": record["count"] + is_bad.astype(jnp.int32), "bad": bad}


def guard_step(step: Callable, policy: str) -> Callable:
    """``step(state, batch) -> (state, metrics)`` to ``guarded(state, batch, record) -> (state, metrics, record)``.

    With ``policy="skip"`` a non-finite step returns its input state unchanged except for ``step`` and ``key``
    (both advance, so the next batch gets fresh randomness and step-dependent schedules stay on time).
    ``metrics["skipped"]`` is then 1.0 for a discarded update.
    """
    if policy not in NAN_POLICIES:
        raise ValueError(f"on_nan={policy!r} is not one of {NAN_POLICIES}")

    def guarded(state, batch, record):
        new_state, metrics = step(state, batch)
        ok = metrics["finite"] >= 1
        record = nan_record_update(record, metrics, new_state.step)
        if policy == "skip":
            kept = jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_state, state)
            new_state = kept.replace(step=new_state.step, key=new_state.key)
            metrics = {**metrics, "skipped": 1.0 - ok.astype(jnp.float32)}
        return new_state, metrics, record

    return guarded


def metric_names(step: Callable, state: Any, batch: Any) -> list[str]:
    """The metric names ``step`` returns, found by abstract evaluation (no compile, no computation)."""
    _, metrics = jax.eval_shape(step, state, batch)
    return list(metrics)


def read_record(record: dict) -> tuple[int, int, list[str]]:
    """(first non-finite step or -1, number of non-finite steps, the metrics non-finite at the first one)."""
    host = jax.device_get(record)
    return int(host["first_step"]), int(host["count"]), [name for name, bad in host["bad"].items() if bool(bad)]


def _order_terms(names: list[str]) -> list[str]:
    # loss terms first (D's update runs before G's in a step), then totals, then gradient norms and the rest
    def rank(name):
        tail = name.split("/")[-1]
        return (0 if name.startswith("d/") else 1 if name.startswith("g/") else 2,
                3 if tail == "grad_norm" else 2 if tail == "total" else 1 if tail.endswith("_output") else 0)
    return sorted(names, key=rank)


def divergence_message(first_step: int, bad: list[str], detected_at: int, last_good: int | None,
                       checkpoint_dir: str, *, policy: str = "stop", extra: str = "", damaged: str = "") -> str:
    """One line: the step, the first non-finite loss term (and the others), the last good checkpoint (the newest
    that verifies and is finite; ``damaged``: the line saying every checkpoint is damaged, when that is why
    ``last_good`` is None)."""
    terms = _order_terms(bad)
    what = (f"loss term {terms[0]} became NaN/Inf first" + (f" (also non-finite: {', '.join(terms[1:])})"
                                                             if terms[1:] else "")
            if terms else "the parameters became NaN/Inf (every loss term was finite)")
    where = (f"last good checkpoint: step {last_good} in {checkpoint_dir}" if last_good is not None
             else f"no good checkpoint: {damaged}" if damaged else f"no checkpoint was written yet in {checkpoint_dir}")
    # A rerun with other --g_lr/--d_lr is another configuration: it needs --overwrite, which drops the checkpoints.
    if damaged:
        hint = "; --overwrite starts afresh (it deletes them)"
    elif policy != "stop":
        hint = ""
    elif last_good is not None:
        hint = "; rerun with --on_nan=rollback to continue from it with lower learning rates (--nan_lr_factor)"
    else:
        hint = ("; there is nothing to continue from: rerun with --on_nan=rollback to restart from step 0 with lower "
                "learning rates (--nan_lr_factor), or with lower --g_lr/--d_lr and --overwrite")
    detected = f" (detected at step {detected_at})" if detected_at != first_step else ""
    return f"diverged at step {first_step}{detected}: {what}; {where}{extra}{hint}"


def set_learning_rates(state, g_lr: float, d_lr: float):
    """``state`` with the players' injected learning rates (and ``hparams`` g_lr/d_lr, if any) set."""
    from jaxgan.state import set_learning_rate
    hparams = dict(state.hparams)
    for name, value in (("g_lr", g_lr), ("d_lr", d_lr)):
        if name in hparams:
            hparams[name] = jnp.asarray(value, jnp.asarray(hparams[name]).dtype)
    return state.replace(g=state.g.replace(opt_state=set_learning_rate(state.g.opt_state, g_lr)),
                         d=state.d.replace(opt_state=set_learning_rate(state.d.opt_state, d_lr)), hparams=hparams)


def learning_rates(state) -> tuple[float, float]:
    from jaxgan.state import get_learning_rate
    return (float(jax.device_get(get_learning_rate(state.g.opt_state))),
            float(jax.device_get(get_learning_rate(state.d.opt_state))))


# ---------------------------------------------------------------------------------------------- stop requests

class StopRequest(interrupts.SignalRequest):
    """Context manager turning SIGTERM/SIGINT into a stop request read by `should_stop` after each step.

    Entered while a launcher's `jaxgan.interrupts.SignalRequest` handles the signals (launch/train.py installs
    one before importing JAX), it starts with the request that one received during start-up.
    """

    def signals_to_handle(self) -> tuple[int, ...]:
        # jax.distributed's preemption notifier owns SIGTERM in a multi-process run; see should_stop
        return tuple(s for s in self._signals if not (s == signal.SIGTERM and jax.process_count() > 1))

    def notice(self, name: str) -> None:
        logging.warning("%s received: finishing the current step, then writing a checkpoint and stopping "
                        "(send it again to stop at once)", name)

    def request(self, reason: str = "stop requested") -> None:
        """Asks the loop to stop after the current step (what a signal does)."""
        self.reason = self.reason or reason

    def should_stop(self, step: int, *, sync_point: bool) -> bool:
        """Whether to stop after ``step``; the same answer on every process.

        ``sync_point``: every process calls this at this step (log steps), so local requests may be agreed on
        with a collective. Single-process runs answer from the local flag at every step.
        """
        if jax.process_count() == 1:
            return self.reason is not None
        from jax.experimental import multihost_utils
        try:
            if multihost_utils.reached_preemption_sync_point(step):
                self.reason = self.reason or "preemption"
                return True
        except RuntimeError:  # preemption service off (jax_enable_preemption_service=False)
            pass
        if sync_point:
            local = np.array([self.reason is not None], np.int32)
            if bool(np.asarray(multihost_utils.process_allgather(local)).any()):
                self.reason = self.reason or "stop requested on another process"
                return True
        return False


def resume_command(argv: Sequence[str] | None = None, cwd: str | None = None) -> str:
    """The shell command that resumes this run: the same command line without ``--overwrite``."""
    argv = list(sys.argv if argv is None else argv)
    drop = {"--overwrite", "-overwrite", "--overwrite=true", "--overwrite=True", "--overwrite=1"}
    args = [a for a in argv[1:] if a not in drop]
    command = " ".join(shlex.quote(a) for a in [sys.executable, argv[0], *args])
    return f"cd {shlex.quote(cwd or os.getcwd())} && {command}"

