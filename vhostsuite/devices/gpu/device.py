"""The 2D virtio-gpu device (virtio id 16): its two queues, one dispatch, the display socket.

A control command takes one way: the core pops the chain and calls the control queue's
:class:`~.commands.ControlHandler` (compiled); it is decoded once into a typed command
(:mod:`.commands`), dispatched by its type to the concern that owns it (:mod:`.resources`,
:mod:`.scanouts`, the display info and EDID here), and its :class:`~.commands.Reply` is
encoded once and returned to the core, which writes, pushes and notifies. A bad command gets
an error response; the device keeps serving.

A batch of commands (what the core popped in one go) sends its display messages in one
system call at the batch's end (``batch_end``), before the guest is told the commands are done.

GET_DISPLAY_INFO and GET_EDID ask QEMU's display. The answer is waited for briefly
(:data:`SYNC_WAIT`: QEMU answers within microseconds) without going back to the loop; if it
is not there by then, the command returns PENDING and completes when the answer (or the
``--display-timeout``) comes; the control queue is serial, so nothing behind it runs first.
One display answer serves every GET_DISPLAY_INFO of its batch: they were all in the ring
before the question was sent, so it is as fresh as theirs would be.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ...core import logger
from ...core.device import PENDING, Device, QueueSpec, Response
from ...core.protocol import Request
from ...core.virtio import VIRTIO_ID_GPU, bit
from . import DEFAULT_DISPLAY_TIMEOUT, DEFAULT_MAX_HOSTMEM, edid
from . import commands as K
from . import wire as W
from .cursor import update_cursor
from .display import DisplayChannel
from .resources import Resource, Resources
from .scanouts import Scanouts

#: typing.TYPE_CHECKING without importing typing (every start pays for it otherwise).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from ...core.device import DeviceContext
    from ...core.memory import Region
    from ...core.ring import Chain
    from .virgl import Virgl

log = logger.get("vhostsuite.gpu")

CONTROL_QUEUE = 0
CURSOR_QUEUE = 1

#: How long a command that asks the display waits for the answer before it goes pending. At
#: most one such wait per batch: a display slower than this costs the loop this much per
#: batch, not per command.
SYNC_WAIT = 0.001

_Reply = K.Reply
_new = tuple.__new__
_HDR_SIZE = W.CTRL_HDR.size


class GpuDevice(Device):
    backend_type = "gpu"
    virtio_id = VIRTIO_ID_GPU
    max_queue_size = 1024
    device_features = bit(W.VIRTIO_GPU_F_EDID)

    def __init__(self, max_hostmem: int = DEFAULT_MAX_HOSTMEM, display_timeout: float = DEFAULT_DISPLAY_TIMEOUT,
                 virgl: bool = False):  # fmt: skip
        """*virgl*: serve 3D (VIRTIO_GPU_F_VIRGL) on the process's renderer, which
        :func:`.virgl.init_renderer` has initialised."""
        super().__init__()
        self.display_timeout = display_timeout
        self.resources = Resources(max_hostmem, on_destroy=self._resource_destroyed)
        self.scanouts = Scanouts(self.resources)
        self.display: DisplayChannel | None = None
        self.events_read = 0
        #: The display modes body (16 x display_one) QEMU last told us.
        self._display_body: bytes | None = None
        #: The GET_DISPLAY_INFO answer of this batch, if one was asked.
        self._batch_display_info: K.Reply | None = None
        #: The display was asked (and waited for) in this batch.
        self._batch_waited = False
        self.requests = {Request.GPU_SET_SOCKET: self._set_socket}
        #: Command type -> handler(*command) -> Reply: a handler takes the command's fields.
        self._dispatch: dict[type, Callable[..., K.Reply]] = {
            K.ResourceCreate2D: self.resources.create_2d,
            K.ResourceUnref: self.resources.unref,
            K.AttachBacking: self._attach_backing,
            K.DetachBacking: self.resources.detach_backing,
            K.TransferToHost2D: self.resources.transfer_to_host_2d,
            K.SetScanout: self.scanouts.set_scanout,
            K.ResourceFlush: self.scanouts.flush,
            K.Unsupported: self._unsupported,
        }
        #: The commands that need their header and chain: those that ask the display, and the
        #: 3D ones; handler(command, header, chain) -> Reply, PENDING (they complete the chain
        #: later) or the response bytes.
        self._asking: dict[type, Callable[..., K.Reply | Response]] = {
            K.GetDisplayInfo: self._get_display_info,
            K.GetEdid: self._get_edid,
        }
        #: The 3D part (None: a 2D device, where 3D commands get ERR_UNSPEC).
        self.virgl: Virgl | None = None
        if virgl:
            from .virgl import Virgl

            self.virgl = Virgl(self.resources)
            self.device_features = GpuDevice.device_features | bit(W.VIRTIO_GPU_F_VIRGL)
            del self._dispatch[K.Unsupported]
            self._asking[K.Unsupported] = self.virgl.command
            self.resources.transfer_3d = self.virgl.transfer_to_host_2d
        #: The control queue's handler; it knows when a batch begins (display output is held
        #: from then until the batch's end).
        self._control = K.ControlHandler(self._dispatch, self._asking, self._begin_batch)
        self.queues = (
            QueueSpec("control", self._control.handle, serial=True, batch_end=self._batch_end),
            QueueSpec("cursor", self._cursor, batch_end=self._batch_end),
        )

    def attach(self, ctx: DeviceContext) -> None:
        super().attach(ctx)
        if self.virgl is not None:
            self.virgl.attach(ctx.loop, lambda chain, response: ctx.complete(CONTROL_QUEUE, chain, response))

    # -- config space ---------------------------------------------------------------------
    def get_config(self, offset: int, size: int) -> bytes:
        # QEMU overrides events_*/num_scanouts with its own; num_capsets is ours (0 in 2D).
        capsets = len(self.virgl.capsets) if self.virgl is not None else 0
        data = W.CONFIG.pack(self.events_read, 0, 1, capsets)
        if offset < 0 or size < 0 or offset + size > len(data):
            raise ValueError(f"config read of {size} bytes at {offset} is outside the {len(data)}-byte config")
        return data[offset : offset + size]

    def set_config(self, offset: int, data: bytes) -> None:
        if offset < 0 or offset + len(data) > W.CONFIG.size:
            raise ValueError(f"config write of {len(data)} bytes at {offset} is outside the config")
        if offset <= 4 and offset + len(data) >= 8:  # events_clear
            clear = int.from_bytes(data[4 - offset : 8 - offset], "little")
            self.events_read &= ~clear

    # -- the display socket ---------------------------------------------------------------
    def _set_socket(self, payload: bytes, fds: list[int]) -> None:
        """GPU_SET_SOCKET: QEMU's display socket (again at every driver start)."""
        if len(fds) != 1:
            raise ValueError(f"GPU_SET_SOCKET needs exactly one fd, got {len(fds)}")
        channel = DisplayChannel.from_fd(fds[0], self.ctx.loop, self.display_timeout, self._display_lost)
        fds.clear()  # the channel owns it now
        old = self.display
        self._use_display(channel)
        if old is not None:
            log.info("a new display socket replaces the old one")
            old.close()
        log.info("display socket set")
        # Commands wait (bounded by the display timeout) until we know the protocol features.
        self.ctx.hold(CONTROL_QUEUE)
        channel.negotiate(1 << W.VHOST_USER_GPU_PROTOCOL_F_EDID, lambda: self._negotiated(channel))

    def _use_display(self, channel: DisplayChannel | None) -> None:
        self.display = channel
        self.scanouts.display = channel

    def _negotiated(self, channel: DisplayChannel) -> None:
        if channel is not self.display:
            return
        self.scanouts.show_all()  # what the scanouts showed on the previous display
        self.ctx.release(CONTROL_QUEUE)

    def _display_lost(self) -> None:
        self._use_display(None)
        if self.ctx is not None:
            self.ctx.release(CONTROL_QUEUE)

    # -- the queues -----------------------------------------------------------------------
    def _begin_batch(self) -> None:
        """Display output is held from here to the batch's end (calling it again changes nothing)."""
        if self.display is not None:
            self.display.hold_output()

    def _batch_end(self) -> None:
        self._control.in_batch = False
        self._batch_display_info = None
        self._batch_waited = False
        if self.display is not None:
            self.display.flush_output()

    def _cursor(self, chain: Chain) -> None:
        self._begin_batch()
        hdr, cmd = K.decode_cursor(chain)
        if type(cmd) is K.UpdateCursor:
            update_cursor(cmd, self.resources, self.display)
        else:
            name = W.ctrl_type_name(hdr[K.HDR_TYPE])
            log.debug("cursor queue: command %s of %d bytes ignored", name, chain.read_size)
        return None

    def _unsupported(self, ctype: int) -> K.Reply:
        log.debug("unsupported command %s", W.ctrl_type_name(ctype))
        return K.ERR_UNSPEC

    def queue_stopping(self, index: int) -> None:
        if index == CONTROL_QUEUE and self.virgl is not None:
            self.virgl.drain()  # fenced 3D commands already ran: answer them, don't run them again

    def queue_stopped(self, index: int) -> None:
        if index == CONTROL_QUEUE and self.virgl is not None:
            self.virgl.forget()

    def memory_removed(self, regions: Sequence[Region]) -> None:
        self.resources.memory_removed(regions, self.ctx.mem)

    def _attach_backing(self, rid: int, entries: list[tuple[int, int]]) -> K.Reply:
        return self.resources.attach_backing(rid, entries, self.ctx.mem if self.ctx is not None else None)

    def _resource_destroyed(self, res: Resource) -> None:
        self.scanouts.resource_destroyed(res)

    # -- commands that ask the display ----------------------------------------------------------
    def _ask(self, ask: Callable[[float], bytes | None], answer: Callable[[bytes | None], K.Reply],
             hdr: K.Header, chain: Chain) -> Response:  # fmt: skip
        """Ask the display with ``ask(wait)``; the command (*hdr*, *chain*) is answered with
        ``answer(reply or None)``: now if the reply comes within :data:`SYNC_WAIT` (the first
        question of a batch waits; later ones don't), else later (PENDING)."""
        wait = 0.0 if self._batch_waited else SYNC_WAIT
        self._batch_waited = True
        reply = ask(wait)
        if reply is not PENDING:
            return answer(reply)
        self.display.on_late(self._late(answer, hdr, chain))
        return PENDING

    def _late(self, answer: Callable[[bytes | None], K.Reply], hdr: K.Header, chain: Chain
              ) -> Callable[[bytes | None], None]:  # fmt: skip
        """What completes *chain* when the display's answer comes late. (A function of its own:
        a closure made in :meth:`_ask` would cost every question its cells.)"""

        def late(reply: bytes | None) -> None:
            # False when the ring stopped meanwhile: the command is popped again and asks again.
            self.ctx.complete(CONTROL_QUEUE, chain, K.encode(hdr, answer(reply)))

        return late

    def _get_display_info(self, cmd: K.GetDisplayInfo, hdr: K.Header, chain: Chain) -> Response:
        reply = self._batch_display_info
        if reply is None:
            display = self.display
            if display is None:
                return self._display_info(None)
            reply = self._ask(display.get_display_info, self._display_info, hdr, chain)
            if reply is not PENDING:
                self._batch_display_info = reply
        return reply

    def _display_info(self, reply: bytes | None) -> K.Reply:
        if reply is not None:
            self._display_body = reply[_HDR_SIZE:]
        body = self._display_body
        if body is None:
            body = self._default_display_body()
        return _new(_Reply, (W.VIRTIO_GPU_RESP_OK_DISPLAY_INFO, body))

    def _get_edid(self, cmd: K.GetEdid, hdr: K.Header, chain: Chain) -> Response:
        if not self.acked_features & bit(W.VIRTIO_GPU_F_EDID):
            return K.ERR_UNSPEC
        scanout = cmd.scanout
        if scanout >= W.VIRTIO_GPU_MAX_SCANOUTS:
            return K.ERR_INVALID_PARAMETER

        def answer(reply: bytes | None) -> K.Reply:
            if reply is not None:
                size = W.RESP_EDID_HEAD.unpack_from(reply, W.CTRL_HDR.size)[0]
                if 0 < size <= W.EDID_MAX:
                    start = W.CTRL_HDR.size + W.RESP_EDID_HEAD.size
                    return _edid_reply(reply[start : start + size])
                log.warning("display: EDID of %d bytes ignored", size)
            w, h = self._mode(scanout)
            return _edid_reply(edid.generate(w, h, serial=scanout))

        display = self.display
        if display is None:
            return answer(None)
        return self._ask(lambda wait: display.get_edid(scanout, wait), answer, hdr, chain)

    def _default_display_body(self) -> bytes:
        if self._display_body is not None:
            return self._display_body
        body = W.DISPLAY_ONE.pack(0, 0, W.DEFAULT_WIDTH, W.DEFAULT_HEIGHT, 1, 0)
        return body + bytes(W.RESP_DISPLAY_INFO_SIZE - W.CTRL_HDR.size - len(body))

    def _mode(self, scanout: int) -> tuple[int, int]:
        if self._display_body is not None:
            _, _, w, h, enabled, _ = W.DISPLAY_ONE.unpack_from(self._display_body, scanout * W.DISPLAY_ONE.size)
            if enabled and w and h:
                return w, h
        return W.DEFAULT_WIDTH, W.DEFAULT_HEIGHT

    # -- life cycle ---------------------------------------------------------------------------
    def reset(self) -> None:
        self._batch_end()
        self.resources.clear()
        if self.virgl is not None:
            self.virgl.reset()
        self.scanouts.reset()
        self.events_read = 0

    def close(self) -> None:
        self.reset()
        if self.virgl is not None:
            self.virgl.close()
        if self.display is not None:
            self.display.close()
            self._use_display(None)


def _edid_reply(blob: bytes) -> K.Reply:
    body = W.RESP_EDID_HEAD.pack(len(blob), 0) + blob + bytes(W.EDID_MAX - len(blob))
    return K.Reply(W.VIRTIO_GPU_RESP_OK_EDID, body)
