# Rules shared by every compiled module (included by _ring.pyx and _pixels.pyx).

# The GIL rule: a copy of guest memory (gather, scatter, a pixel rectangle) runs without the
# GIL when it moves at least NOGIL_COPY bytes, and keeps it below that, where releasing and
# taking it back again costs more than the copy. Code without the GIL touches only C memory
# whose buffers are held (Py_buffer or a holder object) for the whole copy; every check on
# guest-controlled values is done before, with the GIL.
cdef enum:
    NOGIL_COPY = 256 * 1024
