"""Ring benchmarks: the Cython ring against the pure-Python reference and against memcpy.

Run: python -m pytest bench/bench_ring.py --benchmark-only -s

* ``chains-3desc``: descriptor chains per second through pop + gather (the readable 64 B request
  and 4 KiB payload) + scatter (a 24 B response) + push + need_notify, per implementation.
* ``gather-scatter-8MiB``: read_into / write of 8 MiB described as 2048 guest pages of 4 KiB
  (indirect tables, pages shuffled in guest memory) against one 8 MiB bytearray copy.
* ``test_ratios`` times both in this process (min of 5 repetitions) and prints the ratios the
  design aims at: Cython/pure-Python chains per second (>= 25x), gather/scatter throughput
  relative to memcpy (>= 90%).
"""

from __future__ import annotations

import random
import struct
import time

import pytest

from vhostsuite.core import ring
from vhostsuite.testing.ringutil import IMPLS, GuestRing

U16 = struct.Struct("<H")
REQ, PAYLOAD, RESP = 64, 4096, 24
CHAINS = 64  # per round
PAGE, PAGES = 4096, 2048  # 8 MiB

# -- (a) chains per second ------------------------------------------------------------------------


class ChainBench:
    """A 256-entry queue with 64 three-descriptor chains the guest offers again every round."""

    def __init__(self, cls: type) -> None:
        g = GuestRing(256, [(0x10000, 2 << 20)])
        self.g = g
        self.specs = []
        for k in range(CHAINS):
            req = bytes([k]) * REQ
            payload = bytes((k + i) & 0xFF for i in range(PAYLOAD))
            self.specs.append(g.add_chain([req, payload], [RESP], publish=False))
        for slot in range(256):  # every avail slot: the chains in order, so any window of 64 works
            g.set_avail_entry(slot, self.specs[slot % CHAINS].head)
        self.vq = g.queue(cls)
        self.avail = g.buffers[0]
        self.avail_off = g.avail_gpa + 2 - 0x10000
        self.idx = 0
        self.buf = bytearray(REQ + PAYLOAD)
        self.resp = bytes(range(RESP))

    def round(self) -> int:
        """The guest makes 64 chains available; the device serves them all."""
        self.idx = (self.idx + CHAINS) & 0xFFFF
        U16.pack_into(self.avail, self.avail_off, self.idx)
        vq, buf, resp = self.vq, self.buf, self.resp
        n = 0
        while (c := vq.pop()) is not None:
            c.read_into(buf)
            c.write(resp)
            vq.push(c)
            vq.need_notify()
            n += 1
        return n

    def check(self) -> None:
        """What the last round moved is right."""
        g = self.g
        assert g.used_idx() == self.idx == self.vq.used_idx
        for k in range(CHAINS):
            slot = (self.idx - CHAINS + k) % 256
            spec = self.specs[(self.idx - CHAINS + k) % CHAINS]
            assert g.used_elem(slot) == (spec.head, RESP)
            assert g.read(spec.writable[0][0], RESP) == self.resp
        k = (self.idx - 1) % CHAINS  # the last chain gathered
        assert self.buf == bytes([k]) * REQ + bytes((k + i) & 0xFF for i in range(PAYLOAD))


@pytest.mark.parametrize("impl", sorted(IMPLS))
def test_chains(benchmark, impl: str) -> None:  # noqa: ANN001
    bench = ChainBench(IMPLS[impl])
    benchmark.group = "chains-3desc (64 chains per round)"
    benchmark.extra_info["impl"] = impl
    assert benchmark(bench.round) == CHAINS
    bench.check()
    if benchmark.stats is not None:  # None with --benchmark-disable
        benchmark.extra_info["chains_per_s"] = round(CHAINS / benchmark.stats.stats.min)


# -- (b) gather / scatter of 8 MiB in 4 KiB pages -------------------------------------------------


class PageBench:
    """Two chains over the same 2048 shuffled guest pages: one readable, one writable."""

    def __init__(self, cls: type) -> None:
        g = GuestRing(4, [(0x10000, (PAGES + 64) * PAGE)])
        self.g = g
        pages = [g.alloc(PAGE, PAGE) for _ in range(PAGES)]
        random.Random(1).shuffle(pages)
        self.pages = pages
        self.src = bytearray(random.Random(2).randbytes(PAGES * PAGE))
        for k, gpa in enumerate(pages):
            g.write(gpa, self.src[k * PAGE : (k + 1) * PAGE])
        heads = []
        for flags in (0, 2):  # readable, then VRING_DESC_F_WRITE
            table = g.alloc(16 * PAGES, 16)
            g.write_table(table, [(gpa, PAGE, flags) for gpa in pages])
            (head,) = g.alloc_descs(1)
            g.set_desc(head, table, 16 * PAGES, 4)  # VRING_DESC_F_INDIRECT
            heads.append(head)
        g.publish(*heads)
        vq = g.queue(cls)
        self.rchain, self.wchain = vq.pop(), vq.pop()
        assert self.rchain.read_size == self.wchain.write_size == PAGES * PAGE
        self.dst = bytearray(PAGES * PAGE)
        self.wsrc = bytes(reversed(self.src))

    def gather(self) -> int:
        return self.rchain.read_into(self.dst)

    def scatter(self) -> int:
        return self.wchain.write(self.wsrc)

    def check_gather(self) -> None:
        """dst holds the pages in chain order (as they are now: scatter may have rewritten them)."""
        assert self.dst == b"".join(self.g.read(p, PAGE) for p in self.pages)

    def check_scatter(self) -> None:
        g, k = self.g, random.Random(3).randrange(PAGES)
        assert g.read(self.pages[k], PAGE) == self.wsrc[k * PAGE : (k + 1) * PAGE]
        assert g.read(self.pages[-1], PAGE) == self.wsrc[-PAGE:]
        assert b"".join(g.read(p, PAGE) for p in self.pages) == self.wsrc


class Memcpy:
    def __init__(self) -> None:
        self.src = bytearray(random.Random(2).randbytes(PAGES * PAGE))
        self.dst = bytearray(PAGES * PAGE)
        self.dview = memoryview(self.dst)

    def copy(self) -> int:
        self.dview[:] = self.src
        return len(self.src)


GATHER_IMPLS = sorted(IMPLS)


def _mib_per_s(benchmark) -> int | None:  # noqa: ANN001
    return None if benchmark.stats is None else round(PAGES * PAGE / benchmark.stats.stats.min / (1 << 20))


@pytest.mark.parametrize("impl", GATHER_IMPLS)
def test_gather_8mib(benchmark, impl: str) -> None:  # noqa: ANN001
    bench = PageBench(IMPLS[impl])
    benchmark.group = "gather-scatter-8MiB"
    benchmark.extra_info["impl"] = impl
    assert benchmark(bench.gather) == PAGES * PAGE
    bench.check_gather()
    benchmark.extra_info["MiB_per_s"] = _mib_per_s(benchmark)


@pytest.mark.parametrize("impl", GATHER_IMPLS)
def test_scatter_8mib(benchmark, impl: str) -> None:  # noqa: ANN001
    bench = PageBench(IMPLS[impl])
    benchmark.group = "gather-scatter-8MiB"
    benchmark.extra_info["impl"] = impl
    assert benchmark(bench.scatter) == PAGES * PAGE
    bench.check_scatter()
    benchmark.extra_info["MiB_per_s"] = _mib_per_s(benchmark)


def test_memcpy_8mib(benchmark) -> None:  # noqa: ANN001
    m = Memcpy()
    benchmark.group = "gather-scatter-8MiB"
    assert benchmark(m.copy) == PAGES * PAGE
    assert m.dst == m.src
    benchmark.extra_info["MiB_per_s"] = _mib_per_s(benchmark)


# -- the two ratios, timed side by side in this process -------------------------------------------


def best_of(fn, reps: int, runs: int = 5) -> float:  # noqa: ANN001
    """Seconds per call of *fn*: the best of *runs* timings of *reps* calls."""
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - t) / reps)
    return best


def measure_ratios() -> dict[str, float]:
    out: dict[str, float] = {}
    py, cy = ChainBench(ring.VirtqueuePy), ChainBench(IMPLS["cython"])
    py.round(), cy.round()  # warm up
    out["py_chains_per_s"] = CHAINS / best_of(py.round, 20)
    out["cython_chains_per_s"] = CHAINS / best_of(cy.round, 1000)
    py.check(), cy.check()
    out["chains_ratio"] = out["cython_chains_per_s"] / out["py_chains_per_s"]

    pages, mc = PageBench(IMPLS["cython"]), Memcpy()
    pages.gather(), pages.scatter(), mc.copy()
    size = PAGES * PAGE / (1 << 20)
    out["memcpy_MiB_per_s"] = size / best_of(mc.copy, 20)
    out["gather_MiB_per_s"] = size / best_of(pages.gather, 20)
    pages.check_gather()
    out["scatter_MiB_per_s"] = size / best_of(pages.scatter, 20)
    pages.check_scatter()
    out["gather_vs_memcpy"] = out["gather_MiB_per_s"] / out["memcpy_MiB_per_s"]
    out["scatter_vs_memcpy"] = out["scatter_MiB_per_s"] / out["memcpy_MiB_per_s"]
    return out


@pytest.mark.skipif("cython" not in IMPLS, reason="vhostsuite.core._ring is not built")
def test_ratios(benchmark, capsys) -> None:  # noqa: ANN001
    benchmark.group = "ratios (timed inside; see extra_info)"
    r = benchmark.pedantic(measure_ratios, rounds=1, iterations=1)
    benchmark.extra_info.update({k: round(v, 3) for k, v in r.items()})
    with capsys.disabled():
        print(
            "\n"
            f"ring ratios (same process, min of 5):\n"
            f"  chains/s   pure Python {r['py_chains_per_s']:>12,.0f}   Cython {r['cython_chains_per_s']:>12,.0f}"
            f"   ratio {r['chains_ratio']:.1f}x (target >= 25x)\n"
            f"  8 MiB      memcpy {r['memcpy_MiB_per_s']:,.0f} MiB/s   gather {r['gather_MiB_per_s']:,.0f} MiB/s"
            f" ({100 * r['gather_vs_memcpy']:.0f}%)   scatter {r['scatter_MiB_per_s']:,.0f} MiB/s"
            f" ({100 * r['scatter_vs_memcpy']:.0f}%)   (target >= 90%)"
        )
