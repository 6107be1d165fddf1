"""Process-local logging: JSONL + TensorBoard scalars, image grids, PNGs, loss / sample plots, progress lines.

Nothing here needs JAX; JAX arrays are accepted wherever NumPy arrays are (they are converted on the host).
In a multi-host run only process 0 should create a :class:`MetricWriter` or write files.

Files written by this module:
  * ``workdir/metrics.jsonl``: one JSON object per :meth:`MetricWriter.write_scalars` call,
    ``{"step": int, "<name>": value, ...}``. Non-finite floats are written as the JSON strings
    ``"nan"``, ``"inf"`` and ``"-inf"`` (so every line is strict JSON); :func:`read_metrics` turns those
    strings back into floats.
  * ``workdir/tb/events.out.tfevents.*``: TensorBoard scalars and images (tensorboardX).
  * PNGs (grids, plots) are written atomically: to a temporary file in the target directory, then
    ``os.replace``, so a reader never sees a half-written image.
"""
from __future__ import annotations

import contextlib
import io
import itertools
import json
import math
import os
import pathlib
import secrets
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "MetricWriter",
    "read_metrics",
    "image_grid",
    "save_png",
    "save_image_grid",
    "plot_losses",
    "plot_samples_2d",
    "ProgressLine",
]

METRICS_FILENAME = "metrics.jsonl"
TB_DIRNAME = "tb"

_NONFINITE_TO_STR = {math.inf: "inf", -math.inf: "-inf"}
_STR_TO_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_writer_ids = itertools.count()


# --------------------------------------------------------------------------------------------- scalars


def _to_scalar(name: str, value: Any) -> int | float | str:
    """A Python int/float (or a non-finite float encoded as a string) for one metric value."""
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        v = value
    else:
        arr = np.asarray(value)
        if arr.ndim != 0 and arr.size != 1:
            raise ValueError(f"metric {name!r} must be a scalar; got an array of shape {arr.shape}.")
        arr = arr.reshape(())
        if arr.dtype.kind in "biu":
            return int(arr)
        if arr.dtype.kind != "f":
            raise ValueError(f"metric {name!r} must be numeric; got dtype {arr.dtype}.")
        v = float(arr)
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return _NONFINITE_TO_STR[v]
    return v


def _decode(record: dict) -> dict:
    return {k: (_STR_TO_NONFINITE[v] if isinstance(v, str) and v in _STR_TO_NONFINITE else v)
            for k, v in record.items()}


def _parse_lines(text: str) -> list[dict]:
    """Records of a metrics.jsonl text; unparseable lines (e.g. one cut short by a crash) are skipped."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """All records of a ``metrics.jsonl`` file (or of ``path/metrics.jsonl`` when ``path`` is a directory).

    The strings ``"nan"``, ``"inf"``, ``"-inf"`` come back as floats; lines that are not JSON objects
    (a partial last line after a crash) are skipped. Returns ``[]`` for a missing file.
    """
    p = pathlib.Path(path)
    if p.is_dir():
        p = p / METRICS_FILENAME
    if not p.exists():
        return []
    return [_decode(r) for r in _parse_lines(p.read_text())]


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` (UTF-8) to ``path`` atomically: temp file in the same directory, fsync, os.replace."""
    _atomic_write_bytes(path, text.encode("utf-8"))


def _create_temp(path: pathlib.Path) -> tuple[int, pathlib.Path]:
    """A new file beside ``path`` opened for writing, with mode ``0o666 & ~umask`` like any ``open``.

    (``tempfile.mkstemp`` creates 0600 files, which ``os.replace`` would carry over to ``path``, so a
    TensorBoard server or another user could not read the outputs.)
    """
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike):
    """A binary file to write ``path`` through: a temp file beside it (the umask's mode), fsynced and renamed
    over ``path`` when the block ends, removed if it raises, so ``path`` is either the old or the new file."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path) as f:
        f.write(data)


class MetricWriter:
    """Writes scalars to ``workdir/metrics.jsonl`` and (optionally) TensorBoard, images to TensorBoard.

    Usage::

        with MetricWriter(workdir) as w:
            w.truncate_after(restored_step)   # only when resuming
            w.write_scalars(step, {"d/loss": 0.7, "g/loss": 1.2})
            w.write_images(step, {"samples": images})   # [N, H, W, C] in [-1, 1]

    The JSONL file is opened in append mode, line-buffered, and flushed after every call. TensorBoard
    events go to ``workdir/tb`` via ``tensorboardX.SummaryWriter``; call :meth:`flush` to push them to disk.
    Only process 0 of a multi-host job should create one.
    """

    def __init__(self, workdir: str | os.PathLike, *, tensorboard: bool = True):
        self.workdir = pathlib.Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.path = self.workdir / METRICS_FILENAME
        self.tb_dir = self.workdir / TB_DIRNAME
        self._tensorboard = tensorboard
        self._tb = None
        self._file = open(self.path, "a", buffering=1, encoding="utf-8")
        self._closed = False
        if tensorboard:
            self._tb = self._make_tb(purge_step=None)

    def _make_tb(self, purge_step: int | None):
        from tensorboardX import SummaryWriter  # imported lazily: only needed with tensorboard=True

        # A unique suffix: tensorboardX names event files by the second, and two writers opened in the same
        # second (e.g. after truncate_after) would otherwise overwrite each other's file.
        suffix = f".{os.getpid()}.{next(_writer_ids)}"
        return SummaryWriter(str(self.tb_dir), purge_step=purge_step, filename_suffix=suffix)

    def _check_open(self):
        if self._closed:
            raise RuntimeError(f"MetricWriter for {self.workdir} is closed.")

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        """Appends ``{"step": step, **scalars}`` as one JSON line and writes each scalar to TensorBoard.

        Values may be Python/NumPy/JAX scalars (0-d or size-1 arrays). Non-finite floats are stored as
        ``"nan"``/``"inf"``/``"-inf"`` in the JSONL file (and as the float itself in TensorBoard).
        """
        self._check_open()
        step = int(step)
        record: dict[str, Any] = {"step": step}
        for name, value in scalars.items():
            if name == "step":
                raise ValueError("'step' is reserved for the step number; rename the metric.")
            record[str(name)] = _to_scalar(str(name), value)
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()
        if self._tb is not None:
            for name, value in record.items():
                if name == "step":
                    continue
                v = _STR_TO_NONFINITE[value] if isinstance(value, str) else float(value)
                self._tb.add_scalar(name, v, global_step=step)

    def write_images(self, step: int, images: Mapping[str, Any], *, ncols: int | None = None) -> None:
        """Writes one grid image per name to TensorBoard (no-op without TensorBoard).

        Args:
          step: global step.
          images: name -> ``[N, H, W, C]`` float array in ``[-1, 1]``, ``C`` in {1, 3}.
          ncols: grid columns (default ``ceil(sqrt(N))``).
        """
        self._check_open()
        grids = {name: image_grid(img, ncols=ncols) for name, img in images.items()}
        if self._tb is None:
            return
        for name, grid in grids.items():
            if grid.shape[-1] == 1:  # PIL cannot encode [H, W, 1]; TensorBoard shows gray RGB the same
                grid = np.repeat(grid, 3, axis=-1)
            self._tb.add_image(name, grid, global_step=int(step), dataformats="HWC")

    def truncate_after(self, step: int) -> int:
        """Drops every JSONL record whose step is > ``step``; returns how many records were dropped.

        Call it when resuming from a checkpoint at ``step`` before writing anything, so the resumed run's
        log has no duplicated steps. The file is rewritten atomically (partial lines are dropped too).
        The TensorBoard writer is reopened with ``purge_step=step + 1``, which tells TensorBoard to hide
        events with step > ``step`` written by the previous run.
        """
        self._check_open()
        step = int(step)
        self._file.close()
        text = self.path.read_text(encoding="utf-8") if self.path.exists() else ""
        records = _parse_lines(text)
        kept = [r for r in records if int(r.get("step", -1)) <= step]
        data = "".join(json.dumps(r, allow_nan=False) + "\n" for r in kept)
        _atomic_write_bytes(self.path, data.encode("utf-8"))
        self._file = open(self.path, "a", buffering=1, encoding="utf-8")
        if self._tensorboard:
            if self._tb is not None:
                self._tb.close()
            self._tb = self._make_tb(purge_step=step + 1)
        return len(records) - len(kept)

    def flush(self) -> None:
        if self._closed:
            return
        self._file.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._file.close()
        finally:  # the TensorBoard writer's background thread is stopped even when the flush fails (full disk)
            if self._tb is not None:
                self._tb.close()
                self._tb = None

    def __enter__(self) -> "MetricWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------- images


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """[-1, 1] float -> uint8 by ``round((x + 1) * 127.5)``, clipped; NaN maps to 0."""
    x = np.nan_to_num(np.asarray(x, dtype=np.float64), nan=-1.0, posinf=1.0, neginf=-1.0)
    return np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def image_grid(images: Any, ncols: int | None = None, padding: int = 1, *, pad_value: int = 0) -> np.ndarray:
    """Tiles ``[N, H, W, C]`` images in ``[-1, 1]`` into one ``uint8`` image ``[H', W', C]``.

    Values map by ``round((x + 1) * 127.5)`` clipped to [0, 255] (so -1 -> 0, 1 -> 255, 0 -> 128;
    NaN -> 0). Tiles are laid out row-major in ``nrows = ceil(N / ncols)`` rows of ``ncols`` columns
    (default ``ceil(sqrt(N))``; capped at ``N``), with ``padding`` pixels of ``pad_value`` between tiles
    and around the border: ``H' = nrows * (H + padding) + padding``, ``W' = ncols * (W + padding) + padding``; tile ``i``
    has its top-left pixel at ``(padding + (i // ncols) * (H + padding), padding + (i % ncols) * (W + padding))``.
    Unused tiles are filled with ``pad_value``.
    """
    arr = np.asarray(images)
    if arr.ndim != 4:
        raise ValueError(f"images must have shape [N, H, W, C]; got shape {arr.shape}.")
    n, h, w, c = arr.shape
    if c not in (1, 3):
        raise ValueError(f"images must have C = 1 or 3 channels (NHWC); got shape {arr.shape}.")
    if n == 0:
        raise ValueError("images must contain at least one image; got N = 0.")
    if ncols is None:
        ncols = math.ceil(math.sqrt(n))
    ncols = int(ncols)
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1; got {ncols}.")
    ncols = min(ncols, n)
    padding = int(padding)
    if padding < 0:
        raise ValueError(f"padding must be >= 0; got {padding}.")
    nrows = math.ceil(n / ncols)
    tiles = _to_uint8(arr)
    out = np.full((nrows * (h + padding) + padding, ncols * (w + padding) + padding, c), pad_value, np.uint8)
    for i in range(n):
        r, q = divmod(i, ncols)
        y = padding + r * (h + padding)
        x = padding + q * (w + padding)
        out[y:y + h, x:x + w] = tiles[i]
    return out


def save_png(path: str | os.PathLike, image: Any) -> None:
    """Writes a ``uint8`` image ``[H, W]``, ``[H, W, 1]`` or ``[H, W, 3]`` as a PNG, atomically."""
    from PIL import Image

    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"save_png expects a uint8 array; got dtype {arr.dtype} (use image_grid to convert).")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4))):
        raise ValueError(f"save_png expects [H, W], [H, W, 1], [H, W, 3] or [H, W, 4]; got shape {arr.shape}.")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG")
    _atomic_write_bytes(path, buf.getvalue())


def save_image_grid(path: str | os.PathLike, images: Any, ncols: int | None = None) -> np.ndarray:
    """``save_png(path, image_grid(images, ncols))``; returns the grid."""
    grid = image_grid(images, ncols=ncols)
    save_png(path, grid)
    return grid


# ----------------------------------------------------------------------------------------------- plots


def new_figure(nrows: int, ncols: int, panel_size: tuple[float, float]):
    """(figure, axes): an ``nrows`` x ``ncols`` grid of panels of ``panel_size`` inches, axes a 2D array."""
    # Figure + FigureCanvasAgg directly: the Agg backend, no pyplot global state (safe in any process).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def save_figure(fig, out_png: str | os.PathLike) -> None:
    """Writes ``fig`` as a 100 dpi PNG at ``out_png``, atomically (a reader never sees half a file)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    _atomic_write_bytes(out_png, buf.getvalue())


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _series(metrics: Iterable[dict], keys: Sequence[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out: dict[str, tuple[list, list]] = {k: ([], []) for k in keys}
    for rec in metrics:
        if "step" not in rec:
            continue
        for k in keys:
            v = rec.get(k)
            if _is_number(v):
                out[k][0].append(rec["step"])
                out[k][1].append(float(v))
    return {k: (np.asarray(s), np.asarray(v)) for k, (s, v) in out.items()}


def plot_losses(metrics: list[dict] | str | os.PathLike, out_png: str | os.PathLike, *,
                show_wasserstein: bool = False) -> list[str]:
    """Plots the discriminator and generator terms over steps into one PNG (written atomically).

    Args:
      metrics: records as returned by :func:`read_metrics`, or a path to a metrics.jsonl file (or its workdir).
      out_png: output path.
      show_wasserstein: add a panel for ``wasserstein_estimate`` (mean D(real) - mean D(fake), which the train
        step logs for every loss). Only a Wasserstein critic makes it an estimate of the Wasserstein distance
        (up to the critic's Lipschitz constant), so callers pass ``config.loss == "wasserstein"``.

    Panels: every numeric key starting with ``d/`` (left), every one starting with ``g/`` (middle), and
    ``wasserstein_estimate`` (right) when ``show_wasserstein`` and any record has it. Non-finite values show
    as gaps. Returns the panel titles, left to right.
    """
    if isinstance(metrics, (str, os.PathLike)):
        metrics = read_metrics(metrics)
    metrics = list(metrics)
    keys: list[str] = []
    for rec in metrics:
        for k, v in rec.items():
            if k not in keys and _is_number(v) and (k.startswith("d/") or k.startswith("g/")
                                                    or (show_wasserstein and k == "wasserstein_estimate")):
                keys.append(k)
    groups = [("discriminator (d/...)", sorted(k for k in keys if k.startswith("d/"))),
              ("generator (g/...)", sorted(k for k in keys if k.startswith("g/")))]
    if "wasserstein_estimate" in keys:
        groups.append(("wasserstein_estimate", ["wasserstein_estimate"]))
    series = _series(metrics, keys)
    fig, axes = new_figure(1, len(groups), (5.0, 3.6))
    for ax, (title, group) in zip(axes[0], groups):
        for k in group:
            steps, vals = series[k]
            ax.plot(steps, vals, label=k, linewidth=1.0)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        if group:
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    save_figure(fig, out_png)
    return [ax.get_title() for ax in axes[0]]


def plot_samples_2d(samples: Any, out_png: str | os.PathLike, *, means: Any = None,
                    titles: Sequence[str] | None = None) -> None:
    """Scatter plot(s) of 2D samples with the mixture means marked (red crosses); PNG written atomically.

    Args:
      samples: ``[N, 2]`` for one panel or ``[runs, N, 2]`` for a grid of ``runs`` panels
        (``ceil(sqrt(runs))`` columns).
      out_png: output path.
      means: optional ``[K, 2]`` mixture means, drawn on every panel.
      titles: optional one title per panel.

    Axis limits cover the means and the central 99% of each panel's finite samples, so one far-away
    diverged point does not shrink the picture; points outside are not shown.
    """
    arr = np.asarray(samples, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[-1] != 2:
        raise ValueError(f"samples must have shape [N, 2] or [runs, N, 2]; got shape {np.shape(samples)}.")
    runs = arr.shape[0]
    mu = None if means is None else np.asarray(means, dtype=np.float64).reshape(-1, 2)
    if titles is not None and len(titles) != runs:
        raise ValueError(f"titles must have one entry per run ({runs}); got {len(titles)}.")
    ncols = math.ceil(math.sqrt(runs))
    nrows = math.ceil(runs / ncols)
    fig, axes = new_figure(nrows, ncols, (3.2, 3.2))
    for i, ax in enumerate(axes.ravel()):
        if i >= runs:
            ax.set_axis_off()
            continue
        pts = arr[i][np.all(np.isfinite(arr[i]), axis=1)]
        ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.5, linewidths=0)
        boxes = []
        if len(pts):
            boxes.append(np.percentile(pts, [0.5, 99.5], axis=0))
        if mu is not None and len(mu):
            ax.scatter(mu[:, 0], mu[:, 1], marker="x", c="red", s=20, linewidths=1.0)
            boxes.append(np.stack([mu.min(0), mu.max(0)]))
        if boxes:
            lo = np.min([b[0] for b in boxes], axis=0)
            hi = np.max([b[1] for b in boxes], axis=0)
            center = (lo + hi) / 2
            half = max(0.55 * float(np.max(hi - lo)), 0.1)  # square limits: equal aspect, 10% margin
            ax.set_xlim(center[0] - half, center[0] + half)
            ax.set_ylim(center[1] - half, center[1] + half)
        ax.set_aspect("equal", adjustable="box")
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize="small")
        ax.tick_params(labelsize="x-small")
    fig.tight_layout()
    save_figure(fig, out_png)


# -------------------------------------------------------------------------------------------- progress


def _format_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


class ProgressLine:
    """Formats periodic progress lines: step/total, a few losses, steps/s and ETA.

    The rate is measured over the window since the previous emitted line (the first call only sets the
    reference point, so compilation time of the first step is not counted); ETA is
    ``(total_steps - step) / rate`` formatted ``H:MM:SS``. The caller prints the line, e.g.
    ``if (line := progress.update(step, losses)): logging.info(line)``.

    Args:
      total_steps: the final step number.
      every_seconds: minimum wall time between two lines returned by :meth:`update`.
      clock: a monotonic clock in seconds (injectable for tests).
    """

    def __init__(self, total_steps: int, every_seconds: float = 30.0, *,
                 clock: Callable[[], float] = time.monotonic):
        self.total_steps = int(total_steps)
        self.every_seconds = float(every_seconds)
        self._clock = clock
        self._last_time: float | None = None
        self._last_step: int | None = None
        self.rate: float | None = None  # steps/s over the last window

    def format(self, step: int, losses: Mapping[str, Any] | None = None, *, rate: float | None = None) -> str:
        """The line for ``step`` with ``losses`` and a given rate (steps/s; None = unknown)."""
        step = int(step)
        total = self.total_steps
        pct = f" ({100.0 * step / total:.1f}%)" if total > 0 else ""
        parts = [f"step {step}/{total}{pct}"]
        if losses:
            parts.append(" ".join(f"{k} {float(np.asarray(v)):.4g}" for k, v in losses.items()))
        if rate is None or rate <= 0 or not math.isfinite(rate):
            parts.append("? steps/s | ETA ?")
        else:
            parts.append(f"{rate:.3g} steps/s | ETA {_format_duration(max(total - step, 0) / rate)}")
        return " | ".join(parts)

    def eta_seconds(self, step: int) -> float | None:
        """Seconds left at the last measured rate (None before a rate is known)."""
        if not self.rate:
            return None
        return max(self.total_steps - int(step), 0) / self.rate

    def update(self, step: int, losses: Mapping[str, Any] | None = None, *, force: bool = False) -> str | None:
        """Returns a line when ``every_seconds`` have passed since the last one (or ``force``), else None.

        The first call returns a line without a rate and starts the clock.
        """
        now = self._clock()
        step = int(step)
        if self._last_time is None:
            self._last_time, self._last_step = now, step
            return self.format(step, losses, rate=None)
        dt = now - self._last_time
        if not force and dt < self.every_seconds:
            return None
        if dt > 0 and step > self._last_step:
            self.rate = (step - self._last_step) / dt
        self._last_time, self._last_step = now, step
        return self.format(step, losses, rate=self.rate)
