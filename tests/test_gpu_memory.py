"""Memory the front-end removes is gone for vhost-user-gpu: a resource backed there is detached
(transfers answer ERR_INVALID_RESOURCE_ID, as for a resource without backing) and the old
mapping is unmapped, while a region that the front-end sends again unchanged keeps working."""

from __future__ import annotations

import pytest

from vhostsuite.core import protocol as P
from vhostsuite.devices.gpu import wire as W
from vhostsuite.testing.frontend import GuestRam
from vhostsuite.testing.frontend_gpu import Backing, GpuDisplay, GpuDriver, open_gpu

BGRX = W.VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM
OK = W.VIRTIO_GPU_RESP_OK_NODATA
NO_BACKING = W.VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID
W_, H_ = 64, 16
MIB = 1 << 20


def _ram() -> GuestRam:
    return GuestRam(64 * MIB, regions=2)  # rings in region 0, the backing in region 1


def _mapped_offsets(pid: int) -> set[int]:
    """File offsets at which the back-end maps the guest RAM's memfd."""
    offsets = set()
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 6 and GuestRam.MEMFD_NAME in fields[5]:
                offsets.add(int(fields[2], 16))
    return offsets


def _backed_resource(drv, ram: GuestRam) -> Backing:
    backing = Backing(drv.fe, W_ * H_ * 4, scatter=True, seed=1, top=True)
    assert all(gpa >= ram.regions[1].guest_phys_addr for gpa, _ in backing.entries())
    assert drv.create_2d(1, BGRX, W_, H_) == OK
    assert drv.attach_backing(1, backing.entries()) == OK
    backing.write(0, bytes(range(256)) * (W_ * H_ * 4 // 256))
    assert drv.transfer(1, 0, 0, W_, H_, 0) == OK
    return backing


def test_rem_mem_reg_detaches_a_backing_there_and_unmaps_the_region(spawn) -> None:
    ram = _ram()
    be, fe = spawn("vhost-user-gpu", ram=ram)
    with GpuDisplay() as display:
        drv = open_gpu(fe, display)
        assert fe.protocol_features & (1 << P.ProtocolFeature.CONFIGURE_MEM_SLOTS)
        _backed_resource(drv, ram)
        region1 = ram.regions[1]
        assert region1.mmap_offset in _mapped_offsets(be.proc.pid)

        fe.call_acked(P.Request.REM_MEM_REG, P.encode_single_region(region1))
        assert region1.mmap_offset not in _mapped_offsets(be.proc.pid)  # no old generation pinned
        assert drv.transfer(1, 0, 0, W_, H_, 0) == NO_BACKING
        assert drv.flush(1, 0, 0, W_, H_) == OK  # the resource itself is still there

        # The region comes back (QEMU removes, then adds): the backing stays detached until
        # the guest attaches one again, which then works.
        fe.call_acked(P.Request.ADD_MEM_REG, P.encode_single_region(region1), [ram.fd])
        assert drv.transfer(1, 0, 0, W_, H_, 0) == NO_BACKING
        backing = Backing(fe, W_ * H_ * 4, scatter=False, top=True)
        assert drv.attach_backing(1, backing.entries()) == OK
        assert drv.transfer(1, 0, 0, W_, H_, 0) == OK
        assert be.proc.poll() is None


def test_a_mem_table_sent_again_unchanged_keeps_backings_and_one_mapping(spawn) -> None:
    """QEMU sends the whole table again at every start; nothing the guest set up is lost and
    no second generation of the mapping appears."""
    ram = _ram()
    be, fe = spawn("vhost-user-gpu", ram=ram)
    with GpuDisplay(outputs=[(W_, H_)]) as display:
        fe.initialize(want_protocol=~(1 << P.ProtocolFeature.CONFIGURE_MEM_SLOTS))
        display.attach(fe)
        drv_ctrl, drv_cursor = fe.start([64, 16])
        drv = GpuDriver(fe, drv_ctrl, drv_cursor)
        backing = _backed_resource(drv, ram)
        maps_before = open(f"/proc/{be.proc.pid}/maps").read().count(GuestRam.MEMFD_NAME)
        for _ in range(3):
            fe.set_mem_table()
        assert open(f"/proc/{be.proc.pid}/maps").read().count(GuestRam.MEMFD_NAME) == maps_before
        # the backing still reads the guest's pages: new content arrives on the scanout
        pattern = bytes([0x11, 0x22, 0x33, 0xFF]) * (W_ * H_)
        backing.write(0, pattern)
        assert drv.transfer(1, 0, 0, W_, H_, 0) == OK
        assert drv.set_scanout(0, 1, 0, 0, W_, H_) == OK
        assert drv.flush(1, 0, 0, W_, H_) == OK
        # no image at all until the first UPDATE arrives: the wait must not trip over that
        assert display.wait_for(lambda: 0 in display.images and display.image(0)[2] == pattern)
        assert display.image(0)[2] == pattern


@pytest.mark.parametrize("change", ["moved", "dropped"])
def test_a_mem_table_without_the_region_detaches_its_backings(spawn, change: str) -> None:
    ram = _ram()
    be, fe = spawn("vhost-user-gpu", ram=ram)
    with GpuDisplay() as display:
        fe.initialize(want_protocol=~(1 << P.ProtocolFeature.CONFIGURE_MEM_SLOTS))
        display.attach(fe)
        ctrl, cursor = fe.start([64, 16])
        drv = GpuDriver(fe, ctrl, cursor)
        _backed_resource(drv, ram)
        r0, r1 = ram.regions
        if change == "moved":  # the same pages now at other guest addresses
            table = [r0, P.MemRegion(r1.guest_phys_addr + (1 << 32), r1.memory_size, r1.userspace_addr,
                                     r1.mmap_offset)]  # fmt: skip
        else:
            table = [r0]
        fe.call_acked(P.Request.SET_MEM_TABLE, P.encode_mem_table(table), [ram.fd] * len(table))
        offsets = _mapped_offsets(be.proc.pid)
        assert r0.mmap_offset in offsets
        # "moved" maps the region anew (at another gpa); "dropped" leaves nothing of it
        assert (r1.mmap_offset in offsets) == (change == "moved")
        assert drv.transfer(1, 0, 0, W_, H_, 0) == NO_BACKING
        assert be.proc.poll() is None
