"""The pixel copies: the Cython module and the pure-Python reference agree, and refuse bad rectangles."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vhostsuite.devices.gpu import _pixels_py, pixels

try:
    from vhostsuite.devices.gpu import _pixels as _pixels_c
except ImportError:  # pragma: no cover
    _pixels_c = None

IMPLS = [pytest.param(_pixels_py, id="py")]
if _pixels_c is not None:
    IMPLS.append(pytest.param(_pixels_c, id="cython"))

PERMS = {0: (0, 1, 2, 3), 1: (3, 2, 1, 0), 2: (2, 1, 0, 3), 3: (1, 2, 3, 0)}


def test_switch_uses_compiled_module_when_built() -> None:
    if _pixels_c is not None and not pixels.NO_EXTENSIONS:
        assert pixels.COMPILED
        assert pixels.copy_rect is _pixels_c.copy_rect


def scattered(data: bytes, cuts: list[int]) -> list[bytearray]:
    pieces, prev = [], 0
    for c in sorted(set(cuts)) + [len(data)]:
        if c > prev:
            pieces.append(bytearray(data[prev:c]))
            prev = c
    return pieces


def reference_copy(src: bytes, so: int, ss: int, dst: bytearray, do: int, ds: int, rb: int, rows: int) -> None:
    for r in range(rows):
        dst[do + r * ds : do + r * ds + rb] = src[so + r * ss : so + r * ss + rb]


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    rows=st.integers(0, 9),
    row_bytes=st.integers(0, 40),
    pad=st.integers(0, 24),
    so=st.integers(0, 50),
    do=st.integers(0, 50),
    ncuts=st.integers(0, 30),
)
def test_copy_rect_matches_reference(impl, seed, rows, row_bytes, pad, so, do, ncuts) -> None:  # noqa: ANN001
    rnd = random.Random(seed)
    ss = row_bytes + pad
    ds = row_bytes + rnd.randint(0, 16)
    total = so + ss * rows + rnd.randint(0, 8)
    src = bytes(rnd.randrange(256) for _ in range(total))
    pages = impl.PageList(scattered(src, [rnd.randrange(total + 1) for _ in range(ncuts)]))
    assert pages.total == total
    dlen = do + ds * rows + 4
    dst, want = bytearray(b"\xee" * dlen), bytearray(b"\xee" * dlen)
    impl.copy_rect(pages, so, ss, dst, do, ds, row_bytes, rows)
    reference_copy(src, so, ss, want, do, ds, row_bytes, rows)
    assert dst == want


@pytest.mark.parametrize("impl", IMPLS)
def test_copy_rect_refuses_out_of_range(impl) -> None:  # noqa: ANN001
    pages = impl.PageList([bytearray(4096), bytearray(4096)])
    dst = bytearray(1000)
    with pytest.raises(ValueError):
        impl.copy_rect(pages, 8192 - 10, 0, dst, 0, 0, 11, 1)  # past the backing
    with pytest.raises(ValueError):
        impl.copy_rect(pages, 0, 100, dst, 0, 100, 100, 11)  # past the destination
    with pytest.raises(ValueError):
        impl.copy_rect(pages, -1, 0, dst, 0, 0, 1, 1)
    with pytest.raises(ValueError):
        impl.copy_rect(pages, 0, 2**62, dst, 0, 0, 1, 3)  # huge stride: no overflow
    with pytest.raises(ValueError):
        impl.copy_rect(pages, 0, 4, dst, 0, 4, 8, 2)  # overlapping rows
    impl.copy_rect(pages, 8191, 0, dst, 999, 0, 1, 1)  # exactly at the ends


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", [0, 1, 2, 3])
def test_swizzle_rect(impl, kind) -> None:  # noqa: ANN001
    rnd = random.Random(kind)
    w, h, ss, ds = 7, 5, 7 * 4 + 12, 7 * 4 + 4
    src = bytes(rnd.randrange(256) for _ in range(8 + ss * h))
    dst = bytearray(b"\x55" * (4 + ds * h))
    impl.swizzle_rect(kind, src, 8, ss, dst, 4, ds, w, h)
    want = bytearray(b"\x55" * len(dst))
    p = PERMS[kind]
    for r in range(h):
        for x in range(w):
            s = 8 + r * ss + 4 * x
            d = 4 + r * ds + 4 * x
            want[d : d + 4] = bytes(src[s + p[k]] for k in range(4))
    assert dst == want


@pytest.mark.parametrize("impl", IMPLS)
def test_swizzle_refuses(impl) -> None:  # noqa: ANN001
    with pytest.raises(ValueError):
        impl.swizzle_rect(4, bytes(16), 0, 16, bytearray(16), 0, 16, 4, 1)
    with pytest.raises(ValueError):
        impl.swizzle_rect(1, bytes(16), 0, 16, bytearray(16), 0, 16, 5, 1)
    with pytest.raises(ValueError):
        impl.swizzle_rect(1, bytes(16), 4, 16, bytearray(16), 0, 16, 4, 1)


@pytest.mark.parametrize("impl", IMPLS)
def test_pagelist_release(impl) -> None:  # noqa: ANN001
    buf = bytearray(64)
    pages = impl.PageList([memoryview(buf)[:32], memoryview(buf)[32:]])
    assert pages.total == 64 and len(pages) == 2
    pages.release()
    assert pages.total == 0
    buf.extend(b"x")  # no export left


@pytest.mark.parametrize("impl", IMPLS)
def test_vmsplice_puts_the_bytes_into_the_pipe_without_blocking(impl) -> None:  # noqa: ANN001
    """Both implementations move the view's bytes into the pipe (the compiled one by reference)
    and say how many; a full pipe is EAGAIN, not a wait."""
    import mmap
    import os

    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    m = mmap.mmap(-1, 1 << 20)
    m.write(bytes(range(256)) * 4096)
    try:
        assert impl.vmsplice(w, memoryview(m)[:1000]) == 1000
        assert os.read(r, 2000) == bytes(m[:1000])
        assert impl.vmsplice(w, b"") == 0
        moved = 0
        with pytest.raises(BlockingIOError):
            for _ in range(64):
                moved += impl.vmsplice(w, memoryview(m))
        assert 0 < moved <= 1 << 20
    finally:
        os.close(r)
        os.close(w)
        m.close()
