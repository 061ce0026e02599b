"""Which implementation runs the per-step arithmetic of the time loop.

Three backends share the one loop in :mod:`unrolled.unroll`:

``"reference"``
    the cells' readable ``step``/``step_back``: new arrays every step; the definition
    the others are checked against.
``"numpy"``
    the fast path in pure NumPy (or CuPy): every per-step array is preallocated before
    the loop and each step writes into it with ``out=`` arguments; nothing is allocated
    inside the loop.
``"numba"``
    the same loop and buffers, with each cell's gate arithmetic fused into one compiled
    kernel per step (forward and backward); the matrix products stay with NumPy's BLAS.
    Needs the optional ``numba`` package and NumPy arrays.
``"cupy"``
    the same fused kernels as CUDA kernels, for CuPy arrays on a GPU (one launch per
    step for the gate math beside cuBLAS's product).
``"auto"`` (the default)
    ``"numba"`` for NumPy arrays where numba is installed, else ``"numpy"``;
    ``"cupy"`` for CuPy arrays.

Choose with :func:`set_backend`, the :func:`backend` context manager, or the environment
variable ``UNROLLED_BACKEND`` (read once, at import). A backend that does not fit the
arrays of a call (numba with CuPy arrays, cupy with NumPy arrays) runs the ``"numpy"``
path written with the arrays' own module.
"""
import contextlib
import os

BACKENDS = ("auto", "reference", "numpy", "numba", "cupy")


_has_numba = []


def numba_available():
    """True where the optional numba package can be imported (looked up once)."""
    if not _has_numba:
        try:
            import numba  # noqa: F401
        except ImportError:
            _has_numba.append(False)
        else:
            _has_numba.append(True)
    return _has_numba[0]


def _check(name):
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    if name == "numba" and not numba_available():
        raise ValueError("backend 'numba' needs the numba package: pip install numba, "
                         "or choose 'numpy'")
    return name


def _default():
    env = os.environ.get("UNROLLED_BACKEND")
    if env:
        return _check(env.strip().lower())
    return "auto"


_current = [_default()]


def set_backend(name):
    """Select the backend of the time loop for the whole process; returns the old one."""
    old = _current[0]
    _current[0] = _check(name)
    return old


def get_backend():
    """The name of the backend in use."""
    return _current[0]


@contextlib.contextmanager
def backend(name):
    """``with backend("numpy"): ...`` runs the block on another backend."""
    old = set_backend(name)
    try:
        yield
    finally:
        set_backend(old)


def resolve(name, xp):
    """The backend that will really run: ``name`` (or the current one) for array module xp.

    Returns "reference", "numpy", "numba" or "cupy".
    """
    name = _current[0] if name is None else _check(name)
    mod = getattr(xp, "__name__", "")
    if name == "auto":
        if mod == "cupy":
            return "cupy"
        return "numba" if mod == "numpy" and numba_available() else "numpy"
    if (name == "numba" and mod != "numpy") or (name == "cupy" and mod != "cupy"):
        return "numpy"
    return name


def kernels_for(name, dtype):
    """The fused kernel library for a resolved backend and dtype (None for NumPy ufuncs)."""
    if name == "numba":
        from . import cells_numba

        return cells_numba.library(dtype)
    if name == "cupy":
        from . import cells_cupy

        return cells_cupy.library(dtype)
    return None
