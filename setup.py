"""Builds the compiled twins vhostsuite.core._ring, vhostsuite.devices.gpu._pixels and
vhostsuite.devices.gpu._commands, and the binding vhostsuite.devices.gpu._virgl when pkg-config
finds virglrenderer (Debian: libvirglrenderer-dev; without it vhost-user-gpu is 2D only); all
metadata is in setup.cfg.

VHOSTSUITE_NO_EXTENSIONS=1 builds none: the package then runs its pure-Python twins (the same
switch vhostsuite reads at run time). VHOSTSUITE_CYTHON_DEBUG=1 builds them with Cython's own
checks on (bounds, wraparound, initialized), line tracing and an annotated HTML beside each .pyx
(``make debug``).
"""

import os
import subprocess

from setuptools import Extension, setup


def extensions() -> list[Extension]:
    if os.environ.get("VHOSTSUITE_NO_EXTENSIONS"):
        return []
    from Cython.Build import cythonize

    debug = bool(os.environ.get("VHOSTSUITE_CYTHON_DEBUG"))
    directives: dict[str, object] = {"language_level": 3}
    macros: list[tuple[str, str | None]] = []
    if debug:
        directives |= {"boundscheck": True, "wraparound": True, "initializedcheck": True, "linetrace": True}
        macros = [("CYTHON_TRACE_NOGIL", "1")]
    exts = [
        Extension(name, [name.replace(".", "/") + ".pyx"], define_macros=macros)
        for name in ("vhostsuite.core._ring", "vhostsuite.devices.gpu._pixels", "vhostsuite.devices.gpu._commands")
    ]
    virgl = _pkg_config("virglrenderer")
    if virgl is not None:
        cflags, libs = virgl
        exts.append(Extension("vhostsuite.devices.gpu._virgl", ["vhostsuite/devices/gpu/_virgl.pyx"],
                              define_macros=macros, extra_compile_args=cflags, extra_link_args=libs))
    # cythonize looks at timestamps only: regenerate the C when the build mode changed.
    mode = "debug" if debug else "release"
    stamp = os.path.join("build", "cython-mode")
    try:
        with open(stamp) as f:
            changed = f.read() != mode
    except OSError:
        changed = True
    os.makedirs("build", exist_ok=True)
    with open(stamp, "w") as f:
        f.write(mode)
    return cythonize(exts, compiler_directives=directives, annotate=debug, force=changed)


def _pkg_config(package: str) -> tuple[list[str], list[str]] | None:
    """(cflags, libs) of *package*, or None when pkg-config or the package is missing."""
    try:
        cflags, libs = (
            subprocess.run(["pkg-config", flag, package], capture_output=True, text=True, check=True).stdout.split()
            for flag in ("--cflags", "--libs")
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return cflags, libs


setup(ext_modules=extensions())
