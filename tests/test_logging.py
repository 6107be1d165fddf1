"""Tests for jaxgan.logging: JSONL round trip, resume truncation, TensorBoard events, image grids, plots."""
import io
import json
import math
import os
import struct

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxgan import logging as jlog

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def read_events(tb_dir):
    """All Event protos of all event files in tb_dir (TFRecord framing: u64 len, u32 crc, data, u32 crc)."""
    from tensorboardX.proto import event_pb2

    events = []
    for f in sorted(tb_dir.glob("events.out.tfevents.*")):
        data = f.read_bytes()
        pos = 0
        while pos + 12 <= len(data):
            (n,) = struct.unpack("<Q", data[pos:pos + 8])
            payload = data[pos + 12:pos + 12 + n]
            pos += 12 + n + 4
            ev = event_pb2.Event()
            ev.ParseFromString(payload)
            events.append(ev)
    return events


def scalar_values(events, tag):
    return [(e.step, v.simple_value) for e in events for v in e.summary.value if v.tag == tag]


def test_jsonl_round_trip_with_nonfinite(tmp_path):
    with jlog.MetricWriter(tmp_path, tensorboard=False) as w:
        w.write_scalars(0, {"d/loss": 0.5, "g/loss": jnp.float32(1.25), "count": np.int32(3)})
        w.write_scalars(1, {"d/loss": float("nan"), "g/loss": float("inf"), "x": -math.inf})
        # Flushed each call: readable while the writer is open.
        assert len(jlog.read_metrics(tmp_path / "metrics.jsonl")) == 2
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    for line in lines:
        json.loads(line)  # strict JSON (no bare NaN / Infinity)
    assert "NaN" not in lines[1] and "Infinity" not in lines[1]
    recs = jlog.read_metrics(tmp_path)  # a workdir works too
    assert recs[0] == {"step": 0, "d/loss": 0.5, "g/loss": 1.25, "count": 3}
    assert isinstance(recs[0]["count"], int)
    assert recs[1]["step"] == 1 and math.isnan(recs[1]["d/loss"])
    assert recs[1]["g/loss"] == math.inf and recs[1]["x"] == -math.inf


def test_bad_scalar_rejected(tmp_path):
    with jlog.MetricWriter(tmp_path, tensorboard=False) as w:
        with pytest.raises(ValueError, match="d/vec"):
            w.write_scalars(0, {"d/vec": np.zeros(3)})


def test_truncate_after_drops_later_steps(tmp_path):
    w = jlog.MetricWriter(tmp_path, tensorboard=False)
    for s in range(0, 50, 10):
        w.write_scalars(s, {"d/loss": float(s)})
    w.close()
    # A crash mid-write leaves a partial last line.
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 50, "d/lo')
    with jlog.MetricWriter(tmp_path, tensorboard=False) as w:
        dropped = w.truncate_after(20)
        assert dropped == 2
        w.write_scalars(30, {"d/loss": 300.0})
    steps = [r["step"] for r in jlog.read_metrics(tmp_path)]
    assert steps == [0, 10, 20, 30]
    assert jlog.read_metrics(tmp_path)[-1]["d/loss"] == 300.0


def test_tensorboard_scalars_and_images(tmp_path):
    with jlog.MetricWriter(tmp_path) as w:
        w.write_scalars(3, {"d/loss": 0.25, "g/loss": float("nan")})
        w.write_scalars(7, {"d/loss": 0.5})
        w.write_images(7, {"samples": np.zeros((4, 5, 5, 3), np.float32),
                           "gray": jnp.ones((3, 4, 4, 1))})
    events = read_events(tmp_path / "tb")
    assert scalar_values(events, "d/loss") == [(3, 0.25), (7, 0.5)]
    (g,) = scalar_values(events, "g/loss")
    assert g[0] == 3 and math.isnan(g[1])
    images = {v.tag: (e.step, v.image) for e in events for v in e.summary.value if v.HasField("image")}
    assert set(images) == {"samples", "gray"}
    step, img = images["samples"]
    assert step == 7 and (img.height, img.width) == (2 * 6 + 1, 2 * 6 + 1)
    decoded = np.asarray(Image.open(io.BytesIO(img.encoded_image_string)))
    assert decoded.shape == (13, 13, 3) and decoded[1, 1, 0] == 128  # 0.0 -> 128


def test_truncate_after_reopens_tensorboard_with_purge(tmp_path):
    with jlog.MetricWriter(tmp_path) as w:
        w.write_scalars(1, {"d/loss": 1.0})
        w.write_scalars(2, {"d/loss": 2.0})
    with jlog.MetricWriter(tmp_path) as w:
        w.truncate_after(1)
        w.write_scalars(2, {"d/loss": 22.0})
    events = read_events(tmp_path / "tb")
    # The resumed writer wrote a SessionLog START at purge_step = 2 (TensorBoard hides older steps >= 2).
    assert any(e.step == 2 and e.HasField("session_log") for e in events)
    assert (2, 22.0) in scalar_values(events, "d/loss")
    assert len(list((tmp_path / "tb").glob("events.out.tfevents.*"))) >= 2


def test_image_grid_exact_placement():
    # Two 2x2 RGB tiles + one more; ncols=2 -> 2 rows, padding 1, pad 0.
    a = np.full((2, 2, 3), -1.0)
    a[0, 1] = [1.0, 0.0, 0.5]
    b = np.full((2, 2, 3), 1.0)
    c = np.full((2, 2, 3), 0.0)
    grid = jlog.image_grid(np.stack([a, b, c]), ncols=2, padding=1)
    assert grid.dtype == np.uint8 and grid.shape == (2 * 3 + 1, 2 * 3 + 1, 3)
    expected = np.zeros((7, 7, 3), np.uint8)
    expected[1:3, 1:3] = 0
    expected[1, 2] = [255, 128, 191]  # 1 -> 255, 0 -> 128 (round half even of 127.5), 0.5 -> 191
    expected[1:3, 4:6] = 255
    expected[4:6, 1:3] = 128
    np.testing.assert_array_equal(grid, expected)
    # Default ncols = ceil(sqrt(3)) = 2; clipping beyond [-1, 1]; NaN -> 0.
    g = jlog.image_grid(np.array([[[[2.0]]], [[[-3.0]]], [[[np.nan]]]]), padding=0)
    np.testing.assert_array_equal(g[..., 0], [[255, 0], [0, 0]])
    g = jlog.image_grid(np.ones((1, 2, 2, 1)), padding=2, pad_value=7)
    assert g.shape == (6, 6, 1) and g[0, 0, 0] == 7 and g[2, 2, 0] == 255
    with pytest.raises(ValueError, match="channels"):
        jlog.image_grid(np.zeros((2, 4, 4, 2)))


def test_save_png_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, size=(4, 6, 1), dtype=np.uint8)
    jlog.save_png(tmp_path / "sub" / "rgb.png", rgb)
    jlog.save_png(tmp_path / "gray.png", gray)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "sub" / "rgb.png")), rgb)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "gray.png")), gray[..., 0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gray.png", "sub"]  # no temp files left
    grid = jlog.save_image_grid(tmp_path / "grid.png", np.zeros((5, 3, 3, 3)), ncols=5)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "grid.png")), grid)
    with pytest.raises(ValueError, match="uint8"):
        jlog.save_png(tmp_path / "x.png", np.zeros((2, 2)))


def _assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    Image.open(path).verify()


def test_plot_losses(tmp_path):
    with jlog.MetricWriter(tmp_path, tensorboard=False) as w:
        for s in range(20):
            w.write_scalars(s, {"d/loss": 1.0 / (s + 1), "d/gp": 0.1, "g/loss": float(s) if s != 5 else math.nan,
                                "wasserstein_estimate": 2.0 - 0.05 * s, "other": 1.0})
    jlog.plot_losses(tmp_path / "metrics.jsonl", tmp_path / "losses.png")
    _assert_png(tmp_path / "losses.png")
    jlog.plot_losses([{"step": 0, "d/loss": 1.0}], tmp_path / "only_d.png")  # no g/ keys, no W panel
    _assert_png(tmp_path / "only_d.png")


def test_plot_losses_shows_wasserstein_estimate_only_when_asked(tmp_path):
    # the train step logs wasserstein_estimate for every loss; it is a W1 estimate only for a Wasserstein critic
    records = [{"step": s, "d/loss": 1.0, "g/loss": 2.0, "wasserstein_estimate": 0.5} for s in range(3)]
    two = ["discriminator (d/...)", "generator (g/...)"]
    assert jlog.plot_losses(records, tmp_path / "ns.png") == two
    assert jlog.plot_losses(records, tmp_path / "w.png", show_wasserstein=True) == two + ["wasserstein_estimate"]
    assert jlog.plot_losses([{"step": 0, "d/loss": 1.0}], tmp_path / "no_w.png", show_wasserstein=True) == two


def test_plot_samples_2d(tmp_path):
    t = 2 * np.pi * np.arange(8) / 8
    means = np.stack([np.cos(t), np.sin(t)], 1)
    rng = np.random.default_rng(0)
    x = means[rng.integers(8, size=(3, 200))] + 0.01 * rng.normal(size=(3, 200, 2))
    x[0, 0] = [1e6, 1e6]  # a diverged point
    jlog.plot_samples_2d(x[0], tmp_path / "one.png", means=means)
    jlog.plot_samples_2d(x, tmp_path / "three.png", means=means, titles=["a", "b", "c"])
    _assert_png(tmp_path / "one.png")
    _assert_png(tmp_path / "three.png")
    w1, h1 = Image.open(tmp_path / "one.png").size
    w3, h3 = Image.open(tmp_path / "three.png").size
    assert w3 > w1 and h3 > h1  # a 2x2 grid of panels


def test_progress_line_eta():
    now = [100.0]
    p = jlog.ProgressLine(1000, every_seconds=10.0, clock=lambda: now[0])
    first = p.update(0, {"d/loss": 0.5})
    assert first.startswith("step 0/1000 (0.0%)") and "d/loss 0.5" in first and "ETA ?" in first
    now[0] = 105.0
    assert p.update(50) is None  # under every_seconds
    now[0] = 120.0
    line = p.update(200, {"d/loss": jnp.float32(0.25), "g/loss": 1.5})
    # 200 steps in 20 s = 10 steps/s; 800 steps left -> 80 s.
    assert p.rate == pytest.approx(10.0)
    assert p.eta_seconds(200) == pytest.approx(80.0)
    assert line == "step 200/1000 (20.0%) | d/loss 0.25 g/loss 1.5 | 10 steps/s | ETA 0:01:20"
    now[0] = 130.0
    line = p.update(205, force=False)
    # 5 steps in 10 s = 0.5 steps/s; 795 left -> 1590 s = 0:26:30.
    assert line.endswith("0.5 steps/s | ETA 0:26:30")
    assert p.format(1000, rate=2.0).endswith("ETA 0:00:00")
    assert jlog.ProgressLine(10**6).format(0, rate=1.0).endswith("ETA 277:46:40")


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_atomic_writes_get_the_umask_mode_not_0600(tmp_path, umask, mode):
    # mkstemp's 0600 would survive os.replace: TensorBoard servers and colleagues could not read the outputs
    old = os.umask(umask)
    try:
        jlog.atomic_write_text(tmp_path / "a.json", "{}")
        jlog.save_png(tmp_path / "a.png", np.zeros((2, 2), np.uint8))
        jlog.atomic_write_text(tmp_path / "a.json", "{}")  # replacing an existing file too
    finally:
        os.umask(old)
    assert {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {"a.json": mode, "a.png": mode}
