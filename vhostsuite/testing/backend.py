"""Running the back-end programs from this tree for tests, benchmarks and fuzzers: the launcher
argv, the child environment, and a child process whose stderr is kept for assertions."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

#: The source tree this package was imported from (its launchers are in ROOT/bin).
ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / "bin"


def program(name: str) -> list[str]:
    """argv prefix that runs launcher *name* (e.g. ``vhost-user-rng``) with this interpreter."""
    return [sys.executable, str(BIN / name)]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def cpu_seconds(pid: int) -> float:
    """Process *pid*'s CPU so far, all its threads (schedstat: ns, where /proc/PID/stat has 10 ms
    ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):  # a thread that just ended
            pass
    return total / 1e9


class Backend:
    """A back-end program running in a child process, with its stderr kept for assertions."""

    def __init__(self, argv: list[str], tmp: Path, pass_fds: tuple[int, ...] = (),
                 env: dict[str, str] | None = None) -> None:  # fmt: skip
        self.stderr_path = tmp / f"stderr-{time.monotonic_ns()}.log"
        self._stderr = open(self.stderr_path, "w+b")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, stderr=self._stderr, pass_fds=pass_fds, env=env or child_env())

    def wait_listening(self, path: Path, timeout: float = 10.0) -> None:
        """Wait until the program's socket file *path* exists (it is listening)."""
        deadline = time.monotonic() + timeout
        while not path.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{path} did not appear (status {self.proc.poll()}): {self.stderr()[-2000:]}")
            time.sleep(0.005)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait(self, timeout: float = 5.0) -> int:
        return self.proc.wait(timeout)

    def terminate(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._stderr.close()
