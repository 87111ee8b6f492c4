"""The preview tap: a valid PNG, the rate limit (injected clock, no sleeps), drop-when-busy, pipeline wiring."""

from __future__ import annotations

import base64
import struct
import threading
import zlib

import numpy as np
import pytest
import torch

from tests.helpers import ManualClock
from torchrt.data.pipeline import ShardedPipeline
from torchrt.data.preview import PreviewTap, encode_png, render_sample
from torchrt.data.sources import DigitsSource, SyntheticSource


def decode_png(data: bytes) -> np.ndarray:
    """A strict little decoder for what encode_png writes (8-bit grey or RGB, filter 0)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        tag, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(tag + body) & 0xFFFFFFFF, tag
        chunks.append((tag, body))
        pos += 12 + length
    assert [t for t, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    width, height, depth, colour, *_ = struct.unpack(">IIBBBBB", chunks[0][1])
    channels = {0: 1, 2: 3}[colour]
    raw = np.frombuffer(zlib.decompress(chunks[1][1]), dtype=np.uint8).reshape(height, 1 + width * channels)
    assert depth == 8 and (raw[:, 0] == 0).all()
    pixels = raw[:, 1:].reshape(height, width, channels)
    return pixels[:, :, 0] if channels == 1 else pixels


def test_png_round_trips_grey_and_rgb():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    rgb = np.random.default_rng(0).integers(0, 256, (5, 2, 3), dtype=np.uint8)
    assert np.array_equal(decode_png(encode_png(grey)), grey)
    assert np.array_equal(decode_png(encode_png(rgb)), rgb)
    with pytest.raises(ValueError, match="needs"):
        encode_png(np.zeros((2, 2, 2), dtype=np.uint8))


def test_render_images_thumbnails_and_summaries():
    digit = DigitsSource().read([0])["input"][0]  # float32 [1, 8, 8] in [0, 1]
    shown = render_sample(digit)
    assert shown["kind"] == "image" and (shown["width"], shown["height"]) == (32, 32)  # enlarged 4x
    pixels = decode_png(base64.b64decode(shown["png_b64"]))
    assert pixels.shape == (32, 32) and pixels.max() > 200 and pixels[0, 0] == 0
    big = SyntheticSource(1).read([0])["input"][0]  # uint8 [3, 224, 224]
    shown = render_sample(big, max_side=64)
    assert decode_png(base64.b64decode(shown["png_b64"])).shape == (56, 56, 3)
    text = render_sample(torch.tensor([1.0, 2.0, 4.0]))
    assert text["kind"] == "tensor" and "float32[3]" in text["summary"] and "max=4" in text["summary"]


def batch_of(n: int, start: int = 0) -> dict:
    return {"input": torch.rand(n, 1, 8, 8), "target": torch.arange(n) % 10,
            "index": torch.arange(start, start + n), "mask": torch.ones(n, dtype=torch.bool)}


@pytest.mark.parametrize("interval,expected", [(2.0, 5), (1.0, 10), (0.3, 20), (None, 0), (0, 0)])
def test_rate_limit_with_an_injected_clock(recorder, interval, expected):
    clock = ManualClock()
    tap = PreviewTap("d", 1, interval=interval, clock=clock, background=False)
    for step in range(20):  # 20 batches, 0.5 s apart: 10 s
        tap.offer(batch_of(4, start=step * 4), epoch=0)
        clock.now += 0.5
    assert tap.sent == expected and len(recorder.events) == expected
    if expected:
        first = recorder.events[0]
        assert (first["type"], first["dataset"], first["rank"], first["index"], first["label"]) == \
            ("data_preview", "d", 1, 0, 0)


def test_padding_is_never_previewed(recorder):
    tap = PreviewTap("d", 0, clock=ManualClock(), background=False)
    batch = batch_of(3, start=7)
    batch["mask"] = torch.tensor([False, True, True])
    tap.offer(batch, epoch=2)
    assert (recorder.events[0]["index"], recorder.events[0]["epoch"]) == (8, 2)


def test_drops_when_the_renderer_is_busy(recorder, monkeypatch):
    clock = ManualClock()
    tap = PreviewTap("d", 0, interval=2.0, clock=clock)
    entered, release = threading.Event(), threading.Event()
    real_emit = tap._emit

    def slow_emit(sample):
        entered.set()
        assert release.wait(10)
        real_emit(sample)

    monkeypatch.setattr(tap, "_emit", slow_emit)
    assert tap.offer(batch_of(2), 0)          # taken; the renderer blocks on it
    assert entered.wait(10)
    clock.now += 3
    assert tap.offer(batch_of(2, 2), 0)       # waits in the one-slot queue
    clock.now += 3
    assert not tap.offer(batch_of(2, 4), 0)   # busy: dropped, never blocks
    assert tap.dropped == 1
    release.set()
    tap.drain()
    assert [e["index"] for e in recorder.events] == [0, 2]
    tap.close()


def test_pipeline_previews_samples_it_serves(recorder):
    clock = ManualClock()
    pipe = ShardedPipeline(DigitsSource(), batch_size=100, workers=0, preview_interval=2.0, clock=clock,
                           report_interval=1e9)
    served = {}
    for batch in pipe:
        for i, t in zip(batch["index"].tolist(), batch["target"].tolist(), strict=True):
            served[i] = t
        clock.now += 1.0
    pipe.preview.drain()
    previews = [e for e in recorder.events if e["type"] == "data_preview"]
    # 18 batches one second apart, at most one preview per 2 s (a busy renderer may drop some: never block)
    assert 1 <= len(previews) <= 9 and len(previews) == pipe.preview.sent
    assert all(served[p["index"]] == p["label"] and p["kind"] == "image" for p in previews)
    pipe.close()
