"""A small single-threaded event loop: readiness callbacks, timers, deferred calls and signals.

Everything a back-end waits for (the vhost-user socket, kick eventfds, an evdev device,
the display socket, a control socket) is a file descriptor registered here, so one
thread serves it all and nothing blocks.

One turn of the loop: wait for readiness (not at all while deferred calls are queued), run
the callbacks of the ready fds, then the timers that are due, then the deferred calls that
were queued before this phase began. A deferred call queued during that phase runs on the
next turn, after the fds have had theirs: that is how the core's queue runners yield.

Adaptive polling: before the loop sleeps it may first spin, asking epoll without waiting,
for up to its current *spin*, because waking a sleeping process costs more than the whole
of a small command (here, two thirds of a 16-command batch's CPU went to being woken). The
spin adapts to how long the waits turn out to be (the rule of QEMU's AioContext polling,
``poll-max-ns``): a wait the spin covered keeps it; one a little longer than the spin, but
within ``poll_max``, doubles it; one longer than ``poll_max`` (the guest is idle, or slower
than that) drops it to nothing. So a back-end spins only while its peer answers within
``poll_max``, at most ``poll_max`` per wait, and an idle one sleeps.

A spin gives its CPU away between two looks (:func:`os.sched_yield`): where the peer it waits
for (the guest's vCPU, QEMU's display thread) is runnable on the same CPU, a spin that kept
the CPU would hold off the very answer it waits for until the scheduler preempted it. With
the yield, spinning is as fast as sleeping there, and as fast as spinning where the peer has
a CPU of its own; a CPU nobody else wants returns from the yield at once. A yield that kept
the loop off its CPU for longer than ``poll_max`` gave it to some busy task, not to a quick
peer: the CPU is contended, where a spin only queues the loop behind that task while a
sleeper's wake-up would have preempted it, so the loop then sleeps without spinning for
:data:`CONTENDED_BACKOFF`.
"""

from __future__ import annotations

import heapq
import itertools
import os
import select
import time

# _signal, the C module signal.py wraps: signal.py builds IntEnum classes at import (enum,
# ~5 ms of every start), and the loop needs three numbers and one call.
from _signal import SIG_IGN, SIGINT, SIGPIPE, SIGTERM, signal
from collections import deque
from collections.abc import Callable
from os import sched_yield


class Terminate(BaseException):  # noqa: N818 - it is a control-flow signal, not an error
    """Raised from the SIGTERM/SIGINT handler so that even a busy loop stops at once."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


#: Called with an exception that escaped a callback; it may re-raise to end :meth:`Loop.run`.
ErrorHandler = Callable[[Exception], None]


_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
_ET = select.EPOLLET

#: The programs' default ``poll_max`` (``--poll-max-us``), in microseconds: about the time a
#: Linux guest under KVM takes from our interrupt to its next kick. Polling that yields (above)
#: measured no slower than sleeping with the front-end on the same vCPU or with every vCPU
#: busy, and up to twice as fast with the front-end on another vCPU, where every wake-up
#: crosses CPUs (the README's Benchmarks). QEMU's iothreads poll by default (32 us) for the
#: same reason. 0 turns it off, for a host where no CPU time may be spent waiting.
DEFAULT_POLL_MAX_US = 50
#: The first spin when a wait came within ``poll_max`` (a few epoll calls' worth).
POLL_START = 4e-6
#: Seconds without spinning after a spin's yield found the CPU contended (see above): long
#: enough that the time lost to finding out again (one scheduler slice, ~1 ms) is a few percent.
CONTENDED_BACKOFF = 0.1


def next_spin(spin: float, waited: float, poll_max: float) -> float:
    """The spin before the next wait, given that the last one, which spun for *spin*, took *waited* seconds."""
    if waited <= spin:
        return spin  # the spin caught it
    if waited > poll_max:
        return 0.0  # idle, or slower than spinning is worth
    return min(poll_max, 2 * spin if spin else POLL_START)


class Loop:
    """The loop, on epoll directly: ``selectors`` costs a few microseconds per turn in keys and
    tuples, which a back-end pays for every kick."""

    def __init__(self, poll_max: float = 0.0) -> None:
        """*poll_max*: the longest spin before sleeping, in seconds (0: never spin)."""
        self._ep = select.epoll()
        self.poll_max = poll_max
        #: The current spin (see the module's docstring).
        self.spin = 0.0
        #: No spinning before this time (monotonic): the CPU was found contended.
        self.calm_until = 0.0
        #: fd -> [reader, writer]: one registration per fd.
        self._handlers: dict[int, list[Callable[[], None] | None]] = {}
        #: The fds whose readiness is reported once per change (EPOLLET).
        self._edge: set[int] = set()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._running = False
        self._cancelled: set[int] = set()
        self._soon: deque[Callable[[], None]] = deque()
        #: Where exceptions from callbacks go; without one they end :meth:`run`.
        self.error_handler: ErrorHandler | None = None

    def add_reader(self, fd: int, callback: Callable[[], None], edge: bool = False) -> None:
        """Call *callback* whenever *fd* is readable (replaces an earlier callback for *fd*).

        *edge*: once for each time it becomes readable (EPOLLET), not for as long as it is:
        for an eventfd that is never read, where each write is an event (a ring's kick: the
        system call that would empty it is saved at every kick)."""
        if edge:
            if self._handlers.get(fd) is not None and fd not in self._edge:
                raise ValueError(f"fd {fd} is already registered level-triggered")
            self._edge.add(fd)
        self._set(fd, 0, callback)

    def remove_reader(self, fd: int) -> None:
        self._set(fd, 0, None)

    def add_writer(self, fd: int, callback: Callable[[], None]) -> None:
        """Call *callback* whenever *fd* is writable (replaces an earlier callback for *fd*)."""
        self._set(fd, 1, callback)

    def remove_writer(self, fd: int) -> None:
        self._set(fd, 1, None)

    def _set(self, fd: int, which: int, callback: Callable[[], None] | None) -> None:
        handlers = self._handlers.get(fd)
        if handlers is None:
            if callback is None:
                return
            handlers = [None, None]
            handlers[which] = callback
            try:  # OSError (e.g. EPERM for a regular file): not added
                self._ep.register(fd, self._events(fd, handlers))
            except OSError:
                self._edge.discard(fd)
                raise
            self._handlers[fd] = handlers
            return
        if handlers[which] is callback:
            return
        new = list(handlers)
        new[which] = callback
        if new == [None, None]:
            del self._handlers[fd]
            self._edge.discard(fd)
            try:
                self._ep.unregister(fd)
            except (OSError, ValueError):  # closed already: the kernel dropped it
                pass
            return
        if _events(new) != _events(handlers):
            try:
                self._ep.modify(fd, self._events(fd, new))
            except FileNotFoundError:  # the fd was closed and its number reused: a new file
                self._ep.register(fd, self._events(fd, new))
        # A new list: a turn that is dispatching the old one sees what it had.
        self._handlers[fd] = new

    def _events(self, fd: int, handlers: list[Callable[[], None] | None]) -> int:
        return _events(handlers) | (_ET if fd in self._edge else 0)

    def call_later(self, delay: float, callback: Callable[[], None]) -> int:
        """Run *callback* once after *delay* seconds; returns a handle for :meth:`cancel`."""
        handle = next(self._seq)
        heapq.heappush(self._timers, (time.monotonic() + delay, handle, callback))
        return handle

    def cancel(self, handle: int) -> None:
        """Cancel a timer (one that already ran, or was cancelled, is ignored)."""
        self._cancelled.add(handle)
        # A cancelled timer stays in the heap until it is due (a display request's 5 s timeout,
        # cancelled microseconds later when the answer comes). When cancelled handles outnumber
        # the live timers the heap is rebuilt without them: the heap and the set stay within
        # twice the live timers (plus a small floor), whatever the rate of requests.
        if len(self._cancelled) > 64 and 2 * len(self._cancelled) > len(self._timers):
            cancelled = self._cancelled
            self._timers = [t for t in self._timers if t[1] not in cancelled]
            heapq.heapify(self._timers)
            cancelled.clear()

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
            # Every turn of a busy back-end passes here: conditionals, not max() or a range().
            timeout = -1
            if self._soon:
                timeout = 0
            elif self._timers:
                timeout = self._timers[0][0] - time.monotonic()
                if timeout < 0:
                    timeout = 0
            handlers = self._handlers
            ready = self._ep.poll(timeout) if timeout == 0 or not self.poll_max else self._wait(timeout)
            for fd, events in ready:
                current = handlers.get(fd)
                if current is None:  # removed by an earlier callback of this turn
                    continue
                reader, writer = current
                if events & ~_OUT and reader is not None:
                    # _call's work in place: every kick and every reply passes here
                    try:
                        reader()
                    except Exception as e:
                        if self.error_handler is None:
                            raise
                        self.error_handler(e)
                    if not self._running:
                        return
                if events & ~_IN and writer is not None:
                    # the reader may have removed or replaced it meanwhile: look again
                    current = handlers.get(fd)
                    if current is not None and current[1] is writer:
                        self._call(writer)
                        if not self._running:
                            return
            now = time.monotonic() if self._timers else 0.0
            while self._timers and self._timers[0][0] <= now:
                _, handle, cb = heapq.heappop(self._timers)
                if handle in self._cancelled:
                    self._cancelled.discard(handle)
                    continue
                self._call(cb)
                if not self._running:
                    return
            if self._soon:
                for _ in range(len(self._soon)):
                    self._call(self._soon.popleft())
                    if not self._running:
                        return

    def _wait(self, timeout: float) -> list[tuple[int, int]]:
        """epoll's wait for up to *timeout* seconds (-1: no limit), spinning first (adaptive polling)."""
        poll = self._ep.poll
        ready = poll(0)
        if ready:
            return ready  # waited no time: the spin stays
        t0 = time.monotonic()
        spin = self.spin if t0 >= self.calm_until else 0.0
        if spin:
            end = t0 + (spin if timeout < 0 or spin < timeout else timeout)
            while not ready and time.monotonic() < end and self.give_way():
                ready = poll(0)
        if not ready:
            if timeout >= 0:
                timeout -= time.monotonic() - t0
                if timeout < 0:
                    timeout = 0
            ready = poll(timeout)
        self.spin = next_spin(spin, time.monotonic() - t0, self.poll_max)
        return ready

    def give_way(self) -> bool:
        """A spin's yield of the CPU between two looks (see the module's docstring); False
        (the spin is over, and spins are off for a while) if it found the CPU contended."""
        t0 = time.monotonic()
        sched_yield()
        now = time.monotonic()
        if now - t0 > self.poll_max:
            self.calm_until = now + CONTENDED_BACKOFF
            return False
        return True

    def close(self) -> None:
        self._ep.close()
        self._handlers.clear()


def _events(handlers: list[Callable[[], None] | None]) -> int:
    return (_IN if handlers[0] else 0) | (_OUT if handlers[1] else 0)


def install_signal_handlers() -> None:
    """SIGTERM and SIGINT raise :class:`Terminate` wherever the program is, idle or busy."""

    def handler(signum: int, frame: object) -> None:
        raise Terminate(signum)

    signal(SIGTERM, handler)
    signal(SIGINT, handler)
    # A hung-up front-end must not kill us with SIGPIPE; writes report EPIPE instead.
    signal(SIGPIPE, SIG_IGN)


def ignore_stop_signals() -> None:
    """SIGTERM and SIGINT are ignored from now on (while the program cleans up and exits)."""
    signal(SIGTERM, SIG_IGN)
    signal(SIGINT, SIG_IGN)


def signal_name(signum: int) -> str:
    """``SIGTERM`` for the signals :func:`install_signal_handlers` catches."""
    return {SIGTERM: "SIGTERM", SIGINT: "SIGINT"}.get(signum, f"signal {signum}")


_ONE = (1).to_bytes(8, "little")


def signal_eventfd(fd: int) -> bool:
    """Write one notification to an eventfd; False if the fd is gone."""
    try:
        os.write(fd, _ONE)
        return True
    except BlockingIOError:
        return True  # counter saturated: a notification is pending anyway
    except OSError:
        return False
