"""The benchmarks' front-end hot path (bench/cfrontend.c), compiled on first use and loaded with
ctypes: a guest driver's rounds on one virtqueue and QEMU's display end of the vhost-user-gpu
socket, in C, so that the figures measure the back-end rather than our Python test front-end
(which spends 8-10 us of CPU per small command, more than either back-end).

The connection is set up as everywhere else (:mod:`vhostsuite.testing.frontend`); only the
per-round work runs here. ctypes releases the GIL during each call, so the display thread and
the driver never wait for Python.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from vhostsuite.core.virtio import VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, bit
from vhostsuite.devices.gpu import wire as W
from vhostsuite.testing.backend import cpu_seconds
from vhostsuite.testing.frontend import DriverQueue, Frontend, GuestRam
from vhostsuite.testing.frontend_gpu import GpuDriver, open_gpu, set_socket

SOURCE = Path(__file__).with_name("cfrontend.c")
#: The display protocol's numbers the C side needs, from their one home.
_DEFINES = [
    "VHOST_USER_GPU_GET_PROTOCOL_FEATURES",
    "VHOST_USER_GPU_GET_DISPLAY_INFO",
    "VHOST_USER_GPU_UPDATE",
    "VHOST_USER_GPU_MSG_FLAG_REPLY",
]

_lib: ctypes.CDLL | None = None


class _Ring(ctypes.Structure):
    _fields_ = [
        ("desc", ctypes.c_void_p),
        ("avail", ctypes.c_void_p),
        ("used", ctypes.c_void_p),
        ("num", ctypes.c_uint32),
        ("kick_fd", ctypes.c_int32),
        ("call_fd", ctypes.c_int32),
        ("event_idx", ctypes.c_int32),
        ("avail_idx", ctypes.c_uint16),
        ("last_used", ctypes.c_uint16),
        ("interrupts", ctypes.c_uint64),
    ]


class _Chain(ctypes.Structure):
    _fields_ = [
        ("head", ctypes.c_uint16),
        ("pad", ctypes.c_uint16),
        ("want_type", ctypes.c_uint32),
        ("resp", ctypes.c_void_p),
        ("resp_len", ctypes.c_uint32),
        ("pad2", ctypes.c_uint32),
    ]


def available() -> str | None:
    """Why the C front-end can't be built here, or None."""
    if shutil.which("cc") is None:
        return "no C compiler (cc)"
    return None


def lib() -> ctypes.CDLL:
    """The compiled front-end (built once per process, in a temporary directory)."""
    global _lib
    if _lib is None:
        out = Path(tempfile.mkdtemp(prefix="vhs-cfrontend-")) / "cfrontend.so"
        defines = [f"-D{name}={getattr(W, name)}" for name in _DEFINES]
        subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-pthread", *defines, "-o", str(out), str(SOURCE)], check=True)
        _lib = ctypes.CDLL(str(out))
        _lib.drive.argtypes = [ctypes.POINTER(_Ring), ctypes.POINTER(_Chain), ctypes.c_int, ctypes.c_int,
                               ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int, ctypes.c_int,
                               ctypes.POINTER(ctypes.c_int)]  # fmt: skip
        _lib.display_start.argtypes = [ctypes.c_int, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint64]
        _lib.display_start.restype = ctypes.c_void_p
        for name in ("display_updates", "display_messages"):
            getattr(_lib, name).argtypes = [ctypes.c_void_p]
            getattr(_lib, name).restype = ctypes.c_uint64
        _lib.display_wait_updates.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int]
        _lib.display_error.argtypes = [ctypes.c_void_p]
        _lib.display_error.restype = ctypes.c_char_p
        _lib.display_stop.argtypes = [ctypes.c_void_p]
    return _lib


class CDisplay:
    """QEMU's display end of a vhost-user-gpu socket: one output of *width* x *height*."""

    def __init__(self, width: int, height: int, protocol_features: int = 0) -> None:
        self.sock, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.handle = lib().display_start(self.sock.fileno(), width, height, protocol_features)
        if not self.handle:
            raise OSError("display thread not started")

    def attach(self, fe: Frontend) -> None:
        set_socket(fe, self.peer)

    @property
    def updates(self) -> int:
        return lib().display_updates(self.handle)

    def wait_updates(self, count: int, timeout: float) -> None:
        if lib().display_wait_updates(self.handle, count, int(timeout * 1000)):
            err = lib().display_error(self.handle).decode()
            raise TimeoutError(f"display: {self.updates} of {count} UPDATEs after {timeout}s {err}".rstrip())

    def close(self) -> None:
        if self.handle:
            lib().display_stop(self.handle)
            self.handle = None
            self.sock.close()


class CRounds:
    """Rounds of a fixed set of chains on *q*: ``[(command, response size, response type)]``.

    The chains' descriptors and buffers are taken from *q* once and kept; *q*'s indexes are
    advanced by each :meth:`run`, so the Python driver can go on using the queue afterwards.
    """

    def __init__(self, q: DriverQueue, chains: list[tuple[bytes, int, int]]) -> None:
        self.q = q
        ram = q.ram
        self._pins = []  # ctypes views into guest RAM: their addresses stay valid while held
        self.chains = (_Chain * len(chains))()
        for i, (cmd, resp_size, want) in enumerate(chains):
            if len(q.free_desc) < 2:
                raise BufferError("queue full")
            d0, d1 = q.free_desc.pop(), q.free_desc.pop()
            cmd_gpa, resp_gpa = ram.alloc(len(cmd)), ram.alloc(resp_size)
            ram.write(cmd_gpa, cmd)
            q.write_desc(d0, cmd_gpa, len(cmd), VRING_DESC_F_NEXT, d1)
            q.write_desc(d1, resp_gpa, resp_size, VRING_DESC_F_WRITE)
            self.chains[i] = _Chain(d0, 0, want, self._addr(resp_gpa), resp_size, 0)
        self.ring = _Ring(self._addr(q.desc_gpa), self._addr(q.avail_gpa), self._addr(q.used_gpa), q.num,
                          q.kick_fd, q.call_fd, int(q.event_idx), 0, 0, 0)  # fmt: skip

    def _addr(self, gpa: int) -> int:
        pin = ctypes.c_char.from_buffer(self.q.ram.mm, gpa - self.q.ram.gpa_base)
        self._pins.append(pin)
        return ctypes.addressof(pin)

    def run(self, rounds: int, display: CDisplay | None = None, updates_per_round: int = 0,
            timeout: float = 10.0) -> None:  # fmt: skip
        """*rounds* rounds; with *updates_per_round*, each also waits for that many UPDATEs on *display*."""
        q, ring = self.q, self.ring
        ring.avail_idx, ring.last_used = q.avail_idx, q.last_used
        bad = ctypes.c_int(0)
        start = display.updates if display is not None else 0
        handle = display.handle if display is not None else None
        rc = lib().drive(ctypes.byref(ring), self.chains, len(self.chains), rounds, handle, start,
                         updates_per_round, int(timeout * 1000), ctypes.byref(bad))  # fmt: skip
        q.avail_idx, q.last_used = ring.avail_idx, ring.last_used
        if q.event_idx:
            q.set_used_event(q.last_used)
        if rc:
            where = f" (round {bad.value >> 16}, chain {bad.value & 0xFFFF})" if rc == -errno.EPROTO else ""
            raise RuntimeError(f"C front-end: {os.strerror(-rc)}{where}")

    def close(self) -> None:
        self._pins.clear()


class GpuRig:
    """One vhost-user-gpu process started with *argv* (``--socket-path`` added), connected with
    *ram* bytes of guest RAM, a :class:`CDisplay` of *width* x *height* and the GPU driver
    (:func:`~vhostsuite.testing.frontend_gpu.open_gpu`). The set-up uses the Python test
    front-end; the subclass names its measured rounds in ``self.rounds``: op -> (CRounds,
    UPDATEs per round)."""

    def __init__(self, argv: list[str], path: str, env: dict[str, str], ram: int, width: int, height: int) -> None:
        self.proc = subprocess.Popen([*argv, f"--socket-path={path}"], env=env, stderr=subprocess.DEVNULL)
        self.fe = Frontend.connect(path, timeout=10, ram=GuestRam(ram))
        self.display = CDisplay(width, height)
        # The driver does not ack EDID: this display, as QEMU's without the EDID protocol
        # feature, can't answer GET_EDID, and QEMU 10's back-end then exits at the first
        # SET_FEATURES that acks it (now and then: "EDID feature set by the frontend but it
        # does not support the EDID vhost-user-gpu protocol").
        features = self.fe.get_features() & ~bit(W.VIRTIO_GPU_F_EDID)
        self.drv: GpuDriver = open_gpu(self.fe, self.display, features, sizes=(256, 16))  # QEMU: 256
        self.drv.timeout = 10
        self.rounds: dict[str, tuple[CRounds, int]] = {}

    def warm_up(self) -> None:
        for op in self.rounds:
            self.run(op, 1)

    def run(self, op: str, rounds: int) -> None:
        """*rounds* rounds of *op*, each waited for (its responses and its UPDATEs)."""
        chains, updates = self.rounds[op]
        chains.run(rounds, self.display, updates)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid)

    def close(self) -> None:
        self.display.close()
        self.fe.close()
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
