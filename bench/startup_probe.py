"""Time to listening of a back-end program, standard library only: bench_startup.py imports it,
and copies it into an install root to run there under Debian's own python3.

As a script: ``startup_probe.py PROGRAMS_JSON ROUNDS`` prints, as JSON, the median of ROUNDS
starts to listening of each program ({name: argv}), of ROUNDS ``--print-capabilities`` runs of
each (``NAME --print-capabilities``), and of ``python3 -c pass``, in ms.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time


def start_listening(argv: list[str], path: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, float]:
    """Start ``argv --socket-path=path``; the process and the seconds until a connect succeeds."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([*argv, f"--socket-path={path}"], env=env, stderr=subprocess.DEVNULL)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        while True:
            try:
                s.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if proc.poll() is not None or time.perf_counter() - t0 > 10:
                    proc.kill()
                    proc.wait()
                    raise RuntimeError(f"{argv} did not listen") from None
                time.sleep(0.0005)
        return proc, time.perf_counter() - t0
    finally:
        s.close()


def listen_once(argv: list[str], path: str, env: dict[str, str] | None = None) -> float:
    """One start to listening, then the program is killed and its socket file removed."""
    proc, took = start_listening(argv, path, env)
    proc.kill()
    proc.wait()
    if os.path.exists(path):
        os.unlink(path)
    return took


def capabilities_once(argv: list[str]) -> float:
    """One ``--print-capabilities`` run of the program of *argv* (its other options dropped)."""
    t0 = time.perf_counter()
    subprocess.run([argv[0], "--print-capabilities"], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _median_ms(f, rounds: int) -> float:  # noqa: ANN001 - a timing function
    return round(1000 * sorted(f() for _ in range(rounds))[rounds // 2], 1)


def main() -> None:
    programs, rounds = json.loads(sys.argv[1]), int(sys.argv[2])
    path = "/tmp/startup-probe.sock"

    def interpreter() -> float:
        t0 = time.perf_counter()
        subprocess.run(["python3", "-c", "pass"], check=True)
        return time.perf_counter() - t0

    out = {"python3 -c pass": _median_ms(interpreter, rounds)}
    out.update({name: _median_ms(lambda argv=argv: listen_once(argv, path), rounds) for name, argv in programs.items()})
    for name, argv in programs.items():
        out[f"{name} --print-capabilities"] = _median_ms(lambda argv=argv: capabilities_once(argv), rounds)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
