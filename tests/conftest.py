"""Shared fixtures: start a real back-end program and connect the package's front-end to it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vhostsuite.frontend import Frontend

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "bin"


def program(name: str) -> list[str]:
    """argv prefix that runs launcher *name* (e.g. ``vhost-user-rng``) with this interpreter."""
    return [sys.executable, str(BIN / name)]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


class Backend:
    """A back-end program running in a child process, with its stderr kept for assertions."""

    def __init__(self, argv: list[str], tmp: Path, pass_fds: tuple[int, ...] = ()) -> None:
        self.stderr_path = tmp / f"stderr-{time.monotonic_ns()}.log"
        self._stderr = open(self.stderr_path, "w+b")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, stderr=self._stderr, pass_fds=pass_fds, env=child_env())

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


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator:
    """``spawn(name, *args, fd_mode=False)`` -> (Backend, Frontend) over a real socket.

    With ``fd_mode`` the back-end gets one end of a socketpair as ``--fd`` (as libvirt does);
    otherwise it listens on ``--socket-path`` in *tmp_path*.
    """
    started: list[tuple[Backend, Frontend]] = []

    def start(name: str, *args: str, fd_mode: bool = False, **fe_kwargs: object) -> tuple[Backend, Frontend]:
        if fd_mode:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            be = Backend([*program(name), f"--fd={theirs.fileno()}", *args], tmp_path, (theirs.fileno(),))
            theirs.close()
            fe = Frontend(ours, **fe_kwargs)
        else:
            path = tmp_path / f"{name}-{len(started)}.sock"
            be = Backend([*program(name), f"--socket-path={path}", *args], tmp_path)
            try:
                fe = Frontend.connect(str(path), **fe_kwargs)
            except Exception:
                be.stop()
                raise
        started.append((be, fe))
        return be, fe

    yield start
    for be, fe in started:
        try:
            fe.close()
        except Exception:
            pass
        be.stop()
