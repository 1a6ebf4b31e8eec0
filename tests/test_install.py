"""`make install` as a packager runs it: DESTDIR, prefix=/usr, discovery files, uninstall."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vhostsuite import NO_EXTENSIONS

ROOT = Path(__file__).resolve().parent.parent
DEVICES = {"gpu": ["evdev-path", "no-grab", "render-node", "virgl"], "input": ["evdev-path", "no-grab"], "rng": []}
#: VHostUserBackendType values of QEMU's docs/interop/vhost-user.json
SCHEMA_TYPES = {"9p", "balloon", "block", "caif", "console", "crypto", "fs", "gpu", "input", "net", "rng", "rpmsg",
                "rproc-serial", "scsi", "vsock"}  # fmt: skip


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    dest = tmp_path_factory.mktemp("destdir")
    subprocess.run(
        ["make", "-s", "-C", str(ROOT), "install", f"DESTDIR={dest}", "prefix=/usr", f"PYTHON={sys.executable}"],
        check=True,
        timeout=600,
    )
    return dest


def test_layout_and_capabilities(installed: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # the installed tree works when copied elsewhere: no path into the build directory
    moved = tmp_path / "moved"
    shutil.copytree(installed, moved, symlinks=True)
    for d, allowed in DEVICES.items():
        exe = moved / "usr/libexec" / f"vhost-user-{d}"
        assert os.access(exe, os.X_OK)
        r = subprocess.run([str(exe), "--print-capabilities"], capture_output=True, text=True, env=env, cwd="/",
                           timeout=30)  # fmt: skip
        assert r.returncode == 0, r.stderr
        caps = json.loads(r.stdout)
        assert caps["type"] == d and set(caps["features"]) <= set(allowed)
        assert str(ROOT) not in exe.read_text()
    compiled = list((moved / "usr/lib/vhostsuite/python/vhostsuite/core").glob("_ring*.so"))
    if NO_EXTENSIONS:  # the switch is honoured at build time too
        assert not compiled, "VHOSTSUITE_NO_EXTENSIONS=1 was set, yet the compiled ring was built"
    else:
        assert compiled, "the compiled ring is not installed"


def test_discovery_files_follow_the_schema(installed: Path) -> None:
    files = sorted((installed / "usr/share/qemu/vhost-user").iterdir())
    assert [f.name for f in files] == [f"50-vhostsuite-{d}.json" for d in sorted(DEVICES)]
    for f in files:
        doc = json.loads(f.read_text())
        assert set(doc) <= {"description", "type", "binary", "tags"}
        assert isinstance(doc["description"], str) and doc["description"]
        assert doc["type"] in SCHEMA_TYPES
        assert doc["binary"] == f"/usr/libexec/vhost-user-{doc['type']}"
        assert os.access(installed / doc["binary"].lstrip("/"), os.X_OK)


def test_uninstall_leaves_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "d"
    common = ["make", "-s", "-C", str(ROOT), f"DESTDIR={dest}", "prefix=/usr", f"PYTHON={sys.executable}"]
    subprocess.run([*common, "install"], check=True, timeout=600)
    assert any(dest.rglob("*"))
    subprocess.run([*common, "uninstall"], check=True, timeout=60)
    assert not any(p for p in dest.rglob("*") if not p.is_dir()), list(dest.rglob("*"))
    assert not (dest / "usr").exists()


def test_installed_package_uses_the_compiled_ring() -> None:
    """`make build` installs the package into site-packages with its extensions compiled."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VHOSTSUITE_NO_EXTENSIONS")}
    code = (
        "import vhostsuite, vhostsuite.core._ring as r, vhostsuite.core.ring as ring;"
        "import vhostsuite.devices.gpu.pixels as px;"
        "print(vhostsuite.__file__); print(r.__file__); print(ring.Virtqueue is r.Virtqueue, px.NO_EXTENSIONS)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd="/", timeout=30)
    assert r.returncode == 0, f"vhostsuite is not installed (run `make build`): {r.stderr}"
    pkg, ext, flags = r.stdout.splitlines()
    assert ("site-packages" in pkg or "dist-packages" in pkg) and not pkg.startswith(str(ROOT)), pkg
    assert ext.endswith(".so") and ("site-packages" in ext or "dist-packages" in ext), ext
    assert flags == "True False"


def test_installed_tree_keeps_the_guest_kit_sources_not_the_cython_ones(installed: Path) -> None:
    pkg = installed / "usr/lib/vhostsuite/python/vhostsuite"
    assert (pkg / "testing/guest_src/gpu-draw.c").is_file()
    assert (pkg / "testing/guest_src/vhs.h").is_file()
    sources = ("*.pyx", "*.pxd", "_ring.c", "_pixels.c", "_commands.c")
    assert not [path for pattern in sources for path in pkg.rglob(pattern)]


@pytest.mark.skipif(NO_EXTENSIONS, reason="VHOSTSUITE_NO_EXTENSIONS=1 installs no compiled extensions")
def test_unusable_extensions_are_said_and_the_program_still_serves(installed: Path, tmp_path: Path) -> None:
    """Extensions that don't load (built for another interpreter, damaged): --version and a
    warning at start-up say so, and the pure-Python twins serve."""
    from vhostsuite.testing.backend import Backend
    from vhostsuite.testing.frontend import Frontend

    moved = tmp_path / "moved"
    shutil.copytree(installed, moved, symlinks=True)
    for so in (moved / "usr/lib/vhostsuite/python/vhostsuite").rglob("_*.so"):
        so.write_bytes(b"not a shared object")
    exe = moved / "usr/libexec/vhost-user-rng"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VHOSTSUITE_NO_EXTENSIONS")}
    r = subprocess.run([str(exe), "--version"], capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode == 0 and "can't be used" in r.stdout and "ring:" in r.stdout, r.stdout
    sock = tmp_path / "rng.sock"
    be = Backend([str(exe), f"--socket-path={sock}"], tmp_path)
    try:
        be.wait_listening(sock)
        with Frontend.connect(str(sock)) as fe:
            assert fe.get_features()
        assert "the compiled extensions can't be used" in be.stderr()
    finally:
        be.stop()


def test_version_names_the_implementation() -> None:
    from vhostsuite.testing.backend import child_env, program

    r = subprocess.run([*program("vhost-user-gpu"), "--version"], capture_output=True, text=True, env=child_env(),
                       timeout=30)  # fmt: skip
    assert r.returncode == 0
    if NO_EXTENSIONS:
        assert "pure-Python ring, pixel copier and command decoder (VHOSTSUITE_NO_EXTENSIONS=1)" in r.stdout
    else:
        assert "compiled (Cython) ring, pixel copier and command decoder" in r.stdout


def test_man_pages_name_every_option_and_render_without_warnings(installed: Path) -> None:
    """The pages come from the programs' own parsers: every option is in its page, and man(1)
    renders each installed page without a warning."""
    import importlib

    from vhostsuite.program import manpage

    for prog, module in manpage.PROGRAMS.items():
        page = (installed / f"usr/share/man/man1/{prog}.1").read_text()
        for option in importlib.import_module(module).make_parser().options:
            for opt in option.names:
                assert "\\fB" + opt.replace("-", "\\-") + "\\fR" in page, (prog, opt)
        # FILES names the discovery file where this install put it (datadir)
        dev = prog.removeprefix("vhost-user-")
        assert (installed / f"usr/share/qemu/vhost-user/50-vhostsuite-{dev}.json").exists()
        assert f"/usr/share/qemu/vhost\\-user/50\\-vhostsuite\\-{dev}.json" in page
        if shutil.which("man") is not None:
            argv = ["man", "--warnings", "-l", str(installed / f"usr/share/man/man1/{prog}.1")]
            env = {**os.environ, "MANWIDTH": "80"}
            r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
            assert r.returncode == 0 and not r.stderr.strip(), r.stderr
            assert prog in r.stdout


def test_man_page_names_the_discovery_file_under_the_datadir_given(capsys) -> None:  # noqa: ANN001
    """make man passes $(datadir): a prefix=/usr/local install documents /usr/local/share."""
    from vhostsuite.program import manpage

    assert manpage.main(["vhost-user-rng", "2026-01-01", "/usr/local/share"]) == 0
    page = capsys.readouterr().out
    assert "/usr/local/share/qemu/vhost\\-user/50\\-vhostsuite\\-rng.json" in page
    assert "/usr/share/qemu" not in page
