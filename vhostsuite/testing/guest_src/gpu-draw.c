/* gpu-draw: draw a known pattern on the first connected DRM connector with a KMS dumb buffer,
 * then change one rectangle and flush just that rectangle with DIRTYFB.
 *
 * Prints on the console:
 *   GPU-FRAME1 <width> <height>          after SETCRTC of the full pattern
 *   GPU-FRAME2 <x> <y> <w> <h>           after DIRTYFB of the changed rectangle
 * The host compares screendumps with the same formulas (tests/e2e/test_gpu_e2e.py).
 * The delay between the frames is vhs.gpu_delay=<seconds> on the kernel command line (default 6).
 * Raw ioctls only: there is no static libdrm.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>
#include <drm.h>
#include "vhs.h"
#include <drm_mode.h>

static uint32_t pattern1(uint32_t x, uint32_t y)
{
    uint32_t r = (x * 7 + y * 3) & 0xff, g = (x ^ y) & 0xff, b = (x + 2 * y) & 0xff;
    return (r << 16) | (g << 8) | b;
}

static uint32_t pattern2(uint32_t x, uint32_t y)
{
    return pattern1(x, y) ^ 0x00ffffff;
}

static int xioctl(int fd, unsigned long req, void *arg)
{
    int r;
    do {
        r = ioctl(fd, req, arg);
    } while (r == -1 && (errno == EINTR || errno == EAGAIN));
    return r;
}

static void die(const char *what)
{
    printf("GPU-ERROR %s: %s\n", what, strerror(errno));
    fflush(stdout);
    exit(1);
}

int main(void)
{
    int fd = -1;
    for (int i = 0; i < 600 && fd < 0; i++) {
        fd = open("/dev/dri/card0", O_RDWR | O_CLOEXEC);
        if (fd < 0)
            usleep(100000);
    }
    if (fd < 0)
        die("open /dev/dri/card0");

    struct drm_mode_card_res res = {0};
    if (xioctl(fd, DRM_IOCTL_MODE_GETRESOURCES, &res))
        die("GETRESOURCES");
    uint32_t *conns = calloc(res.count_connectors + 1, 4), *crtcs = calloc(res.count_crtcs + 1, 4);
    uint32_t *encs = calloc(res.count_encoders + 1, 4), *fbs = calloc(res.count_fbs + 1, 4);
    res.connector_id_ptr = (uintptr_t)conns;
    res.crtc_id_ptr = (uintptr_t)crtcs;
    res.encoder_id_ptr = (uintptr_t)encs;
    res.fb_id_ptr = (uintptr_t)fbs;
    if (xioctl(fd, DRM_IOCTL_MODE_GETRESOURCES, &res))
        die("GETRESOURCES 2");

    struct drm_mode_get_connector conn;
    struct drm_mode_modeinfo mode;
    int found = 0;
    /* the connector may show up as connected only once the host answered display info: retry */
    for (int attempt = 0; attempt < 100 && !found; attempt++) {
        for (uint32_t i = 0; i < res.count_connectors && !found; i++) {
            memset(&conn, 0, sizeof(conn));
            conn.connector_id = conns[i];
            if (xioctl(fd, DRM_IOCTL_MODE_GETCONNECTOR, &conn))
                die("GETCONNECTOR");
            if (conn.connection != 1 || conn.count_modes == 0)
                continue;
            struct drm_mode_modeinfo *modes = calloc(conn.count_modes, sizeof(*modes));
            uint32_t *cencs = calloc(conn.count_encoders + 1, 4);
            conn.modes_ptr = (uintptr_t)modes;
            conn.encoders_ptr = (uintptr_t)cencs;
            conn.count_props = 0;
            if (xioctl(fd, DRM_IOCTL_MODE_GETCONNECTOR, &conn))
                die("GETCONNECTOR 2");
            mode = modes[0];
            for (uint32_t m = 0; m < conn.count_modes; m++)
                if (modes[m].type & DRM_MODE_TYPE_PREFERRED) {
                    mode = modes[m];
                    break;
                }
            found = 1;
        }
        if (!found)
            usleep(100000);
    }
    if (!found)
        die("no connected connector");

    uint32_t crtc_id = crtcs[0];
    if (conn.encoder_id) {
        struct drm_mode_get_encoder enc = {.encoder_id = conn.encoder_id};
        if (xioctl(fd, DRM_IOCTL_MODE_GETENCODER, &enc) == 0 && enc.crtc_id)
            crtc_id = enc.crtc_id;
    }

    uint32_t w = mode.hdisplay, h = mode.vdisplay;
    struct drm_mode_create_dumb cd = {.width = w, .height = h, .bpp = 32};
    if (xioctl(fd, DRM_IOCTL_MODE_CREATE_DUMB, &cd))
        die("CREATE_DUMB");
    struct drm_mode_fb_cmd fb = {.width = w, .height = h, .pitch = cd.pitch, .bpp = 32, .depth = 24, .handle = cd.handle};
    if (xioctl(fd, DRM_IOCTL_MODE_ADDFB, &fb))
        die("ADDFB");
    struct drm_mode_map_dumb md = {.handle = cd.handle};
    if (xioctl(fd, DRM_IOCTL_MODE_MAP_DUMB, &md))
        die("MAP_DUMB");
    uint8_t *map = mmap(0, cd.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, md.offset);
    if (map == MAP_FAILED)
        die("mmap");
    for (uint32_t y = 0; y < h; y++) {
        uint32_t *row = (uint32_t *)(map + (size_t)y * cd.pitch);
        for (uint32_t x = 0; x < w; x++)
            row[x] = pattern1(x, y);
    }
    struct drm_mode_crtc crtc = {0};
    crtc.crtc_id = crtc_id;
    crtc.fb_id = fb.fb_id;
    crtc.set_connectors_ptr = (uintptr_t)&conn.connector_id;
    crtc.count_connectors = 1;
    crtc.mode = mode;
    crtc.mode_valid = 1;
    if (xioctl(fd, DRM_IOCTL_MODE_SETCRTC, &crtc))
        die("SETCRTC");
    /* a full-screen dirty too, so the host has the whole frame whatever SETCRTC flushed */
    struct drm_clip_rect all = {0, 0, w, h};
    struct drm_mode_fb_dirty_cmd dirty_all = {.fb_id = fb.fb_id, .num_clips = 1, .clips_ptr = (uintptr_t)&all};
    xioctl(fd, DRM_IOCTL_MODE_DIRTYFB, &dirty_all);
    printf("GPU-FRAME1 %u %u\n", w, h);
    fflush(stdout);

    sleep(vhs_param("vhs.gpu_delay", 6));

    uint32_t rx = w / 4, ry = h / 4, rw = w / 3, rh = h / 5;
    for (uint32_t y = ry; y < ry + rh; y++) {
        uint32_t *row = (uint32_t *)(map + (size_t)y * cd.pitch);
        for (uint32_t x = rx; x < rx + rw; x++)
            row[x] = pattern2(x, y);
    }
    struct drm_clip_rect clip = {rx, ry, rx + rw, ry + rh};
    struct drm_mode_fb_dirty_cmd dirty = {.fb_id = fb.fb_id, .num_clips = 1, .clips_ptr = (uintptr_t)&clip};
    if (xioctl(fd, DRM_IOCTL_MODE_DIRTYFB, &dirty))
        die("DIRTYFB");
    printf("GPU-FRAME2 %u %u %u %u\n", rx, ry, rw, rh);
    fflush(stdout);
    sleep(vhs_param("vhs.gpu_hold", 600));
    return 0;
}
