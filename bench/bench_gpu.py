"""vhost-user-gpu throughput: our back-end and QEMU's C one (/usr/lib/qemu/vhost-user-gpu) driven
alternately by the same front-end in one run.

(a) full frame: 1920x1080 B8G8R8X8, TRANSFER_TO_HOST_2D + RESOURCE_FLUSH per round (one kick),
    counted when the display side (frontend_gpu.GpuDisplay) has received the whole UPDATE;
(b) small commands: 16 RESOURCE_FLUSH 1x1 of a resource that is not on a scanout per kick.

Run: ``python -m pytest bench/bench_gpu.py -o python_files='bench_*.py' -s``. The rates and the
ratios ours/C go to ``benchmark.extra_info`` and are printed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from vhostsuite.devices.gpu import wire as W
from vhostsuite.testing.frontend import Frontend, GuestRam
from vhostsuite.testing.frontend_gpu import GpuDisplay, GpuDriver, open_gpu

ROOT = Path(__file__).resolve().parent.parent
C_GPU = "/usr/lib/qemu/vhost-user-gpu"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
W_, H_ = 1920, 1080
BGRX = W.VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM
OK = W.VIRTIO_GPU_RESP_OK_NODATA

BACKENDS = {"ours": [sys.executable, str(ROOT / "bin/vhost-user-gpu")]}
if os.access(C_GPU, os.X_OK):
    BACKENDS["c"] = [C_GPU]


class Rig:
    """One back-end process, its front-end, display and a 1920x1080 scanout + a small off-screen resource."""

    def __init__(self, name: str, tmp: str) -> None:
        self.name = name
        path = os.path.join(tmp, f"{name}.sock")
        self.proc = subprocess.Popen([*BACKENDS[name], f"--socket-path={path}"], env=ENV, stderr=subprocess.DEVNULL)
        self.fe = Frontend.connect(path, timeout=10, ram=GuestRam(64 << 20))
        self.display = GpuDisplay(outputs=[(W_, H_)], keep_images=False)
        self.drv: GpuDriver = open_gpu(self.fe, self.display)
        self.drv.timeout = 10
        frame = bytes(range(256)) * (W_ * H_ * 4 // 256)
        self.backing = self.drv.make_resource(1, BGRX, W_, H_, frame, scatter=True)
        assert self.drv.set_scanout(0, 1, 0, 0, W_, H_) == OK
        self.drv.make_resource(2, BGRX, 64, 64, bytes(64 * 64 * 4))
        self.transfer = GpuDriver.transfer_cmd(1, 0, 0, W_, H_, 0)
        self.flush = GpuDriver.flush_cmd(1, 0, 0, W_, H_)
        self.small = GpuDriver.flush_cmd(2, 0, 0, 1, 1)
        self.frame()  # warm up
        self.smalls()

    def frame(self) -> None:
        want = self.display.updates + 1
        self.drv.submit(self.transfer)
        self.drv.submit(self.flush)
        self.drv.ctrl.kick()
        used = self.drv.ctrl.wait_used(2, 10)
        assert all(u.data[:4] == OK.to_bytes(4, "little") for u in used)
        self.display.wait_updates(want, 10)

    def smalls(self) -> None:
        for _ in range(16):
            self.drv.submit(self.small)
        self.drv.ctrl.kick()
        self.drv.ctrl.wait_used(16, 10)

    def close(self) -> None:
        self.display.close()
        self.fe.close()
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def rigs():  # noqa: ANN201
    tmp = tempfile.mkdtemp(prefix="vhs-bench-gpu-")
    made = {name: Rig(name, tmp) for name in BACKENDS}
    yield made
    for r in made.values():
        r.close()


def _alternate(rigs: dict[str, Rig], op: str, per_batch: int, batches: int) -> dict[str, float]:
    """Rounds per second of *op* for each back-end, measured in alternating batches (best batch)."""
    best = {name: 0.0 for name in rigs}
    for _ in range(batches):
        for name, rig in rigs.items():
            fn = getattr(rig, op)
            t0 = time.perf_counter()
            for _ in range(per_batch):
                fn()
            rate = per_batch / (time.perf_counter() - t0)
            best[name] = max(best[name], rate)
    return best


def _record(benchmark, what: str, unit: str, rates: dict[str, float], target: float) -> None:  # noqa: ANN001
    for name, rate in rates.items():
        benchmark.extra_info[f"{name}_{unit}"] = round(rate, 1)
    line = f"\n[{what}] " + ", ".join(f"{n}: {r:,.1f} {unit}" for n, r in rates.items())
    if "c" in rates and rates["c"] > 0:
        ratio = rates["ours"] / rates["c"]
        benchmark.extra_info["ratio_ours_c"] = round(ratio, 3)
        benchmark.extra_info["target_ratio"] = target
        line += f"  ratio ours/C = {ratio:.2f} (target >= {target})"
    print(line)


@pytest.mark.benchmark(group="gpu-full-frame")
def test_full_frame_transfer_flush(benchmark, rigs) -> None:  # noqa: ANN001
    rates = _alternate(rigs, "frame", per_batch=10, batches=5)
    _record(benchmark, "1920x1080 TRANSFER+FLUSH -> UPDATE received", "frames_per_s", rates, 1.0)
    benchmark.extra_info["mbytes_per_frame"] = round(W_ * H_ * 4 / 1e6, 2)
    benchmark.pedantic(rigs["ours"].frame, rounds=20, iterations=1)


@pytest.mark.benchmark(group="gpu-small-commands")
def test_small_flush_commands(benchmark, rigs) -> None:  # noqa: ANN001
    rates = _alternate(rigs, "smalls", per_batch=100, batches=5)
    cmds = {n: r * 16 for n, r in rates.items()}
    _record(benchmark, "1x1 RESOURCE_FLUSH off-scanout, 16 per kick", "commands_per_s", cmds, 0.5)
    benchmark.pedantic(rigs["ours"].smalls, rounds=200, iterations=1)
