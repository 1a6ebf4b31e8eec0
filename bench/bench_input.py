"""vhost-user-input benchmarks: event throughput and single-event latency.

The real program (bin/vhost-user-input --virtual=keyboard) is driven by the package's
front-end over a real socket; events enter through the control socket (JSON lines), so the
figures include JSON parsing in the back-end and the front-end's Python driver loop.

* throughput: 20,000 events (batches of KEY + MSC_SCAN + SYN_REPORT, 1,000 events per control
  line) from the control socket to the used ring of a 256-entry event queue whose buffers the
  driver returns as they are used; events/s in ``extra_info``.
* latency: one event + SYN_REPORT written to the control socket -> the event queue's call
  eventfd fires; median and 99th percentile over 1,000 samples, in ``extra_info``.

Run: ``python -m pytest bench/bench_input.py --benchmark-only -s``.
"""

from __future__ import annotations

import json
import os
import select
import socket
import statistics
import struct
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from vhostsuite.testing.backend import Backend, program  # noqa: E402
from vhostsuite.testing.frontend import Frontend  # noqa: E402

EV = struct.Struct("<HHi")
QUEUE_SIZE = 256


@pytest.fixture
def rig(tmp_path: Path):
    sock = tmp_path / "in.sock"
    ctl_path = tmp_path / "ctl.sock"
    be = Backend(
        [
            *program("vhost-user-input"),
            f"--socket-path={sock}",
            "--virtual=keyboard",
            f"--control-socket={ctl_path}",
            "--max-pending=1000000",
        ],
        tmp_path,
    )
    fe = Frontend.connect(str(sock))
    fe.initialize()
    evq, stq = fe.start([QUEUE_SIZE, 64])
    for _ in range(QUEUE_SIZE):
        evq.add([], [EV.size])
    evq.kick()
    ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ctl.connect(str(ctl_path))
    yield be, fe, evq, ctl
    ctl.close()
    fe.close()
    be.stop()


def _drain(evq, n: int, timeout: float = 30.0) -> list:
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < n:
        used = evq.poll_used()
        if used:
            got += used
            for _ in used:
                evq.add([], [EV.size])
            evq.kick()
        else:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(got)} of {n} events")
            select.select([evq.call_fd], [], [], 0.05)
            try:
                os.read(evq.call_fd, 8)
            except BlockingIOError:
                pass
    return got


def test_input_throughput(benchmark, rig) -> None:
    be, fe, evq, ctl = rig
    total = 20_000
    lines = []
    seq = 0
    while seq * 3 < total:
        events = []
        for _ in range(1000 // 3 + 1):
            if seq * 3 >= total:
                break
            events += [[1, 30, seq & 1], [4, 4, seq], [0, 0, 0]]
            seq += 1
        lines.append(json.dumps({"events": events}).encode() + b"\n")
    n_events = seq * 3
    rates: list[float] = []

    def run() -> None:
        t0 = time.perf_counter()
        for line in lines:
            ctl.sendall(line)
        got = _drain(evq, n_events)
        rates.append(n_events / (time.perf_counter() - t0))
        assert len(got) == n_events

    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    best = max(rates)
    med = statistics.median(rates)
    benchmark.extra_info.update({"events": n_events, "events_per_s_median": med, "events_per_s_best": best})
    print(f"\ninput throughput: {med:,.0f} events/s median, {best:,.0f} best ({n_events} events per round)")


def test_input_latency(benchmark, rig) -> None:
    be, fe, evq, ctl = rig
    line_on = json.dumps({"events": [[1, 30, 1]], "syn": True}).encode() + b"\n"
    line_off = json.dumps({"events": [[1, 30, 0]], "syn": True}).encode() + b"\n"
    samples: list[float] = []
    state = {"i": 0}

    def one() -> None:
        line = line_on if state["i"] % 2 == 0 else line_off
        state["i"] += 1
        t0 = time.perf_counter_ns()
        ctl.sendall(line)
        r, _, _ = select.select([evq.call_fd], [], [], 5)
        t1 = time.perf_counter_ns()
        assert r, "no interrupt"
        os.read(evq.call_fd, 8)
        samples.append((t1 - t0) / 1000)
        _drain(evq, 2)

    benchmark.pedantic(one, rounds=1000, iterations=1, warmup_rounds=20)
    samples.sort()
    med = statistics.median(samples)
    p99 = samples[int(len(samples) * 0.99) - 1]
    benchmark.extra_info.update({"latency_us_median": med, "latency_us_p99": p99, "samples": len(samples)})
    print(f"\ninput latency (control socket write -> call eventfd): median {med:.1f} us, p99 {p99:.1f} us")
