"""Guest kit: provision QEMU >= 8.2 and a tiny Linux guest, and boot it under TCG.

This module is standard-library only. It is used by the end-to-end tests (``tests/e2e``)
and by demos to run a real guest kernel against our vhost-user back-ends.

Provisioning (everything is cached under :func:`cache_dir`, built atomically)
------------------------------------------------------------------------------
* :func:`provision_qemu` uses ``$VHOSTSUITE_QEMU`` or the host's ``qemu-system-x86_64`` if it
  is >= 8.2. Otherwise it ``debootstrap``\\ s a Debian *trixie* tree holding QEMU 10
  (``qemu-<suite>/`` in the cache, ~1 min the first time, needs root) and runs that QEMU
  through the tree's own dynamic loader (``ld-linux-x86-64.so.2 --library-path ...``) with
  ``QEMU_MODULE_DIR`` and ``-L`` firmware directories pointing into the tree.
* :func:`provision_guest` downloads Debian's ``linux-image-amd64`` kernel (``apt-get download``
  of the concrete ``linux-image-6.x`` package, ``dpkg -x``, ``depmod -b``) and builds a gzip'd
  cpio (newc) initramfs around ``busybox-static``.

Missing host tools (debootstrap, busybox-static, kmod, gcc, libdrm-dev) are ``apt-get
install``\\ ed when running as root on a Debian-like host, unless ``VHOSTSUITE_NO_APT=1``.
When something cannot be provisioned, :class:`Unavailable` is raised with a human reason.

Guest programs: ``vhostsuite/testing/guest_src/``
-------------------------------------------------
* ``NAME.c``  -- compiled on the host with ``gcc -static -O2 -I/usr/include/libdrm`` and
  installed as ``/bin/NAME`` in the initramfs. Extra flags may be given in the source with a
  line containing ``vhs-cflags: <flags>`` (e.g. ``// vhs-cflags: -lm``). Only static libraries
  work (libdrm-dev ships no ``libdrm.a``: use the DRM ioctls from the kernel headers).
* ``NAME.sh`` -- installed as ``/tests/NAME.sh`` and run with busybox ``sh``.
* ``modules.txt`` (optional) -- extra kernel module names to load, one per line, ``#`` comments.
  :data:`GUEST_MODULES` are always loaded (dependencies are resolved from ``modules.dep``).

The initramfs is rebuilt automatically whenever any of these files, this module, busybox or the
kernel change (its file name carries a hash of all inputs).

Guest ``/init`` protocol (everything on ``ttyS0``)
--------------------------------------------------
1. mounts proc, sysfs, devtmpfs, devpts, tmpfs on /tmp; ``insmod``\\ s the modules in
   dependency order, printing ``VHS-INSMOD-FAIL <file>: <error>`` for each failure;
2. prints ``VHS-BOOTED modules_failed=<n>``;
3. runs the test named by the kernel parameter ``vhs.run=NAME``: ``/bin/NAME`` if it exists,
   else ``/tests/NAME.sh``; ``vhs.run=shell`` gives an interactive shell on the console;
   programs can read further parameters (``cmdline_extra``) from ``/proc/cmdline``;
4. prints ``VHS-DONE rc=<exit status>`` and powers off (QEMU exits thanks to ``-no-reboot``).

Example::

    qemu, guest = provision_qemu(), provision_guest()
    with VM(qemu, guest, "rng", ["-device", "virtio-rng-pci"]) as vm:
        vm.wait_for(r"VHS-DONE rc=(\\d+)", timeout=120)
        print(vm.serial_text())
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import dataclasses
import fcntl
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import struct
import subprocess
import tempfile
import time
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "GUEST_MODULES",
    "MIN_QEMU_VERSION",
    "VM",
    "Guest",
    "QMPError",
    "Qemu",
    "Unavailable",
    "cache_dir",
    "provision_guest",
    "provision_qemu",
]

#: Oldest QEMU that accepts vhost-user-gpu/-input under TCG.
MIN_QEMU_VERSION: tuple[int, int, int] = (8, 2, 0)
#: Debian suite debootstrapped to get a recent QEMU.
DEBIAN_SUITE = "trixie"
#: Packages installed into the debootstrap tree. ``dbus-x11`` satisfies dconf-service's
#: ``dbus-session-bus`` alternative, which debootstrap cannot resolve by itself.
QEMU_PACKAGES: tuple[str, ...] = (
    "qemu-system-x86",
    "qemu-system-gui",
    "qemu-system-modules-opengl",
    "qemu-system-modules-spice",
    "dbus-x11",
)
#: Kernel modules always loaded in the guest (plus their dependencies).
GUEST_MODULES: tuple[str, ...] = ("virtio_pci", "virtio_rng", "virtio_input", "evdev", "virtio_gpu")
#: Directory of guest programs/scripts baked into the initramfs.
GUEST_SRC = Path(__file__).resolve().with_name("guest_src")

_DEFAULT_MIRROR = "http://deb.debian.org/debian"
_COMPLETE = ".vhs-complete"


class Unavailable(Exception):
    """QEMU >= 8.2 or the guest cannot be provisioned here; ``str(exc)`` says why."""


class QMPError(RuntimeError):
    """A QMP command returned an error."""

    def __init__(self, command: str, error: dict[str, Any]) -> None:
        self.command = command
        self.error_class = str(error.get("class", ""))
        self.desc = str(error.get("desc", ""))
        super().__init__(f"QMP {command}: {self.error_class}: {self.desc}")


@dataclasses.dataclass(frozen=True)
class Qemu:
    """How to run qemu-system-x86_64: ``argv`` prefix (loader, binary, ``-L``) and extra env."""

    argv: list[str]
    env: dict[str, str]
    version: tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class Guest:
    """A bootable guest: kernel image and initramfs."""

    kernel: Path
    initrd: Path
    kernel_version: str = ""
    modules: tuple[str, ...] = ()
    programs: tuple[str, ...] = ()


# --------------------------------------------------------------------------------------------
# small helpers


def cache_dir() -> Path:
    """Return the cache directory: ``$VHOSTSUITE_CACHE`` or ``~/.cache/vhostsuite``."""
    env = os.environ.get("VHOSTSUITE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "vhostsuite"


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    """Hold an exclusive inter-process lock ``<cache>/<name>.lock``."""
    d = cache_dir()
    d.mkdir(parents=True, exist_ok=True)
    with open(d / f"{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run(argv: list[str], *, timeout: float = 1800, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing text output (stdout+stderr merged)."""
    return subprocess.run(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", timeout=timeout, **kw
    )


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _is_root() -> bool:
    return os.geteuid() == 0


def _apt_install(packages: list[str]) -> str | None:
    """Try ``apt-get install`` of ``packages``; return None on success or a failure reason."""
    if os.environ.get("VHOSTSUITE_NO_APT"):
        return "VHOSTSUITE_NO_APT is set"
    if not _is_root() or not shutil.which("apt-get"):
        return "not root on a Debian-like host (apt-get)"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    res = _run(cmd, env=env)
    if res.returncode != 0:
        _run(["apt-get", "update"], env=env)
        res = _run(cmd, env=env)
    return None if res.returncode == 0 else f"apt-get install {' '.join(packages)} failed:\n{_tail(res.stdout, 10)}"


def _ensure_tools(tools: dict[str, str]) -> None:
    """Make sure each program (key) exists, apt-installing its package (value) if needed."""
    missing = {t: p for t, p in tools.items() if not _which(t)}
    if not missing:
        return
    why = _apt_install(sorted(set(missing.values())))
    still = [t for t in missing if not _which(t)]
    if still:
        pkgs = " ".join(sorted({missing[t] for t in still}))
        raise Unavailable(f"missing host tools {still} (apt-get install {pkgs}): {why or 'not found after install'}")


def _which(tool: str) -> str | None:
    if "/" in tool:
        return tool if os.path.exists(tool) else None
    return shutil.which(tool) or next((str(p) for d in ("/usr/sbin", "/sbin") if (p := Path(d) / tool).exists()), None)


def _is_static_elf(path: Path) -> bool:
    """True if ``path`` is an ELF64 executable without a PT_INTERP (i.e. statically linked)."""
    try:
        with open(path, "rb") as fh:
            hdr = fh.read(64)
            if hdr[:4] != b"\x7fELF" or hdr[4] != 2:
                return False
            (phoff,) = struct.unpack_from("<Q", hdr, 0x20)
            phentsize, phnum = struct.unpack_from("<HH", hdr, 0x36)
            fh.seek(phoff)
            ph = fh.read(phentsize * phnum)
    except OSError:
        return False
    return all(struct.unpack_from("<I", ph, i * phentsize)[0] != 3 for i in range(phnum))


def _unmount_under(path: Path) -> None:
    """Lazily unmount anything mounted below ``path`` (debootstrap mounts proc/sys)."""
    prefix = str(path.resolve()) + "/"
    try:
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return
    for mnt in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", mnt], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _rmtree(path: Path) -> None:
    if path.exists():
        _unmount_under(path)
        shutil.rmtree(path, ignore_errors=True)


def _clean_stale(final: Path) -> None:
    """Remove leftovers of interrupted builds of ``final`` (call with its lock held)."""
    for p in final.parent.glob(final.name + ".tmp-*"):
        if p.is_dir():
            _rmtree(p)
        else:
            p.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# QEMU


def _parse_version(text: str) -> tuple[int, int, int] | None:
    m = re.search(r"version (\d+)\.(\d+)(?:\.(\d+))?", text)
    return (int(m[1]), int(m[2]), int(m[3] or 0)) if m else None


def _probe_qemu(argv: list[str], env: dict[str, str]) -> tuple[tuple[int, int, int] | None, str]:
    try:
        res = _run([*argv, "--version"], env={**os.environ, **env}, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, str(exc)
    return (_parse_version(res.stdout) if res.returncode == 0 else None), res.stdout


def _tree_libdirs(root: Path) -> list[Path]:
    """The library directories of a debootstrapped tree, as its ld.so.conf lists them."""
    libdirs = [root / "lib/x86_64-linux-gnu", root / "usr/lib/x86_64-linux-gnu"]
    for conf in sorted((root / "etc/ld.so.conf.d").glob("*.conf")):
        for line in conf.read_text(errors="replace").splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("/") and (root / line.lstrip("/")).is_dir():
                libdirs.append(root / line.lstrip("/"))
    return list(dict.fromkeys(d for d in libdirs if d.is_dir()))


def tree_program(root: Path, path: str) -> list[str]:
    """The argv prefix that runs *path* (absolute inside the tree) of a debootstrapped tree
    through the tree's own ld.so and libraries."""
    return [
        str(root / "lib64/ld-linux-x86-64.so.2"),
        "--library-path",
        ":".join(map(str, _tree_libdirs(root))),
        "--argv0",
        Path(path).name,
        str(root / path.lstrip("/")),
    ]


def _qemu_tree_root() -> Path:
    return cache_dir() / f"qemu-{DEBIAN_SUITE}"


def provisioned_qemu_tree() -> Path | None:
    """The debootstrapped QEMU tree if :func:`provision_qemu` has made it (nothing is built here)."""
    root = _qemu_tree_root()
    return root if (root / _COMPLETE).exists() else None


def _qemu_from_tree(root: Path, binary: Path | None = None) -> Qemu:
    """Build the :class:`Qemu` that runs the debootstrapped QEMU (or *binary*, built in the
    tree) through the tree's own ld.so, with its libraries and firmware."""
    firmware = [d for d in (root / "usr/share/qemu", root / "usr/share/seabios") if d.is_dir()]
    argv = tree_program(root, "/usr/bin/qemu-system-x86_64")
    if binary is not None:
        argv[-1] = str(binary)
    for d in firmware:
        argv += ["-L", str(d)]
    env = {
        "QEMU_MODULE_DIR": str(root / "usr/lib/x86_64-linux-gnu/qemu"),
        "LIBGL_DRIVERS_PATH": str(root / "usr/lib/x86_64-linux-gnu/dri"),
        "__EGL_VENDOR_LIBRARY_DIRS": str(root / "usr/share/glvnd/egl_vendor.d"),
    }
    version, out = _probe_qemu(argv, env)
    if version is None:
        raise Unavailable(f"QEMU in {root} does not run: {_tail(out, 10)}")
    return Qemu(argv=argv, env=env, version=version)


def debootstrap(dest: Path, include: Sequence[str], log: Path) -> subprocess.CompletedProcess[str]:
    """A minimal Debian :data:`DEBIAN_SUITE` tree in *dest* with *include* (and what they
    depend on); the output goes to *log*. The caller checks what it needs is there."""
    _ensure_tools({"debootstrap": "debootstrap"})
    mirror = os.environ.get("VHOSTSUITE_DEBIAN_MIRROR", _DEFAULT_MIRROR)
    cmd = [_which("debootstrap") or "debootstrap", "--variant=minbase"]
    if include:
        cmd.append("--include=" + ",".join(include))
    cmd += [DEBIAN_SUITE, str(dest), mirror]
    res = _run(cmd, timeout=3600, preexec_fn=_die_with_parent)
    log.write_text(shlex.join(cmd) + "\n" + res.stdout)
    _unmount_under(dest)
    return res


def _build_qemu_tree(root: Path) -> None:
    """debootstrap QEMU into ``root`` atomically (temp dir + rename). Call with the lock held."""
    if platform_machine() != "x86_64":
        raise Unavailable("provisioning QEMU via debootstrap only supports x86_64 hosts")
    if not _is_root():
        raise Unavailable(f"QEMU >= {'.'.join(map(str, MIN_QEMU_VERSION))} not found and debootstrap needs root")
    _clean_stale(root)
    tmp = Path(tempfile.mkdtemp(prefix=root.name + ".tmp-", dir=root.parent))
    try:
        res = debootstrap(tmp, QEMU_PACKAGES, root.parent / f"{root.name}.debootstrap.log")
        log = root.parent / f"{root.name}.debootstrap.log"
        if not (tmp / "usr/bin/qemu-system-x86_64").exists():
            raise Unavailable(f"debootstrap of QEMU failed (rc={res.returncode}, log {log}):\n{_tail(res.stdout, 15)}")
        # A failed package *configuration* (rc != 0) still leaves usable, unpacked files;
        # _qemu_from_tree() below verifies that the binary really runs.
        _qemu_from_tree(tmp)
        for deb in (tmp / "var/cache/apt/archives").glob("*.deb"):
            deb.unlink()
        (tmp / _COMPLETE).write_text(f"debootstrap rc={res.returncode}\n")
        tmp.chmod(0o755)
        os.rename(tmp, root)
    except BaseException:
        _rmtree(tmp)
        raise


def platform_machine() -> str:
    """Return the host machine architecture (``uname -m``)."""
    return os.uname().machine


def provision_qemu() -> Qemu:
    """Return a runnable QEMU >= 8.2 (``$VHOSTSUITE_QEMU``, host binary, or cached debootstrap).

    Raises :class:`Unavailable` when none can be provided.
    """
    need = ".".join(map(str, MIN_QEMU_VERSION))
    explicit = os.environ.get("VHOSTSUITE_QEMU")
    if explicit:
        version, out = _probe_qemu([explicit], {})
        if version is None or version < MIN_QEMU_VERSION:
            raise Unavailable(f"$VHOSTSUITE_QEMU={explicit} is not a QEMU >= {need}: {_tail(out, 3)}")
        return Qemu(argv=[explicit], env={}, version=version)
    host = shutil.which("qemu-system-x86_64")
    if host:
        version, _ = _probe_qemu([host], {})
        if version is not None and version >= MIN_QEMU_VERSION:
            return Qemu(argv=[host], env={}, version=version)
    root = _qemu_tree_root()
    if not (root / _COMPLETE).exists():
        with _locked(root.name):
            if not (root / _COMPLETE).exists():
                if root.exists():  # incomplete tree from an older, non-atomic run
                    _rmtree(root)
                _build_qemu_tree(root)
    qemu = _qemu_from_tree(root)
    if qemu.version < MIN_QEMU_VERSION:
        raise Unavailable(f"debootstrapped QEMU is {qemu.version}, need >= {need}")
    return qemu


# --------------------------------------------------------------------------------------------
# guest kernel + initramfs


def _kernel_package() -> str:
    """Name of the concrete ``linux-image-6.x-amd64`` package behind ``linux-image-amd64``."""
    pkg = os.environ.get("VHOSTSUITE_KERNEL_PKG")
    if pkg:
        return pkg
    if not shutil.which("apt-cache"):
        raise Unavailable("apt-cache not found: the guest kernel comes from Debian's linux-image-amd64")
    for attempt in range(2):
        res = _run(["apt-cache", "depends", "linux-image-amd64"], timeout=120)
        m = re.search(r"Depends:\s*(linux-image-\S+)", res.stdout)
        if m:
            return m[1]
        if attempt == 0 and _is_root():
            _run(["apt-get", "update"], timeout=600)
    raise Unavailable(f"cannot resolve linux-image-amd64 with apt-cache: {_tail(res.stdout, 5)}")


def _provision_kernel() -> tuple[Path, str]:
    """Download/extract the kernel package once; return (extracted tree, kernel version)."""
    pkg = _kernel_package()
    kver = pkg.removeprefix("linux-image-").removesuffix("-unsigned")
    root = cache_dir() / f"kernel-{kver}"
    if (root / _COMPLETE).exists():
        return root, kver
    _ensure_tools({"apt-get": "apt", "dpkg": "dpkg", "depmod": "kmod"})
    with _locked(root.name):
        if (root / _COMPLETE).exists():
            return root, kver
        _rmtree(root)
        _clean_stale(root)
        tmp = Path(tempfile.mkdtemp(prefix=root.name + ".tmp-", dir=root.parent))
        try:
            dl = tmp / "dl"
            dl.mkdir()
            res = _run(["apt-get", "download", pkg], cwd=dl, timeout=1800)
            if res.returncode != 0 and _is_root():
                _run(["apt-get", "update"], timeout=600)
                res = _run(["apt-get", "download", pkg], cwd=dl, timeout=1800)
            debs = list(dl.glob("*.deb"))
            if res.returncode != 0 or not debs:
                raise Unavailable(f"apt-get download {pkg} failed: {_tail(res.stdout, 5)}")
            res = _run(["dpkg", "-x", str(debs[0]), str(tmp)])
            if res.returncode != 0:
                raise Unavailable(f"dpkg -x {debs[0].name} failed: {_tail(res.stdout, 5)}")
            shutil.rmtree(dl)
            if not (tmp / "boot" / f"vmlinuz-{kver}").exists():
                raise Unavailable(f"{pkg} has no boot/vmlinuz-{kver}")
            res = _run([_which("depmod") or "depmod", "-b", str(tmp), kver])
            if res.returncode != 0:
                raise Unavailable(f"depmod -b failed: {_tail(res.stdout, 5)}")
            (tmp / _COMPLETE).write_text(pkg + "\n")
            tmp.chmod(0o755)
            os.rename(tmp, root)
        except BaseException:
            _rmtree(tmp)
            raise
    return root, kver


def _module_name(relpath: str) -> str:
    base = relpath.rsplit("/", 1)[-1]
    base = re.sub(r"\.ko(\.(xz|zst|gz))?$", "", base)
    return base.replace("-", "_")


def _module_order(moddir: Path, wanted: list[str]) -> list[str]:
    """Resolve ``wanted`` module names to modules.dep paths in load (dependency) order."""
    deps: dict[str, tuple[str, list[str]]] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        if ":" not in line:
            continue
        path, rest = line.split(":", 1)
        deps[_module_name(path)] = (path, [_module_name(d) for d in rest.split()])
    builtin: set[str] = set()
    if (moddir / "modules.builtin").exists():
        builtin = {_module_name(p) for p in (moddir / "modules.builtin").read_text().split()}
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        if name not in deps:
            if name in builtin:
                return
            raise Unavailable(f"guest kernel has no module {name!r}")
        for dep in deps[name][1]:
            visit(dep)
        order.append(deps[name][0])

    for name in wanted:
        visit(name.replace("-", "_"))
    return order


def _read_module(path: Path) -> bytes:
    """Module bytes, decompressed on the host (busybox insmod may not handle .xz/.zst)."""
    data = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(data)
    if path.suffix == ".gz":
        return gzip.decompress(data)
    if path.suffix == ".zst":
        res = subprocess.run(["zstd", "-dc", str(path)], stdout=subprocess.PIPE, check=True)
        return res.stdout
    return data


INIT_SCRIPT = r"""#!/bin/sh
# vhostsuite guest /init (generated by vhostsuite.testing.guest)
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
exec </dev/console >/dev/console 2>&1
echo "VHS-INIT kernel=$(uname -r)"
nfail=0
while read -r mod; do
    [ -n "$mod" ] || continue
    if ! out=$(insmod "/lib/modules/$mod" 2>&1); then
        nfail=$((nfail + 1))
        echo "VHS-INSMOD-FAIL $mod: $out"
    fi
done < /etc/vhs-modules
echo "VHS-BOOTED modules_failed=$nfail"
run=""
for arg in $(cat /proc/cmdline); do
    case "$arg" in vhs.run=*) run="${arg#vhs.run=}" ;; esac
done
cd /tmp
if [ -z "$run" ]; then
    echo "VHS-ERROR no vhs.run=NAME on the kernel command line"
    rc=2
elif [ "$run" = shell ]; then
    setsid cttyhack sh
    rc=$?
elif [ -x "/bin/$run" ] && [ ! -L "/bin/$run" ]; then
    "/bin/$run"
    rc=$?
elif [ -f "/tests/$run.sh" ]; then
    sh "/tests/$run.sh"
    rc=$?
else
    echo "VHS-ERROR unknown test '$run'"
    rc=127
fi
echo "VHS-DONE rc=$rc"
sync
poweroff -f
"""


class _Cpio:
    """Minimal writer for the cpio "newc" format used by Linux initramfs."""

    def __init__(self) -> None:
        self._buf = io.BytesIO()
        self._ino = 1

    def _add(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        fields = (self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0)
        self._ino += 1
        hdr = b"070701" + b"".join(b"%08X" % f for f in fields) + name.encode() + b"\0"
        self._buf.write(hdr + b"\0" * (-len(hdr) % 4))
        self._buf.write(data + b"\0" * (-len(data) % 4))

    def dir(self, name: str) -> None:
        self._add(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._add(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._add(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._add(name, stat.S_IFCHR | mode, rdev=(major, minor))

    def finish(self) -> bytes:
        self._add("TRAILER!!!", 0)
        return self._buf.getvalue()


def _guest_sources() -> list[Path]:
    if not GUEST_SRC.is_dir():
        return []
    return sorted(p for p in GUEST_SRC.iterdir() if p.is_file() and p.suffix in (".c", ".sh", ".txt", ".h"))


def _extra_modules() -> list[str]:
    f = GUEST_SRC / "modules.txt"
    if not f.exists():
        return []
    return [w for line in f.read_text().splitlines() if (w := line.split("#", 1)[0].strip())]


def _compile(src: Path, out: Path) -> None:
    flags: list[str] = []
    for m in re.finditer(r"vhs-cflags:(.*)", src.read_text(errors="replace")):
        flags += shlex.split(m[1].strip().removesuffix("*/"))
    cmd = ["gcc", "-static", "-O2", "-Wall", "-I/usr/include/libdrm", "-I" + str(GUEST_SRC), "-o", str(out), str(src)]
    res = _run([*cmd, *flags], timeout=600)
    if res.returncode != 0:
        raise RuntimeError(f"compiling guest program {src.name} failed:\n$ {shlex.join(cmd + flags)}\n{res.stdout}")
    if not _is_static_elf(out):
        raise RuntimeError(f"guest program {src.name} is not statically linked")


def _find_busybox() -> Path:
    for cand in ("/bin/busybox", "/usr/bin/busybox"):
        if _is_static_elf(Path(cand)):
            return Path(cand)
    _apt_install(["busybox-static"])
    for cand in ("/bin/busybox", "/usr/bin/busybox"):
        if _is_static_elf(Path(cand)):
            return Path(cand)
    raise Unavailable("no statically linked busybox (apt-get install busybox-static)")


def provision_guest() -> Guest:
    """Return a bootable guest (Debian kernel + busybox initramfs with our test programs).

    The kernel is cached per version; the initramfs per hash of all of its inputs.
    Raises :class:`Unavailable` when it cannot be provisioned; a guest program that fails to
    compile raises :class:`RuntimeError` (that is a bug, not an environment problem).
    """
    if platform_machine() != "x86_64":
        raise Unavailable("the guest kit only supports x86_64 hosts")
    busybox = _find_busybox()
    sources = _guest_sources()
    if any(p.suffix == ".c" for p in sources):
        _ensure_tools({"gcc": "gcc"})
        if not Path("/usr/include/libdrm/drm.h").exists():
            _apt_install(["libdrm-dev"])
    kroot, kver = _provision_kernel()
    moddir = kroot / "lib/modules" / kver
    modules = _module_order(moddir, [*GUEST_MODULES, *_extra_modules()])

    h = hashlib.sha256()
    h.update(Path(__file__).read_bytes())
    h.update(busybox.read_bytes())
    h.update(kver.encode() + b"\0" + "\n".join(modules).encode() + b"\0")
    for p in sources:
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    key = h.hexdigest()[:16]
    initrd = cache_dir() / f"initramfs-{kver}-{key}.cpio.gz"
    programs = tuple(p.stem for p in sources if p.suffix == ".c")
    kernel = kroot / "boot" / f"vmlinuz-{kver}"
    guest = Guest(kernel=kernel, initrd=initrd, kernel_version=kver, modules=tuple(modules), programs=programs)
    if initrd.exists():
        return guest

    cpio = _Cpio()
    for d in "bin sbin usr usr/bin usr/sbin dev proc sys tmp run etc root mnt lib lib/modules tests".split():
        cpio.dir(d)
    cpio.chardev("dev/console", 5, 1)
    cpio.chardev("dev/null", 1, 3, 0o666)
    cpio.chardev("dev/ttyS0", 4, 64)
    cpio.file("bin/busybox", busybox.read_bytes(), 0o755)
    cpio.symlink("bin/sh", "busybox")
    cpio.file("init", INIT_SCRIPT.encode(), 0o755)
    names = []
    for rel in modules:
        name = _module_name(rel) + ".ko"
        cpio.file(f"lib/modules/{name}", _read_module(moddir / rel))
        names.append(name)
    cpio.file("etc/vhs-modules", ("\n".join(names) + "\n").encode())
    with tempfile.TemporaryDirectory(prefix="vhs-guest-build-") as build:
        for src in sources:
            if src.suffix == ".c":
                out = Path(build) / src.stem
                _compile(src, out)
                cpio.file(f"bin/{src.stem}", out.read_bytes(), 0o755)
            elif src.suffix == ".sh":
                cpio.file(f"tests/{src.name}", src.read_bytes(), 0o755)
    data = gzip.compress(cpio.finish(), compresslevel=6, mtime=0)
    tmp = initrd.with_name(initrd.name + f".tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, initrd)
    return guest


# --------------------------------------------------------------------------------------------
# VM

_LIVE: weakref.WeakSet[VM] = weakref.WeakSet()


def _close_all() -> None:
    for vm in list(_LIVE):
        with contextlib.suppress(Exception):
            vm.close()


atexit.register(_close_all)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


class VM:
    """A QEMU (TCG) running the guest; a context manager that always kills and reaps QEMU.

    ``devices`` are extra QEMU arguments appended verbatim (chardevs, ``-device`` ...).
    The serial console (ttyS0) goes to :attr:`log_path`, QEMU's own stdout/stderr to
    :attr:`stderr_path`; QMP is on a unix socket (:attr:`qmp_path`). ``timeout`` is the default
    for :meth:`wait_for` and :meth:`wait_exit`.
    """

    def __init__(
        self,
        qemu: Qemu,
        guest: Guest,
        run: str,
        devices: list[str] | None = None,
        mem_mb: int = 512,
        cmdline_extra: str = "",
        timeout: float = 180.0,
        *,
        workdir: Path | str | None = None,
        machine: str = "q35",
        smp: int = 1,
        pass_fds: tuple[int, ...] = (),
    ) -> None:
        self.timeout = timeout
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="vhs-vm-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "serial.log"
        self.stderr_path = self.workdir / "qemu.log"
        # unix socket paths are limited to 108 bytes: keep them in a short private dir.
        self._sockdir = Path(tempfile.mkdtemp(prefix="vhs-qmp-", dir="/tmp"))
        self.qmp_path = self._sockdir / "qmp.sock"
        self.events: list[dict[str, Any]] = []
        self._qmp_sock: socket.socket | None = None
        self._qmp_file: io.BufferedReader | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._closed = False
        self.cmdline = f"console=ttyS0 quiet panic=-1 vhs.run={run} {cmdline_extra}".strip()
        self.argv = [
            *qemu.argv,
            "-accel", "tcg",
            "-machine", f"{machine},memory-backend=mem",
            "-m", f"{mem_mb}M",
            "-object", f"memory-backend-memfd,id=mem,size={mem_mb}M,share=on",
            "-smp", str(smp),
            "-nodefaults", "-no-user-config",
            "-vga", "none", "-display", "none",
            "-no-reboot",
            "-kernel", str(guest.kernel),
            "-initrd", str(guest.initrd),
            "-append", self.cmdline,
            "-chardev", f"file,id=vhs-serial,path={self.log_path}",
            "-serial", "chardev:vhs-serial",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
            *(devices or []),
        ]  # fmt: skip
        self.log_path.write_bytes(b"")
        try:
            with open(self.stderr_path, "wb") as err:
                self._proc = subprocess.Popen(
                    self.argv,
                    env={**os.environ, **qemu.env},
                    stdin=subprocess.DEVNULL,
                    stdout=err,
                    stderr=subprocess.STDOUT,
                    preexec_fn=_die_with_parent,
                    pass_fds=pass_fds,
                )
            _LIVE.add(self)
            self._qmp_connect(30.0)
        except BaseException:
            self.close()
            raise

    # -- lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> VM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    @property
    def pid(self) -> int | None:
        """QEMU's process id."""
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        """QEMU's exit status, or None while it runs."""
        return self._proc.poll() if self._proc else None

    def close(self) -> None:
        """Stop QEMU (QMP quit, then SIGTERM, then SIGKILL), reap it and drop the QMP socket."""
        if self._closed:
            return
        self._closed = True
        proc = self._proc
        try:
            if proc is not None and proc.poll() is None:
                if self._qmp_sock is not None:
                    with contextlib.suppress(Exception):
                        self._qmp_sock.settimeout(2.0)
                        self._qmp_send("quit", {})
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(3)
                if proc.poll() is None:
                    proc.terminate()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(3)
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
            for obj in (self._qmp_file, self._qmp_sock):
                if obj is not None:
                    with contextlib.suppress(Exception):
                        obj.close()
            self._qmp_file = self._qmp_sock = None
            shutil.rmtree(self._sockdir, ignore_errors=True)
            _LIVE.discard(self)

    def wait_exit(self, timeout: float | None = None) -> int:
        """Wait for QEMU to exit (the guest powers off after its test); return its exit status."""
        assert self._proc is not None
        t = self.timeout if timeout is None else timeout
        try:
            return self._proc.wait(t)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"QEMU did not exit within {t}s\n{self._diagnostics()}") from None

    # -- serial console ------------------------------------------------------------------------

    def serial_text(self) -> str:
        """Everything the guest printed on ttyS0 so far."""
        try:
            return self.log_path.read_bytes().decode("utf-8", "replace").replace("\r\n", "\n")
        except FileNotFoundError:
            return ""

    def wait_for(self, regex: str | re.Pattern[str], timeout: float | None = None, pos: int = 0) -> re.Match[str]:
        """Wait until ``regex`` (MULTILINE) matches the serial output from offset ``pos``.

        Raises TimeoutError (with the serial log tail) on timeout or if QEMU exits first.
        """
        pat = re.compile(regex, re.MULTILINE) if isinstance(regex, str) else regex
        t = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + t
        while True:
            exited = self.returncode is not None
            m = pat.search(self.serial_text(), pos)
            if m:
                return m
            if exited:
                raise TimeoutError(
                    f"QEMU exited (rc={self.returncode}) before {pat.pattern!r} appeared\n{self._diagnostics()}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"{pat.pattern!r} not seen within {t}s\n{self._diagnostics()}")
            time.sleep(0.05)

    def _diagnostics(self) -> str:
        try:
            err = self.stderr_path.read_text(errors="replace")
        except OSError:
            err = ""
        out = f"--- serial log {self.log_path} (tail) ---\n{_tail(self.serial_text(), 40)}"
        if err.strip():
            out += f"\n--- qemu output {self.stderr_path} (tail) ---\n{_tail(err, 20)}"
        return out

    # -- QMP -------------------------------------------------------------------------------------

    def _qmp_connect(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.returncode is not None:
                raise RuntimeError(f"QEMU exited early (rc={self.returncode})\n{self._diagnostics()}")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(self.qmp_path))
                break
            except OSError:
                sock.close()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"QMP socket {self.qmp_path} not ready\n{self._diagnostics()}") from None
                time.sleep(0.05)
        sock.settimeout(60.0)
        self._qmp_sock = sock
        self._qmp_file = sock.makefile("rb")  # type: ignore[assignment]
        greeting = self._qmp_read()
        if "QMP" not in greeting:
            raise RuntimeError(f"unexpected QMP greeting {greeting!r}")
        self.qmp("qmp_capabilities")

    def _qmp_read(self) -> dict[str, Any]:
        assert self._qmp_file is not None
        line = self._qmp_file.readline()
        if not line:
            raise ConnectionError(f"QMP connection closed\n{self._diagnostics()}")
        msg: dict[str, Any] = json.loads(line)
        return msg

    def _qmp_send(self, command: str, args: dict[str, Any]) -> None:
        assert self._qmp_sock is not None
        req: dict[str, Any] = {"execute": command}
        if args:
            req["arguments"] = args
        self._qmp_sock.sendall(json.dumps(req).encode() + b"\n")

    def qmp(self, command: str, **args: Any) -> Any:
        """Run a QMP command and return its ``return`` value (usually a dict).

        Arguments with dashes can be passed as ``vm.qmp("cmd", **{"qom-path": ...})``.
        Asynchronous events seen meanwhile are appended to :attr:`events`.
        Raises :class:`QMPError` if QEMU answers with an error.
        """
        if self._qmp_sock is None:
            raise RuntimeError("QMP is not connected")
        self._qmp_send(command, args)
        while True:
            msg = self._qmp_read()
            if "event" in msg:
                self.events.append(msg)
            elif "error" in msg:
                raise QMPError(command, msg["error"])
            elif "return" in msg:
                return msg["return"]

    def screendump(self, path: Path | str, device: str | None = None, head: int | None = None) -> str:
        """Save the display to ``path`` via QMP; PNG if this QEMU supports it, else PPM.

        Returns the format written (``"png"`` or ``"ppm"``).
        """
        args: dict[str, Any] = {"filename": str(Path(path).resolve())}
        if device is not None:
            args["device"] = device
        if head is not None:
            args["head"] = head
        try:
            self.qmp("screendump", **args, format="png")
            return "png"
        except QMPError as exc:
            if "format" not in exc.desc.lower() and "png" not in exc.desc.lower():
                raise
        self.qmp("screendump", **args)
        return "ppm"
