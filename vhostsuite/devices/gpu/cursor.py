"""The cursor queue: UPDATE_CURSOR and MOVE_CURSOR to the display's CURSOR_* messages."""

from __future__ import annotations

from ...core import logger
from ...core.guestlog import GuestLog
from . import commands as K
from . import pixels
from . import wire as W
from .resources import Resource, Resources

#: typing.TYPE_CHECKING without importing typing (every start pays for it otherwise).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from .display import DisplayChannel

log = logger.get("vhostsuite.gpu")
guest_log = GuestLog(log)


def update_cursor(cmd: K.UpdateCursor, resources: Resources, display: DisplayChannel | None) -> None:
    """Move, hide or change the cursor of a scanout (cursor commands have no error response)."""
    sid = cmd.scanout_id
    if sid >= W.VIRTIO_GPU_MAX_SCANOUTS:
        guest_log.warn("cursor scanout", "cursor command for scanout %d ignored", sid)
        return
    if cmd.move or cmd.resource_id == 0:
        if display is not None:
            display.cursor_pos(sid, cmd.x, cmd.y, visible=cmd.resource_id != 0)
        return
    res = resources.get(cmd.resource_id)
    if res is None:
        guest_log.warn("cursor resource", "cursor update with unknown resource %d ignored", cmd.resource_id)
        return
    if res.three_d and res.show(resources, 0, 0, min(res.width, W.CURSOR_SIZE), min(res.height, W.CURSOR_SIZE)):
        guest_log.warn("cursor resource", "cursor update with 3D resource %d that can't be shown ignored", res.id)
        return
    if display is not None:
        display.cursor_update(sid, cmd.x, cmd.y, cmd.hot_x, cmd.hot_y, cursor_image(res))


def cursor_image(res: Resource) -> bytes:
    """The 64x64 a8r8g8b8 cursor image of *res*: converted, then cropped or padded with cairo."""
    import cairo  # here: the first cursor image pays for it, not every start (~3 ms)

    size = W.CURSOR_SIZE
    w, h = min(res.width, size), min(res.height, size)
    src = bytearray(w * h * 4)
    pixels.swizzle_rect(res.swizzle, res.view, 0, res.stride, src, 0, w * 4, w, h)
    if not res.alpha:
        src[3::4] = b"\xff" * (w * h)
    cursor = cairo.ImageSurface(cairo.FORMAT_ARGB32, size, size)  # transparent
    image = cairo.ImageSurface.create_for_data(src, cairo.FORMAT_ARGB32, w, h, w * 4)
    try:
        cr = cairo.Context(cursor)
        cr.set_operator(cairo.OPERATOR_SOURCE)
        cr.set_source_surface(image, 0, 0)
        cr.rectangle(0, 0, w, h)
        cr.fill()
        cursor.flush()
        data = bytes(cursor.get_data())
    finally:
        image.finish()
        cursor.finish()
    return data
