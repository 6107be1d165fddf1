"""Checkpoints: the whole GANState plus the data iterator's position, through orbax, with an integrity record.

A checkpoint is written to ``<dir>/<step>.orbax-checkpoint-tmp`` and renamed when complete, so a crash or
SIGKILL mid-write leaves nothing that `restore_latest` would pick up. Restoring takes an abstract state
(``jax.eval_shape`` of the init, optionally with shardings) so a checkpoint written with one mesh restores
onto another.

Integrity: each checkpoint holds a third orbax item, ``integrity`` (JSON): the SHA-256 of every leaf of the
state (dtype, shape and bytes, computed on the host before the save starts, so asynchronous saving cannot
race it; every process computes the same record from the replicated state and orbax writes it once) and of
the data state. A restore recomputes the digests of what it read; a checkpoint that cannot be read, or
whose digests differ, is damaged. `restore_latest` then falls back to the newest checkpoint that verifies,
with one warning line per checkpoint it skipped. A writer (the trainer) renames the skipped newer step
directories to ``<step>.damaged`` (kept for inspection, ignored by orbax) so the resumed run can write those
steps again; a read-only `Checkpointer` (samplers, evaluators) reads and never creates, renames or cleans
anything, so it is safe on a workdir whose trainer is writing ``<step>.orbax-checkpoint-tmp``. Checkpoints
written before integrity records existed restore with a warning that they cannot be verified.
"""
from __future__ import annotations

import hashlib
import json
import logging as logging_std
import os
import re
import sys
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from jaxgan.config import ConfigError

RECORD_ITEM = "integrity"
RECORD_FORMAT = "jaxgan-integrity-1"
STEP_METADATA_FILE = "_CHECKPOINT_METADATA"  # orbax's per-step metadata: names the items a checkpoint holds
DAMAGED_SUFFIX = ".damaged"


class CheckpointError(ConfigError):
    """A checkpoint (or every checkpoint of a directory) is damaged; the message is one line naming the damage."""


class _Damaged(Exception):
    """Internal: why one checkpoint does not verify (one line)."""


def _with_sharding(leaf):
    """A leaf without a sharding restores onto one local device, whatever mesh wrote the checkpoint (orbax would
    otherwise try the writer's topology and fail on another device count)."""
    leaf = ocp.utils.to_shape_dtype_struct(leaf)
    if isinstance(leaf, jax.ShapeDtypeStruct) and getattr(leaf, "sharding", None) is None:
        leaf = jax.ShapeDtypeStruct(leaf.shape, leaf.dtype,
                                    sharding=jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))
    return leaf


def _host_array(leaf) -> np.ndarray:
    """The whole value of ``leaf`` on this host (typed PRNG keys as their key data)."""
    if isinstance(leaf, jax.Array):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        if not leaf.is_fully_addressable:
            if leaf.is_fully_replicated:  # multi-process, replicated: this process holds a full copy
                leaf = leaf.addressable_data(0)
            else:
                from jax.experimental import multihost_utils
                leaf = multihost_utils.process_allgather(leaf, tiled=True)
    return np.asarray(jax.device_get(leaf))


def _digest(array: np.ndarray) -> str:
    h = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def _host_leaves(state: Any) -> dict[str, np.ndarray]:
    """{key path (``jax.tree_util.keystr``): host array} of every leaf of ``state``."""
    return {jax.tree_util.keystr(path): _host_array(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]}


def _json_digest(data_state: dict) -> str:
    return hashlib.sha256(json.dumps(data_state, sort_keys=True).encode()).hexdigest()


def integrity_record(state: Any, data_state: dict) -> dict:
    """The JSON record saved beside a checkpoint: SHA-256 of every state leaf and of the data state."""
    return {"format": RECORD_FORMAT, "algorithm": "sha256",
            "leaves": {path: _digest(a) for path, a in _host_leaves(state).items()},
            "data": _json_digest(data_state)}


def _verify(record: Any, leaves: dict[str, np.ndarray], data_state: dict) -> None:
    """Raises `_Damaged` naming the first difference between ``record`` and what was read."""
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT or not isinstance(
            record.get("leaves"), dict):
        raise _Damaged("its integrity record is malformed")
    expected = record["leaves"]
    if set(expected) != set(leaves):
        raise _Damaged(f"its integrity record lists {len(expected)} arrays, the checkpoint has {len(leaves)}")
    wrong = [path for path, a in leaves.items() if _digest(a) != expected[path]]
    if wrong:
        raise _Damaged(f"{len(wrong)} of {len(leaves)} arrays do not match their SHA-256 in the integrity record "
                       f"(first: {wrong[0]})")
    if record.get("data") != _json_digest(data_state):
        raise _Damaged("the data iterator state does not match its SHA-256 in the integrity record")


def _non_finite(leaves: dict[str, np.ndarray]) -> str | None:
    """The key path of the first floating-point leaf with a NaN/Inf, or None."""
    for path, a in leaves.items():
        if np.issubdtype(a.dtype, np.inexact) and not np.all(np.isfinite(a)):
            return path
    return None


def _one_line(error: BaseException, directory: str = "", limit: int = 300) -> str:
    """``error`` in one short line: TensorStore's spec dumps and driver chain dropped, paths relative to
    ``directory``, the cause (at the end of TensorStore's messages) kept when shortened."""
    if "See full TensorStore details" in str(error) and error.__cause__ is not None:
        error = error.__cause__  # orbax's wrapper: the TensorStore error underneath names the damage
    text = " ".join(str(error).split()).split(" [tensorstore_spec")[0]
    text = re.sub(r'Error opening "\w+" driver: ', "", text)
    if directory:
        text = text.replace(directory.rstrip("/") + "/", "")
    text = f"{type(error).__name__}: {text or repr(error)}"
    return text if len(text) <= limit else text[:limit // 3] + " ... " + text[-(limit - limit // 3 - 5):]


class _QuietAbandonedReads(logging_std.Filter):
    """After a failed restore, TensorStore reads orbax abandoned finish on their own: their futures log "Future
    exception was never retrieved" (asyncio), and their callbacks and coroutines raise "Event loop is closed" or
    the read error into `sys.unraisablehook`: dozens of tracebacks per damaged checkpoint. Those naming a step
    directory that failed to restore (the failure itself is reported in one line), and "Event loop is
    closed", are dropped; everything else passes."""

    def __init__(self):
        super().__init__()
        self.directories: set[str] = set()
        self._previous_hook = None

    def install(self, step_directory: str) -> None:
        self.directories.add(step_directory)
        if self._previous_hook is None:
            logging_std.getLogger("asyncio").addFilter(self)
            self._previous_hook = sys.unraisablehook
            sys.unraisablehook = self._unraisable

    def filter(self, record) -> bool:
        message = record.getMessage()
        return not ("never retrieved" in message and any(d in message for d in self.directories))

    def _unraisable(self, unraisable) -> None:
        message = str(unraisable.exc_value)
        if not (message == "Event loop is closed" or any(d in message for d in self.directories)):
            self._previous_hook(unraisable)


_QUIET = _QuietAbandonedReads()


class _DropMessage(logging_std.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record) -> bool:
        return self.text not in record.getMessage()


def _bad_json_file(step_dir: str) -> str | None:
    """The first JSON file of a checkpoint (of an item that is there) that is missing or does not parse, as
    "<item>/<file> is missing" or "... is not valid JSON (...)"; orbax's errors for these do not name it."""
    names = [os.path.join(item, name) for item, name in (("state", "_METADATA"), ("data", "metadata"),
                                                         (RECORD_ITEM, "metadata"))
             if os.path.isdir(os.path.join(step_dir, item))]
    folder = os.path.join(step_dir, "state", "array_metadatas")
    if os.path.isdir(folder):
        names += [os.path.join("state", "array_metadatas", name) for name in sorted(os.listdir(folder))]
    for name in names:
        try:
            with open(os.path.join(step_dir, name), "rb") as f:
                json.loads(f.read().decode("utf-8"))
        except FileNotFoundError:
            return f"{name} is missing"
        except (OSError, ValueError) as e:
            return f"{name} is not valid JSON ({_one_line(e, limit=120)})"
    return None


def _all_processes_agree(ok: bool) -> bool:
    """Whether ``ok`` holds on every process (each process reads its own files, so they may disagree)."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils
    return bool(np.all(multihost_utils.process_allgather(np.asarray(ok, np.int32))))


class Checkpointer:
    """Saves every ``save_every`` steps (and on demand), keeps the newest ``keep``.

    ``save(step, state, data_state)``: ``data_state`` is a JSON-serialisable dict (the iterator position).
    ``read_only=True``: restores only; creates, deletes, renames and cleans up nothing in ``directory``.
    """

    def __init__(self, directory: str | os.PathLike, *, save_every: int = 1, keep: int = 3, async_save: bool = True,
                 read_only: bool = False):
        if save_every < 1:
            raise ValueError(f"--checkpoint_every must be >= 1, got {save_every}")
        if keep < 1:
            raise ValueError(f"--keep_checkpoints must be >= 1, got {keep}")
        self.directory = os.path.abspath(directory)
        self.read_only = read_only
        if read_only:  # every option orbax would otherwise override (with a warning each) set as it wants them
            options = ocp.CheckpointManagerOptions(read_only=True, create=False, cleanup_tmp_directories=False,
                                                   max_to_keep=None, save_interval_steps=0,
                                                   enable_async_checkpointing=False, lightweight_initialize=True)
        else:
            options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=save_every, create=True,
                                                   enable_async_checkpointing=async_save,
                                                   cleanup_tmp_directories=True)
        quiet = _DropMessage("Given directory is read only")  # orbax's notice on every read-only open
        logging_std.getLogger("absl").addFilter(quiet)
        try:
            self._manager = ocp.CheckpointManager(self.directory, options=options,
                                                  item_names=("state", "data", RECORD_ITEM))
        finally:
            logging_std.getLogger("absl").removeFilter(quiet)

    def save(self, step: int, state: Any, data_state: dict, *, force: bool = False) -> bool:
        """Saves when ``step`` is on the interval (or ``force``); returns whether it saved."""
        if self.read_only:
            raise RuntimeError(f"Checkpointer({self.directory!r}, read_only=True) cannot save")
        if not force and not self._manager.should_save(step):
            return False
        data_state = json.loads(json.dumps(data_state))  # as it will read back (tuples become lists)
        record = integrity_record(state, data_state)  # on the host, before the (asynchronous) write starts
        return self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                                data=ocp.args.JsonSave(data_state),
                                                                **{RECORD_ITEM: ocp.args.JsonSave(record)}),
                                  force=force)

    def should_save(self, step: int) -> bool:
        """Whether `save` (without ``force``) would write ``step`` (interval, first save, or preemption)."""
        return self._manager.should_save(step)

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, verified or not (see `restore_latest`)."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def _step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def _has_record(self, step: int) -> bool:
        """Whether checkpoint ``step`` has an integrity record; False only for one written without (older
        jaxgan); raises `_Damaged` when the record was written and is gone, or that cannot be told."""
        if os.path.isdir(os.path.join(self._step_dir(step), RECORD_ITEM)):
            return True
        try:
            with open(os.path.join(self._step_dir(step), STEP_METADATA_FILE)) as f:
                items = json.load(f)["item_handlers"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise _Damaged(f"it has no integrity record and its {STEP_METADATA_FILE} is unreadable "
                           f"({_one_line(e, self.directory, 120)})") from None
        if RECORD_ITEM in items:
            raise _Damaged("its integrity record is missing")
        return False

    def _read(self, step: int, abstract_state: Any, require_finite: bool) -> tuple[Any, dict]:
        """(state, data_state) of checkpoint ``step`` once verified; raises `_Damaged` (one line) otherwise."""
        has_record = self._has_record(step)
        abstract = jax.tree.map(_with_sharding, abstract_state)
        items = {"state": ocp.args.StandardRestore(abstract), "data": ocp.args.JsonRestore()}
        if has_record:
            items[RECORD_ITEM] = ocp.args.JsonRestore()
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # noqa: BLE001 -- TensorStore, JSON and file errors alike mean "unreadable"
            _QUIET.install(self._step_dir(step) + os.sep)
            bad_json = _bad_json_file(self._step_dir(step))
            raise _Damaged(f"it is unreadable: {bad_json}" if bad_json else
                           f"it is unreadable ({_one_line(e, self.directory)})") from None
        state, data_state = restored.state, restored.data
        if not isinstance(data_state, dict):
            raise _Damaged("its data iterator state is not a JSON object")
        leaves = _host_leaves(state)
        if has_record:
            _verify(restored[RECORD_ITEM], leaves, data_state)
        else:
            logging.warning("checkpoint %d in %s has no integrity record (written by an older jaxgan): restored "
                            "without verification", step, self.directory)
        bad = _non_finite(leaves) if require_finite else None
        if bad is not None:
            raise _Damaged(f"it holds NaN/Inf values (first: {bad})")
        return state, dict(data_state)

    def restore(self, step: int, abstract_state: Any, *, require_finite: bool = False) -> tuple[Any, dict]:
        """(state, data_state) of checkpoint ``step``, laid out like ``abstract_state``; `CheckpointError` if it
        does not verify (or, with ``require_finite``, holds a NaN/Inf)."""
        try:
            return self._read(step, abstract_state, require_finite)
        except _Damaged as e:
            raise CheckpointError(f"checkpoint {step} in {self.directory} is damaged: {e}") from None

    def restore_latest(self, abstract_state: Any, *, require_finite: bool = False) -> tuple[int, Any, dict] | None:
        """(step, state, data_state) of the newest checkpoint that verifies (and, with ``require_finite``, holds
        only finite values); None when there is none. Each newer one skipped is one warning line; a writer
        renames them to ``<step>.damaged``. `CheckpointError` when checkpoints exist and none verifies."""
        skipped = []
        for step in sorted(self.all_steps(), reverse=True):
            try:
                state, data_state = self._read(step, abstract_state, require_finite)
                reason = None
            except _Damaged as e:
                reason = str(e)
            if _all_processes_agree(reason is None):
                self._set_aside(skipped)
                return step, state, data_state
            reason = reason or "it does not verify on another process"
            logging.warning("checkpoint %d in %s skipped: %s", step, self.directory, reason)
            skipped.append((step, reason))
        if skipped:
            raise CheckpointError(f"every checkpoint in {self.directory} is damaged: "
                                  + "; ".join(f"step {step}: {reason}" for step, reason in skipped))
        return None

    def _set_aside(self, skipped: list[tuple[int, str]]) -> None:
        """A writer renames the skipped (newer) checkpoints to ``<step>.damaged[.k]``: the run resumes before
        them and writes those steps again. Kept, not deleted: they may be worth inspecting."""
        if self.read_only or not skipped:
            return
        self._manager.wait_until_finished()
        if jax.process_index() == 0:
            for step, _ in skipped:
                target, k = self._step_dir(step) + DAMAGED_SUFFIX, 1
                while os.path.exists(target):
                    k += 1
                    target = f"{self._step_dir(step)}{DAMAGED_SUFFIX}.{k}"
                os.rename(self._step_dir(step), target)
                logging.warning("checkpoint %d moved to %s (the run continues before it)", step, target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("jaxgan_checkpoints_set_aside")
        self._manager.reload()

    def wait(self):
        self._manager.wait_until_finished()

    def close(self):
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
