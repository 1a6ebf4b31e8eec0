"""Serving one front-end: the socket set-up, the event loop, and a clean exit whatever happens."""

from __future__ import annotations

import os
from collections.abc import Callable

from ..core import logger
from ..core.connection import Connection, Disconnected, FatalProtocolError
from ..core.device import Device
from ..core.errors import EXIT_FAILURE, EXIT_OK, StartupError
from ..core.loop import SIGTERM, Loop, Terminate, ignore_stop_signals, install_signal_handlers, signal_name
from ..core.sockets import MSG_PEEK, Socket, accept
from .unix import listen, socket_from_fd

#: typing.TYPE_CHECKING without importing typing.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from .options import Namespace

log = logger.get("vhostsuite")


def serve(args: Namespace, make_device: Callable[[Namespace], Device]) -> int:
    """Serve one front-end until it hangs up (0), a signal (0, or 130 for SIGINT) or a fatal error (1)."""
    install_signal_handlers()
    loop = Loop(args.poll_max_us / 1e6)
    listener: Socket | None = None
    created: str | None = None
    conn: Connection | None = None
    device: Device | None = None
    try:
        device = make_device(args)  # options this host can't honour fail here, before any socket exists
        if args.fd is not None:
            sock = socket_from_fd(args.fd)
        else:
            listener = listen(args.socket_path)
            created = args.socket_path
            log.info("listening on %s", created)
            sock = _accept(loop, listener)
            # One front-end per process: the socket file goes as soon as it is taken.
            listener.close()
            listener = None
            os.unlink(created)
            created = None
        conn = Connection(sock, device, loop)
        loop.add_reader(sock.fileno(), conn.on_readable)
        log.info("front-end connected")
        loop.run()
        return EXIT_OK
    except Disconnected:
        log.info("front-end hung up; exiting")
        return EXIT_OK
    except FatalProtocolError as e:
        log.error("protocol error, closing the connection: %s", e)
        return EXIT_FAILURE
    except StartupError as e:
        log.error("%s", e)
        return EXIT_FAILURE
    except Terminate as t:
        log.info("%s received; exiting", signal_name(t.signum))
        return EXIT_OK if t.signum == SIGTERM else 128 + t.signum
    finally:
        ignore_stop_signals()
        if conn is not None:
            conn.close()
        if device is not None:
            device.close()
        if listener is not None:
            listener.close()
        if created is not None:
            try:
                os.unlink(created)
            except OSError:
                pass
        loop.close()


#: Connections to --socket-path that have not sent anything yet, kept at once; one more drops
#: the oldest (a front-end speaks at once; one that stays silent holds an fd for nothing).
MAX_SILENT = 16
#: After accept() fails for want of fds with none of ours to give back, rest this long.
ACCEPT_BACKOFF = 1.0


def _accept(loop: Loop, listener: Socket) -> Socket:
    """The first connection that sends something. One that hangs up before its first byte
    (e.g. another instance probing whether the path is live) is dropped, and we keep waiting;
    so is the oldest silent one when :data:`MAX_SILENT` wait, or when fds run out."""
    accepted: list[Socket] = []
    pending: list[Socket] = []

    def drop_oldest() -> None:
        s = pending.pop(0)
        loop.remove_reader(s.fileno())
        s.close()

    def on_data(s: Socket) -> None:
        loop.remove_reader(s.fileno())
        pending.remove(s)
        try:
            first = s.recv(1, MSG_PEEK)
        except OSError:
            first = b""
        if not first:
            s.close()
            return
        accepted.append(s)
        loop.stop()

    def resume() -> None:
        loop.add_reader(listener.fileno(), on_accept)

    def on_accept() -> None:
        try:
            s = accept(listener)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:  # EMFILE, ENFILE, ENOMEM: the connection stays queued
            if pending:
                drop_oldest()  # give an fd back and take the queued one on the next turn
                return
            log.warning("accept failed (%s); retrying in %.0f s", e.strerror or e, ACCEPT_BACKOFF)
            loop.remove_reader(listener.fileno())
            loop.call_later(ACCEPT_BACKOFF, resume)
            return
        if len(pending) >= MAX_SILENT:
            drop_oldest()
        pending.append(s)
        loop.add_reader(s.fileno(), lambda: on_data(s))

    listener.setblocking(False)
    loop.add_reader(listener.fileno(), on_accept)
    try:
        loop.run()
    finally:
        loop.remove_reader(listener.fileno())
        for s in pending:
            loop.remove_reader(s.fileno())
            s.close()
    if not accepted:
        raise StartupError("no front-end connected")
    sock = accepted[0]
    sock.setblocking(True)
    return sock
