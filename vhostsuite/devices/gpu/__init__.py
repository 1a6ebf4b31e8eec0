"""vhost-user-gpu: a virtio-gpu (device id 16) whose display reaches QEMU over the
vhost-user-gpu protocol: 2D, and 3D with ``--virgl`` (virglrenderer, :mod:`.virgl`).
Resources and format conversion in Python/cairo, guest-page copies in Cython
(:mod:`vhostsuite.devices.gpu.pixels`).

This module stays light: ``--print-capabilities`` must not import cairo. The device itself
(:mod:`.device`) is imported only when serving.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Sequence

from ...program import cli
from .probe import renderer_works

#: typing.TYPE_CHECKING without importing typing; the option parser is imported where it is
#: used, so that --print-capabilities imports neither (see vhostsuite.program.cli).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from ...program.options import Namespace, Parser

DEFAULT_MAX_HOSTMEM = 256 << 20
#: The character-device major of DRM nodes (<linux/major.h>).
DRM_MAJOR = 226
DEFAULT_DISPLAY_TIMEOUT = 5.0


def capabilities() -> tuple[str, list[str]]:
    """Only what works here: "virgl" when the renderer initialises (tried in a child process, or
    a record of that success whose files are unchanged: :mod:`.probe`), "render-node" when,
    besides, a render node can be opened (libvirt fails a domain that asks for one on a host
    without)."""
    features = []
    if renderer_works(remembered=True):
        features.append("virgl")
        if render_node() is not None:
            features.append("render-node")
    return "gpu", features


def render_node() -> str | None:
    """The first DRM render node this process can open, or None."""
    try:
        names = sorted(n for n in os.listdir("/dev/dri") if n.startswith("renderD"))
    except OSError:
        return None
    for path in (f"/dev/dri/{n}" for n in names):
        try:
            os.close(os.open(path, os.O_RDWR | os.O_CLOEXEC))
        except OSError:
            continue
        return path
    return None


def parse_size(text: str) -> int:
    """Bytes, or with a binary suffix: 65536, 256M, 1G, 512 KiB (no re: it costs every start)."""
    t = text.strip()
    end = 0
    while end < len(t) and t[end] in "0123456789":
        end += 1
    unit = t[end:].lstrip().lower()
    letter = unit[:1] if unit[:1] in ("k", "m", "g") else ""
    if end == 0 or unit[len(letter) :] not in ("", "b", "ib"):
        raise ValueError(f"invalid size {text!r} (e.g. 256M, 1G, 65536)")
    n = int(t[:end]) << {"": 0, "k": 10, "m": 20, "g": 30}[letter]
    if n <= 0:
        raise ValueError("the size must be positive")
    return n


def positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise ValueError(f"invalid number {text!r}") from None
    if not v > 0:
        raise ValueError("must be > 0")
    return v


def make_parser() -> Parser:
    parser = cli.make_parser(
        "vhost-user-gpu",
        "vhost-user back-end for a virtio-gpu (2D; 3D with --virgl); the display goes to QEMU over the "
        "vhost-user-gpu protocol.",
        epilog="example:\n  vhost-user-gpu --socket-path=/tmp/gpu.sock &\n"
        "  qemu-system-x86_64 -object memory-backend-memfd,id=mem,size=1G,share=on \\\n"
        "      -machine memory-backend=mem -vga none \\\n"
        "      -chardev socket,id=gpu0,path=/tmp/gpu.sock -device vhost-user-gpu-pci,chardev=gpu0",
    )
    parser.add_argument(
        "--virgl",
        action="store_true",
        help="3D for the guest with virglrenderer: on --render-node, else on Mesa's software renderer (no GPU needed)",
    )
    parser.add_argument("--render-node", metavar="PATH", help="the DRM render node 3D runs on (needs --virgl)")
    parser.add_argument(
        "--max-hostmem",
        metavar="SIZE",
        type=parse_size,
        default=DEFAULT_MAX_HOSTMEM,
        help="cap on the memory of all resources (default 256M, as QEMU); more gives OUT_OF_MEMORY",
    )
    parser.add_argument(
        "--display-timeout",
        metavar="SECONDS",
        type=positive_float,
        default=DEFAULT_DISPLAY_TIMEOUT,
        help="how long to wait for QEMU's display replies and stalled sends (default 5)",
    )
    return parser


def check_options(args: Namespace) -> None:
    """Refuse options this back-end can't honour, with a clear message (before any socket exists)."""
    if args.render_node is not None:
        try:
            st = os.stat(args.render_node)
        except OSError:
            raise cli.StartupError(f"--render-node={args.render_node}: no such device") from None
        if not stat.S_ISCHR(st.st_mode) or os.major(st.st_rdev) != DRM_MAJOR:
            raise cli.StartupError(f"--render-node={args.render_node}: not a DRM render node")
        if not args.virgl:
            raise cli.StartupError(f"--render-node={args.render_node}: a render node is only used for 3D (--virgl)")
    if args.virgl:
        from . import virgl

        why = virgl.available()
        if why is not None:
            raise cli.StartupError(f"--virgl: 3D is not available: {why}")
        try:
            virgl.init_renderer(args.render_node)
        except OSError as e:
            reason = os.strerror(e.errno) if e.errno else "no reason given"
            raise cli.StartupError(f"--virgl: {e.strerror}: {reason}") from None


def _importable(name: str) -> bool:
    """Top-level module *name* can be imported: what importlib.util.find_spec() asks of the
    import system's finders, without importing importlib.util (with contextlib, ~2 ms)."""
    return name in sys.modules or any(
        getattr(finder, "find_spec", None) is not None and finder.find_spec(name, None) is not None
        for finder in sys.meta_path
    )


def main(argv: Sequence[str] | None = None) -> int:
    def make_device(args: Namespace):  # noqa: ANN202 - imports the device lazily
        check_options(args)
        # cairo is imported by the first cursor image, not at start-up; its absence is found now.
        if not _importable("cairo"):
            raise cli.StartupError("pycairo is not installed (Debian: python3-cairo); the cursor needs it")
        from .device import GpuDevice

        return GpuDevice(max_hostmem=args.max_hostmem, display_timeout=args.display_timeout, virgl=args.virgl)

    return cli.run("vhost-user-gpu", make_parser, argv, capabilities, make_device, uses_pixels=True)


__all__ = ["main", "capabilities", "renderer_works"]
