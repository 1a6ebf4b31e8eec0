"""The display channel: a typed client of the vhost-user-gpu protocol towards QEMU, on the
socket of GPU_SET_SOCKET. The device calls :meth:`DisplayChannel.scanout`, :meth:`update`,
:meth:`cursor_pos`, :meth:`cursor_update`, :meth:`get_display_info` and :meth:`get_edid`; the
protocol's bytes are packed here and nowhere else.

Replies arrive on the event loop, matched per request id in order. Nothing here blocks the
loop for long:

* a request that wants a reply registers a callback and a timer; the callback gets the
  payload, or None on timeout or hang-up (the caller then answers with a default). A request
  that can't be answered (closed, or the peer is unresponsive) says so at once by returning
  False, and its callback is never called: a callback never runs inside the call that asked;
* sends never block: what the socket does not take at once waits in an output queue
  and goes when the socket is writable, in order. A display that takes nothing for the
  display timeout while output waits, or falls more than :data:`MAX_QUEUED` bytes behind,
  is dropped (logged): the channel is closed (QEMU makes a new one at the next DRIVER_OK)
  and the device keeps serving the guest;
* between :meth:`DisplayChannel.hold_output` and :meth:`~DisplayChannel.flush_output` (a batch
  of control commands) messages are gathered and go in one ``sendmsg``: sixteen UPDATEs cost
  one system call, not sixteen;
* a large part that lies in memory that stays mapped (a resource's pixels: see
  :attr:`~.resources.Resource.shared`) goes to the kernel by reference, vmsplice(2) into a pipe
  and splice(2) into the socket, instead of being copied into it: a 1080p frame costs the
  back-end ~0.2 ms of system time instead of ~0.9 ms;
* :meth:`DisplayChannel.ask` lets a caller wait, for a bounded short time, for a reply that
  a responsive display sends within microseconds (QEMU answers GET_DISPLAY_INFO at once),
  instead of going back to the loop and sleeping twice; only a reply that is late gets a
  waiter, a timer and a callback (given by :meth:`DisplayChannel.on_late`, so that the
  caller makes its closure only then).
"""

from __future__ import annotations

import fcntl
import os
import select
import time
from collections import deque
from collections.abc import Callable

from ...core import logger
from ...core.device import PENDING
from ...core.loop import Loop
from ...core.sockets import AF_UNIX, SO_SNDBUF, SOCK_STREAM, SOL_SOCKET, Socket
from . import pixels
from . import wire as W

log = logger.get("vhostsuite.gpu.display")

#: sendmsg() takes at most IOV_MAX buffers.
_IOV_MAX = 1024
#: The most output kept for a display that reads slower than we send (a few full frames),
#: counting each waiting part's objects too (PART_COST), so small messages are bounded as well.
MAX_QUEUED = 64 << 20
PART_COST = 256
#: The display socket's send buffer: a 1080p frame's UPDATE goes into the kernel in one or two
#: sendmsg calls instead of ~30 of the default 208 KiB, each of which wakes the display (a full
#: frame measured 2.0-2.3 ms of back-end CPU with the default, 1.7-1.9 ms with this). The kernel
#: caps it at twice net.core.wmem_max.
SNDBUF = 8 << 20
#: Parts at least this large, of memory that stays mapped, go by reference (vmsplice + splice):
#: below it the two extra system calls cost more than the copy.
BY_REFERENCE_MIN = 256 * 1024
#: Messages at most this large sent while output is held are copied into one buffer: a part
#: costs more to queue and send than copying a few KiB.
SMALL_MESSAGE = 4096
#: The pipe the pages go through (the kernel's default is 64 KiB: 16 round trips per MiB).
PIPE_SIZE = 1 << 20

_SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
_UPDATE_HEAD = W.GPU_UPDATE_MSG_HEAD.pack
_UPDATE_HEAD_SIZE = W.GPU_UPDATE_MSG_HEAD.size
#: A reply larger than this is a broken peer.
_MAX_REPLY = 64 * 1024

#: While the peer is unresponsive, at most this many unanswered requests of one kind are kept.
_MAX_ABANDONED = 16
_HEAD = W.GPU_HEADER.size
_unpack_head = W.GPU_HEADER.unpack_from

ReplyCallback = Callable[[bytes | None], None]
#: What _wait_reply gives while the reply has not come.
_LATE = object()
_pack_head = W.GPU_HEADER.pack


class _Waiter:
    __slots__ = ("request", "size", "callback", "timer")

    def __init__(self, request: int, size: int, callback: ReplyCallback, timer: int | None) -> None:
        self.request = request
        self.size = size
        self.callback = callback
        self.timer = timer


class _Pages:
    """A part of the output handed to the kernel by reference: a view of memory that stays
    mapped while the kernel holds its pages (an anonymous mapping, never a heap buffer that
    could be reused for something else)."""

    __slots__ = ("view",)

    def __init__(self, view: memoryview) -> None:
        self.view = view

    def __len__(self) -> int:
        return len(self.view)


class DisplayChannel:
    """One display socket. ``on_close`` is called once when it goes away (not on :meth:`close`)."""

    def __init__(self, sock: Socket, loop: Loop, timeout: float, on_close: Callable[[], None]) -> None:
        self.sock = sock
        self.loop = loop
        self.timeout = timeout
        self.on_close = on_close
        self.closed = False
        #: The protocol features both sides have (None until GET_PROTOCOL_FEATURES is answered).
        self.protocol_features: int | None = None
        #: Set once a reply did not come in time; waiting callers answer at once until it talks again.
        self.unresponsive = False
        self._waiters: dict[int, deque[_Waiter]] = {}
        self._rbuf = bytearray()
        #: Output the socket did not take yet (copies), oldest first, and its size.
        self._out: deque[memoryview] = deque()
        self._out_bytes = 0
        self._out_progress = 0.0
        self._out_timer: int | None = None
        #: Messages gathered while output is held (None: not held), sent by flush_output().
        self._held: list[memoryview | _Pages] | None = None
        self._held_bytes = 0
        #: The last held part when it is a buffer small messages are copied into (None: the
        #: next small message starts one): sixteen small UPDATEs go as one part, not 32.
        self._held_tail: bytearray | None = None
        self._poll: select.poll | None = None
        #: The request _wait_reply waits for (None: none), its reply's size, and the reply
        #: (_LATE until it comes).
        self._question: int | None = None
        self._question_size = 0
        self._answer: bytes | None | object = _LATE
        #: The waiter of the question ask() left PENDING last, until on_late() gives its callback.
        self._left: _Waiter | None = None
        #: The pipe pages go through (read end, write end), made at the first large part; its
        #: size; the bytes in it (they go before the output queue). (splice(2) into a UNIX
        #: stream socket, the only kind from_fd accepts, works on every kernel we support.)
        self._pipe: tuple[int, int] | None = None
        self._pipe_size = 0
        self._in_pipe = 0
        # The pure-Python pixel module's vmsplice copies: through a pipe that is a copy and two
        # system calls per MiB more than sendmsg's one copy, so it sends plainly.
        self._by_reference = pixels.COMPILED
        sock.setblocking(False)
        try:
            sock.setsockopt(SOL_SOCKET, SO_SNDBUF, SNDBUF)
        except OSError:  # not ours to size (a socket type that refuses it): the default works too
            pass
        loop.add_reader(sock.fileno(), self._on_readable)

    @classmethod
    def from_fd(cls, fd: int, loop: Loop, timeout: float, on_close: Callable[[], None]) -> DisplayChannel:
        """Adopt *fd*; on ValueError the caller still owns (and closes) it."""
        try:
            sock = Socket(fileno=fd)
        except OSError as e:
            raise ValueError(f"GPU_SET_SOCKET: fd is not a socket: {e}") from None
        if sock.family != AF_UNIX or sock.type != SOCK_STREAM:
            sock.detach()
            raise ValueError("GPU_SET_SOCKET: fd is not a UNIX stream socket")
        os.set_inheritable(fd, False)
        return cls(sock, loop, timeout, on_close)

    # -- features ---------------------------------------------------------------------
    def negotiate(self, wanted: int, done: Callable[[], None]) -> None:
        """GET_PROTOCOL_FEATURES, then SET_PROTOCOL_FEATURES with what both sides have; then
        ``done()`` (from the loop, never from inside this call)."""

        def got(reply: bytes | None) -> None:
            if reply is None:
                log.warning("display: no answer to GET_PROTOCOL_FEATURES; assuming no protocol features")
                self.protocol_features = 0
            else:
                self.protocol_features = W.GPU_U64.unpack(reply)[0] & wanted
                self.send(W.VHOST_USER_GPU_SET_PROTOCOL_FEATURES, W.GPU_U64.pack(self.protocol_features))
            log.info("display protocol features %#x", self.protocol_features)
            done()

        if not self.request(W.VHOST_USER_GPU_GET_PROTOCOL_FEATURES, b"", W.GPU_U64.size, got):
            self.loop.call_soon(lambda: got(None))

    # -- the typed requests -------------------------------------------------------------
    def scanout(self, scanout_id: int, width: int, height: int) -> bool:
        """SCANOUT: show *scanout_id* at this size (0x0 disables it)."""
        return self.send(W.VHOST_USER_GPU_SCANOUT, W.GPU_SCANOUT.pack(scanout_id, width, height))

    def update(self, scanout_id: int, x: int, y: int, width: int, height: int, pix: memoryview,
               shared: bool = False) -> bool:  # fmt: skip
        """UPDATE: x8r8g8b8 *pix* of the rectangle (stride width*4, a byte view), sent as they are;
        *shared*: *pix* lies in memory that stays mapped, so it may go by reference.

        The path of every flush: one pack for the whole message head, no per-part checks.
        """
        if self.closed:
            return False
        n = pix.nbytes
        head = _UPDATE_HEAD(W.VHOST_USER_GPU_UPDATE, 0, W.GPU_UPDATE_HEAD.size + n, scanout_id, x, y, width, height)
        held = self._held
        if held is not None and n <= SMALL_MESSAGE:
            # _hold_small and _check_queued in place: every small flush of a batch passes here
            buf = self._held_tail
            if buf is None:
                buf = self._held_tail = bytearray()
                held.append(buf)
                self._held_bytes += PART_COST
            buf += head
            buf += pix
            self._held_bytes += _UPDATE_HEAD_SIZE + n
            return self._out_bytes + self._held_bytes <= MAX_QUEUED or self._check_queued()
        head = memoryview(head)
        part = _Pages(pix) if shared and n >= BY_REFERENCE_MIN and self._by_reference else pix
        if held is not None:
            self._held_tail = None
            held.append(head)
            held.append(part)
            self._held_bytes += _UPDATE_HEAD_SIZE + n + 2 * PART_COST
            return self._check_queued()
        return self._send_views([head, part], "UPDATE")

    def cursor_pos(self, scanout_id: int, x: int, y: int, visible: bool = True) -> bool:
        """CURSOR_POS, or CURSOR_POS_HIDE when not *visible*."""
        req = W.VHOST_USER_GPU_CURSOR_POS if visible else W.VHOST_USER_GPU_CURSOR_POS_HIDE
        return self.send(req, W.GPU_CURSOR_POS.pack(scanout_id, x, y))

    def cursor_update(self, scanout_id: int, x: int, y: int, hot_x: int, hot_y: int, image: bytes) -> bool:
        """CURSOR_UPDATE with a 64x64 a8r8g8b8 *image*."""
        head = W.GPU_CURSOR_UPDATE_HEAD.pack(scanout_id, x, y, hot_x, hot_y)
        return self.send(W.VHOST_USER_GPU_CURSOR_UPDATE, head, image)

    def get_display_info(self, wait: float) -> bytes | None:
        """GET_DISPLAY_INFO, :meth:`ask`'d: the virtio_gpu_resp_display_info payload, None or PENDING."""
        return self.ask(W.VHOST_USER_GPU_GET_DISPLAY_INFO, b"", W.RESP_DISPLAY_INFO_SIZE, wait)

    def get_edid(self, scanout_id: int, wait: float) -> bytes | None:
        """GET_EDID, :meth:`ask`'d (None without the EDID protocol feature): the
        virtio_gpu_resp_edid payload, None or PENDING."""
        if not self.has_feature(W.VHOST_USER_GPU_PROTOCOL_F_EDID):
            return None
        payload = W.GPU_EDID_REQUEST.pack(scanout_id)
        return self.ask(W.VHOST_USER_GPU_GET_EDID, payload, W.RESP_EDID_SIZE, wait)

    def has_feature(self, bit: int) -> bool:
        return bool((self.protocol_features or 0) & (1 << bit))

    # -- sending ------------------------------------------------------------------------
    @property
    def output_waiting(self) -> bool:
        """Output the socket has not taken yet is queued or held (it may hold views of the caller's buffers)."""
        return bool(self._out or self._held or self._in_pipe)

    def hold_output(self) -> None:
        """Gather the messages sent from now on until :meth:`flush_output` sends them in one go."""
        if self._held is None:
            self._held = []

    def flush_output(self) -> None:
        """Send what was gathered since :meth:`hold_output`, and stop gathering."""
        views, self._held = self._held, None
        self._held_bytes = 0
        self._held_tail = None
        if views and not self.closed:
            self._send_views(views, "held messages")

    def _hold_small(self, *parts: bytes | memoryview) -> None:
        """Copy a small message's *parts* into the held buffer at the end of what is held."""
        buf = self._held_tail
        if buf is None:
            buf = self._held_tail = bytearray()
            self._held.append(buf)
        size = len(buf)
        for p in parts:
            buf += p
        self._held_bytes += len(buf) - size + (PART_COST if size == 0 else 0)

    def send(self, request: int, *parts: bytes | memoryview) -> bool:
        """Send one message (header + *parts*) without blocking; False if the channel is (now) closed.

        What the socket does not take at once waits in the output queue as it is, without a
        copy: *parts* must be bytes or views of buffers that are never resized (a resource's
        pixels: the display then shows what they hold when they go out, which is newer, never
        torn framing). A buffer the caller reuses must not be reused while
        :attr:`output_waiting`.
        """
        if self.closed:
            return False
        size = 0
        for p in parts:
            size += p.nbytes if isinstance(p, memoryview) else len(p)
        head = W.GPU_HEADER.pack(request, 0, size)
        held = self._held
        if held is not None and size <= SMALL_MESSAGE:
            self._hold_small(head, *parts)
            return self._check_queued()
        views = [memoryview(head)]
        views += [memoryview(p).cast("B") for p in parts if len(p)]
        if held is not None:
            self._held_tail = None
            held += views
            self._held_bytes += size + W.GPU_HEADER.size + PART_COST * len(views)
            return self._check_queued()
        return self._send_views(views, f"message {request}")

    def _send_now(self, data: bytes, request: int) -> bool:
        """A small message when nothing waits before it: one send(2) (a request, whose reply
        the caller may wait for at once). What the socket does not take is queued."""
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as e:
            log.error("display: sending message %d failed (%s); closing the display socket", request, e)
            self._lost()
            return False
        if sent == len(data):
            return True
        return self._send_views([memoryview(data)[sent:]], f"message {request}")

    def _send_views(self, parts: list[memoryview | _Pages], what: str) -> bool:
        """Queue *parts* and send what the socket takes now; the rest goes when it is writable."""
        out = self._out
        idle = not out and not self._in_pipe
        for p in parts:
            out.append(p)
            self._out_bytes += len(p) + PART_COST
        if idle:
            if not self._drain(what):
                return False
            if out or self._in_pipe:
                self._out_progress = time.monotonic()
                self.loop.add_writer(self.sock.fileno(), self._on_writable)
                self._out_timer = self.loop.call_later(self.timeout, self._check_stalled)
        return self._check_queued()

    def _drain(self, what: str = "output") -> bool:
        """Send from the front of the output what the socket takes now, in order: the pipe's
        bytes first, then the queue's parts (plain ones in one sendmsg, IOV_MAX at a time;
        pages through the pipe). Work in proportion to what is sent, not to what waits. False
        if the channel was lost."""
        out = self._out
        try:
            while True:
                if self._in_pipe:
                    n = os.splice(self._pipe[0], self.sock.fileno(), self._in_pipe, flags=_SPLICE_FLAGS)
                    if not n:  # nothing moved: wait for the socket rather than spin
                        return True
                    self._in_pipe -= n
                    self._out_bytes -= n
                    continue
                if not out:
                    return True
                head = out[0]
                if type(head) is _Pages:
                    self._to_pipe(head)
                    continue
                views = []
                for v in out:
                    if type(v) is _Pages or len(views) == _IOV_MAX:
                        break
                    views.append(v)
                sent = self.sock.sendmsg(views)
                while sent:
                    v = out[0]
                    if sent >= len(v):
                        sent -= len(v)
                        self._out_bytes -= len(v) + PART_COST
                        out.popleft()
                    else:
                        out[0] = v[sent:]
                        self._out_bytes -= sent
                        sent = 0
        except (BlockingIOError, InterruptedError):
            return True
        except OSError as e:
            log.error("display: sending %s failed (%s); closing the display socket", what, e)
            self._lost()
            return False

    def _to_pipe(self, part: _Pages) -> None:
        """Move the front of *part* into the pipe (by reference), as much as it has room for."""
        if self._pipe is None and not self._make_pipe():
            self._out[0] = part.view  # no pipe: it goes as a copy
            return
        room = self._pipe_size - self._in_pipe
        if room <= 0:
            raise BlockingIOError  # the socket must take the pipe's bytes first
        n = pixels.vmsplice(self._pipe[1], part.view[:room])
        if not n:
            raise BlockingIOError  # nothing moved: try again when the socket is writable
        self._in_pipe += n
        part.view = part.view[n:]
        if not part.view:
            self._out.popleft()
            self._out_bytes -= PART_COST

    def _make_pipe(self) -> bool:
        try:
            r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as e:  # out of fds: copy instead
            log.warning("display: no pipe for sending by reference (%s); copying", e)
            self._by_reference = False
            return False
        try:
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:  # over the user's pipe limits: the default size works too
            pass
        self._pipe = (r, w)
        self._pipe_size = fcntl.fcntl(w, fcntl.F_GETPIPE_SZ)
        return True

    def _close_pipe(self) -> None:
        if self._pipe is not None:
            for fd in self._pipe:
                os.close(fd)
            self._pipe = None
        self._in_pipe = 0

    def _check_queued(self) -> bool:
        if self._out_bytes + self._held_bytes > MAX_QUEUED:
            log.error("display: more than %d bytes wait for the display; closing the display socket", MAX_QUEUED)
            self._lost()
            return False
        return True

    def _on_writable(self) -> None:
        """Send what the socket takes now from the front of the output."""
        before = self._out_bytes
        if not self._drain():
            return
        if self._out_bytes != before:
            self._out_progress = time.monotonic()
        if not self._out and not self._in_pipe:
            self._stop_writing()

    def _stop_writing(self) -> None:
        self.loop.remove_writer(self.sock.fileno())
        if self._out_timer is not None:
            self.loop.cancel(self._out_timer)
            self._out_timer = None

    def _check_stalled(self) -> None:
        self._out_timer = None
        if not (self._out or self._in_pipe) or self.closed:
            return
        idle = time.monotonic() - self._out_progress
        if idle >= self.timeout:
            log.error("display: took nothing for %.1fs with %d bytes waiting; closing the display socket",
                      idle, self._out_bytes)
            self._lost()
            return
        self._out_timer = self.loop.call_later(self.timeout - idle, self._check_stalled)

    def request(self, request: int, payload: bytes, reply_size: int, callback: ReplyCallback) -> bool:
        """Send *request*; *callback* gets its reply payload later, or None (timeout, hang-up).

        False if no reply can be waited for (closed, the send failed, or the peer is
        unresponsive): *callback* is then never called.
        """
        w = self._send_request(request, payload, reply_size, callback)
        if w is None:
            return False
        w.timer = self.loop.call_later(self.timeout, lambda: self._timed_out(request))
        return True

    def ask(self, request: int, payload: bytes, reply_size: int, wait: float) -> bytes | None:
        """Send *request* and wait up to *wait* seconds (blocking the loop: keep it short) for
        its reply, which a responsive display sends within microseconds: its payload, or None
        if it came as a failure (hang-up, short reply) or no reply can be waited for. When it
        does not come in time, :data:`PENDING`: the caller then gives :meth:`on_late` the
        callback that gets it, as :meth:`request`'s would. A question of a kind still
        outstanding, or behind output the socket has not taken, is not waited for (the reply
        can't be near). Held output goes first; what follows is gathered again."""
        if self._held:
            views, self._held, self._held_bytes, self._held_tail = self._held, [], 0, None
            self._send_views(views, "held messages")
        busy = self.closed or self.unresponsive or self._out or self._in_pipe
        if wait > 0 and not (busy or self._waiters.get(request)):
            # Nothing of its kind is outstanding, so the next reply of its kind is its own:
            # _dispatch hands it over without a waiter, which is made only if it is late.
            if not self._send_now(_pack_head(request, 0, len(payload)) + payload, request):
                return None
            if not self._out:  # it all went: the reply can be near
                reply = self._wait_reply(request, reply_size, wait)
                if reply is not _LATE:
                    return reply
            if self.closed:
                return None
            w = _Waiter(request, reply_size, _ignore, None)
            self._waiters.setdefault(request, deque()).append(w)
        else:
            w = self._send_request(request, payload, reply_size, _ignore)
            if w is None:
                return None
        self._time_out_later(w, request)
        self._left = w
        return PENDING

    def _time_out_later(self, w: _Waiter, request: int) -> None:
        """*w*'s timer. (A function of its own: a closure made in :meth:`ask` would cost every
        question its cells, late or not.)"""
        w.timer = self.loop.call_later(self.timeout, lambda: self._timed_out(request))

    def on_late(self, callback: ReplyCallback) -> None:
        """Where the reply to the question :meth:`ask` just left PENDING goes (None on a
        failure, as :meth:`request`'s callback). Given at once, before anything else asks."""
        w, self._left = self._left, None
        w.callback = callback

    def _wait_reply(self, request: int, reply_size: int, wait: float) -> bytes | None | object:
        """Read the display for up to *wait* seconds, spinning the first of them as long as the
        loop's ``poll_max`` (``--poll-max-us``: a sleep and a wake-up cost more than a
        responsive display's answer takes), giving the CPU away between looks as the loop's
        spin does (the display thread may be waiting for this very CPU), until the reply to
        *request* (just sent, nothing of its kind outstanding) comes: its payload, None (a
        failure), or :data:`_LATE`."""
        if self._poll is None:
            self._poll = select.poll()
            self._poll.register(self.sock.fileno(), select.POLLIN)
        self._question, self._question_size, self._answer = request, reply_size, _LATE
        try:
            now = time.monotonic()
            loop = self.loop
            limit = loop.poll_max if now >= loop.calm_until else 0.0  # no spin on a contended CPU
            spin, deadline = now + (limit if limit < wait else wait), now + wait
            while self._answer is _LATE and not self.closed:
                if now < spin and loop.give_way():  # the reply is near: look without sleeping
                    ready = self._poll.poll(0)
                else:
                    spin = 0.0  # spun out, or the CPU is contended: sleep until the reply comes
                    left = deadline - time.monotonic()
                    if left <= 0 or not (ready := self._poll.poll(left * 1000)):
                        break
                if ready:
                    self._on_readable()
                now = time.monotonic()
        finally:
            self._question = None
        return self._answer

    def _send_request(self, request: int, payload: bytes, reply_size: int, callback: ReplyCallback) -> _Waiter | None:
        """Send *request* and register the waiter for its reply (no timer yet); None if no
        reply can be waited for."""
        if self.closed or (self.unresponsive and len(self._waiters.get(request, ())) >= _MAX_ABANDONED):
            return None
        if self._held or self._out or self._in_pipe:
            if not self.send(request, payload):  # behind what waits, in order
                return None
        elif not self._send_now(_pack_head(request, 0, len(payload)) + payload, request):
            return None
        if self.unresponsive:
            # Don't make the guest wait again; a late reply is matched and dropped.
            self._waiters.setdefault(request, deque()).append(_Waiter(request, reply_size, _ignore, None))
            return None
        w = _Waiter(request, reply_size, callback, None)
        self._waiters.setdefault(request, deque()).append(w)
        return w

    def _timed_out(self, request: int) -> None:
        q = self._waiters.get(request)
        if not q:
            return
        w = q.popleft()  # the oldest one is the one that timed out; assume the peer dropped it
        log.warning("display: no reply to request %d within %.1fs", request, self.timeout)
        self.unresponsive = True
        w.callback(None)

    # -- receiving ------------------------------------------------------------------------
    def _on_readable(self) -> None:
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError, TimeoutError):
            return
        except OSError as e:
            log.warning("display: read failed: %s", e)
            data = b""
        if not data:
            log.info("display socket closed by the front-end")
            self._lost()
            return
        # Messages are parsed straight from what was read; only a message's unfinished tail is
        # kept (in _rbuf) for the next read.
        if self._rbuf:
            self._rbuf += data
            data = bytes(self._rbuf)
        start, n = 0, len(data)
        while n - start >= _HEAD:
            request, flags, size = _unpack_head(data, start)
            if size > _MAX_REPLY:
                log.error("display: message %d of %d bytes; closing the display socket", request, size)
                self._lost()
                return
            end = start + _HEAD + size
            if n < end:
                break
            self._dispatch(request, flags, data[start + _HEAD : end])
            if self.closed:
                return
            start = end
        if start < n:
            self._rbuf = bytearray(data[start:])
        elif self._rbuf:
            self._rbuf.clear()

    def _dispatch(self, request: int, flags: int, payload: bytes) -> None:
        if flags & W.VHOST_USER_GPU_MSG_FLAG_REPLY:
            q = self._waiters.get(request)
            if q:
                w = q.popleft()
                if w.timer is not None:
                    self.loop.cancel(w.timer)
                if self.unresponsive and not any(self._waiters.values()):
                    self.unresponsive = False
                w.callback(_fit(request, payload, w.size))
                return
            if request == self._question:  # what _wait_reply waits for
                self._question = None
                size = self._question_size
                self._answer = payload if len(payload) == size else _fit(request, payload, size)
                return
        log.warning("display: unexpected message %d flags %#x size %d", request, flags, len(payload))

    # -- end ------------------------------------------------------------------------------
    def _fail_waiters(self) -> None:
        waiters = [w for q in self._waiters.values() for w in q]
        self._waiters.clear()
        for w in waiters:
            self.loop.cancel(w.timer)
        for w in waiters:
            w.callback(None)

    def _lost(self) -> None:
        if self.closed:
            return
        self.close()
        self.on_close()

    def close(self) -> None:
        """Close the socket; pending requests are answered with None."""
        if self.closed:
            return
        self.closed = True
        self.loop.remove_reader(self.sock.fileno())
        self._stop_writing()
        self._out.clear()
        self._out_bytes = 0
        self._held = None
        self._held_bytes = 0
        self._held_tail = None
        self._close_pipe()
        self.sock.close()
        self._fail_waiters()


def _ignore(reply: bytes | None) -> None:
    pass


def _fit(request: int, payload: bytes, size: int) -> bytes | None:
    """A reply's payload cut to the *size* expected; None (and said) if it is shorter."""
    if len(payload) == size:
        return payload
    if len(payload) < size:
        log.warning("display: reply %d of %d bytes, expected %d", request, len(payload), size)
        return None
    return payload[:size]
