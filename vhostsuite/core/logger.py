"""The programs' log: one line per message on stderr, ``PROG: LEVEL: message``.

Not the standard library's :mod:`logging`: a back-end only ever needs levels and one stream,
and importing ``logging`` (with ``re``, ``traceback``, ``threading``, ``weakref`` and
``string``) costs 10-13 ms of every start on Debian 13, a quarter of the time to listening
that libvirt waits for at every domain start. The method names are ``logging``'s, so a
reader knows them. Messages are ``msg % args``, formatted only when the level is on.

Until :func:`configure` runs (a library user, a test importing a device) warnings and errors
go to stderr bare, as ``logging``'s last resort writes them.
"""

from __future__ import annotations

import sys

DEBUG = 10
INFO = 20
WARNING = 30
ERROR = 40
_NAMES = {DEBUG: "DEBUG", INFO: "INFO", WARNING: "WARNING", ERROR: "ERROR"}

#: The lowest level written, the text before every line, and the stream (None: sys.stderr as
#: it is when the line is written).
_level = WARNING
_prefix = ""
_stream = None


def configure(prog: str, level: int) -> None:
    """Lines from now on start with ``PROG: LEVEL:``; those below *level* are dropped."""
    global _level, _prefix
    _level, _prefix = level, f"{prog}: "


def set_stream(stream: object) -> None:
    """Write to *stream* from now on (see :class:`.guestlog.StderrCapture`)."""
    global _stream
    _stream = stream


def _emit(level: int, msg: str, args: tuple[object, ...], exc: BaseException | bool | None = None) -> None:
    """*exc*: an exception whose traceback follows the line (True: the one being handled)."""
    try:
        text = msg % args if args else msg
    except (TypeError, ValueError, KeyError) as e:  # a bad format is our bug, not a reason to stop serving
        text = f"{msg!r} % {args!r} ({e})"
    head = f"{_prefix}{_NAMES.get(level, level)}: " if _prefix else ""
    line = f"{head}{text}\n"
    if exc:
        line += _traceback(exc)
    stream = _stream if _stream is not None else sys.stderr
    if stream is None:  # no stderr at all (pythonw-like embedding)
        return
    try:
        stream.write(line)
        stream.flush()
    except (OSError, ValueError):  # stderr closed or gone: the message is lost, the program goes on
        pass


def _traceback(exc: BaseException | bool) -> str:
    """The traceback of *exc* (True: the one being handled). traceback is imported here, when
    there is one to show; where that import fails (out of fds: the very error being logged,
    often) the line still names the exception."""
    if exc is True:
        exc = sys.exc_info()[1] or True
    try:
        import traceback
    except (ImportError, OSError) as e:
        what = f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else "an exception"
        return f"  {what} (no traceback: {e})\n"
    if not isinstance(exc, BaseException):
        return ""
    return "".join(traceback.format_exception(exc))


class Logger:
    """A named logger (the name is for the reader: every line goes the same way)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 - logging's name
        return level >= _level

    def log(self, level: int, msg: str, *args: object) -> None:
        if level >= _level:
            _emit(level, msg, args)

    def debug(self, msg: str, *args: object) -> None:
        if DEBUG >= _level:
            _emit(DEBUG, msg, args)

    def info(self, msg: str, *args: object) -> None:
        if INFO >= _level:
            _emit(INFO, msg, args)

    def warning(self, msg: str, *args: object) -> None:
        if WARNING >= _level:
            _emit(WARNING, msg, args)

    def error(self, msg: str, *args: object, exc_info: BaseException | None = None) -> None:
        if ERROR >= _level:
            _emit(ERROR, msg, args, exc_info)

    def exception(self, msg: str, *args: object) -> None:
        """An error with the traceback of the exception being handled."""
        if ERROR >= _level:
            _emit(ERROR, msg, args, True)


_loggers: dict[str, Logger] = {}


def get(name: str) -> Logger:
    """The logger called *name* (one per name, as ``logging.getLogger``)."""
    found = _loggers.get(name)
    if found is None:
        found = _loggers[name] = Logger(name)
    return found
