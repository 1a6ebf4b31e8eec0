"""The option parser every back-end uses: what a user types, what they are told when it's wrong.

The parser itself in-process (it is plain code over a list of strings), then the real programs
for what reaches a user: usage errors on stderr with status 2, help on stdout with status 0.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vhostsuite.program.cli import make_parser
from vhostsuite.program.options import Parser

ROOT = Path(__file__).resolve().parents[1]


def parser() -> Parser:
    p = make_parser("vhost-user-test", "A test back-end.")
    dev = p.add_argument_group("device")
    dev.add_argument("--max-hostmem", metavar="SIZE", type=int, help="a size")
    dev.add_argument("--max-outputs", type=int, help="a count")
    dev.add_argument("--virgl", action="store_true", help="3D")
    return p


def usage_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    with pytest.raises(SystemExit) as e:
        parser().parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: vhost-user-test ")
    return err.splitlines()[-1]


def test_defaults() -> None:
    ns = parser().parse_args([])
    got = (ns.socket_path, ns.fd, ns.verbose, ns.quiet, ns.virgl, ns.max_hostmem)
    assert got == (None, None, 0, False, False, None)


@pytest.mark.parametrize("argv", [["--socket-path=/x y"], ["--socket-path", "/x y"], ["--sock=/x y"], ["--so", "/x y"]])
def test_values_joined_or_separate_and_unique_prefixes(argv: list[str]) -> None:
    assert parser().parse_args(argv).socket_path == "/x y"


def test_types_counts_bundles_and_the_last_repeat_wins() -> None:
    ns = parser().parse_args(["-vv", "--verbose", "--fd", "3", "--fd=-1", "--max-hostmem=5", "-q", "--virgl"])
    assert (ns.verbose, ns.fd, ns.max_hostmem, ns.quiet, ns.virgl) == (3, -1, 5, True, True)


def test_an_empty_value_is_a_value() -> None:
    assert parser().parse_args(["--socket-path="]).socket_path == ""


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bogus"], "vhost-user-test: error: unrecognized arguments: --bogus"),
        (["extra"], "vhost-user-test: error: unrecognized arguments: extra"),
        (["-x"], "vhost-user-test: error: unrecognized arguments: -x"),
        (["--max"], "vhost-user-test: error: ambiguous option: --max could match --max-hostmem, --max-outputs"),
        (["--fd"], "vhost-user-test: error: argument --fd: expected one argument"),
        (["--fd", "--quiet"], "vhost-user-test: error: argument --fd: expected one argument"),
        (["--fd=abc"], "vhost-user-test: error: argument --fd: invalid int value: 'abc'"),
        (["--max-hostmem=1.5"], "vhost-user-test: error: argument --max-hostmem: invalid literal for int() with "
                                "base 10: '1.5'"),
        (["--virgl=1"], "vhost-user-test: error: argument --virgl: ignored explicit argument '1'"),
        (["--quiet", "--", "x"], "vhost-user-test: error: unrecognized arguments: x"),
        (["-q-v"], "vhost-user-test: error: unrecognized arguments: -q-v"),
        (["-qx"], "vhost-user-test: error: unrecognized arguments: -qx"),
    ],
)  # fmt: skip
def test_usage_errors(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    assert usage_error(capsys, argv) == message


def test_help_lists_every_option_under_its_group(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        parser().parse_args(["--he"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: vhost-user-test [-h] [--print-capabilities] [--poll-max-us USEC] [-v] [-q] [-V]\n"
                          "                       [--socket-path PATH]")  # fmt: skip
    assert "\nA test back-end.\n" in out
    sections = [line for line in out.splitlines() if line and not line.startswith(" ") and line.endswith(":")]
    assert sections == ["options:", "connection (exactly one):", "device:"]
    for option in parser().options:
        assert any(line.startswith("  " + option.spelled()) for line in out.splitlines()), option.names
    assert max(len(line) for line in out.splitlines()) <= 100


def test_an_option_defined_twice_is_a_programming_error() -> None:
    p = parser()
    with pytest.raises(ValueError, match="defined twice"):
        p.add_argument("--virgl", action="store_true")


def _program(*argv: str, prog: str = "vhost-user-rng") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "bin" / prog), *argv],
                          capture_output=True, text=True, timeout=30, env=env)  # fmt: skip


def test_a_program_reports_a_bad_option_as_argparse_would() -> None:
    r = _program("--socket-path=/nonexistent/x", "--verbose=2")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("usage: vhost-user-rng [-h] [--print-capabilities] [--poll-max-us USEC] [-v] [-q] [-V]")
    assert r.stderr.splitlines()[-1] == "vhost-user-rng: error: argument -v/--verbose: ignored explicit argument '2'"


def test_a_program_prints_help_on_stdout() -> None:
    r = _program("--help")
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout.startswith("usage: vhost-user-rng ") and "--socket-path PATH" in r.stdout


@pytest.mark.parametrize("prog", ["vhost-user-rng", "vhost-user-gpu", "vhost-user-input"])
def test_the_usage_line_wraps_between_options_never_inside_one(prog: str) -> None:
    r = _program("--help", prog=prog)
    usage = r.stdout.split("\n\n")[0].splitlines()
    assert len(usage) > 1, "long enough to wrap"
    for line in usage:
        words = line.split()
        assert line.count("[") == line.count("]"), line
        assert all(w.startswith("[") or w.endswith("]") or w in ("usage:", prog) for w in words), line
