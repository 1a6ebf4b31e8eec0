/* gpu-3d: draw a frame with the virtio-gpu 3D ioctls, as Mesa's virgl driver would, check its
 * pixels, then show it on the first connected connector with KMS.
 *
 * The frame: a mode-sized B8G8R8X8 render target cleared orange (1.0, 0.5, 0.0), and a blue
 * rectangle [w/4, 3w/4) x [h/4, h/2) drawn with TGSI shaders from a vertex buffer. The command
 * stream is laid out as in virglrenderer's virgl_protocol.h (the host tests build the same
 * stream in vhostsuite/testing/virgl_stream.py).
 *
 * Prints on the console:
 *   GPU3D-FEATURES <3d>                    VIRTGPU_PARAM_3D_FEATURES (1: the device has virgl)
 *   GPU3D-PIXELS <w> <h> <bad pixels>      after TRANSFER_FROM_HOST of the frame into its pages
 *   GPU3D-SCANOUT <w> <h>                  after SETCRTC with the 3D resource as framebuffer
 * and GPU3D-ERROR <what>: <why> on failure.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include "vhs.h"
#include "vhs_kms.h"
#include <virtgpu_drm.h>

enum {
    CCMD_CREATE_OBJECT = 1, CCMD_BIND_OBJECT = 2, CCMD_SET_VIEWPORT_STATE = 4, CCMD_SET_FRAMEBUFFER_STATE = 5,
    CCMD_SET_VERTEX_BUFFERS = 6, CCMD_CLEAR = 7, CCMD_DRAW_VBO = 8, CCMD_RESOURCE_INLINE_WRITE = 9,
    CCMD_BIND_SHADER = 31,
};
enum { OBJ_BLEND = 1, OBJ_RASTERIZER = 2, OBJ_DSA = 3, OBJ_SHADER = 4, OBJ_VERTEX_ELEMENTS = 5, OBJ_SURFACE = 8 };
enum { FMT_B8G8R8X8 = 2, FMT_R32G32B32A32_FLOAT = 31, FMT_R8 = 64 };
enum { BIND_RENDER_TARGET = 1 << 1, BIND_SAMPLER_VIEW = 1 << 3, BIND_VERTEX_BUFFER = 1 << 4, BIND_SCANOUT = 1 << 18 };

static uint32_t stream[4096];
static uint32_t n;

static void put(uint32_t w) { stream[n++] = w; }
static void head(uint32_t cmd, uint32_t obj, uint32_t len) { put(cmd | obj << 8 | len << 16); }
static uint32_t f32(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

static void shader(uint32_t handle, uint32_t kind, const char *tgsi)
{
    uint32_t len = strlen(tgsi) + 1, words = (len + 3) / 4;
    head(CCMD_CREATE_OBJECT, OBJ_SHADER, 5 + words);
    put(handle); put(kind); put(len); put(300); put(0);
    memset(&stream[n], 0, words * 4);
    memcpy(&stream[n], tgsi, len);
    n += words;
    head(CCMD_BIND_SHADER, 0, 2); put(handle); put(kind);
}

static void frame(uint32_t target, uint32_t vbuf, uint32_t w, uint32_t h, uint32_t x0, uint32_t y0, uint32_t x1,
                  uint32_t y1)
{
    head(CCMD_CREATE_OBJECT, OBJ_SURFACE, 5); put(1); put(target); put(FMT_B8G8R8X8); put(0); put(0);
    head(CCMD_SET_FRAMEBUFFER_STATE, 0, 3); put(1); put(0); put(1);
    head(CCMD_CLEAR, 0, 8); put(1 << 2); put(f32(1)); put(f32(0.5)); put(f32(0)); put(f32(1)); put(0); put(0); put(0);
    /* the rectangle as a triangle strip, in normalised device coordinates (y = -1: the top row) */
    float v[16];
    uint32_t xs[4] = {x0, x1, x0, x1}, ys[4] = {y0, y0, y1, y1};
    for (int i = 0; i < 4; i++) {
        v[i * 4] = (float)xs[i] / w * 2 - 1;
        v[i * 4 + 1] = (float)ys[i] / h * 2 - 1;
        v[i * 4 + 2] = 0;
        v[i * 4 + 3] = 1;
    }
    head(CCMD_RESOURCE_INLINE_WRITE, 0, 11 + 16);
    put(vbuf); put(0); put(0); put(0); put(0); put(0); put(0); put(0); put(sizeof(v)); put(1); put(1);
    memcpy(&stream[n], v, sizeof(v));
    n += 16;
    head(CCMD_CREATE_OBJECT, OBJ_BLEND, 11); put(2); put(0); put(0);
    for (int i = 0; i < 8; i++)
        put(0xfu << 27);
    head(CCMD_BIND_OBJECT, OBJ_BLEND, 1); put(2);
    head(CCMD_CREATE_OBJECT, OBJ_DSA, 5); put(3); put(0); put(0); put(0); put(0);
    head(CCMD_BIND_OBJECT, OBJ_DSA, 1); put(3);
    head(CCMD_CREATE_OBJECT, OBJ_RASTERIZER, 9);
    put(4); put(1 << 1 | 1 << 29); put(f32(1)); put(0); put(0); put(f32(1)); put(0); put(0); put(0);
    head(CCMD_BIND_OBJECT, OBJ_RASTERIZER, 1); put(4);
    shader(5, 0, "VERT\nDCL IN[0]\nDCL OUT[0], POSITION\n  0: MOV OUT[0], IN[0]\n  1: END\n");
    shader(6, 1, "FRAG\nPROPERTY FS_COLOR0_WRITES_ALL_CBUFS 1\nDCL OUT[0], COLOR\n"
                 "IMM[0] FLT32 { 0.0000, 0.0000, 1.0000, 1.0000 }\n  0: MOV OUT[0], IMM[0]\n  1: END\n");
    head(CCMD_CREATE_OBJECT, OBJ_VERTEX_ELEMENTS, 5); put(7); put(0); put(0); put(0); put(FMT_R32G32B32A32_FLOAT);
    head(CCMD_BIND_OBJECT, OBJ_VERTEX_ELEMENTS, 1); put(7);
    head(CCMD_SET_VERTEX_BUFFERS, 0, 3); put(16); put(0); put(vbuf);
    head(CCMD_SET_VIEWPORT_STATE, 0, 7);
    put(0); put(f32(w / 2.0f)); put(f32(h / 2.0f)); put(f32(0.5)); put(f32(w / 2.0f)); put(f32(h / 2.0f)); put(f32(0.5));
    head(CCMD_DRAW_VBO, 0, 12);
    put(0); put(4); put(5 /* PIPE_PRIM_TRIANGLE_STRIP */); put(0); put(1); put(0); put(0); put(0); put(0); put(0);
    put(3); put(0);
}

static struct drm_virtgpu_resource_create create(int fd, uint32_t target, uint32_t fmt, uint32_t bind, uint32_t w,
                                                 uint32_t h, uint32_t size)
{
    struct drm_virtgpu_resource_create rc = {
        .target = target, .format = fmt, .bind = bind, .width = w, .height = h, .depth = 1, .array_size = 1,
        .size = size, .stride = target ? w * 4 : 0,
    };
    if (xioctl(fd, DRM_IOCTL_VIRTGPU_RESOURCE_CREATE, &rc))
        die("RESOURCE_CREATE");
    return rc;
}

static void wait_bo(int fd, uint32_t bo)
{
    struct drm_virtgpu_3d_wait wait = {.handle = bo};
    if (xioctl(fd, DRM_IOCTL_VIRTGPU_WAIT, &wait))
        die("WAIT");
}

int main(void)
{
    vhs_prefix = "GPU3D";
    int fd = vhs_open_card();
    int has_3d = 0;
    struct drm_virtgpu_getparam param = {.param = VIRTGPU_PARAM_3D_FEATURES, .value = (uintptr_t)&has_3d};
    if (xioctl(fd, DRM_IOCTL_VIRTGPU_GETPARAM, &param))
        die("GETPARAM");
    printf("GPU3D-FEATURES %d\n", has_3d);
    fflush(stdout);
    if (!has_3d) {
        errno = ENODEV;
        die("no 3D");
    }
    struct vhs_output out = vhs_find_output(fd);
    uint32_t w = out.mode.hdisplay, h = out.mode.vdisplay;
    uint32_t x0 = w / 4, y0 = h / 4, x1 = 3 * w / 4, y1 = h / 2;

    struct drm_virtgpu_resource_create target =
        create(fd, 2 /* PIPE_TEXTURE_2D */, FMT_B8G8R8X8, BIND_RENDER_TARGET | BIND_SAMPLER_VIEW | BIND_SCANOUT, w, h,
               w * h * 4);
    struct drm_virtgpu_resource_create vbuf = create(fd, 0 /* PIPE_BUFFER */, FMT_R8, BIND_VERTEX_BUFFER, 64, 1, 64);

    frame(target.res_handle, vbuf.res_handle, w, h, x0, y0, x1, y1);
    uint32_t bos[2] = {target.bo_handle, vbuf.bo_handle};
    struct drm_virtgpu_execbuffer exec = {
        .size = n * 4, .command = (uintptr_t)stream, .bo_handles = (uintptr_t)bos, .num_bo_handles = 2,
        .fence_fd = -1,
    };
    if (xioctl(fd, DRM_IOCTL_VIRTGPU_EXECBUFFER, &exec))
        die("EXECBUFFER");
    wait_bo(fd, target.bo_handle);

    struct drm_virtgpu_3d_transfer_from_host xfer = {.bo_handle = target.bo_handle, .box = {0, 0, 0, w, h, 1}};
    if (xioctl(fd, DRM_IOCTL_VIRTGPU_TRANSFER_FROM_HOST, &xfer))
        die("TRANSFER_FROM_HOST");
    wait_bo(fd, target.bo_handle);
    struct drm_virtgpu_map map = {.handle = target.bo_handle};
    if (xioctl(fd, DRM_IOCTL_VIRTGPU_MAP, &map))
        die("MAP");
    uint32_t *pix = mmap(0, w * h * 4, PROT_READ, MAP_SHARED, fd, map.offset);
    if (pix == MAP_FAILED)
        die("mmap");
    uint32_t bad = 0;
    for (uint32_t y = 0; y < h; y++)
        for (uint32_t x = 0; x < w; x++) {
            uint32_t want = (x >= x0 && x < x1 && y >= y0 && y < y1) ? 0x0000ff : 0xff8000; /* x8r8g8b8 */
            if ((pix[y * w + x] & 0xffffff) != want && bad++ < 4)
                printf("GPU3D-MISMATCH %u %u %08x\n", x, y, pix[y * w + x]);
        }
    printf("GPU3D-PIXELS %u %u %u\n", w, h, bad);
    fflush(stdout);

    struct drm_mode_fb_cmd fb = {.width = w, .height = h, .pitch = w * 4, .bpp = 32, .depth = 24,
                                 .handle = target.bo_handle};
    if (xioctl(fd, DRM_IOCTL_MODE_ADDFB, &fb))
        die("ADDFB");
    vhs_show(fd, &out, fb.fb_id);
    printf("GPU3D-SCANOUT %u %u\n", w, h);
    fflush(stdout);
    sleep(vhs_param("vhs.gpu_hold", 600));
    return 0;
}
