"""What a program loads to start: only what its options need (start-up time is paid by every
libvirt domain start and every --print-capabilities)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vhostsuite import NO_EXTENSIONS
from vhostsuite.core import ring
from vhostsuite.testing.backend import BIN, Backend, child_env

SERVING = {
    "rng": ["vhostsuite.devices.rng", "vhostsuite.program.server"],
    "gpu": ["vhostsuite.devices.gpu", "vhostsuite.devices.gpu.device", "vhostsuite.program.server"],
    "input": ["vhostsuite.devices.input", "vhostsuite.devices.input.device", "vhostsuite.devices.input.sources",
              "vhostsuite.program.server"],
}  # fmt: skip


def _loaded(modules: list[str], no_site: bool = False) -> set[str]:
    """The modules loaded after importing *modules* (json is imported after the snapshot)."""
    code = (
        f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
        "loaded = list(sys.modules)\nimport json\nprint(json.dumps(loaded))"
    )
    root = Path(__file__).resolve().parents[1]
    argv = [sys.executable, *(["-S"] if no_site else []), "-c", code]
    out = subprocess.run(argv, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(root)}).stdout  # fmt: skip
    return set(json.loads(out))


@pytest.mark.parametrize("program", sorted(SERVING))
def test_serving_imports_no_dataclasses(program: str) -> None:
    # dataclasses brings inspect, ast, dis and tokenize: ~8 ms of every start, for records that
    # named tuples give as well
    assert not {"dataclasses", "inspect"} & _loaded(SERVING[program])


@pytest.mark.parametrize("program", sorted(SERVING))
def test_serving_imports_no_typing_and_the_gpu_no_cairo(program: str) -> None:
    """typing (~2 ms) is for type checkers only; cairo (~3 ms) waits for the first cursor image.
    -S keeps site's own imports (e.g. a .pth file) out of what is counted."""
    loaded = _loaded(SERVING[program], no_site=True)
    assert "typing" not in loaded
    assert "cairo" not in loaded


@pytest.mark.skipif(NO_EXTENSIONS or ring.IMPORT_ERROR is not None, reason="the compiled ring is not in use")
def test_compiled_ring_does_not_load_its_twin() -> None:
    loaded = _loaded(["vhostsuite.devices.rng", "vhostsuite.program.server"])
    assert "vhostsuite.core._ring" in loaded and "vhostsuite.core._ring_py" not in loaded


@pytest.mark.parametrize("program", ["rng", "gpu", "input"])
def test_print_capabilities_imports_only_the_entry_module(program: str) -> None:
    """libvirt runs it at every domain start: not even our option parser, nor json, re or typing.
    -S keeps site's own imports (e.g. a .pth file) out of what is counted."""
    code = (
        "import sys\nsys.argv = ['x', '--print-capabilities']\n"
        f"import vhostsuite.devices.{program} as m\nm.main()\nprint(' '.join(sys.modules))"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(root)}).stdout  # fmt: skip
    caps, modules = out.splitlines()
    assert json.loads(caps)["type"] == program
    assert not {"vhostsuite.program.options", "argparse", "logging", "json", "re", "typing", "enum", "socket"} & set(
        modules.split()
    )


#: What a program must not have loaded by the time it listens: the standard library's argparse
#: and logging (which bring re, gettext, locale, shutil, traceback, threading: ~20 ms of Debian
#: 13's Python, paid at every domain start), socket and signal (enum and selectors: ~10 ms),
#: json, dataclasses, asyncio, importlib.util.
NOT_WHEN_LISTENING = {"argparse", "logging", "re", "gettext", "locale", "shutil", "traceback", "threading",
                      "socket", "signal", "enum", "selectors", "json", "dataclasses", "inspect", "asyncio",
                      "typing", "importlib.util"}  # fmt: skip
LISTEN_ARGS = {"rng": [], "gpu": [], "input": ["--virtual=keyboard"]}


def _site_dirs(*packages: str) -> list[str]:
    """Where *packages* are installed, for PYTHONPATH under -S (which skips site and its .pth files)."""
    import importlib.util

    dirs = []
    for name in packages:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            dirs.append(str(Path(next(iter(spec.submodule_search_locations))).parent))
    return dirs


def _import_tree(stderr: str) -> dict[str, list[str]]:
    """Each module ``-X importtime`` reported, with the modules whose import brought it in (a
    child is printed before its parent, indented two more spaces)."""
    rows = []
    for line in stderr.splitlines():
        fields = line.split("|")
        if line.startswith("import time:") and len(fields) == 3 and fields[1].strip().isdigit():
            name = fields[2].rstrip()
            rows.append((len(name) - len(name.lstrip()), name.strip()))
    tree = {}
    for i, (depth, name) in enumerate(rows):
        parents = []
        for d, parent in rows[i + 1 :]:
            if d < depth:
                parents.append(parent)
                depth = d
        tree[name] = parents
    return tree


@pytest.mark.parametrize("program", sorted(LISTEN_ARGS))
def test_a_listening_program_has_loaded_none_of_the_heavy_modules(program: str, tmp_path: Path) -> None:
    """The real program, run until its socket exists, under ``-X importtime`` (every module it
    imported, on stderr). A --virtual input device needs no code names (python-evdev's ecodes,
    which import typing); json comes with a control socket only, and there is none here."""
    sock = tmp_path / "s.sock"
    env = child_env()
    env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], *_site_dirs("cairo", "evdev")])
    argv = [sys.executable, "-S", "-X", "importtime", str(BIN / f"vhost-user-{program}"), f"--socket-path={sock}"]
    be = Backend([*argv, *LISTEN_ARGS[program]], tmp_path, env=env)
    try:
        be.wait_listening(sock)
        assert be.terminate() == 0
    finally:
        be.stop()
    tree = _import_tree(be.stderr())
    assert "vhostsuite.program.server" in tree, be.stderr()[-2000:]
    heavy = {m: tree[m] for m in NOT_WHEN_LISTENING & tree.keys()}
    assert heavy == {}, "module: imported by"


def test_a_virtual_input_device_does_not_import_the_evdev_package() -> None:
    """--virtual needs only the code names, not python-evdev's devices (which import asyncio)."""
    code = (
        "import json, sys\nfrom vhostsuite.devices.input import config as C, device, sources\n"
        "d = C.builtin('keyboard')\nassert C.code_number(C.EV_KEY, 'KEY_A') == 30\n"
        "print(json.dumps(list(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert not {"evdev", "asyncio"} & set(json.loads(out))
