/* The benchmarks' front-end hot path in C: what QEMU and a Linux guest driver do per command,
 * so that a figure measures the back-end and not our Python test front-end.
 *
 *  - drive(): the guest driver's side of one split virtqueue. Each round makes a fixed set of
 *    pre-built chains available, kicks when the device's avail_event asks for it (EVENT_IDX) or
 *    unless it set NO_NOTIFY, waits for every chain to be used, re-arming the interrupt as Linux's
 *    driver does (see wait_used), and checks each response's type and length. Optionally it also waits until the
 *    display has received a number of UPDATEs per round.
 *  - display_*(): QEMU's display end of the vhost-user-gpu socket, served by a thread: it answers
 *    GET_PROTOCOL_FEATURES and GET_DISPLAY_INFO, reads UPDATE pixels into one buffer (QEMU copies
 *    them once into its surface), and counts UPDATEs.
 *
 * The Python side (bench/cfrontend.py) sets the connection up with vhostsuite.testing.frontend,
 * builds the descriptors, compiles this file with the display protocol's numbers passed as -D
 * (their one home is vhostsuite/devices/gpu/wire.py) and loads it with ctypes, which releases
 * the GIL for the duration of each call.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/virtio_gpu.h>
#include <linux/virtio_ring.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef VHOST_USER_GPU_UPDATE
#error "compile with the display protocol's numbers: see bench/cfrontend.py"
#endif

/* ---- the driver side of one queue ---------------------------------------------------------- */

struct ring {
    struct vring_desc *desc;
    struct vring_avail *avail;
    struct vring_used *used;
    uint32_t num;
    int32_t kick_fd, call_fd, event_idx;
    uint16_t avail_idx, last_used;   /* in and out: the Python driver's indexes */
    uint64_t interrupts;             /* out: counted over all calls */
};

struct chain {
    uint16_t head;
    uint16_t pad;
    uint32_t want_type;              /* the response type expected */
    volatile uint32_t *resp;         /* the response's first word in guest RAM */
    uint32_t resp_len;               /* the length the device must report used */
    uint32_t pad2;
};

static uint16_t *used_event(struct ring *r) { return &r->avail->ring[r->num]; }
static volatile uint16_t *avail_event(struct ring *r) { return (volatile uint16_t *)&r->used->ring[r->num]; }

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void kick(struct ring *r, uint16_t old, uint16_t new_idx)
{
    /* Linux's virtqueue_kick_prepare(): a full barrier between publishing and reading the
     * device's suppression state. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    int need = r->event_idx ? vring_need_event(*avail_event(r), new_idx, old)
                            : !(__atomic_load_n(&r->used->flags, __ATOMIC_ACQUIRE) & VRING_USED_F_NO_NOTIFY);
    if (need) {
        uint64_t one = 1;
        ssize_t rc = write(r->kick_fd, &one, sizeof one); /* a lost kick shows as wait_used's timeout */
        (void)rc;
    }
}

/* Waits for used->idx == until. Like Linux's virtio driver (virtqueue_enable_cb), each time it
 * has looked at the used ring it asks to be interrupted by the next used entry: a device that
 * notifies per chain interrupts it again while it works; one that notifies per batch, once. */
static int wait_used(struct ring *r, uint16_t until, int64_t deadline)
{
    for (;;) {
        uint16_t idx = __atomic_load_n(&r->used->idx, __ATOMIC_ACQUIRE);
        if (idx == until)
            return 0;
        if (r->event_idx) {
            *used_event(r) = idx;
            __atomic_thread_fence(__ATOMIC_SEQ_CST);
            if (__atomic_load_n(&r->used->idx, __ATOMIC_ACQUIRE) != idx)
                continue;
        }
        int left = (int)(deadline - now_ms());
        if (left <= 0)
            return -ETIMEDOUT;
        struct pollfd p = {.fd = r->call_fd, .events = POLLIN};
        int rc = poll(&p, 1, left);
        if (rc < 0 && errno != EINTR)
            return -errno;
        if (rc > 0) {
            uint64_t v;
            if (read(r->call_fd, &v, sizeof v) == sizeof v)
                r->interrupts++;
        }
    }
}

struct display;
static int display_wait(struct display *d, uint64_t count, int64_t deadline);

/* Returns 0, -ETIMEDOUT, -EPROTO (a wrong head or response type: *bad is its round*65536+slot). */
int drive(struct ring *r, const struct chain *chains, int nchains, int rounds, struct display *d,
          uint64_t updates_from, int updates_per_round, int timeout_ms, int *bad)
{
    int64_t deadline = now_ms() + timeout_ms;
    for (int round = 0; round < rounds; round++) {
        uint16_t old = r->avail_idx;
        for (int i = 0; i < nchains; i++) {
            *chains[i].resp = 0;
            r->avail->ring[(uint16_t)(old + i) % r->num] = chains[i].head;
        }
        uint16_t new_idx = (uint16_t)(old + nchains);
        *used_event(r) = old; /* interrupt at the first used entry */
        __atomic_store_n(&r->avail->idx, new_idx, __ATOMIC_RELEASE);
        r->avail_idx = new_idx;
        kick(r, old, new_idx);
        int rc = wait_used(r, new_idx, deadline);
        if (rc)
            return rc;
        for (int i = 0; i < nchains; i++) {
            struct vring_used_elem *e = &r->used->ring[(uint16_t)(r->last_used + i) % r->num];
            if (e->id != chains[i].head || e->len != chains[i].resp_len || *chains[i].resp != chains[i].want_type) {
                *bad = round * 65536 + i;
                return -EPROTO;
            }
        }
        r->last_used = new_idx;
        if (updates_per_round) {
            rc = display_wait(d, updates_from + (uint64_t)updates_per_round * (round + 1), deadline);
            if (rc)
                return rc;
        }
    }
    return 0;
}

/* ---- the display side ------------------------------------------------------------------------ */

struct gpu_header {
    uint32_t request, flags, size;
} __attribute__((packed));

struct display {
    int fd;
    uint32_t width, height;
    uint64_t protocol_features;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint64_t updates, update_bytes, messages;
    int closed;
    char error[160];
    uint8_t *buf;
    size_t cap;
};

static int read_exact(int fd, void *p, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t k = read(fd, (char *)p + got, n - got);
        if (k == 0)
            return 0;
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        got += (size_t)k;
    }
    return 1;
}

static int reply(struct display *d, uint32_t request, const void *payload, uint32_t size)
{
    struct gpu_header h = {request, VHOST_USER_GPU_MSG_FLAG_REPLY, size};
    struct iovec iov[2] = {{&h, sizeof h}, {(void *)payload, size}};
    struct msghdr m = {.msg_iov = iov, .msg_iovlen = 2};
    return sendmsg(d->fd, &m, MSG_NOSIGNAL) == (ssize_t)(sizeof h + size) ? 0 : -1;
}

static void *display_run(void *arg)
{
    struct display *d = arg;
    for (;;) {
        struct gpu_header h;
        if (read_exact(d->fd, &h, sizeof h) <= 0)
            break;
        if (h.size > (64u << 20)) {
            snprintf(d->error, sizeof d->error, "message %u of %u bytes", h.request, h.size);
            break;
        }
        if (h.size > d->cap) {
            free(d->buf);
            d->cap = h.size;
            d->buf = malloc(d->cap);
            if (!d->buf) {
                snprintf(d->error, sizeof d->error, "out of memory");
                break;
            }
        }
        if (h.size && read_exact(d->fd, d->buf, h.size) <= 0)
            break;
        if (h.request == VHOST_USER_GPU_GET_PROTOCOL_FEATURES) {
            reply(d, h.request, &d->protocol_features, sizeof d->protocol_features);
        } else if (h.request == VHOST_USER_GPU_GET_DISPLAY_INFO) {
            struct virtio_gpu_resp_display_info info;
            memset(&info, 0, sizeof info);
            info.hdr.type = VIRTIO_GPU_RESP_OK_DISPLAY_INFO;
            info.pmodes[0].r.width = d->width;
            info.pmodes[0].r.height = d->height;
            info.pmodes[0].enabled = 1;
            reply(d, h.request, &info, sizeof info);
        }
        pthread_mutex_lock(&d->mu);
        d->messages++;
        if (h.request == VHOST_USER_GPU_UPDATE) {
            d->updates++;
            d->update_bytes += h.size;
            pthread_cond_broadcast(&d->cv);
        }
        pthread_mutex_unlock(&d->mu);
    }
    pthread_mutex_lock(&d->mu);
    d->closed = 1;
    pthread_cond_broadcast(&d->cv);
    pthread_mutex_unlock(&d->mu);
    return NULL;
}

struct display *display_start(int fd, uint32_t width, uint32_t height, uint64_t protocol_features)
{
    struct display *d = calloc(1, sizeof *d);
    if (!d)
        return NULL;
    d->fd = fd;
    d->width = width;
    d->height = height;
    d->protocol_features = protocol_features;
    pthread_mutex_init(&d->mu, NULL);
    pthread_cond_init(&d->cv, NULL);
    if (pthread_create(&d->thread, NULL, display_run, d)) {
        free(d);
        return NULL;
    }
    return d;
}

static int display_wait(struct display *d, uint64_t count, int64_t deadline)
{
    int rc = 0;
    pthread_mutex_lock(&d->mu);
    while (d->updates < count && !d->closed) {
        int64_t ms = deadline - now_ms();
        if (ms <= 0) {
            rc = -ETIMEDOUT;
            break;
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += ms / 1000;
        ts.tv_nsec += (ms % 1000) * 1000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&d->cv, &d->mu, &ts);
    }
    if (!rc && d->updates < count)
        rc = -EPIPE;
    pthread_mutex_unlock(&d->mu);
    return rc;
}

int display_wait_updates(struct display *d, uint64_t count, int timeout_ms)
{
    return display_wait(d, count, now_ms() + timeout_ms);
}

uint64_t display_updates(struct display *d)
{
    pthread_mutex_lock(&d->mu);
    uint64_t n = d->updates;
    pthread_mutex_unlock(&d->mu);
    return n;
}

uint64_t display_messages(struct display *d)
{
    pthread_mutex_lock(&d->mu);
    uint64_t n = d->messages;
    pthread_mutex_unlock(&d->mu);
    return n;
}

const char *display_error(struct display *d) { return d->error; }

/* Ends the thread (the socket is shut down; the caller closes it) and frees *d*. */
void display_stop(struct display *d)
{
    shutdown(d->fd, SHUT_RDWR);
    pthread_join(d->thread, NULL);
    free(d->buf);
    free(d);
}
