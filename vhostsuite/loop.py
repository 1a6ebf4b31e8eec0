"""A small single-threaded event loop: readiness callbacks, timers, and signals.

Everything a back-end waits for (the vhost-user socket, kick eventfds, an evdev device,
the display socket, a control socket) is a file descriptor registered here, so one
thread serves it all and nothing blocks.
"""

from __future__ import annotations

import heapq
import itertools
import os
import selectors
import signal
import time
from collections.abc import Callable


class Terminate(BaseException):  # noqa: N818 - it is a control-flow signal, not an error
    """Raised from the SIGTERM/SIGINT handler so that even a busy loop stops at once."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class Loop:
    def __init__(self) -> None:
        self._sel = selectors.DefaultSelector()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._running = False
        self._cancelled: set[int] = set()

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        """Call *callback* whenever *fd* is readable (replaces an earlier callback for *fd*)."""
        try:
            self._sel.modify(fd, selectors.EVENT_READ, callback)
        except KeyError:
            self._sel.register(fd, selectors.EVENT_READ, callback)

    def remove_reader(self, fd: int) -> None:
        try:
            self._sel.unregister(fd)
        except (KeyError, ValueError):
            pass

    def call_later(self, delay: float, callback: Callable[[], None]) -> int:
        """Run *callback* once after *delay* seconds; returns a handle for :meth:`cancel`."""
        handle = next(self._seq)
        heapq.heappush(self._timers, (time.monotonic() + delay, handle, callback))
        return handle

    def cancel(self, handle: int) -> None:
        self._cancelled.add(handle)

    def stop(self) -> None:
        self._running = False

    def run(self) -> None:
        """Dispatch until :meth:`stop`. Exceptions from callbacks propagate to the caller."""
        self._running = True
        while self._running:
            timeout = None
            if self._timers:
                timeout = max(0.0, self._timers[0][0] - time.monotonic())
            for key, _ in self._sel.select(timeout):
                key.data()
                if not self._running:
                    return
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                _, handle, cb = heapq.heappop(self._timers)
                if handle in self._cancelled:
                    self._cancelled.discard(handle)
                    continue
                cb()

    def close(self) -> None:
        self._sel.close()


def install_signal_handlers() -> None:
    """SIGTERM and SIGINT raise :class:`Terminate` wherever the program is, idle or busy."""

    def handler(signum: int, frame: object) -> None:
        raise Terminate(signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    # A hung-up front-end must not kill us with SIGPIPE; writes report EPIPE instead.
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)


def drain_eventfd(fd: int) -> None:
    """Consume a pending eventfd (or pipe) notification without blocking."""
    try:
        os.read(fd, 8)
    except (BlockingIOError, InterruptedError):
        pass
    except OSError:
        pass


def signal_eventfd(fd: int) -> bool:
    """Write one notification to an eventfd; False if the fd is gone."""
    try:
        os.write(fd, (1).to_bytes(8, "little"))
        return True
    except BlockingIOError:
        return True  # counter saturated: a notification is pending anyway
    except OSError:
        return False
