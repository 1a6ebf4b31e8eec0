"""Fixtures for end-to-end tests that boot a real guest under QEMU (TCG).

``qemu`` and ``guest`` are provisioned once per session (cached under ``$VHOSTSUITE_CACHE`` or
``~/.cache/vhostsuite``) and skip the test with the reason when that is impossible.
``vm_factory(run, devices, **kw)`` starts a :class:`~vhostsuite.testing.guest.VM` whose files
(serial log, QEMU output) live in the test's ``tmp_path``; every VM is closed at teardown.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from vhostsuite import NO_EXTENSIONS
from vhostsuite.testing import debroot
from vhostsuite.testing.guest import VM, Guest, Qemu, Unavailable, provision_guest, provision_qemu


@pytest.fixture(scope="session")
def qemu() -> Qemu:
    """A QEMU >= 8.2 (skips the test if none can be provisioned)."""
    try:
        return provision_qemu()
    except Unavailable as exc:
        pytest.skip(f"QEMU unavailable: {exc}")


@pytest.fixture(scope="session")
def guest() -> Guest:
    """The guest kernel + initramfs (skips the test if it cannot be provisioned)."""
    try:
        return provision_guest()
    except Unavailable as exc:
        pytest.skip(f"guest unavailable: {exc}")


def vms_of(qemu: Qemu, guest: Guest, tmp_path: Path) -> Iterator[Callable[..., VM]]:
    """``make(run, devices=None, **kwargs) -> VM`` for *qemu*; all VMs are closed at the end.

    Each VM's serial log and QEMU output paths are printed (pytest shows them with a failure).
    """
    vms: list[VM] = []

    def make(run: str, devices: list[str] | None = None, **kwargs: Any) -> VM:
        kwargs.setdefault("workdir", tmp_path / f"vm{len(vms)}")
        vm = VM(qemu, guest, run, devices or [], **kwargs)
        vms.append(vm)
        print(f"VM {len(vms) - 1}: serial log {vm.log_path}, qemu output {vm.stderr_path}")
        return vm

    try:
        yield make
    finally:
        for vm in vms:
            vm.close()


@pytest.fixture
def vm_factory(qemu: Qemu, guest: Guest, tmp_path: Path) -> Iterator[Callable[..., VM]]:
    """VMs under the guest kit's QEMU (:func:`vms_of`)."""
    yield from vms_of(qemu, guest, tmp_path)


@pytest.fixture(scope="session")
def deb(tmp_path_factory) -> tuple[Path, str]:
    """The .deb built as ``make deb`` builds it, and lintian's report (built once a session)."""
    if NO_EXTENSIONS:
        pytest.skip("the package is built the same either way: its tests run in the compiled pass")
    if os.geteuid() != 0:
        pytest.skip("building in a Debian root needs root")
    out = tmp_path_factory.mktemp("deb")
    try:
        return debroot.build_deb(out)
    except Unavailable as e:
        pytest.skip(f"no Debian build root here: {e}")


@pytest.fixture(scope="session")
def fresh_root(deb: tuple[Path, str], tmp_path_factory) -> Iterator[Path]:
    """A fresh Debian root with only the run-time dependencies, and the .deb installed there."""
    root = tmp_path_factory.mktemp("fresh-root")
    try:
        debroot.install_root(deb[0], root)
    except Unavailable as e:
        pytest.skip(f"no fresh Debian root here: {e}")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def recommends_root(deb: tuple[Path, str], tmp_path_factory) -> Iterator[Path]:
    """A fresh Debian root with the run-time dependencies and what the package recommends (as
    apt installs by default), and the .deb installed there."""
    fields = subprocess.run(["dpkg-deb", "-f", str(deb[0]), "Recommends"], capture_output=True, text=True).stdout
    recommends = [name.strip() for name in fields.split(",") if name.strip()]
    root = tmp_path_factory.mktemp("recommends-root")
    try:
        debroot.install_root(deb[0], root, extra=recommends)
    except Unavailable as e:
        pytest.skip(f"no fresh Debian root here: {e}")
    yield root
    shutil.rmtree(root, ignore_errors=True)
