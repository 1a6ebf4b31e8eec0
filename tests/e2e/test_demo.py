"""`make demo` (python -m vhostsuite.testing.demo): one guest, all three back-ends; the PNG shows the drawing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, child_env
from vhostsuite.testing.screen import differing_pixels, expected, load_rgb

pytestmark = pytest.mark.e2e


def test_demo_produces_screenshot_and_report(qemu, guest, tmp_path):  # noqa: ANN001 - fixtures provision
    out = tmp_path / "demo"
    r = subprocess.run([sys.executable, "-m", "vhostsuite.testing.demo", "--out", str(out)], cwd=ROOT, env=child_env(),
                       capture_output=True, text=True, timeout=900)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((out / "report.json").read_text())
    assert (out / "report.txt").read_text().count("demo:") >= 4
    assert report["rng"]["hw_random"].startswith("virtio_rng") and report["rng"]["two_4k_reads_differ"]
    assert report["input"]["keys_typed_in_guest"] == "vhostsuite"
    assert report["input"]["events_read_in_guest"] == report["input"]["events_sent"]
    assert any(m.get("names") == ["EV_LED", "LED_CAPSL"] for m in report["input"]["control_socket_heard"])
    assert report["backend_exit_status"] == {"gpu": 0, "input": 0, "rng": 0}
    shot = out / report["gpu"]["screenshot"]
    assert shot.suffix == ".png"
    w, h = (int(v) for v in report["gpu"]["mode"].split("x"))
    sw, sh, rgb = load_rgb(shot, "png")
    assert (sw, sh) == (w, h)
    assert differing_pixels(w, rgb, expected(w, h, tuple(report["gpu"]["dirty_rect"]))) == []
