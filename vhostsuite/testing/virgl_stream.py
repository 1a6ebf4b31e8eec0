"""virgl command streams (what Mesa's virgl driver puts in a SUBMIT_3D), for the tests and the
bench: a few commands, encoded as virglrenderer's ``virgl_protocol.h`` lays them out.

Each command is 32-bit words: a header ``cmd | object_type << 8 | length << 16`` (length: the
words after the header), then its arguments.
"""

from __future__ import annotations

import struct

# enum virgl_context_cmd
CCMD_CREATE_OBJECT = 1
CCMD_BIND_OBJECT = 2
CCMD_SET_VIEWPORT_STATE = 4
CCMD_SET_FRAMEBUFFER_STATE = 5
CCMD_SET_VERTEX_BUFFERS = 6
CCMD_CLEAR = 7
CCMD_DRAW_VBO = 8
CCMD_RESOURCE_INLINE_WRITE = 9
CCMD_BIND_SHADER = 31
CCMD_SEND_STRING_MARKER = 51
# enum virgl_object_type
OBJECT_BLEND = 1
OBJECT_RASTERIZER = 2
OBJECT_DSA = 3
OBJECT_SHADER = 4
OBJECT_VERTEX_ELEMENTS = 5
OBJECT_SURFACE = 8
# gallium: pipe_shader_type, pipe_prim_type, and the formats used here (virgl_formats)
SHADER_VERTEX = 0
SHADER_FRAGMENT = 1
PRIM_TRIANGLE_STRIP = 5
FORMAT_B8G8R8X8_UNORM = 2
FORMAT_R32G32B32A32_FLOAT = 31
FORMAT_R8_UNORM = 64
BIND_VERTEX_BUFFER = 1 << 4
# rasterizer state bits (VIRGL_OBJ_RS_S0_*)
RS_DEPTH_CLIP = 1 << 1
RS_HALF_PIXEL_CENTER = 1 << 29
#: PIPE_CLEAR_COLOR0
CLEAR_COLOR0 = 1 << 2
# gallium's texture targets and bind flags (virglrenderer.h's VIRGL_RES_BIND_*)
PIPE_BUFFER = 0
PIPE_TEXTURE_2D = 2
BIND_RENDER_TARGET = 1 << 1
BIND_SAMPLER_VIEW = 1 << 3
BIND_SCANOUT = 1 << 18


def header(cmd: int, obj: int, length: int) -> int:
    return cmd | obj << 8 | length << 16


def _f(x: float) -> int:
    return struct.unpack("<I", struct.pack("<f", x))[0]


def create_surface(handle: int, resource: int, fmt: int, level: int = 0, layers: int = 0) -> list[int]:
    return [header(CCMD_CREATE_OBJECT, OBJECT_SURFACE, 5), handle, resource, fmt, level, layers]


def set_framebuffer(*cbufs: int, zsurf: int = 0) -> list[int]:
    return [header(CCMD_SET_FRAMEBUFFER_STATE, 0, len(cbufs) + 2), len(cbufs), zsurf, *cbufs]


def clear(r: float, g: float, b: float, a: float = 1.0) -> list[int]:
    return [header(CCMD_CLEAR, 0, 8), CLEAR_COLOR0, _f(r), _f(g), _f(b), _f(a), 0, 0, 0]


def inline_write(resource: int, x: int, y: int, w: int, h: int, data: bytes, stride: int | None = None) -> list[int]:
    """Write *data* (w x h texels of 4 bytes, *stride* bytes apart) into the resource's level 0."""
    stride = w * 4 if stride is None else stride
    words = list(struct.unpack(f"<{len(data) // 4}I", data[: len(data) // 4 * 4]))
    return [header(CCMD_RESOURCE_INLINE_WRITE, 0, 11 + len(words)), resource, 0, 0, stride, 0, x, y, 0, w, h, 1, *words]


def inline_write_buffer(resource: int, offset: int, data: bytes) -> list[int]:
    """Write *data* into a buffer resource at byte *offset*."""
    words = list(struct.unpack(f"<{len(data) // 4}I", data[: len(data) // 4 * 4]))
    return [header(CCMD_RESOURCE_INLINE_WRITE, 0, 11 + len(words)), resource, 0, 0, 0, 0, offset, 0, 0, len(data), 1, 1,
            *words]  # fmt: skip


def bind(obj: int, handle: int) -> list[int]:
    return [header(CCMD_BIND_OBJECT, obj, 1), handle]


def blend(handle: int) -> list[int]:
    """Blending off, every colour channel written, for all 8 colour buffers."""
    return [header(CCMD_CREATE_OBJECT, OBJECT_BLEND, 11), handle, 0, 0, *([0xF << 27] * 8)]


def dsa(handle: int) -> list[int]:
    """No depth, stencil or alpha test."""
    return [header(CCMD_CREATE_OBJECT, OBJECT_DSA, 5), handle, 0, 0, 0, 0]


def rasterizer(handle: int) -> list[int]:
    """GL's defaults: filled polygons, no culling, pixel centres at half."""
    return [header(CCMD_CREATE_OBJECT, OBJECT_RASTERIZER, 9), handle, RS_DEPTH_CLIP | RS_HALF_PIXEL_CENTER, _f(1.0),
            0, 0, _f(1.0), 0, 0, 0]  # fmt: skip


def shader(handle: int, kind: int, tgsi: str, tokens: int = 300) -> list[int]:
    """A shader in TGSI text (what Mesa's virgl driver sends); *tokens*: room for its parse."""
    text = tgsi.encode() + b"\0"
    text += bytes(-len(text) % 4)
    words = struct.unpack(f"<{len(text) // 4}I", text)
    return [header(CCMD_CREATE_OBJECT, OBJECT_SHADER, 5 + len(words)), handle, kind, len(tgsi) + 1, tokens, 0, *words]


def bind_shader(handle: int, kind: int) -> list[int]:
    return [header(CCMD_BIND_SHADER, 0, 2), handle, kind]


def vertex_elements(handle: int, fmt: int = FORMAT_R32G32B32A32_FLOAT) -> list[int]:
    """One vertex attribute at offset 0 of vertex buffer 0."""
    return [header(CCMD_CREATE_OBJECT, OBJECT_VERTEX_ELEMENTS, 5), handle, 0, 0, 0, fmt]


def set_vertex_buffer(resource: int, stride: int, offset: int = 0) -> list[int]:
    return [header(CCMD_SET_VERTEX_BUFFERS, 0, 3), stride, offset, resource]


def viewport(w: int, h: int) -> list[int]:
    """Normalised device coordinates onto the whole w x h target (y = -1 is its top row)."""
    return [header(CCMD_SET_VIEWPORT_STATE, 0, 7), 0, _f(w / 2), _f(h / 2), _f(0.5), _f(w / 2), _f(h / 2), _f(0.5)]


def draw(count: int, mode: int = PRIM_TRIANGLE_STRIP) -> list[int]:
    return [header(CCMD_DRAW_VBO, 0, 12), 0, count, mode, 0, 1, 0, 0, 0, 0, 0, count - 1, 0]


PASSTHROUGH_VS = "VERT\nDCL IN[0]\nDCL OUT[0], POSITION\n  0: MOV OUT[0], IN[0]\n  1: END\n"


def solid_fs(r: float, g: float, b: float) -> str:
    return (
        "FRAG\nPROPERTY FS_COLOR0_WRITES_ALL_CBUFS 1\nDCL OUT[0], COLOR\n"
        f"IMM[0] FLT32 {{ {r:.4f}, {g:.4f}, {b:.4f}, 1.0000 }}\n  0: MOV OUT[0], IMM[0]\n  1: END\n"
    )


def rect_vertices(w: int, h: int, x0: int, y0: int, x1: int, y1: int) -> bytes:
    """A triangle strip covering the pixels [x0, x1) x [y0, y1) of a w x h target."""
    out = []
    for px, py in ((x0, y0), (x1, y0), (x0, y1), (x1, y1)):
        out += [px / w * 2 - 1, py / h * 2 - 1, 0.0, 1.0]
    return struct.pack(f"<{len(out)}f", *out)


def clear_and_draw(target: int, vbuf: int, w: int, h: int, clear_rgb: tuple[float, float, float],
                   rect: tuple[int, int, int, int], rect_rgb: tuple[float, float, float]) -> bytes:  # fmt: skip
    """A whole frame as a GL program makes it: clear the w x h render target *target*, then draw
    a solid rectangle (x0, y0, x1, y1) with shaders from vertices put in buffer *vbuf* (at
    least 64 bytes, bound as a vertex buffer)."""
    return encode(
        create_surface(1, target, FORMAT_B8G8R8X8_UNORM),
        set_framebuffer(1),
        clear(*clear_rgb),
        inline_write_buffer(vbuf, 0, rect_vertices(w, h, *rect)),
        blend(2), bind(OBJECT_BLEND, 2),
        dsa(3), bind(OBJECT_DSA, 3),
        rasterizer(4), bind(OBJECT_RASTERIZER, 4),
        shader(5, SHADER_VERTEX, PASSTHROUGH_VS), bind_shader(5, SHADER_VERTEX),
        shader(6, SHADER_FRAGMENT, solid_fs(*rect_rgb)), bind_shader(6, SHADER_FRAGMENT),
        vertex_elements(7), bind(OBJECT_VERTEX_ELEMENTS, 7),
        set_vertex_buffer(vbuf, 16),
        viewport(w, h),
        draw(4),
    )  # fmt: skip


def encode(*commands: list[int]) -> bytes:
    words = [w for c in commands for w in c]
    return struct.pack(f"<{len(words)}I", *words)
