"""Start-up time to listening, --print-capabilities time, and idle RSS of each launcher,
with QEMU's C vhost-user-gpu measured in the same run for comparison."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from startup_probe import start_listening

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
    return start_listening(argv, path, ENV)


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


INSTALLED = {"rng": ["/usr/libexec/vhost-user-rng"], "gpu": ["/usr/libexec/vhost-user-gpu"],
             "input": ["/usr/libexec/vhost-user-input", "--virtual=keyboard"]}  # fmt: skip


def test_installed_startup_to_listening(benchmark) -> None:  # noqa: ANN001
    """The figures the start-up goals are about: the package as Debian installs it (``make deb``
    first: out/deb), in a fresh Debian 13 root with only its dependencies, Debian's python3;
    median of 10 per program to listening and for ``--print-capabilities``, beside the
    interpreter's own start in the same root."""
    import json

    from vhostsuite.testing import debroot

    debs = sorted((ROOT / "out/deb").glob("vhostsuite_*.deb"))
    if not debs:
        pytest.skip("no package in out/deb: run `make deb` first")
    if os.geteuid() != 0:
        pytest.skip("an install root needs root (chroot)")
    root = Path(tempfile.mkdtemp(prefix="vhs-bench-root-"))
    try:
        try:
            debroot.install_root(debs[-1], root)
        except debroot.Unavailable as e:
            pytest.skip(f"no Debian root here: {e}")
        shutil.copy(Path(__file__).with_name("startup_probe.py"), root / "tmp/startup_probe.py")
        script = f"python3 /tmp/startup_probe.py '{json.dumps(INSTALLED)}' 10"
        figures: dict[str, float] = {}

        def once() -> None:
            res = debroot.run_in(root, script)
            assert res.returncode == 0, res.stdout[-2000:]
            figures.update(json.loads(res.stdout.strip().splitlines()[-1]))

        benchmark.group = "installed: start-up to listening"
        benchmark.pedantic(once, rounds=1, iterations=1)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    benchmark.extra_info.update({f"{k}_median_ms": v for k, v in figures.items()})
    print("\ninstalled (median of 10, ms): " + ", ".join(f"{k} {v}" for k, v in figures.items())
          + " (goals: < 50 to listening, < 40 --print-capabilities)")  # fmt: skip
    assert set(figures) == {"python3 -c pass", *INSTALLED, *(f"{k} --print-capabilities" for k in INSTALLED)}
