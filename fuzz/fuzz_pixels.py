"""Coverage-guided fuzzing of the pixel copier (``make fuzz``): the Cython ``_pixels`` and the
pure-Python reference get the same page lists, offsets, strides and sizes from the fuzzer's
bytes and must agree exactly: the same bytes written, or the same refusal (ValueError).

    python fuzz/fuzz_pixels.py -max_total_time=600
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from vhostsuite.devices.gpu import _pixels, _pixels_py

DST = 4096


def _copy(impl, pages: list[bytes], args: tuple[int, ...]) -> tuple:
    dst = bytearray(DST)
    plist = impl.PageList([bytearray(p) for p in pages])
    try:
        impl.copy_rect(plist, args[0], args[1], dst, args[2], args[3], args[4], args[5])
        out = ("ok", plist.total)
    except ValueError:
        out = ("ValueError",)
    finally:
        plist.release()
    return out, bytes(dst)


def _swizzle(impl, kind: int, src: bytes, args: tuple[int, ...]) -> tuple:
    dst = bytearray(DST)
    try:
        impl.swizzle_rect(kind, src, args[0], args[1], dst, args[2], args[3], args[4], args[5])
        out = ("ok",)
    except ValueError:
        out = ("ValueError",)
    return out, bytes(dst)


def _ints(fdp: atheris.FuzzedDataProvider) -> tuple[int, ...]:
    # offsets and strides around the interesting edges: negative, 0, small, just past the end, huge
    def one() -> int:
        pick = fdp.ConsumeIntInRange(0, 3)
        if pick == 0:
            return fdp.ConsumeIntInRange(-8, 8)
        if pick == 1:
            return fdp.ConsumeIntInRange(0, 5000)
        if pick == 2:
            return fdp.ConsumeIntInRange(-(1 << 63), (1 << 63) - 1)
        return fdp.ConsumeIntInRange(0, 1 << 70)  # past any C integer

    return tuple(one() for _ in range(6))


def TestOneInput(data: bytes) -> None:  # noqa: N802 - atheris' name
    fdp = atheris.FuzzedDataProvider(data)
    if fdp.ConsumeBool():
        pages = [fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 600)) for _ in range(fdp.ConsumeIntInRange(0, 8))]
        args = _ints(fdp)
        a = _b = None
        try:
            a = _copy(_pixels, pages, args)
        except OverflowError:
            a = ("OverflowError",)  # Python ints past Py_ssize_t: refused at the call
        try:
            _b = _copy(_pixels_py, pages, args)
        except OverflowError:
            _b = ("OverflowError",)
        if a != _b and a != ("OverflowError",):
            raise AssertionError(f"copy_rect {args} over {[len(p) for p in pages]}: {a[0]} != {_b[0]}")
    else:
        kind = fdp.ConsumeIntInRange(0, 4)
        src = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 3000))
        args = _ints(fdp)
        try:
            a = _swizzle(_pixels, kind, src, args)
        except OverflowError:
            return
        b = _swizzle(_pixels_py, kind, src, args)
        if a != b:
            raise AssertionError(f"swizzle_rect kind {kind} {args} over {len(src)} bytes: {a[0]} != {b[0]}")


if __name__ == "__main__":
    print(f"fuzzing {_pixels.__file__}", file=sys.stderr)  # make fuzz: the instrumented build
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
