"""The display channel's output on a real socket: large parts of mapped memory go by reference
(vmsplice into a pipe, splice into the socket), the rest is copied, and whatever way each part
goes, the messages arrive whole and in order, also when the socket takes only part of them."""

from __future__ import annotations

import mmap
import socket
import threading

from vhostsuite.core.device import PENDING
from vhostsuite.core.loop import Loop
from vhostsuite.devices.gpu import pixels
from vhostsuite.devices.gpu import wire as W
from vhostsuite.devices.gpu.display import BY_REFERENCE_MIN, DisplayChannel


def channel() -> tuple[DisplayChannel, socket.socket, Loop, list[str]]:
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    loop = Loop()
    lost: list[str] = []
    return DisplayChannel(ours, loop, 5.0, lambda: lost.append("lost")), peer, loop, lost


def ask(ch: DisplayChannel, wait: float, late: list) -> bytes | None:
    """GET_DISPLAY_INFO as the device asks it: a late reply goes to *late*."""
    reply = ch.get_display_info(wait)
    if reply is PENDING:
        ch.on_late(late.append)
    return reply


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        assert chunk, "the channel closed early"
        buf += chunk
    return bytes(buf)


def read_update(sock: socket.socket) -> tuple[tuple[int, ...], bytes]:
    request, flags, size = W.GPU_HEADER.unpack(recv_exact(sock, W.GPU_HEADER.size))
    assert request == W.VHOST_USER_GPU_UPDATE and flags == 0
    body = recv_exact(sock, size)
    return W.GPU_UPDATE_HEAD.unpack_from(body), body[W.GPU_UPDATE_HEAD.size :]


def mapped(n: int, fill: int) -> mmap.mmap:
    m = mmap.mmap(-1, n)
    m.write(bytes([fill]) * n)
    return m


def test_pixels_sent_by_reference_are_what_they_held_even_once_unmapped() -> None:
    """The kernel holds the pages: after the mapping is gone (and a new one, filled otherwise,
    may sit at the same address) the display still reads what was sent."""
    ch, peer, loop, lost = channel()
    n = 2 * BY_REFERENCE_MIN
    m = mapped(n, 0xA5)
    view = memoryview(m)
    assert ch.update(0, 1, 2, n // 4, 1, view, shared=True)
    assert not ch.output_waiting  # all taken by the socket
    if pixels.COMPILED:  # the pure-Python twin copies, so the channel sends it plainly
        assert ch._pipe is not None  # noqa: SLF001 - it went through the pipe, not sendmsg
    view.release()
    m.close()  # munmap
    other = mapped(n, 0x5A)
    head, pix = read_update(peer)
    assert head == (0, 1, 2, n // 4, 1) and pix == bytes([0xA5]) * n
    other.close()
    ch.close()
    peer.close()
    assert lost == []


def test_a_socket_that_takes_part_gets_the_rest_in_order_whatever_way_each_part_goes() -> None:
    """Small copied UPDATEs, large ones by reference and one large unshared (copied) between
    them, into a socket with a small buffer that a slow reader drains: every message arrives
    whole, in order, with its own pixels; the output waiting is released as it goes."""
    ch, peer, loop, lost = channel()
    ch.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)  # partial sends, many times over
    sizes = [16, 3 * BY_REFERENCE_MIN, 64, 5 * BY_REFERENCE_MIN + 4, 2 * BY_REFERENCE_MIN, 4]
    shared = [False, True, False, True, False, True]
    maps, sent = [], []
    ch.hold_output()  # a batch: one flush at its end
    for k, (n, sh) in enumerate(zip(sizes, shared, strict=True)):
        m = mapped(n, k + 1) if sh else bytearray([k + 1]) * n
        maps.append(m)
        assert ch.update(k, 0, k, n // 4, 1, memoryview(m), shared=sh)
        sent.append(((k, 0, k, n // 4, 1), bytes([k + 1]) * n))
    ch.flush_output()
    assert ch.output_waiting, "a 64 KiB socket buffer can't have taken it all"
    got: list[tuple[tuple[int, ...], bytes]] = []
    reader = threading.Thread(target=lambda: got.extend(read_update(peer) for _ in sizes))
    reader.start()
    for _ in range(100_000):
        if not ch.output_waiting:
            break
        loop.call_later(0.001, loop.stop)  # a turn: the writable callback sends what fits
        loop.run()
    reader.join(10)
    assert not ch.output_waiting and lost == []
    assert got == sent
    ch.close()
    peer.close()


def test_replies_in_pieces_and_together_reach_their_askers_in_order() -> None:
    """Replies split at every byte, and several in one read, are matched to their requests in
    order; a reply the asker waited for is returned by ask(), a late one reaches its callback."""
    ch, peer, loop, lost = channel()
    infos = [bytes([i]) * W.RESP_DISPLAY_INFO_SIZE for i in range(1, 5)]

    def reply(body: bytes) -> bytes:
        return W.GPU_HEADER.pack(W.VHOST_USER_GPU_GET_DISPLAY_INFO, W.VHOST_USER_GPU_MSG_FLAG_REPLY, len(body)) + body

    late: list[bytes | None] = []
    # no wait: each question is pending, answered from the loop as its reply comes
    for _ in infos[:3]:
        assert ask(ch, 0.0, late) is not None  # PENDING, not "can't be asked"
    for _ in range(3):
        assert len(recv_exact(peer, W.GPU_HEADER.size)) == W.GPU_HEADER.size
    wire = reply(infos[0]) + reply(infos[1])  # the first split at every byte, then two in one write
    for i in range(len(reply(infos[0]))):
        peer.send(wire[i : i + 1])
        ch._on_readable()
    assert late == [infos[0]]
    peer.send(wire[len(reply(infos[0])) :] + reply(infos[2]))
    ch._on_readable()
    assert late == infos[:3]
    # a question waited for gets its reply from ask() itself, the callback is not called
    threading.Timer(0.01, lambda: peer.send(reply(infos[3]))).start()
    assert ask(ch, 1.0, late) == infos[3]
    assert late == infos[:3] and not lost
    ch.close()
    loop.close()


def test_a_waited_question_whose_reply_is_late_gets_it_later_in_order() -> None:
    """The wait ends without the reply: the question is pending, and its reply, when it comes,
    reaches its callback; a reply of another kind meanwhile is not taken for it; a short reply
    waited for is a failure (None), and the next question is waited for again."""
    ch, peer, loop, lost = channel()

    def reply(request: int, body: bytes) -> bytes:
        return W.GPU_HEADER.pack(request, W.VHOST_USER_GPU_MSG_FLAG_REPLY, len(body)) + body

    info = b"\x07" * W.RESP_DISPLAY_INFO_SIZE
    late: list[bytes | None] = []
    assert ask(ch, 0.002, late) is PENDING
    assert W.GPU_HEADER.unpack(recv_exact(peer, W.GPU_HEADER.size))[0] == W.VHOST_USER_GPU_GET_DISPLAY_INFO
    # a second question of the kind is not waited for: the next reply is the first one's
    assert ask(ch, 1.0, late) is PENDING
    recv_exact(peer, W.GPU_HEADER.size)
    edid = reply(W.VHOST_USER_GPU_GET_EDID, bytes(W.RESP_EDID_SIZE))
    peer.send(edid + reply(W.VHOST_USER_GPU_GET_DISPLAY_INFO, info))
    ch._on_readable()
    assert late == [info]
    peer.send(reply(W.VHOST_USER_GPU_GET_DISPLAY_INFO, info + b"more"))  # cut to its size
    ch._on_readable()
    assert late == [info, info]
    threading.Timer(0.01, lambda: peer.send(reply(W.VHOST_USER_GPU_GET_DISPLAY_INFO, info[:8]))).start()
    assert ask(ch, 1.0, late) is None
    threading.Timer(0.01, lambda: peer.send(reply(W.VHOST_USER_GPU_GET_DISPLAY_INFO, info))).start()
    assert ask(ch, 1.0, late) == info
    assert late == [info, info] and not lost
    ch.close()
    loop.close()


def test_small_messages_of_a_batch_go_in_one_part_and_in_order() -> None:
    """Small messages held for a batch are copied into one buffer (one part for the socket,
    not two each); a large one between them keeps its place; all arrive whole and in order."""
    ch, peer, loop, lost = channel()
    ch.hold_output()
    for i in range(16):
        ch.update(0, i, 0, 1, 1, memoryview(bytes([i]) * 4))
    big = memoryview(bytes(range(256)) * 64)  # 16 KiB: a part of its own
    ch.update(0, 0, 1, 64, 64, big)
    ch.update(0, 99, 0, 1, 1, memoryview(b"\x63" * 4))
    assert len(ch._held) == 4  # the 16 small ones, the big one's head and pixels, the last small one
    ch.flush_output()
    for i in range(16):
        assert read_update(peer) == ((0, i, 0, 1, 1), bytes([i]) * 4)
    assert read_update(peer) == ((0, 0, 1, 64, 64), bytes(big))
    assert read_update(peer) == ((0, 99, 0, 1, 1), b"\x63" * 4)
    assert not lost and not ch.output_waiting
    ch.close()
    loop.close()
