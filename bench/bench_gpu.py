"""vhost-user-gpu throughput: our back-end and QEMU's C ones driven alternately by the same
front-end in one run: QEMU 7.2's ``/usr/lib/qemu/vhost-user-gpu`` ("c") and, when ``make bench``
(or any e2e test) has provisioned the guest kit's Debian 13 tree, QEMU 10's from it ("c10").

(a) full frame: 1920x1080 B8G8R8X8, TRANSFER_TO_HOST_2D + RESOURCE_FLUSH per round (one kick),
    counted when the display side has received the whole UPDATE;
(b) small commands, 16 per kick: RESOURCE_FLUSH 1x1 of a resource that is not on a scanout, the
    same on the scanout (each one an UPDATE to the display side), GET_DISPLAY_INFO; and one
    GET_DISPLAY_INFO per kick (a round trip to the display that nothing can share).

The measured rounds run in a C front-end (cfrontend.c: the driver's side of the control queue,
with Linux's interrupt re-arming, and QEMU's display end), so neither back-end waits for our
Python test front-end. The rates are the best batch's and the median batch's of alternating
batches (15 of 100 rounds for small commands). Besides the rates, the CPU each side spent per command
(``/proc/PID/task/*/schedstat`` of the back-end, this process's own for the front-end, which
includes the display thread): a front-end that spends as much CPU per round as the round takes
is the bottleneck, and the ratio then says little.

Run: ``python -m pytest bench/bench_gpu.py -o python_files='bench_*.py' -s``. The rates and the
ratios ours/C go to ``benchmark.extra_info`` and are printed.
"""

from __future__ import annotations

import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pytest
from cfrontend import CRounds, GpuRig, available

from vhostsuite.devices.gpu import wire as W
from vhostsuite.testing import guest
from vhostsuite.testing.frontend_gpu import GpuDriver, hdr

ROOT = Path(__file__).resolve().parent.parent
C_GPU = "/usr/lib/qemu/vhost-user-gpu"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
W_, H_ = 1920, 1080
BGRX = W.VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM
OK = W.VIRTIO_GPU_RESP_OK_NODATA
DISPLAY_INFO = W.VIRTIO_GPU_RESP_OK_DISPLAY_INFO

BACKENDS = {
    "ours": [sys.executable, str(ROOT / "bin/vhost-user-gpu")],
    # the same without adaptive polling (on by default): what the spin buys, and what it costs in CPU
    "ours_sleep": [sys.executable, str(ROOT / "bin/vhost-user-gpu"), "--poll-max-us=0"],
}
if os.access(C_GPU, os.X_OK):
    BACKENDS["c"] = [C_GPU]
_TREE = guest.provisioned_qemu_tree()
if _TREE is not None and (_TREE / C_GPU.lstrip("/")).exists():
    BACKENDS["c10"] = guest.tree_program(_TREE, C_GPU)


class Rig(GpuRig):
    """One back-end, its display and a 1920x1080 scanout + a small off-screen resource; every
    measured round runs in the C front-end (:mod:`cfrontend`)."""

    def __init__(self, name: str, tmp: str, prefix: tuple[str, ...] = ()) -> None:
        """*prefix*: what runs the back-end (valgrind, for bench_gpu_instructions)."""
        self.name = name
        super().__init__([*prefix, *BACKENDS[name]], os.path.join(tmp, f"{name}.sock"), ENV, 64 << 20, W_, H_)
        frame = bytes(range(256)) * (W_ * H_ * 4 // 256)
        self.backing = self.drv.make_resource(1, BGRX, W_, H_, frame, scatter=True)
        assert self.drv.set_scanout(0, 1, 0, 0, W_, H_) == OK
        self.drv.make_resource(2, BGRX, 64, 64, bytes(64 * 64 * 4))
        ctrl = self.drv.ctrl
        transfer = GpuDriver.transfer_cmd(1, 0, 0, W_, H_, 0)
        flush = GpuDriver.flush_cmd(1, 0, 0, W_, H_)
        self.rounds = {
            "frame": (CRounds(ctrl, [(transfer, 24, OK), (flush, 24, OK)]), 1),
            "smalls": (CRounds(ctrl, [(GpuDriver.flush_cmd(2, 0, 0, 1, 1), 24, OK)] * 16), 0),
            "smalls_on_scanout": (CRounds(ctrl, [(GpuDriver.flush_cmd(1, 0, 0, 1, 1), 24, OK)] * 16), 16),
            "display_infos": (CRounds(ctrl, [(hdr(W.VIRTIO_GPU_CMD_GET_DISPLAY_INFO), 408, DISPLAY_INFO)] * 16), 0),
            "display_info": (CRounds(ctrl, [(hdr(W.VIRTIO_GPU_CMD_GET_DISPLAY_INFO), 408, DISPLAY_INFO)]), 0),
        }
        self.warm_up()


@pytest.fixture(scope="module")
def rigs():  # noqa: ANN201
    why = available()
    if why:
        pytest.skip(f"the C front-end can't be built: {why}")
    tmp = tempfile.mkdtemp(prefix="vhs-bench-gpu-")
    made = {name: Rig(name, tmp) for name in BACKENDS}
    yield made
    for r in made.values():
        r.close()


def _alternate(rigs: dict[str, Rig], op: str, per_batch: int, batches: int) -> dict[str, dict[str, float]]:
    """For each back-end, measured in alternating batches: the best batch's rounds per second
    and the median batch's (a round trip's wake-ups land on the same vCPU in some batches and
    cross to the other in others, which changes a small command's rate several times over:
    the best says what the back-end can do, the median what a run of them gives), and per
    round over all batches the back-end's and the front-end's CPU seconds and the interrupts
    the driver took (a back-end that notifies per command interrupts it more)."""
    out = {name: {"rate": 0.0, "backend_cpu": 0.0, "frontend_cpu": 0.0, "interrupts": 0.0} for name in rigs}
    rates: dict[str, list[float]] = {name: [] for name in rigs}
    for _ in range(batches):
        for name, rig in rigs.items():
            ring = rig.rounds[op][0].ring
            b0, f0, i0 = rig.cpu_seconds(), time.process_time(), ring.interrupts
            t0 = time.perf_counter()
            rig.run(op, per_batch)
            took = time.perf_counter() - t0
            out[name]["backend_cpu"] += rig.cpu_seconds() - b0
            out[name]["frontend_cpu"] += time.process_time() - f0
            out[name]["interrupts"] += ring.interrupts - i0
            out[name]["rate"] = max(out[name]["rate"], per_batch / took)
            rates[name].append(per_batch / took)
    for name, m in out.items():
        m["median_rate"] = statistics.median(rates[name])
        for key in ("backend_cpu", "frontend_cpu", "interrupts"):
            m[key] /= per_batch * batches
    return out


def _record(benchmark, what: str, unit: str, runs: dict[str, dict[str, float]], target: float,  # noqa: ANN001
            per_round: int = 1) -> None:  # fmt: skip
    """Rates in *unit* (*per_round* of them per round), CPU in us per unit, and the ratio ours/C."""
    lines = [f"\n[{what}]"]
    for name, m in runs.items():
        rate, be, fe = m["rate"] * per_round, m["backend_cpu"] / per_round * 1e6, m["frontend_cpu"] / per_round * 1e6
        benchmark.extra_info[f"{name}_{unit}"] = round(rate, 1)
        benchmark.extra_info[f"{name}_backend_cpu_us"] = round(be, 2)
        benchmark.extra_info[f"{name}_frontend_cpu_us"] = round(fe, 2)
        benchmark.extra_info[f"{name}_interrupts_per_round"] = round(m["interrupts"], 2)
        median = m["median_rate"] * per_round
        benchmark.extra_info[f"{name}_{unit}_median"] = round(median, 1)
        lines.append(f"  {name}: {rate:,.1f} {unit} (median batch {median:,.1f}); CPU per unit: "
                     f"back-end {be:.2f} us, front-end {fe:.2f} us (wall {1e6 / rate:.2f} us); "
                     f"{m['interrupts']:.2f} interrupts per round")  # fmt: skip
    benchmark.extra_info["target_ratio"] = target
    for ours, c in itertools.product(("ours", "ours_sleep"), ("c", "c10")):
        if ours not in runs or c not in runs or runs[c]["rate"] <= 0:
            continue
        ratio = runs[ours]["rate"] / runs[c]["rate"]
        median = runs[ours]["median_rate"] / runs[c]["median_rate"]
        cpu = runs[ours]["backend_cpu"] / runs[c]["backend_cpu"] if runs[c]["backend_cpu"] else float("nan")
        benchmark.extra_info[f"ratio_{ours}_{c}"] = round(ratio, 3)
        benchmark.extra_info[f"median_ratio_{ours}_{c}"] = round(median, 3)
        benchmark.extra_info[f"backend_cpu_ratio_{ours}_{c}"] = round(cpu, 3)
        goal = f" (target >= {target})" if ours == "ours" else ""
        lines.append(f"  ratio {ours}/{c} = {ratio:.2f}{goal}, of the median batches {median:.2f}; "
                     f"back-end CPU {ours}/{c} = {cpu:.2f}")  # fmt: skip
    print("\n".join(lines))


@pytest.mark.benchmark(group="gpu-full-frame")
def test_full_frame_transfer_flush(benchmark, rigs) -> None:  # noqa: ANN001
    runs = _alternate(rigs, "frame", per_batch=40, batches=5)  # long enough to be past each switch's cold caches
    _record(benchmark, "1920x1080 TRANSFER+FLUSH -> UPDATE received", "frames_per_s", runs, 1.5)
    benchmark.extra_info["mbytes_per_frame"] = round(W_ * H_ * 4 / 1e6, 2)
    benchmark.pedantic(rigs["ours"].run, ("frame", 1), rounds=20, iterations=1)


@pytest.mark.benchmark(group="gpu-small-commands")
@pytest.mark.parametrize("op, what", [
    ("smalls", "1x1 RESOURCE_FLUSH off-scanout, 16 per kick"),
    ("smalls_on_scanout", "1x1 RESOURCE_FLUSH on the scanout (an UPDATE each), 16 per kick"),
    ("display_infos", "GET_DISPLAY_INFO, 16 per kick"),
    ("display_info", "GET_DISPLAY_INFO, 1 per kick"),
])  # fmt: skip
def test_small_commands(benchmark, rigs, op: str, what: str) -> None:  # noqa: ANN001
    per_round = len(rigs["ours"].rounds[op][0].chains)
    runs = _alternate(rigs, op, per_batch=1600 // per_round, batches=15)
    _record(benchmark, what, "commands_per_s", runs, 1.0, per_round=per_round)
    benchmark.pedantic(rigs["ours"].run, (op, 1), rounds=200, iterations=1)
