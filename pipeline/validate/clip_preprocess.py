"""Crop windows and the fast preprocessing of the ``clip`` judge (see :mod:`pipeline.validate.clip`).

A region's crop is a square window (box plus margins, black outside the image) described by a
:class:`_Window`; :func:`pack_windows` cuts a batch of them into one flat uint8 buffer, and
:class:`FastPreprocess` reproduces the image processor's resize / centre crop / normalise on it in torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np


def crop_window(box_px: Sequence[int], margin: float, margin_min: int) -> tuple[int, int, int]:
    """(x0, y0, side) of the square window centred on the box (box side + margins), in image pixels."""
    x0, y0, x1, y1 = (int(v) for v in box_px)
    side = max(x1 - x0 + 1, y1 - y0 + 1)
    side = int(side + 2 * max(math.ceil(margin * side), margin_min))
    cx2, cy2 = x0 + x1 + 1, y0 + y1 + 1  # twice the centre (continuous)
    return (cx2 - side) // 2, (cy2 - side) // 2, side


def _channels(image: np.ndarray) -> np.ndarray:
    """(H, W, C) view with C = 1 (grey) or 3 (RGB; extra channels dropped)."""
    if image.ndim == 2:
        return image[:, :, None]
    return image[:, :, :1] if image.shape[2] < 3 else image[:, :, :3]


def _fill_window(dst: np.ndarray, img: np.ndarray, sx0: int, sy0: int) -> None:
    """Copy the window at (sx0, sy0) of ``img`` (H, W, C) into ``dst`` (side, side, C), black outside."""
    side = dst.shape[0]
    h, w = img.shape[:2]
    ax0, ay0 = max(sx0, 0), max(sy0, 0)
    ax1, ay1 = min(sx0 + side, w), min(sy0 + side, h)
    inside = ax0 == sx0 and ay0 == sy0 and ax1 == sx0 + side and ay1 == sy0 + side
    if not inside:
        dst[...] = 0
    if ax1 > ax0 and ay1 > ay0:
        dst[ay0 - sy0 : ay1 - sy0, ax0 - sx0 : ax1 - sx0] = img[ay0:ay1, ax0:ax1]


def square_crop(image: np.ndarray, box_px: list[int] | tuple[int, ...], margin: float, margin_min: int) -> np.ndarray:
    """RGB uint8 square window centred on the box (box side + margins), black outside the image."""
    sx0, sy0, side = crop_window(box_px, margin, margin_min)
    return _window_rgb(_Window(_channels(image), sx0, sy0, side))


def _window_rgb(w: _Window) -> np.ndarray:
    out = np.empty((w.side, w.side, w.channels), dtype=np.uint8)
    _fill_window(out, w.image, w.x0, w.y0)
    return out if out.shape[2] == 3 else np.repeat(out, 3, axis=2)


class _Window(NamedTuple):
    """One region to embed: the square window (x0, y0, side) of ``image`` (H, W, C); ``key``: the caller's."""

    image: np.ndarray
    x0: int
    y0: int
    side: int
    key: int = -1

    @property
    def channels(self) -> int:
        return int(self.image.shape[2])


def _size_get(size: Any, key: str) -> Any:
    if size is None:
        return None
    if isinstance(size, dict):
        return size.get(key)
    return getattr(size, key, None)


def _resample_mode(resample: Any) -> str | None:
    """'bicubic' / 'bilinear' from a PIL resample code or a torchvision InterpolationMode, else None."""
    value = getattr(resample, "value", resample)
    if isinstance(value, str):
        value = value.lower()
        return value if value in ("bicubic", "bilinear") else None
    try:
        return {2: "bilinear", 3: "bicubic"}.get(int(value))
    except (TypeError, ValueError):
        return None


class FastPreprocess:
    """The image processor's resize / centre crop / rescale / normalise on square uint8 crops, in torch.

    Built from the processor's settings by :meth:`from_processor` (``None`` when it has settings this
    does not reproduce).  The resize is antialiased ``interpolate`` in two passes, horizontal then
    vertical, each rounded and clipped to 0..255: what Pillow does on uint8 images, so the result is
    within one grey level of the processor (PIL or torchvision backend) on CPU and on CUDA alike.
    """

    MAX_ELEMENTS = 1 << 25  # float elements per interpolate call (bounds temporary memory)

    def __init__(self, resize_hw: tuple[int, int], crop_hw: tuple[int, int] | None, mode: str,
                 sub: Sequence[float], div: Sequence[float]) -> None:
        self.resize_hw = resize_hw
        self.crop_hw = crop_hw
        self.mode = mode
        self.sub = [float(v) for v in sub]
        self.div = [float(v) for v in div]
        self._consts: dict[str, tuple[Any, Any]] = {}

    @property
    def out_hw(self) -> tuple[int, int]:
        return self.crop_hw or self.resize_hw

    @classmethod
    def from_processor(cls, ip: Any) -> FastPreprocess | None:
        if ip is None or not getattr(ip, "do_resize", True) or getattr(ip, "do_pad", None):
            return None
        mode = _resample_mode(getattr(ip, "resample", None))
        size = getattr(ip, "size", None)
        if mode is None or size is None:
            return None
        short = _size_get(size, "shortest_edge")
        if short and not _size_get(size, "longest_edge"):
            resize_hw = (int(short), int(short))  # square input: both sides become shortest_edge
        elif _size_get(size, "height") and _size_get(size, "width") and not short:
            resize_hw = (int(_size_get(size, "height")), int(_size_get(size, "width")))
        else:
            return None
        crop_hw = None
        if getattr(ip, "do_center_crop", False):
            cs = getattr(ip, "crop_size", None)
            ch, cw = _size_get(cs, "height"), _size_get(cs, "width")
            if not ch or not cw or ch > resize_hw[0] or cw > resize_hw[1]:
                return None
            crop_hw = None if (ch, cw) == resize_hw else (int(ch), int(cw))
        mean = list(getattr(ip, "image_mean", None) or [0.0, 0.0, 0.0])
        std = list(getattr(ip, "image_std", None) or [1.0, 1.0, 1.0])
        if len(mean) == 1:
            mean = mean * 3
        if len(std) == 1:
            std = std * 3
        if len(mean) != 3 or len(std) != 3:
            return None
        rescale = float(getattr(ip, "rescale_factor", 1 / 255)) if getattr(ip, "do_rescale", True) else 1.0
        if getattr(ip, "do_normalize", True):  # (x * rescale - mean) / std == (x - mean / rescale) / (std / rescale)
            sub, div = [m / rescale for m in mean], [sd / rescale for sd in std]
        else:
            sub, div = [0.0] * 3, [1.0 / rescale] * 3
        return cls(resize_hw, crop_hw, mode, sub, div)

    def _resize(self, x: Any) -> Any:
        import torch.nn.functional as F

        h = x.shape[-2]
        x = F.interpolate(x, size=(h, self.resize_hw[1]), mode=self.mode, antialias=True, align_corners=False)
        x = x.round_().clamp_(0, 255)
        x = F.interpolate(x, size=self.resize_hw, mode=self.mode, antialias=True, align_corners=False)
        x = x.round_().clamp_(0, 255)
        if self.crop_hw is not None:
            (rh, rw), (ch, cw) = self.resize_hw, self.crop_hw
            top, left = (rh - ch) // 2, (rw - cw) // 2
            x = x[..., top : top + ch, left : left + cw]
        return x

    def __call__(self, buf: Any, groups: Sequence[tuple[int, int, int, int]]) -> Any:
        """Pixel values (N, 3, H, W) float32 on ``buf``'s device from the packed uint8 buffer.

        ``groups``: (side, channels, count, byte offset) of consecutive same-size crops in ``buf``.
        """
        import torch

        dev = buf.device
        n = sum(g[2] for g in groups)
        out = torch.empty((n, 3, *self.out_hw), dtype=torch.float32, device=dev)
        k = 0
        for side, ch, count, off in groups:
            per = side * side * ch
            step = max(1, self.MAX_ELEMENTS // per)
            for j in range(0, count, step):
                m = min(step, count - j)
                x = buf[off + j * per : off + (j + m) * per].view(m, side, side, ch).permute(0, 3, 1, 2)
                x = x.float().contiguous()
                try:
                    y = self._resize(x)
                except RuntimeError:  # e.g. CUDA's antialias kernel refuses very large downscale factors
                    if dev.type == "cpu":
                        raise
                    y = self._resize(x.cpu()).to(dev)
                out[k : k + m] = y  # grey (1 channel) broadcasts to RGB
                k += m
        key = str(dev)
        if key not in self._consts:
            self._consts[key] = (torch.tensor(self.sub, device=dev).view(1, 3, 1, 1),
                                 torch.tensor(self.div, device=dev).view(1, 3, 1, 1))
        sub, div = self._consts[key]
        return out.sub_(sub).div_(div)


def pack_windows(windows: Sequence[_Window], pin: bool = False) -> tuple[Any, list[tuple[int, int, int, int]]]:
    """One flat uint8 tensor holding every window (side, side, C) back to back, and its groups.

    Groups are runs of consecutive windows with the same (side, channels): (side, C, count, offset).
    """
    import torch

    total = sum(w.side * w.side * w.channels for w in windows)
    buf = torch.empty(total, dtype=torch.uint8, pin_memory=pin)
    flat = buf.numpy()
    groups: list[tuple[int, int, int, int]] = []
    off = 0
    for w in windows:
        per = w.side * w.side * w.channels
        _fill_window(flat[off : off + per].reshape(w.side, w.side, w.channels), w.image, w.x0, w.y0)
        if groups and groups[-1][0] == w.side and groups[-1][1] == w.channels:
            s, c, cnt, o = groups[-1]
            groups[-1] = (s, c, cnt + 1, o)
        else:
            groups.append((w.side, w.channels, 1, off))
        off += per
    return buf, groups


def window_order(windows: Sequence[_Window]) -> list[int]:
    """Processing order: by (side, channels), then input order (few distinct sizes per batch)."""
    return sorted(range(len(windows)), key=lambda r: (windows[r].side, windows[r].channels, r))
