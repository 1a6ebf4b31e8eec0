"""Warnings that a guest (or a front-end) can cause, rate-limited, so the other side can't
write thousands of lines a second into the host's logs.

The first :data:`BURST` warnings of each kind are logged as they come; after that, at most one
line per :data:`INTERVAL` seconds per kind says how many were left out and shows the latest.
Kinds are fixed names in the code (never values from the guest), so the bookkeeping is bounded.
With debug logging on (``-vv``) every warning is logged.
"""

from __future__ import annotations

import logging
import time

BURST = 5
INTERVAL = 5.0


class GuestLog:
    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        #: kind -> [messages so far, left out since the last summary, when that summary was]
        self._kinds: dict[str, list] = {}

    def info(self, kind: str, msg: str, *args: object) -> None:
        """Like :meth:`warn`, at INFO level (shown with ``-v``)."""
        self._emit(logging.INFO, kind, msg, args)

    def warn(self, kind: str, msg: str, *args: object) -> None:
        """Log *msg* % *args* unless this *kind* already had its share."""
        self._emit(logging.WARNING, kind, msg, args)

    def error(self, kind: str, msg: str, *args: object) -> None:
        """Like :meth:`warn`, at ERROR level."""
        self._emit(logging.ERROR, kind, msg, args)

    def _emit(self, level: int, kind: str, msg: str, args: tuple[object, ...]) -> None:
        if self.log.isEnabledFor(logging.DEBUG):
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
