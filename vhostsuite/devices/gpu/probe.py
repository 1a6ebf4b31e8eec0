"""Whether the renderer initialises here, and a record of the last success, so that
``--print-capabilities`` (libvirt runs it at every domain start) need not start EGL, Mesa and
virglrenderer each time: that start costs 50-70 ms with llvmpipe, the rest of the program 10.

The probe runs in a child process, which keeps no renderer, EGL threads or GL state, and reports
every file it had mapped once the renderer was up. A success is recorded with the identity
(device, inode, size, mtime, ctime) of each of those files, of the directories holding them, of
the files that choose what the loaders load (``/etc/ld.so.cache``, glvnd's vendor files,
``/dev/dri``), and with the environment variables that steer them. The record answers only while
every one of those is unchanged, as libvirt's own cache of QEMU's capabilities is keyed by the
binary: a package upgrade, a new driver, a render node appearing or another ``LD_LIBRARY_PATH``
probe again. Only successes are recorded (a failure is fast: a library missing or EGL refusing),
and only in a directory of this user's that nobody else can write: ``$XDG_RUNTIME_DIR/vhostsuite``,
or ``/run/vhostsuite`` for root; both are emptied at boot. Anything odd about the record (another
owner, writable by others, too long, unparsable) and the probe runs.

A host without the GL libraries (the package installed without its Recommends) is answered
without a child: when the loader's cache and its default directories hold none of a needed
library's names, and no ``LD_LIBRARY_PATH`` adds places, the renderer can't start.

Imports only os and sys: ``--print-capabilities`` must stay light (tests/test_startup.py).
"""

from __future__ import annotations

import os
import sys

#: What libepoxy (virglrenderer's GL loader) opens at the renderer's start, each a choice of
#: names, with the Debian package of the first: it abort()s the process when one is missing,
#: so they are looked for first and a missing one is said. Mesa's EGL driver (libegl-mesa0,
#: libgl1-mesa-dri) is not among them: without it the start fails cleanly.
GL_LIBRARIES = ((("libEGL.so.1",), "libegl1"), (("libOpenGL.so.0", "libGL.so.1"), "libopengl0"))
#: The dynamic loader's cache of what its configured directories hold (ldconfig writes it).
LD_CACHE = "/etc/ld.so.cache"
#: Where the loader looks after its cache (glibc's system directories; Debian's multiarch ones first).
_ARCH = getattr(sys.implementation, "_multiarch", "")
LD_DIRS = (*((f"/lib/{_ARCH}", f"/usr/lib/{_ARCH}") if _ARCH else ()), "/lib64", "/usr/lib64", "/lib", "/usr/lib")
#: A cache larger than this is not read (a real one is tens of kB): the probe decides.
MAX_LD_CACHE = 16 << 20

RECORD_NAME = "virgl-probe"
#: The record's first line: another format (an older or newer vhostsuite) is not read.
FORMAT = "vhostsuite virgl probe 1"
#: A record longer than this is not read: a real one is a few hundred lines.
MAX_RECORD = 1 << 20
#: Environment variables that choose or steer what EGL, glvnd, Mesa, libepoxy, virglrenderer or
#: the dynamic loader do, by prefix; and this program's own (VHOSTSUITE_NO_EXTENSIONS).
ENV_PREFIXES = ("LD_", "EGL_", "__EGL_", "__GL", "MESA_", "LIBGL_", "GALLIUM_", "GALLIVM_", "LP_", "NIR_",
                "DRI_", "GBM_", "EPOXY_", "VIRGL_", "VREND_", "VHOSTSUITE_")  # fmt: skip
#: What picks the libraries and drivers without being mapped: the loader's cache and preload
#: list, glvnd's EGL vendor and platform directories, Mesa's driver configuration, the DRM nodes.
WATCHED = ("/etc/ld.so.cache", "/etc/ld.so.preload", "/usr/share/glvnd/egl_vendor.d", "/etc/glvnd/egl_vendor.d",
           "/usr/share/egl/egl_external_platform.d", "/etc/egl/egl_external_platform.d", "/usr/share/drirc.d",
           "/etc/drirc", "/dev/dri")  # fmt: skip


def renderer_works(render_node: str | None = None, remembered: bool = False) -> bool:
    """Whether ``--virgl`` would start here, found by initialising the renderer in a child. With
    *remembered*, a recorded success whose files and environment are unchanged answers instead,
    and a new success is recorded (surfaceless only: the question --print-capabilities asks)."""
    remembered = remembered and render_node is None
    if unfindable(GL_LIBRARIES) is not None:
        return False
    if remembered and recorded_success():
        return True
    ok, files = _probe(render_node)
    if ok and remembered and files:
        _record(files)
    return ok


def unfindable(libraries: tuple[tuple[tuple[str, ...], str], ...], cache: str = LD_CACHE,
               dirs: tuple[str, ...] = LD_DIRS) -> tuple[str, str] | None:  # fmt: skip
    """The first of *libraries* ((names, package) pairs, as :data:`GL_LIBRARIES`) that the
    dynamic loader certainly won't find under any of its names: (name, package). None when each
    may be found, or when that can't be told without loading (``LD_LIBRARY_PATH`` set, no
    readable cache). May err only towards None: the renderer's own start has the last word."""
    if os.environ.get("LD_LIBRARY_PATH"):
        return None
    try:
        with open(cache, "rb") as f:
            data = f.read(MAX_LD_CACHE + 1)
    except OSError:
        return None
    if len(data) > MAX_LD_CACHE:
        return None
    for names, package in libraries:
        # the cache's string table holds each name NUL-terminated, after a NUL or in a path
        if not any(b"\0" + n.encode() + b"\0" in data or b"/" + n.encode() + b"\0" in data
                   or any(os.path.exists(os.path.join(d, n)) for d in dirs) for n in names):  # fmt: skip
            return names[0], package
    return None


def _probe(render_node: str | None) -> tuple[bool, list[str]]:
    """(works, the files the child had mapped with the renderer up)."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its exit status is the answer, its pipe the files
        ok = False
        try:
            os.close(rfd)
            from _signal import alarm  # signal.py would build its enums first (~8 ms)

            alarm(10)  # a hung driver ends the probe, not the caller
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)  # the caller's output is its own
            os.dup2(devnull, 2)
            from .virgl import available, init_renderer

            if available() is None:
                init_renderer(render_node)
                ok = True
                # without /proc (a chroot, say) the answer stands, and nothing is recorded
                _write_all(wfd, "\n".join(mapped_files()).encode(errors="surrogateescape"))
        except BaseException:  # noqa: BLE001 - any failure before the renderer is up is a "no"
            pass
        finally:
            os._exit(0 if ok else 1)
    os.close(wfd)
    chunks, size = [], 0
    try:
        while chunk := os.read(rfd, 65536):
            size += len(chunk)
            if size <= MAX_RECORD:
                chunks.append(chunk)
    finally:
        os.close(rfd)
    _, status = os.waitpid(pid, 0)
    ok = os.waitstatus_to_exitcode(status) == 0
    data = b"".join(chunks) if size <= MAX_RECORD else b""
    return ok, data.decode(errors="surrogateescape").split("\n") if ok and data else []


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def mapped_files() -> list[str]:
    """The files this process has mapped (its executable, libraries and drivers), sorted."""
    files = set()
    with open("/proc/self/maps", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.rstrip("\n").split(maxsplit=5)
            if len(fields) == 6 and fields[5].startswith("/") and not fields[5].endswith(" (deleted)"):
                files.add(fields[5])
    return sorted(files)


def record_dir() -> str | None:
    """Where the record lives for this user, or None (no runtime directory: nothing recorded)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        return os.path.join(runtime, "vhostsuite")
    return "/run/vhostsuite" if os.geteuid() == 0 else None


def _identity(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return "-"
    return f"{st.st_dev} {st.st_ino} {st.st_size} {st.st_mtime_ns} {st.st_ctime_ns}"


def _environment() -> list[str]:
    return sorted(f"env\t{k}={v}" for k, v in os.environ.items() if k.startswith(ENV_PREFIXES) and "\n" not in v)


def _paths(files: list[str]) -> list[str]:
    """*files*, their directories and what is WATCHED (with vendor files), sorted, unique."""
    paths = set(files) | {os.path.dirname(f) for f in files} | set(WATCHED)
    for d in WATCHED:
        try:
            paths.update(os.path.join(d, n) for n in os.listdir(d) if d != "/dev/dri")
        except OSError:
            pass
    return sorted(p for p in paths if "\n" not in p and "\t" not in p)


def _record(files: list[str]) -> None:
    """Write the record of a success; silently nothing if it can't be (the answer stands)."""
    where = record_dir()
    if where is None:
        return
    lines = [FORMAT, *_environment(), *(f"file\t{p}\t{_identity(p)}" for p in _paths(files))]
    tmp = os.path.join(where, f".{RECORD_NAME}.{os.getpid()}")
    try:
        os.makedirs(where, mode=0o700, exist_ok=True)
        if not _private(os.lstat(where)):
            return
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            _write_all(fd, ("\n".join(lines) + "\n").encode(errors="surrogateescape"))
        finally:
            os.close(fd)
        os.replace(tmp, os.path.join(where, RECORD_NAME))
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _private(st: os.stat_result) -> bool:
    """Owned by this user and writable by nobody else: what may answer for the renderer."""
    return st.st_uid == os.geteuid() and not st.st_mode & 0o022


def recorded_success() -> bool:
    """Whether a record of a success exists whose environment and files are all unchanged."""
    where = record_dir()
    if where is None:
        return False
    try:
        if not _private(os.lstat(where)):
            return False
        fd = os.open(os.path.join(where, RECORD_NAME), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not _private(st) or st.st_size > MAX_RECORD:
            return False
        text = os.read(fd, MAX_RECORD + 1).decode(errors="surrogateescape")
    except OSError:
        return False
    finally:
        os.close(fd)
    lines = text.split("\n")
    if lines[0] != FORMAT or lines[-1] != "":
        return False
    env, files = [], 0
    for line in lines[1:-1]:
        kind, _, rest = line.partition("\t")
        if kind == "env":
            env.append(line)
        elif kind == "file":
            path, _, identity = rest.partition("\t")
            if _identity(path) != identity:
                return False
            files += 1
        else:
            return False
    return files > 0 and env == _environment()
