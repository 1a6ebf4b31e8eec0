"""Property tests: the Cython ring and the pure-Python reference agree on every ring.

Each example builds a random queue in guest memory (well-formed chains, then random damage:
garbage descriptors, indirect tables, avail entries and indices), copies the memory, and runs
the same operations on both implementations, one per copy. Everything observable must agree:
chains, exceptions (type and message), what was written, and every byte of guest memory.
"""

from __future__ import annotations

import os
import random
import re

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from vhostsuite.core import ring
from vhostsuite.core.errors import RingError
from vhostsuite.core.virtio import VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE
from vhostsuite.testing.ringutil import GuestRing

if ring.NO_EXTENSIONS:
    pytest.skip("VHOSTSUITE_NO_EXTENSIONS is set: nothing to compare", allow_module_level=True)
_ring = pytest.importorskip("vhostsuite.core._ring", reason="vhostsuite.core._ring is not built")

NEXT, WRITE, INDIRECT = VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_DESC_F_INDIRECT
SETTINGS = settings(
    max_examples=int(os.environ.get("RING_PROP_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

U16 = st.integers(0, 0xFFFF)
U32 = st.integers(0, 0xFFFFFFFF)
U64 = st.integers(0, (1 << 64) - 1)

LAYOUTS = [
    [(0x10000, 0x8000)],
    [(0x10000, 0x8000), (0x18000, 0x2000)],  # adjacent: buffers may span both
    [(0x10000, 0x8000), (0x20000, 0x2000)],  # a gap
    [(0x10000, 0x8000), ((1 << 64) - 0x1000, 0x1000)],  # memory at the top of the address space
]


def outcome(fn, *args):  # noqa: ANN001, ANN201
    """('ok', value), ('ring error', message), or ('misuse',) for any other exception.

    The contract between the twins: the same results and the same RingError messages. An
    argument the caller got wrong raises in both, each in its own words.
    """
    try:
        return ("ok", fn(*args))
    except RingError as e:
        return ("ring error", str(e))
    except Exception:  # noqa: BLE001 - which one is each twin's own business
        return ("misuse",)


def summary(chain) -> tuple:  # noqa: ANN001
    if chain is None:
        return (None,)
    return (
        chain.head,
        chain.read_size,
        chain.write_size,
        chain.written,
        chain.read(),
        [bytes(v) for v in chain.readable()],
        [len(v) for v in chain.writable()],
    )


def draw_addr(data: st.DataObject, g: GuestRing) -> int:
    """A guest address: mostly inside memory, often near region edges, sometimes anywhere."""
    kind = data.draw(st.integers(0, 9))
    if kind <= 5:
        return data.draw(st.integers(g.data_gpa, g.data_end - 1))
    if kind <= 7:
        gpa, size = data.draw(st.sampled_from(g.region_specs))
        edge = data.draw(st.sampled_from([gpa, gpa + size]))
        return max(0, min((1 << 64) - 1, edge + data.draw(st.integers(-64, 64))))
    return data.draw(U64)


def draw_len(data: st.DataObject) -> int:
    kind = data.draw(st.integers(0, 9))
    if kind <= 6:
        return data.draw(st.integers(0, 96))
    if kind <= 8:
        return data.draw(st.sampled_from([0x1000, 0x2000, 0x8000, 0xFFFFFFFF, 0x80000000, 16 * 32769]))
    return data.draw(U32)


def draw_desc(data: st.DataObject, g: GuestRing, limit: int, tables: list[tuple[int, int]]) -> tuple:
    """A random descriptor (addr, len, flags, next) for a table of *limit* entries."""
    kind = data.draw(st.integers(0, 9))
    if kind <= 5:
        flags = data.draw(st.sampled_from([0, NEXT, WRITE, WRITE | NEXT, NEXT, WRITE | NEXT]))
        nxt = data.draw(
            st.integers(0, max(0, limit - 1)) if data.draw(st.integers(0, 9)) else st.integers(0, limit + 2)
        )
        return (draw_addr(data, g), data.draw(st.integers(0, 96)), flags, nxt)
    if kind <= 7 and tables:
        addr, n = data.draw(st.sampled_from(tables))
        if data.draw(st.integers(0, 4)) == 0:
            addr = draw_addr(data, g)
        length = 16 * n if data.draw(st.integers(0, 4)) else draw_len(data)
        flags = INDIRECT | data.draw(st.sampled_from([0, 0, 0, NEXT, WRITE, INDIRECT]))
        return (addr, length, flags, data.draw(st.integers(0, limit + 1)))
    return (draw_addr(data, g), draw_len(data), data.draw(U16), data.draw(U16))


def build(data: st.DataObject) -> tuple[GuestRing, dict]:
    num = data.draw(st.sampled_from([1, 2, 4, 8, 16, 32]), label="num")
    g = GuestRing(num, data.draw(st.sampled_from(LAYOUTS), label="layout"))
    rnd = random.Random(data.draw(st.integers(0, 1 << 32), label="seed"))
    for buf in g.buffers:  # random contents; the rings' own words are set below
        buf[:] = rnd.randbytes(len(buf))
    if data.draw(st.booleans(), label="zero desc table"):
        g.write(g.desc_gpa, bytes(16 * num))

    # Well-formed chains first.
    heads = []
    while g._next_desc < num and data.draw(st.integers(0, 3)):
        indirect = data.draw(st.booleans())
        nr = data.draw(st.integers(0, 3))
        nw = data.draw(st.integers(0, 3))
        if not indirect and nr + nw > num - g._next_desc:
            break
        if nr + nw == 0:
            nr = 1
            if not indirect and g._next_desc >= num:
                break
        spec = g.add_chain(
            [rnd.randbytes(rnd.randrange(0, 200)) for _ in range(nr)],
            [rnd.randrange(0, 200) for _ in range(nw)],
            indirect=indirect,
            publish=False,
        )
        heads.append(spec.head)

    # Indirect tables of random descriptors.
    tables = []
    for _ in range(data.draw(st.integers(0, 2))):
        n = data.draw(st.integers(1, 6))
        tables.append((g.alloc(16 * n, 16), n))
    for addr, n in tables:
        for i in range(n):
            g.set_desc(i, *draw_desc(data, g, n, tables), table=addr)

    # Damage: overwrite some descriptors of the main table.
    for _ in range(data.draw(st.integers(0, 3))):
        i = data.draw(st.integers(0, num - 1))
        g.set_desc(i, *draw_desc(data, g, num, tables))

    # The avail ring: entries and index.
    last = data.draw(st.one_of(st.integers(0, 3), st.integers(0xFFFC, 0xFFFF), U16), label="last_avail")
    for slot in range(num):
        kind = data.draw(st.integers(0, 9))
        head = data.draw(st.sampled_from(heads) if heads and kind < 6 else st.integers(0, num) if kind < 9 else U16)
        g.set_avail_entry(slot, head)
    for k, head in enumerate(heads):  # the chains we built, in order from last_avail_idx
        if data.draw(st.integers(0, 4)):
            g.set_avail_entry((last + k) % num, head)
    kind = data.draw(st.integers(0, 9))
    aheads = [st.integers(1, num)] * 7 + [st.just(0), st.integers(num + 1, num + 2), U16]
    ahead = data.draw(aheads[kind], label="ahead")
    g.set_avail_idx(last + ahead)
    g.set_avail_flags(data.draw(st.sampled_from([0, 1, 0xFFFF, 2])))
    g.set_used_event(data.draw(st.one_of(st.integers(0, 4), U16)))
    g.set_used_idx(data.draw(st.one_of(st.integers(0, 3), U16)))
    g.write_u16(g.used_gpa + 4 + 8 * num, data.draw(U16))  # avail_event
    kwargs = {"last_avail_idx": last, "event_idx": data.draw(st.booleans(), label="event_idx")}
    return g, kwargs


def construct(cls: type, g: GuestRing, kwargs: dict):  # noqa: ANN201
    return cls(g.mem, g.num, *g.views(), **kwargs)


@SETTINGS
@given(st.data())
def test_same_outcomes(data: st.DataObject) -> None:
    gp, kwargs = build(data)
    g2 = gp.clone()
    assert g2.snapshot() == gp.snapshot()
    vp = construct(ring.VirtqueuePy, gp, kwargs)
    vc = construct(_ring.Virtqueue, g2, kwargs)
    assert (vc.num, vc.used_idx, vc.last_avail_idx) == (vp.num, vp.used_idx, vp.last_avail_idx)
    assert outcome(vc.pending) == outcome(vp.pending)

    for _step in range(gp.num + 3):
        rp, rc = outcome(vp.pop), outcome(vc.pop)
        if rp[0] != "ok" or rc[0] != "ok":
            event(f"pop: {rp[0]} {re.sub(r'0x[0-9a-f]+|[0-9]+', 'N', rp[-1] if len(rp) > 1 else '')}")
            assert rc == rp
            break
        event("pop -> None" if rp[1] is None else "pop -> chain")
        cp, cc = rp[1], rc[1]
        assert summary(cc) == summary(cp)
        if cp is None:
            break
        # Scatter a pattern, gather at an offset, push, ask about notifying.
        off = data.draw(st.integers(0, cp.write_size + 4))
        payload = bytes(range(256)) * (1 + data.draw(st.integers(0, 300)) // 256)
        payload = payload[: data.draw(st.integers(0, len(payload)))]
        assert outcome(cc.write, payload, off) == outcome(cp.write, payload, off)
        assert cc.written == cp.written
        roff = data.draw(st.integers(-2, cp.read_size + 2))
        bp = bytearray(data.draw(st.integers(0, 300)))
        bc = bytearray(len(bp))
        assert outcome(cc.read_into, bc, roff) == outcome(cp.read_into, bp, roff)
        assert bc == bp
        size = data.draw(st.integers(-1, cp.read_size + 2))
        assert outcome(cc.read, size, max(roff, 0)) == outcome(cp.read, size, max(roff, 0))
        length = data.draw(st.one_of(st.none(), st.integers(-1, 1 << 33)))
        assert outcome(vc.push, cc, length) == outcome(vp.push, cp, length)
        if data.draw(st.integers(0, 3)) == 0:  # the driver moves used_event / flags meanwhile
            ev = data.draw(U16)
            gp.set_used_event(ev)
            g2.set_used_event(ev)
        assert outcome(vc.need_notify) == outcome(vp.need_notify)
        if data.draw(st.integers(0, 3)) == 0:  # the device pauses and asks for the next kick
            assert outcome(vc.request_kick) == outcome(vp.request_kick)
        assert (vc.used_idx, vc.last_avail_idx) == (vp.used_idx, vp.last_avail_idx)

    assert outcome(vc.pending) == outcome(vp.pending)
    assert outcome(vc.need_notify) == outcome(vp.need_notify)
    assert (vc.used_idx, vc.last_avail_idx) == (vp.used_idx, vp.last_avail_idx)
    assert g2.snapshot() == gp.snapshot()


@SETTINGS
@given(st.data())
def test_same_gather_scatter(data: st.DataObject) -> None:
    """Random chains of many small pieces (across a region boundary) and random offsets/sizes."""
    gp = GuestRing(16, [(0x10000, 0x4000), (0x14000, 0x1000)])
    rnd = random.Random(data.draw(st.integers(0, 1 << 32)))
    pieces = data.draw(st.lists(st.tuples(st.integers(0, 0x4FFF), st.integers(0, 300), st.booleans()), max_size=12))
    pieces.sort(key=lambda p: p[2])  # readable first
    for i, (off, length, w) in enumerate(pieces):
        length = min(length, 0x5000 - off)
        gp.set_desc(i, 0x10000 + off, length, (WRITE if w else 0) | (NEXT if i < len(pieces) - 1 else 0), i + 1)
    if not pieces:
        gp.set_desc(0, 0x10000, 0, 0, 0)
    gp.buffers[0][gp.data_gpa - 0x10000 :] = rnd.randbytes(0x4000 - (gp.data_gpa - 0x10000))
    gp.publish(0)
    g2 = gp.clone()
    cp = construct(ring.VirtqueuePy, gp, {}).pop()
    cc = construct(_ring.Virtqueue, g2, {}).pop()
    assert summary(cc) == summary(cp)
    for _ in range(4):
        size = data.draw(st.integers(-3, cp.read_size + 3))
        off = data.draw(st.integers(-3, cp.read_size + 3))
        assert outcome(cc.read, size, off) == outcome(cp.read, size, off)
        n = data.draw(st.integers(0, cp.read_size + 3))
        bp, bc = bytearray(n), bytearray(n)
        assert outcome(cc.read_into, bc, off) == outcome(cp.read_into, bp, off)
        assert bc == bp
        woff = data.draw(st.integers(-1, cp.write_size + 3))
        payload = rnd.randbytes(data.draw(st.integers(0, cp.write_size + 3)))
        assert outcome(cc.write, payload, woff) == outcome(cp.write, payload, woff)
        assert cc.written == cp.written
        assert g2.snapshot() == gp.snapshot()


@settings(max_examples=500, deadline=None)
@given(st.integers(-(1 << 70), 1 << 70), st.integers(-(1 << 70), 1 << 70), st.integers(-(1 << 70), 1 << 70))
def test_same_vring_need_event(e: int, new: int, old: int) -> None:
    assert _ring.vring_need_event(e, new, old) is ring.vring_need_event(e, new, old)
    assert _ring.vring_need_event(e & 0xFFFF, new & 0xFFFF, old & 0xFFFF) is ring.vring_need_event(e, new, old)


@SETTINGS
@given(st.data())
def test_same_batches(data: st.DataObject) -> None:
    """pop_batch on random and hostile rings: both twins agree, and with pop() repeated."""
    gp, kwargs = build(data)
    g2, g3 = gp.clone(), gp.clone()
    vp = construct(ring.VirtqueuePy, gp, kwargs)
    vc = construct(_ring.Virtqueue, g2, kwargs)
    vr = construct(ring.VirtqueuePy, g3, kwargs)  # the reference: pop() one by one
    max_chains = data.draw(st.integers(1, gp.num + 2))
    max_bytes = data.draw(st.integers(0, 1 << 12))
    bp, bc = outcome(vp.pop_batch, max_chains, max_bytes), outcome(vc.pop_batch, max_chains, max_bytes)
    if bp[0] != "ok" or bc[0] != "ok":
        assert bc == bp
        return
    assert [summary(c) for c in bc[1]] == [summary(c) for c in bp[1]]
    one_by_one = []
    nbytes = 0
    while len(one_by_one) < max_chains and (nbytes < max_bytes or not one_by_one):
        chain = vr.pop()
        if chain is None:
            break
        one_by_one.append(chain)
        nbytes += chain.read_size + chain.write_size
    else:
        if vr.pending() == 0:  # stopped by the budget on an emptied ring: the kick is asked for
            assert vr.pop() is None
    assert [summary(c) for c in bp[1]] == [summary(c) for c in one_by_one]
    assert vc.last_avail_idx == vp.last_avail_idx == vr.last_avail_idx
    assert g2.snapshot() == gp.snapshot() == g3.snapshot()


@SETTINGS
@given(st.data())
def test_same_serve(data: st.DataObject) -> None:
    """serve on random and hostile rings: both twins hand the handler the same chains, write
    and push the same answers, stop at the same one (a kept chain, a pause) and raise the same
    RingError; guest memory ends the same."""
    gp, kwargs = build(data)
    g2 = gp.clone()
    vp = construct(ring.VirtqueuePy, gp, kwargs)
    vc = construct(_ring.Virtqueue, g2, kwargs)
    keep = object()
    pause_at = data.draw(st.integers(0, gp.num + 2))

    def handler_for(vq):  # noqa: ANN001, ANN202
        seen: list[tuple] = []

        def handler(chain):  # noqa: ANN001, ANN202
            seen.append(summary(chain))
            if len(seen) == pause_at:
                vq.paused = True
            kind = chain.head % 4
            if kind == 0:
                return chain.read(64)[::-1]  # bytes: written at the start of the writable part
            if kind == 1:
                chain.write(b"by hand", 1)
                return None
            if kind == 2:
                return bytearray(b"x" * (chain.head % 7))
            return keep  # not bytes-like: handed back unpushed

        return handler, seen

    hp, seen_p = handler_for(vp)
    hc, seen_c = handler_for(vc)
    max_chains = data.draw(st.integers(1, gp.num + 2))
    max_bytes = data.draw(st.integers(0, 1 << 12))
    rp, rc = outcome(vp.serve, hp, max_chains, max_bytes), outcome(vc.serve, hc, max_chains, max_bytes)
    assert seen_c == seen_p
    if rp[0] == "ok" and rc[0] == "ok":
        (np_, pp, cp, ap), (nc, pc, cc, ac) = rp[1], rc[1]
        assert (nc, pc, summary(cc), ac is keep) == (np_, pp, summary(cp), ap is keep)
    else:
        assert rc == rp
    assert (vc.used_idx, vc.last_avail_idx) == (vp.used_idx, vp.last_avail_idx)
    assert g2.snapshot() == gp.snapshot()
