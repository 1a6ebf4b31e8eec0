"""Mixed-traffic soak on demand (``make soak SOAK_SECONDS=600``): rng, gpu and input back-ends
serve valid and hostile traffic for a while; their RSS and open fds must stay flat.

Samples every 10 s are printed; exits 1 if, after the first minute's warm-up (or the first
sample on shorter runs), RSS grew more than 4 MiB or the fd count changed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vhostsuite.devices.gpu import wire as W  # noqa: E402
from vhostsuite.testing.backend import Backend, program  # noqa: E402
from vhostsuite.testing.frontend import Frontend  # noqa: E402
from vhostsuite.testing.frontend_gpu import GpuDisplay, hdr, open_gpu  # noqa: E402


def usage(pid: int) -> tuple[int, int]:
    rss = next(int(line.split()[1]) for line in open(f"/proc/{pid}/status") if line.startswith("VmRSS:"))
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=300)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vhs-soak-"))
    bes = {
        "rng": Backend([*program("vhost-user-rng"), f"--socket-path={tmp}/rng.sock", "-q"], tmp),
        "gpu": Backend([*program("vhost-user-gpu"), f"--socket-path={tmp}/gpu.sock", "-q"], tmp),
        "input": Backend([*program("vhost-user-input"), f"--socket-path={tmp}/in.sock", "-q", "--virtual=tablet",
                          f"--control-socket={tmp}/in.ctl"], tmp),
    }  # fmt: skip
    rnd = random.Random(1)
    try:
        rng = Frontend.connect(f"{tmp}/rng.sock")
        rng.initialize()
        (rq,) = rng.start([256])
        gfe = Frontend.connect(f"{tmp}/gpu.sock")
        display = GpuDisplay(keep_images=False)
        gpu = open_gpu(gfe, display)
        w, h = 640, 480
        gpu.make_resource(1, W.VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, w, h, rnd.randbytes(w * h * 4))
        gpu.set_scanout(0, 1, 0, 0, w, h)
        ife = Frontend.connect(f"{tmp}/in.sock")
        ife.initialize()
        evq, _ = ife.start([64, 64])
        for _ in range(64):
            evq.add([], [8])
        evq.kick()
        ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ctl.connect(f"{tmp}/in.ctl")
        hostile = [
            hdr(W.VIRTIO_GPU_CMD_RESOURCE_CREATE_2D) + W.RESOURCE_CREATE_2D.pack(9, 1, 1 << 15, 1 << 15),
            hdr(W.VIRTIO_GPU_CMD_RESOURCE_UNREF) + W.RESOURCE_UNREF.pack(77, 0),
            hdr(0x0207) + bytes(16),
        ]
        start = time.monotonic()
        next_sample = start
        baseline: dict[str, tuple[int, int]] = {}
        last: dict[str, tuple[int, int]] = {}
        warmup = min(60.0, args.seconds / 4)
        n = 0
        while time.monotonic() - start < args.seconds:
            n += 1
            for _ in range(8):
                rq.add([], [rnd.choice([16, 256, 4096])])
            rq.kick()
            gpu.batch([gpu.transfer_cmd(1, 0, 0, w, h, 0), gpu.flush_cmd(1, 0, 0, w, h), *hostile])
            x, y = rnd.randrange(32768), rnd.randrange(32768)
            ctl.sendall(json.dumps({"events": [[3, 0, x], [3, 1, y]], "syn": True}).encode() + b"\n")
            rq.wait_used(8)
            for _ in evq.poll_used():
                evq.add([], [8])
            evq.kick()
            now = time.monotonic()
            if now >= next_sample:
                next_sample += 10
                last = {k: usage(b.proc.pid) for k, b in bes.items()}
                if not baseline and now - start >= warmup:
                    baseline = dict(last)
                line = "  ".join(f"{k}: {r / 1024:.1f} MiB {f} fds" for k, (r, f) in last.items())
                print(f"[{now - start:6.0f}s] rounds {n:7d}  {line}", flush=True)
        last = {k: usage(b.proc.pid) for k, b in bes.items()}
        baseline = baseline or last
        bad = [k for k in bes if last[k][0] - baseline[k][0] > 4096 or last[k][1] != baseline[k][1]]
        for k in bes:
            print(f"{k}: RSS {baseline[k][0]} -> {last[k][0]} KiB, fds {baseline[k][1]} -> {last[k][1]}")
        alive = all(b.proc.poll() is None for b in bes.values())
        print("soak:", "flat" if not bad and alive else f"GREW or died: {bad}")
        return 0 if not bad and alive else 1
    finally:
        for b in bes.values():
            b.stop()


if __name__ == "__main__":
    raise SystemExit(main())
