"""The programs' log (vhostsuite.core.logger): the line format libvirt's log files show, levels,
and a message that can't be formatted or written never stops the program."""

from __future__ import annotations

import io

import pytest

from vhostsuite.core import logger


@pytest.fixture
def stream():  # noqa: ANN201
    out = io.StringIO()
    saved = logger._level, logger._prefix, logger._stream
    logger.set_stream(out)
    yield out
    logger._level, logger._prefix, logger._stream = saved


def test_lines_name_the_program_and_level_and_drop_what_is_below_it(stream) -> None:
    logger.configure("vhost-user-gpu", logger.INFO)
    log = logger.get("vhostsuite.gpu")
    assert log is logger.get("vhostsuite.gpu")
    log.debug("not shown %d", 1)
    log.info("resource %d created", 7)
    log.warning("plain")
    assert stream.getvalue() == "vhost-user-gpu: INFO: resource 7 created\nvhost-user-gpu: WARNING: plain\n"
    assert log.isEnabledFor(logger.INFO) and not log.isEnabledFor(logger.DEBUG)


def test_before_configure_only_warnings_go_out_bare(stream) -> None:
    logger._level, logger._prefix = logger.WARNING, ""
    log = logger.get("x")
    log.info("no")
    log.error("disk %s", "full")
    assert stream.getvalue() == "disk full\n"


def test_a_bad_format_is_logged_not_raised(stream) -> None:
    logger.configure("p", logger.DEBUG)
    logger.get("x").warning("%d of %d", "a")
    assert stream.getvalue().startswith("p: WARNING: '%d of %d' % ('a',)")


def test_tracebacks_follow_exception_and_exc_info(stream) -> None:
    logger.configure("p", logger.WARNING)
    log = logger.get("x")
    try:
        raise KeyError("gone")
    except KeyError as e:
        log.exception("lookup failed")
        log.error("again", exc_info=e)
    text = stream.getvalue()
    assert text.count("Traceback (most recent call last)") == 2 and text.count("KeyError: 'gone'") == 2
    assert text.startswith("p: ERROR: lookup failed\nTraceback")


def test_a_closed_stream_loses_the_line_only(stream) -> None:
    logger.configure("p", logger.WARNING)
    stream.close()
    logger.get("x").error("nobody hears this")  # must not raise


def test_out_of_fds_the_exception_is_still_named() -> None:
    """traceback is imported when a traceback is first logged; out of fds (often the very error
    being logged) that import fails, and the line must still say what went wrong."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import os, resource, sys\nfrom vhostsuite.core import logger\n"
        "logger.configure('p', logger.WARNING)\n"
        "sys.modules.pop('traceback', None); sys.modules.pop('linecache', None)\n"
        "n = len(os.listdir('/proc/self/fd')) - 1  # the listing's own fd is closed again\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (n, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))\n"
        "try:\n    os.pipe()\nexcept OSError as e:\n    logger.get('x').error('accept failed', exc_info=e)\n"
        "print('went on')\n"
    )
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=30,
                       env={**os.environ, "PYTHONPATH": str(root)})  # fmt: skip
    assert r.stdout == "went on\n", r.stderr
    first, second = r.stderr.splitlines()
    assert first == "p: ERROR: accept failed"
    assert second.startswith("  OSError: [Errno 24] Too many open files (no traceback: ")
