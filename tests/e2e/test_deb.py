"""The Debian package as a distribution builds and ships it: ``dpkg-buildpackage`` offline in a
clean Debian 13 root with only the build dependencies (the unit tests run there), lintian
without errors, installed into a fresh root that has only its run-time dependencies, where
the installed programs answer ``--print-capabilities`` and serve a real guest."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Backend
from tests.e2e.test_gpu_virgl_e2e import serve_gpu3d_guest
from tests.e2e.test_rng_e2e import serve_rng_guest

pytestmark = pytest.mark.e2e

DEVICES = ("gpu", "input", "rng")


def test_the_package_holds_what_a_packager_expects(deb: tuple[Path, str]) -> None:
    path, lint = deb
    assert not [line for line in lint.splitlines() if line.startswith("E:")], lint
    listing = subprocess.run(["dpkg-deb", "-c", str(path)], capture_output=True, text=True, check=True).stdout
    files = {line.split()[-1].removeprefix(".") for line in listing.splitlines()}
    for d in DEVICES:
        assert f"/usr/libexec/vhost-user-{d}" in files
        assert f"/usr/share/qemu/vhost-user/50-vhostsuite-{d}.json" in files
        assert f"/usr/share/man/man1/vhost-user-{d}.1.gz" in files
    assert "/usr/share/doc/vhostsuite/copyright" in files
    exts = [f for f in files if f.startswith("/usr/lib/vhostsuite/python/vhostsuite/") and f.endswith(".so")]
    # the ring, the pixel copier, the command decoder and the virglrenderer binding, compiled
    # for Debian's python3
    assert len(exts) == 4 and any("/gpu/_virgl." in f for f in exts), exts
    fields = subprocess.run(["dpkg-deb", "-f", str(path), "Depends"], capture_output=True, text=True).stdout
    assert "python3-cairo" in fields and "python3-evdev" in fields and "python3 (>=" in fields, fields
    assert "libvirglrenderer1" in fields, fields


#: The installed programs as a user starts them.
CHROOT_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
CHROOT = shutil.which("chroot") or "/usr/sbin/chroot"


def test_the_installed_programs_start_with_the_compiled_core(fresh_root: Path) -> None:
    env, chroot = CHROOT_ENV, CHROOT
    for d in DEVICES:
        prog = fresh_root / f"usr/libexec/vhost-user-{d}"
        assert prog.read_text().startswith("#!/usr/bin/python3\n")
        caps = subprocess.run([chroot, str(fresh_root), f"/usr/libexec/vhost-user-{d}", "--print-capabilities"],
                              capture_output=True, text=True, timeout=30, env=env)  # fmt: skip
        assert caps.returncode == 0, caps.stderr
        assert json.loads(caps.stdout)["type"] == d
        version = subprocess.run([chroot, str(fresh_root), f"/usr/libexec/vhost-user-{d}", "--version"],
                                 capture_output=True, text=True, timeout=30, env=env)  # fmt: skip
        assert "compiled (Cython)" in version.stdout, version.stdout + version.stderr
    # byte-compiled by the package's maintainer scripts (dh_python3), not shipped
    assert list((fresh_root / "usr/lib/vhostsuite/python/vhostsuite/core").glob("__pycache__/*.pyc"))


def test_the_installed_rng_serves_a_guest(fresh_root: Path, vm_factory, tmp_path: Path) -> None:
    sock = fresh_root / "tmp/rng.sock"
    sock.unlink(missing_ok=True)
    be = Backend(["chroot", str(fresh_root), "/usr/libexec/vhost-user-rng", "--socket-path=/tmp/rng.sock", "-v"],
                 tmp_path)  # fmt: skip
    try:
        be.wait_listening(sock)
        serve_rng_guest(vm_factory, be, f"socket,id=rng0,path={sock}")
    finally:
        be.stop()


def test_without_its_recommends_the_installed_gpu_says_3d_is_missing(fresh_root: Path) -> None:
    """Only the Depends: no libEGL, which libepoxy would abort the process for. Capabilities say
    no 3D, and --virgl fails at once, naming what to install."""
    run = [CHROOT, str(fresh_root), "/usr/libexec/vhost-user-gpu"]
    caps = subprocess.run([*run, "--print-capabilities"], capture_output=True, text=True, timeout=30, env=CHROOT_ENV)
    assert json.loads(caps.stdout)["features"] == [], caps.stdout
    res = subprocess.run([*run, "--virgl", "--socket-path=/tmp/gpu.sock"], capture_output=True, text=True,
                         timeout=30, env=CHROOT_ENV)  # fmt: skip
    assert res.returncode == 1, res.stderr
    assert "--virgl: virglrenderer needs libEGL.so.1 (Debian: libegl1)" in res.stderr, res.stderr
    assert "Fatal" not in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_with_its_recommends_the_installed_gpu_serves_3d(recommends_root: Path, vm_factory, tmp_path: Path) -> None:
    """As apt installs it (Recommends too), on a host without a GPU: "virgl" is offered and the
    gpu-3d guest draws through the installed program."""
    run = [CHROOT, str(recommends_root), "/usr/libexec/vhost-user-gpu"]
    record = recommends_root / "run/vhostsuite/virgl-probe"
    shutil.rmtree(record.parent, ignore_errors=True)
    caps = subprocess.run([*run, "--print-capabilities"], capture_output=True, text=True, timeout=30, env=CHROOT_ENV)
    assert json.loads(caps.stdout) == {"type": "gpu", "features": ["virgl"]}, caps.stdout + caps.stderr
    assert not record.exists()  # no /proc in this chroot: the renderer's files are unknown, nothing recorded
    # with /proc, as on a host: the first answer is the renderer's, the second the record's (root's is in /run)
    with_proc = ["unshare", "--mount", "--fork", "sh", "-c",
                 f'mount -t proc proc "$0/proc" && exec {CHROOT} "$0" "$@"', *run[1:]]  # fmt: skip
    for _ in range(2):
        caps = subprocess.run([*with_proc, "--print-capabilities"], capture_output=True, text=True, timeout=30,
                              env=CHROOT_ENV)  # fmt: skip
        assert json.loads(caps.stdout) == {"type": "gpu", "features": ["virgl"]}, caps.stdout + caps.stderr
        assert "/usr/lib/vhostsuite/python/vhostsuite/devices/gpu/_virgl." in record.read_text()
    sock = recommends_root / "tmp/gpu.sock"
    sock.unlink(missing_ok=True)
    be = Backend([*run, "--virgl", "--socket-path=/tmp/gpu.sock", "-v"], tmp_path)
    try:
        be.wait_listening(sock)
        serve_gpu3d_guest(vm_factory, be, f"socket,id=gpu0,path={sock}", (), tmp_path)
    finally:
        be.terminate()
        be.stop()
