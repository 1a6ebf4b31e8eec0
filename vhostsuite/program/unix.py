"""UNIX sockets of the programs: listening on a path (the stale-socket probe lives here, once)
and adopting an inherited, already connected fd."""

from __future__ import annotations

import os
import stat

from ..core.errors import StartupError
from ..core.sockets import AF_UNIX, SO_ACCEPTCONN, SOCK_STREAM, SOL_SOCKET, UNIX_PATH_MAX, Socket, unix_stream


def socket_from_fd(fd: int) -> Socket:
    """The connected stream socket *fd*, or StartupError saying why it is not usable."""
    try:
        st = os.fstat(fd)
    except OSError as e:
        raise StartupError(f"--fd={fd}: {e.strerror}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise StartupError(f"--fd={fd} is not a socket")
    sock = Socket(fileno=fd)
    if sock.family != AF_UNIX or sock.type != SOCK_STREAM:
        sock.detach()
        raise StartupError(f"--fd={fd} is not a UNIX stream socket")
    if sock.getsockopt(SOL_SOCKET, SO_ACCEPTCONN):
        sock.detach()
        raise StartupError(f"--fd={fd} is a listening socket; --fd takes an already connected one")
    return sock


def listen(path: str, option: str = "--socket-path", backlog: int = 1) -> Socket:
    """Listen on *path* (given as *option*); a stale socket file there is replaced (nobody
    answers a connect), a live one or anything else is a StartupError."""
    opt = f"{option}={path}"
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise StartupError(f"{opt}: {e.strerror}") from None
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise StartupError(f"{opt} exists and is not a socket")
        probe = unix_stream()
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # nobody listens there: a leftover
        else:
            raise StartupError(f"{opt}: another program is listening there")
        finally:
            probe.close()
    # The path appears only once the socket listens: a client that waits for the file and then
    # connects (a script, QEMU's reconnect) must not be refused in the gap between bind() and
    # listen(). So bind a hidden sibling, listen, then hard-link it into place (EEXIST if
    # something took the path meanwhile, where rename() would replace it).
    head, tail = os.path.split(path)
    hidden = os.path.join(head, f".{tail}.{os.getpid()}")
    if len(os.fsencode(hidden)) >= UNIX_PATH_MAX:
        hidden = path  # no room for a sibling's name: bind in place, and the gap stays
    sock = unix_stream()
    try:
        sock.bind(hidden)
        if hidden != path:
            try:
                sock.listen(backlog)
                os.link(hidden, path)
            finally:
                os.unlink(hidden)
        else:
            sock.listen(backlog)
    except FileExistsError:
        sock.close()
        raise StartupError(f"{opt}: another program created it while this one started") from None
    except OSError as e:
        sock.close()
        raise StartupError(f"{opt}: {e.strerror}") from None
    return sock
