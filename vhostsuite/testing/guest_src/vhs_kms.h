/* KMS helpers shared by the guest's DRM test programs (raw ioctls: there is no static libdrm). */
#ifndef VHS_KMS_H
#define VHS_KMS_H

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include <drm.h>
#include <drm_mode.h>

/* The prefix of this program's console lines ("GPU", "GPU3D"): PREFIX-ERROR on failure. */
static const char *vhs_prefix = "GPU";

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
    printf("%s-ERROR %s: %s\n", vhs_prefix, what, strerror(errno));
    fflush(stdout);
    exit(1);
}

/* /dev/dri/card0, waiting up to a minute for the driver to create it. */
static int vhs_open_card(void)
{
    int fd = -1;
    for (int i = 0; i < 600 && fd < 0; i++) {
        fd = open("/dev/dri/card0", O_RDWR | O_CLOEXEC);
        if (fd < 0)
            usleep(100000);
    }
    if (fd < 0)
        die("open /dev/dri/card0");
    return fd;
}

struct vhs_output {
    uint32_t connector_id, crtc_id;
    struct drm_mode_modeinfo mode; /* the preferred mode (else the first) */
};

/* The first connected connector, its preferred mode and a CRTC for it. The connector may show
 * up as connected only once the host answered display info: retried for 10 s. */
static struct vhs_output vhs_find_output(int fd)
{
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
    struct vhs_output out = {0};
    int found = 0;
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
            out.mode = modes[0];
            for (uint32_t m = 0; m < conn.count_modes; m++)
                if (modes[m].type & DRM_MODE_TYPE_PREFERRED) {
                    out.mode = modes[m];
                    break;
                }
            found = 1;
        }
        if (!found)
            usleep(100000);
    }
    if (!found)
        die("no connected connector");
    out.connector_id = conn.connector_id;
    out.crtc_id = crtcs[0];
    if (conn.encoder_id) {
        struct drm_mode_get_encoder enc = {.encoder_id = conn.encoder_id};
        if (xioctl(fd, DRM_IOCTL_MODE_GETENCODER, &enc) == 0 && enc.crtc_id)
            out.crtc_id = enc.crtc_id;
    }
    return out;
}

/* Show the framebuffer *fb_id* on *out* in its mode, then mark it all dirty, so the host has
 * the whole frame whatever SETCRTC flushed. */
static void vhs_show(int fd, struct vhs_output *out, uint32_t fb_id)
{
    struct drm_mode_crtc crtc = {0};
    crtc.crtc_id = out->crtc_id;
    crtc.fb_id = fb_id;
    crtc.set_connectors_ptr = (uintptr_t)&out->connector_id;
    crtc.count_connectors = 1;
    crtc.mode = out->mode;
    crtc.mode_valid = 1;
    if (xioctl(fd, DRM_IOCTL_MODE_SETCRTC, &crtc))
        die("SETCRTC");
    struct drm_clip_rect all = {0, 0, out->mode.hdisplay, out->mode.vdisplay};
    struct drm_mode_fb_dirty_cmd dirty_all = {.fb_id = fb_id, .num_clips = 1, .clips_ptr = (uintptr_t)&all};
    xioctl(fd, DRM_IOCTL_MODE_DIRTYFB, &dirty_all);
}

#endif
