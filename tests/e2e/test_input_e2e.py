"""vhost-user-input served to a real Linux guest by a real QEMU (TCG, vhost-user-input-pci).

The guest program ``input-test`` (vhostsuite/testing/guest_src/input-test.c) prints what the
guest's evdev node says about the device and every event it reads. We check it against the
device description, send events on the control socket (in order, batches of 10 through
QEMU's 4-entry event queue, a burst of 2,000) and check the LED the guest sets reaches the
control socket.

The guest's input core shapes the stream it hands to evdev readers, and the expected
events model that (:func:`guest_view`): a packet longer than the device's
``hint_events_per_packet`` is split with a synthetic SYN_REPORT (value 1), and a SYN_REPORT with no
events before it is not passed on.
"""

from __future__ import annotations

import re
import time

import pytest

from tests.conftest import Backend, program
from tests.test_input import Control
from vhostsuite.devices.input import config as C

pytestmark = pytest.mark.e2e

SYN = (0, 0, 0)
KEY_SAFE = [*range(16, 26), *range(30, 39), *range(44, 51)]  # letters only: no modifiers or locks
MSC_SCAN = 4


def hint_events_per_packet(desc: C.Description) -> int:
    """Linux input_estimate_events_per_packet() for a device without multitouch slots."""
    return 1 + len(desc.events.get(C.EV_ABS, ())) + len(desc.events.get(C.EV_REL, ())) + 7


def guest_view(events: list[tuple[int, int, int]], hint: int) -> list[tuple[int, int, int]]:
    out = []
    n = 0
    for ev in events:
        if ev[:2] == (0, 0):
            if n:
                out.append(SYN)
            n = 0
            continue
        out.append(ev)
        n += 1
        if n >= hint:
            out.append((0, 0, 1))  # input_value_sync: the input core's own SYN_REPORT has value 1
            n = 0
    return out


def keyboard_phases() -> list[list[list[tuple[int, int, int]]]]:
    a = [
        [(1, 30, 1), (MSC_SCAN, 4, 30), SYN],
        [(1, 30, 0), SYN],
        [(MSC_SCAN, 4, -7), SYN],
        [(MSC_SCAN, 4, 2**31 - 1), SYN],
        [(1, 16, 1), (1, 17, 1), SYN],
        [(1, 16, 0), (1, 17, 0), SYN],
    ]
    b = []
    for i in range(20):
        batch = []
        for j, key in enumerate(KEY_SAFE[:5]):
            batch += [(1, key, 1 - i % 2), (MSC_SCAN, 4, i * 100 + j)]
        b.append(batch + [SYN])  # 10 events, then one SYN_REPORT
    burst = []
    for i in range(400):
        key = KEY_SAFE[i % len(KEY_SAFE)]
        burst += [(1, key, 1), (MSC_SCAN, 4, 10000 + i), SYN, (1, key, 0), SYN]
    assert len(burst) == 2000
    return [a, b, [burst]]


def tablet_phases() -> list[list[list[tuple[int, int, int]]]]:
    a = [
        [(3, 0, 100), (3, 1, 200), (1, 272, 1), SYN],
        [(1, 272, 0), SYN],
        [(2, 8, -1), SYN],
        [(3, 0, 32767), (3, 1, 0), SYN],
    ]
    b = []
    for i in range(20):
        batch = []
        for j in range(5):
            batch += [(3, 0, 1000 + i * 10 + j), (3, 1, 5000 + i * 10 + j)]
        b.append(batch + [SYN])
    burst = []
    for i in range(500):
        burst += [(3, 0, 10000 + i), (3, 1, 20000 + i), (2, 8, 1 if i % 2 else -1), SYN]
    assert len(burst) == 2000
    return [a, b, [burst]]


def parse_guest(out: str) -> dict:
    info: dict = {"evbits": {}, "abs": {}}
    info["name"] = re.search(r"^INPUT_NAME=(.*)$", out, re.M)[1]
    info["uniq"] = re.search(r"^INPUT_UNIQ=(.*)$", out, re.M)[1]
    info["ids"] = tuple(int(x, 16) for x in re.search(r"^INPUT_ID=(.*)$", out, re.M)[1].split())
    info["props"] = bytes.fromhex(re.search(r"^INPUT_PROPS=([0-9a-f]*)$", out, re.M)[1])
    for m in re.finditer(r"^INPUT_EVBITS (\d+) ([0-9a-f]*)$", out, re.M):
        info["evbits"][int(m[1])] = bytes.fromhex(m[2])
    for m in re.finditer(r"^INPUT_ABS (\d+) (-?\d+) (-?\d+) (-?\d+) (-?\d+) (-?\d+)$", out, re.M):
        info["abs"][int(m[1])] = C.AbsInfo(*(int(x) for x in m.groups()[1:]))
    info["events"] = [tuple(int(x) for x in m.groups()) for m in re.finditer(r"^EV (\d+) (\d+) (-?\d+)$", out, re.M)]
    return info


def check_description(info: dict, desc: C.Description) -> None:
    assert info["name"] == desc.name
    assert info["uniq"] == desc.serial
    assert info["ids"] == desc.ids
    assert info["props"] == C.bitmap(desc.props)
    assert info["evbits"][0] == C.bitmap({C.EV_SYN, *desc.events})
    for t, codes in desc.events.items():
        if t == C.EV_REP:
            continue  # evdev has no code bitmap for EV_REP; its type bit is checked above
        assert info["evbits"][t] == C.bitmap(codes), f"type {t:#x}"
    assert info["abs"] == desc.absinfo


@pytest.mark.parametrize("kind", ["keyboard", "tablet"])
def test_virtual_device_in_guest(vm_factory, tmp_path, kind: str) -> None:
    desc = C.builtin(kind)
    phases = keyboard_phases() if kind == "keyboard" else tablet_phases()
    sent = [ev for phase in phases for batch in phase for ev in batch]
    expected = guest_view(sent, hint_events_per_packet(desc))

    sock = tmp_path / "input.sock"
    ctl_path = tmp_path / "ctl.sock"
    be = Backend(
        [*program("vhost-user-input"), f"--socket-path={sock}", f"--virtual={kind}", f"--control-socket={ctl_path}"],
        tmp_path,
    )
    ctl = None
    try:
        be.wait_listening(sock)
        vm = vm_factory(
            "input-test",
            ["-chardev", f"socket,id=in0,path={sock}", "-device", "vhost-user-input-pci,chardev=in0"],
            cmdline_extra=f"vhs.input_events={len(expected)} vhs.input_timeout=400"
            " vhs.input_idle=10"
            " vhs.input_linger=10",
        )
        ctl = Control(str(ctl_path))
        vm.wait_for(r"^INPUT_READY", timeout=300)
        out = vm.serial_text()
        assert "VHS-INSMOD-FAIL" not in out, out
        check_description(parse_guest(out), desc)

        if C.EV_LED in desc.events:
            assert re.search(r"^INPUT_LED_SET 1$", out, re.M), out
            led = ctl.wait(lambda m: m.get("status", [None])[0] == C.EV_LED, timeout=30)
            assert led == {"status": [C.EV_LED, 1, 1], "names": ["EV_LED", "LED_CAPSL"]}
            assert ctl.state()["leds"] == {"LED_CAPSL": 1}

        # Order, values and 10-event batches: one control line every 20 ms, which a Linux guest
        # under TCG reads without overflowing its evdev client buffer.
        for phase in phases[:2]:
            for batch in phase:
                reply = ctl.events(batch)
                assert reply.get("ok") is True, reply
                time.sleep(0.02)
        # The burst: 2,000 events in one line, which the back-end queues and feeds through QEMU's
        # 4-entry queue as the guest returns buffers.
        (burst,) = phases[2]
        assert ctl.events(burst).get("ok") is True

        vm.wait_for(r"^(INPUT_EVENTS_DONE|INPUT_TIMEOUT)", timeout=600)
        state = ctl.state()  # the guest lingers 10 s: the back-end is still up
        done = vm.wait_for(r"^VHS-DONE rc=(\d+)", timeout=60)
        out = vm.serial_text()
        got = parse_guest(out)["events"]
        hint = hint_events_per_packet(desc)
        head = guest_view([ev for phase in phases[:2] for batch in phase for ev in batch], hint)
        for i, (g, e) in enumerate(zip(got, head, strict=False)):
            assert g == e, f"event {i}: guest read {g}, expected {e}; context {got[max(0, i - 5) : i + 5]}"
        # The back-end delivered every event, in order, to the guest driver.
        assert state["dropped"] == 0 and state["overflows"] == 0 and state["pending"] == 0, state
        assert state["delivered"] == len(sent)
        # The burst arrives in the guest whole and in order: nothing lost anywhere.
        tail = got[len(head) :]
        want_tail = guest_view(burst, hint)
        lost = sum(1 for ev in tail if ev == (0, 3, 0))
        print(f"burst: guest reader saw {len(tail) - lost} of {len(want_tail)} events, guest evdev overflows: {lost}")
        assert lost == 0 and tail == want_tail
        assert done[1] == "0", out
        assert vm.wait_exit(60) == 0
        assert be.wait(10) == 0, be.stderr()
    finally:
        if ctl is not None:
            ctl.close()
        be.stop()
