"""A guest can't flood the host's logs: warnings it causes are rate-limited per kind
(``vhostsuite.core.guestlog``): the first few, then one line with a count every few seconds."""

from __future__ import annotations

import time

from vhostsuite.core import guestlog
from vhostsuite.devices.gpu import wire as W
from vhostsuite.testing.frontend_gpu import GpuDisplay, GpuDriver, open_gpu

BGRX = W.VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM
BAD = W.VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER


def _lines(be, text: str) -> list[str]:  # noqa: ANN001
    return [line for line in be.stderr().splitlines() if text in line]


def test_failing_transfers_log_a_bounded_number_of_lines(spawn) -> None:
    be, fe = spawn("vhost-user-gpu")
    with GpuDisplay() as display:
        drv = open_gpu(fe, display)
        drv.make_resource(1, BGRX, 4, 4)
        bad = GpuDriver.transfer_cmd(1, 0, 0, 4, 4, 1 << 20)  # past the backing: refused, with a warning
        rounds = 300
        for _ in range(rounds):
            assert {W.CTRL_HDR.unpack_from(r)[0] for r in drv.batch([bad] * 16)} == {BAD}
        refused = _lines(be, "transfer refused")
        assert len(refused) == guestlog.BURST, refused[-3:]
        assert len(_lines(be, "more 'transfer' messages are counted")) == 1
        assert len(be.stderr().splitlines()) < 20, be.stderr()[-2000:]
        # after the interval the next one reports how many were left out
        time.sleep(guestlog.INTERVAL + 0.2)
        assert drv.cmd_type(bad) == BAD
        (summary,) = _lines(be, "more 'transfer' messages in")
        assert summary.split(": WARNING: ")[1].startswith(f"{rounds * 16 - guestlog.BURST + 1} more")
        assert "transfer refused" in summary
    assert be.proc.poll() is None


def test_debug_logging_shows_every_warning(spawn) -> None:
    be, fe = spawn("vhost-user-gpu", "-vv")
    with GpuDisplay() as display:
        drv = open_gpu(fe, display)
        drv.make_resource(1, BGRX, 4, 4)
        bad = GpuDriver.transfer_cmd(1, 0, 0, 4, 4, 1 << 20)
        for _ in range(3):
            drv.batch([bad] * 10)
        assert len(_lines(be, "transfer refused")) == 30


def test_refused_vhost_user_messages_log_a_bounded_number_of_lines(spawn) -> None:
    """A front-end's refused messages are rate-limited the same way, per request."""
    from vhostsuite.core import protocol as P

    be, fe = spawn("vhost-user-rng")
    fe.set_protocol_features(fe.get_protocol_features())
    for _ in range(2000):
        assert fe.call(P.Request.SET_VRING_NUM, P.VRING_STATE.pack(0, 100), need_reply=True) == P.U64.pack(1)
        assert fe.call(0xABCD, b"", need_reply=True) == P.U64.pack(1)
    assert len(_lines(be, "SET_VRING_NUM refused")) == guestlog.BURST
    assert len(_lines(be, "refused: unsupported message")) == guestlog.BURST
    assert len(be.stderr().splitlines()) < 20, be.stderr()[-2000:]
    assert be.proc.poll() is None
