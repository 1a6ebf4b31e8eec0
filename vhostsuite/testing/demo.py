"""``make demo``: a Linux guest under QEMU served by vhost-user-gpu, vhost-user-input and
vhost-user-rng at once. The guest reads random bytes, draws with KMS, and reads the keys we
type on the virtual keyboard's control socket; we keep a PNG of its screen and a report.

    python -m vhostsuite.testing.demo --out out/demo
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .guest import VM, Unavailable, provision_guest, provision_qemu
from .screen import differing_pixels, expected, load_rgb

ROOT = Path(__file__).resolve().parent.parent
TEXT = "vhostsuite"


def _launcher(name: str) -> list[str]:
    """Our launcher from the source tree if we run from one, else the installed console script."""
    local = ROOT / "bin" / name
    if local.exists():
        return [sys.executable, str(local)]
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"demo: {name} not found")
    return [found]


def _wait_path(path: Path, proc: subprocess.Popen, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"demo: back-end for {path.name} did not start (status {proc.poll()})")
        time.sleep(0.01)


def _key_events(text: str) -> list[list]:
    events: list[list] = []
    for ch in text:
        key = f"KEY_{ch.upper()}"
        events += [["EV_KEY", key, 1], ["EV_SYN", "SYN_REPORT", 0], ["EV_KEY", key, 0], ["EV_SYN", "SYN_REPORT", 0]]
    return events


def _key_name(code: int) -> str:
    from evdev import ecodes

    name = ecodes.KEY.get(code, "?")
    name = name[0] if isinstance(name, list) else name
    return name.removeprefix("KEY_").lower() if len(name) == 5 else f"<{name}>"


def run(out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    qemu, guest = provision_qemu(), provision_guest()
    socks = Path(tempfile.mkdtemp(prefix="vhs-demo-", dir="/tmp"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    procs: dict[str, subprocess.Popen] = {}
    logs = {}
    lines: list[str] = []

    def say(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    report: dict = {"qemu": ".".join(map(str, qemu.version)), "kernel": guest.kernel_version}
    nkeys = len(_key_events(TEXT))
    try:
        args = {
            "gpu": ["-v"],
            "input": ["-v", "--virtual=keyboard", f"--control-socket={socks / 'kbd.ctl'}"],
            "rng": ["-v"],
        }
        for name, extra in args.items():
            logs[name] = open(out / f"vhost-user-{name}.log", "wb")  # noqa: SIM115 - closed below
            procs[name] = subprocess.Popen(
                [*_launcher(f"vhost-user-{name}"), f"--socket-path={socks / name}.sock", *extra],
                stderr=logs[name],
                env=env,
            )
        for name, proc in procs.items():
            _wait_path(socks / f"{name}.sock", proc)
        _wait_path(socks / "kbd.ctl", procs["input"])
        ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # connected early: it hears the guest's LEDs
        ctl.connect(str(socks / "kbd.ctl"))
        ctl.settimeout(10)
        devices = []
        for name, dev in (
            ("gpu", "vhost-user-gpu-pci"),
            ("input", "vhost-user-input-pci"),
            ("rng", "vhost-user-rng-pci"),
        ):
            devices += ["-chardev", f"socket,id={name}0,path={socks / name}.sock", "-device", f"{dev},chardev={name}0"]
        t0 = time.monotonic()
        with VM(qemu, guest, "demo", devices, workdir=out / "vm",
                cmdline_extra=f"vhs.gpu_delay=2 vhs.input_events={nkeys} vhs.input_idle=5") as vm:  # fmt: skip
            say(f"demo: guest booting (QEMU {report['qemu']}, TCG); serial log in {vm.log_path}")
            vm.wait_for(r"^DEMO-RNG-RC=", timeout=240)
            text = vm.serial_text()
            cur = re.search(r"^RNG_CURRENT=(\S*)", text, re.M)
            sha = re.findall(r"^RNG_[AB]_SHA256=(\w+)", text, re.M)
            report["rng"] = {"hw_random": cur[1] if cur else None, "blocks_sha256": sha,
                             "two_4k_reads_differ": len(sha) == 2 and sha[0] != sha[1]}  # fmt: skip
            say(f"demo: rng: guest's hw_random is {report['rng']['hw_random']}, read 2 x 4 KiB")

            m = vm.wait_for(r"^GPU-(?:FRAME2 (\d+) (\d+) (\d+) (\d+)|ERROR.*)$", timeout=120)
            m1 = re.search(r"^GPU-FRAME1 (\d+) (\d+)", vm.serial_text(), re.M)
            if not m[1] or not m1:
                raise SystemExit(f"demo: the guest could not draw: {m[0]}")
            w, h = int(m1[1]), int(m1[2])
            rect = (int(m[1]), int(m[2]), int(m[3]), int(m[4]))
            want = expected(w, h, rect)
            deadline = time.monotonic() + 20
            while True:
                fmt = vm.screendump(out / "screen.img")
                sw, sh, rgb = load_rgb(out / "screen.img", fmt)
                bad = differing_pixels(sw, rgb, want) if (sw, sh) == (w, h) else [(-1, -1)]
                if not bad or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            shot = out / f"screenshot.{fmt}"
            (out / "screen.img").rename(shot)
            report["gpu"] = {"mode": f"{w}x{h}", "dirty_rect": rect, "screenshot": shot.name,
                             "pixels_differing_from_pattern": len(bad)}  # fmt: skip
            say(f"demo: gpu: guest drew {w}x{h}; screenshot {shot} ({len(bad)} pixels off the expected pattern)")

            vm.wait_for(r"^INPUT_READY", timeout=120)
            ctl.sendall(json.dumps({"events": _key_events(TEXT)}).encode() + b"\n")
            vm.wait_for(r"^INPUT_EVENTS_DONE", timeout=120)
            ctl.settimeout(0.5)
            heard = b""
            try:
                while chunk := ctl.recv(4096):
                    heard += chunk
            except TimeoutError:
                pass
            ctl.close()
            text = vm.serial_text()
            codes = [int(c) for t, c, v in re.findall(r"^EV (\d+) (\d+) (-?\d+)", text, re.M) if t == "1" and v == "1"]
            keys = "".join(_key_name(c) for c in codes)
            name = re.search(r"^INPUT_NAME=(.*)$", text, re.M)
            report["input"] = {"device": name[1].strip() if name else None, "events_sent": nkeys,
                               "events_read_in_guest": len(re.findall(r"^EV ", text, re.M)),
                               "keys_typed_in_guest": keys,
                               "control_socket_heard": [json.loads(x) for x in heard.splitlines()]}  # fmt: skip
            nread = report["input"]["events_read_in_guest"]
            say(f"demo: input: typed {TEXT!r}; the guest read {nread} events: {keys!r}")
            leds = report["input"]["control_socket_heard"]
            say(f"demo: input: the guest's LED writes heard on the control socket: {leds}")
            vm.wait_for(r"^VHS-DONE", timeout=120)
            report["guest_seconds"] = round(time.monotonic() - t0, 1)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
        for name, proc in procs.items():
            try:
                report.setdefault("backend_exit_status", {})[name] = proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
        for f in logs.values():
            f.close()
        shutil.rmtree(socks, ignore_errors=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.txt").write_text("\n".join(lines) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vhostsuite.testing.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="out/demo", type=Path, help="where the screenshot and report go")
    args = p.parse_args(argv)
    try:
        report = run(args.out)
    except Unavailable as e:
        print(f"demo: can't provision QEMU >= 8.2 or the guest here: {e}", file=sys.stderr)
        return 1
    ok = (
        report["rng"]["two_4k_reads_differ"]
        and report["gpu"]["pixels_differing_from_pattern"] == 0
        and report["input"]["events_read_in_guest"] == report["input"]["events_sent"]
    )
    print(f"demo: report in {args.out / 'report.json'}: {'all three devices served the guest' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
