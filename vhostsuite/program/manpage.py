"""Manual pages made from the programs' own argument parsers, so that they never drift apart.

    python3 -m vhostsuite.program.manpage vhost-user-gpu > vhost-user-gpu.1

The page has the parser's description, every option group with its help, the examples
(the parser's epilog) and what every back-end shares: the exit status, signals and the
discovery file.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from .. import __version__

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .options import Option, Parser

#: Program name -> the module whose make_parser() builds its command line.
PROGRAMS = {
    "vhost-user-gpu": "vhostsuite.devices.gpu",
    "vhost-user-input": "vhostsuite.devices.input",
    "vhost-user-rng": "vhostsuite.devices.rng",
}

_COMMON = r""".SH EXIT STATUS
.TP
.B 0
the front-end hung up, SIGTERM arrived, or \-\-print\-capabilities/\-\-help/\-\-version
.TP
.B 1
a fatal error: an option this host can't honour, a socket that can't be used, a protocol
error that leaves the connection unusable (the message says which)
.TP
.B 2
a usage error in the command line
.SH SIGNALS
SIGTERM ends the program at once and cleanly (status 0), removing the socket file it created;
SIGINT the same with status 130. The program never daemonizes and logs on standard error.
.SH FILES
.TP
.I {datadir}/qemu/vhost\-user/50\-vhostsuite\-{dev}.json
the discovery file by which libvirt finds this back-end (QEMU's vhost-user.json schema)
.SH SEE ALSO
.BR qemu\-system\-x86_64 (1),
.BR vhost\-user\-gpu (1),
.BR vhost\-user\-input (1),
.BR vhost\-user\-rng (1);
the vhost-user protocol: QEMU's docs/interop/vhost\-user.rst
"""


def _esc(text: str) -> str:
    """Text for roff: backslashes and leading dots or quotes made harmless, '-' as minus."""
    out = []
    for line in text.replace("\\", "\\e").replace("-", "\\-").splitlines():
        out.append("\\&" + line if line[:1] in (".", "'") else line)
    return "\n".join(out)


def _option(option: Option) -> str:
    names = ", ".join(f"\\fB{_esc(o)}\\fR" for o in option.names)
    if option.takes_value:
        names += f"=\\fI{_esc(str(option.metavar))}\\fR"
    return f".TP\n{names}\n{_esc(option.help or '')}\n"


def render(prog: str, parser: Parser, date: str = "", datadir: str = "/usr/share") -> str:
    """The page of *prog*; *datadir* is where ``make install`` puts the discovery file."""
    dev = prog.removeprefix("vhost-user-")
    page = [f'.TH {prog.upper().replace("-", chr(92) + "-")} 1 "{date}" "vhostsuite {__version__}" "vhostsuite"\n']
    page.append(f".SH NAME\n{_esc(prog)} \\- vhost\\-user {dev} device back-end\n")
    # filled, not pre-wrapped: man wraps it to the reader's terminal
    page.append(f".SH SYNOPSIS\n.B {_esc(prog)}\n{_esc(' '.join(parser.usage_words()))}\n")
    page.append(f".SH DESCRIPTION\n{_esc(parser.description or '')}\n")
    page.append(
        ".PP\nQEMU (or libvirt) starts it and connects over a UNIX socket; it serves that one front-end and "
        "exits when it hangs up. Exactly one of \\fB\\-\\-socket\\-path\\fR and \\fB\\-\\-fd\\fR is given.\n"
    )
    page.append(".SH OPTIONS\n")
    for group in parser.groups:
        if not group.options:
            continue
        if group.title != "options":
            page.append(f".SS {_esc(group.title.capitalize())}\n")
        page.extend(_option(o) for o in group.options)
    if parser.epilog:
        body = parser.epilog.split("\n", 1)[1] if parser.epilog.startswith("example") else parser.epilog
        page.append(f".SH EXAMPLES\n.nf\n{_esc(body)}\n.fi\n")
    page.append(_COMMON.replace("{dev}", dev).replace("{datadir}", _esc(datadir)))
    return "".join(page)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) not in (1, 2, 3) or args[0] not in PROGRAMS:
        print(f"usage: python3 -m vhostsuite.program.manpage {{{','.join(PROGRAMS)}}} [DATE [DATADIR]]",
              file=sys.stderr)  # fmt: skip
        return 2
    parser = importlib.import_module(PROGRAMS[args[0]]).make_parser()
    sys.stdout.write(render(args[0], parser, *args[1:]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
