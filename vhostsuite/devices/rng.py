"""vhost-user-rng: virtio-rng (device id 4) fed from the kernel's random source.

One queue; each chain is a device-writable buffer the device fills with random bytes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from ..core.device import Device, QueueSpec
from ..core.virtio import VIRTIO_ID_RNG
from ..program import cli

#: typing.TYPE_CHECKING without importing typing (see vhostsuite.program.cli).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..core.ring import Chain
    from ..program.options import Namespace, Parser

#: The most bytes handed out per request; a larger buffer is filled partly, as the driver allows.
MAX_REQUEST = 64 * 1024


class RngDevice(Device):
    backend_type = "rng"
    virtio_id = VIRTIO_ID_RNG

    def __init__(self, source: str | None = None) -> None:
        super().__init__()
        self.queues = (QueueSpec("request", self._request),)
        self.source = source
        self._fd: int | None = None
        if source is not None:
            try:
                self._fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                raise cli.StartupError(f"--rng-source={source}: {e.strerror}") from None
        #: Bytes handed to the guest so far (reported in logs and by the demo).
        self.bytes_served = 0

    def _random(self, n: int) -> bytes:
        if self._fd is None:
            return os.getrandom(n)
        data = os.read(self._fd, n)
        if not data:
            raise OSError("random source is exhausted")
        return data

    def _request(self, chain: Chain) -> bytes | None:
        """A device-writable buffer: fill it (up to MAX_REQUEST) with random bytes."""
        want = min(chain.write_size, MAX_REQUEST)
        if not want:
            return None
        data = self._random(want)
        self.bytes_served += len(data)
        return data

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def capabilities() -> tuple[str, list[str]]:
    return "rng", []


def make_parser() -> Parser:
    parser = cli.make_parser(
        "vhost-user-rng",
        "vhost-user back-end for virtio-rng: serves the guest random bytes from the host kernel.",
        epilog="example:\n  vhost-user-rng --socket-path=/tmp/rng.sock &\n"
        "  qemu-system-x86_64 ... -chardev socket,id=rng0,path=/tmp/rng.sock \\\n"
        "      -device vhost-user-rng-pci,chardev=rng0",
    )
    parser.add_argument(
        "--rng-source",
        metavar="PATH",
        help="read random bytes from this file or device instead of getrandom(2)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    def make_device(args: Namespace) -> RngDevice:
        return RngDevice(args.rng_source)

    return cli.run("vhost-user-rng", make_parser, argv, capabilities, make_device)


if __name__ == "__main__":
    raise SystemExit(main())
