"""vhost-user-gpu: user-space instructions per command, ours and QEMU's C back-ends, counted by
callgrind: a figure that does not move with the machine's load, where the rates of
bench_gpu.py swing by tens of percent from run to run on a shared 2-vCPU machine.

Each back-end runs under ``valgrind --tool=callgrind`` with counting off; after the set-up and
a warm-up, counting is switched on (``callgrind_control -i on``) for the measured rounds only,
then off, so the figure is the steady state of that workload: the Python interpreter, our
compiled ring and the C libraries, not the kernel (system calls and wake-ups are not
counted: bench_gpu.py reports the CPU time they cost). Ours runs without adaptive polling
(``ours_sleep``, reported as ours): a spin's instructions count how long it waited, not the
work. Same rounds and front-end as bench_gpu.py. About 20 s per back-end and workload.

Run: ``python -m pytest bench/bench_gpu_instructions.py -o python_files='bench_*.py' -s``.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from bench_gpu import BACKENDS, Rig
from cfrontend import available

#: Rounds counted per workload: 16-command rounds are 16 times as many commands.
ROUNDS = {"smalls": 200, "smalls_on_scanout": 200, "display_infos": 200, "display_info": 1000}

pytestmark = pytest.mark.skipif(shutil.which("valgrind") is None or shutil.which("callgrind_control") is None,
                                reason="valgrind is not installed (Debian: valgrind)")  # fmt: skip


def instructions_per_command(name: str, op: str, tmp: str) -> float:
    out = Path(tmp) / f"callgrind.{name}.{op}"
    prefix = ("valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}")
    rig = Rig(name, tmp, prefix)
    try:
        rig.run(op, 20)  # more warm-up: the set-up and these rounds are not counted
        subprocess.run(["callgrind_control", "-i", "on", str(rig.proc.pid)], check=True, capture_output=True)
        rig.run(op, ROUNDS[op])
        subprocess.run(["callgrind_control", "-i", "off", str(rig.proc.pid)], check=True, capture_output=True)
        commands = ROUNDS[op] * len(rig.rounds[op][0].chains)
    finally:
        rig.close()  # callgrind writes its counts as the back-end exits
    totals = [line for line in out.read_text().splitlines() if line.startswith(("summary:", "totals:"))]
    return int(totals[-1].split()[1]) / commands


@pytest.mark.benchmark(group="gpu-instructions")
@pytest.mark.parametrize("op", list(ROUNDS))
def test_instructions_per_command(benchmark, op: str) -> None:  # noqa: ANN001
    why = available()
    if why:
        pytest.skip(f"the C front-end can't be built: {why}")
    tmp = tempfile.mkdtemp(prefix="vhs-bench-instr-")
    # ours without polling, under our own name (a spin's instructions measure waiting)
    names = [name for name in BACKENDS if name != "ours"]
    counts = {name.removesuffix("_sleep"): instructions_per_command(name, op, tmp) for name in names}
    lines = [f"\n[{op}: user-space instructions per command (callgrind)]"]
    for name, n in counts.items():
        benchmark.extra_info[f"{name}_instructions"] = round(n)
        lines.append(f"  {name}: {n:,.0f}")
    ours = counts["ours"]
    for c in ("c", "c10"):
        if c in counts:
            benchmark.extra_info[f"ratio_ours_{c}"] = round(ours / counts[c], 2)
            lines.append(f"  ours/{c} = {ours / counts[c]:.2f} (lower is better)")
    print("\n".join(lines))
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)  # the figures are extra_info; no timing here
    shutil.rmtree(tmp, ignore_errors=True)
