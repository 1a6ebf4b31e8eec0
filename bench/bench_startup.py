"""Start-up time to listening, --print-capabilities time, and idle RSS of each launcher,
with QEMU's C vhost-user-gpu measured in the same run for comparison."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from vhostsuite.testing.frontend import Frontend

ROOT = Path(__file__).resolve().parent.parent
C_GPU = "/usr/lib/qemu/vhost-user-gpu"
PROGRAMS = {
    "rng": [sys.executable, str(ROOT / "bin/vhost-user-rng")],
    "input": [sys.executable, str(ROOT / "bin/vhost-user-input"), "--virtual=keyboard"],
    "gpu": [sys.executable, str(ROOT / "bin/vhost-user-gpu")],
}
if os.access(C_GPU, os.X_OK):
    PROGRAMS["qemu-c-gpu"] = [C_GPU]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _start(argv: list[str], path: str) -> tuple[subprocess.Popen, float]:
    t0 = time.perf_counter()
    proc = subprocess.Popen([*argv, f"--socket-path={path}"], env=ENV, stderr=subprocess.DEVNULL)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    while True:
        try:
            s.connect(path)
            break
        except (FileNotFoundError, ConnectionRefusedError):
            if proc.poll() is not None or time.perf_counter() - t0 > 10:
                raise RuntimeError(f"{argv} did not listen") from None
            time.sleep(0.0005)
    took = time.perf_counter() - t0
    s.close()
    return proc, took


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_startup_to_listening(benchmark, name):
    tmp = tempfile.mkdtemp()
    path = os.path.join(tmp, "s.sock")
    times = []

    def once() -> None:
        proc, took = _start(PROGRAMS[name], path)
        times.append(took)
        proc.kill()
        proc.wait()
        if os.path.exists(path):
            os.unlink(path)

    benchmark.group = "start-up to listening"
    benchmark.pedantic(once, rounds=10, iterations=1)
    benchmark.extra_info["median_ms"] = round(1000 * sorted(times)[len(times) // 2], 1)
    shutil.rmtree(tmp)


@pytest.mark.parametrize("flags", [[], ["-S"]], ids=["site", "no-site"])
def test_interpreter_alone(benchmark, flags):
    """The floor under every figure above and below: the interpreter starting and doing nothing,
    with and without site (which, on some hosts, runs .pth files: tens of ms)."""
    argv = [sys.executable, *flags, "-c", "pass"]
    benchmark.group = "--print-capabilities"
    benchmark.pedantic(lambda: subprocess.run(argv, env=ENV, check=True), rounds=10, iterations=1)


@pytest.mark.parametrize("name", sorted(n for n in PROGRAMS if n != "qemu-c-gpu"))
def test_print_capabilities(benchmark, name):
    argv = [*PROGRAMS[name][:2], "--print-capabilities"]

    def once() -> None:
        subprocess.run(argv, env=ENV, check=True, capture_output=True)

    benchmark.group = "--print-capabilities"
    benchmark.pedantic(once, rounds=10, iterations=1)


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_idle_rss(benchmark, name):
    """RSS of each back-end idle with a front-end connected; the timed part is one message round trip."""
    tmp = tempfile.mkdtemp()
    path = os.path.join(tmp, "s.sock")
    proc = subprocess.Popen([*PROGRAMS[name], f"--socket-path={path}"], env=ENV, stderr=subprocess.DEVNULL)
    try:
        with Frontend.connect(path) as fe:
            fe.get_protocol_features()
            benchmark.group = "idle back-end: GET_FEATURES round trip (RSS in extra_info)"
            benchmark.pedantic(fe.get_features, rounds=200, iterations=1)
            time.sleep(0.1)
            rss = _rss_kib(proc.pid)
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(tmp)
    benchmark.extra_info["rss_kib"] = rss
    print(f"\nidle RSS of {name} with a front-end connected: {rss / 1024:.1f} MiB")
    assert rss > 0
