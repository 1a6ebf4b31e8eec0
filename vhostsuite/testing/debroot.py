"""The Debian package, built as a distribution builds it: ``dpkg-buildpackage`` in a clean
Debian root (:data:`~vhostsuite.testing.guest.DEBIAN_SUITE`) that has only the build
dependencies ``debian/control`` names, without network; then lintian.

    python3 -m vhostsuite.testing.debroot --out out/deb        (what ``make deb`` runs)

The build root is made once (debootstrap, then ``apt-get build-dep`` of the source) and kept
in the cache; it is made again when ``debian/control`` changes. Each build works in a copy of
the source's files under the root's /build, in its own mount and network namespaces
(``unshare -mn``), so nothing is fetched and nothing outside the root is touched.

:func:`install_root` gives a fresh root with only the package's run-time dependencies, for the
test that installs the .deb there and runs the installed programs.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from .guest import (
    DEBIAN_SUITE,
    Unavailable,
    _clean_stale,
    _is_root,
    _locked,
    _rmtree,
    _run,
    _tail,
    cache_dir,
    debootstrap,
)

SOURCE = Path(__file__).resolve().parents[2]
#: Besides the build dependencies: what checks the package.
BUILD_TOOLS = ("build-essential", "lintian")
_STAMP = ".vhs-control"


class BuildFailed(Exception):
    """The package build or lintian failed (unlike Unavailable: no root can be made here)."""


def _control_digest(src: Path) -> str:
    return hashlib.sha256((src / "debian/control").read_bytes()).hexdigest()[:16]


def _chroot(root: Path, script: str, *, network: bool = False, timeout: float = 3600) -> subprocess.CompletedProcess:
    """Run *script* (sh) in *root*, with /proc and /dev, in private mount (and network) namespaces."""
    inner = (
        f"mount -t proc proc {root}/proc && mount --rbind /dev {root}/dev && "
        f"exec chroot {root} /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "
        f"DEBIAN_FRONTEND=noninteractive /bin/sh -ec {_quote(script)}"
    )
    flags = "-m" if network else "-mn"
    return _run(["unshare", flags, "--propagation", "private", "/bin/sh", "-ec", inner], timeout=timeout)


def run_in(root: Path, script: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run *script* (sh) in the install root *root*, with /proc and /dev and no network; its
    stdout and stderr together in ``.stdout``."""
    return _chroot(root, script, timeout=timeout)


def _quote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


def _copy_source(src: Path, dest: Path) -> None:
    """The files git knows of (committed or not, never ignored ones), as a packager's tarball has."""
    listed = _run(["git", "-C", str(src), "ls-files", "-z", "--cached", "--others", "--exclude-standard"])
    if listed.returncode != 0:
        raise Unavailable(f"git ls-files failed in {src}: {_tail(listed.stdout, 5)}")
    for name in filter(None, listed.stdout.split("\0")):
        path = src / name
        if path.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest / name)


def _cached_root(root: Path, digest: str, include: Sequence[str], finish: Callable[[Path], None]) -> None:
    """Make *root* (call with its lock held) unless it was made for *digest*: debootstrap with
    *include*, then *finish* the tree; built beside it and renamed, so a root is whole or absent."""
    stamp = root / _STAMP
    if stamp.exists() and stamp.read_text() == digest:
        return
    _rmtree(root)
    _clean_stale(root)
    tmp = Path(tempfile.mkdtemp(prefix=root.name + ".tmp-", dir=root.parent))
    try:
        res = debootstrap(tmp, include, root.parent / f"{root.name}.debootstrap.log")
        if res.returncode != 0:
            raise Unavailable(f"debootstrap of {root.name} failed:\n{_tail(res.stdout, 15)}")
        finish(tmp)
        for cached in (tmp / "var/cache/apt/archives").glob("*.deb"):
            cached.unlink()
        (tmp / _STAMP).write_text(digest)
        tmp.chmod(0o755)
        os.rename(tmp, root)
    except BaseException:
        _rmtree(tmp)
        raise


def build_root(src: Path = SOURCE) -> Path:
    """The cached build root for *src*'s debian/control (made when missing or out of date)."""
    if not _is_root():
        raise Unavailable("building the Debian package in a clean root needs root (debootstrap, chroot)")
    root = cache_dir() / f"debbuild-{DEBIAN_SUITE}"

    def build_deps(tmp: Path) -> None:
        shutil.copy("/etc/resolv.conf", tmp / "etc/resolv.conf")
        (tmp / "build/deps/debian").mkdir(parents=True)
        for name in ("control", "changelog"):
            shutil.copy(src / "debian" / name, tmp / "build/deps/debian" / name)
        res = _chroot(
            tmp,
            "apt-get update -q && apt-get build-dep -y -q --no-install-recommends /build/deps && "
            f"apt-get install -y -q --no-install-recommends {' '.join(BUILD_TOOLS)} && apt-get clean",
            network=True,
        )
        if res.returncode != 0:
            raise Unavailable(f"installing the build dependencies failed:\n{_tail(res.stdout, 15)}")
        shutil.rmtree(tmp / "build/deps")

    with _locked(root.name):
        _cached_root(root, _control_digest(src), (), build_deps)
    return root


def build_deb(out: Path, src: Path = SOURCE) -> tuple[Path, str]:
    """Build the binary package from *src* offline; returns the .deb (copied into *out*) and
    lintian's report. Raises BuildFailed if the build or lintian fails (the output says why),
    Unavailable if no build root can be made here."""
    root = build_root(src)
    out.mkdir(parents=True, exist_ok=True)
    with _locked(root.name):
        work = root / "build"
        shutil.rmtree(work, ignore_errors=True)
        (work / "vhostsuite").mkdir(parents=True)
        _copy_source(src, work / "vhostsuite")
        res = _chroot(root, "cd /build/vhostsuite && dpkg-buildpackage -b -us -uc 2>&1")
        (out / "build.log").write_text(res.stdout)
        if res.returncode != 0:
            raise BuildFailed(f"dpkg-buildpackage failed (log {out / 'build.log'}):\n{_tail(res.stdout, 30)}")
        lint = _chroot(root, "cd /build && lintian --fail-on error --info --display-level '>=info' *.changes")
        (out / "lintian.txt").write_text(lint.stdout)
        debs = sorted(work.glob("*.deb"))
        package = [d for d in debs if d.name.startswith("vhostsuite_")]
        if not package:
            raise BuildFailed(f"dpkg-buildpackage made no .deb:\n{_tail(res.stdout, 15)}")
        for deb in debs:
            shutil.copy2(deb, out / deb.name)
        if lint.returncode != 0:
            raise BuildFailed(f"lintian reports errors (in {out / 'lintian.txt'}):\n{_tail(lint.stdout, 30)}")
    return out / package[0].name, lint.stdout


def install_root(deb: Path, dest: Path, extra: Sequence[str] = ()) -> None:
    """A fresh root in *dest* with only *deb*'s run-time dependencies (and the packages *extra*,
    e.g. libvirt), and *deb* installed there."""
    depends = _run(["dpkg-deb", "-f", str(deb), "Depends"]).stdout
    # "python3 (>= 3.13~)", "python3:any", "a | b": the package names debootstrap wants
    names = sorted({d.split("|")[0].split("(")[0].split(":")[0].strip() for d in depends.split(",") if d.strip()})
    flavor = "debrun" if not extra else "debrun-" + hashlib.sha256(" ".join(sorted(extra)).encode()).hexdigest()[:8]
    root = cache_dir() / f"{flavor}-{DEBIAN_SUITE}"
    digest = hashlib.sha256(" ".join(names + sorted(extra)).encode()).hexdigest()[:16]

    def add_extra(tmp: Path) -> None:
        # apt, not debootstrap: it resolves what debootstrap can't (systemd's pre-dependencies)
        if not extra:
            return
        shutil.copy("/etc/resolv.conf", tmp / "etc/resolv.conf")
        packages = " ".join(extra)
        script = f"apt-get update -q && apt-get install -y -q --no-install-recommends {packages} && apt-get clean"
        res = _chroot(tmp, script, network=True)
        if res.returncode != 0:
            raise Unavailable(f"installing {' '.join(extra)} failed:\n{_tail(res.stdout, 15)}")

    with _locked(root.name):
        _cached_root(root, digest, names, add_extra)
        res = _run(["cp", "-a", "--reflink=auto", f"{root}/.", str(dest)])
        if res.returncode != 0:
            raise Unavailable(f"copying the install root failed: {_tail(res.stdout, 5)}")
    shutil.copy2(deb, dest / "tmp" / deb.name)
    res = _chroot(dest, f"dpkg -i /tmp/{deb.name}")
    if res.returncode != 0:
        raise BuildFailed(f"dpkg -i {deb.name} failed in a fresh root:\n{_tail(res.stdout, 20)}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m vhostsuite.testing.debroot", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("out/deb"), help="where the .deb and the logs go")
    args = p.parse_args(argv)
    try:
        deb, lint = build_deb(args.out.resolve())
    except (Unavailable, BuildFailed) as e:
        print(f"debroot: {e}", file=sys.stderr)
        return 1
    print(lint, end="")
    print(f"built {deb}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
