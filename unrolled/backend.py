"""The array module as a parameter.

Cells and the time loop never import NumPy for array math; they receive ``xp`` (NumPy by
default, CuPy or any module with NumPy's API on request) and work with it.
"""
import numpy as np


def get_xp(*arrays):
    """The array module of the first array that is not a NumPy array, else NumPy."""
    for a in arrays:
        mod = type(a).__module__
        if mod.startswith("cupy"):
            import cupy

            return cupy
    return np


def to_numpy(a):
    """A NumPy copy of any array (CuPy arrays are brought to the host)."""
    if hasattr(a, "get"):
        return a.get()
    return np.asarray(a)


def limit_blas_threads():
    """Run BLAS on ``unrolled.settings.threads`` threads (every core by default;
    ``UNROLLED_THREADS``) for the rest of the process.

    Those threads serve the products over all steps (the input projection, the weight
    gradients). The steps themselves never use BLAS threads: the compiled loop splits the
    batch into row blocks over its own threads and calls BLAS on one thread inside them
    (BLAS threads would synchronise at every step, many times slower on a busy machine).
    Used by the CLI, the demos and the tests.
    """
    from .settings import settings

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(settings.threads)


_reuse = []


def reuse_freed_memory(mmap_threshold=256 << 20, trim_threshold=1 << 30):
    """Keep freed large blocks in the process heap, for the next step to reuse (glibc only).

    By default glibc gives every large array fresh pages from the operating system and
    returns them when the array is freed, so each training step pays a page fault per
    4 KiB of its tape (1,770 faults, about 45 % of a step, for an LSTM with H=64, B=32,
    T=100). With blocks up to ``mmap_threshold`` bytes taken from the heap and up to
    ``trim_threshold`` bytes of free heap kept, a step reuses the last step's memory. The
    price: the process keeps that much freed memory as its own. Called by the trainer and
    the command line; a no-op (returns False) where the C library has no ``mallopt``.
    """
    if _reuse:
        return True
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    ok = mallopt(M_MMAP_THRESHOLD, int(mmap_threshold)) and mallopt(M_TRIM_THRESHOLD,
                                                                     int(trim_threshold))
    if ok:
        _reuse.append(True)
    return bool(ok)
