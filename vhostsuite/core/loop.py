"""A small single-threaded event loop: readiness callbacks, timers, deferred calls and signals.

Everything a back-end waits for (the vhost-user socket, kick eventfds, an evdev device,
the display socket, a control socket) is a file descriptor registered here, so one
thread serves it all and nothing blocks.

One turn of the loop: wait for readiness (not at all while deferred calls are queued), run
the callbacks of the ready fds, then the timers that are due, then the deferred calls that
were queued before this phase began. A deferred call queued during that phase runs on the
next turn, after the fds have had theirs: that is how the core's queue runners yield.
"""

from __future__ import annotations

import heapq
import itertools
import os
import selectors
import signal
import time
from collections import deque
from collections.abc import Callable


class Terminate(BaseException):  # noqa: N818 - it is a control-flow signal, not an error
    """Raised from the SIGTERM/SIGINT handler so that even a busy loop stops at once."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


#: Called with an exception that escaped a callback; it may re-raise to end :meth:`Loop.run`.
ErrorHandler = Callable[[Exception], None]


class Loop:
    def __init__(self) -> None:
        self._sel = selectors.DefaultSelector()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._running = False
        self._cancelled: set[int] = set()
        self._soon: deque[Callable[[], None]] = deque()
        #: Where exceptions from callbacks go; without one they end :meth:`run`.
        self.error_handler: ErrorHandler | None = None

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        """Call *callback* whenever *fd* is readable (replaces an earlier callback for *fd*)."""
        self._set(fd, 0, callback)

    def remove_reader(self, fd: int) -> None:
        self._set(fd, 0, None)

    def add_writer(self, fd: int, callback: Callable[[], None]) -> None:
        """Call *callback* whenever *fd* is writable (replaces an earlier callback for *fd*)."""
        self._set(fd, 1, callback)

    def remove_writer(self, fd: int) -> None:
        self._set(fd, 1, None)

    def _set(self, fd: int, which: int, callback: Callable[[], None] | None) -> None:
        # One registration per fd; its data is [reader, writer].
        try:
            key = self._sel.get_key(fd)
        except (KeyError, ValueError):
            if callback is None:
                return
            handlers: list[Callable[[], None] | None] = [None, None]
            handlers[which] = callback
            self._sel.register(fd, _events(handlers), handlers)
            return
        handlers = list(key.data)
        handlers[which] = callback
        if handlers == [None, None]:
            self._sel.unregister(fd)
        else:
            self._sel.modify(fd, _events(handlers), handlers)

    def call_later(self, delay: float, callback: Callable[[], None]) -> int:
        """Run *callback* once after *delay* seconds; returns a handle for :meth:`cancel`."""
        handle = next(self._seq)
        heapq.heappush(self._timers, (time.monotonic() + delay, handle, callback))
        return handle

    def cancel(self, handle: int) -> None:
        self._cancelled.add(handle)

    def call_soon(self, callback: Callable[[], None]) -> None:
        """Run *callback* once at the end of this turn, or of the next one if called from there."""
        self._soon.append(callback)

    def stop(self) -> None:
        self._running = False

    def _call(self, callback: Callable[[], None]) -> None:
        try:
            callback()
        except Exception as e:
            if self.error_handler is None:
                raise
            self.error_handler(e)

    def run(self) -> None:
        """Dispatch until :meth:`stop`."""
        self._running = True
        while self._running:
            timeout = None
            if self._soon:
                timeout = 0.0
            elif self._timers:
                timeout = max(0.0, self._timers[0][0] - time.monotonic())
            for key, events in self._sel.select(timeout):
                reader, writer = key.data
                if events & selectors.EVENT_READ and reader is not None:
                    self._call(reader)
                    if not self._running:
                        return
                if events & selectors.EVENT_WRITE and writer is not None:
                    # the reader may have removed it meanwhile: ask the selector again
                    current = self._sel.get_map().get(key.fd)
                    if current is not None and current.data[1] is writer:
                        self._call(writer)
                        if not self._running:
                            return
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                _, handle, cb = heapq.heappop(self._timers)
                if handle in self._cancelled:
                    self._cancelled.discard(handle)
                    continue
                self._call(cb)
                if not self._running:
                    return
            for _ in range(len(self._soon)):
                self._call(self._soon.popleft())
                if not self._running:
                    return

    def close(self) -> None:
        self._sel.close()


def _events(handlers: list[Callable[[], None] | None]) -> int:
    return (selectors.EVENT_READ if handlers[0] else 0) | (selectors.EVENT_WRITE if handlers[1] else 0)


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
