"""One vhost-user connection, back-end side: reads messages with their fds, keeps the
feature and memory state, applies the reply rules, and sets up the rings the core runs
(:mod:`vhostsuite.vring`).

Ring states follow the spec: each ring is stopped and disabled at first; it starts when
its kick fd is set or signalled and stops at GET_VRING_BASE; it is processed only while
started, enabled and mapped. While every ring is stopped the device writes no guest memory
and sends nothing.

Requests are dispatched through one explicit table (:meth:`Connection._request_table`):
request id -> the method that handles it; a device adds its own requests (e.g.
GPU_SET_SOCKET) through ``Device.requests``.
"""

from __future__ import annotations

import array
import errno
import os
import resource
import select
import time
from collections.abc import Callable

from . import logger
from . import protocol as P
from .device import Device, Response
from .errors import GuestMemoryError, StartupError
from .guestlog import GuestLog
from .loop import Loop, signal_eventfd
from .memory import GuestMemory, Region, close_fds
from .ring import Chain
from .sockets import CMSG_SPACE, MSG_CMSG_CLOEXEC, MSG_CTRUNC, MSG_DONTWAIT, SCM_RIGHTS, SOL_SOCKET, Socket
from .virtio import (
    VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
    bit,
)
from .vring import Vring

log = logger.get("vhostsuite.connection")
#: Refused messages, rate-limited: a front-end can't flood the host's logs either.
refusals = GuestLog(log)

#: Protocol features this core implements (and so may advertise).
SUPPORTED_PROTOCOL_FEATURES = (
    bit(P.ProtocolFeature.MQ)
    | bit(P.ProtocolFeature.REPLY_ACK)
    | bit(P.ProtocolFeature.BACKEND_REQ)
    | bit(P.ProtocolFeature.CONFIG)
    | bit(P.ProtocolFeature.RESET_DEVICE)
    | bit(P.ProtocolFeature.CONFIGURE_MEM_SLOTS)
    | bit(P.ProtocolFeature.STATUS)
)

#: Transport features every device offers: the core handles indirect chains and event-idx.
CORE_FEATURES = (
    bit(VIRTIO_F_VERSION_1)
    | bit(VIRTIO_RING_F_INDIRECT_DESC)
    | bit(VIRTIO_RING_F_EVENT_IDX)
    | bit(P.VHOST_USER_F_PROTOCOL_FEATURES)
)

#: How long the rest of a message may take to arrive once its first bytes did, all of it
#: (not per recv(): a front-end that drips a byte now and then still runs out of time).
PAYLOAD_TIMEOUT = 5.0

_CMSG_SPACE = CMSG_SPACE(P.MAX_FDS * array.array("i").itemsize)


class Disconnected(Exception):
    """The front-end hung up (the normal end of a back-end's life)."""


class FatalProtocolError(Exception):
    """The stream can't be trusted any more (e.g. an oversized or truncated message)."""


class Failed(Exception):
    """A message that is refused: answered with a failure status where one is expected."""


#: A request handler: (payload, fds) -> reply payload (for requests with a reply of their
#: own) or None. It pops the fds it keeps; the rest are closed after it returns.
RequestHandler = Callable[[bytes, list[int]], "bytes | None"]


class Connection:
    """Serves one front-end on *sock* for *device* until the front-end hangs up."""

    def __init__(self, sock: Socket, device: Device, loop: Loop) -> None:
        self.sock = sock
        self.device = device
        self.loop = loop
        self.mem = GuestMemory(max_regions=P.MAX_MEM_SLOTS)
        self.features = 0
        self.protocol_features = 0
        self.status = 0
        self.owner = False
        self.backend_req: Socket | None = None
        self.rings = [Vring(i, spec, loop, self) for i, spec in enumerate(device.queues)]
        self.closed = False
        self._requests = self._request_table()
        # The message being assembled: bytes so far, its fds, its payload size (once the
        # header is in), when it began to wait, the one deadline timer.
        self._buf = bytearray()
        self._fds: list[int] = []
        self._size = 0
        self._started: float | None = None
        self._deadline_timer: int | None = None
        # Blocking mode; every read and write passes MSG_DONTWAIT and waits (bounded) itself.
        sock.setblocking(True)
        # Exceptions from the device's own callbacks (display socket, evdev, control socket)
        # meet the same policy as those from its queue handlers.
        loop.error_handler = self._callback_failed
        device.attach(self)

    @property
    def event_idx(self) -> bool:
        return bool(self.features & bit(VIRTIO_RING_F_EVENT_IDX))

    # -- DeviceContext -------------------------------------------------------------
    def complete(self, queue: int, chain: Chain, response: Response = None) -> bool:
        return self.rings[queue].complete(chain, response)

    def hold(self, queue: int) -> None:
        self.rings[queue].held = True

    def release(self, queue: int) -> None:
        ring = self.rings[queue]
        if ring.held:
            ring.held = False
            ring.schedule()

    def config_changed(self) -> bool:
        if self.backend_req is None or not self._proto(P.ProtocolFeature.BACKEND_REQ):
            return False
        try:
            send_whole(self.backend_req, P.encode(P.BackendRequest.CONFIG_CHANGE_MSG), "back-end request")
            return True
        except (Disconnected, FatalProtocolError) as e:
            # a half-sent message leaves that channel unusable: it goes
            log.warning("config change notification failed (%s); the back-end request channel is closed", e)
            self.backend_req.close()
            self.backend_req = None
            return False

    # -- the error policy ----------------------------------------------------------
    def mark_broken(self, reason: str, index: int | None = None) -> None:
        """The guest broke the device (or the device failed): NEEDS_RESET, stop the queue(s),
        signal their err fds. The process keeps serving; a reset makes the device usable again."""
        log.error("device broken: %s", reason)
        self.status |= VIRTIO_CONFIG_S_NEEDS_RESET
        for ring in self.rings if index is None else [self.rings[index]]:
            ring.break_()

    def _callback_failed(self, exc: Exception) -> None:
        if isinstance(exc, (Disconnected, FatalProtocolError, StartupError)):
            raise exc  # these end the service; server.serve reports them
        log.error("device callback failed", exc_info=exc)
        self.mark_broken(f"internal error {exc!r}")

    # -- reading -------------------------------------------------------------------
    def on_readable(self) -> None:
        """The socket is readable: take what has arrived of the message being assembled; once
        it is whole, handle it. A message that is not whole yet waits without blocking the
        loop (kicks are served meanwhile) until its deadline."""
        msg = self._read_message()
        if msg is not None:
            self.handle(msg)

    def _read_message(self) -> P.Message | None:
        """The message, once the last of it arrived; None while more is to come."""
        buf = self._buf
        while True:
            header_done = len(buf) >= P.HEADER.size
            want = (P.HEADER.size + self._size if header_done else P.HEADER.size) - len(buf)
            if want == 0:
                break
            # Never more than this message still needs: the next one's bytes (and fds) stay queued.
            try:
                data, ancdata, msg_flags, _ = self.sock.recvmsg(
                    want, _CMSG_SPACE, MSG_CMSG_CLOEXEC | MSG_DONTWAIT
                )
            except BlockingIOError:
                if buf and self._started is None:  # part of a message is here: its time runs
                    self._started = time.monotonic()
                    self._arm_deadline()
                return None
            except ConnectionResetError as e:
                raise Disconnected() from e
            self._fds.extend(_fds_from_ancdata(ancdata))
            if msg_flags & MSG_CTRUNC:
                raise FatalProtocolError(_fds_cut_short())
            if not data:
                raise Disconnected()
            buf += data
            if not header_done and len(buf) == P.HEADER.size:
                request, flags, size = P.HEADER.unpack(buf)
                if size > P.MAX_PAYLOAD_SIZE:
                    raise FatalProtocolError(f"message {request} with a payload of {size} bytes")
                if flags & P.VERSION_MASK != P.VERSION:
                    raise FatalProtocolError(f"message {request} with version {flags & P.VERSION_MASK}")
                self._size = size
        request, flags, _ = P.HEADER.unpack_from(buf)
        msg = P.Message(request, flags, bytes(buf[P.HEADER.size :]), tuple(self._fds))
        buf.clear()
        self._fds = []
        self._size = 0
        self._started = None
        return msg

    def _arm_deadline(self) -> None:
        """One timer at a time: at the deadline of the message being assembled then."""
        if self._deadline_timer is None:
            self._deadline_timer = self.loop.call_later(PAYLOAD_TIMEOUT, self._deadline_passed)

    def _deadline_passed(self) -> None:
        self._deadline_timer = None
        if self._started is None or self.closed:
            return
        late = time.monotonic() - self._started
        if late >= PAYLOAD_TIMEOUT - 0.001:
            have = len(self._buf)
            need = P.HEADER.size + self._size if have >= P.HEADER.size else P.HEADER.size
            raise FatalProtocolError(f"message truncated: {have} of {need} bytes after {PAYLOAD_TIMEOUT:g}s")
        # a later message is being assembled now: its own deadline
        self._deadline_timer = self.loop.call_later(PAYLOAD_TIMEOUT - late, self._deadline_passed)

    def _reply(self, request: int, payload: bytes = b"") -> None:
        send_whole(self.sock, P.encode_reply(request, payload), "reply")

    def _request_table(self) -> dict[int, RequestHandler]:
        """Every request this core handles, and the device's own."""
        R = P.Request  # noqa: N806 - the numbers, for a table that reads like the spec
        table: dict[int, RequestHandler] = {
            R.GET_FEATURES: self.get_features,
            R.SET_FEATURES: self.set_features,
            R.SET_OWNER: self.set_owner,
            R.RESET_OWNER: self.reset_owner,
            R.SET_MEM_TABLE: self.set_mem_table,
            R.SET_LOG_BASE: self.set_log_base,
            R.SET_VRING_NUM: self.set_vring_num,
            R.SET_VRING_ADDR: self.set_vring_addr,
            R.SET_VRING_BASE: self.set_vring_base,
            R.GET_VRING_BASE: self.get_vring_base,
            R.SET_VRING_KICK: self.set_vring_kick,
            R.SET_VRING_CALL: self.set_vring_call,
            R.SET_VRING_ERR: self.set_vring_err,
            R.GET_PROTOCOL_FEATURES: self.get_protocol_features,
            R.SET_PROTOCOL_FEATURES: self.set_protocol_features,
            R.GET_QUEUE_NUM: self.get_queue_num,
            R.SET_VRING_ENABLE: self.set_vring_enable,
            R.SET_BACKEND_REQ_FD: self.set_backend_req_fd,
            R.SET_VRING_ENDIAN: self.set_vring_endian,
            R.GET_CONFIG: self.get_config,
            R.SET_CONFIG: self.set_config,
            R.RESET_DEVICE: self.reset_device,
            R.GET_MAX_MEM_SLOTS: self.get_max_mem_slots,
            R.ADD_MEM_REG: self.add_mem_reg,
            R.REM_MEM_REG: self.rem_mem_reg,
            R.SET_STATUS: self.set_status,
            R.GET_STATUS: self.get_status,
        }
        for request, handler in self.device.requests.items():
            if request in table:
                raise ValueError(f"device request {request} is a core request")
            table[request] = handler
        return table

    def handle(self, msg: P.Message) -> None:
        """Handle one message and send what the reply rules ask for. Never lets a bad message crash us."""
        fds = list(msg.fds)
        if log.isEnabledFor(logger.DEBUG):
            log.debug("<- %s flags=%#x size=%d fds=%d", msg.name, msg.flags, len(msg.payload), len(fds))
        handler = self._requests.get(msg.request)
        ok = True
        reply: bytes | None = None
        try:
            if fds and msg.request not in P.CARRIES_FDS:
                raise Failed(f"{msg.name} carries {len(fds)} unexpected fds")
            if handler is None:
                raise Failed(f"unsupported message {msg.name}")
            reply = handler(msg.payload, fds)
        except (Failed, P.ProtocolError, GuestMemoryError, ValueError) as e:
            ok = False
            # rate-limited per request (kinds: the known requests, and one for the rest)
            kind = msg.name if handler is not None else "unknown request"
            refusals.error(kind, "%s refused: %s", msg.name, e)
        except (Disconnected, FatalProtocolError):
            raise
        except Exception:
            ok = False
            log.exception("%s failed", msg.name)
        finally:
            close_fds(fds)  # handlers pop the fds they keep
        if msg.request in P.HAS_REPLY:
            if reply is None:
                reply = b"" if msg.request == P.Request.GET_CONFIG else P.U64.pack(0 if ok else 1)
            self._reply(msg.request, reply)
        elif msg.need_reply:
            self._reply(msg.request, P.U64.pack(0 if ok else 1))

    # -- helpers -------------------------------------------------------------------
    def _proto(self, feature: int) -> bool:
        return bool(self.protocol_features & bit(feature))

    def _ring(self, index: int) -> Vring:
        if not 0 <= index < len(self.rings):
            raise Failed(f"queue {index} does not exist (device has {len(self.rings)})")
        return self.rings[index]

    @staticmethod
    def _take_fd(fds: list[int], want: bool, what: str) -> int | None:
        if want and len(fds) != 1:
            raise Failed(f"{what} needs exactly one fd, got {len(fds)}")
        if not want and fds:
            raise Failed(f"{what} carries {len(fds)} unexpected fds")
        return fds.pop() if want else None

    def _detach_rings(self) -> None:
        """New memory or features: every ring is rebuilt (from a base that re-pops what was in flight)."""
        for ring in self.rings:
            ring.detach()

    def _run_started_rings(self) -> None:
        for ring in self.rings:
            ring.run()

    def _reset_rings(self) -> None:
        for ring in self.rings:
            ring.close()
        self.rings = [Vring(i, spec, self.loop, self) for i, spec in enumerate(self.device.queues)]

    def _reset_device(self) -> None:
        self._reset_rings()
        self.status = 0
        self.features = 0
        self.device.reset()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._deadline_timer is not None:
            self.loop.cancel(self._deadline_timer)
            self._deadline_timer = None
        close_fds(self._fds)
        self._fds = []
        self._reset_rings()
        self.loop.remove_reader(self.sock.fileno())
        if self.backend_req is not None:
            self.backend_req.close()
            self.backend_req = None
        removed = list(self.mem.regions)
        self.mem = GuestMemory(max_regions=P.MAX_MEM_SLOTS)
        self._regions_removed(removed)
        self.sock.close()

    # -- requests ------------------------------------------------------------------
    def get_features(self, payload: bytes, fds: list[int]) -> bytes:
        return P.U64.pack(CORE_FEATURES | self.device.device_features)

    def set_features(self, payload: bytes, fds: list[int]) -> None:
        features = P.decode_u64(payload)
        offered = CORE_FEATURES | self.device.device_features
        if features & ~offered:
            # QEMU passes on what the guest acked for vhost-user-gpu, which can include
            # transport bits we did not offer; accept them but say so.
            log.info("front-end acked features we did not offer: %#x", features & ~offered)
        if not features & bit(VIRTIO_F_VERSION_1):
            raise Failed("VIRTIO_F_VERSION_1 not acked: legacy devices are not supported")
        self._detach_rings()  # event-idx may change
        self.features = features
        self.device.set_features(features & ~bit(P.VHOST_USER_F_PROTOCOL_FEATURES))
        if not features & bit(P.VHOST_USER_F_PROTOCOL_FEATURES):
            for ring in self.rings:  # no SET_VRING_ENABLE will come: rings are enabled at once
                ring.enabled = True
        self._run_started_rings()

    def get_protocol_features(self, payload: bytes, fds: list[int]) -> bytes:
        return P.U64.pack(SUPPORTED_PROTOCOL_FEATURES)

    def set_protocol_features(self, payload: bytes, fds: list[int]) -> None:
        features = P.decode_u64(payload)
        if features & ~SUPPORTED_PROTOCOL_FEATURES:
            raise Failed(f"protocol features {features & ~SUPPORTED_PROTOCOL_FEATURES:#x} were not offered")
        self.protocol_features = features

    def set_owner(self, payload: bytes, fds: list[int]) -> None:
        self.owner = True

    def reset_owner(self, payload: bytes, fds: list[int]) -> None:
        self.owner = False
        self._reset_device()

    def reset_device(self, payload: bytes, fds: list[int]) -> None:
        self._reset_device()

    def get_queue_num(self, payload: bytes, fds: list[int]) -> bytes:
        return P.U64.pack(len(self.rings))

    def get_max_mem_slots(self, payload: bytes, fds: list[int]) -> bytes:
        return P.U64.pack(P.MAX_MEM_SLOTS)

    def set_mem_table(self, payload: bytes, fds: list[int]) -> None:
        regions = P.decode_mem_table(payload)
        if len(fds) != len(regions):
            raise Failed(f"{len(regions)} regions but {len(fds)} fds")
        # A region that maps the same file at the same ranges stays as it is (QEMU sends the
        # whole table again at every start): what the device keeps in it stays valid.
        old = list(self.mem.regions)
        mapped = GuestMemory(max_regions=P.MAX_MEM_SLOTS)
        kept: list[Region] = []
        try:
            for desc, fd in zip(regions, fds, strict=True):
                same = next((r for r in old if r not in kept and r.maps(desc, fd)), None)
                if same is not None:
                    kept.append(same)
                    mapped.add(same)
                else:
                    mapped.add(Region.map(desc, fd))
        except GuestMemoryError:
            for r in mapped.regions:
                if r not in kept:
                    r.release()
            raise
        self._detach_rings()
        self.mem = mapped
        self._regions_removed([r for r in old if r not in kept])
        self._run_started_rings()

    def add_mem_reg(self, payload: bytes, fds: list[int]) -> None:
        desc = P.decode_single_region(payload)
        fd = self._take_fd(fds, True, "ADD_MEM_REG")
        try:
            region = Region.map(desc, fd)
        finally:
            close_fds([fd])
        try:
            self.mem.add(region)
        except GuestMemoryError:
            region.release()
            raise
        self._detach_rings()
        self._run_started_rings()

    def rem_mem_reg(self, payload: bytes, fds: list[int]) -> None:
        desc = P.decode_single_region(payload)
        self._detach_rings()  # rebuilt at the next kick or ADD_MEM_REG (QEMU removes, then adds)
        region = self.mem.pop(desc)
        if region is None:
            raise Failed(f"no region at gpa {desc.guest_phys_addr:#x} size {desc.memory_size:#x}")
        self._regions_removed([region])

    def _regions_removed(self, regions: list[Region]) -> None:
        """*regions* are no longer guest memory: the device lets go of them (a GPU detaches
        backings there), then they are unmapped, at once unless a chain in flight still
        holds a view (then when it goes)."""
        if regions:
            self.device.memory_removed(regions)
        for r in regions:
            r.release()

    def set_vring_num(self, payload: bytes, fds: list[int]) -> None:
        index, num = P.decode_vring_state(payload)
        ring = self._ring(index)
        if not 1 <= num <= self.device.max_queue_size or num & (num - 1):
            raise Failed(f"queue {index} size {num} is not a power of 2 in 1..{self.device.max_queue_size}")
        if ring.started:
            raise Failed(f"queue {index} is started")
        ring.num = num
        ring.vq = None

    def set_vring_addr(self, payload: bytes, fds: list[int]) -> None:
        addr = P.decode_vring_addr(payload)
        ring = self._ring(addr.index)
        ring.detach()
        ring.addr = addr
        ring.broken = False

    def set_vring_base(self, payload: bytes, fds: list[int]) -> None:
        index, base = P.decode_vring_state(payload)
        ring = self._ring(index)
        if ring.started:
            raise Failed(f"queue {index} is started")
        ring.base = base & 0xFFFF
        ring.vq = None

    def get_vring_base(self, payload: bytes, fds: list[int]) -> bytes:
        index, _ = P.decode_vring_state(payload)
        ring = self._ring(index)
        return P.VRING_STATE.pack(index, ring.stop())

    def _vring_fd(self, payload: bytes, fds: list[int], what: str) -> tuple[Vring, int | None]:
        index, has_fd = P.vring_fd_index(payload)
        ring = self._ring(index)
        return ring, self._take_fd(fds, has_fd, what)

    def set_vring_kick(self, payload: bytes, fds: list[int]) -> None:
        ring, fd = self._vring_fd(payload, fds, "SET_VRING_KICK")
        ring.set_kick(None)
        if fd is None:
            raise Failed("polling rings without a kick fd is not supported")
        os.set_blocking(fd, False)
        ring.set_kick(fd)
        ring.started = True
        ring.broken = False
        ring.run()

    def set_vring_call(self, payload: bytes, fds: list[int]) -> None:
        ring, fd = self._vring_fd(payload, fds, "SET_VRING_CALL")
        if fd is not None:
            # Never block on an interrupt: a full one (a pipe nobody reads) is one already waiting.
            os.set_blocking(fd, False)
        if ring.call_fd is not None:
            close_fds([ring.call_fd])
        ring.call_fd = fd
        if fd is not None and ring.started and ring.vq is not None:
            signal_eventfd(fd)  # an interrupt may have gone to the old fd

    def set_vring_err(self, payload: bytes, fds: list[int]) -> None:
        ring, fd = self._vring_fd(payload, fds, "SET_VRING_ERR")
        if fd is not None:
            os.set_blocking(fd, False)  # as the call fd
        if ring.err_fd is not None:
            close_fds([ring.err_fd])
        ring.err_fd = fd

    def set_vring_enable(self, payload: bytes, fds: list[int]) -> None:
        index, enable = P.decode_vring_state(payload)
        ring = self._ring(index)
        if enable not in (0, 1):
            raise Failed(f"SET_VRING_ENABLE with {enable}")
        ring.enabled = bool(enable)
        ring.run()

    def get_config(self, payload: bytes, fds: list[int]) -> bytes:
        offset, size, flags, _ = P.decode_config(payload)
        data = self.device.get_config(offset, size)
        if len(data) != size:
            raise Failed(f"config read of {size} bytes at {offset} gave {len(data)}")
        return P.encode_config(offset, data, flags)

    def set_config(self, payload: bytes, fds: list[int]) -> None:
        offset, size, flags, data = P.decode_config(payload)
        self.device.set_config(offset, data)

    def set_backend_req_fd(self, payload: bytes, fds: list[int]) -> None:
        fd = self._take_fd(fds, True, "SET_BACKEND_REQ_FD")
        try:
            sock = Socket(fileno=fd)
        except OSError as e:
            close_fds([fd])
            raise Failed(f"backend request fd is not a socket: {e}") from e
        if self.backend_req is not None:
            self.backend_req.close()
        self.backend_req = sock

    def set_status(self, payload: bytes, fds: list[int]) -> None:
        status = P.decode_u64(payload) & 0xFF
        if status == 0 and self.status != 0:
            # A device reset. QEMU stops the rings first; a front-end that does not gets its
            # running rings rewound past what was in flight, which the reset device forgot.
            self._detach_rings()
            self.device.reset()
            self._run_started_rings()
        self.status = status | (self.status & VIRTIO_CONFIG_S_NEEDS_RESET if status else 0)

    def get_status(self, payload: bytes, fds: list[int]) -> bytes:
        return P.U64.pack(self.status)

    def set_vring_endian(self, payload: bytes, fds: list[int]) -> None:
        raise Failed("only little-endian (VERSION_1) rings are supported")

    def set_log_base(self, payload: bytes, fds: list[int]) -> None:
        raise Failed("dirty logging (migration) is not supported")


def send_whole(sock: Socket, data: bytes, what: str, timeout: float = PAYLOAD_TIMEOUT) -> None:
    """Send all of *data* within *timeout* (whole, not per send()): a peer that takes nothing
    holds the loop that long at most. Disconnected if it is gone, FatalProtocolError if it is
    too slow (the stream is cut in the middle of a message then)."""
    view = memoryview(data)
    deadline = None
    poller = None
    while view:
        try:
            view = view[sock.send(view, MSG_DONTWAIT) :]
            continue
        except BlockingIOError:
            pass
        except OSError as e:
            raise Disconnected() from e
        now = time.monotonic()
        if deadline is None:
            deadline = now + timeout
            poller = select.poll()
            poller.register(sock.fileno(), select.POLLOUT)
        left = deadline - now
        if left <= 0:
            sent = len(data) - len(view)
            raise FatalProtocolError(f"{what} not taken: {sent} of {len(data)} bytes after {timeout:g}s")
        poller.poll(left * 1000)


def _fds_cut_short() -> str:
    """Why the kernel cut a message's fds short (MSG_CTRUNC): too many of them, or too few left here."""
    lost = "a message's fds were cut short (MSG_CTRUNC)"
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    try:
        free = limit - (len(os.listdir("/proc/self/fd")) - 1)  # the listing's own fd is gone again
    except OSError as e:
        if e.errno in (errno.EMFILE, errno.ENFILE):
            return f"{lost}: this process has no fds left (limit {limit})"
        free = P.MAX_FDS
    if free < P.MAX_FDS:
        return f"{lost}: this process has only {free} fds left (limit {limit})"
    return f"{lost}: it carries more than {P.MAX_FDS} fds"


def _fds_from_ancdata(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == SOL_SOCKET and kind == SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(data[: len(data) - len(data) % arr.itemsize])
            fds.extend(arr)
    return fds
