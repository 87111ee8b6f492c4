"""Live preview: a low-rate tap that shows the coordinator a sample being trained on.

Design
------
:class:`PreviewTap.offer` is called by the pipeline for every batch it hands to
the training loop. It costs one clock read unless a preview is due (at most one
per ``interval`` seconds per rank, 2 s by default; ``interval=None`` or ``0``
turns the tap off). When one is due it copies a single sample (the first real
one of the batch) and hands it to a background renderer thread through a
one-slot queue; if the renderer is still busy with the previous sample the
offer is **dropped** (counted in ``dropped``), so the tap never slows the
pipeline. The renderer emits a ``data_preview`` telemetry event:

* images (``[H, W]``, ``[C, H, W]`` or ``[H, W, C]`` with 1, 3 or 4 channels)
  become a PNG thumbnail (longest side at most ``max_side`` pixels, tiny images
  such as 8×8 digits enlarged to at least ``min_side``), base64-encoded;
* anything else becomes a one-line tensor summary (dtype, shape, range, mean,
  first values);

with the sample's label and global index. The PNG encoder below is ~20 lines
of ``zlib`` + ``struct`` (no imaging dependency). The clock is injectable so
the rate limit is tested without sleeping.
"""

from __future__ import annotations

import base64
import logging
import queue
import struct
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from torchrt.contract import EventType
from torchrt.telemetry import get_reporter

logger = logging.getLogger(__name__)

__all__ = ["PreviewTap", "encode_png", "render_sample"]

EVENT = EventType.DATA_PREVIEW


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def encode_png(pixels: np.ndarray) -> bytes:
    """Encode ``uint8`` pixels, ``[H, W]`` (grey) or ``[H, W, 3]`` (RGB), as a PNG file."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    if pixels.ndim == 2:
        colour_type, height, width = 0, *pixels.shape
    elif pixels.ndim == 3 and pixels.shape[2] == 3:
        colour_type, height, width = 2, pixels.shape[0], pixels.shape[1]
    else:
        raise ValueError(f"encode_png needs [H, W] or [H, W, 3] pixels, got {list(pixels.shape)}")
    if height < 1 or width < 1:
        raise ValueError(f"encode_png needs a non-empty image, got {list(pixels.shape)}")
    rows = pixels.reshape(height, -1)
    raw = np.concatenate([np.zeros((height, 1), dtype=np.uint8), rows], axis=1)  # filter type 0 per row
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
            + _chunk(b"IEND", b""))


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    values = array.astype(np.float64)
    if array.dtype == np.bool_:
        return (values * 255).astype(np.uint8)
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    if array.dtype.kind == "f" and lo >= 0.0 and hi <= 1.0:
        lo, hi = 0.0, 1.0
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    return np.nan_to_num((values - lo) * scale).clip(0, 255).astype(np.uint8)


def _image_pixels(array: np.ndarray) -> np.ndarray | None:
    """``[H, W]`` or ``[H, W, 3]`` view of an image-shaped array, or None if it is not one."""
    if array.ndim == 2 and min(array.shape) >= 2:
        return array
    if array.ndim == 3:
        if array.shape[0] in (1, 3, 4) and min(array.shape[1:]) >= 2:
            array = np.moveaxis(array, 0, -1)
        elif not (array.shape[2] in (1, 3, 4) and min(array.shape[:2]) >= 2):
            return None
        if array.shape[2] == 1:
            return array[:, :, 0]
        return array[:, :, :3]
    return None


def _thumbnail(pixels: np.ndarray, max_side: int, min_side: int) -> np.ndarray:
    height, width = pixels.shape[:2]
    stride = -(-max(height, width) // max_side)
    if stride > 1:
        pixels = pixels[::stride, ::stride]
    elif max(height, width) < min_side:
        factor = min(-(-min_side // max(height, width)), max(1, max_side // max(height, width)))
        pixels = pixels.repeat(factor, axis=0).repeat(factor, axis=1)
    return pixels


def _summary(array: np.ndarray) -> str:
    text = f"{array.dtype}{list(array.shape)}"
    if array.size and array.dtype.kind in "biuf":
        flat = array.reshape(-1).astype(np.float64)
        head = ", ".join(f"{v:.4g}" for v in flat[:8])
        text += (f" min={flat.min():.4g} max={flat.max():.4g} mean={flat.mean():.4g}"
                 f" values=[{head}{', ...' if flat.size > 8 else ''}]")
    return text


def _label(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return value.item() if value.numel() == 1 else _summary(value.numpy())
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return str(value)[:200]


def render_sample(value: Any, *, max_side: int = 64, min_side: int = 32) -> dict[str, Any]:
    """The preview fields for one sample's input: an image as PNG, anything else as a summary."""
    if isinstance(value, torch.Tensor):
        array = value.detach().cpu().numpy()
    elif isinstance(value, np.ndarray):
        array = value
    else:
        return {"kind": "text", "summary": str(value)[:500]}
    pixels = _image_pixels(array)
    if pixels is None:
        return {"kind": "tensor", "summary": _summary(array), "shape": list(array.shape), "dtype": str(array.dtype)}
    thumb = _thumbnail(_to_uint8(pixels), max_side, min_side)
    return {"kind": "image", "mime": "image/png", "png_b64": base64.b64encode(encode_png(thumb)).decode("ascii"),
            "width": int(thumb.shape[1]), "height": int(thumb.shape[0]), "shape": list(array.shape),
            "dtype": str(array.dtype)}


class PreviewTap:
    """Rate-limited, drop-when-busy sample tap (see the module docstring)."""

    def __init__(self, dataset: str, rank: int, *, interval: float | None = 2.0,
                 clock: Callable[[], float] = time.monotonic, max_side: int = 64, min_side: int = 32,
                 background: bool = True, field: str = "input") -> None:
        self.dataset, self.rank = dataset, rank
        self.interval = interval if interval and interval > 0 else None
        self.clock = clock
        self.max_side, self.min_side = max_side, min_side
        self.background = background
        self.field = field
        self.offered = self.sent = self.dropped = 0
        self._last: float | None = None
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=1)
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return self.interval is not None

    def offer(self, batch: Mapping[str, Any], epoch: int) -> bool:
        """Maybe take one sample of ``batch``; True if it was handed to the renderer."""
        if self.interval is None:
            return False
        now = self.clock()
        if self._last is not None and now - self._last < self.interval:
            return False
        self.offered += 1
        sample = self._pick(batch, epoch)
        if sample is None:
            return False
        if not self.background:
            self._last = now
            self._emit(sample)
            return True
        try:
            self._queue.put_nowait(sample)
        except queue.Full:
            self.dropped += 1
            return False
        self._last = now
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"torchrt-preview-{self.dataset}", daemon=True)
            self._thread.start()
        return True

    def _pick(self, batch: Mapping[str, Any], epoch: int) -> dict[str, Any] | None:
        value = batch.get(self.field)
        if value is None:
            value = next((v for k, v in batch.items() if k not in ("index", "mask", "target")), None)
        if not isinstance(value, torch.Tensor) or value.ndim == 0 or len(value) == 0:
            return None
        slot = 0
        mask = batch.get("mask")
        if isinstance(mask, torch.Tensor) and mask.ndim == 1 and len(mask) == len(value):
            real = torch.nonzero(mask)
            if len(real) == 0:
                return None
            slot = int(real[0])
        index = batch.get("index")
        target = batch.get("target")
        return {
            "input": value[slot].detach().to("cpu", copy=True),
            "index": int(index[slot]) if isinstance(index, torch.Tensor) and len(index) > slot else None,
            "label": target[slot] if isinstance(target, torch.Tensor) and target.ndim and len(target) > slot
            else None,
            "epoch": epoch,
        }

    def _emit(self, sample: dict[str, Any]) -> None:
        try:
            fields = render_sample(sample["input"], max_side=self.max_side, min_side=self.min_side)
            get_reporter().emit(EVENT, dataset=self.dataset, rank=self.rank, epoch=sample["epoch"],
                                index=sample["index"], label=_label(sample["label"]), **fields)
            self.sent += 1
        except Exception:  # a preview must never take the job down
            logger.exception("data preview of dataset %r failed", self.dataset)

    def _run(self) -> None:
        while True:
            sample = self._queue.get()
            try:
                if sample is None:
                    return
                self._emit(sample)
            finally:
                self._queue.task_done()

    def drain(self) -> None:
        """Wait until the sample handed over last has been rendered and emitted."""
        if self._thread is not None:
            self._queue.join()

    def close(self) -> None:
        if self._thread is not None:
            self._queue.join()
            self._queue.put(None)
            self._thread.join(timeout=5)
            self._thread = None
