"""Which loop runs a cell: the backends, and the one place that decides.

``"reference"`` (also called ``"numpy"``)
    the readable loop: the cell's ``step``/``step_back`` on whole arrays (NumPy or CuPy);
    the definition the others are checked against.
``"numba"``
    the compiled CPU loop, generated from the cell's definition
    (:mod:`unrolled.kernels.compiled`): the recurrent product of each step through
    NumPy's BLAS and the cell's arithmetic fused, with no Python between steps.
``"cupy"``
    the GPU loop for CuPy arrays, recorded as CUDA graphs (:mod:`.loop_cupy`).
``"auto"`` (the default)
    the compiled loop where it can run, else the readable one.

Choose with ``unrolled.settings.backend`` (or :func:`set_backend`, the :func:`backend`
context manager, the environment variable ``UNROLLED_BACKEND``). :func:`plan` is the
single place that picks the loop for a call; :func:`unrolled.explain` prints its answer.
"""
import contextlib
import warnings
from dataclasses import dataclass

from ..settings import BACKENDS, settings

_has_numba = []


def numba_available():
    """True where the numba package can be imported (looked up once)."""
    if not _has_numba:
        try:
            import numba  # noqa: F401
        except ImportError:
            _has_numba.append(False)
        else:
            _has_numba.append(True)
    return _has_numba[0]


def set_backend(name):
    """Select the backend for the whole process; returns the old one."""
    old = settings.backend
    settings.backend = name
    return old


def get_backend():
    """The name of the backend in use."""
    return settings.backend


@contextlib.contextmanager
def backend(name):
    """``with backend("reference"): ...`` runs the block on another backend."""
    with settings.override(backend=name):
        yield


def resolve(name, xp):
    """The backend that will really run for array module ``xp``: "reference", "numba" or
    "cupy"."""
    name = settings.backend if name is None else name
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    mod = getattr(xp, "__name__", "")
    if name == "auto":
        if mod == "cupy":
            return "cupy"
        return "numba" if mod == "numpy" and numba_available() else "reference"
    if (name == "numba" and mod != "numpy") or (name == "cupy" and mod != "cupy"):
        return "reference"
    return "reference" if name == "numpy" else name


@dataclass(frozen=True)
class Path:
    """The loop a call runs (``name``: "compiled", "graphs", "readable" or "decoupled")
    and why."""

    name: str
    why: str

    @property
    def compiled(self):
        return self.name in ("compiled", "graphs")


_warned = set()


def plan(cell, xp, dtype, backend=None, masked=False, truncated=False, teacher=False,
         warn=True, recurrent_mask=False):
    """THE choice of loop for one call of :func:`unrolled.unroll.forward`/``backward``."""
    import numpy as np

    if teacher:
        return Path("decoupled", "teacher forcing: the given states make the steps "
                    "independent, so all of them run as one batched step")
    be = resolve(backend, xp)
    cname = getattr(cell, "name", type(cell).__name__)
    if settings.scan == "parallel" and callable(getattr(cell, "linear", None)) \
            and not recurrent_mask and be != "reference":
        return Path("scan", f"cell {cname!r} is a linear recurrence of its input: all steps "
                    "at once (settings.scan = 'parallel', unrolled.scan)")
    if be == "reference":
        return Path("readable", f"backend {settings.backend if backend is None else backend!r}"
                    " runs the readable loop")
    compiles = getattr(cell, "compiles", None)
    if compiles is None or not compiles():
        why = (f"cell {cname!r} has no per-unit definition (its step is general array code), "
               "so it runs on the readable loop")
        if warn and cname not in _warned and compiles is not None:
            _warned.add(cname)
            warnings.warn(f"unrolled: {why} (see unrolled.explain)", RuntimeWarning,
                          stacklevel=4)
        return Path("readable", why)
    if np.dtype(dtype) not in (np.float32, np.float64):
        return Path("readable", f"the compiled loop covers float32 and float64, not {dtype}")
    if be == "cupy":
        if masked or truncated or recurrent_mask:
            return Path("readable", "the CUDA-graph loop covers plain batches; masks, "
                        "truncation and recurrent dropout run on the readable loop")
        if not settings.cuda_graphs:
            return Path("readable", "settings.cuda_graphs is off")
        return Path("graphs", f"cell {cname!r} on the GPU as recorded CUDA graphs")
    if not settings.compiled_loop:
        return Path("readable", "settings.compiled_loop is off (UNROLLED_COMPILED_LOOP=0)")
    from . import loop_numba

    if not loop_numba.available():
        return Path("readable", "NumPy's BLAS exports no 64-bit CBLAS gemm that the "
                    "compiled loop can call")
    return Path("compiled", f"cell {cname!r} compiled from its definition (numba), "
                "NumPy's BLAS for the products")
