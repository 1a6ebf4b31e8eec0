"""A back-end restarted under a running guest (a crash, an upgrade): the front-end does what
QEMU's reconnect does (``Frontend.reconnect``): a new connection to a new instance on the same
path, full initialisation, the same guest rings from their used indexes. What the guest had
asked for when the old instance died is served by the new one."""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path

import pytest

from tests.conftest import program
from vhostsuite.testing.backend import Backend
from vhostsuite.testing.frontend import Frontend, GuestRam

EV_SIZE = 8


def _instance(argv: list[str], path: Path, tmp: Path) -> Backend:
    be = Backend([*argv, f"--socket-path={path}"], tmp)
    be.wait_listening(path)
    return be


def _kill(be: Backend, sig: int) -> None:
    be.proc.send_signal(sig)
    be.proc.wait(10)
    be.stop()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_rng_request_waiting_at_the_crash_is_served_by_the_new_instance(tmp_path: Path, sig: int) -> None:
    path = tmp_path / "rng.sock"
    ram = GuestRam()
    be = _instance(program("vhost-user-rng"), path, tmp_path)
    fe = Frontend.connect(str(path), ram=ram)
    fe.initialize()
    (q,) = fe.start([8])
    features = fe.features
    q.add([], [16])
    q.kick()
    assert len(q.wait_used(1)[0].data) == 16
    q.add([], [64])  # the guest asks; the back-end dies before it answers
    _kill(be, sig)
    assert fe.wait_hangup()
    fe.sock.close()  # QEMU keeps the guest (its RAM and rings); only the connection went

    be = _instance(program("vhost-user-rng"), path, tmp_path)
    try:
        fe = Frontend.connect(str(path), ram=ram)
        fe.reconnect([q], features)
        q.kick()
        (used,) = q.wait_used(1)
        assert used.length == 64 and len(set(used.data)) > 16
        fe.close()
        assert be.wait(10) == 0
    finally:
        be.stop()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_input_buffers_held_at_the_crash_carry_events_sent_before_the_front_end_is_back(
    tmp_path: Path, sig: int
) -> None:
    """The event buffers the old instance held (in flight, waiting for events) are popped again
    by the new one; key events sent to its control socket before QEMU reconnects are delivered."""
    path, ctl = tmp_path / "in.sock", tmp_path / "kbd.ctl"
    argv = [*program("vhost-user-input"), "--virtual=keyboard", f"--control-socket={ctl}"]
    ram = GuestRam()
    be = _instance(argv, path, tmp_path)
    fe = Frontend.connect(str(path), ram=ram)
    fe.initialize()
    evq, stq = fe.start([16, 16])
    features = fe.features
    for _ in range(8):
        evq.add([], [EV_SIZE])
    evq.kick()
    fe.get_features()  # a round trip: the buffers are popped and held
    _kill(be, sig)
    assert fe.wait_hangup()
    fe.sock.close()  # QEMU keeps the guest (its RAM and rings); only the connection went

    be = _instance(argv, path, tmp_path)  # a stale control socket file is replaced
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.settimeout(5)
        client.connect(str(ctl))
        syn = ["EV_SYN", "SYN_REPORT", 0]
        events = [["EV_KEY", "KEY_A", 1], syn, ["EV_KEY", "KEY_A", 0], syn]
        client.sendall(json.dumps({"events": events}).encode() + b"\n")
        time.sleep(0.2)  # before the front-end is back
        fe = Frontend.connect(str(path), ram=ram)
        fe.reconnect([evq, stq], features)
        got = [used.data for used in evq.wait_used(4, timeout=10)]
        # EV_KEY=1, KEY_A=30, EV_SYN=0
        assert got == [bytes.fromhex(h) for h in ("01001e0001000000", "0000000000000000",
                                                   "01001e0000000000", "0000000000000000")]  # fmt: skip
        fe.close()
        assert be.wait(10) == 0
    finally:
        client.close()
        be.stop()
