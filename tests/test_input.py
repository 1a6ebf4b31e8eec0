"""vhost-user-input: config space, event delivery, overflow, status queue, command line.

Most tests run the real program (bin/vhost-user-input) with a virtual device and drive it
through the package's front-end and the control socket. Unit tests cover the translation
of a python-evdev device into config space with a fake device object. Tests against a real
uinput device run only where /dev/uinput is writable.
"""

from __future__ import annotations

import errno
import json
import os
import select
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import child_env, program
from vhostsuite.core.virtio import (
    VIRTIO_CONFIG_S_ACKNOWLEDGE,
    VIRTIO_CONFIG_S_DRIVER,
    VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK,
)
from vhostsuite.devices.input import config as C
from vhostsuite.devices.input.sources import EvdevSource, SourceGone, VirtualSource, describe
from vhostsuite.testing.frontend import DriverQueue, FrontendError

EV = struct.Struct("<HHi")
SYN = (0, 0, 0)

# -- helpers ------------------------------------------------------------------------------------


class Control:
    """A control-socket client: JSON lines out, replies and status reports in."""

    def __init__(self, path: str, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self.sock.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        self.buf = b""
        self.lines: list[dict] = []
        self.next_id = 0

    def send(self, obj: object) -> None:
        self.sock.sendall(json.dumps(obj).encode() + b"\n")

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _read_line(self, timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([self.sock], [], [], left)
            if not r:
                return None
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("control socket closed")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return json.loads(line)

    def wait(self, pred, timeout: float = 5.0) -> dict:
        """The first line (kept or new) for which *pred* holds; others are kept."""
        for i, msg in enumerate(self.lines):
            if pred(msg):
                return self.lines.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            msg = self._read_line(max(0.0, deadline - time.monotonic()))
            if msg is None:
                raise TimeoutError(f"no matching control line; got {self.lines}")
            if pred(msg):
                return msg
            self.lines.append(msg)

    def request(self, obj: dict, timeout: float = 5.0) -> dict:
        self.next_id += 1
        rid = self.next_id
        self.send({**obj, "id": rid})
        return self.wait(lambda m: m.get("id") == rid, timeout)

    def events(self, events: list, **kw: object) -> dict:
        return self.request({"events": [list(e) for e in events], **kw})

    def state(self) -> dict:
        return self.request({"query": "state"})["state"]

    def close(self) -> None:
        self.sock.close()


def post(q: DriverQueue, n: int) -> None:
    for _ in range(n):
        q.add([], [EV.size])
    q.kick()


def read_events(q: DriverQueue, n: int, timeout: float = 5.0, repost: bool = False) -> list[tuple[int, int, int]]:
    """*n* events from the event queue; with *repost* every returned buffer is made available again."""
    out: list[tuple[int, int, int]] = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        used = q.poll_used()
        if not used:
            if time.monotonic() > deadline:
                raise FrontendError(f"{len(out)} of {n} events after {timeout}s: {out[-5:]}")
            q.wait_call(0.2)
            continue
        for u in used:
            assert u.length == EV.size
            out.append(EV.unpack(u.data))
        if repost:
            post(q, len(used))
    return out


def no_more_events(q: DriverQueue, wait: float = 0.2) -> bool:
    time.sleep(wait)
    return not q.poll_used()


@pytest.fixture
def virtual(spawn, tmp_path: Path):
    """``virtual(kind, *args, sizes=(64, 64))`` -> (backend, frontend, event q, status q, control)."""
    controls: list[Control] = []

    def start(kind: str, *args: str, sizes=(64, 64), fd_mode: bool = False):
        ctl_path = tmp_path / f"ctl-{len(controls)}.sock"
        be, fe = spawn("vhost-user-input", f"--virtual={kind}", f"--control-socket={ctl_path}", *args, fd_mode=fd_mode)
        fe.initialize()
        evq, stq = fe.start(list(sizes))
        ctl = Control(str(ctl_path))
        controls.append(ctl)
        return be, fe, evq, stq, ctl

    yield start
    for c in controls:
        c.close()


JSON_DEVICE = {
    "name": "test pad ünïcode",
    "serial": "SN-42",
    "ids": {"bustype": 3, "vendor": 0x1234, "product": 0x5678, "version": 0x0111},
    "properties": ["INPUT_PROP_DIRECT", "INPUT_PROP_BUTTONPAD"],
    "events": {
        "EV_KEY": ["BTN_TOUCH", "BTN_TOOL_FINGER", "KEY_A", "KEY_MICMUTE", 0x2FF],
        "EV_ABS": {
            "ABS_X": {"min": -100, "max": 4095, "fuzz": 4, "flat": 8, "resolution": 40},
            "ABS_Y": {"min": 0, "max": 2047},
            "ABS_MT_SLOT": {"min": 0, "max": 9},
            "ABS_MT_POSITION_X": {"min": 0, "max": 4095, "resolution": 40},
        },
        "EV_REL": ["REL_WHEEL"],
        "EV_MSC": ["MSC_SCAN", "MSC_TIMESTAMP"],
        "EV_SW": ["SW_LID", 0x10],
        "EV_LED": ["LED_CAPSL", "LED_MISC"],
        "EV_SND": ["SND_BELL", "SND_TONE"],
        "EV_REP": [],
        "EV_FF": ["FF_RUMBLE", "FF_GAIN"],
    },
}


def expected_entries(desc: dict) -> dict[tuple[int, int], bytes]:
    """The config entries a description should produce, computed independently of the package."""
    from evdev import ecodes

    def num(x: object) -> int:
        return x if isinstance(x, int) else ecodes.ecodes[x]

    def bits(codes) -> bytes:
        b = bytearray(128)
        for c in codes:
            b[c // 8] |= 1 << (c % 8)
        return bytes(b).rstrip(b"\0")

    out: dict[tuple[int, int], bytes] = {(1, 0): desc["name"].encode()}
    if desc.get("serial"):
        out[2, 0] = desc["serial"].encode()
    ids = desc["ids"]
    if isinstance(ids, dict):
        ids = [ids["bustype"], ids["vendor"], ids["product"], ids["version"]]
    out[3, 0] = struct.pack("<4H", *ids)
    if desc.get("properties"):
        out[0x10, 0] = bits(num(p) for p in desc["properties"])
    for tname, codes in desc["events"].items():
        t = num(tname)
        if t == ecodes.EV_ABS:
            out[0x11, t] = bits(num(a) for a in codes)
            for a, info in codes.items():
                out[0x12, num(a)] = struct.pack(
                    "<5i", *(info.get(k, 0) for k in ("min", "max", "fuzz", "flat", "resolution"))
                )
        else:
            if t == ecodes.EV_REP and not codes:
                codes = [0, 1]
            out[0x11, t] = bits(num(c) for c in codes)
    return out


def read_entry(fe, select_: int, subsel: int, size: int = 136, whole_image: bool = True) -> bytes:
    """Select like QEMU (the whole 136-byte image written back) or like a minimal driver (2 bytes)."""
    if whole_image:
        image = bytearray(fe.get_config(0, 136))
        image[0], image[1] = select_, subsel
        fe.set_config(0, bytes(image))
    else:
        fe.set_config(0, bytes([select_, subsel]))
    return fe.get_config(0, size)


def check_config(fe, desc: dict) -> None:
    want = expected_entries(desc)
    for (sel, sub), payload in want.items():
        cfg = read_entry(fe, sel, sub)
        assert cfg[:3] == bytes([sel, sub, len(payload)]), (sel, sub, cfg[:3])
        assert cfg[3:8] == bytes(5)
        assert cfg[8 : 8 + len(payload)] == payload, (sel, sub)
        assert cfg[8 + len(payload) :] == bytes(128 - len(payload))
    # everything else answers size 0
    for sel in (0x00, 0x01, 0x02, 0x03, 0x10, 0x11, 0x12):
        for sub in range(0, 0x40):
            if (sel, sub) in want:
                continue
            cfg = read_entry(fe, sel, sub, whole_image=False)
            assert cfg[2] == 0 and cfg[8:] == bytes(128), (sel, sub)


# -- config space over the real program ---------------------------------------------------


@pytest.mark.parametrize("kind", ["keyboard", "mouse", "tablet"])
def test_config_builtin(virtual, kind: str) -> None:
    be, fe, *_ = virtual(kind)
    check_config(fe, C.BUILTINS[kind])


def test_config_json_device(virtual, tmp_path: Path) -> None:
    path = tmp_path / "pad.json"
    path.write_text(json.dumps(JSON_DEVICE))
    be, fe, *_ = virtual(str(path))
    check_config(fe, JSON_DEVICE)
    # EV_SW: SW_LID and SW_MAX (0x10, bit 16) are both there: 3 bytes, nothing truncated
    cfg = read_entry(fe, 0x11, 0x05)
    assert cfg[2] == 3 and cfg[8:11] == b"\x01\x00\x01"
    # EV_KEY up to KEY_MAX: 96 bytes
    assert read_entry(fe, 0x11, 0x01)[2] == 96
    # the description over the control socket matches
    ctl = Control(str(tmp_path / "ctl-0.sock"))
    d = ctl.request({"query": "describe"})["description"]
    assert d["name"] == JSON_DEVICE["name"] and d["ids"] == [3, 0x1234, 0x5678, 0x0111]
    ctl.close()


def test_config_128_and_136_byte_reads(virtual) -> None:
    be, fe, *_ = virtual("keyboard")
    fe.set_config(0, bytes([0x01, 0]))
    full = fe.get_config(0, 136)
    name = b"vhostsuite virtual keyboard"
    assert full[2] == len(name) and full[8 : 8 + len(name)] == name
    assert fe.get_config(0, 128) == full[:128]  # QEMU 4.1-8.2's size
    assert fe.get_config(8, 128) == full[8:]  # the union alone
    for off, size in ((0, 1), (2, 1), (8, 27), (100, 36), (135, 1), (136, 0)):
        assert fe.get_config(off, size) == full[off : off + size]


def test_config_out_of_range_refused(virtual) -> None:
    be, fe, evq, stq, ctl = virtual("keyboard")
    for off, size in ((0, 137), (1, 136), (136, 1), (200, 8)):
        with pytest.raises(FrontendError, match="refused GET_CONFIG"):
            fe.get_config(off, size)
    with pytest.raises(FrontendError, match="refused SET_CONFIG"):
        fe.set_config(130, bytes(10))
    # still serving
    fe.set_config(0, bytes([0x03, 0]))
    assert fe.get_config(0, 16)[2] == 8
    assert be.proc.poll() is None
    assert "outside the 136-byte config space" in be.stderr()


def test_bad_selects(virtual) -> None:
    be, fe, evq, stq, ctl = virtual("tablet")
    for sel, sub in ((0xFF, 0), (0x04, 0), (0x11, 0xFF), (0x12, 0x3F), (0x11, 0x04), (0x00, 0x00), (0x12, 200)):
        cfg = read_entry(fe, sel, sub)
        assert cfg[:3] == bytes([sel, sub, 0]) and cfg[3:] == bytes(133)
    # the reserved bytes and the union are read-only: writing them changes nothing
    fe.set_config(0, bytes([0x12, 0x00]) + b"\xff" * 134)
    cfg = fe.get_config(0, 136)
    assert cfg[:3] == bytes([0x12, 0x00, 20]) and cfg[3:8] == bytes(5)
    assert struct.unpack_from("<5i", cfg, 8) == (0, 32767, 0, 0, 0)
    # writing only subsel (offset 1) keeps select
    fe.set_config(1, bytes([0x01]))
    assert fe.get_config(0, 3) == bytes([0x12, 0x01, 20])
    assert be.proc.poll() is None


# -- events ------------------------------------------------------------------------------------


def test_events_in_order_with_values(virtual) -> None:
    be, fe, evq, stq, ctl = virtual("tablet")
    post(evq, 32)
    sent = [
        ("EV_ABS", "ABS_X", 0),
        ("EV_ABS", "ABS_Y", 32767),
        ("EV_KEY", "BTN_LEFT", 1),
        ("EV_SYN", "SYN_REPORT", 0),
        (3, 0, 12345),
        (2, 8, -3),  # REL_WHEEL, negative
        (0, 0, 0),
        ["EV_KEY", 272, 0],
    ]
    assert ctl.events(sent, syn=True)["ok"] is True
    got = read_events(evq, 9)
    assert got == [(3, 0, 0), (3, 1, 32767), (1, 272, 1), SYN, (3, 0, 12345), (2, 8, -3), SYN, (1, 272, 0), SYN]
    assert no_more_events(evq)


def test_partial_batch_waits_for_syn(virtual) -> None:
    be, fe, evq, stq, ctl = virtual("keyboard")
    post(evq, 8)
    ctl.events([("EV_KEY", "KEY_A", 1)])
    assert no_more_events(evq, 0.3)
    assert ctl.state()["pending"] == 1
    ctl.events([("EV_SYN", "SYN_REPORT", 0)])
    assert read_events(evq, 2) == [(1, 30, 1), SYN]


def test_batches_of_10_through_4_entries(virtual) -> None:
    be, fe, evq, stq, ctl = virtual("keyboard", sizes=(4, 4))
    keys = list(range(2, 12))  # KEY_1 .. KEY_0
    batches = [[(1, k, b % 2 ^ 1) for k in keys] + [SYN] for b in range(20)]
    for batch in batches:
        ctl.events(batch)
    post(evq, 4)
    got = read_events(evq, 11 * 20, repost=True)
    assert got == [ev for batch in batches for ev in batch]
    st = ctl.state()
    assert st["dropped"] == 0 and st["pending"] == 0 and st["delivered"] == 220


def test_burst_of_2000_none_lost(virtual) -> None:
    be, fe, evq, stq, ctl = virtual("keyboard", sizes=(4, 4))
    post(evq, 4)
    events = []
    for i in range(1000):
        events += [(1, 30 + i % 20, i & 1), (4, 4, i)]  # key + MSC_SCAN carrying a sequence number
    events += [SYN]
    ctl.send({"events": [list(e) for e in events]})
    got = read_events(evq, len(events), timeout=20, repost=True)
    assert got == events
    assert ctl.state()["dropped"] == 0


def test_overflow_syn_dropped_then_next_full_batch(virtual) -> None:
    be, fe, evq, stq, ctl = virtual("keyboard", "--max-pending=100", sizes=(64, 64))
    # the guest posts no buffers: 60 batches of KEY + SYN = 120 events > 100
    for i in range(60):
        ctl.events([(1, 30, i & 1), SYN])
    st = ctl.state()
    # overflow at event 101 (the KEY of batch 50): all 100 dropped, its SYN skipped,
    # then batches 51..59 are queued after SYN_DROPPED
    assert st["overflows"] == 1 and st["pending"] == 1 + 9 * 2 and st["dropped"] == 102
    post(evq, 64)
    got = read_events(evq, 19)
    assert got[0] == (0, 3, 0)  # SYN_DROPPED
    assert got[1:] == [ev for i in range(51, 60) for ev in ((1, 30, i & 1), SYN)]
    assert no_more_events(evq)
    # the guest reads again: nothing lost any more
    ctl.events([(1, 31, 1), SYN, (1, 31, 0), SYN])
    assert read_events(evq, 4) == [(1, 31, 1), SYN, (1, 31, 0), SYN]
    assert "overflowed" in be.stderr()


def test_overflow_inside_a_long_batch(virtual) -> None:
    be, fe, evq, stq, ctl = virtual("keyboard", "--max-pending=10")
    ctl.events([(1, 30, 1)] * 25)  # no SYN: overflow at 11, the rest of the batch is skipped
    ctl.events([SYN, (1, 30, 0), SYN])
    post(evq, 16)
    assert read_events(evq, 3) == [(0, 3, 0), (1, 30, 0), SYN]
    assert no_more_events(evq)


def test_events_before_driver_ok_are_kept(spawn, tmp_path: Path) -> None:
    ctl_path = tmp_path / "ctl.sock"
    be, fe = spawn("vhost-user-input", "--virtual=keyboard", f"--control-socket={ctl_path}")
    fe.initialize()
    fe.get_features()  # the loop is running: the control socket is served
    ctl = Control(str(ctl_path))
    ctl.events([(1, 30, 1), SYN])
    evq, stq = fe.start([8, 8])
    post(evq, 8)
    assert read_events(evq, 2) == [(1, 30, 1), SYN]
    ctl.close()


def test_control_clients_before_the_front_end_are_served_once_it_is_there(tmp_path: Path) -> None:
    """As many clients as the control socket serves may connect before QEMU does: none is
    refused or kept waiting in connect(), and each is answered once the front-end is there."""
    from vhostsuite.devices.input.sources import MAX_CLIENTS
    from vhostsuite.testing.backend import Backend
    from vhostsuite.testing.frontend import Frontend

    sock, ctl = tmp_path / "in.sock", tmp_path / "ctl.sock"
    be = Backend([*program("vhost-user-input"), f"--socket-path={sock}", "--virtual=keyboard",
                  f"--control-socket={ctl}"], tmp_path)  # fmt: skip
    early: list[socket.socket] = []
    try:
        be.wait_listening(sock)
        for _ in range(MAX_CLIENTS):
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.settimeout(2)
            c.connect(str(ctl))  # a full backlog would keep it waiting here
            c.sendall(b'{"query": "state", "id": 7}\n')
            early.append(c)
        fe = Frontend.connect(str(sock))
        fe.initialize()
        for c in early:
            c.settimeout(5)
            reply = json.loads(c.makefile("rb").readline())
            assert reply.get("id") == 7 and "state" in reply, reply
        fe.close()
    finally:
        for c in early:
            c.close()
        be.stop()


def test_reset_discards_queued_events(virtual) -> None:
    be, fe, evq, stq, ctl = virtual("keyboard")
    ctl.events([(1, 30, 1), SYN])
    assert ctl.state()["pending"] == 2
    fe.stop()  # status 0 resets the device
    assert ctl.state()["pending"] == 0
    evq, stq = fe.start([8, 8])
    post(evq, 8)
    ctl.events([(1, 31, 1), SYN])
    assert read_events(evq, 2) == [(1, 31, 1), SYN]


def test_status_0_on_running_rings_keeps_serving(virtual) -> None:
    """A front-end that resets the device (SET_STATUS 0) without stopping the rings first: the
    empty buffers the device held are popped again, and events still reach the guest in order."""
    be, fe, evq, stq, ctl = virtual("keyboard")
    post(evq, 8)  # held by the device, waiting for events
    fe.get_features()
    fe.set_status(0)
    fe.set_status(VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK
                  | VIRTIO_CONFIG_S_DRIVER_OK)  # fmt: skip
    ctl.events([(1, 30, 1), SYN, (1, 30, 0), SYN])
    assert read_events(evq, 4) == [(1, 30, 1), SYN, (1, 30, 0), SYN]
    assert be.proc.poll() is None


def test_fd_mode(virtual) -> None:
    be, fe, evq, stq, ctl = virtual("mouse", fd_mode=True)
    post(evq, 4)
    ctl.events([("EV_REL", "REL_X", -5), ("EV_REL", "REL_Y", 7)], syn=True)
    assert read_events(evq, 3) == [(2, 0, -5), (2, 1, 7), SYN]


def test_small_event_buffer_breaks_the_queue_not_the_program(virtual) -> None:
    be, fe, evq, stq, ctl = virtual("keyboard")
    evq.add([], [4])
    evq.kick()
    ctl.events([(1, 30, 1), SYN])
    assert select.select([evq.err_fd], [], [], 5)[0]
    assert "needs 8" in be.stderr()
    assert ctl.state()["pending"] == 2  # the events are still queued
    assert be.proc.poll() is None


# -- status queue ---------------------------------------------------------------------------------


def test_led_reported_on_control_socket(virtual, tmp_path: Path) -> None:
    be, fe, evq, stq, ctl = virtual("keyboard")
    other = Control(str(tmp_path / "ctl-0.sock"))  # a second client hears it too
    other.state()  # connected and served
    stq.add([EV.pack(0x11, 1, 1)], [])  # LED_CAPSL on
    stq.add([EV.pack(0, 0, 0)], [])
    stq.kick()
    used = stq.wait_used(2)
    assert [u.length for u in used] == [0, 0]
    for c in (ctl, other):
        assert c.wait(lambda m: "status" in m) == {"status": [0x11, 1, 1], "names": ["EV_LED", "LED_CAPSL"]}
        assert c.wait(lambda m: "status" in m)["status"] == [0, 0, 0]
    assert ctl.state()["leds"] == {"LED_CAPSL": 1}
    # two events in one buffer, a trailing partial event, and a type the keyboard lacks
    stq.add([EV.pack(0x11, 0, 1) + EV.pack(0x11, 1, 0) + b"xyz"], [])
    stq.add([EV.pack(0x02, 0, 5)], [])  # EV_REL: the keyboard has none
    stq.add([EV.pack(0x14, 0, 250)], [])  # EV_REP: it does
    stq.kick()
    stq.wait_used(3)
    assert ctl.wait(lambda m: "status" in m)["status"] == [0x11, 0, 1]
    assert ctl.wait(lambda m: "status" in m)["status"] == [0x11, 1, 0]
    assert ctl.wait(lambda m: "status" in m)["names"] == ["EV_REP", "REP_DELAY"]
    assert ctl.state()["leds"] == {"LED_CAPSL": 0, "LED_NUML": 1}
    err = be.stderr()
    assert "trailing bytes ignored" in err and "type 0x2" in err
    other.close()


def test_msc_echo_on_status_queue_is_ignored(virtual) -> None:
    """Linux echoes every EV_MSC it receives to the status queue: not reported, not warned."""
    be, fe, evq, stq, ctl = virtual("keyboard")
    stq.add([EV.pack(4, 4, 30)], [])
    stq.add([EV.pack(0x11, 2, 1)], [])
    stq.kick()
    stq.wait_used(2)
    assert ctl.wait(lambda m: "status" in m)["status"] == [0x11, 2, 1]
    assert ctl.state()["status_events"] == 1
    assert "type 0x4" not in be.stderr()


def test_huge_status_buffer_costs_what_a_small_one_does(virtual) -> None:
    """A 48 MiB status buffer of LED events: the device reads at most MAX_STATUS_EVENTS of them,
    so it answers at once and its memory doesn't grow with the length the guest claims."""
    from vhostsuite.devices.input.device import MAX_STATUS_EVENTS

    be, fe, evq, stq, ctl = virtual("keyboard")
    rss0 = _rss_kib(be.proc.pid)
    led = EV.pack(0x11, 1, 1)
    stq.add([led * ((48 << 20) // EV.size)], [])
    t0 = time.monotonic()
    stq.kick()
    stq.wait_used(1)
    assert time.monotonic() - t0 < 1.0
    assert ctl.state()["status_events"] == MAX_STATUS_EVENTS
    assert _rss_kib(be.proc.pid) - rss0 < 8 << 10  # KiB
    assert "only the first 64 events read" in be.stderr()


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_evdev_source_writes_only_leds_and_sounds() -> None:
    from evdev import ecodes as e

    dev = FakeEvdev({e.EV_KEY: [e.KEY_A], e.EV_LED: [0, 1], e.EV_SND: [1], e.EV_MSC: [4], e.EV_REP: []})
    src = EvdevSource("/dev/input/event3", device=dev)
    src.write_status([(4, 4, 30), SYN, (0x14, 0, 250), SYN, (0x11, 1, 1), SYN, (0x12, 1, 1), SYN, SYN])
    assert dev.written == [(0x11, 1, 1), SYN, (0x12, 1, 1), SYN]


def test_writable_status_buffer_breaks_status_queue(virtual) -> None:
    be, fe, evq, stq, ctl = virtual("keyboard")
    stq.add([], [8])
    stq.kick()
    assert select.select([stq.err_fd], [], [], 5)[0]
    # the event queue still works
    post(evq, 2)
    ctl.events([(1, 30, 1), SYN])
    assert read_events(evq, 2) == [(1, 30, 1), SYN]


# -- control socket errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, message",
    [
        (b"not json\n", "not valid JSON"),
        (b"[1, 2]\n", "must be a JSON object"),
        (b'{"events": 5}\n', "must be a list"),
        (b'{"events": [[1, 30]]}\n', "not [type, code, value]"),
        (b'{"events": [["EV_NOPE", 1, 1]]}\n', "unknown event type"),
        (b'{"events": [["EV_KEY", "REL_X", 1]]}\n', "unknown code 'REL_X'"),
        (b'{"events": [["EV_KEY", "BTN_LEFT", 1]]}\n', "the device has no (EV_KEY, BTN_LEFT)"),
        (b'{"events": [["EV_KEY", 30, 1.5]]}\n', "not a 32-bit integer"),
        (b'{"events": [["EV_KEY", 30, 4294967296]]}\n', "not a 32-bit integer"),
        (b'{"events": [[0, 3, 0]]}\n', "the device has no (EV_SYN, SYN_DROPPED)"),
        (b'{"events": [], "syn": 1}\n', '"syn" must be true or false'),
        (b'{"query": "nope"}\n', "unknown query"),
        (b'{"bogus": 1}\n', "unknown keys"),
        (b'{"id": 3}\n', 'needs "events" or "query"'),
        (b"\xff\xfe\n", "not valid JSON"),
    ],
)
def test_control_bad_lines(virtual, line: bytes, message: str) -> None:
    be, fe, evq, stq, ctl = virtual("keyboard")
    post(evq, 4)
    ctl.send_raw(line)
    err = ctl.wait(lambda m: "error" in m)
    assert message in err["error"] and err["line"] == 1
    # nothing from the bad line reached the guest, and the connection still works
    ctl.events([(1, 30, 1), SYN])
    assert read_events(evq, 2) == [(1, 30, 1), SYN]
    assert be.proc.poll() is None


def test_control_bad_event_rejects_whole_line(virtual) -> None:
    be, fe, evq, stq, ctl = virtual("keyboard")
    post(evq, 4)
    r = ctl.request({"events": [[1, 30, 1], [1, 9999, 1]], "syn": True})
    assert "event 1" in r["error"] and r["id"] == 1
    assert ctl.state()["pending"] == 0


def test_control_line_too_long_drops_client(virtual, tmp_path: Path) -> None:
    be, fe, evq, stq, ctl = virtual("keyboard")
    try:
        ctl.send_raw(b"[" * (5 << 20))
    except (BrokenPipeError, ConnectionResetError):
        pass
    err = ctl.wait(lambda m: "error" in m, timeout=10)
    assert "longer than" in err["error"]
    fresh = Control(str(tmp_path / "ctl-0.sock"))
    assert fresh.state()["pending"] == 0
    fresh.close()


def test_control_client_that_hangs_up(virtual, tmp_path: Path) -> None:
    be, fe, evq, stq, ctl = virtual("keyboard")
    for _ in range(20):
        c = Control(str(tmp_path / "ctl-0.sock"))
        c.send_raw(b'{"events": [[1, 30, 1]')  # half a line, then gone
        c.close()
    post(evq, 2)
    ctl.events([(1, 30, 1), SYN])
    assert read_events(evq, 2) == [(1, 30, 1), SYN]


# -- command line -------------------------------------------------------------------------------------


def run_input(*args: str, timeout: float = 10) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*program("vhost-user-input"), *args], capture_output=True, text=True, timeout=timeout, env=child_env()
    )


def test_print_capabilities() -> None:
    r = run_input("--print-capabilities")
    assert r.returncode == 0
    assert json.loads(r.stdout) == {"type": "input", "features": ["evdev-path", "no-grab"]}


def test_print_capabilities_does_not_import_evdev() -> None:
    code = (
        "import sys; from vhostsuite.devices.input import main; "
        "main(['--print-capabilities']); assert 'evdev' not in sys.modules, 'evdev imported'"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env())
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(
    "args, rc, message",
    [
        (["--evdev-path=/nonexistent/event0"], 1, "--evdev-path=/nonexistent/event0: No such file or directory"),
        (["--evdev-path=/dev/null"], 1, "not an evdev device"),
        (["--evdev-path=/etc/hostname"], 1, "not a character device"),
        ([], 2, "exactly one of --evdev-path and --virtual"),
        (["--evdev-path=/dev/null", "--virtual=keyboard"], 2, "exactly one of --evdev-path and --virtual"),
        (["--virtual=keyboard", "--no-grab"], 2, "--no-grab only works with --evdev-path"),
        (["--evdev-path=/dev/null", "--control-socket=/tmp/x"], 2, "--control-socket only works with --virtual"),
        (["--virtual=joystick"], 1, "want keyboard, mouse, tablet or a FILE.json"),
        (["--virtual=/nonexistent.json"], 1, "No such file or directory"),
        (["--virtual=keyboard", "--max-pending=1"], 2, "must be at least 2"),
    ],
)
def test_command_line_errors(tmp_path: Path, args: list[str], rc: int, message: str) -> None:
    sock = tmp_path / "in.sock"
    r = run_input(f"--socket-path={sock}", *args)
    assert r.returncode == rc, r.stderr
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    assert not sock.exists()  # failed before creating the vhost-user socket


@pytest.mark.parametrize(
    "content, message",
    [
        ("{", "not valid JSON"),
        ("[]", "must be a JSON object"),
        ('{"events": {"EV_KEY": [30]}}', '"name" must be a non-empty string'),
        ('{"name": "x", "events": {}}', '"events" must be a non-empty object'),
        ('{"name": "x", "events": {"EV_KEY": ["ABS_X"]}}', "unknown code 'ABS_X'"),
        ('{"name": "x", "events": {"EV_ABS": ["ABS_X"]}}', "must map each axis"),
        ('{"name": "x", "events": {"EV_ABS": {"ABS_X": {"max": 5}}}}', "min and max are required"),
        ('{"name": "x", "events": {"EV_ABS": {"ABS_X": {"min": 9, "max": 5}}}}', "min 9 > max 5"),
        ('{"name": "x", "events": {"EV_KEY": [768]}}', "out of range"),
        ('{"name": "x", "ids": [1, 2, 3], "events": {"EV_KEY": [30]}}', '"ids" must be 4 integers'),
        ('{"name": "x", "ids": [1, 2, 3, 65536], "events": {"EV_KEY": [30]}}', "0..0xffff"),
        ('{"name": "' + "n" * 129 + '", "events": {"EV_KEY": [30]}}', "longer than 128 bytes"),
        ('{"name": "x", "properties": ["INPUT_PROP_NOPE"], "events": {"EV_KEY": [30]}}', "unknown input property"),
        ('{"name": "x", "colour": 1, "events": {"EV_KEY": [30]}}', "unknown keys"),
    ],
)
def test_bad_json_description(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "dev.json"
    path.write_text(content)
    r = run_input(f"--socket-path={tmp_path / 'in.sock'}", f"--virtual={path}")
    assert r.returncode == 1
    assert message in r.stderr and str(path) in r.stderr
    assert "Traceback" not in r.stderr


def test_control_socket_path_errors(tmp_path: Path) -> None:
    taken = tmp_path / "file"
    taken.write_text("")
    r = run_input(f"--socket-path={tmp_path / 'in.sock'}", "--virtual=keyboard", f"--control-socket={taken}")
    assert r.returncode == 1 and "exists and is not a socket" in r.stderr
    r = run_input(f"--socket-path={tmp_path / 'in.sock'}", "--virtual=keyboard", "--control-socket=/nonexistent/x")
    assert r.returncode == 1 and "--control-socket=/nonexistent/x" in r.stderr


def test_sigterm_removes_control_socket(virtual, tmp_path: Path) -> None:
    be, fe, evq, stq, ctl = virtual("keyboard")
    assert (tmp_path / "ctl-0.sock").exists()
    assert be.terminate() == 0
    assert not (tmp_path / "ctl-0.sock").exists()


# -- unit: python-evdev devices -> config space -----------------------------------------------------


class FakeEvdev:
    """Just python-evdev InputDevice's API shape (capabilities/input_props/name/uniq/info)."""

    def __init__(self, caps: dict, props: list[int] | Exception = (), name="Fake Device", uniq="") -> None:
        from evdev import DeviceInfo

        self._caps = caps
        self._props = props
        self.name = name
        self.uniq = uniq
        self.phys = "fake/0"
        self.info = DeviceInfo(3, 0x046D, 0xC52B, 0x0111)
        self.path = "/fake/event0"
        self.fd = -1
        self.grabbed = False
        self.written: list[tuple[int, int, int]] = []

    def capabilities(self, verbose: bool = False, absinfo: bool = True) -> dict:
        assert absinfo
        return self._caps

    def input_props(self, verbose: bool = False) -> list[int]:
        if isinstance(self._props, Exception):
            raise self._props
        return list(self._props)

    def absinfo(self, axis: int):
        from evdev import AbsInfo

        return AbsInfo(0, -1, 1, 0, 0, 0)

    def grab(self) -> None:
        self.grabbed = True

    def ungrab(self) -> None:
        self.grabbed = False

    def write(self, t: int, c: int, v: int) -> None:
        self.written.append((t, c, v))

    def close(self) -> None:
        pass


def test_bitmap() -> None:
    assert C.bitmap([]) == b""
    assert C.bitmap([0]) == b"\x01"
    assert C.bitmap([7, 8]) == b"\x80\x01"
    assert C.bitmap([16]) == b"\x00\x00\x01"  # SW_MAX: 3 bytes (QEMU's contrib truncates to 2)
    assert len(C.bitmap([0x2FF])) == 96
    assert C.bitmap([1, 1, 1]) == b"\x02"
    with pytest.raises(ValueError):
        C.bitmap([-1])


def test_from_evdev_translation() -> None:
    from evdev import AbsInfo
    from evdev import ecodes as e

    dev = FakeEvdev(
        {
            e.EV_SYN: [0, 1, 3, 4],
            e.EV_KEY: [e.BTN_TOUCH, e.KEY_A],
            e.EV_ABS: [
                (e.ABS_X, AbsInfo(value=5, min=0, max=32767, fuzz=1, flat=2, resolution=3)),
                (e.ABS_MT_SLOT, AbsInfo(0, 0, 9, 0, 0, 0)),
            ],
            e.EV_MSC: [e.MSC_SCAN],
            e.EV_SW: [e.SW_LID, e.SW_MAX],
            e.EV_LED: [e.LED_NUML, e.LED_CAPSL],
            e.EV_SND: [e.SND_BELL],
            e.EV_REP: [],
            e.EV_FF: [e.FF_RUMBLE, e.FF_GAIN],
        },
        props=[e.INPUT_PROP_DIRECT],
        name="Fake Tablet",
        uniq="serial-1",
    )
    desc = C.from_evdev(dev)
    assert desc.name == "Fake Tablet" and desc.serial == "serial-1"
    assert desc.ids == (3, 0x046D, 0xC52B, 0x0111)
    assert desc.props == {e.INPUT_PROP_DIRECT}
    assert C.EV_SYN not in desc.events
    assert desc.events[C.EV_REP] == {0, 1}
    assert desc.absinfo[e.ABS_X] == C.AbsInfo(0, 32767, 1, 2, 3)
    ent = C.entries(desc)
    assert ent[1, 0] == b"Fake Tablet" and ent[2, 0] == b"serial-1"
    assert ent[3, 0] == struct.pack("<4H", 3, 0x046D, 0xC52B, 0x0111)
    assert ent[0x10, 0] == bytes([1 << e.INPUT_PROP_DIRECT])
    assert ent[0x11, e.EV_SW] == b"\x01\x00\x01"
    assert ent[0x11, e.EV_LED] == b"\x03"
    assert ent[0x11, e.EV_SND] == b"\x02"
    assert ent[0x11, e.EV_REP] == b"\x03"
    assert ent[0x11, e.EV_FF] == C.bitmap([e.FF_RUMBLE, e.FF_GAIN])
    assert ent[0x11, e.EV_ABS] == C.bitmap([e.ABS_X, e.ABS_MT_SLOT])
    assert ent[0x12, e.ABS_X] == struct.pack("<5i", 0, 32767, 1, 2, 3)
    assert ent[0x12, e.ABS_MT_SLOT] == struct.pack("<5i", 0, 9, 0, 0, 0)
    assert (0x11, 0) not in ent
    # the config space answers them
    cs = C.ConfigSpace(desc)
    cs.write(0, bytes([0x12, e.ABS_X]))
    assert cs.read(0, 136)[:8] == bytes([0x12, e.ABS_X, 20, 0, 0, 0, 0, 0])


def test_from_evdev_quirks() -> None:
    from evdev import ecodes as e

    # input_props() failing (python-evdev's SystemError on a failed ioctl), plain ABS codes,
    # an over-long name, no uniq
    dev = FakeEvdev({e.EV_ABS: [e.ABS_X]}, props=SystemError("NULL without exception"), name="é" * 100, uniq=None)
    desc = C.from_evdev(dev)
    assert desc.props == frozenset()
    assert desc.absinfo[e.ABS_X] == C.AbsInfo(-1, 1, 0, 0, 0)
    assert len(desc.name.encode()) == 128 and desc.name == "é" * 64
    assert desc.serial == "" and (2, 0) not in C.entries(desc)


def test_from_evdev_over_socketpair() -> None:
    """A real python-evdev InputDevice over a socketpair (python-stack.md 5.3 route A)."""
    from evdev import DeviceInfo, InputDevice
    from evdev import ecodes as e

    a, b = socket.socketpair()
    a.setblocking(False)
    dev = InputDevice.__new__(InputDevice)
    dev.path, dev.fd = "/fake/event0", a.fileno()
    dev.info = DeviceInfo(e.BUS_USB, 0x1234, 0x5678, 1)
    dev.name, dev.phys, dev.uniq, dev.version, dev.ff_effects_count = "Fake Tablet", "fake/0", "", 0x10001, 0
    dev._rawcapabilities = {
        e.EV_KEY: [e.BTN_TOUCH],
        e.EV_ABS: [(e.ABS_X, (0, 0, 32767, 0, 0, 0))],
        e.EV_LED: [e.LED_CAPSL],
    }
    src = EvdevSource("/fake/event0", grab=False, device=dev)
    d = src.description
    assert d.name == "Fake Tablet" and d.absinfo[e.ABS_X] == C.AbsInfo(0, 32767, 0, 0, 0)
    assert d.events[e.EV_LED] == {e.LED_CAPSL}
    got: list = []
    src._sink = got.extend
    raw = struct.Struct("llHHi")
    b.sendall(raw.pack(1, 2, e.EV_KEY, e.BTN_TOUCH, 1) + raw.pack(1, 2, e.EV_SYN, 0, 0))
    src._on_readable()
    assert got == [(e.EV_KEY, e.BTN_TOUCH, 1), (0, 0, 0)]
    src._on_readable()  # nothing pending: no blocking, no events
    assert len(got) == 2
    src.write_status([(e.EV_LED, e.LED_CAPSL, 1), (0, 0, 0)])
    assert [raw.unpack(b.recv(24))[2:] for _ in range(2)] == [(e.EV_LED, e.LED_CAPSL, 1), (0, 0, 0)]
    a.close()
    b.close()


def test_evdev_source_grab_and_enodev() -> None:
    from evdev import ecodes as e

    class Gone(FakeEvdev):
        fd = 99

        def read(self):
            raise OSError(errno.ENODEV, "No such device")

    dev = Gone({e.EV_KEY: [e.KEY_A]})
    src = EvdevSource("/dev/input/event7", device=dev)
    assert dev.grabbed
    src._sink = lambda evs: None
    with pytest.raises(SourceGone, match="input device /dev/input/event7 was removed"):
        src._on_readable()
    src.close()
    assert not dev.grabbed

    class Busy(FakeEvdev):
        def grab(self):
            raise OSError(errno.EBUSY, "Device or resource busy")

    with pytest.raises(Exception, match="can't grab the device: Device or resource busy.*--no-grab"):
        EvdevSource("/dev/input/event7", device=Busy({e.EV_KEY: [e.KEY_A]}))
    EvdevSource("/dev/input/event7", grab=False, device=Busy({e.EV_KEY: [e.KEY_A]}))


def test_virtual_source_parse_events() -> None:
    src = VirtualSource(C.builtin("tablet"), None)
    assert src.parse_events([["EV_ABS", "ABS_X", 5], [3, 1, -1], ["EV_SYN", "SYN_REPORT", 0]]) == [
        (3, 0, 5),
        (3, 1, -1),
        SYN,
    ]
    with pytest.raises(ValueError, match="has no"):
        src.parse_events([["EV_KEY", "KEY_A", 1]])
    with pytest.raises(ValueError, match="is not a number"):
        src.parse_events([[True, 0, 0]])
    assert describe(src.description)["events"]["3"]["0"]["max"] == 32767


def test_config_space_bounds_unit() -> None:
    cs = C.ConfigSpace(C.builtin("mouse"))
    assert len(cs.read(0, 136)) == 136 and cs.read(136, 0) == b""
    for off, size in ((-1, 1), (0, 137), (130, 7)):
        with pytest.raises(ValueError):
            cs.read(off, size)
    with pytest.raises(ValueError):
        cs.write(135, b"ab")
    cs.write(0, bytes([0x10]))
    assert cs.read(0, 9) == bytes([0x10, 0, 1, 0, 0, 0, 0, 0, 1])  # INPUT_PROP_POINTER


# -- real uinput devices ------------------------------------------------------------------------------

needs_uinput = pytest.mark.skipif(
    not os.access("/dev/uinput", os.W_OK), reason="needs a writable /dev/uinput (uinput module, root)"
)


@pytest.fixture
def uinput_tablet():
    from evdev import AbsInfo, UInput
    from evdev import ecodes as e

    caps = {
        e.EV_KEY: [e.BTN_TOUCH, e.BTN_LEFT, e.KEY_A],
        e.EV_ABS: [(e.ABS_X, AbsInfo(0, 0, 4095, 2, 3, 11)), (e.ABS_Y, AbsInfo(0, -50, 2047, 0, 0, 0))],
        e.EV_LED: [e.LED_CAPSL, e.LED_NUML],
        e.EV_MSC: [e.MSC_SCAN],
    }
    ui = UInput(caps, name="vhostsuite uinput test", vendor=0x1234, product=0x4321, version=7, input_props=[1])
    time.sleep(0.3)  # udev creates the node
    yield ui
    try:
        ui.close()
    except OSError:
        pass


@needs_uinput
def test_uinput_config_events_and_leds(spawn, uinput_tablet) -> None:
    from evdev import ecodes as e

    ui = uinput_tablet
    be, fe = spawn("vhost-user-input", f"--evdev-path={ui.device.path}")
    fe.initialize()
    evq, stq = fe.start([4, 4])
    fe.set_config(0, bytes([1, 0]))
    cfg = fe.get_config(0, 136)
    assert cfg[8 : 8 + cfg[2]] == b"vhostsuite uinput test"
    fe.set_config(0, bytes([3, 0]))
    assert struct.unpack_from("<4H", fe.get_config(0, 136), 8)[1:] == (0x1234, 0x4321, 7)
    fe.set_config(0, bytes([0x12, e.ABS_X]))
    assert struct.unpack_from("<5i", fe.get_config(0, 136), 8) == (0, 4095, 2, 3, 11)
    fe.set_config(0, bytes([0x11, e.EV_LED]))
    assert fe.get_config(0, 136)[8] == 0b11
    post(evq, 4)
    sent = []
    for i in range(30):
        ui.write(e.EV_ABS, e.ABS_X, i)
        ui.write(e.EV_KEY, e.KEY_A, i & 1)
        ui.syn()
        sent += [(e.EV_ABS, e.ABS_X, i), (e.EV_KEY, e.KEY_A, i & 1), SYN]
    got = read_events(evq, len(sent), repost=True)
    assert got == sent
    stq.add([EV.pack(e.EV_LED, e.LED_CAPSL, 1)], [])
    stq.add([EV.pack(0, 0, 0)], [])
    stq.kick()
    stq.wait_used(2)
    deadline = time.monotonic() + 5
    while e.LED_CAPSL not in ui.device.leds() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert e.LED_CAPSL in ui.device.leds()


@needs_uinput
def test_uinput_grabbed_and_removed(spawn, uinput_tablet) -> None:
    from evdev import InputDevice

    ui = uinput_tablet
    path = ui.device.path
    be, fe = spawn("vhost-user-input", f"--evdev-path={path}")
    fe.initialize()
    fe.start([4, 4])
    other = InputDevice(path)
    with pytest.raises(OSError):
        other.grab()  # we hold the grab
    other.close()
    ui.close()  # the device goes away
    assert be.wait(10) == 1
    assert f"input device {path} was removed" in be.stderr()


def test_code_names_prefer_real_names_to_aliases() -> None:
    assert C.code_name(C.EV_REP, 1) == "REP_PERIOD"  # not its alias REP_MAX
    assert C.code_name(C.EV_LED, 1) == "LED_CAPSL"
    assert C.code_name(C.EV_KEY, 30) == "KEY_A"


def test_deeply_nested_json_is_an_error_reply(virtual) -> None:
    be, fe, evq, stq, ctl = virtual("keyboard")
    depth = 100_000
    ctl.send_raw(b"[" * depth + b"]" * depth + b"\n")
    err = ctl.wait(lambda m: "error" in m)
    assert "nested too deeply" in err["error"]
    post(evq, 4)
    ctl.events([(1, 30, 1), SYN])  # the device was not touched
    assert read_events(evq, 2) == [(1, 30, 1), SYN]
    assert fe.get_status() & 0x40 == 0  # not NEEDS_RESET
    assert be.proc.poll() is None


def test_control_clients_are_capped(virtual, tmp_path: Path) -> None:
    from vhostsuite.devices.input.sources import MAX_CLIENTS

    be, fe, evq, stq, ctl = virtual("keyboard")
    path = str(tmp_path / "ctl-0.sock")
    more = [Control(path) for _ in range(MAX_CLIENTS - 1)]  # with ctl: the limit
    for c in more:
        assert "state" in c.request({"query": "state"})
    extra = Control(path)
    assert "too many control clients" in extra.wait(lambda m: "error" in m)["error"]
    with pytest.raises(EOFError):
        extra.wait(lambda m: False, timeout=2)
    more[0].close()
    time.sleep(0.1)
    again = Control(path)  # a place is free again
    assert "state" in again.request({"query": "state"})
    for c in [*more[1:], extra, again]:
        c.close()


def test_accept_without_fds_backs_off(virtual, tmp_path: Path) -> None:
    """Out of fds, the control socket rests instead of spinning on the queued connection, and
    serves it once fds are back."""
    import resource

    be, fe, evq, stq, ctl = virtual("keyboard")
    fds = len(os.listdir(f"/proc/{be.proc.pid}/fd"))
    soft, hard = resource.prlimit(be.proc.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(be.proc.pid, resource.RLIMIT_NOFILE, (fds, hard))
    cpu0 = _cpu(be.proc.pid)
    waiting = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    waiting.connect(str(tmp_path / "ctl-0.sock"))  # queued: accept() gets EMFILE
    time.sleep(2.5)
    assert _cpu(be.proc.pid) - cpu0 < 0.5, "the accept path spun"
    assert len([line for line in be.stderr().splitlines() if "accept failed" in line]) <= 4
    assert fe.get_features()  # the vhost-user socket is served meanwhile
    resource.prlimit(be.proc.pid, resource.RLIMIT_NOFILE, (soft, hard))
    waiting.sendall(json.dumps({"query": "state", "id": 1}).encode() + b"\n")
    waiting.settimeout(5)
    assert json.loads(waiting.recv(65536).splitlines()[0])["id"] == 1
    waiting.close()


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_the_event_code_constants_are_the_headers() -> None:
    """config's numbers (the built-in devices list codes by number) against python-evdev's
    names, which are generated from <linux/input-event-codes.h>."""
    ecodes = C._ecodes().ecodes
    prefixes = ("EV_", "SYN_", "REP_", "BUS_", "KEY_", "BTN_", "REL_", "ABS_", "MSC_", "LED_", "INPUT_PROP_")
    names = [n for n in vars(C) if n.startswith(prefixes) and n.isupper() and not n.endswith("_MAX")]
    assert len(names) > 30
    assert {n: getattr(C, n) for n in names} == {n: ecodes[n] for n in names}
