"""libvirt launches our vhost-user-gpu: Debian 13's libvirtd (11.3, monolithic) and QEMU 10 in a
fresh root where our package is installed, a domain with ``<driver name='vhostuser'/>`` on its
virtio video. libvirt finds the back-end through the discovery files, starts it with --fd, and
the guest's KMS drawing reaches ``virsh screenshot`` pixel for pixel.

QEMU's own back-end (qemu-system-gui) is installed there too, as Debian recommends: its
``50-qemu-gpu.json`` sorts before ours, so libvirt picks it; the README's administrator recipe
(an ``/etc/qemu/vhost-user`` link to ours that sorts first) makes libvirt pick ours.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vhostsuite.testing import debroot
from vhostsuite.testing.guest import Guest, Unavailable
from vhostsuite.testing.screen import differing_pixels, expected, load_rgb

pytestmark = pytest.mark.e2e

LIBVIRT_PACKAGES = ("libvirt-daemon", "libvirt-daemon-driver-qemu", "libvirt-clients", "qemu-system-x86",
                    "qemu-system-gui")  # fmt: skip
#: libvirtd in a root without systemd, cgroups, virtlogd or a security module.
QEMU_CONF = """
user = "root"
group = "root"
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "file"
remember_owner = 0
"""
#: What libvirt runs, in a log of its own: it shows libvirt asked our program what it can do.
LIBVIRTD_CONF = """
log_filters = "1:util.command"
log_outputs = "1:file:/var/log/libvirt/commands.log"
"""
PR_SET_CHILD_SUBREAPER = 36
DOMAIN = """<domain type='qemu'>
  <name>vhs-gpu</name>
  <memory unit='MiB'>512</memory>
  <memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>/var/lib/libvirt/images/vmlinuz</kernel>
    <initrd>/var/lib/libvirt/images/initrd.gz</initrd>
    <cmdline>console=ttyS0 quiet panic=-1 vhs.run=gpu-draw vhs.gpu_delay=60</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <serial type='file'><source path='/tmp/serial.log'/><target port='0'/></serial>
    <video><model type='virtio' heads='1'/><driver name='vhostuser'/></video>
    <memballoon model='none'/>
  </devices>
</domain>
"""


class Libvirtd:
    """libvirtd running in *root* (its own mount namespace with /proc, /sys, /dev), and virsh."""

    def __init__(self, root: Path, log: Path) -> None:
        self.root = root
        (root / "run/libvirt").mkdir(parents=True, exist_ok=True)
        inner = (f"mount -t proc proc {root}/proc && mount --rbind /sys {root}/sys && mount --rbind /dev {root}/dev && "
                 f"exec chroot {root} /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "
                 "/usr/sbin/libvirtd")  # fmt: skip
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "/bin/sh", "-ec", inner],
                                     stdout=self._log, stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + 30
        while self.virsh("version").returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"libvirtd did not start: {log.read_text()[-2000:]}")
            time.sleep(0.3)

    def virsh(self, *args: str) -> subprocess.CompletedProcess[str]:
        chroot = shutil.which("chroot") or "/usr/sbin/chroot"
        return subprocess.run([chroot, str(self.root), "virsh", "-c", "qemu:///system", *args],
                              capture_output=True, text=True, timeout=120)  # fmt: skip

    def stop(self) -> None:
        self.virsh("destroy", "vhs-gpu")
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


@pytest.fixture(scope="module")
def virt_root(deb: tuple[Path, str], guest: Guest, tmp_path_factory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("virt-root")
    try:
        debroot.install_root(deb[0], root, extra=LIBVIRT_PACKAGES)
    except Unavailable as e:
        pytest.skip(f"no Debian root with libvirt here: {e}")
    with open(root / "etc/libvirt/qemu.conf", "a") as f:
        f.write(QEMU_CONF)
    with open(root / "etc/libvirt/libvirtd.conf", "a") as f:
        f.write(LIBVIRTD_CONF)
    images = root / "var/lib/libvirt/images"
    images.mkdir(parents=True, exist_ok=True)
    shutil.copy(guest.kernel, images / "vmlinuz")
    shutil.copy(guest.initrd, images / "initrd.gz")
    (root / "tmp/dom.xml").write_text(DOMAIN)
    yield root
    shutil.rmtree(root, ignore_errors=True)


class Orphans:
    """Adopt the processes libvirt daemonises (prctl PR_SET_CHILD_SUBREAPER): the back-end's
    exit status is then ours to read. They are reaped as they end, by a thread: libvirt waits
    for QEMU to be gone, and a zombie of ours would not be."""

    NAMES = ("vhost-user-gpu", "qemu-system-x86")  # /proc/PID/comm, at most 15 bytes

    def __init__(self) -> None:
        self.status: dict[int, int] = {}
        self._stop = threading.Event()
        self._prctl(1)
        self._thread = threading.Thread(target=self._reap, daemon=True)
        self._thread.start()

    @staticmethod
    def _prctl(on: int) -> None:
        if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, on, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")

    def _adopted(self) -> list[int]:
        me, pids = os.getpid(), []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                text = stat.read_text()
            except OSError:
                continue
            comm, rest = text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :].split()
            if int(rest[1]) == me and comm in self.NAMES:
                pids.append(int(stat.parent.name))
        return pids

    def _reap(self) -> None:
        while not self._stop.wait(0.05):
            for pid in self._adopted():
                with contextlib.suppress(ChildProcessError):
                    done, status = os.waitpid(pid, os.WNOHANG)
                    if done:
                        self.status[pid] = os.waitstatus_to_exitcode(status)

    def wait(self, pid: int, timeout: float) -> int | None:
        """*pid*'s exit status once it ended (None if it did not within *timeout*)."""
        deadline = time.monotonic() + timeout
        while pid not in self.status and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.status.get(pid)

    def close(self) -> None:
        self._prctl(0)
        self._stop.set()
        self._thread.join()


def _gpu_backends() -> list[str]:
    out = subprocess.run(["pgrep", "-af", "vhost-user-gpu"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


def _start(virt_root: Path, lv: Libvirtd) -> subprocess.CompletedProcess[str]:
    (virt_root / "tmp/serial.log").unlink(missing_ok=True)
    return lv.virsh("create", "/tmp/dom.xml")


def test_libvirt_picks_the_discovery_file_that_sorts_first(virt_root: Path, tmp_path: Path) -> None:
    assert (virt_root / "usr/share/qemu/vhost-user/50-qemu-gpu.json").exists()  # QEMU's, from qemu-system-gui
    lv = Libvirtd(virt_root, tmp_path / "libvirtd.log")
    try:
        started = _start(virt_root, lv)
        # QEMU's C back-end advertises render-node: on a host without /dev/dri the domain fails,
        # or it runs QEMU's binary; either way, not ours.
        ours = [line for line in _gpu_backends() if "/usr/libexec/vhost-user-gpu" in line]
        assert not ours, ours
        if not Path("/dev/dri").exists():  # these hosts
            assert started.returncode != 0 and "/dev/dri" in started.stderr, started.stdout + started.stderr
        else:
            assert any("/usr/lib/qemu/vhost-user-gpu" in line for line in _gpu_backends())
    finally:
        lv.stop()


def test_libvirt_launches_ours_and_the_drawing_reaches_virsh_screenshot(virt_root: Path, tmp_path: Path) -> None:
    etc = virt_root / "etc/qemu/vhost-user"
    etc.mkdir(parents=True, exist_ok=True)
    link = etc / "40-vhostsuite-gpu.json"
    link.unlink(missing_ok=True)
    link.symlink_to("/usr/share/qemu/vhost-user/50-vhostsuite-gpu.json")  # the README's recipe
    commands = virt_root / "var/log/libvirt/commands.log"
    commands.unlink(missing_ok=True)
    orphans = Orphans()
    lv = Libvirtd(virt_root, tmp_path / "libvirtd.log")
    try:
        started = _start(virt_root, lv)
        assert started.returncode == 0, started.stdout + started.stderr
        # libvirt asked the program what it can do, then launched it with --fd
        assert "About to run /usr/libexec/vhost-user-gpu --print-capabilities" in commands.read_text()
        (ours,) = _gpu_backends()
        assert "/usr/libexec/vhost-user-gpu --fd=" in ours, ours
        backend_pid = int(ours.split()[0])
        serial = virt_root / "tmp/serial.log"
        deadline = time.monotonic() + 300
        while "GPU-FRAME1" not in (serial.read_text(errors="replace") if serial.exists() else ""):
            assert time.monotonic() < deadline, serial.read_text(errors="replace")[-2000:]
            time.sleep(0.5)
        line = next(x for x in serial.read_text(errors="replace").splitlines() if x.startswith("GPU-FRAME1"))
        w, h = (int(v) for v in line.split()[1:3])
        want = expected(w, h)
        note = ""
        for n in range(40):
            shot = lv.virsh("screenshot", "vhs-gpu", f"/tmp/shot{n}")
            assert shot.returncode == 0, shot.stderr
            fmt = "png" if "png" in shot.stdout else "ppm"
            sw, sh, rgb = load_rgb(virt_root / f"tmp/shot{n}", fmt)
            if (sw, sh) == (w, h) and rgb == want:
                break
            note = f"{sw}x{sh}" if (sw, sh) != (w, h) else f"{len(differing_pixels(w, rgb, want))} pixels differ"
            time.sleep(1)
        else:
            raise AssertionError(f"virsh screenshot never showed the drawing: {note}")
        assert lv.virsh("destroy", "vhs-gpu").returncode == 0
        # the domain went: so does its back-end, cleanly (libvirt sends SIGTERM)
        assert orphans.wait(backend_pid, 20) == 0
        assert not _gpu_backends()
    finally:
        link.unlink(missing_ok=True)
        lv.stop()
        orphans.close()
