"""A guest that keeps every queue busy can't freeze a back-end.

A hostile driver thread keeps each queue's avail index a full queue ahead of what the device
has used, re-publishing one chain over and over and kicking continuously, for
:data:`SECONDS`. Meanwhile the front-end sends vhost-user requests back to back and times
each answer, and finally stops every ring (GET_VRING_BASE) while the flood goes on. Every
answer must come within :data:`BOUND` (generous: the back-end yields to its socket after at
most one budget of chains per queue, well under a millisecond of work), and every queue
must keep being served in every second of the flood. The measured maximum is printed.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable

from vhostsuite.core import protocol as P
from vhostsuite.devices.gpu import wire as W
from vhostsuite.testing.frontend import DriverQueue, Frontend
from vhostsuite.testing.frontend_gpu import DisplayProcess, GpuDriver, hdr, open_gpu

SECONDS = 10.0
BOUND = 0.100



class Flood(threading.Thread):
    """The hostile driver: *queues* are (queue, head of a chain made once) pairs."""

    def __init__(self, queues: list[tuple[DriverQueue, int]]) -> None:
        super().__init__(name="flood", daemon=True)
        self.queues = queues
        self.done = threading.Event()
        self.published = 0

    def run(self) -> None:
        while not self.done.is_set():
            for q, head in self.queues:
                used = q.used_idx()
                while (q.avail_idx - used) & 0xFFFF < q.num:
                    q.publish(head)
                    self.published += 1
                q.kick()
            time.sleep(0)  # let the front-end's thread have the GIL when it has an answer to read

    def stop(self) -> None:
        self.done.set()
        self.join(5)


class Progress:
    """Used-index advance of each queue, by whole second of the flood."""

    def __init__(self, queues: list[DriverQueue]) -> None:
        self.queues = queues
        self.start = time.monotonic()
        self.last = [q.used_idx() for q in queues]
        self.per_second: list[list[int]] = [[0] * len(queues)]

    def sample(self) -> None:
        second = int(time.monotonic() - self.start)
        while len(self.per_second) <= second:
            self.per_second.append([0] * len(self.queues))
        for i, q in enumerate(self.queues):
            now = q.used_idx()
            self.per_second[second][i] += (now - self.last[i]) & 0xFFFF
            self.last[i] = now


def _hammer(fe: Frontend, queues: list[DriverQueue], requests: list[Callable[[], object]]) -> tuple[float, Progress]:
    """Send *requests* round robin for SECONDS, then stop the rings; the slowest answer."""
    progress = Progress(queues)
    worst = 0.0
    deadline = time.monotonic() + SECONDS
    i = 0
    while time.monotonic() < deadline:
        t0 = time.perf_counter()
        requests[i % len(requests)]()
        worst = max(worst, time.perf_counter() - t0)
        i += 1
        progress.sample()
    for q in queues:
        t0 = time.perf_counter()
        fe.get_vring_base(q.index)
        worst = max(worst, time.perf_counter() - t0)
    return worst, progress


def _check(name: str, worst: float, progress: Progress, flood: Flood) -> None:
    full = progress.per_second[: int(SECONDS)]
    totals = [sum(s[i] for s in full) for i in range(len(progress.queues))]
    print(
        f"\n{name}: slowest vhost-user answer {worst * 1000:.1f} ms under a flood of {flood.published} "
        f"re-published chains; used per queue {totals} in {SECONDS:.0f} s"
    )
    assert worst < BOUND, f"{name}: a vhost-user request waited {worst * 1000:.1f} ms"
    for second, counts in enumerate(full):
        assert all(counts), f"{name}: in second {second} of the flood a queue was not served: {counts}"


def _common_requests(fe: Frontend) -> list[Callable[[], object]]:
    return [
        fe.get_features,
        fe.get_protocol_features,
        fe.get_status,
        lambda: fe.get_u64(P.Request.GET_QUEUE_NUM),
    ]


def test_rng_flood(spawn) -> None:
    be, fe = spawn("vhost-user-rng")
    fe.initialize()
    (q,) = fe.start([256])
    flood = Flood([(q, q.add([], [512]))])
    flood.start()
    try:
        worst, progress = _hammer(fe, [q], _common_requests(fe))
    finally:
        flood.stop()
    _check("rng", worst, progress, flood)
    assert be.proc.poll() is None


def test_gpu_flood(spawn) -> None:
    be, fe = spawn("vhost-user-gpu")
    with DisplayProcess() as display:  # QEMU's display is a process of its own
        drv = open_gpu(fe, display, sizes=(256, 256))
        assert drv.create_2d(1, W.VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 8, 8) == W.VIRTIO_GPU_RESP_OK_NODATA
        # control: a 1x1 flush of an off-screen resource; cursor: moves (each one a display message)
        ctrl_head = drv.ctrl.add([GpuDriver.flush_cmd(1, 0, 0, 1, 1)], [24])
        move = hdr(W.VIRTIO_GPU_CMD_MOVE_CURSOR) + W.UPDATE_CURSOR.pack(0, 5, 5, 0, 1, 0, 0, 0)
        cursor_head = drv.cursor.add([move], [])
        flood = Flood([(drv.ctrl, ctrl_head), (drv.cursor, cursor_head)])
        flood.start()
        try:
            config = lambda: fe.get_config(0, W.CONFIG.size)  # noqa: E731
            worst, progress = _hammer(fe, [drv.ctrl, drv.cursor], [*_common_requests(fe), config])
        finally:
            flood.stop()
    _check("gpu", worst, progress, flood)
    assert be.proc.poll() is None


def test_input_flood(spawn, tmp_path) -> None:
    ctl = tmp_path / "kbd.ctl"
    be, fe = spawn("vhost-user-input", "--virtual=keyboard", f"--control-socket={ctl}")
    fe.initialize()
    event_q, status_q = fe.start([64, 64])
    # event queue: empty 8-byte buffers, filled as the control socket sends key events;
    # status queue: the MSC_SCAN echo a Linux guest sends back for every key (ignored by the device)
    msc = (4).to_bytes(2, "little") + (4).to_bytes(2, "little") + (30).to_bytes(4, "little")
    flood = Flood([(event_q, event_q.add([], [8])), (status_q, status_q.add([msc], []))])
    feeding = threading.Event()

    def feed() -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(ctl))
            press = [json.dumps({"events": [["EV_KEY", "KEY_A", v]], "syn": True}).encode() + b"\n" for v in (1, 0)]
            while not feeding.is_set():
                s.sendall(press[0] + press[1])
                time.sleep(0.0005)

    feeder = threading.Thread(target=feed, daemon=True)
    flood.start()
    feeder.start()
    try:
        config = lambda: fe.get_config(0, 8)  # noqa: E731
        worst, progress = _hammer(fe, [event_q, status_q], [*_common_requests(fe), config])
    finally:
        feeding.set()
        flood.stop()
        feeder.join(5)
    _check("input", worst, progress, flood)
    assert be.proc.poll() is None
