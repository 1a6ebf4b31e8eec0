"""Coverage-guided fuzzing of the vhost-user core (``make fuzz``): random message sequences,
with fds, into a real Connection serving the rng device. Any exception but the defined
ones (the front-end is gone / the stream is beyond repair) is a bug.

    python fuzz/fuzz_connection.py -max_total_time=600
"""

from __future__ import annotations

import os
import socket
import sys

import atheris

with atheris.instrument_imports():
    from vhostsuite.core import protocol as P
    from vhostsuite.core.connection import Connection, Disconnected, FatalProtocolError
    from vhostsuite.core.loop import Loop
    from vhostsuite.devices.rng import RngDevice

REQUESTS = [*P.Request.names(), 0, 44, 99, 0xFFFFFFFF]


def TestOneInput(data: bytes) -> None:  # noqa: N802 - atheris' name
    fdp = atheris.FuzzedDataProvider(data)
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    loop = Loop()
    conn = Connection(ours, RngDevice(), loop)
    memfd = os.memfd_create("fuzz")
    os.ftruncate(memfd, 1 << 20)
    try:
        for _ in range(fdp.ConsumeIntInRange(1, 12)):
            request = fdp.PickValueInList(REQUESTS)
            flags = fdp.PickValueInList([P.VERSION, P.VERSION | P.NEED_REPLY_FLAG])
            payload = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 300))
            fds = []
            for _ in range(fdp.ConsumeIntInRange(0, 2)):
                fds.append(os.dup(memfd) if fdp.ConsumeBool() else os.eventfd(0, os.EFD_NONBLOCK))
            try:
                conn.handle(P.Message(request, flags, payload, tuple(fds)))
            except (Disconnected, FatalProtocolError):
                return
            for ring in conn.rings:
                ring.run()
            try:
                while theirs.recv(65536):
                    pass
            except BlockingIOError:
                pass
    finally:
        conn.close()
        theirs.close()
        loop.close()
        os.close(memfd)


if __name__ == "__main__":
    from vhostsuite.core import ring

    if ring.IMPORT_ERROR is not None:
        sys.exit(f"the compiled ring is not usable here: {ring.IMPORT_ERROR}")
    print(f"fuzzing the connection over {ring.Virtqueue.__module__}", file=sys.stderr)
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
