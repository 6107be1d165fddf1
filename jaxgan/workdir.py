"""One writer per workdir: an advisory lock, and one-line messages for workdirs that cannot be written.

``WorkdirLock(workdir)`` takes ``fcntl.flock(LOCK_EX | LOCK_NB)`` on ``<workdir>/.lock`` and writes a JSON
record of the holder into it (pid, host, start time in UTC, command). A second trainer or sweep on the same
workdir gets `WorkdirBusy`, whose one-line message names the holder, before it writes anything. The kernel
drops a flock when its holder exits, however it exits (SIGKILL and crashes included), so a ``.lock`` file
left behind by a dead process is not a held lock: the next run takes it and overwrites the record. A clean
release deletes the file, and the directories the lock itself created when they are still empty, so a run
refused later on (a bad dataset, say) leaves nothing behind.

Multi-process runs (``jax.distributed``): process 0 alone takes the lock and every process learns the
outcome from one broadcast (`hold`), so all of them stop with the same message or all go on.

`check_path` refuses an empty ``--workdir`` (``pathlib.Path("")`` is ``.``: it would write into, and with
``--overwrite`` delete from, whatever the current directory is) and a path that is not a directory.
`describe_io_error` turns a full disk, a read-only file system or a permission error, raised as ``OSError``
or as an orbax/TensorStore error whose text carries the cause, into one line for the launchers.

Readers (``launch/sample.py``, ``launch/evaluate.py``) take no lock: they only read checkpoints.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import pathlib
import re
import socket
import sys
from typing import Iterator

from jaxgan.config import ConfigError

LOCK_NAME = ".lock"
_last_workdir: list[pathlib.Path] = []  # workdirs this process has locked (named in disk-full messages)
_RECORD_BYTES = 2048  # the holder's record as broadcast to the other processes of a multi-process run


class WorkdirError(ConfigError):
    """A workdir that cannot be used (empty path, not a directory, not writable); one line naming it."""


class WorkdirBusy(WorkdirError):
    """Another live process holds the workdir's lock; the message names it (pid, host, since when)."""


def check_path(workdir: str | os.PathLike | None, flag: str = "--workdir") -> pathlib.Path:
    """``workdir`` as a Path (``~`` expanded); `WorkdirError` for an empty value or a non-directory."""
    text = "" if workdir is None else os.fspath(workdir)
    if not str(text).strip():
        raise WorkdirError(f"{flag} must not be empty: pass the directory to write to, e.g. {flag}=runs/ring8 "
                           f"(an empty value would write into the current directory)")
    path = pathlib.Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise WorkdirError(f"{flag}={path} exists and is not a directory")
    return path


_IO_CAUSES = (  # (errno codes, text a TensorStore/orbax message carries, what it is, what to do)
    ((errno.ENOSPC, errno.EDQUOT), ("No space left on device", "Disk quota exceeded", "os_error_code='28'"),
     "no space left on device", "free some space or use another --workdir"),
    ((errno.EROFS,), ("Read-only file system", "os_error_code='30'"),
     "read-only file system", "use a writable --workdir"),
    ((errno.EACCES, errno.EPERM), ("Permission denied", "os_error_code='13'"),
     "permission denied", "use a --workdir you may write to"),
)


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def io_cause(exc: BaseException) -> tuple[str, str, str | None] | None:
    """``(what, what to do, file name or None)`` when ``exc`` (or its cause) is a full disk, a read-only
    file system or a permission error, else None. Orbax/TensorStore raise these as ValueError/RuntimeError
    whose text says ``RESOURCE_EXHAUSTED ... No space left on device [os_error_code='28']``."""
    for e in _chain(exc):
        text = str(e)
        for codes, needles, what, fix in _IO_CAUSES:
            if isinstance(e, OSError) and e.errno in codes:
                return what, fix, e.filename
            if not isinstance(e, OSError) and any(n in text for n in needles):
                path = re.search(r'"(/[^"]+)"', text)  # TensorStore quotes the file it failed on
                return what, fix, path.group(1) if path else None
    return None


def describe_io_error(exc: BaseException) -> str | None:
    """One line naming the cause of a disk/permission failure and what to do, or None for other errors."""
    cause = io_cause(exc)
    if cause is None:
        return None
    what, fix, filename = cause
    where = f" writing {filename}" if filename else ""
    if not filename and _last_workdir:  # the ENOSPC of orbax's threads names no file; the run's workdir helps
        where = f" writing into --workdir={_last_workdir[-1]}"
    return (f"{what}{where}; {fix}. Nothing incomplete is resumed: rerunning the same command continues "
            f"from the newest complete checkpoint")


def _warn(message: str) -> None:
    from absl import logging
    logging.warning("%s", message)


def _holder_text(record: dict | None) -> str:
    if not record:
        return "another process (it has not written its record yet)"
    command = record.get("command")
    command = f" ({command})" if command else ""
    return (f"pid {record.get('pid', '?')} on host {record.get('host', '?')} since "
            f"{record.get('since', '?')}{command}")


def read_holder(workdir: str | os.PathLike) -> dict | None:
    """The record in ``<workdir>/.lock`` (None if absent or unreadable). It says who holds the lock only
    while `is_locked` is true; a record left by a dead process is stale."""
    try:
        return json.loads((pathlib.Path(workdir) / LOCK_NAME).read_text())
    except (OSError, ValueError):
        return None


def is_locked(workdir: str | os.PathLike) -> bool:
    """Whether a live process holds the lock of ``workdir`` (tries a shared lock without waiting)."""
    try:
        fd = os.open(pathlib.Path(workdir) / LOCK_NAME, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


class WorkdirLock:
    """The exclusive lock of one workdir (see the module docstring); a context manager.

    ``acquire()`` creates the workdir if needed and raises `WorkdirBusy` naming the holder, or
    `WorkdirError` when the workdir cannot be created or written (read-only, full, no permission).
    """

    def __init__(self, workdir: str | os.PathLike, command: str | None = None):
        self.workdir = check_path(workdir)
        self.path = self.workdir / LOCK_NAME
        self.command = command if command is not None else " ".join(sys.argv)
        self._fd: int | None = None
        self._created: list[pathlib.Path] = []  # directories acquire() made, deepest last

    def _record(self) -> dict:
        since = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        return {"pid": os.getpid(), "host": socket.gethostname(), "since": since, "command": self.command}

    def _make_dirs(self) -> None:
        missing = []
        for d in [self.workdir, *self.workdir.parents]:
            if d.exists():
                break
            missing.append(d)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._created = missing[::-1]

    def acquire(self) -> "WorkdirLock":
        try:
            self._make_dirs()
            while True:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as e:
                    if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):  # some network/FUSE mounts
                        _warn(f"the file system of --workdir={self.workdir} does not support flock ({e.strerror}); "
                              f"running without the one-writer lock")
                        break
                    os.close(fd)
                    if not isinstance(e, BlockingIOError):
                        raise
                    raise WorkdirBusy(f"--workdir={self.workdir} is in use by {_holder_text(read_holder(self.workdir))}"
                                      f"; wait for it to finish or stop it (one run writes a workdir at a time)"
                                      ) from None
                try:  # a releasing holder unlinks the file: make sure the locked file is still the one at the path
                    same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    break
                os.close(fd)
            self._fd = fd
            _last_workdir.append(self.workdir)
            data = json.dumps(self._record()).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
        except OSError as e:
            self.release()
            cause = io_cause(e)
            if cause is None:
                raise
            raise WorkdirError(f"--workdir={self.workdir} cannot be written ({cause[0]}: {e.filename or e}); "
                               f"{cause[1]}") from None
        return self

    def release(self) -> None:
        """Unlocks and deletes the lock file, and the directories `acquire` created if they are empty."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()  # while still locked: a waiting process then retries on a fresh file
            os.close(self._fd)
            self._fd = None
        for d in reversed(self._created):
            with contextlib.suppress(OSError):
                d.rmdir()  # only succeeds on an empty directory: nothing written stays
        self._created = []

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _broadcast_message(message: str) -> str:
    """Process 0's ``message`` on every process (a fixed-size byte array through jax's broadcast)."""
    import numpy as np
    from jax.experimental import multihost_utils

    data = message.encode()[:_RECORD_BYTES]
    buffer = np.zeros(_RECORD_BYTES, np.uint8)
    buffer[:len(data)] = np.frombuffer(data, np.uint8)
    out = np.asarray(multihost_utils.broadcast_one_to_all(buffer))
    return bytes(out[out != 0].astype(np.uint8)).decode(errors="replace")


@contextlib.contextmanager
def hold(workdir: str | os.PathLike, command: str | None = None) -> Iterator[pathlib.Path]:
    """Holds the workdir's lock for the ``with`` block (on every process of a multi-process run).

    Process 0 takes the lock; with several processes the others learn through a broadcast whether it did,
    and raise the same `WorkdirError` if not. Yields the workdir as a Path. The lock is released when the
    block exits, by return or by exception (SIGTERM stops training through an exception, see
    `jaxgan.reliability.StopRequest`); if the process dies, the kernel releases it.
    """
    import jax

    path = check_path(workdir)
    lock = WorkdirLock(path, command)
    if jax.process_count() == 1:
        with lock:
            yield path
        return
    message = ""
    if jax.process_index() == 0:
        try:
            lock.acquire()
        except WorkdirError as e:
            message = str(e)
    message = _broadcast_message(message)
    if message:
        lock.release()
        raise (WorkdirBusy if "is in use by" in message else WorkdirError)(
            message if jax.process_index() == 0 else f"process 0: {message}")
    try:
        yield path
    finally:
        lock.release()


# ------------------------------------------------------------------------------------- launcher plumbing

_reported: list[str] = []  # the one line already printed for a disk/permission failure (at most one)
_quieted: list[bool] = []  # quiet_io_errors() has run in this process


def report_io_error(exc: BaseException, stream=None) -> str | None:
    """Prints ``error: <one line>`` for a disk/permission failure (once per process); returns the line or None."""
    message = describe_io_error(exc)
    if message is not None and not _reported:
        _reported.append(message)
        print(f"error: {message}", file=stream or sys.stderr, flush=True)
    return message


class _IoNoiseFilter:
    """Drops library log records (orbax, TensorStore, tensorboardX) caused by a disk/permission failure:
    each background thread logs its own traceback of the same ENOSPC; `report_io_error` prints one line."""

    def filter(self, record) -> bool:
        if record.levelno < 30:  # below WARNING
            return True
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and io_cause(exc) is not None:
            return False
        try:
            text = record.getMessage()
        except Exception:  # a malformed record: let the handler deal with it
            return True
        return not any(n in text for _, needles, _, _ in _IO_CAUSES for n in needles)


def quiet_io_errors() -> None:
    """Launchers: a full disk or read-only workdir gives one ``error:`` line, not a traceback per thread.

    Filters the (absl) log handler and replaces ``threading.excepthook`` so that a background thread dying
    of such an error prints the one line (once) instead of its traceback; other errors are unchanged."""
    import logging as std_logging
    import threading

    from absl import logging as absl_logging

    if _quieted:
        return
    _quieted.append(True)
    handler = absl_logging.get_absl_handler()
    handler.python_handler.addFilter(_IoNoiseFilter())
    for h in std_logging.getLogger().handlers:
        h.addFilter(_IoNoiseFilter())
    previous = threading.excepthook

    def hook(args):
        if args.exc_value is not None and report_io_error(args.exc_value) is not None:
            return
        if _reported and args.exc_type in (EOFError, BrokenPipeError, ConnectionResetError, ValueError, OSError):
            # the process is ending on the reported disk/permission failure: a library's background thread (e.g.
            # tensorboardX's event queue) now finds its pipe or file closed; that is fallout, not a second error
            return
        previous(args)
    threading.excepthook = hook
