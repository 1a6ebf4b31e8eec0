# cython: language_level=3
"""A thin binding to libvirglrenderer (``<virgl/virglrenderer.h>``): the renderer that parses a
guest's 3D command streams. Device logic stays in Python (:mod:`.virgl`); this module only
turns Python values into the library's calls and reports its return codes.

virglrenderer is one renderer per process (global state), so this module is too: :func:`init`
once, then the calls below. Every call is made with the GIL held on the loop's thread; the
library calls back (fences, its log) from inside those calls, on the same thread.

Guest pages are handed to the library by address (:class:`Iov`): it keeps the iovec array of an
attached backing and reads and writes guest memory through it later, so an :class:`Iov` holds
its buffers (the guest memory mapping can't go away under it) until it is released, and it is
released only after the library has let go of it (:func:`detach_iov`).
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset
from posix.dlfcn cimport RTLD_LAZY, RTLD_LOCAL, dlclose, dlopen
from posix.uio cimport iovec

cdef extern from "<virgl/virglrenderer.h>":
    ctypedef void* virgl_renderer_gl_context
    struct virgl_renderer_gl_ctx_param:
        pass

    struct virgl_renderer_callbacks:
        int version
        void (*write_fence)(void *cookie, uint32_t fence) noexcept
        virgl_renderer_gl_context (*create_gl_context)(void *cookie, int scanout_idx,
                                                       virgl_renderer_gl_ctx_param *param) noexcept
        void (*destroy_gl_context)(void *cookie, virgl_renderer_gl_context ctx) noexcept
        int (*make_current)(void *cookie, int scanout_idx, virgl_renderer_gl_context ctx) noexcept
        int (*get_drm_fd)(void *cookie) noexcept

    struct virgl_renderer_resource_create_args:
        uint32_t handle
        uint32_t target
        uint32_t format
        uint32_t bind
        uint32_t width
        uint32_t height
        uint32_t depth
        uint32_t array_size
        uint32_t last_level
        uint32_t nr_samples
        uint32_t flags

    struct virgl_renderer_resource_info:
        uint32_t handle
        uint32_t virgl_format
        uint32_t width
        uint32_t height
        uint32_t depth
        uint32_t flags
        uint32_t tex_id
        uint32_t stride
        int drm_fourcc

    int VIRGL_RENDERER_USE_EGL
    int VIRGL_RENDERER_THREAD_SYNC
    int VIRGL_RENDERER_USE_SURFACELESS
    int VIRGL_RENDERER_USE_GLES

    int virgl_renderer_init(void *cookie, int flags, virgl_renderer_callbacks *cb)
    void virgl_renderer_poll()
    int virgl_renderer_get_poll_fd()
    void virgl_renderer_get_cap_set(uint32_t set, uint32_t *max_ver, uint32_t *max_size)
    void virgl_renderer_fill_caps(uint32_t set, uint32_t version, void *caps)
    int virgl_renderer_context_create(uint32_t handle, uint32_t nlen, const char *name)
    void virgl_renderer_context_destroy(uint32_t handle)
    int virgl_renderer_submit_cmd(void *buffer, int ctx_id, int ndw)
    int virgl_renderer_resource_create(virgl_renderer_resource_create_args *args, iovec *iov, uint32_t num_iovs)
    void virgl_renderer_resource_unref(uint32_t res_handle)
    int virgl_renderer_resource_attach_iov(int res_handle, iovec *iov, int num_iovs)
    void virgl_renderer_resource_detach_iov(int res_handle, iovec **iov, int *num_iovs)
    void virgl_renderer_ctx_attach_resource(int ctx_id, int res_handle)
    void virgl_renderer_ctx_detach_resource(int ctx_id, int res_handle)
    int virgl_renderer_create_fence(int client_fence_id, uint32_t ctx_id)
    int virgl_renderer_resource_get_info(int res_handle, virgl_renderer_resource_info *info)

# struct virgl_box is only declared in the public header; its layout is virtio_gpu_box's
# (x, y, z, w, h, d), which is what QEMU passes too. Its debug callback takes a va_list, which
# Cython can't declare: a small C shim formats the message and hands Python a string.
cdef extern from *:
    """
    #include <stdarg.h>
    #include <stdio.h>
    #include <virgl/virglrenderer.h>
    struct virgl_box { uint32_t x, y, z, w, h, d; };
    typedef struct virgl_box vhs_box;
    static void (*vhs_log_sink)(const char *msg);
    static void vhs_log(const char *fmt, va_list ap) {
        char msg[256];
        vsnprintf(msg, sizeof msg, fmt, ap);
        if (vhs_log_sink) vhs_log_sink(msg);
    }
    static void vhs_set_log(void (*sink)(const char *)) {
        vhs_log_sink = sink;
        virgl_set_debug_callback(sink ? vhs_log : NULL);
    }
    static int vhs_transfer_read(uint32_t handle, uint32_t ctx, uint32_t level, uint32_t stride,
                                 uint32_t layer_stride, vhs_box *box, uint64_t offset,
                                 struct iovec *iov, int n) {
        return virgl_renderer_transfer_read_iov(handle, ctx, level, stride, layer_stride,
                                                box, offset, iov, n);
    }
    static int vhs_transfer_write(uint32_t handle, uint32_t ctx, uint32_t level, uint32_t stride,
                                  uint32_t layer_stride, vhs_box *box, uint64_t offset,
                                  struct iovec *iov, int n) {
        return virgl_renderer_transfer_write_iov(handle, ctx, level, stride, layer_stride,
                                                 box, offset, iov, n);
    }
    """
    ctypedef struct vhs_box:
        uint32_t x, y, z, w, h, d
    void vhs_set_log(void (*sink)(const char *) noexcept)
    int vhs_transfer_read(uint32_t handle, uint32_t ctx, uint32_t level, uint32_t stride, uint32_t layer_stride,
                          vhs_box *box, uint64_t offset, iovec *iov, int n)
    int vhs_transfer_write(uint32_t handle, uint32_t ctx, uint32_t level, uint32_t stride, uint32_t layer_stride,
                           vhs_box *box, uint64_t offset, iovec *iov, int n)

USE_EGL = VIRGL_RENDERER_USE_EGL
THREAD_SYNC = VIRGL_RENDERER_THREAD_SYNC
USE_SURFACELESS = VIRGL_RENDERER_USE_SURFACELESS
USE_GLES = VIRGL_RENDERER_USE_GLES

cdef virgl_renderer_callbacks _callbacks
cdef bint _initialized = False
#: A dup of this fd is what the library gets when it asks for a DRM device (-1: it finds one).
cdef int _drm_fd = -1
#: Fence ids the library signalled since the last poll().
cdef list _signaled = []
#: Called with each line the library logs (None: dropped).
cdef object _log_sink = None


cdef void _write_fence(void *cookie, uint32_t fence) noexcept with gil:
    _signaled.append(fence)


cdef int _get_drm_fd(void *cookie) noexcept with gil:
    import os

    if _drm_fd < 0:
        return -1
    try:
        return os.dup(_drm_fd)
    except OSError:
        return -1


cdef void _log(const char *msg) noexcept with gil:
    if _log_sink is not None:
        try:
            _log_sink(msg.decode("utf-8", "replace").rstrip())
        except Exception:
            pass


def init(int flags, int drm_fd=-1, log=None):
    """Initialise the renderer with *flags* (USE_EGL, USE_SURFACELESS, ...). *drm_fd*: the render
    node to use (the library gets a dup of it; -1: it looks for one itself). *log*: called with
    each message of the library. OSError with its return code if it fails."""
    global _initialized, _drm_fd, _log_sink
    if _initialized:
        raise RuntimeError("virglrenderer is already initialised in this process")
    _log_sink = log
    if log is not None:
        vhs_set_log(_log)
    _drm_fd = drm_fd
    memset(&_callbacks, 0, sizeof(_callbacks))
    _callbacks.version = 2
    _callbacks.write_fence = _write_fence
    _callbacks.get_drm_fd = _get_drm_fd
    # The cookie must not be NULL: the library refuses to initialise without one.
    cdef int rc = virgl_renderer_init(&_callbacks, flags, &_callbacks)
    if rc != 0:
        raise OSError(-rc if rc < 0 else rc, "virgl_renderer_init failed")
    _initialized = True


def can_load(name: str) -> bool:
    """Whether the dynamic linker finds and loads the shared library *name* (it is unloaded again)."""
    cdef bytes path = name.encode()
    cdef void *handle = dlopen(path, RTLD_LAZY | RTLD_LOCAL)
    if handle == NULL:
        return False
    dlclose(handle)
    return True


def initialized() -> bool:
    return _initialized


def poll() -> list:
    """Let the library check its fences; the fence ids signalled since the last call."""
    global _signaled
    virgl_renderer_poll()
    done = _signaled
    _signaled = []
    return done


def poll_fd() -> int:
    """An fd that is readable when fences may have signalled (-1: the library has none)."""
    return virgl_renderer_get_poll_fd()


def capset_info(uint32_t capset_id):
    """(max version, max size) of a capability set; (0, 0) if the library has none."""
    cdef uint32_t ver = 0, size = 0
    virgl_renderer_get_cap_set(capset_id, &ver, &size)
    return ver, size


def capset(uint32_t capset_id, uint32_t version, uint32_t size) -> bytes:
    """The capability set's bytes (*size*: its max size, from capset_info)."""
    if size == 0 or size > (1 << 20):
        raise ValueError(f"capset size {size}")
    cdef bytearray buf = bytearray(size)
    cdef char *p = buf
    virgl_renderer_fill_caps(capset_id, version, p)
    return bytes(buf)


def context_create(uint32_t ctx_id, bytes name) -> int:
    """0, or the library's error code."""
    return virgl_renderer_context_create(ctx_id, len(name), name)


def context_destroy(uint32_t ctx_id) -> None:
    virgl_renderer_context_destroy(ctx_id)


def submit(uint32_t ctx_id, const unsigned char[::1] data) -> int:
    """Run a command stream (whole 32-bit words of *data*) in context *ctx_id*: 0 or an error."""
    if data.shape[0] < 4:
        return 0
    return virgl_renderer_submit_cmd(<void*>&data[0], ctx_id, data.shape[0] // 4)


def resource_create(uint32_t handle, uint32_t target, uint32_t fmt, uint32_t bind, uint32_t width,
                    uint32_t height, uint32_t depth, uint32_t array_size, uint32_t last_level,
                    uint32_t nr_samples, uint32_t flags) -> int:
    """0, or the library's error code."""
    cdef virgl_renderer_resource_create_args args
    args.handle = handle
    args.target = target
    args.format = fmt
    args.bind = bind
    args.width = width
    args.height = height
    args.depth = depth
    args.array_size = array_size
    args.last_level = last_level
    args.nr_samples = nr_samples
    args.flags = flags
    return virgl_renderer_resource_create(&args, NULL, 0)


def resource_unref(uint32_t handle) -> None:
    virgl_renderer_resource_unref(handle)


def resource_info(uint32_t handle):
    """(format, width, height, flags, stride) of a resource, or None."""
    cdef virgl_renderer_resource_info info
    if virgl_renderer_resource_get_info(handle, &info) != 0:
        return None
    return info.virgl_format, info.width, info.height, info.flags, info.stride


def ctx_attach_resource(uint32_t ctx_id, uint32_t handle) -> None:
    virgl_renderer_ctx_attach_resource(ctx_id, handle)


def ctx_detach_resource(uint32_t ctx_id, uint32_t handle) -> None:
    virgl_renderer_ctx_detach_resource(ctx_id, handle)


def create_fence(uint32_t fence_id) -> int:
    """A fence on the renderer's timeline: poll() reports *fence_id* once all work before it is
    done. 0, or the library's error code."""
    return virgl_renderer_create_fence(<int>fence_id, 0)


cdef class Iov:
    """Byte buffers (guest pages, or a host buffer) as the iovec array the library takes.

    The buffers are held (their exporters can't release them) until :meth:`release`.
    """

    cdef iovec *vec
    cdef Py_buffer *bufs
    cdef int n
    cdef readonly object total

    def __cinit__(self, views, bint writable=False):
        views = list(views)
        cdef int count = len(views)
        cdef int i
        self.n = 0
        self.total = 0
        self.vec = <iovec*>malloc(max(count, 1) * sizeof(iovec))
        self.bufs = <Py_buffer*>malloc(max(count, 1) * sizeof(Py_buffer))
        if self.vec == NULL or self.bufs == NULL:
            raise MemoryError()
        for i in range(count):
            PyObject_GetBuffer(views[i], &self.bufs[i], PyBUF_WRITABLE if writable else PyBUF_SIMPLE)
            self.n = i + 1
            self.vec[i].iov_base = self.bufs[i].buf
            self.vec[i].iov_len = self.bufs[i].len
            self.total += self.bufs[i].len

    def __dealloc__(self):
        self.release()
        free(self.vec)
        free(self.bufs)

    def release(self) -> None:
        cdef int i
        for i in range(self.n):
            PyBuffer_Release(&self.bufs[i])
        self.n = 0
        self.total = 0

    def __len__(self):
        return self.n


def attach_iov(uint32_t handle, Iov iov) -> int:
    """Give resource *handle* the backing *iov* (kept by the library until detach_iov). 0 or an
    error code."""
    return virgl_renderer_resource_attach_iov(handle, iov.vec, iov.n)


def detach_iov(uint32_t handle) -> None:
    """The library lets go of the resource's backing (its Iov may then be released)."""
    cdef iovec *vec = NULL
    cdef int n = 0
    virgl_renderer_resource_detach_iov(handle, &vec, &n)


cdef inline int _transfer(bint read, uint32_t handle, uint32_t ctx_id, uint32_t level, uint32_t stride,
                          uint32_t layer_stride, box, uint64_t offset, Iov iov):
    cdef vhs_box b
    b.x, b.y, b.z, b.w, b.h, b.d = box
    cdef iovec *vec = NULL
    cdef int n = 0
    if iov is not None:
        vec, n = iov.vec, iov.n
    if read:
        return vhs_transfer_read(handle, ctx_id, level, stride, layer_stride, &b, offset, vec, n)
    return vhs_transfer_write(handle, ctx_id, level, stride, layer_stride, &b, offset, vec, n)


def transfer_read(uint32_t handle, uint32_t ctx_id, uint32_t level, uint32_t stride, uint32_t layer_stride,
                  box, uint64_t offset, Iov iov=None) -> int:
    """Copy *box* of the resource into *iov* (None: its attached backing), starting at *offset*.
    0 or an error code."""
    return _transfer(True, handle, ctx_id, level, stride, layer_stride, box, offset, iov)


def transfer_write(uint32_t handle, uint32_t ctx_id, uint32_t level, uint32_t stride, uint32_t layer_stride,
                   box, uint64_t offset, Iov iov=None) -> int:
    """Copy *box* of the resource from *iov* (None: its attached backing). 0 or an error code."""
    return _transfer(False, handle, ctx_id, level, stride, layer_stride, box, offset, iov)
