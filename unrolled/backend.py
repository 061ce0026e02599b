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
    """Run BLAS on one thread (``UNROLLED_THREADS=N`` overrides) for the rest of the process.

    The matrices of an RNN step are small: extra BLAS threads only add synchronisation,
    which is many times slower on a busy machine. Used by the CLI, the demos and the tests.
    """
    import os

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(int(os.environ.get("UNROLLED_THREADS", "1")))
