"""A vhost-user front-end: the side QEMU plays, in Python.

It owns memfd "guest RAM", builds split rings in it as a virtio driver would, and speaks
the vhost-user messages in the order QEMU sends them. Tests and benchmarks drive every
back-end through it over real sockets; it is also a quick way to poke at any back-end::

    with Frontend.connect("/tmp/rng.sock") as fe:
        fe.initialize()
        (q,) = fe.start([64])
        q.add([], [16]); q.kick()
        print(q.wait_used())
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import sys
import time
from dataclasses import dataclass

from ..core import protocol as P
from ..core.virtio import (
    VIRTIO_CONFIG_S_ACKNOWLEDGE,
    VIRTIO_CONFIG_S_DRIVER,
    VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK,
    VIRTIO_RING_F_EVENT_IDX,
    VRING_DESC,
    VRING_DESC_F_INDIRECT,
    VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
    bit,
    ring_sizes,
)
from .ringutil import DriverRing

#: Where our fake front-end "virtual addresses" start (QEMU's are its own mmap addresses).
UVA_BASE = 0x7F00_0000_0000


class FrontendError(Exception):
    """The back-end broke the protocol or did not answer in time."""


def _align(n: int, a: int) -> int:
    return (n + a - 1) & ~(a - 1)


class GuestRam:
    """memfd-backed guest RAM shared with the back-end, split into *regions* equal regions."""

    #: The memfd's name, as the back-end's /proc/PID/maps shows it.
    MEMFD_NAME = "vhostsuite-guest-ram"

    def __init__(self, size: int = 64 << 20, regions: int = 1, gpa_base: int = 0) -> None:
        import mmap

        if size % (regions * mmap.PAGESIZE):
            raise ValueError("size must split into whole pages per region")
        self.size = size
        self.fd = os.memfd_create(self.MEMFD_NAME, os.MFD_CLOEXEC)
        os.ftruncate(self.fd, size)
        self.mm = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.view = memoryview(self.mm)
        self.gpa_base = gpa_base
        step = size // regions
        # Guest-physical ranges are contiguous; the fake virtual addresses leave holes between
        # regions so a back-end that mixes up the two address spaces fails.
        self.regions = [
            P.MemRegion(gpa_base + i * step, step, UVA_BASE + i * (step + (1 << 30)), i * step) for i in range(regions)
        ]
        self._next = 0
        self._top = size
        self._free: dict[int, list[int]] = {}

    def gpa_to_uva(self, gpa: int) -> int:
        for r in self.regions:
            if r.guest_phys_addr <= gpa < r.guest_phys_addr + r.memory_size:
                return gpa - r.guest_phys_addr + r.userspace_addr
        raise ValueError(f"gpa {gpa:#x} not in RAM")

    def alloc(self, size: int, align: int = 16, top: bool = False) -> int:
        """Guest-physical address of *size* fresh bytes (freed blocks of the same size are reused).
        *top* takes them from the end of RAM down (the last region), away from the rings."""
        size = max(size, 1)
        if top:
            off = (self._top - size) & ~(align - 1)
            if off < self._next:
                raise MemoryError("guest RAM exhausted")
            self._top = off
            return self.gpa_base + off
        pool = self._free.get((size, align))
        if pool:
            return pool.pop()
        off = _align(self._next, align)
        if off + size > self._top:
            raise MemoryError("guest RAM exhausted")
        self._next = off + size
        return self.gpa_base + off

    def free(self, gpa: int, size: int, align: int = 16) -> None:
        self._free.setdefault((max(size, 1), align), []).append(gpa)

    def view_of(self, gpa: int, size: int) -> memoryview:
        off = gpa - self.gpa_base
        if off < 0 or off + size > self.size:
            raise ValueError(f"gpa range {gpa:#x}+{size:#x} outside RAM")
        return self.view[off : off + size]

    def write(self, gpa: int, data: bytes) -> None:
        self.view_of(gpa, len(data))[:] = data

    def read(self, gpa: int, size: int) -> bytes:
        return bytes(self.view_of(gpa, size))

    def close(self) -> None:
        self.view.release()
        try:
            self.mm.close()
        except BufferError:
            pass  # a queue's views are still alive; the mapping goes with them
        os.close(self.fd)


@dataclass
class Used:
    """One used element as the driver sees it."""

    head: int
    length: int
    #: What the device wrote, gathered from the chain's writable buffers (``length`` bytes).
    data: bytes


class DriverQueue(DriverRing):
    """A split virtqueue in :class:`GuestRam`, with the eventfds a front-end hands the back-end."""

    def __init__(self, ram: GuestRam, index: int, num: int, event_idx: bool = False) -> None:
        self.ram = ram
        self.index = index
        self.event_idx = event_idx
        dsize, asize, usize = ring_sizes(num)
        self.desc_gpa = ram.alloc(dsize, 16)
        self.avail_gpa = ram.alloc(asize, 2)
        self.used_gpa = ram.alloc(usize, 4)
        areas = ((self.desc_gpa, dsize), (self.avail_gpa, asize), (self.used_gpa, usize))
        for gpa, size in areas:
            ram.write(gpa, bytes(size))
        super().__init__(num, *(ram.view_of(gpa, size) for gpa, size in areas))
        self.kick_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.call_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.err_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.free_desc = list(range(num - 1, -1, -1))
        self.last_used = 0
        #: head -> (descriptor indices, buffers [(gpa, size, writable)], indirect table)
        self.inflight: dict[int, tuple[list[int], list[tuple[int, int, bool]], tuple[int, int] | None]] = {}

    # -- driver operations ---------------------------------------------------------
    def add(self, out: list[bytes], in_sizes: list[int], indirect: bool = False, publish: bool = True) -> int:
        """Make a chain of readable buffers *out* and writable buffers of *in_sizes* available
        (with *publish* False, only written: :meth:`publish` makes several available at once)."""
        bufs: list[tuple[int, int, bool]] = []
        for data in out:
            gpa = self.ram.alloc(len(data))
            self.ram.write(gpa, data)
            bufs.append((gpa, len(data), False))
        for size in in_sizes:
            gpa = self.ram.alloc(size)
            self.ram.write(gpa, bytes(size))
            bufs.append((gpa, size, True))
        if not bufs:
            raise ValueError("a chain needs at least one buffer")
        if indirect:
            if not self.free_desc:
                raise BufferError("queue full")
            table = self.ram.alloc(16 * len(bufs))
            for i, (gpa, size, w) in enumerate(bufs):
                flags = (VRING_DESC_F_WRITE if w else 0) | (VRING_DESC_F_NEXT if i + 1 < len(bufs) else 0)
                VRING_DESC.pack_into(self.ram.view_of(table, 16 * len(bufs)), 16 * i, gpa, size, flags, i + 1)
            head = self.free_desc.pop()
            self.write_desc(head, table, 16 * len(bufs), VRING_DESC_F_INDIRECT)
            self.inflight[head] = ([head], bufs, (table, 16 * len(bufs)))
        else:
            if len(self.free_desc) < len(bufs):
                raise BufferError("queue full")
            idx = [self.free_desc.pop() for _ in bufs]
            for i, (gpa, size, w) in enumerate(bufs):
                nxt = idx[i + 1] if i + 1 < len(bufs) else 0
                flags = (VRING_DESC_F_WRITE if w else 0) | (VRING_DESC_F_NEXT if i + 1 < len(bufs) else 0)
                self.write_desc(idx[i], gpa, size, flags, nxt)
            head = idx[0]
            self.inflight[head] = (idx, bufs, None)
        if publish:
            self.publish(head)
        return head

    def kick(self) -> None:
        os.write(self.kick_fd, (1).to_bytes(8, "little"))

    def poll_used(self) -> list[Used]:
        """Used elements the device returned since the last call (frees their buffers)."""
        out = []
        while self.last_used != self.used_idx():
            head, length = self.used_elem(self.last_used % self.num)
            self.last_used = (self.last_used + 1) & 0xFFFF
            if self.event_idx:
                self.set_used_event(self.last_used)
            entry = self.inflight.pop(head, None)
            if entry is None:
                raise FrontendError(f"queue {self.index}: device returned head {head} that is not in flight")
            idx, bufs, table = entry
            data = bytearray()
            remaining = length
            for gpa, size, w in bufs:
                if w and remaining > 0:
                    take = min(size, remaining)
                    data += self.ram.read(gpa, take)
                    remaining -= take
            for gpa, size, _ in bufs:
                self.ram.free(gpa, size)
            if table is not None:
                self.ram.free(*table)
            self.free_desc.extend(idx)
            out.append(Used(head, length, bytes(data)))
        return out

    def wait_call(self, timeout: float = 5.0) -> bool:
        """Wait for the device's interrupt (call eventfd); True if it fired."""
        r, _, _ = select.select([self.call_fd], [], [], timeout)
        if not r:
            return False
        try:
            os.read(self.call_fd, 8)
        except BlockingIOError:
            return False
        return True

    def wait_used(self, count: int = 1, timeout: float = 5.0) -> list[Used]:
        """At least *count* used elements, waiting for interrupts up to *timeout* seconds."""
        deadline = time.monotonic() + timeout
        out = self.poll_used()
        while len(out) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise FrontendError(f"queue {self.index}: {len(out)} of {count} buffers used after {timeout}s")
            self.wait_call(min(left, 0.5))
            out += self.poll_used()
        return out

    def close(self) -> None:
        self.release()
        for v in (self.desc, self.avail, self.used):
            v.release()
        for fd in (self.kick_fd, self.call_fd, self.err_fd):
            try:
                os.close(fd)
            except OSError:
                pass


class Frontend:
    """The front-end end of one vhost-user connection."""

    def __init__(self, sock: socket.socket, ram: GuestRam | None = None, timeout: float = 5.0) -> None:
        self.sock = sock
        self.ram = ram if ram is not None else GuestRam()
        self.timeout = timeout
        self.features = 0
        self.protocol_features = 0
        self.queues: list[DriverQueue] = []
        self.backend_req: socket.socket | None = None
        #: The back-end has our memory map (QEMU sends it again only when it changes).
        self.mem_sent = False

    @classmethod
    def connect(cls, path: str, timeout: float = 5.0, ram: GuestRam | None = None) -> Frontend:
        """Connect to a back-end listening on *path*, waiting for the socket to appear."""
        deadline = time.monotonic() + timeout
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                s.connect(path)
                return cls(s, ram, timeout)
            except (FileNotFoundError, ConnectionRefusedError):
                s.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.005)

    def __enter__(self) -> Frontend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for q in self.queues:
            q.close()
        self.queues = []
        if self.backend_req is not None:
            self.backend_req.close()
        self.sock.close()
        self.ram.close()

    # -- raw messages ----------------------------------------------------------------
    def send(self, request: int, payload: bytes = b"", fds: tuple[int, ...] | list[int] = (), flags: int = P.VERSION):
        data = P.encode(request, payload, flags)
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))] if fds else []
        self.sock.sendmsg([data], anc)

    def recv_reply(self, request: int) -> bytes:
        """The reply to *request*; checks the flags are exactly 0x5 as QEMU does."""
        head = self._recv_exact(P.HEADER.size)
        req, flags, size = P.HEADER.unpack(head)
        if flags != P.REPLY_FLAGS:
            raise FrontendError(f"reply to {request} has flags {flags:#x}, not {P.REPLY_FLAGS:#x}")
        if req != request:
            raise FrontendError(f"reply to {request} says it answers {req}")
        if size > P.MAX_PAYLOAD_SIZE:
            raise FrontendError(f"reply of {size} bytes")
        return self._recv_exact(size) if size else b""

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        self.sock.settimeout(self.timeout)
        try:
            while len(buf) < n:
                chunk = self.sock.recv(n - len(buf))
                if not chunk:
                    raise FrontendError("back-end hung up")
                buf += chunk
        except TimeoutError:
            raise FrontendError(f"no reply within {self.timeout}s") from None
        return bytes(buf)

    def call(
        self, request: int, payload: bytes = b"", fds: tuple[int, ...] | list[int] = (), need_reply: bool = False
    ) -> bytes | None:
        """Send a message; return its reply (or REPLY_ACK status payload) when one is due."""
        flags = P.VERSION | (P.NEED_REPLY_FLAG if need_reply else 0)
        self.send(request, payload, fds, flags)
        if request in P.HAS_REPLY or need_reply:
            return self.recv_reply(request)
        return None

    def _ack(self) -> bool:
        return bool(self.protocol_features & bit(P.ProtocolFeature.REPLY_ACK))

    def call_acked(self, request: int, payload: bytes = b"", fds: tuple[int, ...] | list[int] = ()) -> None:
        """Send with NEED_REPLY when REPLY_ACK is negotiated and raise if the back-end says it failed."""
        reply = self.call(request, payload, fds, need_reply=self._ack())
        if reply is not None and P.decode_u64(reply) != 0:
            raise FrontendError(f"back-end refused {P.Request.name(request)}")

    # -- typed messages ----------------------------------------------------------------
    def get_u64(self, request: int) -> int:
        return P.decode_u64(self.call(request))

    def get_features(self) -> int:
        return self.get_u64(P.Request.GET_FEATURES)

    def set_features(self, features: int) -> None:
        self.features = features
        self.call_acked(P.Request.SET_FEATURES, P.U64.pack(features))

    def get_protocol_features(self) -> int:
        return self.get_u64(P.Request.GET_PROTOCOL_FEATURES)

    def set_protocol_features(self, features: int) -> None:
        self.call(P.Request.SET_PROTOCOL_FEATURES, P.U64.pack(features))
        self.protocol_features = features

    def get_config(self, offset: int, size: int) -> bytes:
        reply = self.call(P.Request.GET_CONFIG, P.encode_config(offset, bytes(size)))
        if not reply:
            raise FrontendError("back-end refused GET_CONFIG")
        off, sz, _, data = P.decode_config(reply)
        if sz != size or off != offset:
            raise FrontendError(f"GET_CONFIG answered {sz} bytes at {off}, asked {size} at {offset}")
        return data

    def set_config(self, offset: int, data: bytes) -> None:
        self.call_acked(P.Request.SET_CONFIG, P.encode_config(offset, data))

    def set_mem_table(self) -> None:
        fds = [self.ram.fd] * len(self.ram.regions)
        self.call_acked(P.Request.SET_MEM_TABLE, P.encode_mem_table(self.ram.regions), fds)
        self.mem_sent = True

    def add_mem_regions(self) -> None:
        for r in self.ram.regions:
            self.call_acked(P.Request.ADD_MEM_REG, P.encode_single_region(r), [self.ram.fd])
        self.mem_sent = True

    def get_vring_base(self, index: int) -> int:
        reply = self.call(P.Request.GET_VRING_BASE, P.VRING_STATE.pack(index, 0))
        i, base = P.decode_vring_state(reply)
        return base

    def set_backend_req_fd(self) -> socket.socket:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.call_acked(P.Request.SET_BACKEND_REQ_FD, b"", [theirs.fileno()])
        finally:
            theirs.close()
        self.backend_req = ours
        return ours

    def set_status(self, status: int) -> None:
        self.call_acked(P.Request.SET_STATUS, P.U64.pack(status))

    def get_status(self) -> int:
        return self.get_u64(P.Request.GET_STATUS)

    # -- QEMU's sequences ------------------------------------------------------------
    def initialize(self, want_protocol: int | None = None, backend_req: bool = True) -> int:
        """What QEMU does when the device is realized; returns the back-end's features."""
        features = self.get_features()
        if not features & bit(P.VHOST_USER_F_PROTOCOL_FEATURES):
            raise FrontendError("back-end does not offer VHOST_USER_F_PROTOCOL_FEATURES")
        offered = self.get_protocol_features()
        self.set_protocol_features(offered if want_protocol is None else offered & want_protocol)
        if self.protocol_features & bit(P.ProtocolFeature.MQ):
            self.get_u64(P.Request.GET_QUEUE_NUM)
        if self.protocol_features & bit(P.ProtocolFeature.CONFIGURE_MEM_SLOTS):
            self.get_u64(P.Request.GET_MAX_MEM_SLOTS)
        if backend_req and self.protocol_features & bit(P.ProtocolFeature.BACKEND_REQ):
            self.set_backend_req_fd()
        self.call(P.Request.SET_OWNER)
        return self.get_features()

    def start(self, sizes: list[int], features: int | None = None, indirect_ok: bool = True) -> list[DriverQueue]:
        """What QEMU does when the driver sets DRIVER_OK: features, memory, then every ring."""
        offered = self.get_features()
        features = offered if features is None else features
        features |= offered & bit(P.VHOST_USER_F_PROTOCOL_FEATURES)
        self.set_features(features)
        status = self.protocol_features & bit(P.ProtocolFeature.STATUS)
        if status:
            self.set_status(VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK)
        if self.mem_sent:
            pass
        elif self.protocol_features & bit(P.ProtocolFeature.CONFIGURE_MEM_SLOTS):
            self.add_mem_regions()
        else:
            self.set_mem_table()
        event_idx = bool(features & bit(VIRTIO_RING_F_EVENT_IDX))
        for q in self.queues:
            q.close()
        self.queues = [DriverQueue(self.ram, i, n, event_idx) for i, n in enumerate(sizes)]
        for q in self.queues:
            self.start_queue(q)
        if features & bit(P.VHOST_USER_F_PROTOCOL_FEATURES):
            for q in self.queues:
                self.call(P.Request.SET_VRING_ENABLE, P.VRING_STATE.pack(q.index, 1))
        if status:
            self.set_status(
                VIRTIO_CONFIG_S_ACKNOWLEDGE
                | VIRTIO_CONFIG_S_DRIVER
                | VIRTIO_CONFIG_S_FEATURES_OK
                | VIRTIO_CONFIG_S_DRIVER_OK
            )
        # a round trip so that everything above has been handled when we return
        self.get_features()
        return self.queues

    def start_queue(self, q: DriverQueue, base: int = 0) -> None:
        ram = self.ram
        self.call(P.Request.SET_VRING_NUM, P.VRING_STATE.pack(q.index, q.num))
        self.call(P.Request.SET_VRING_BASE, P.VRING_STATE.pack(q.index, base))
        addr = P.VRING_ADDR.pack(
            q.index, 0, ram.gpa_to_uva(q.desc_gpa), ram.gpa_to_uva(q.used_gpa), ram.gpa_to_uva(q.avail_gpa), 0
        )
        self.call(P.Request.SET_VRING_ADDR, addr)
        self.call(P.Request.SET_VRING_KICK, P.U64.pack(q.index), [q.kick_fd])
        self.call(P.Request.SET_VRING_CALL, P.U64.pack(q.index), [q.call_fd])
        self.call(P.Request.SET_VRING_ERR, P.U64.pack(q.index), [q.err_fd])

    def resume(self, bases: list[int]) -> None:
        """What QEMU does when a stopped VM runs again: features, then the same rings from *bases*."""
        self.set_features(self.features)
        status = self.protocol_features & bit(P.ProtocolFeature.STATUS)
        ready = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK
        if status:
            self.set_status(ready)
        for q, base in zip(self.queues, bases, strict=True):
            self.start_queue(q, base)
        if self.features & bit(P.VHOST_USER_F_PROTOCOL_FEATURES):
            for q in self.queues:
                self.call(P.Request.SET_VRING_ENABLE, P.VRING_STATE.pack(q.index, 1))
        if status:
            self.set_status(ready | VIRTIO_CONFIG_S_DRIVER_OK)
        self.get_features()

    def reconnect(self, queues: list[DriverQueue], features: int) -> None:
        """What QEMU does when a back-end comes back under a running guest: a new connection,
        initialised in full, memory, and the guest's *queues* from the bases QEMU has then (no
        GET_VRING_BASE came from a dead back-end, so it takes each ring's used index, as its
        virtio_queue_restore_last_avail_idx: what was popped and not answered is popped again)."""
        self.initialize()
        self.set_features(features | (self.get_features() & bit(P.VHOST_USER_F_PROTOCOL_FEATURES)))
        if self.protocol_features & bit(P.ProtocolFeature.CONFIGURE_MEM_SLOTS):
            self.add_mem_regions()
        else:
            self.set_mem_table()
        self.queues = list(queues)
        self.resume([q.used_idx() for q in queues])

    def stop(self) -> list[int]:
        """What QEMU does at a reset or a VM stop: disable, GET_VRING_BASE (which stops each
        ring), then SET_STATUS 0; the bases."""
        if self.features & bit(P.VHOST_USER_F_PROTOCOL_FEATURES):
            for q in self.queues:
                self.call(P.Request.SET_VRING_ENABLE, P.VRING_STATE.pack(q.index, 0))
        bases = [self.get_vring_base(q.index) for q in self.queues]
        if self.protocol_features & bit(P.ProtocolFeature.STATUS):
            self.set_status(0)
        return bases

    def wait_hangup(self, timeout: float = 5.0) -> bool:
        """True if the back-end closed the connection within *timeout*."""
        r, _, _ = select.select([self.sock], [], [], timeout)
        if not r:
            return False
        try:
            return self.sock.recv(1, socket.MSG_PEEK) == b""
        except OSError as e:
            return e.errno in (errno.ECONNRESET, errno.EPIPE)


def probe(fe: Frontend, config_size: int = 0) -> dict:
    """What a back-end offers, asked the way QEMU asks at realize (nothing is started)."""
    features = fe.get_features()
    out: dict = {"features": f"{features:#x}"}
    if features & bit(P.VHOST_USER_F_PROTOCOL_FEATURES):
        pf = fe.get_protocol_features()
        out["protocol_features"] = sorted(name for n, name in P.ProtocolFeature.names().items() if pf & bit(n))
        fe.set_protocol_features(pf)
        if pf & bit(P.ProtocolFeature.MQ):
            out["queues"] = fe.get_u64(P.Request.GET_QUEUE_NUM)
        if pf & bit(P.ProtocolFeature.CONFIG) and config_size:
            reply = fe.call(P.Request.GET_CONFIG, P.encode_config(0, bytes(config_size)))
            out["config"] = P.decode_config(reply)[3].hex() if reply else None
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m vhostsuite.testing.frontend PATH``: print what the back-end listening on PATH offers."""
    import argparse
    import json

    p = argparse.ArgumentParser(prog="python -m vhostsuite.testing.frontend", description=main.__doc__)
    p.add_argument("path", help="the back-end's --socket-path")
    p.add_argument("--config-size", type=int, default=0, metavar="N", help="also read N bytes of config space")
    p.add_argument("--timeout", type=float, default=5.0, metavar="S", help="wait this long for the socket (default 5)")
    args = p.parse_args(argv)
    try:
        with Frontend.connect(args.path, timeout=args.timeout, ram=GuestRam(1 << 20)) as fe:
            print(json.dumps(probe(fe, args.config_size), indent=2))
    except (OSError, FrontendError, P.ProtocolError) as e:
        print(f"{p.prog}: {args.path}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
