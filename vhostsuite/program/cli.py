"""The command line every back-end shares (QEMU's "Back-end program conventions").

``--socket-path`` (we listen, serve one front-end) or ``--fd`` (an already connected socket,
as libvirt passes it), ``--print-capabilities``, logging on stderr, SIGTERM ends the program
with status 0 and removes the socket file we created. A front-end hang-up ends it with status
0 too, as QEMU's own back-ends do. Device modules add their options and hand over a factory.
"""

from __future__ import annotations

import sys

from .. import NO_EXTENSIONS, __version__
from ..core.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, StartupError

# --print-capabilities (libvirt runs it at every domain start) imports nothing but this module
# and the device's entry module: the option parser and json (with re and enum) are imported
# where they are used. typing.TYPE_CHECKING without importing typing:
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from .options import Namespace, Parser

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "StartupError", "UsageError", "make_parser", "run"]


class UsageError(Exception):
    """Options that don't go together, found by the device's factory: reported as a bad option
    is (usage, the message, status 2)."""


def make_parser(prog: str, description: str, epilog: str | None = None) -> Parser:
    from ..core.loop import DEFAULT_POLL_MAX_US
    from .options import Parser

    p = Parser(prog, description, epilog)
    conn = p.add_argument_group("connection (exactly one)")
    conn.add_argument("--socket-path", metavar="PATH", help="listen on this UNIX socket for one front-end")
    conn.add_argument(
        "--fd", metavar="FDNUM", type=fd_number, help="serve the already connected socket FDNUM (as libvirt passes it)"
    )
    p.add_argument(
        "--print-capabilities",
        action="store_true",
        help="print the capabilities JSON on stdout and exit 0, ignoring other options",
    )
    p.add_argument(
        "--poll-max-us",
        metavar="USEC",
        type=microseconds,
        default=DEFAULT_POLL_MAX_US,
        help="before sleeping, poll for the guest's next request for up to USEC microseconds, adapting to how "
        f"soon it comes, so that an idle back-end sleeps; 0: never (default {DEFAULT_POLL_MAX_US})",
    )
    p.add_argument("-v", "--verbose", action="count", help="more logging on stderr (-vv: debug)")
    p.add_argument("-q", "--quiet", action="store_true", help="log errors only")
    p.add_argument("-V", "--version", action=_version, help="show the version and what the hot path runs on, and exit")
    return p


def microseconds(text: str) -> int:
    """0 to 1 s: a longer spin would only burn CPU that a sleep gives back."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"invalid int value: {text!r}") from None
    if not 0 <= value <= 1_000_000:
        raise ValueError(f"must be 0 to 1000000 microseconds: {text!r}")
    return value


def fd_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"invalid int value: {text!r}") from None


def implementation(pixels: bool = True) -> tuple[str, str | None]:
    """What the hot path runs on, and why the compiled extensions are not used if they should be.
    *pixels*: the GPU's pixel copier and command decoder count too (the other programs don't
    import them)."""
    from ..core import ring

    errors = [("ring", ring.IMPORT_ERROR)]
    if pixels:
        from ..devices.gpu import commands
        from ..devices.gpu import pixels as pixel_copier

        errors += [("pixels", pixel_copier.IMPORT_ERROR), ("commands", commands.IMPORT_ERROR)]
    what = "ring, pixel copier and command decoder" if pixels else "ring"
    if NO_EXTENSIONS:
        return f"pure-Python {what} (VHOSTSUITE_NO_EXTENSIONS=1)", None
    problems = [f"{name}: {err}" for name, err in errors if err]
    if not problems:
        return f"compiled (Cython) {what}", None
    return f"pure-Python {what}: the compiled extensions can't be used", "; ".join(problems)


def _version(parser: Parser) -> None:
    """--version, naming the implementation."""
    what, why = implementation()
    sys.stdout.write(f"{parser.prog} (vhostsuite) {__version__}: {what}" + (f" ({why})" if why else "") + "\n")
    parser.exit()


def wants_capabilities(argv: Sequence[str]) -> bool:
    """``--print-capabilities`` ignores every other option, even invalid ones."""
    return "--print-capabilities" in argv


def _json_string(text: str) -> str:
    # Our names need no escaping; json (with re and enum) is imported only for one that would.
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'
    import json

    return json.dumps(text)


def print_capabilities(backend_type: str, features: list[str]) -> int:
    items = ", ".join(map(_json_string, features))
    sys.stdout.write(f'{{"type": {_json_string(backend_type)}, "features": [{items}]}}\n')
    sys.stdout.flush()
    return EXIT_OK


def setup_logging(prog: str, verbose: int, quiet: bool) -> None:
    from ..core import logger

    level = logger.ERROR if quiet else (logger.WARNING, logger.INFO, logger.DEBUG)[min(verbose, 2)]
    logger.configure(prog, level)


def check_connection_args(parser: Parser, args: Namespace) -> None:
    if (args.socket_path is None) == (args.fd is None):
        parser.error("exactly one of --socket-path and --fd is required")


def run(
    prog: str,
    make_parser: Callable[[], Parser],
    argv: Sequence[str] | None,
    capabilities: Callable[[], tuple[str, list[str]]],
    make_device: Callable[[Namespace], object],
    uses_pixels: bool = False,
) -> int:
    """Parse (the parser is made only when needed), then serve. *make_device* may raise
    StartupError for options this host can't honour. *uses_pixels*: the device copies pixels
    (the start-up warning then covers that extension too)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if wants_capabilities(argv):
        return print_capabilities(*capabilities())
    parser = make_parser()
    args = parser.parse_args(argv)
    check_connection_args(parser, args)
    setup_logging(prog, args.verbose, args.quiet)
    import faulthandler

    from ..core import logger

    log = logger.get("vhostsuite")
    # A fatal signal (SIGSEGV, SIGBUS, ...) says where on stderr instead of dying silently; the
    # compiled core replaces the SIGBUS report with one naming the guest region.
    faulthandler.enable()
    what, why = implementation(uses_pixels)
    if why:
        log.warning("%s (%s); it runs several times slower", what, why)
    from .server import serve  # the serving machinery is only imported when we serve

    try:
        return serve(args, make_device)
    except UsageError as e:
        parser.error(str(e))
    except StartupError as e:
        log.error("%s", e)
        return EXIT_FAILURE
