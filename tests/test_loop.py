"""The event loop's fd registrations on epoll: readers and writers of one fd, changes made by
callbacks during a turn, refused fds, fd numbers reused after a close; timers; adaptive polling."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from vhostsuite.core.loop import CONTENDED_BACKOFF, POLL_START, Loop, next_spin


def run_turns(loop: Loop, turns: int) -> None:
    for _ in range(turns):
        loop.call_soon(loop.stop)
        loop.run()


def test_reader_and_writer_of_one_fd_each_called_for_its_readiness() -> None:
    a, b = socket.socketpair()
    loop = Loop()
    seen: list[str] = []
    loop.add_writer(a.fileno(), lambda: seen.append("w"))
    loop.add_reader(a.fileno(), lambda: (seen.append("r"), a.recv(10)))
    run_turns(loop, 1)
    assert seen == ["w"], "writable, nothing to read"
    loop.remove_writer(a.fileno())
    b.send(b"x")
    seen.clear()
    run_turns(loop, 1)
    assert seen == ["r"]
    loop.close()
    a.close()
    b.close()


def test_a_callback_removing_another_fd_in_the_same_turn_stops_it_running() -> None:
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    loop = Loop()
    seen: list[str] = []

    def first() -> None:
        seen.append("first")
        loop.remove_reader(a.fileno())
        loop.remove_reader(c.fileno())

    loop.add_reader(a.fileno(), first)
    loop.add_reader(c.fileno(), first)
    b.send(b"x")
    d.send(b"x")
    run_turns(loop, 2)
    assert seen == ["first"]
    loop.close()
    for s in (a, b, c, d):
        s.close()


def test_a_regular_file_is_refused_and_not_kept(tmp_path) -> None:  # noqa: ANN001
    fd = os.open(tmp_path / "f", os.O_CREAT | os.O_RDWR)
    loop = Loop()
    with pytest.raises(OSError):
        loop.add_reader(fd, lambda: None)
    loop.remove_reader(fd)  # nothing registered: nothing to do
    os.close(fd)
    loop.close()


def test_an_fd_number_reused_after_a_close_without_removal_works() -> None:
    """A writer left on a closed fd; a new file gets its number and a reader: it is watched."""
    a, b = socket.socketpair()
    loop = Loop()
    loop.add_writer(a.fileno(), lambda: None)
    num = a.fileno()
    a.close()  # the kernel drops the epoll registration with the file
    c, d = socket.socketpair()
    reused, peer = (c, d) if c.fileno() == num else (d, c)
    assert reused.fileno() == num
    seen: list[bytes] = []
    loop.add_reader(num, lambda: seen.append(reused.recv(10)))
    peer.send(b"x")
    run_turns(loop, 1)
    assert seen == [b"x"]
    loop.close()
    for s in (b, c, d):
        s.close()


def test_cancelled_timers_do_not_pile_up() -> None:
    """A request's timeout is cancelled microseconds after it is set, thousands of times a
    second: the loop keeps memory in proportion to the live timers, not to the cancellations
    (handles cancelled after they ran included)."""
    loop = Loop()
    ran: list[int] = []
    keep = loop.call_later(3600, lambda: ran.append(0))
    for _ in range(10_000):
        loop.cancel(loop.call_later(5, lambda: ran.append(1)))
    fired = loop.call_later(0, lambda: ran.append(2))
    run_turns(loop, 1)
    for _ in range(1000):
        loop.cancel(fired)  # already ran
    assert ran == [2]
    assert len(loop._timers) <= 2 * 64 + 2 and len(loop._cancelled) <= 64 + 1  # noqa: SLF001
    assert any(t[1] == keep for t in loop._timers)  # noqa: SLF001 - the live one stays


def test_the_spin_keeps_what_caught_grows_toward_the_peer_and_drops_when_idle() -> None:
    poll_max = 50e-6
    assert next_spin(0.0, 10e-6, poll_max) == POLL_START, "an event within poll_max: start spinning"
    assert next_spin(8e-6, 10e-6, poll_max) == 16e-6, "just beyond the spin: twice as long"
    assert next_spin(40e-6, 45e-6, poll_max) == poll_max, "never beyond poll_max"
    assert next_spin(16e-6, 10e-6, poll_max) == 16e-6, "the spin caught it: kept"
    assert next_spin(50e-6, 1.0, poll_max) == 0.0, "idle: no spin"
    assert next_spin(0.0, 1.0, poll_max) == 0.0


def _pinger(fd: int, count: int, gap: float) -> threading.Thread:
    def run() -> None:
        for _ in range(count):
            time.sleep(gap)
            os.write(fd, b"x")

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_a_polling_loop_spins_for_a_quick_peer_and_sleeps_when_it_goes_quiet() -> None:
    """Events a little apart (within poll_max) make the loop spin; a quiet stretch afterwards
    is slept through: the loop's CPU over it is a small part of its length."""
    a, b = socket.socketpair()
    loop = Loop(poll_max=0.05)
    got: list[bytes] = []

    def on_readable() -> None:
        got.append(a.recv(100))  # a stream: two pings may come in one read
        if sum(map(len, got)) >= 20:
            loop.stop()

    loop.add_reader(a.fileno(), on_readable)
    pinger = _pinger(b.fileno(), 20, 0.002)
    loop.call_later(10, loop.stop)  # a lost ping fails the test below, not hangs it
    loop.run()
    pinger.join()
    assert b"".join(got) == b"x" * 20
    assert loop.spin > 0, "events 2 ms apart, within poll_max: the loop spins"
    loop.remove_reader(a.fileno())
    cpu0, t0 = time.thread_time(), time.monotonic()
    loop.call_later(0.3, loop.stop)
    loop.run()
    cpu, took = time.thread_time() - cpu0, time.monotonic() - t0
    assert took >= 0.3
    assert loop.spin == 0.0, "a wait longer than poll_max: no more spinning"
    assert cpu < 0.1, f"{cpu * 1000:.0f} ms of CPU over {took * 1000:.0f} ms quiet: spun, not slept"
    loop.close()
    a.close()
    b.close()


def test_a_loop_without_poll_max_never_spins() -> None:
    a, b = socket.socketpair()
    loop = Loop()
    got: list[bytes] = []

    def on_readable() -> None:
        got.append(a.recv(100))
        if sum(map(len, got)) >= 5:
            loop.stop()

    loop.add_reader(a.fileno(), on_readable)
    pinger = _pinger(b.fileno(), 5, 0.001)
    loop.call_later(10, loop.stop)
    loop.run()
    pinger.join()
    assert b"".join(got) == b"x" * 5
    assert loop.spin == 0.0
    loop.close()
    a.close()
    b.close()


def test_an_edge_triggered_eventfd_is_an_event_per_write_without_reads() -> None:
    """A kick: each write to the eventfd is one callback, though nobody reads it; a level-
    triggered reader of the same readiness would be called at every turn."""
    loop = Loop()
    edge, level = os.eventfd(0, os.EFD_NONBLOCK), os.eventfd(0, os.EFD_NONBLOCK)
    seen: list[str] = []
    loop.add_reader(edge, lambda: seen.append("edge"), edge=True)
    loop.add_reader(level, lambda: seen.append("level"))
    os.eventfd_write(edge, 1)
    os.eventfd_write(level, 1)
    run_turns(loop, 3)
    assert seen.count("edge") == 1 and seen.count("level") == 3
    for _ in range(2):  # each write again, the counter never emptied
        os.eventfd_write(edge, 1)
        seen.clear()
        run_turns(loop, 2)
        assert seen.count("edge") == 1
    assert os.eventfd_read(edge) == 3  # never read by the loop
    with pytest.raises(ValueError, match="level-triggered"):
        loop.add_reader(level, lambda: None, edge=True)
    loop.remove_reader(edge)
    loop.add_reader(edge, lambda: seen.append("again"))  # level-triggered once removed
    os.eventfd_write(edge, 1)
    seen.clear()
    run_turns(loop, 2)
    assert seen.count("again") == 2
    loop.close()
    os.close(edge)
    os.close(level)


def test_a_spin_gives_way_and_backs_off_from_a_cpu_that_is_busy() -> None:
    """A spin yields its CPU between looks. Alone on the CPU the yield comes back at once and
    the spin goes on; with a busy process on the same CPU the yield hands it a scheduler
    slice, longer than poll_max: spinning is then off for CONTENDED_BACKOFF, and the loop
    sleeps (a sleeper's wake-up preempts the busy one; a spinner queues behind it)."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs: one for the test, one to share with a busy process")
    cpu = min(os.sched_getaffinity(0))
    mask = os.sched_getaffinity(0)
    loop = Loop(poll_max=50e-6)
    os.sched_setaffinity(0, {cpu})
    try:
        assert loop.calm_until == 0.0
        alone = [loop.give_way() for _ in range(200)]
        assert alone.count(True) >= 150, "a yield on a CPU nobody else wants returns at once"
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            os.sched_setaffinity(busy.pid, {cpu})
            time.sleep(0.05)  # it runs on the CPU
            shared = [loop.give_way() for _ in range(200)]
        finally:
            busy.kill()
            busy.wait()
        assert False in shared, "a yield to a busy process lasts its slice"
        now = time.monotonic()
        assert now < loop.calm_until <= now + CONTENDED_BACKOFF, "no spinning for a while"
        time.sleep(CONTENDED_BACKOFF)
        assert loop.calm_until <= time.monotonic(), "the back-off ends"
    finally:
        os.sched_setaffinity(0, mask)
        loop.close()
