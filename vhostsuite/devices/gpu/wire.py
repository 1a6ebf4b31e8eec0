"""Wire layouts and constants of virtio-gpu (``<linux/virtio_gpu.h>``) and of QEMU's
vhost-user-gpu display protocol (``docs/interop/vhost-user-gpu.rst``), in one place.

virtio-gpu structures are little-endian; the display protocol uses the host's native
byte order (both are little-endian on the hosts we support). Names follow the headers.
No I/O and no cairo here: ``--print-capabilities`` may import this module.
"""

from __future__ import annotations

import struct

# -- virtio-gpu feature bits ---------------------------------------------------------
VIRTIO_GPU_F_VIRGL = 0
VIRTIO_GPU_F_EDID = 1
VIRTIO_GPU_F_RESOURCE_UUID = 2
VIRTIO_GPU_F_RESOURCE_BLOB = 3
VIRTIO_GPU_F_CONTEXT_INIT = 4

# -- enum virtio_gpu_ctrl_type ---------------------------------------------------------
VIRTIO_GPU_UNDEFINED = 0
VIRTIO_GPU_CMD_GET_DISPLAY_INFO = 0x0100
VIRTIO_GPU_CMD_RESOURCE_CREATE_2D = 0x0101
VIRTIO_GPU_CMD_RESOURCE_UNREF = 0x0102
VIRTIO_GPU_CMD_SET_SCANOUT = 0x0103
VIRTIO_GPU_CMD_RESOURCE_FLUSH = 0x0104
VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D = 0x0105
VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING = 0x0106
VIRTIO_GPU_CMD_RESOURCE_DETACH_BACKING = 0x0107
VIRTIO_GPU_CMD_GET_CAPSET_INFO = 0x0108
VIRTIO_GPU_CMD_GET_CAPSET = 0x0109
VIRTIO_GPU_CMD_GET_EDID = 0x010A
VIRTIO_GPU_CMD_RESOURCE_ASSIGN_UUID = 0x010B
VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB = 0x010C
VIRTIO_GPU_CMD_SET_SCANOUT_BLOB = 0x010D
# 3d commands
VIRTIO_GPU_CMD_CTX_CREATE = 0x0200
VIRTIO_GPU_CMD_CTX_DESTROY = 0x0201
VIRTIO_GPU_CMD_CTX_ATTACH_RESOURCE = 0x0202
VIRTIO_GPU_CMD_CTX_DETACH_RESOURCE = 0x0203
VIRTIO_GPU_CMD_RESOURCE_CREATE_3D = 0x0204
VIRTIO_GPU_CMD_TRANSFER_TO_HOST_3D = 0x0205
VIRTIO_GPU_CMD_TRANSFER_FROM_HOST_3D = 0x0206
VIRTIO_GPU_CMD_SUBMIT_3D = 0x0207
VIRTIO_GPU_CMD_RESOURCE_MAP_BLOB = 0x0208
VIRTIO_GPU_CMD_RESOURCE_UNMAP_BLOB = 0x0209
# cursor commands
VIRTIO_GPU_CMD_UPDATE_CURSOR = 0x0300
VIRTIO_GPU_CMD_MOVE_CURSOR = 0x0301
# success responses
VIRTIO_GPU_RESP_OK_NODATA = 0x1100
VIRTIO_GPU_RESP_OK_DISPLAY_INFO = 0x1101
VIRTIO_GPU_RESP_OK_CAPSET_INFO = 0x1102
VIRTIO_GPU_RESP_OK_CAPSET = 0x1103
VIRTIO_GPU_RESP_OK_EDID = 0x1104
VIRTIO_GPU_RESP_OK_RESOURCE_UUID = 0x1105
VIRTIO_GPU_RESP_OK_MAP_INFO = 0x1106
# error responses
VIRTIO_GPU_RESP_ERR_UNSPEC = 0x1200
VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY = 0x1201
VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID = 0x1202
VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID = 0x1203
VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID = 0x1204
VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER = 0x1205

VIRTIO_GPU_FLAG_FENCE = 1 << 0
VIRTIO_GPU_FLAG_INFO_RING_IDX = 1 << 1

VIRTIO_GPU_MAX_SCANOUTS = 16
VIRTIO_GPU_EVENT_DISPLAY = 1 << 0

# -- enum virtio_gpu_formats -----------------------------------------------------------
VIRTIO_GPU_FORMAT_B8G8R8A8_UNORM = 1
VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM = 2
VIRTIO_GPU_FORMAT_A8R8G8B8_UNORM = 3
VIRTIO_GPU_FORMAT_X8R8G8B8_UNORM = 4
VIRTIO_GPU_FORMAT_R8G8B8A8_UNORM = 67
VIRTIO_GPU_FORMAT_X8B8G8R8_UNORM = 68
VIRTIO_GPU_FORMAT_A8B8G8R8_UNORM = 121
VIRTIO_GPU_FORMAT_R8G8B8X8_UNORM = 134

#: Byte permutations that turn a pixel's bytes in memory into B,G,R,A/X order (x8r8g8b8 and
#: a8r8g8b8 on a little-endian host; big-endian hosts are not supported). Applied by the
#: pixel copiers (_pixels.pyx and its twin _pixels_py.py).
SWIZZLE_NONE = 0  #: B G R A, as it is
SWIZZLE_BSWAP = 1  #: A R G B, reversed
SWIZZLE_SWAP02 = 2  #: R G B A, bytes 0 and 2 swapped
SWIZZLE_ROTATE = 3  #: A B G R, as bytes 1, 2, 3, 0

#: virtio format -> (swizzle to B,G,R,A bytes, has alpha)
FORMATS: dict[int, tuple[int, bool]] = {
    VIRTIO_GPU_FORMAT_B8G8R8A8_UNORM: (SWIZZLE_NONE, True),
    VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM: (SWIZZLE_NONE, False),
    VIRTIO_GPU_FORMAT_A8R8G8B8_UNORM: (SWIZZLE_BSWAP, True),
    VIRTIO_GPU_FORMAT_X8R8G8B8_UNORM: (SWIZZLE_BSWAP, False),
    VIRTIO_GPU_FORMAT_R8G8B8A8_UNORM: (SWIZZLE_SWAP02, True),
    VIRTIO_GPU_FORMAT_R8G8B8X8_UNORM: (SWIZZLE_SWAP02, False),
    VIRTIO_GPU_FORMAT_A8B8G8R8_UNORM: (SWIZZLE_ROTATE, True),
    VIRTIO_GPU_FORMAT_X8B8G8R8_UNORM: (SWIZZLE_ROTATE, False),
}
BYTES_PER_PIXEL = 4

# -- virtio-gpu structures (little-endian) ---------------------------------------------
#: struct virtio_gpu_ctrl_hdr: type, flags, fence_id, ctx_id, ring_idx, padding[3]
CTRL_HDR = struct.Struct("<IIQIB3x")
#: struct virtio_gpu_rect
RECT = struct.Struct("<IIII")
#: the bodies that follow the header (offset CTRL_HDR.size)
RESOURCE_CREATE_2D = struct.Struct("<IIII")  # resource_id, format, width, height
RESOURCE_UNREF = struct.Struct("<II")  # resource_id, padding
SET_SCANOUT = struct.Struct("<IIIIII")  # r.x, r.y, r.width, r.height, scanout_id, resource_id
RESOURCE_FLUSH = struct.Struct("<IIIIII")  # r, resource_id, padding
TRANSFER_TO_HOST_2D = struct.Struct("<IIIIQII")  # r, offset, resource_id, padding
RESOURCE_ATTACH_BACKING = struct.Struct("<II")  # resource_id, nr_entries
MEM_ENTRY = struct.Struct("<QII")  # addr, length, padding
RESOURCE_DETACH_BACKING = struct.Struct("<II")  # resource_id, padding
CMD_GET_EDID = struct.Struct("<II")  # scanout, padding
#: The body of a command that is its header alone (GET_DISPLAY_INFO).
NO_BODY = struct.Struct("<")
#: struct virtio_gpu_update_cursor after the header: pos{scanout_id, x, y, padding}, resource_id, hot_x, hot_y, padding
UPDATE_CURSOR = struct.Struct("<IIIIIIII")
#: struct virtio_gpu_display_one
DISPLAY_ONE = struct.Struct("<IIIIII")  # r.x, r.y, r.width, r.height, enabled, flags
RESP_DISPLAY_INFO_SIZE = CTRL_HDR.size + VIRTIO_GPU_MAX_SCANOUTS * DISPLAY_ONE.size  # 408
EDID_MAX = 1024
RESP_EDID_HEAD = struct.Struct("<II")  # size, padding
RESP_EDID_SIZE = CTRL_HDR.size + RESP_EDID_HEAD.size + EDID_MAX  # 1056
# 3D (VIRTIO_GPU_F_VIRGL) bodies after the header
GET_CAPSET_INFO = struct.Struct("<II")  # capset_index, padding
RESP_CAPSET_INFO = struct.Struct("<IIII")  # capset_id, capset_max_version, capset_max_size, padding
GET_CAPSET = struct.Struct("<II")  # capset_id, capset_version
CTX_CREATE = struct.Struct("<II64s")  # nlen, context_init, debug_name
CTX_DESTROY = struct.Struct("")  # no body
CTX_RESOURCE = struct.Struct("<II")  # resource_id, padding
#: resource_id, target, format, bind, width, height, depth, array_size, last_level, nr_samples, flags, padding
RESOURCE_CREATE_3D = struct.Struct("<12I")
#: box (x, y, z, w, h, d), offset, resource_id, level, stride, layer_stride
TRANSFER_HOST_3D = struct.Struct("<6IQ4I")
CMD_SUBMIT = struct.Struct("<II")  # size, padding (then size bytes of command stream)
VIRTIO_GPU_CAPSET_VIRGL = 1
VIRTIO_GPU_CAPSET_VIRGL2 = 2
#: struct virtio_gpu_config: events_read, events_clear, num_scanouts, num_capsets
CONFIG = struct.Struct("<IIII")

#: Fixed size of each command (header included); a shorter command is refused.
COMMAND_SIZES = {
    VIRTIO_GPU_CMD_GET_DISPLAY_INFO: CTRL_HDR.size,
    VIRTIO_GPU_CMD_RESOURCE_CREATE_2D: CTRL_HDR.size + RESOURCE_CREATE_2D.size,
    VIRTIO_GPU_CMD_RESOURCE_UNREF: CTRL_HDR.size + RESOURCE_UNREF.size,
    VIRTIO_GPU_CMD_SET_SCANOUT: CTRL_HDR.size + SET_SCANOUT.size,
    VIRTIO_GPU_CMD_RESOURCE_FLUSH: CTRL_HDR.size + RESOURCE_FLUSH.size,
    VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D: CTRL_HDR.size + TRANSFER_TO_HOST_2D.size,
    VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING: CTRL_HDR.size + RESOURCE_ATTACH_BACKING.size,
    VIRTIO_GPU_CMD_RESOURCE_DETACH_BACKING: CTRL_HDR.size + RESOURCE_DETACH_BACKING.size,
    VIRTIO_GPU_CMD_GET_EDID: CTRL_HDR.size + CMD_GET_EDID.size,
    VIRTIO_GPU_CMD_GET_CAPSET_INFO: CTRL_HDR.size + GET_CAPSET_INFO.size,
    VIRTIO_GPU_CMD_GET_CAPSET: CTRL_HDR.size + GET_CAPSET.size,
    VIRTIO_GPU_CMD_CTX_CREATE: CTRL_HDR.size + CTX_CREATE.size,
    VIRTIO_GPU_CMD_CTX_DESTROY: CTRL_HDR.size,
    VIRTIO_GPU_CMD_CTX_ATTACH_RESOURCE: CTRL_HDR.size + CTX_RESOURCE.size,
    VIRTIO_GPU_CMD_CTX_DETACH_RESOURCE: CTRL_HDR.size + CTX_RESOURCE.size,
    VIRTIO_GPU_CMD_RESOURCE_CREATE_3D: CTRL_HDR.size + RESOURCE_CREATE_3D.size,
    VIRTIO_GPU_CMD_TRANSFER_TO_HOST_3D: CTRL_HDR.size + TRANSFER_HOST_3D.size,
    VIRTIO_GPU_CMD_TRANSFER_FROM_HOST_3D: CTRL_HDR.size + TRANSFER_HOST_3D.size,
    VIRTIO_GPU_CMD_SUBMIT_3D: CTRL_HDR.size + CMD_SUBMIT.size,
    VIRTIO_GPU_CMD_UPDATE_CURSOR: CTRL_HDR.size + UPDATE_CURSOR.size,
    VIRTIO_GPU_CMD_MOVE_CURSOR: CTRL_HDR.size + UPDATE_CURSOR.size,
}

#: The most backing entries one ATTACH_BACKING may carry (QEMU's limit).
MAX_BACKING_ENTRIES = 16384
CURSOR_SIZE = 64
#: The largest SUBMIT_3D command stream accepted: 16x what Mesa's virgl driver sends at most
#: (VIRGL_MAX_CMDBUF_DWORDS, 64 Ki words = 256 KiB); it is copied out of guest memory whole.
MAX_SUBMIT = 4 << 20

# -- vhost-user-gpu display protocol (native endian, packed) -----------------------------
VHOST_USER_GPU_GET_PROTOCOL_FEATURES = 1
VHOST_USER_GPU_SET_PROTOCOL_FEATURES = 2
VHOST_USER_GPU_GET_DISPLAY_INFO = 3
VHOST_USER_GPU_CURSOR_POS = 4
VHOST_USER_GPU_CURSOR_POS_HIDE = 5
VHOST_USER_GPU_CURSOR_UPDATE = 6
VHOST_USER_GPU_SCANOUT = 7
VHOST_USER_GPU_UPDATE = 8
VHOST_USER_GPU_DMABUF_SCANOUT = 9
VHOST_USER_GPU_DMABUF_UPDATE = 10
VHOST_USER_GPU_GET_EDID = 11
VHOST_USER_GPU_DMABUF_SCANOUT2 = 12

VHOST_USER_GPU_MSG_FLAG_REPLY = 0x4
VHOST_USER_GPU_PROTOCOL_F_EDID = 0
VHOST_USER_GPU_PROTOCOL_F_DMABUF2 = 1

GPU_HEADER = struct.Struct("=III")  # request, flags, size
GPU_U64 = struct.Struct("=Q")
GPU_CURSOR_POS = struct.Struct("=III")  # scanout_id, x, y
GPU_CURSOR_UPDATE_HEAD = struct.Struct("=IIIII")  # pos, hot_x, hot_y; then 64*64 u32 a8r8g8b8
GPU_CURSOR_UPDATE_SIZE = GPU_CURSOR_UPDATE_HEAD.size + CURSOR_SIZE * CURSOR_SIZE * 4  # 16404
GPU_SCANOUT = struct.Struct("=III")  # scanout_id, width, height
GPU_UPDATE_HEAD = struct.Struct("=IIIII")  # scanout_id, x, y, width, height; then x8r8g8b8 data
#: GPU_HEADER and GPU_UPDATE_HEAD in one pack: the message head of every UPDATE.
GPU_UPDATE_MSG_HEAD = struct.Struct(GPU_HEADER.format + GPU_UPDATE_HEAD.format.lstrip("="))
GPU_EDID_REQUEST = struct.Struct("=I")  # scanout_id

#: QEMU's display defaults (virtio-gpu-base ``xres``/``yres``), used when it can't be asked.
DEFAULT_WIDTH = 1280
DEFAULT_HEIGHT = 800


def ctrl_type_name(t: int) -> str:
    for k, v in globals().items():
        if v == t and (k.startswith("VIRTIO_GPU_CMD_") or k.startswith("VIRTIO_GPU_RESP_")):
            return k[len("VIRTIO_GPU_") :]
    return f"{t:#x}"
