"""Ctrl-C and SIGTERM as requests, from a launcher's first lines: this module imports no JAX, so the handler is
in place before JAX (about a second of imports) loads.

`SignalRequest` turns SIGINT/SIGTERM into a flag, ``reason``, that the program reads at safe points; a second
signal (or the first, with ``at_once``) raises KeyboardInterrupt. `jaxgan.reliability.StopRequest`, the
training loop's handler, is one: entered while another one handles the signals, it takes over the request that
one received, so a Ctrl-C during start-up stops a run before its first step (`adopt`).

Why not Python's default handler: it raises KeyboardInterrupt wherever the main thread is, and where that is a
garbage-collection callback (JAX registers one, ``_xla_gc_callback``, which runs very often while JAX is
imported and programs are traced) or a ``__del__``, Python prints "Exception ignored in: ..." and drops it: the
program goes on as if nothing happened. `SignalRequest` never raises there; it hands the signal back to the
interpreter a moment later (``_thread.interrupt_main``), so the exception is raised in ordinary code.

Launchers (`launch/`) call `install` first thing and read ``reason`` when they start; exit code
`EXIT_INTERRUPTED` means a signal stopped the program before it wrote its result (or, for training, a
checkpoint).
"""
from __future__ import annotations

import _thread
import gc
import os
import signal
import sys
import threading
from typing import Any, Callable, Sequence

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a program killed by Ctrl-C
_REDELIVER_S = 0.01  # a gc callback or __del__ that swallowed a signal's exception has long returned by then


def _exceptions_dropped_in(frame) -> bool:
    """Whether an exception raised in ``frame`` would be printed and dropped: a gc callback or ``__del__`` runs."""
    callbacks = {getattr(getattr(cb, "__func__", cb), "__code__", None) for cb in gc.callbacks}
    while frame is not None:
        if frame.f_code in callbacks or frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


class SignalRequest:
    """Context manager turning ``signals`` into a request (``reason``: the first signal's name, e.g. "SIGINT").

    The first signal sets ``reason`` and prints `notice`; the program stops where it reads it. A second one
    raises ``KeyboardInterrupt("second SIGINT")`` and restores the handlers found on entry. With
    ``at_once=True`` the first signal raises (for programs with no safe point to stop at).
    """

    def __init__(self, signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT), *, at_once: bool = False):
        self._signals = tuple(signals)
        self._previous: dict[int, Any] = {}
        self._raising: str | None = None  # the KeyboardInterrupt's message while it waits to be raised
        self.reason: str | None = None
        self.at_once = at_once

    def signals_to_handle(self) -> tuple[int, ...]:
        return self._signals

    def __enter__(self) -> "SignalRequest":
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers can only be installed from the main thread
        for sig in self.signals_to_handle():
            self._previous[sig] = signal.signal(sig, self._handle)
            self.adopt(self._previous[sig])
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
            outer = getattr(handler, "__self__", None)
            if isinstance(outer, SignalRequest) and outer.reason is None:
                outer.reason = self.reason  # the request stands in the enclosing scope too
        self._previous.clear()

    def adopt(self, handler: Any) -> None:
        """Takes over the request of the `SignalRequest` whose handler ``handler`` is (if it is one)."""
        outer = getattr(handler, "__self__", None)
        if isinstance(outer, SignalRequest) and self.reason is None:
            self.reason = outer.reason

    def notice(self, name: str) -> None:
        """Says what the first signal does (stderr)."""
        print(f"{name} received: stopping at the next safe point (send it again to stop at once)", file=sys.stderr,
              flush=True)

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self._raising is None:
            if self.reason is None and not self.at_once:
                self.reason = name
                self.notice(name)
                return
            self._raising = f"second {name}" if self.reason is not None else name
            self.reason = self.reason or name
        if _exceptions_dropped_in(frame):  # deliver it again shortly, once the gc callback / __del__ has returned
            # (from another thread: tripped here, the signal would run this handler again at once, inside itself)
            timer = threading.Timer(_REDELIVER_S, _thread.interrupt_main, (signum,))
            timer.daemon = True
            timer.start()
            return
        message, self._raising = self._raising, None
        self.__exit__()
        raise KeyboardInterrupt(message)


def install(**kwargs) -> SignalRequest:
    """A `SignalRequest` handling SIGINT and SIGTERM from now on, for the rest of the process (launchers).

    A KeyboardInterrupt that nothing catches (a second Ctrl-C while modules are still being imported) is then
    one line on stderr rather than a traceback.
    """
    previous_hook = sys.excepthook

    def one_line_interrupts(kind, value, traceback):
        if issubclass(kind, KeyboardInterrupt):
            print(f"{value or 'SIGINT'}: stopped at once", file=sys.stderr, flush=True)
        else:
            previous_hook(kind, value, traceback)

    sys.excepthook = one_line_interrupts
    return SignalRequest(**kwargs).__enter__()


def run_or_stop_at_once(main: Callable[[], int], request: SignalRequest, message: str) -> int:
    """``main()``'s exit code, or, on a signal before or during it, one line ``SIGNAL: message`` on stderr and
    the process ends with `EXIT_INTERRUPTED` (`exit_now`): for launchers without a safe point to stop at, a signal
    stops them at once."""
    request.at_once = True
    try:
        if request.reason is None:
            return main()
    except KeyboardInterrupt:
        pass
    print(f"{request.reason or 'SIGINT'}: {message}", file=sys.stderr, flush=True)
    exit_now(EXIT_INTERRUPTED)


def exit_now(code: int) -> None:
    """Ends the process with ``code`` without the interpreter's shutdown: a computation abandoned by an interrupt
    may still run on XLA's threads, and finalizing Python under them crashed (a segfault, seen with launch/sweep.py
    stopped mid-step). For a program that was stopped at once and has nothing left to write."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
