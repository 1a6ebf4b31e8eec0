"""The command-line parser every back-end uses: GNU-style long options, as QEMU's conventions
spell them (``--socket-path=PATH`` or ``--socket-path PATH``), short flags (``-vv``), unique
prefixes of long names, groups for ``--help`` and the manual page.

Not :mod:`argparse`: it imports ``re``, ``gettext``, ``locale`` and ``shutil`` and builds its
formatter at every start, 15-20 ms of Debian 13's Python before a back-end can listen, and
libvirt waits for that at every domain start. The behaviour users see is argparse's: the same
words in ``--help``, errors as ``usage:`` then ``PROG: error: ...`` with status 2, the last of
a repeated option wins.
"""

from __future__ import annotations

import sys

from ..core.errors import EXIT_USAGE

#: typing.TYPE_CHECKING without importing typing.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence


class Namespace:
    """The parsed options, one attribute each (``--socket-path`` -> ``socket_path``)."""

    def __repr__(self) -> str:
        return f"Namespace({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


class Option:
    """One option. *action*: ``"store"`` (takes a value), ``"store_true"``, ``"count"``, or a
    callable ``action(parser)`` run when the option is seen (``--version``)."""

    __slots__ = ("names", "dest", "metavar", "help", "action", "takes_value", "type", "default")

    def __init__(self, names: tuple[str, ...], metavar: str | None, help: str | None,  # noqa: A002
                 action: str | Callable[[Parser], None], type: Callable[[str], object] | None,  # noqa: A002
                 default: object) -> None:  # fmt: skip
        long = [n for n in names if n.startswith("--")]
        self.names = names
        self.dest = (long[0] if long else names[0]).lstrip("-").replace("-", "_")
        self.action = action
        self.takes_value = action == "store"
        self.metavar = metavar if metavar is not None else (self.dest.upper() if self.takes_value else None)
        self.help = help
        self.type = type
        if default is None:
            default = 0 if action == "count" else False if action == "store_true" else None
        self.default = default

    def spelled(self, with_metavar: bool = True) -> str:
        """``-v, --verbose`` or ``--fd FDNUM``, as help and usage show it."""
        names = ", ".join(self.names)
        return f"{names} {self.metavar}" if with_metavar and self.takes_value else names


class Group:
    """A titled list of options (``--help`` shows each group under its title)."""

    def __init__(self, parser: Parser, title: str) -> None:
        self.parser, self.title, self.options = parser, title, []

    def add_argument(self, *names: str, metavar: str | None = None, help: str | None = None,  # noqa: A002
                     action: str | Callable[[Parser], None] = "store", type: Callable[[str], object] | None = None,  # noqa: A002
                     default: object = None) -> Option:  # fmt: skip
        """Add an option (argparse's keywords). A *type* that raises ValueError makes a usage error
        with its message."""
        if not names or not all(n.startswith("-") and len(n) >= 2 for n in names):
            raise ValueError(f"option names must start with '-': {names!r}")
        if not callable(action) and action not in ("store", "store_true", "count"):
            raise ValueError(f"unknown action {action!r}")
        option = Option(names, metavar, help, action, type, default)
        for name in names:
            if name in self.parser._by_name:
                raise ValueError(f"option {name} is defined twice")
            self.parser._by_name[name] = option
        self.options.append(option)
        return option


class Parser:
    def __init__(self, prog: str, description: str = "", epilog: str | None = None) -> None:
        self.prog, self.description, self.epilog = prog, description, epilog
        self._by_name: dict[str, Option] = {}
        self.groups: list[Group] = []
        self._main = self.add_argument_group("options")
        self._main.add_argument("-h", "--help", action=Parser._help, help="show this help message and exit")

    @property
    def options(self) -> list[Option]:
        return [o for g in self.groups for o in g.options]

    def add_argument_group(self, title: str) -> Group:
        group = Group(self, title)
        self.groups.append(group)
        return group

    def add_argument(self, *names: str, **kwargs: object) -> Option:
        return self._main.add_argument(*names, **kwargs)

    # -- parsing ------------------------------------------------------------------------
    def _find(self, name: str) -> Option:
        option = self._by_name.get(name)
        if option is not None:
            return option
        if name.startswith("--") and len(name) > 2:  # a unique prefix of a long name, as argparse allows
            matches = sorted(n for n in self._by_name if n.startswith("--") and n.startswith(name))
            if len(matches) == 1:
                return self._by_name[matches[0]]
            if matches:
                self.error(f"ambiguous option: {name} could match {', '.join(matches)}")
        self.error(f"unrecognized arguments: {name}")
        raise AssertionError("error() returns only when overridden")  # for type checkers

    def _value(self, option: Option, name: str, text: str) -> object:
        if option.type is None:
            return text
        try:
            return option.type(text)
        except ValueError as e:
            self.error(f"argument {'/'.join(option.names)}: {e}")
        return None

    def parse_args(self, argv: Sequence[str] | None = None) -> Namespace:
        args = list(sys.argv[1:] if argv is None else argv)
        ns = Namespace()
        for option in self.options:
            if not callable(option.action):
                setattr(ns, option.dest, option.default)
        i = 0
        while i < len(args):
            arg = args[i]
            i += 1
            if arg == "--" or not arg.startswith("-") or arg == "-":
                rest = args[i - 1 :] if arg != "--" else args[i:]
                if rest:
                    self.error(f"unrecognized arguments: {' '.join(rest)}")
                break
            if arg.startswith("--"):
                name, eq, value = arg.partition("=")
                option = self._find(name)
                if option.takes_value:
                    if not eq:
                        if i == len(args) or _is_option(args[i]):
                            self.error(f"argument {'/'.join(option.names)}: expected one argument")
                        value = args[i]
                        i += 1
                    setattr(ns, option.dest, self._value(option, name, value))
                elif eq:
                    self.error(f"argument {'/'.join(option.names)}: ignored explicit argument {value!r}")
                else:
                    self._flag(option, ns)
                continue
            # short options, bundled: -vv, -vq; a value option takes the rest or the next argument
            j = 1
            while j < len(arg):
                option = self._by_name.get("-" + arg[j])
                if option is None:  # short names are never prefixes; the message names all of it
                    self.error(f"unrecognized arguments: {arg}")
                j += 1
                if option.takes_value:
                    value = arg[j:]
                    if not value:
                        if i == len(args):
                            self.error(f"argument {'/'.join(option.names)}: expected one argument")
                        value = args[i]
                        i += 1
                    setattr(ns, option.dest, self._value(option, arg, value))
                    break
                self._flag(option, ns)
        return ns

    def _flag(self, option: Option, ns: Namespace) -> None:
        if option.action == "store_true":
            setattr(ns, option.dest, True)
        elif option.action == "count":
            setattr(ns, option.dest, getattr(ns, option.dest) + 1)
        else:
            option.action(self)

    # -- what users read ----------------------------------------------------------------
    def usage_words(self) -> list[str]:
        """``[--fd FDNUM]``: one word per option, as the usage line and the manual page show them."""
        return [f"[{o.names[0]} {o.metavar}]" if o.takes_value else f"[{o.names[0]}]" for o in self.options]

    def format_usage(self) -> str:
        return _wrap(f"usage: {self.prog} ", self.usage_words()) + "\n"

    def format_help(self) -> str:
        out = [self.format_usage()]
        if self.description:
            out.append("\n" + self.description + "\n")
        for group in self.groups:
            if not group.options:
                continue
            out.append(f"\n{group.title}:\n")
            for o in group.options:
                head = "  " + o.spelled()
                text = o.help or ""
                if len(head) <= 22:
                    out.append(_wrap(head.ljust(24), text) + "\n")
                else:
                    out.append(head + "\n" + _wrap(" " * 24, text) + "\n")
        if self.epilog:
            out.append("\n" + self.epilog + "\n")
        return "".join(out)

    def exit(self, status: int = 0, message: str | None = None) -> None:
        if message:
            sys.stderr.write(message)
        raise SystemExit(status)

    def error(self, message: str) -> None:
        """Usage and *message* on stderr, then exit with status 2 (as argparse)."""
        sys.stderr.write(self.format_usage())
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")

    @staticmethod
    def _help(parser: Parser) -> None:
        sys.stdout.write(parser.format_help())
        parser.exit()


def _is_option(arg: str) -> bool:
    """*arg* is an option, not a value: it starts with '-' and is not '-' or a negative number."""
    return arg.startswith("-") and arg != "-" and not arg[1:].replace(".", "", 1).isdigit()


#: The width help text is wrapped to (argparse takes the terminal's; a fixed one reads the same
#: in a terminal, a pipe and a log).
WIDTH = 100


def _wrap(head: str, text: str | list[str]) -> str:
    """*text* after *head*, wrapped at word boundaries to :data:`WIDTH`, later lines indented as
    far as *head* is long. A list is of words that are never split (``[--fd FDNUM]``)."""
    lines, line = [], head
    for word in text.split() if isinstance(text, str) else text:
        if len(line) + len(word) + 1 > WIDTH and line.strip():
            lines.append(line.rstrip())
            line = " " * len(head)
        line += word + " "
    lines.append(line.rstrip())
    return "\n".join(lines)
