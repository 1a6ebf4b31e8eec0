"""vhost-user-input: virtio-input (device id 18) from a host evdev device or a virtual device.

``--evdev-path=/dev/input/eventN`` passes a host device through (grabbed unless ``--no-grab``):
the guest sees its name, serial, ids, property bits, the codes of every event type (KEY,
REL, ABS, MSC, SW, LED, SND, REP, FF ...) and the range of every absolute axis; the guest's
LED and sound events are written back to it. If the device goes away the program ends with
status 1.

``--virtual=keyboard|mouse|tablet|FILE.json`` serves a device that exists only here; its
events come from clients of ``--control-socket=PATH`` (JSON lines, see
:mod:`.sources`), which also hear what the guest writes to the status queue (LEDs).

Event delivery, batching and overflow are described in :mod:`.device`. This module imports
nothing heavy, so ``--print-capabilities`` stays fast.
"""

from __future__ import annotations

from collections.abc import Sequence

from ...program import cli

#: typing.TYPE_CHECKING without importing typing; the option parser is imported where it is
#: used, so that --print-capabilities imports neither (see vhostsuite.program.cli).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from ...program.options import Namespace, Parser

__all__ = ["main", "capabilities"]


def capabilities() -> tuple[str, list[str]]:
    return "input", ["evdev-path", "no-grab"]


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an integer") from None
    if n < 2:
        raise ValueError("must be at least 2")
    return n


def make_parser() -> Parser:
    parser = cli.make_parser(
        "vhost-user-input",
        "vhost-user back-end for virtio-input: passes a host evdev device through, or serves a "
        "virtual keyboard, mouse, tablet or JSON-described device fed from a control socket.",
        epilog="examples:\n"
        "  vhost-user-input --socket-path=/tmp/in.sock --evdev-path=/dev/input/event3 &\n"
        "  vhost-user-input --socket-path=/tmp/in.sock --virtual=keyboard --control-socket=/tmp/kbd.ctl &\n"
        "  qemu-system-x86_64 ... -chardev socket,id=in0,path=/tmp/in.sock \\\n"
        "      -device vhost-user-input-pci,chardev=in0\n"
        '  echo \'{"events": [["EV_KEY","KEY_A",1],["EV_SYN","SYN_REPORT",0]]}\' | socat - UNIX:/tmp/kbd.ctl',
    )
    src = parser.add_argument_group("event source (exactly one)")
    src.add_argument("--evdev-path", metavar="PATH", help="pass this host evdev device (/dev/input/eventN) through")
    src.add_argument(
        "--virtual",
        metavar="KIND",
        help="serve a virtual device: keyboard, mouse, tablet, or a JSON description file (FILE.json)",
    )
    parser.add_argument("--no-grab", action="store_true", help="don't grab the evdev device (the host sees it too)")
    parser.add_argument(
        "--control-socket",
        metavar="PATH",
        help="with --virtual: listen here for JSON-lines clients that inject events and hear LED changes",
    )
    parser.add_argument(
        "--max-pending",
        metavar="EVENTS",
        type=_positive,
        default=None,
        help="events kept for a guest that does not read before SYN_DROPPED (default 8192)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    def make_device(args: Namespace):  # noqa: ANN202 - imports are deferred to here
        from .device import MAX_PENDING, InputDevice

        if (args.evdev_path is None) == (args.virtual is None):
            raise cli.UsageError("exactly one of --evdev-path and --virtual is required")
        if args.evdev_path is not None:
            if args.control_socket is not None:
                raise cli.UsageError("--control-socket only works with --virtual")
            from .sources import EvdevSource

            source = EvdevSource(args.evdev_path, grab=not args.no_grab)
        else:
            if args.no_grab:
                raise cli.UsageError("--no-grab only works with --evdev-path")
            from . import config as C
            from .sources import VirtualSource

            try:
                if args.virtual in C.BUILTINS:
                    desc = C.builtin(args.virtual)
                elif args.virtual.endswith(".json"):
                    desc = C.from_json(args.virtual)
                else:
                    raise cli.StartupError(
                        f"--virtual={args.virtual}: want keyboard, mouse, tablet or a FILE.json description"
                    )
            except C.DescriptionError as e:
                raise cli.StartupError(f"--virtual={args.virtual}: {e}") from None
            if args.control_socket is None:
                from ...core import logger

                logger.get("vhostsuite.input").warning(
                    "no --control-socket: the virtual device will never send events"
                )
            source = VirtualSource(desc, args.control_socket)
        return InputDevice(source, args.max_pending or MAX_PENDING)

    return cli.run("vhost-user-input", make_parser, argv, capabilities, make_device)


if __name__ == "__main__":
    raise SystemExit(main())
