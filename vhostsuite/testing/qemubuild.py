"""Debian 13's QEMU with our vhost-user-base reconnect fix, for the restart tests.

    python3 -m vhostsuite.testing.qemubuild        (what ``make qemu-reconnect`` runs)

QEMU 10.0 as Debian ships it cannot take a vhost-user-rng or -input back-end that restarts
under a running guest (``patches/qemu/`` says why and fixes it). This builds Debian's own
source package (``apt-get source qemu`` of :data:`~vhostsuite.testing.guest.DEBIAN_SUITE`,
Debian's patches applied) with that patch on top, for x86_64 system emulation only, in a
Debian root of its own in the cache: the root is made once (debootstrap, then the few build
dependencies a TCG-only ``qemu-system-x86_64`` needs and the source, with network), the build
runs without network. The first time takes a while (~1.5 min for the root, 4-7 min for the
build on two cores), so it is not part of ``make check``: the tests that need it skip, saying
so, until it has been built; after that it is kept until the patch or the flags change.

:func:`patched_qemu` gives the result as a :class:`~vhostsuite.testing.guest.Qemu`, run through
the root's own loader and libraries like the guest kit's QEMU.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import time
from pathlib import Path

from .debroot import SOURCE, BuildFailed, _cached_root, _chroot
from .guest import (
    DEBIAN_SUITE,
    Qemu,
    Unavailable,
    _is_root,
    _locked,
    _qemu_from_tree,
    _tail,
    cache_dir,
    platform_machine,
)

PATCHES = sorted((SOURCE / "patches/qemu").glob("*.patch"))
#: What configure and the build need for a TCG x86_64 system emulator with vhost-user, and the
#: firmware the tests boot with (Debian's source has no prebuilt firmware).
PACKAGES = (
    "build-essential", "dpkg-dev", "patch", "xz-utils", "python3", "python3-venv", "meson",
    "ninja-build", "flex", "bison", "pkgconf", "libglib2.0-dev", "zlib1g-dev", "libpixman-1-dev",
    "seabios", "qemu-system-data",
)  # fmt: skip
#: Everything else is found (or not) by configure in this small root; modules are built in, so
#: the binary needs nothing but the root's libraries and firmware.
CONFIGURE = (
    "--target-list=x86_64-softmmu", "--disable-download", "--disable-docs", "--disable-tools",
    "--disable-guest-agent", "--disable-modules", "--disable-werror", "--disable-debug-info",
    "--disable-install-blobs",
)  # fmt: skip
BINARY = "build/qemu/out/qemu-system-x86_64"
_BUILT = "build/qemu/out/.vhs-built"


def _root() -> Path:
    return cache_dir() / f"qemubuild-{DEBIAN_SUITE}"


def _build_digest() -> str:
    """What the binary is made from: the patches, the configure flags and the root's packages."""
    h = hashlib.sha256(" ".join(CONFIGURE + PACKAGES).encode())
    for patch in PATCHES:
        h.update(patch.read_bytes())
    return h.hexdigest()[:16]


def _make_root() -> Path:
    root = _root()

    def finish(tmp: Path) -> None:
        shutil.copy("/etc/resolv.conf", tmp / "etc/resolv.conf")
        sources = tmp / "etc/apt/sources.list"
        deb = [line for line in sources.read_text().splitlines() if line.startswith("deb ")]
        sources.write_text("\n".join(deb + [line.replace("deb ", "deb-src ", 1) for line in deb]) + "\n")
        script = (
            "apt-get update -q && "
            f"apt-get install -y -q --no-install-recommends {' '.join(PACKAGES)} && apt-get clean && "
            "mkdir -p /build/src && cd /build/src && apt-get source -q --download-only qemu"
        )
        res = _chroot(tmp, script, network=True)
        if res.returncode != 0:
            raise Unavailable(f"making the QEMU build root failed:\n{_tail(res.stdout, 15)}")

    digest = hashlib.sha256(" ".join(PACKAGES).encode()).hexdigest()[:16]
    with _locked(root.name):
        _cached_root(root, digest, (), finish)
    return root


def build(log: Path | None = None) -> Path:
    """Build the patched QEMU unless it is built from the same inputs; returns the binary."""
    if platform_machine() != "x86_64":
        raise Unavailable("the patched QEMU is built for x86_64 hosts only")
    if not _is_root():
        raise Unavailable("building QEMU in a Debian root needs root (debootstrap, chroot)")
    root = _make_root()
    digest = _build_digest()
    with _locked(root.name):
        stamp = root / _BUILT
        if stamp.exists() and stamp.read_text() == digest:
            return root / BINARY
        names = " ".join(p.name for p in PATCHES)
        shutil.rmtree(root / "build/qemu", ignore_errors=True)
        (root / "build/qemu/patches").mkdir(parents=True)
        for patch in PATCHES:
            shutil.copy(patch, root / "build/qemu/patches" / patch.name)
        script = (
            "cd /build/qemu && dpkg-source -x /build/src/qemu_*.dsc src && cd src && "
            f"for p in {names}; do echo \"applying $p\"; patch -p1 --no-backup-if-mismatch < ../patches/$p; done && "
            f"mkdir b && cd b && ../configure --prefix=/usr {' '.join(CONFIGURE)} && "
            f"ninja -j{os.cpu_count() or 1} qemu-system-x86_64 && "
            "mkdir -p /build/qemu/out && cp qemu-system-x86_64 /build/qemu/out/ && "
            "cd /build/qemu && rm -rf src"
        )
        # the output goes to a file as it comes: `tail -f` it to follow a build this long
        inner_log = root / "build/qemu/build.log"
        print(f"building QEMU in {root} (output: {inner_log})", file=sys.stderr)
        res = _chroot(root, f"exec >/build/qemu/build.log 2>&1; {script}", timeout=4 * 3600)
        output = inner_log.read_text(errors="replace") if inner_log.exists() else res.stdout
        if log is not None:
            log.write_text(output)
        if res.returncode != 0:
            raise BuildFailed(f"building QEMU failed:\n{_tail(output + res.stdout, 30)}")
        stamp.write_text(digest)
    return root / BINARY


def patched_qemu() -> Qemu:
    """The patched QEMU if it has been built from the current patches; Unavailable (with what
    to run) if not."""
    root = _root()
    stamp = root / _BUILT
    if not (stamp.exists() and stamp.read_text() == _build_digest()):
        raise Unavailable("QEMU with the reconnect fix is not built (or is out of date): run `make qemu-reconnect`")
    return _qemu_from_tree(root, root / BINARY)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m vhostsuite.testing.qemubuild", description=__doc__.split("\n\n")[0])
    p.add_argument("--log", type=Path, default=None, help="where the build's output goes")
    args = p.parse_args(argv)
    if args.log is not None:
        args.log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    try:
        binary = build(args.log)
        qemu = patched_qemu()
    except (Unavailable, BuildFailed) as e:
        print(f"qemubuild: {e}", file=sys.stderr)
        return 1
    version = ".".join(map(str, qemu.version))
    print(f"QEMU {version} with {', '.join(p.name for p in PATCHES)}: {binary} ({time.monotonic() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
