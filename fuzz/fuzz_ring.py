"""Coverage-guided fuzzing of the split ring (``make fuzz``): the Cython ring and the pure-Python
reference get the same guest memory built from the fuzzer's bytes and must agree exactly.

    python fuzz/fuzz_ring.py -max_total_time=600
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from vhostsuite.core import _ring, _ring_py
    from vhostsuite.core.errors import RingError
    from vhostsuite.core.memory import GuestMemory, Region
    from vhostsuite.core.virtio import ring_sizes

MEM = 1 << 16


def run(impl, memory: bytearray, num: int, event_idx: bool, base: int) -> tuple:
    mem = GuestMemory([Region.from_buffer(0x1000, 0x7000_0000, memory)])
    dsize, asize, usize = ring_sizes(num)
    view = mem.gpa_view
    out: list = []
    try:
        vq = impl.Virtqueue(mem, num, view(0x1000, dsize), view(0x1000 + dsize, asize),
                            view(0x1000 + dsize + asize, usize), base, event_idx)  # fmt: skip
        for _ in range(num + 2):
            chain = vq.pop()
            if chain is None:
                break
            out.append((chain.head, chain.read(), chain.write_size, chain.write(b"\xa5" * 7, 3)))
            vq.push(chain)
        out.append(vq.need_notify())
    except RingError as e:
        out.append(("RingError", str(e)))
    return tuple(out), bytes(memory)


def TestOneInput(data: bytes) -> None:  # noqa: N802 - atheris' name
    fdp = atheris.FuzzedDataProvider(data)
    num = 1 << fdp.ConsumeIntInRange(0, 6)
    event_idx = fdp.ConsumeBool()
    base = fdp.ConsumeIntInRange(0, 0xFFFF)
    raw = fdp.ConsumeBytes(MEM)
    memory = bytearray(raw.ljust(MEM, b"\0"))
    a = run(_ring, bytearray(memory), num, event_idx, base)
    b = run(_ring_py, bytearray(memory), num, event_idx, base)
    if a != b:
        raise AssertionError(f"Cython and pure-Python rings disagree:\n{a[0]}\n{b[0]}")


if __name__ == "__main__":
    print(f"fuzzing {_ring.__file__}", file=sys.stderr)  # make fuzz: the instrumented build
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
