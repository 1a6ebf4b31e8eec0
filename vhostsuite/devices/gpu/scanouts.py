"""Scanouts: which resource rectangle each of the 16 outputs shows, and what goes to the display.

A flush sends the resource's own rows when they are whole (or just one) and already x8r8g8b8
(B8G8R8A8/X8): no copy. Otherwise it copies the flushed rectangle once, converted to x8r8g8b8,
into a staging buffer: O(1) objects per UPDATE whatever the rectangle's shape. The staging buffer is at most
:func:`staging_limit` bytes, reserved in ``--max-hostmem``; a larger rectangle goes as several
UPDATEs of whole-row bands (or row pieces, for rows longer than the limit).
SCANOUT goes to a display before its first UPDATE, and again to every new display.
"""

from __future__ import annotations

from . import commands as K
from . import pixels
from . import wire as W
from .resources import Resource, Resources

#: typing.TYPE_CHECKING without importing typing (every start pays for it otherwise).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from .display import DisplayChannel


#: Bound once: every flush answers with it.
_OK_NODATA = K.OK_NODATA

#: The largest staging buffer: a 1080p frame's worth, so a full frame still goes as one UPDATE.
STAGING_MAX = 1920 * 1080 * 4


def staging_limit(max_hostmem: int) -> int:
    """The staging buffer's size (reserved in *max_hostmem*): at most an eighth of the cap."""
    return max(4, min(STAGING_MAX, max_hostmem // 8) & ~3)


class Scanout:
    __slots__ = ("resource_id", "x", "y", "width", "height", "announced")

    def __init__(self) -> None:
        self.resource_id = 0
        self.x = self.y = self.width = self.height = 0
        #: The display channel this scanout's SCANOUT message went to (None: not yet).
        self.announced: DisplayChannel | None = None


class Scanouts:
    def __init__(self, resources: Resources) -> None:
        self.resources = resources
        #: resources.by_id itself (the same dict), one lookup less per flush.
        self._by_id = resources.by_id
        self.outputs = [Scanout() for _ in range(W.VIRTIO_GPU_MAX_SCANOUTS)]
        #: Where SCANOUT and UPDATE go (None: QEMU has not given a display socket).
        self.display: DisplayChannel | None = None
        #: Converted pixels of the last UPDATE that needed a swizzle (reused while the display
        #: does not hold it), at most ``staging_max`` bytes, which are reserved in the cap.
        self.staging_max = staging_limit(resources.max_hostmem)
        resources.reserved = self.staging_max
        self._staging = bytearray()

    def reset(self) -> None:
        self.outputs = [Scanout() for _ in range(W.VIRTIO_GPU_MAX_SCANOUTS)]

    def disable(self, sid: int) -> None:
        sc = self.outputs[sid]
        res = self.resources.get(sc.resource_id)
        if res is not None:
            res.scanouts.discard(sid)
        was_on = sc.resource_id != 0
        self.outputs[sid] = Scanout()
        if was_on and self.display is not None:
            self.display.scanout(sid, 0, 0)

    def resource_destroyed(self, res: Resource) -> None:
        for sid in sorted(res.scanouts):
            self.disable(sid)

    def set_scanout(self, x: int, y: int, w: int, h: int, sid: int, rid: int) -> K.Reply:
        if sid >= W.VIRTIO_GPU_MAX_SCANOUTS:
            return K.ERR_INVALID_SCANOUT_ID
        if rid == 0:
            self.disable(sid)
            return K.OK_NODATA
        res = self.resources.get(rid)
        if res is None:
            return K.ERR_INVALID_RESOURCE_ID
        if w == 0 or h == 0 or not res.contains(x, y, w, h):
            return K.ERR_INVALID_PARAMETER
        if res.three_d:
            error = res.show(self.resources, x, y, w, h)
            if error is not None:
                return error
        old = self.resources.get(self.outputs[sid].resource_id)
        if old is not None:
            old.scanouts.discard(sid)
        sc = self.outputs[sid]
        sc.resource_id, sc.x, sc.y, sc.width, sc.height = rid, x, y, w, h
        res.scanouts.add(sid)
        sc.announced = None
        self._announce(sid, sc)
        return K.OK_NODATA

    def flush(self, x: int, y: int, w: int, h: int, rid: int, padding: int = 0) -> K.Reply:
        res = self._by_id.get(rid)
        if res is None:
            return K.ERR_INVALID_RESOURCE_ID
        if x + w > res.width or y + h > res.height:
            return K.ERR_INVALID_PARAMETER
        shown = res.scanouts
        if shown and self.display is not None:
            if res.three_d:
                res.show(self.resources, x, y, w, h)
            for sid in shown if len(shown) == 1 else sorted(shown):
                sc = self.outputs[sid]
                # the flushed rectangle within the scanout's (conditionals: min/max cost 4x)
                sx, sy = sc.x, sc.y
                x0 = x if x > sx else sx
                y0 = y if y > sy else sy
                x1, sx1 = x + w, sx + sc.width
                y1, sy1 = y + h, sy + sc.height
                x1 = x1 if x1 < sx1 else sx1
                y1 = y1 if y1 < sy1 else sy1
                if x1 > x0 and y1 > y0:
                    self._update(sid, sc, res, x0, y0, x1 - x0, y1 - y0)
        return _OK_NODATA

    def show_all(self) -> None:
        """A new display: send it what every scanout shows."""
        for sid, sc in enumerate(self.outputs):
            res = self.resources.get(sc.resource_id) if sc.resource_id else None
            if res is not None and sc.announced is not self.display:
                if res.three_d:
                    res.show(self.resources, sc.x, sc.y, sc.width, sc.height)
                self._update(sid, sc, res, sc.x, sc.y, sc.width, sc.height)

    def _announce(self, sid: int, sc: Scanout) -> bool:
        d = self.display
        if d is None or d.closed:
            return False
        if sc.announced is not d:
            if not d.scanout(sid, sc.width, sc.height):
                return False
            sc.announced = d
        return True

    def _update(self, sid: int, sc: Scanout, res: Resource, x: int, y: int, w: int, h: int) -> None:
        """Send UPDATE for the resource rectangle (x, y, w, h), which lies inside the scanout."""
        if sc.announced is not self.display and not self._announce(sid, sc):  # a frame less per flush
            return
        # The channel may close while sending (and self.display become None): keep this one.
        display = self.display
        stride = res.stride
        start = y * stride + x * 4
        if res.swizzle == W.SWIZZLE_NONE and (w == res.width or h == 1):
            # already x8r8g8b8 and whole rows (or one row): the resource's own memory, no copy
            pix = res.view[start : start + (stride * h if h > 1 else w * 4)]
            display.update(sid, x - sc.x, y - sc.y, w, h, pix, res.shared)
            return
        # One copy (converted where needed) into the staging buffer: O(1) objects per UPDATE
        # whatever the rectangle's shape (a view per row of a tall, narrow one would cost ~50x
        # its pixels), in bands that fit the buffer.
        limit = self.staging_max
        n = w * h * 4
        if n <= limit:  # one band: the common case
            if len(self._staging) < n or display.output_waiting:
                self._staging = bytearray(n)  # the display may still hold the last one
            pixels.swizzle_rect(res.swizzle, res.view, start, stride, self._staging, 0, w * 4, w, h)
            display.update(sid, x - sc.x, y - sc.y, w, h, memoryview(self._staging)[:n])
            return
        cols = min(w, limit // 4)
        rows = max(1, limit // (w * 4))
        for by in range(0, h, rows):
            bh = min(rows, h - by)
            for bx in range(0, w, cols):
                bw = min(cols, w - bx)
                n = bw * bh * 4
                if len(self._staging) < n or display.output_waiting:
                    # the display channel may still hold the last one: never overwrite it
                    self._staging = bytearray(n)
                src = start + by * stride + bx * 4
                pixels.swizzle_rect(res.swizzle, res.view, src, stride, self._staging, 0, bw * 4, bw, bh)
                if not display.update(sid, x + bx - sc.x, y + by - sc.y, bw, bh, memoryview(self._staging)[:n]):
                    return  # the display went
