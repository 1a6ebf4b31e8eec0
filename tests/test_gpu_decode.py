"""The compiled control-command decoder and encoder (_commands.pyx) and the pure-Python ones
agree: on every chain, the header, the typed command or the error Reply, field by field; on
every header and reply, the response bytes. Each example is a real
chain in guest memory (readable buffers cut at random places, so a command may span several),
popped from a real ring; its bytes are a control command of a random or known type, whole or
cut short, with random field values."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vhostsuite.core import ring
from vhostsuite.devices.gpu import commands as K
from vhostsuite.devices.gpu import wire as W
from vhostsuite.testing.ringutil import GuestRing

if K.NO_EXTENSIONS:
    pytest.skip("VHOSTSUITE_NO_EXTENSIONS is set: nothing to compare", allow_module_level=True)
_commands = pytest.importorskip("vhostsuite.devices.gpu._commands", reason="the compiled decoder is not built")

SETTINGS = settings(max_examples=int(os.environ.get("DECODE_PROP_EXAMPLES", "400")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
KNOWN = sorted(W.COMMAND_SIZES) + [0, 0x100 + 31, 0x200 + 31, 0x1FF, 0x300, 0xFFFF_FFFF]


@st.composite
def commands(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    """A command's bytes (a known type or any, its full size or cut short, or longer) and where
    the chain's readable buffers end."""
    ctype = draw(st.sampled_from(KNOWN) | st.integers(0, 0xFFFF_FFFF))
    flags = draw(st.sampled_from([0, W.VIRTIO_GPU_FLAG_FENCE, 3]) | st.integers(0, 0xFFFF_FFFF))
    head = W.CTRL_HDR.pack(ctype, flags, draw(st.integers(0, (1 << 64) - 1)), draw(st.integers(0, 0xFFFF_FFFF)),
                           draw(st.integers(0, 255)))  # fmt: skip
    size = W.COMMAND_SIZES.get(ctype, W.CTRL_HDR.size)
    body = draw(st.binary(min_size=max(0, size - W.CTRL_HDR.size), max_size=max(0, size - W.CTRL_HDR.size) + 64))
    if ctype == W.VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING and len(body) >= 8:
        body = struct.pack("<II", 1, draw(st.integers(0, 3))) + body[8:]  # a few entries, maybe missing
    data = (head + body)[: draw(st.integers(0, len(head) + len(body)))] if draw(st.booleans()) else head + body
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(data) - 1)), max_size=4))) if len(data) > 1 else []
    return data, cuts


def chain_of(data: bytes, cuts: list[int]):  # noqa: ANN201 - a compiled Chain
    g = GuestRing(8)
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)] if data else [b""]
    g.add_chain([p for p in pieces if p] or [b""], [24])
    return g.queue(ring.Virtqueue).pop(), g


@SETTINGS
@given(commands())
def test_the_twins_decode_every_command_alike(cmd: tuple[bytes, list[int]]) -> None:
    data, cuts = cmd
    chain, keep = chain_of(data, cuts)
    got, want = _commands.decode_control(chain), K.decode_control_py(chain)
    assert got == want
    assert [type(x) for x in got] == [type(x) for x in want]


@SETTINGS
@given(st.tuples(st.sampled_from(KNOWN) | st.integers(0, 0xFFFF_FFFF),
                 st.sampled_from([0, W.VIRTIO_GPU_FLAG_FENCE, 3, W.VIRTIO_GPU_FLAG_INFO_RING_IDX])
                 | st.integers(0, 0xFFFF_FFFF), st.integers(0, (1 << 64) - 1), st.integers(0, 0xFFFF_FFFF),
                 st.integers(0, 255)),
       st.sampled_from([K.OK_NODATA, K.ERR_UNSPEC, K.ERR_INVALID_PARAMETER])
       | st.builds(K.Reply, st.integers(0, 0xFFFF_FFFF), st.binary(max_size=600)))  # fmt: skip
def test_the_twins_encode_every_reply_alike(hdr: tuple[int, ...], reply: K.Reply) -> None:
    assert _commands.encode(hdr, reply) == K.encode_py(hdr, reply)
    assert type(_commands.encode(hdr, reply)) is bytes


def test_the_compiled_decoder_is_the_one_in_use() -> None:
    assert K.decode_control is _commands.decode_control and K.encode is _commands.encode
    assert K.IMPORT_ERROR is None
    flush = W.CTRL_HDR.pack(W.VIRTIO_GPU_CMD_RESOURCE_FLUSH, 1, 7, 2, 0) + W.RESOURCE_FLUSH.pack(1, 2, 3, 4, 5, 0)
    chain, keep = chain_of(flush, [])
    assert K.decode_control(chain) == ((W.VIRTIO_GPU_CMD_RESOURCE_FLUSH, 1, 7, 2, 0), K.ResourceFlush(1, 2, 3, 4, 5, 0))


def _recording_tables(calls: list) -> tuple[dict, dict]:
    """Handlers that record how they were called: the fixed-size commands but GET_DISPLAY_INFO
    and GET_EDID, ATTACH_BACKING and what is unsupported take their fields; those two ask
    (command, header, chain) and answer with a Reply, bytes or something else by field count."""

    def plain(cls: type):  # noqa: ANN202
        def handler(*fields: object) -> K.Reply:
            calls.append((cls.__name__, fields))
            return K.Reply(0x1100 + len(fields), bytes(len(fields)))

        return handler

    def asking(command: tuple, hdr: tuple, chain: object) -> object:
        calls.append((type(command).__name__, tuple(command), hdr))
        return (K.OK_NODATA, b"as it is", "PENDING")[hdr[4] % 3]

    classes = [cls for _, cls in K.CONTROL_LAYOUTS.values()] + [K.AttachBacking, K.Unsupported]
    handlers = {cls: plain(cls) for cls in classes if cls not in (K.GetDisplayInfo, K.GetEdid)}
    return handlers, {K.GetDisplayInfo: asking, K.GetEdid: asking}


@SETTINGS
@given(commands())
def test_the_twins_handle_every_command_alike(cmd: tuple[bytes, list[int]]) -> None:
    """The control queue's handler, compiled and pure: the same response, the same handler
    called with the same values, the batch begun once."""
    data, cuts = cmd
    out = []
    for cls in (_commands.ControlHandler, K.ControlHandler_py):
        calls: list = []
        handler = cls(*_recording_tables(calls), lambda calls=calls: calls.append("begin"))
        chain, keep = chain_of(data, cuts)
        first = handler.handle(chain)
        chain, keep = chain_of(data, cuts)
        second = handler.handle(chain)
        assert handler.in_batch
        out.append((first, second, calls))
    assert out[0] == out[1]
    assert out[0][2].count("begin") == 1


def test_the_control_handler_reads_a_chain_of_any_type() -> None:
    """A chain that is not the compiled ring's (the pure ring's) is read through its API."""
    from vhostsuite.core import _ring_py

    flush = W.CTRL_HDR.pack(W.VIRTIO_GPU_CMD_RESOURCE_FLUSH, W.VIRTIO_GPU_FLAG_FENCE, 7, 2, 0)
    flush += W.RESOURCE_FLUSH.pack(1, 2, 3, 4, 5, 0)
    g = GuestRing(8)
    g.add_chain([flush[:10], flush[10:]], [24])
    chain = g.queue(_ring_py.Virtqueue).pop()
    calls: list = []
    handler = _commands.ControlHandler(*_recording_tables(calls), lambda: None)
    response = handler.handle(chain)
    assert calls == [("ResourceFlush", (1, 2, 3, 4, 5, 0))]
    assert response == W.CTRL_HDR.pack(0x1106, W.VIRTIO_GPU_FLAG_FENCE, 7, 2, 0) + bytes(6)
