"""3D for the guest (``--virgl``): virglrenderer's contexts and resources, and the fences of the
guest's 3D commands.

The renderer is the compiled binding :mod:`._virgl` (libvirglrenderer); this module is the
device logic on top of it. Every command is checked here before the renderer sees it (ids,
sizes, what exists), and the renderer's own error codes become the spec's error responses:
a bad command stream fails its SUBMIT_3D (and may leave its context in error), never the
process.

3D resources live in the same id space and the same :class:`~.resources.Resources` as 2D
ones (:class:`Resource3D`), charged against ``--max-hostmem`` what the renderer allocates
for them (an estimate: the renderer does not report it) and their backing entries.
A 3D resource shown on a scanout (or used as the cursor) is read back into host memory at
each flush and goes to QEMU in the usual SCANOUT/UPDATE messages: any QEMU display shows it,
and QEMU needs no GL.

Fences: a fenced 3D command is executed at once, then a fence is put on the renderer's
timeline behind it; the command is answered when the renderer signals that fence (PENDING
until then; the control queue is serial, so commands complete in order, and the guest's
fence of each is signalled after the work before it). Signals come through the renderer's
poll fd on the loop, or, where it has none, a timer while fences are outstanding. A queue
stop waits (bounded) for the outstanding fences and answers them, since their commands have
already run and must not run again.
"""

from __future__ import annotations

import errno
import os
import time
from collections import deque
from collections.abc import Callable

from ...core import logger
from ...core.device import PENDING
from ...core.errors import GuestMemoryError
from ...core.guestlog import GuestLog, StderrCapture
from . import commands as K
from . import wire as W
from .probe import GL_LIBRARIES
from .resources import RESOURCE_COST, Resource, Resources

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ...core.device import Response
    from ...core.loop import Loop
    from ...core.memory import GuestMemory
    from ...core.ring import Chain

log = logger.get("vhostsuite.gpu")
guest_log = GuestLog(log)

#: gallium's pipe_texture_target values the guest may create (PIPE_BUFFER .. PIPE_TEXTURE_CUBE_ARRAY).
PIPE_BUFFER = 0
PIPE_TEXTURE_2D = 2
PIPE_MAX_TEXTURE_TYPES = 9
#: What a context costs against --max-hostmem: the renderer's GL context and its state
#: (llvmpipe's contexts are a few MiB each); a guest gets at most max_hostmem/CONTEXT_COST.
CONTEXT_COST = 4 << 20
#: Bytes per texel charged for a 3D resource: the widest common formats (RGBA8, depth24s8);
#: wider ones (float RGBA) are under-charged by up to 4x, which the cap's margin absorbs.
TEXEL_COST = 4
#: How often outstanding fences are checked when the renderer has no poll fd.
FENCE_POLL = 0.001
#: The longest a queue stop waits for outstanding fences (the renderer is stuck if longer).
STOP_WAIT = 1.0
#: virgl capsets offered, in capset_index order.
CAPSETS = (W.VIRTIO_GPU_CAPSET_VIRGL, W.VIRTIO_GPU_CAPSET_VIRGL2)


def _renderer():  # noqa: ANN202 - the binding module, imported only when 3D is asked for
    from . import _virgl

    return _virgl


def available() -> str | None:
    """None if the binding is built here, else why not (for messages)."""
    from ... import NO_EXTENSIONS

    if NO_EXTENSIONS:
        return "VHOSTSUITE_NO_EXTENSIONS is set (the binding is compiled code)"
    try:
        _renderer()
    except ImportError as e:
        return f"vhostsuite was built without virglrenderer ({e}); Debian: install libvirglrenderer-dev and rebuild"
    return None


def init_renderer(render_node: str | None) -> None:
    """Initialise the process's renderer: EGL on *render_node*, or surfaceless (llvmpipe on a
    host without a GPU) when it is None. OSError with why if it can't."""
    r = _renderer()
    flags = r.USE_EGL | r.THREAD_SYNC
    fd = -1
    if render_node is None:
        flags |= r.USE_SURFACELESS
    else:  # a DRM character device: the command line's check
        try:
            fd = os.open(render_node, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise OSError(e.errno, f"{render_node} can't be opened") from None
    missing = [(names[0], package) for names, package in GL_LIBRARIES if not any(map(r.can_load, names))]
    if missing:
        if fd >= 0:
            os.close(fd)
        name, package = missing[0]
        raise OSError(errno.ENOENT, f"virglrenderer needs {name} (Debian: {package})")
    _log_to[0] = log.debug  # what it says while starting is about the host, and not news
    try:
        r.init(flags, fd, log=_renderer_log)
    except OSError as e:
        where = render_node or "surfaceless EGL (no render node)"
        raise OSError(e.errno, f"virglrenderer could not initialise on {where}") from None
    finally:
        if fd >= 0:
            os.close(fd)  # the renderer has its own dup
    _log_to[0] = _guest_message


def _guest_message(message: str) -> None:
    # Once serving, what the renderer logs is about the guest's contexts and command streams:
    # rate-limited, and at INFO (the command that failed gets its own warning).
    guest_log.info("virglrenderer", "virglrenderer: %s", message)


_log_to: list[Callable[[str], None]] = [log.debug]


def _renderer_log(message: str) -> None:
    _log_to[0](message)


class Resource3D(Resource):
    """A resource the renderer holds. ``data`` (the base class's pixels) is only a host copy
    for scanouts and the cursor, allocated when the resource is first shown."""

    __slots__ = ("target", "bind", "depth", "array_size", "last_level", "nr_samples", "iov", "estimate")
    three_d = True

    def __init__(self, cmd: K.ResourceCreate3D, estimate: int) -> None:
        self.id = cmd.resource_id
        self.format = cmd.format
        self.width, self.height = cmd.width, cmd.height
        self.target, self.bind, self.depth = cmd.target, cmd.bind, cmd.depth
        self.array_size, self.last_level, self.nr_samples = cmd.array_size, cmd.last_level, cmd.nr_samples
        self.stride = self.width * W.BYTES_PER_PIXEL
        self.swizzle, self.alpha = W.FORMATS.get(cmd.format, (W.SWIZZLE_NONE, False))
        self.shared = False
        self.data = bytearray()
        self.view = memoryview(self.data)
        self.backing = None
        self.iov = None
        self.backing_runs = []
        self.backing_regions = frozenset()
        self.backing_cost = 0
        self.scanouts = set()
        self.estimate = estimate

    @property
    def size(self) -> int:
        return self.estimate + len(self.data) + RESOURCE_COST

    @property
    def displayable(self) -> bool:
        """A 2D texture in one of the formats a scanout can show."""
        return self.target == PIPE_TEXTURE_2D and self.format in W.FORMATS

    def show(self, resources: Resources, x: int, y: int, w: int, h: int) -> K.Reply | None:
        """Bring the rectangle's pixels into ``data`` (allocated, and charged, the first time)
        for a scanout or the cursor; the error Reply if it can't be shown."""
        if not self.displayable:
            return K.ERR_INVALID_PARAMETER
        if not self.data:
            size = self.stride * self.height
            if not resources.charge(size):
                guest_log.warn("max-hostmem", "3D resource %d: no room for its scanout copy", self.id)
                return K.ERR_OUT_OF_MEMORY
            try:
                self.set_pixels(size)  # a mapping of its own when large: UPDATEs go by reference
            except (MemoryError, OSError) as e:
                resources.charge(-size)
                guest_log.warn("max-hostmem", "3D resource %d: no memory for its scanout copy (%s)", self.id, e)
                return K.ERR_OUT_OF_MEMORY
        if w and h and not self.refresh(x, y, w, h):
            guest_log.warn("virgl", "3D resource %d: the renderer could not read it back", self.id)
        return None

    def refresh(self, x: int, y: int, w: int, h: int) -> bool:
        """Read the rectangle back from the renderer into ``data``; False if it failed."""
        r = _renderer()
        iov = r.Iov([self.view], True)
        try:
            rc = r.transfer_read(self.id, 0, 0, self.stride, 0, (x, y, 0, w, h, 1), y * self.stride + x * 4, iov)
        finally:
            iov.release()
        return rc == 0

    def map_backing(self, runs: list[tuple[int, int]], mem: GuestMemory) -> None:
        """Give the renderer the backing *runs* of *mem* (GuestMemoryError if one is not mapped)."""
        r = _renderer()
        pieces = [piece for addr, length in runs for piece in mem.gpa_pieces(addr, length)]
        iov = r.Iov([view for _, view in pieces], True)
        self._detach_iov()
        if r.attach_iov(self.id, iov) != 0:
            iov.release()
            raise GuestMemoryError(f"resource {self.id}: the renderer refused the backing")
        self.iov = iov
        self.backing = iov  # what Resources tests for "has a backing"
        self.backing_runs = runs
        self.backing_regions = frozenset(region for region, _ in pieces)

    def _detach_iov(self) -> None:
        if self.iov is not None:
            _renderer().detach_iov(self.id)  # the renderer lets go first, then the views go
            self.iov.release()
            self.iov = None

    def drop_backing(self) -> None:
        self._detach_iov()
        self.backing = None
        self.backing_runs = []
        self.backing_regions = frozenset()
        self.backing_cost = 0

    def close(self) -> None:
        self.drop_backing()
        _renderer().resource_unref(self.id)


def estimate(cmd: K.ResourceCreate3D) -> int:
    """What the renderer allocates for the resource, as charged against --max-hostmem."""
    if cmd.target == PIPE_BUFFER:
        return cmd.width
    texels = cmd.width * max(cmd.height, 1) * max(cmd.depth, 1) * max(cmd.array_size, 1) * max(cmd.nr_samples, 1)
    size = texels * TEXEL_COST
    return size + size // 3 if cmd.last_level else size  # a full mip chain adds a third


class Virgl:
    """The 3D commands of one device, on the process's renderer (:func:`init_renderer` first).
    :meth:`attach` gives it the loop and *complete(chain, response)*, which answers a pending
    control-queue chain."""

    def __init__(self, resources: Resources) -> None:
        self.r = _renderer()
        self.resources = resources
        self.loop: Loop | None = None
        self._complete: Callable[[Chain, Response], bool] | None = None
        #: Context ids the guest created.
        self.contexts: set[int] = set()
        #: The fence id of the last fence created on the renderer's timeline (ours, not the guest's).
        self._fence_seq = 0
        #: The last fence id the renderer signalled.
        self._signaled = 0
        #: Fenced commands waiting for their fence: (fence id, chain, response), oldest first.
        self.waiting: deque[tuple[int, Chain, bytes]] = deque()
        self._timer = None
        self._poll_fd = -1
        self._stderr: StderrCapture | None = None
        self.capsets = [(cid, *self.r.capset_info(cid)) for cid in CAPSETS]
        self.capsets = [c for c in self.capsets if c[2] > 0]
        self.handlers: dict[type, Callable[[object, K.Header], K.Reply]] = {
            K.GetCapsetInfo: self.get_capset_info,
            K.GetCapset: self.get_capset,
            K.CtxCreate: self.ctx_create,
            K.CtxDestroy: self.ctx_destroy,
            K.CtxAttachResource: self.ctx_attach,
            K.CtxDetachResource: self.ctx_detach,
            K.ResourceCreate3D: self.resource_create_3d,
            K.TransferToHost3D: self.transfer_to_host_3d,
            K.TransferFromHost3D: self.transfer_from_host_3d,
            K.Submit3D: self.submit_3d,
        }

    def attach(self, loop: Loop, complete: Callable[[Chain, Response], bool]) -> None:
        self.loop = loop
        self._complete = complete
        self._poll_fd = self.r.poll_fd()
        if self._poll_fd >= 0:
            loop.add_reader(self._poll_fd, self._check_fences)
        if self._stderr is None:
            # The renderer's complaints about command streams that bypass its log callback.
            try:
                self._stderr = StderrCapture(loop, guest_log, "virglrenderer-stderr", "virglrenderer: ")
            except OSError as e:  # no stderr to begin with (fd 2 closed): nothing to bound
                log.debug("stderr is not captured: %s", e)

    # -- the control queue's 3D commands ---------------------------------------------------
    def command(self, cmd: K.Unsupported, hdr: K.Header, chain: Chain) -> Response:
        """A control command the 2D dispatch does not know: a 3D one is decoded, run and, if
        fenced, answered when its fence signals."""
        decoded = K.decode_3d(hdr, chain)
        if decoded.__class__ is K.Reply:
            return K.encode(hdr, decoded)
        handler = self.handlers.get(decoded.__class__)
        if handler is None:
            log.debug("unsupported command %s", W.ctrl_type_name(cmd.type))
            return K.encode(hdr, K.ERR_UNSPEC)
        response = K.encode(hdr, handler(decoded, hdr))
        if not hdr[K.HDR_FLAGS] & W.VIRTIO_GPU_FLAG_FENCE:
            return response
        return self._fenced(chain, response)

    def get_capset_info(self, cmd: K.GetCapsetInfo, hdr: K.Header) -> K.Reply:
        if cmd.capset_index >= len(self.capsets):
            return K.ERR_INVALID_PARAMETER
        cid, version, size = self.capsets[cmd.capset_index]
        return K.Reply(W.VIRTIO_GPU_RESP_OK_CAPSET_INFO, W.RESP_CAPSET_INFO.pack(cid, version, size, 0))

    def get_capset(self, cmd: K.GetCapset, hdr: K.Header) -> K.Reply:
        for cid, version, size in self.capsets:
            if cid == cmd.capset_id and cmd.capset_version <= version:
                return K.Reply(W.VIRTIO_GPU_RESP_OK_CAPSET, self.r.capset(cid, cmd.capset_version, size))
        return K.ERR_INVALID_PARAMETER

    def ctx_create(self, cmd: K.CtxCreate, hdr: K.Header) -> K.Reply:
        ctx = hdr[K.HDR_CTX_ID]
        if ctx == 0 or ctx in self.contexts:
            return K.ERR_INVALID_CONTEXT_ID
        if cmd.context_init & 0xFF not in (0, *(c[0] for c in self.capsets)):
            return K.ERR_INVALID_PARAMETER  # a capset (venus, drm ...) this renderer does not offer
        if not self.resources.charge(CONTEXT_COST):
            guest_log.warn("max-hostmem", "context %d: over --max-hostmem", ctx)
            return K.ERR_OUT_OF_MEMORY
        name = cmd.debug_name[: min(cmd.nlen, len(cmd.debug_name))]
        if self.r.context_create(ctx, name) != 0:
            self.resources.charge(-CONTEXT_COST)
            return K.ERR_UNSPEC
        self.contexts.add(ctx)
        return K.OK_NODATA

    def ctx_destroy(self, cmd: K.CtxDestroy, hdr: K.Header) -> K.Reply:
        ctx = hdr[K.HDR_CTX_ID]
        if ctx not in self.contexts:
            return K.ERR_INVALID_CONTEXT_ID
        self.r.context_destroy(ctx)
        self.contexts.discard(ctx)
        self.resources.charge(-CONTEXT_COST)
        return K.OK_NODATA

    def _ctx_resource(self, hdr: K.Header, rid: int, attach: bool) -> K.Reply:
        ctx = hdr[K.HDR_CTX_ID]
        if ctx not in self.contexts:
            return K.ERR_INVALID_CONTEXT_ID
        res = self.resources.get(rid)
        if res is None:
            return K.ERR_INVALID_RESOURCE_ID
        # A 2D resource is not the renderer's: attaching it is accepted and does nothing (Linux
        # attaches every buffer a DRM file opens, dumb ones included, to that file's context).
        if res.three_d:
            (self.r.ctx_attach_resource if attach else self.r.ctx_detach_resource)(ctx, rid)
        return K.OK_NODATA

    def ctx_attach(self, cmd: K.CtxAttachResource, hdr: K.Header) -> K.Reply:
        return self._ctx_resource(hdr, cmd.resource_id, True)

    def ctx_detach(self, cmd: K.CtxDetachResource, hdr: K.Header) -> K.Reply:
        return self._ctx_resource(hdr, cmd.resource_id, False)

    def resource_create_3d(self, cmd: K.ResourceCreate3D, hdr: K.Header) -> K.Reply:
        rid = cmd.resource_id
        if rid == 0 or self.resources.get(rid) is not None:
            return K.ERR_INVALID_RESOURCE_ID
        if cmd.target >= PIPE_MAX_TEXTURE_TYPES or cmd.width == 0:
            return K.ERR_INVALID_PARAMETER
        cost = estimate(cmd)
        if not self.resources.fits(cost + RESOURCE_COST):
            guest_log.warn("max-hostmem", "3D resource %d of ~%d bytes: over --max-hostmem", rid, cost)
            return K.ERR_OUT_OF_MEMORY
        rc = self.r.resource_create(rid, cmd.target, cmd.format, cmd.bind, cmd.width, cmd.height, cmd.depth,
                                    cmd.array_size, cmd.last_level, cmd.nr_samples, cmd.flags)  # fmt: skip
        if rc != 0:
            guest_log.warn("virgl", "3D resource %d refused by the renderer (%d)", rid, rc)
            return K.ERR_INVALID_PARAMETER
        self.resources.add(Resource3D(cmd, cost))
        return K.OK_NODATA

    def _transfer(self, cmd: K.TransferToHost3D | K.TransferFromHost3D, hdr: K.Header, read: bool) -> K.Reply:
        x, y, z, w, h, d, offset, rid, level, stride, layer_stride = cmd
        res = self.resources.get(rid)
        if res is None or not res.three_d or res.iov is None:
            return K.ERR_INVALID_RESOURCE_ID
        ctx = hdr[K.HDR_CTX_ID]
        if ctx and ctx not in self.contexts:
            return K.ERR_INVALID_CONTEXT_ID
        op = self.r.transfer_read if read else self.r.transfer_write
        if op(rid, ctx, level, stride, layer_stride, (x, y, z, w, h, d), offset) != 0:
            return K.ERR_INVALID_PARAMETER
        return K.OK_NODATA

    def transfer_to_host_3d(self, cmd: K.TransferToHost3D, hdr: K.Header) -> K.Reply:
        return self._transfer(cmd, hdr, False)

    def transfer_from_host_3d(self, cmd: K.TransferFromHost3D, hdr: K.Header) -> K.Reply:
        return self._transfer(cmd, hdr, True)

    def transfer_to_host_2d(self, x: int, y: int, w: int, h: int, offset: int, res: Resource3D) -> K.Reply:
        """TRANSFER_TO_HOST_2D on a 3D resource: its backing into the texture, as QEMU does."""
        if res.iov is None:
            return K.ERR_INVALID_RESOURCE_ID
        if self.r.transfer_write(res.id, 0, 0, 0, 0, (x, y, 0, w, h, 1), offset) != 0:
            return K.ERR_INVALID_PARAMETER
        return K.OK_NODATA

    def submit_3d(self, cmd: K.Submit3D, hdr: K.Header) -> K.Reply:
        ctx = hdr[K.HDR_CTX_ID]
        if ctx not in self.contexts:
            return K.ERR_INVALID_CONTEXT_ID
        rc = self.r.submit(ctx, cmd.data)
        if rc != 0:
            guest_log.warn("virgl", "context %d: command stream of %d bytes refused (%d)", ctx, len(cmd.data), rc)
            return K.ERR_INVALID_PARAMETER
        return K.OK_NODATA

    # -- fences ------------------------------------------------------------------------------
    def _fenced(self, chain: Chain, response: bytes) -> Response:
        """Answer *chain* with *response* once the renderer finished the work before it."""
        self._fence_seq = seq = (self._fence_seq + 1) & 0xFFFFFFFF or 1
        if self.r.create_fence(seq) != 0:
            return response  # no fence: nothing to wait for but what already ran
        self._take_signals()
        if self._done(seq) and not self.waiting:
            return response
        self.waiting.append((seq, chain, response))
        log.debug("3D command waits for fence %d (the renderer is at %d)", seq, self._signaled)
        self._arm()
        return PENDING

    def _done(self, seq: int) -> bool:
        # Ids wrap at 2**32: done when not ahead of the last signalled by more than half.
        return ((self._signaled - seq) & 0xFFFFFFFF) < 0x80000000

    def _take_signals(self) -> None:
        signaled = self.r.poll()
        if signaled and not self._done(signaled[-1]):  # only forward: one from before a reset is old
            self._signaled = signaled[-1]

    def _arm(self) -> None:
        if self._poll_fd < 0 and self._timer is None and self.waiting:
            self._timer = self.loop.call_later(FENCE_POLL, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._check_fences()

    def _check_fences(self) -> None:
        self._take_signals()
        waiting = self.waiting
        while waiting and self._done(waiting[0][0]):
            seq, chain, response = waiting.popleft()
            if not self._complete(chain, response):
                log.debug("fence %d: its command's ring stopped meanwhile", seq)
        self._arm()

    def drain(self, timeout: float = STOP_WAIT) -> None:
        """Wait (at most *timeout*) for the outstanding fences and answer their commands: the
        queue is stopping, and their commands already ran."""
        deadline = time.monotonic() + timeout
        while self.waiting:
            self._check_fences()
            if not self.waiting or time.monotonic() > deadline:
                break
            time.sleep(FENCE_POLL)
        if self.waiting:
            log.warning("%d 3D commands still wait for the renderer at a queue stop: they will run again",
                        len(self.waiting))  # fmt: skip

    def forget(self) -> None:
        """The queue stopped: the core no longer holds the waiting chains."""
        self.waiting.clear()

    # -- life cycle --------------------------------------------------------------------------
    def reset(self) -> None:
        """Every context and 3D resource goes (the resources are gone from Resources already)."""
        self.forget()
        for ctx in self.contexts:
            self.r.context_destroy(ctx)
            self.resources.charge(-CONTEXT_COST)
        self.contexts.clear()
        # Not virgl_renderer_reset(): in 0.10.4 it ends the renderer's fence thread for good, and
        # its poll fd never wakes us again. The contexts and resources went one by one instead;
        # fences still in the renderer count as done.
        self._signaled = self._fence_seq

    def close(self) -> None:
        self.reset()
        if self._poll_fd >= 0 and self.loop is not None:
            self.loop.remove_reader(self._poll_fd)
        self._poll_fd = -1
        if self._timer is not None:
            self.loop.cancel(self._timer)
            self._timer = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
