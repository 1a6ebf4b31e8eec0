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
#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>
#include "vhs.h"
#include "vhs_kms.h"

static uint32_t pattern1(uint32_t x, uint32_t y)
{
    uint32_t r = (x * 7 + y * 3) & 0xff, g = (x ^ y) & 0xff, b = (x + 2 * y) & 0xff;
    return (r << 16) | (g << 8) | b;
}

static uint32_t pattern2(uint32_t x, uint32_t y)
{
    return pattern1(x, y) ^ 0x00ffffff;
}

int main(void)
{
    int fd = vhs_open_card();
    struct vhs_output out = vhs_find_output(fd);

    uint32_t w = out.mode.hdisplay, h = out.mode.vdisplay;
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
    vhs_show(fd, &out, fb.fb_id);
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
