"""Coverage-guided fuzzing of the GPU's compiled command decoder (``make fuzz``): a chain in guest
memory whose readable bytes come from the fuzzer (split over up to four buffers), popped from
the real ring; the Cython ``_commands.decode_control`` and the pure-Python ``decode_control_py``
must return the same header and the same typed command or error Reply.

    python fuzz/fuzz_commands.py -max_total_time=600
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from vhostsuite.core import ring
    from vhostsuite.devices.gpu import _commands
    from vhostsuite.devices.gpu import commands as K
    from vhostsuite.testing.ringutil import GuestRing


def TestOneInput(data: bytes) -> None:  # noqa: N802 - atheris' name
    fdp = atheris.FuzzedDataProvider(data)
    cuts = sorted({fdp.ConsumeIntInRange(1, 200) for _ in range(fdp.ConsumeIntInRange(0, 3))})
    body = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 200))
    pieces = [p for p in (body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=False)) if p]
    g = GuestRing(8)
    g.add_chain(pieces or [b""], [24])
    chain = g.queue(ring.Virtqueue).pop()
    got, want = _commands.decode_control(chain), K.decode_control_py(chain)
    if got != want or [type(x) for x in got] != [type(x) for x in want]:
        raise AssertionError(f"{body.hex()} cut at {cuts}: {got!r} != {want!r}")


if __name__ == "__main__":
    print(f"fuzzing {_commands.__file__}", file=sys.stderr)  # make fuzz: the instrumented build
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
