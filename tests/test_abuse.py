"""Hostile guests and broken front-ends against the real vhost-user-rng program.

Each case runs against a fresh back-end through the package's front-end and asserts a defined
outcome: the back-end keeps serving (a valid request afterwards succeeds) or exits cleanly with
a message. Device-specific cases live next to their devices' tests.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vhostsuite.core import protocol as P
from vhostsuite.core.virtio import (
    VIRTIO_CONFIG_S_NEEDS_RESET,
    VRING_DESC_F_INDIRECT,
    VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
)
from vhostsuite.testing.frontend import DriverQueue, Frontend

RNG = "vhost-user-rng"
W, N, IND = VRING_DESC_F_WRITE, VRING_DESC_F_NEXT, VRING_DESC_F_INDIRECT


def _valid_request_works(fe: Frontend, q: DriverQueue) -> None:
    """After a ring error: the driver resets the device and a valid request is served again."""
    assert fe.get_status() & VIRTIO_CONFIG_S_NEEDS_RESET
    fe.stop()
    q.close()
    (q2,) = fe.start([q.num])
    q2.add([], [32])
    q2.kick()
    (used,) = q2.wait_used(1)
    assert used.length == 32
    assert not fe.get_status() & VIRTIO_CONFIG_S_NEEDS_RESET


def _indirect_table(fe: Frontend, entries: list[tuple[int, int, int, int]]) -> int:
    gpa = fe.ram.alloc(16 * max(len(entries), 1))
    for i, e in enumerate(entries):
        fe.ram.write(gpa + 16 * i, struct.pack("<QIHH", *e))
    return gpa


def _case(fe: Frontend, q: DriverQueue, case: str) -> None:
    buf = fe.ram.alloc(4096)
    big = fe.ram.size
    if case == "loop":
        q.write_desc(0, buf, 8, W | N, 1)
        q.write_desc(1, buf, 8, W | N, 0)
        q.publish(0)
    elif case == "self-loop":
        q.write_desc(3, buf, 8, W | N, 3)
        q.publish(3)
    elif case == "chain-longer-than-queue":
        for i in range(q.num):
            q.write_desc(i, buf, 8, W | N, (i + 1) % q.num)
        q.publish(0)
    elif case == "next-out-of-table":
        q.write_desc(0, buf, 8, W | N, q.num + 5)
        q.publish(0)
    elif case == "head-out-of-range":
        q.publish(q.num + 1)
    elif case == "address-outside-memory":
        q.write_desc(0, big + 4096, 64, W, 0)
        q.publish(0)
    elif case == "address-wraps":
        q.write_desc(0, (1 << 64) - 16, 64, W, 0)
        q.publish(0)
    elif case == "length-past-region":
        q.write_desc(0, big - 8, 64, W, 0)
        q.publish(0)
    elif case == "length-overflow":
        q.write_desc(0, 0, 0xFFFF_FFFF, W | N, 1)
        q.write_desc(1, 0, 0xFFFF_FFFF, W, 0)
        q.publish(0)
    elif case == "indirect-bad-size":
        q.write_desc(0, _indirect_table(fe, [(buf, 8, W, 0)]), 24, IND, 0)
        q.publish(0)
    elif case == "indirect-zero":
        q.write_desc(0, buf, 0, IND, 0)
        q.publish(0)
    elif case == "indirect-nested":
        inner = _indirect_table(fe, [(buf, 8, W, 0)])
        q.write_desc(0, _indirect_table(fe, [(inner, 16, IND, 0)]), 16, IND, 0)
        q.publish(0)
    elif case == "indirect-loop":
        q.write_desc(0, _indirect_table(fe, [(buf, 8, W | N, 1), (buf, 8, W | N, 0)]), 32, IND, 0)
        q.publish(0)
    elif case == "indirect-outside-memory":
        q.write_desc(0, big + 4096, 16, IND, 0)
        q.publish(0)
    elif case == "indirect-with-next":
        q.write_desc(0, _indirect_table(fe, [(buf, 8, W, 0)]), 16, IND | N, 1)
        q.write_desc(1, buf, 8, W, 0)
        q.publish(0)
    elif case == "readable-after-writable":
        q.write_desc(0, buf, 8, W | N, 1)
        q.write_desc(1, buf, 8, 0, 0)
        q.publish(0)
    elif case == "avail-index-jump":
        q.set_avail_idx(q.num + 7)
    else:
        raise AssertionError(case)
    q.kick()


CASES = [
    "loop",
    "self-loop",
    "chain-longer-than-queue",
    "next-out-of-table",
    "head-out-of-range",
    "address-outside-memory",
    "address-wraps",
    "length-past-region",
    "length-overflow",
    "indirect-bad-size",
    "indirect-zero",
    "indirect-nested",
    "indirect-loop",
    "indirect-outside-memory",
    "indirect-with-next",
    "readable-after-writable",
    "avail-index-jump",
]


@pytest.mark.parametrize("case", CASES)
def test_malformed_ring_marks_broken_and_recovers(spawn, case):
    be, fe = spawn(RNG)
    fe.initialize()
    (q,) = fe.start([16])
    _case(fe, q, case)
    r, _, _ = select.select([q.err_fd], [], [], 5)
    assert r, f"{case}: no vring error reported"
    assert q.used_idx() == 0  # nothing was returned for a malformed chain
    _valid_request_works(fe, q)
    assert be.proc.poll() is None


def _fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_100k_hostile_messages_leave_rss_and_fds_flat(spawn):
    """100,000 refused requests (a tenth with fds that must be closed) leave no trace."""
    be, fe = spawn(RNG)
    fe.initialize()
    (q,) = fe.start([16])
    pid = be.proc.pid
    spare = os.eventfd(0)
    bad = [
        (99, b""),
        (P.Request.SET_VRING_NUM, b"\0"),
        (P.Request.SET_VRING_NUM, P.VRING_STATE.pack(0, 3)),
        (P.Request.GET_CONFIG, P.encode_config(0, bytes(8))),
        (P.Request.SET_MEM_TABLE, P.MEM_TABLE_HEAD.pack(0, 0)),
    ]

    def burst(n: int) -> None:
        for i in range(n):
            req, payload = bad[i % len(bad)]
            fds = [spare] if i % 10 == 0 else []
            fe.send(req, payload, fds, P.VERSION | P.NEED_REPLY_FLAG)
            fe.recv_reply(req)

    burst(2000)  # warm up allocators and caches
    fds0, rss0 = _fd_count(pid), _rss_kib(pid)
    burst(100_000)
    fds1, rss1 = _fd_count(pid), _rss_kib(pid)
    os.close(spare)
    print(f"\nafter 100k hostile messages: fds {fds0} -> {fds1}, RSS {rss0} -> {rss1} KiB")
    assert fds1 == fds0
    assert rss1 - rss0 < 2048, f"RSS grew by {rss1 - rss0} KiB"
    q.add([], [16])
    q.kick()
    assert q.wait_used(1)[0].length == 16


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory):
    """One back-end for the whole fuzz run; each example checks it still answers."""
    from tests.conftest import Backend, program

    tmp = tmp_path_factory.mktemp("fuzz")
    path = tmp / "rng.sock"
    be = Backend([*program(RNG), f"--socket-path={path}", "-q"], tmp)
    fe = Frontend.connect(str(path))
    yield be, fe
    fe.close()
    be.stop()


MESSAGE = st.tuples(
    st.integers(0, 60),  # request id, known and unknown
    st.sampled_from([P.VERSION, P.VERSION | P.NEED_REPLY_FLAG]),
    st.binary(max_size=300),  # payload
    st.integers(0, 3),  # fds attached
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(msgs=st.lists(MESSAGE, min_size=1, max_size=6))
def test_fuzz_messages_never_crash(fuzz_target, msgs):
    """Random messages (ids, flags, payloads, fds): each gets its defined reply and the back-end lives."""
    be, fe = fuzz_target
    for request, flags, payload, nfds in msgs:
        if request in (P.Request.RESET_OWNER, P.Request.SET_OWNER):
            continue  # valid and harmless, but nothing to learn
        fds = [os.memfd_create("fuzz") for _ in range(nfds)]
        try:
            for fd in fds:
                os.ftruncate(fd, 1 << 16)
            fe.send(request, payload, fds, flags)
        finally:
            for fd in fds:
                os.close(fd)
        if request in P.HAS_REPLY or flags & P.NEED_REPLY_FLAG:
            fe.recv_reply(request)
    assert be.proc.poll() is None, be.stderr()[-2000:]
    assert fe.get_features()


def test_peer_that_sends_garbage_header_version(spawn):
    be, fe = spawn(RNG)
    fe.sock.sendall(P.HEADER.pack(P.Request.GET_FEATURES, 0x2, 0))
    assert be.wait() == 1
    assert "version" in be.stderr()


def test_disconnect_in_the_middle_of_a_header(spawn):
    be, fe = spawn(RNG)
    fe.sock.sendall(P.HEADER.pack(P.Request.GET_FEATURES, 1, 0)[:5])
    fe.sock.shutdown(socket.SHUT_RDWR)
    assert be.wait() == 0


@pytest.mark.parametrize("which", ["call", "err"])
def test_an_interrupt_fd_nobody_reads_does_not_stall_the_back_end(spawn, which):
    """A front-end may hand over a pipe it never reads as a call (or err) fd: once the pipe is
    full a blocking write would stop the back-end for good. Interrupts are sent without
    blocking (one already waiting says as much), and the guest and the front-end are served."""
    import fcntl

    be, fe = spawn(RNG)
    fe.initialize()
    r, w = os.pipe()  # blocking, as a careless or hostile front-end may leave it
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)  # full after 512 interrupts
    request = P.Request.SET_VRING_CALL if which == "call" else P.Request.SET_VRING_ERR
    try:
        if which == "call":  # an interrupt for each request
            (q,) = fe.start([16])
            fe.call(request, P.U64.pack(0), [w])
            for _ in range(600):
                q.add([], [8])
                q.kick()
                deadline = time.monotonic() + 5
                while not q.poll_used():
                    assert time.monotonic() < deadline, "the back-end stopped answering the guest"
                    time.sleep(0.0002)
        for _ in range(600 if which == "err" else 0):  # a ring error in each round, on the err fd
            (q,) = fe.start([16])
            fe.call(request, P.U64.pack(0), [w])
            q.write_desc(0, fe.ram.alloc(8), 8, W | N, 0)  # a self-loop
            q.publish(0)
            q.kick()
            deadline = time.monotonic() + 5
            while not fe.get_status() & VIRTIO_CONFIG_S_NEEDS_RESET:
                assert time.monotonic() < deadline, "the back-end stopped reporting ring errors"
            fe.stop()
            q.close()
        fe.sock.settimeout(5)
        assert fe.get_features()
        assert be.proc.poll() is None, be.stderr()[-2000:]
    finally:
        os.close(r)
        os.close(w)
