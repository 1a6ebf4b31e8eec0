"""Split virtqueues in pure Python: the reference the Cython ``_ring`` module is checked against.

Both modules expose the same API and behave identically, error messages included; the
property tests in ``tests/test_ring_props.py`` drive them side by side over random and
hostile rings. Ring memory is little-endian (VIRTIO_F_VERSION_1).
"""

from __future__ import annotations

import sys

from .errors import GuestMemoryError, RingError
from .memory import GuestMemory
from .virtio import (
    AVAIL_FLAGS,
    AVAIL_IDX,
    AVAIL_RING,
    USED_IDX,
    USED_RING_OFFSET,
    VIRTQUEUE_MAX_SIZE,
    VRING_AVAIL_F_NO_INTERRUPT,
    VRING_DESC,
    VRING_DESC_F_INDIRECT,
    VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
    VRING_DESC_SIZE,
    VRING_USED_ELEM,
    VRING_USED_ELEM_SIZE,
    avail_event_word,
    ring_sizes,
    used_event_word,
)

#: typing.TYPE_CHECKING without importing typing.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

if sys.byteorder != "little":  # pragma: no cover
    raise ImportError("vhostsuite supports little-endian hosts only (virtio 1.x rings are little-endian)")

_U32_MAX = 0xFFFFFFFF


def vring_need_event(event_idx: int, new: int, old: int) -> bool:
    """The virtio spec's vring_need_event() on free-running 16-bit indices."""
    return ((new - event_idx - 1) & 0xFFFF) < ((new - old) & 0xFFFF)


class Chain:
    """One descriptor chain: the device-readable buffers, then the device-writable ones.

    The buffers are views of guest memory; ``read`` gathers and ``write`` scatters
    without intermediate copies.
    """

    __slots__ = ("head", "_readable", "_writable", "read_size", "write_size", "written")

    def __init__(self, head: int, readable: list[memoryview], writable: list[memoryview]) -> None:
        self.head = head
        self._readable = readable
        self._writable = writable
        self.read_size = sum(len(v) for v in readable)
        self.write_size = sum(len(v) for v in writable)
        #: High-water mark of bytes written; the used length pushed by default.
        self.written = 0

    def readable(self) -> list[memoryview]:
        return list(self._readable)

    def writable(self) -> list[memoryview]:
        return list(self._writable)

    def read(self, size: int = -1, offset: int = 0) -> bytes:
        """Up to *size* bytes (all with -1) of the readable part, from *offset*."""
        if offset < 0:
            raise ValueError("negative offset")
        end = self.read_size if size < 0 else min(self.read_size, offset + size)
        out = bytearray()
        pos = 0
        for v in self._readable:
            n = len(v)
            if pos + n > offset and pos < end:
                out += v[max(0, offset - pos) : min(n, end - pos)]
            pos += n
            if pos >= end:
                break
        return bytes(out)

    def read_into(self, buf, offset: int = 0) -> int:  # noqa: ANN001 - any writable buffer
        """Gather into *buf* from *offset* of the readable part; returns bytes copied."""
        if offset < 0:
            raise ValueError("negative offset")
        dst = memoryview(buf).cast("B")
        want = len(dst)
        pos = 0
        done = 0
        for v in self._readable:
            n = len(v)
            if pos + n > offset and done < want:
                start = max(0, offset - pos)
                take = min(n - start, want - done)
                dst[done : done + take] = v[start : start + take]
                done += take
            pos += n
            if done >= want:
                break
        return done

    def write(self, data, offset: int = 0) -> int:  # noqa: ANN001 - any bytes-like
        """Scatter *data* into the writable part at *offset*; returns bytes written (clipped)."""
        if offset < 0:
            raise ValueError("negative offset")
        src = memoryview(data).cast("B")
        total = len(src)
        pos = 0
        done = 0
        for v in self._writable:
            n = len(v)
            if pos + n > offset + done and done < total:
                start = offset + done - pos
                take = min(n - start, total - done)
                v[start : start + take] = src[done : done + take]
                done += take
            pos += n
            if done >= total:
                break
        if done:
            self.written = max(self.written, offset + done)
        return done


class Virtqueue:
    """A split virtqueue in guest memory, as seen by the device."""

    def __init__(
        self,
        mem: GuestMemory,
        num: int,
        desc: memoryview,
        avail: memoryview,
        used: memoryview,
        last_avail_idx: int = 0,
        event_idx: bool = False,
    ) -> None:
        if not 1 <= num <= VIRTQUEUE_MAX_SIZE or num & (num - 1):
            raise RingError(f"queue size {num} is not a power of 2 in 1..{VIRTQUEUE_MAX_SIZE}")
        dsize, asize, usize = ring_sizes(num)
        if len(desc) < dsize or len(avail) < asize or len(used) < usize:
            raise RingError("ring areas are smaller than the queue size needs")
        self.mem = mem
        self.num = num
        self._desc = desc
        self._avail = avail
        self._used = used
        # The index and flag words the driver reads or writes concurrently are accessed as
        # native u16 items: one load or store each. struct.pack_into would zero the field
        # first and write it byte by byte, so the driver could see a used index of 0.
        self._avail16 = avail[:asize].cast("H")
        self._used16 = used[:usize].cast("H")
        self.event_idx = event_idx
        self.last_avail_idx = last_avail_idx & 0xFFFF
        #: Re-read from guest memory: it is what the driver saw last (e.g. across a reboot).
        self.used_idx = self._used16[USED_IDX]
        self._signalled_used = self.used_idx
        self._signalled_valid = False
        #: serve() stops after the chain whose handler set it (that chain is pushed).
        self.paused = False
        #: serve() stops after the chain whose handler set it (that chain is not pushed).
        self.detached = False

    # -- avail side ---------------------------------------------------------
    def avail_idx(self) -> int:
        return self._avail16[AVAIL_IDX]

    def pending(self) -> int:
        """Chains the driver has made available that we have not popped."""
        n = (self.avail_idx() - self.last_avail_idx) & 0xFFFF
        if n > self.num:
            raise RingError(
                f"avail index {self.avail_idx()} is {n} ahead of {self.last_avail_idx} (queue size {self.num})"
            )
        return n

    def pop(self) -> Chain | None:
        """The next available chain, or None. Raises RingError for a malformed ring."""
        if self.pending() == 0:
            if self.event_idx:
                # Ask for a kick at the next buffer, then look again to close the race.
                self._used16[avail_event_word(self.num)] = self.last_avail_idx
                if self.pending() == 0:
                    return None
            else:
                return None
        head = self._avail16[AVAIL_RING + self.last_avail_idx % self.num]
        if head >= self.num:
            raise RingError(f"avail ring entry {head} is outside the queue (size {self.num})")
        chain = self._walk(head)
        self.last_avail_idx = (self.last_avail_idx + 1) & 0xFFFF
        return chain

    def pop_batch(self, max_chains: int, max_bytes: int) -> list[Chain]:
        """What pop() repeated gives, up to *max_chains* chains or until their buffers add up
        to *max_bytes* (at least one chain if any is available), as a list. Stopped by the
        budget with nothing left, it asks for the next kick as pop() does on an empty ring."""
        out: list[Chain] = []
        nbytes = 0
        while len(out) < max_chains and (nbytes < max_bytes or not out):
            chain = self.pop()
            if chain is None:
                return out
            out.append(chain)
            nbytes += chain.read_size + chain.write_size
        if self.event_idx and self.pending() == 0:
            self._used16[avail_event_word(self.num)] = self.last_avail_idx
        return out

    def serve(self, handler: Callable[[Chain], object], max_chains: int, max_bytes: int
              ) -> tuple[int, bool, Chain | None, object]:  # fmt: skip
        """Pop chains and answer them with *handler*, within the budget of :meth:`pop_batch`.

        Each chain goes to ``handler(chain)``; a bytes-like answer is written at the start of
        its writable part, then the chain is pushed (None: pushed with what the handler wrote).
        It stops at an empty ring, at the budget, when :attr:`paused` is set (after pushing the
        chain whose handler set it), when :attr:`detached` is set (that chain is not pushed),
        or at an answer that is neither None nor bytes-like, which is returned with its chain,
        unpushed (the core's PENDING). Returns ``(chains handled, whether any was pushed, that
        chain or None, its answer or None)``. An exception from *handler* propagates; its chain
        was popped and not pushed.
        """
        handled = nbytes = 0
        pushed = False
        while handled < max_chains and (nbytes < max_bytes or not handled):
            if self.paused or self.detached:
                return handled, pushed, None, None
            chain = self.pop()
            if chain is None:
                return handled, pushed, None, None
            handled += 1
            nbytes += chain.read_size + chain.write_size
            response = handler(chain)
            if self.detached:  # the ring went while the handler ran: nothing goes to it
                return handled, pushed, None, None
            if response is not None:
                try:
                    data = memoryview(response)  # any bytes-like object, as the compiled ring takes
                except TypeError:
                    return handled, pushed, chain, response
                chain.write(data)
            self.push_head(chain.head, chain.written)
            pushed = True
        if self.event_idx and self.pending() == 0:
            self._used16[avail_event_word(self.num)] = self.last_avail_idx
        return handled, pushed, None, None

    def unpop(self, n: int) -> None:
        """Give back the *n* chains popped last (none of them pushed): they are popped again."""
        if n < 0 or n > 0xFFFF:
            raise ValueError(f"can't give back {n} chains")
        self.last_avail_idx = (self.last_avail_idx - n) & 0xFFFF

    def _walk(self, head: int) -> Chain:
        mem = self.mem
        table = self._desc
        limit = self.num
        indirect = False
        readable: list[memoryview] = []
        writable: list[memoryview] = []
        count = 0
        total = 0
        i = head
        while True:
            if count >= limit:
                raise RingError(f"descriptor chain from {head} is longer than its table ({limit}): a loop?")
            count += 1
            addr, length, flags, nxt = VRING_DESC.unpack_from(table, i * VRING_DESC_SIZE)
            if flags & VRING_DESC_F_INDIRECT:
                if indirect:
                    raise RingError(f"nested indirect table in chain {head}")
                if flags & VRING_DESC_F_NEXT:
                    raise RingError(f"indirect descriptor with NEXT in chain {head}")
                if length == 0 or length % VRING_DESC_SIZE:
                    raise RingError(f"indirect table of {length} bytes in chain {head}")
                if length // VRING_DESC_SIZE > VIRTQUEUE_MAX_SIZE:
                    raise RingError(f"indirect table of {length // VRING_DESC_SIZE} entries in chain {head}")
                try:
                    table = mem.gpa_view(addr, length)
                except GuestMemoryError:
                    raise RingError(
                        f"indirect table {addr:#x}+{length:#x} outside guest memory in chain {head}"
                    ) from None
                limit = length // VRING_DESC_SIZE
                indirect = True
                count = 0
                i = 0
                continue
            total += length
            if total > _U32_MAX:
                raise RingError(f"chain {head} is longer than 4 GiB")
            try:
                views = mem.gpa_views(addr, length) if length else []
            except GuestMemoryError:
                raise RingError(f"buffer {addr:#x}+{length:#x} outside guest memory in chain {head}") from None
            if flags & VRING_DESC_F_WRITE:
                writable.extend(views)
            elif writable:
                raise RingError(f"readable descriptor after a writable one in chain {head}")
            else:
                readable.extend(views)
            if not flags & VRING_DESC_F_NEXT:
                break
            if nxt >= limit:
                raise RingError(f"next index {nxt} outside the table ({limit}) in chain {head}")
            i = nxt
        return Chain(head, readable, writable)

    # -- used side ----------------------------------------------------------
    def push(self, chain: Chain, length: int | None = None) -> None:
        """Return *chain* to the driver with *length* bytes written (default: ``chain.written``)."""
        self.push_head(chain.head, chain.written if length is None else length)

    def push_head(self, head: int, length: int) -> None:
        slot = self.used_idx % self.num
        VRING_USED_ELEM.pack_into(self._used, USED_RING_OFFSET + VRING_USED_ELEM_SIZE * slot, head, length & _U32_MAX)
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        self._used16[USED_IDX] = self.used_idx

    def request_kick(self) -> None:
        """Ask for a kick when the driver next makes buffers available, even if some already are.

        With EVENT_IDX this sets avail_event to the current avail index (re-read until it is
        stable, at most 8 times, so a driver that added buffers meanwhile is not missed); without
        it the driver kicks on every addition anyway.
        """
        if not self.event_idx:
            return
        for _ in range(8):  # bounded: a guest that keeps moving its index must not spin us
            idx = self._avail16[AVAIL_IDX]
            self._used16[avail_event_word(self.num)] = idx
            if self._avail16[AVAIL_IDX] == idx:
                return

    def need_notify(self) -> bool:
        """Whether the driver wants an interrupt for what was pushed since the last call."""
        new = self.used_idx
        old = self._signalled_used
        valid = self._signalled_valid
        self._signalled_used = new
        self._signalled_valid = True
        if new == old:
            return False
        if self.event_idx:
            used_event = self._avail16[used_event_word(self.num)]
            return not valid or vring_need_event(used_event, new, old)
        return not (self._avail16[AVAIL_FLAGS] & VRING_AVAIL_F_NO_INTERRUPT)
