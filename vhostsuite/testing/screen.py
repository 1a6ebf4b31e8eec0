"""What the guest's gpu-draw program (guest_src/gpu-draw.c) puts on the screen, and reading
QMP screendumps back, for the end-to-end tests and the demo (one place for the formulas)."""

from __future__ import annotations

import re
from pathlib import Path


def pattern1(x: int, y: int) -> tuple[int, int, int]:
    """RGB of pixel (x, y) of gpu-draw's first frame (the same formula as in gpu-draw.c)."""
    return (x * 7 + y * 3) & 0xFF, (x ^ y) & 0xFF, (x + 2 * y) & 0xFF


def expected(w: int, h: int, rect: tuple[int, int, int, int] | None = None) -> bytes:
    """RGB bytes of the guest's frame (the rectangle inverted for the second frame)."""
    out = bytearray(w * h * 3)
    rx, ry, rw, rh = rect or (0, 0, 0, 0)
    i = 0
    for y in range(h):
        for x in range(w):
            r, g, b = pattern1(x, y)
            if rx <= x < rx + rw and ry <= y < ry + rh:
                r, g, b = r ^ 0xFF, g ^ 0xFF, b ^ 0xFF
            out[i], out[i + 1], out[i + 2] = r, g, b
            i += 3
    return bytes(out)


def load_rgb(path: Path, fmt: str) -> tuple[int, int, bytes]:
    """(width, height, RGB bytes) of a screendump in PNG (read with cairo) or PPM."""
    if fmt == "png":
        import cairo

        s = cairo.ImageSurface.create_from_png(str(path))
        w, h, stride = s.get_width(), s.get_height(), s.get_stride()
        data = bytes(s.get_data())
        rgb = bytearray(w * h * 3)
        for y in range(h):
            row = data[y * stride : y * stride + w * 4]
            o = y * w * 3
            rgb[o : o + w * 3 : 3] = row[2::4]
            rgb[o + 1 : o + w * 3 : 3] = row[1::4]
            rgb[o + 2 : o + w * 3 : 3] = row[0::4]
        return w, h, bytes(rgb)
    raw = path.read_bytes()
    m = re.match(rb"P6\s+(\d+)\s+(\d+)\s+(\d+)\s", raw)
    if not m:
        raise ValueError(f"{path} is neither PNG nor PPM")
    w, h = int(m[1]), int(m[2])
    return w, h, raw[m.end() : m.end() + w * h * 3]


def differing_pixels(w: int, rgb: bytes, want: bytes) -> list[tuple[int, int]]:
    return [((i // 3) % w, (i // 3) // w) for i in range(0, len(want), 3) if rgb[i : i + 3] != want[i : i + 3]]
