"""Warnings that a guest (or a front-end) can cause, rate-limited, so the other side can't
write thousands of lines a second into the host's logs.

The first :data:`BURST` warnings of each kind are logged as they come; after that, at most one
line per :data:`INTERVAL` seconds per kind says how many were left out and shows the latest.
Kinds are fixed names in the code (never values from the guest), so the bookkeeping is bounded.
With debug logging on (``-vv``) every warning is logged.

:class:`StderrCapture` puts what compiled libraries write straight to stderr under the same
rule.
"""

from __future__ import annotations

import os
import sys
import time

from . import logger

#: typing.TYPE_CHECKING without importing typing (every start pays for it otherwise).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from .loop import Loop

BURST = 5
INTERVAL = 5.0


class GuestLog:
    def __init__(self, log: logger.Logger) -> None:
        self.log = log
        #: kind -> [messages so far, left out since the last summary, when that summary was]
        self._kinds: dict[str, list] = {}

    def info(self, kind: str, msg: str, *args: object) -> None:
        """Like :meth:`warn`, at INFO level (shown with ``-v``)."""
        self._emit(logger.INFO, kind, msg, args)

    def warn(self, kind: str, msg: str, *args: object) -> None:
        """Log *msg* % *args* unless this *kind* already had its share."""
        self._emit(logger.WARNING, kind, msg, args)

    def error(self, kind: str, msg: str, *args: object) -> None:
        """Like :meth:`warn`, at ERROR level."""
        self._emit(logger.ERROR, kind, msg, args)

    def _emit(self, level: int, kind: str, msg: str, args: tuple[object, ...]) -> None:
        if self.log.isEnabledFor(logger.DEBUG):
            self.log.log(level, msg, *args)
            return
        now = time.monotonic()
        state = self._kinds.get(kind)
        if state is None:
            state = self._kinds[kind] = [0, 0, now]
        state[0] += 1
        if state[0] <= BURST:
            self.log.log(level, msg, *args)
            if state[0] == BURST:
                self.log.log(level, "(more '%s' messages are counted, one line every %.0f s)", kind, INTERVAL)
            return
        state[1] += 1
        if now - state[2] >= INTERVAL:
            summary = "%d more '%s' messages in %.0f s; the latest: " + msg
            self.log.log(level, summary, state[1], kind, now - state[2], *args)
            state[1] = 0
            state[2] = now


class StderrCapture:
    """What compiled libraries of this process write to stderr, read from a pipe on the loop and
    logged as one :class:`GuestLog` *kind*, each line after *prefix*.

    virglrenderer and Mesa report some faults of a guest's command streams with
    ``fprintf(stderr)`` (beside the log callback they also have): one line per bad command, as
    often as the guest likes. While the capture is on, fd 2 is the write end of a
    non-blocking pipe, so such a write never blocks the loop's thread (with the pipe full, the
    library's message is dropped); Python's own output (logging, ``sys.stderr``, faulthandler)
    goes on to a copy of the real stderr, as it was.
    """

    #: The longest line logged, and the longest unfinished line kept between reads.
    MAX_LINE = 1024
    #: What one wake-up reads.
    READ = 64 * 1024

    def __init__(self, loop: Loop, log: GuestLog, kind: str, prefix: str) -> None:
        import faulthandler

        self.loop, self.log, self.kind, self.prefix = loop, log, kind, prefix
        self._tail = b""
        self._real = os.dup(2)
        encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
        stream = open(self._real, "w", buffering=1, encoding=encoding,  # noqa: SIM115 - lives with the process
                      errors="backslashreplace", closefd=False)  # fmt: skip
        logger.set_stream(stream)
        sys.stderr = stream
        if faulthandler.is_enabled():
            faulthandler.enable(stream)
        self._read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        os.dup2(write_fd, 2)
        os.close(write_fd)
        loop.add_reader(self._read_fd, self._drain)

    def _drain(self) -> None:
        try:
            data = os.read(self._read_fd, self.READ)
        except OSError:  # nothing there (EAGAIN): another wake-up took it
            return
        lines = (self._tail + data).split(b"\n")
        self._tail = lines.pop()
        if len(self._tail) > self.MAX_LINE:  # no newline in sight: log what there is
            lines.append(self._tail)
            self._tail = b""
        for line in lines:
            text = line[: self.MAX_LINE].decode("utf-8", "replace").rstrip()
            if text:
                self.log.info(self.kind, "%s%s", self.prefix, text)

    def close(self) -> None:
        """fd 2 is the real stderr again; what waited in the pipe is logged first."""
        if self._read_fd < 0:
            return
        self._drain()
        self.loop.remove_reader(self._read_fd)
        os.dup2(self._real, 2)
        os.close(self._read_fd)
        self._read_fd = -1
