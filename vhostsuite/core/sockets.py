"""The sockets the back-ends use, from ``_socket``, the C module :mod:`socket` is built on.

Importing :mod:`socket` turns its constants into four IntEnum classes and imports enum and
selectors: ~10 ms of Debian 13's Python at every start, before a back-end can listen or
answer, and libvirt and QEMU wait for that at every domain start. The C module has the same
socket type, methods and constants; the one method socket.py adds that a back-end needs,
``accept()``, is :func:`accept` here. A :class:`socket.socket` is a :data:`Socket` too, so
tests and tools may hand either.
"""

from __future__ import annotations

import os
from _socket import (
    AF_UNIX,
    CMSG_SPACE,
    MSG_CMSG_CLOEXEC,
    MSG_CTRUNC,
    MSG_DONTWAIT,
    MSG_PEEK,
    SCM_RIGHTS,
    SO_ACCEPTCONN,
    SO_SNDBUF,
    SOCK_STREAM,
    SOL_SOCKET,
)
from _socket import socket as Socket

#: sizeof(sockaddr_un.sun_path), UNIX_PATH_MAX in <linux/un.h>: a path to bind, with its NUL.
UNIX_PATH_MAX = 108

__all__ = [
    "AF_UNIX", "CMSG_SPACE", "MSG_CMSG_CLOEXEC", "MSG_CTRUNC", "MSG_DONTWAIT", "MSG_PEEK", "SCM_RIGHTS",
    "SOCK_STREAM", "SOL_SOCKET", "SO_ACCEPTCONN", "SO_SNDBUF", "Socket", "UNIX_PATH_MAX", "accept",
    "unix_stream",
]  # fmt: skip


def unix_stream() -> Socket:
    """A new UNIX stream socket (close-on-exec, as every socket Python makes)."""
    return Socket(AF_UNIX, SOCK_STREAM)


def accept(listener: Socket) -> Socket:
    """The next connection queued on *listener* (blocking and close-on-exec, as accept4(2)
    makes it). Raises what accept(2) raises: BlockingIOError when none waits, OSError (EMFILE, ...)."""
    fd, _ = listener._accept()  # noqa: SLF001 - the C call socket.socket.accept() wraps
    try:
        sock = Socket(fileno=fd)
    except BaseException:
        os.close(fd)
        raise
    return sock
