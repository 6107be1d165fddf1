"""Checkpoints: the whole GANState plus the data iterator's position, through orbax.

A checkpoint is written to ``<dir>/<step>.orbax-checkpoint-tmp`` and renamed when complete, so a crash or
SIGKILL mid-write leaves nothing that `restore_latest` would pick up. Restoring takes an abstract state
(``jax.eval_shape`` of the init, optionally with shardings) so a checkpoint written with one mesh restores
onto another.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def _with_sharding(leaf):
    """A leaf without a sharding restores onto one local device, whatever mesh wrote the checkpoint (orbax would
    otherwise try the writer's topology and fail on another device count)."""
    leaf = ocp.utils.to_shape_dtype_struct(leaf)
    if isinstance(leaf, jax.ShapeDtypeStruct) and getattr(leaf, "sharding", None) is None:
        leaf = jax.ShapeDtypeStruct(leaf.shape, leaf.dtype,
                                    sharding=jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))
    return leaf


class Checkpointer:
    """Saves every ``save_every`` steps (and on demand), keeps the newest ``keep``.

    ``save(step, state, data_state)``: ``data_state`` is a JSON-serialisable dict (the iterator position).
    """

    def __init__(self, directory: str | os.PathLike, *, save_every: int, keep: int = 3, async_save: bool = True):
        if save_every < 1:
            raise ValueError(f"--checkpoint_every must be >= 1, got {save_every}")
        if keep < 1:
            raise ValueError(f"--keep_checkpoints must be >= 1, got {keep}")
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=save_every, create=True,
                                               enable_async_checkpointing=async_save, cleanup_tmp_directories=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))

    def save(self, step: int, state: Any, data_state: dict, *, force: bool = False) -> bool:
        """Saves when ``step`` is on the interval (or ``force``); returns whether it saved."""
        return self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                                data=ocp.args.JsonSave(data_state)), force=force)

    def should_save(self, step: int) -> bool:
        """Whether `save` (without ``force``) would write ``step`` (interval, first save, or preemption)."""
        return self._manager.should_save(step)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """(state, data_state) of checkpoint ``step``, laid out like ``abstract_state``."""
        abstract = jax.tree.map(_with_sharding, abstract_state)
        restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                       data=ocp.args.JsonRestore()))
        return restored.state, dict(restored.data)

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict] | None:
        step = self.latest_step()
        if step is None:
            return None
        state, data_state = self.restore(step, abstract_state)
        return step, state, data_state

    def wait(self):
        self._manager.wait_until_finished()

    def close(self):
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
