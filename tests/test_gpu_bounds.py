"""What a guest can make vhost-user-gpu spend: each resource is charged what it costs, and a
flush costs O(1) Python objects whatever the rectangle's shape."""

from __future__ import annotations

from vhostsuite.devices.gpu import wire as W
from vhostsuite.devices.gpu.resources import RESOURCE_COST
from vhostsuite.testing.frontend_gpu import GpuDisplay, hdr, open_gpu

BGRX = W.VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM
OK = W.VIRTIO_GPU_RESP_OK_NODATA
OOM = W.VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY


def _status(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key))


def test_tiny_resources_are_charged_what_they_cost(spawn) -> None:
    """1x1 resources under --max-hostmem=1M: about 1M / (4 + RESOURCE_COST) of them, not 1M / 4."""
    be, fe = spawn("vhost-user-gpu", "--max-hostmem=1M")
    with GpuDisplay() as display:
        drv = open_gpu(fe, display)
        rss0 = _status(be.proc.pid, "VmRSS:")
        cmds = [hdr(W.VIRTIO_GPU_CMD_RESOURCE_CREATE_2D) + W.RESOURCE_CREATE_2D.pack(rid, BGRX, 1, 1)
                for rid in range(1, 2001)]  # fmt: skip
        answers = [W.CTRL_HDR.unpack_from(r)[0] for i in range(0, len(cmds), 30) for r in drv.batch(cmds[i : i + 30])]
        made = answers.count(OK)
        assert made == (1 << 20) // (4 + RESOURCE_COST)
        assert set(answers[made:]) == {OOM}
        assert _status(be.proc.pid, "VmRSS:") - rss0 < 4 << 10  # KiB: bounded by the cap plus slack
        # unref gives the charge back: as many fit again
        for rid in range(1, made + 1):
            assert drv.unref(rid) == OK
        assert drv.create_2d(5000, BGRX, 1, 1) == OK


def test_tall_narrow_flush_costs_no_object_per_row(spawn) -> None:
    """A 1-pixel-wide flush of a 262,144-row resource on a scanout: one staging copy (1 MiB),
    not a view per row (~50 MiB of Python objects for a moment)."""
    rows = 1 << 18
    be, fe = spawn("vhost-user-gpu")
    with GpuDisplay(outputs=[(2, rows)], keep_images=False) as display:
        drv = open_gpu(fe, display)
        drv.make_resource(1, BGRX, 2, rows, bytes(2 * rows * 4))  # already x8r8g8b8: no conversion
        assert drv.set_scanout(0, 1, 0, 0, 2, rows) == OK
        peak0 = _status(be.proc.pid, "VmHWM:")
        before = display.updates
        assert drv.flush(1, 1, 0, 1, rows) == OK
        display.wait_updates(before + 1, 10)
        assert _status(be.proc.pid, "VmHWM:") - peak0 < 8 << 10  # KiB
        assert not display.errors
