"""A minimal EDID 1.4 base block for one preferred mode: what we hand the guest when the
front-end can't be asked for one (QEMU older than 8.1, no display socket, or no answer)."""

from __future__ import annotations


def _mfg(code: str) -> bytes:
    a, b, c = (ord(ch) - ord("A") + 1 for ch in code)
    v = (a << 10) | (b << 5) | c
    return bytes([v >> 8, v & 0xFF])


def _text_descriptor(tag: int, text: str) -> bytes:
    t = text.encode("ascii")[:13]
    if len(t) < 13:
        t += b"\n" + b" " * (12 - len(t))
    return bytes([0, 0, 0, tag, 0]) + t


def _dtd(width: int, height: int, refresh: int = 60, dpi: int = 100) -> bytes:
    w = max(1, min(width, 4095))
    h = max(1, min(height, 4095))
    hfront, hsync, hblank = 48, 32, 160
    vfront, vsync, vblank = 3, 5, 30
    clock = (w + hblank) * (h + vblank) * refresh // 10000  # in 10 kHz units
    clock = max(1, min(clock, 0xFFFF))
    wmm = min(w * 254 // (dpi * 10), 4095)
    hmm = min(h * 254 // (dpi * 10), 4095)
    return bytes(
        [
            clock & 0xFF,
            clock >> 8,
            w & 0xFF,
            hblank & 0xFF,
            ((w >> 8) << 4) | (hblank >> 8),
            h & 0xFF,
            vblank & 0xFF,
            ((h >> 8) << 4) | (vblank >> 8),
            hfront & 0xFF,
            hsync & 0xFF,
            ((vfront & 0xF) << 4) | (vsync & 0xF),
            ((hfront >> 8) << 6) | ((hsync >> 8) << 4) | ((vfront >> 4) << 2) | (vsync >> 4),
            wmm & 0xFF,
            hmm & 0xFF,
            ((wmm >> 8) << 4) | (hmm >> 8),
            0,
            0,
            0x1E,  # digital separate sync, +hsync +vsync
        ]
    )


def generate(width: int, height: int, serial: int = 0, name: str = "vhostsuite") -> bytes:
    """128 bytes of EDID whose preferred (first detailed) timing is *width* x *height* @ 60 Hz."""
    e = bytearray()
    e += b"\x00\xff\xff\xff\xff\xff\xff\x00"
    e += _mfg("VHS")
    e += (0x1234).to_bytes(2, "little")  # product code
    e += (serial & 0xFFFFFFFF).to_bytes(4, "little")
    e += bytes([1, 2024 - 1990])  # week, year
    e += bytes([1, 4])  # EDID 1.4
    w = max(1, min(width, 4095))
    h = max(1, min(height, 4095))
    e += bytes([0xA5, min(255, max(1, w * 254 // 10000)), min(255, max(1, h * 254 // 10000)), 120, 0x06])
    e += bytes([0xEE, 0x91, 0xA3, 0x54, 0x4C, 0x99, 0x26, 0x0F, 0x50, 0x54])  # sRGB chromaticity
    e += bytes(3)  # no established timings
    e += b"\x01\x01" * 8  # no standard timings
    e += _dtd(width, height)
    e += _text_descriptor(0xFC, name)
    e += bytes([0, 0, 0, 0xFD, 0, 24, 120, 20, 255, 255 // 1, 0x01, 0x0A]) + b" " * 6  # range limits
    e += _text_descriptor(0xFF, f"{serial:08d}")
    e += bytes([0])  # no extension blocks
    e += bytes([(-sum(e)) & 0xFF])
    assert len(e) == 128
    return bytes(e)
