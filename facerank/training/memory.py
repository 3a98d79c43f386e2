"""How training asks glibc's malloc to keep the memory it frees (a measured speed-up)."""

from __future__ import annotations

import contextlib
import ctypes
import platform

# mallopt(3) parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_GLIBC_MMAP_MAX, _GLIBC_TRIM_THRESHOLD = 65536, 128 * 1024  # glibc's defaults


@contextlib.contextmanager
def malloc_keeps_freed_memory():
    """While training, let glibc's malloc reuse freed memory instead of handing it back.

    Every step allocates and frees the same large activation buffers. By default glibc serves big
    blocks with fresh mmap()s and unmaps them on free, so the kernel faults in and zeroes them
    again at every step. Measured on ResNet50, batch 32, one thread, 224 px, fresh processes in
    pairs: ~890k page faults and ~2 s of system time a step, against ~120k and ~0.5 s with this,
    13-16% fewer CPU-seconds a step; at 112 px the faults (25-40k a step) vanish too, a gain of
    a few percent. Peak memory grows by ~25%; the defaults come back, and the memory is
    released, on exit. No-op where the C library is not glibc.
    """
    libc = None
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        try:
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(_M_MMAP_MAX, 0)         # big blocks from the heap, reusable
            libc.mallopt(_M_TRIM_THRESHOLD, -1)  # and the heap never shrinks under us
        except (OSError, AttributeError):
            libc = None
    try:
        yield
    finally:
        if libc is not None:
            libc.mallopt(_M_MMAP_MAX, _GLIBC_MMAP_MAX)
            libc.mallopt(_M_TRIM_THRESHOLD, _GLIBC_TRIM_THRESHOLD)
            libc.malloc_trim(0)
