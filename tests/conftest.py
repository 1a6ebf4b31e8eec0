"""Shared fixtures: start a real back-end program and connect the package's front-end to it."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from vhostsuite.testing.backend import BIN, ROOT, Backend, child_env, program
from vhostsuite.testing.frontend import Frontend

__all__ = ["BIN", "ROOT", "Backend", "child_env", "program", "spawn"]


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
