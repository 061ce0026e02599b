"""The numeric building blocks of the compiled loop (numba): jit flags and tanh.

The cells' own arithmetic is not written here: it is generated from each cell's one
definition (:mod:`unrolled.kernels.compiled`).

float32 uses a rational tanh (the one Eigen uses: |error| below 2 float32 ulps on
[-7.9, 7.9], exactly ±1 beyond in float32) that the compiler vectorises; float64 uses
the C library's ``tanh``, so float64 results agree with NumPy's to rounding.
"""
import math

import numba
import numpy as np

_f = np.float32
_A1, _A3, _A5 = _f(4.89352455891786e-03), _f(6.37261928875436e-04), _f(1.48572235717979e-05)
_A7, _A9 = _f(5.12229709037114e-08), _f(-8.60467152213735e-11)
_A11, _A13 = _f(2.00018790482477e-13), _f(-2.76076847742355e-16)
_B0, _B2 = _f(4.89352518554385e-03), _f(2.26843463243900e-03)
_B4, _B6 = _f(1.18534705686654e-04), _f(1.19825839466702e-06)
_CLAMP = _f(7.90531110763549805)
_HALF, _ONE, _ZERO = _f(0.5), _f(1.0), _f(0.0)

# error_model="numpy": no ZeroDivisionError branch in divisions, so the loops vectorise
JIT_FLAGS = {"cache": True, "nogil": True, "boundscheck": False, "error_model": "numpy"}
# float32 kernels may also contract to FMAs and reassociate (not assume away NaN or inf):
# that is what lets LLVM vectorise the rational tanh fully; float64 stays strict. A dict,
# not a set: a set's order changes from process to process, and with it the key of
# numba's on-disk cache
FASTMATH32 = {"contract": True, "reassoc": True, "nsz": True, "arcp": True}
_jit = numba.njit(**JIT_FLAGS)
_jit32 = numba.njit(**JIT_FLAGS, fastmath=FASTMATH32)


@_jit32
def _tanh32(x):
    x = min(max(x, -_CLAMP), _CLAMP)
    x2 = x * x
    p = x2 * _A13 + _A11
    p = p * x2 + _A9
    p = p * x2 + _A7
    p = p * x2 + _A5
    p = p * x2 + _A3
    p = p * x2 + _A1
    q = x2 * _B6 + _B4
    q = q * x2 + _B2
    q = q * x2 + _B0
    return x * p / q


@_jit
def _tanh64(x):
    return math.tanh(x)


@_jit32
def _cast32(x):
    return np.float32(x)


@_jit
def _cast64(x):
    return np.float64(x)


def stabilize(prefix, names):
    """Give the compiled functions among ``names`` (a dict) identities fixed across processes.

    numba keys its on-disk cache of a closure on the pickled closure, and a compiled
    function pickles with a random per-process id: closures that call other compiled
    functions (every kernel here) would miss the cache, compile again in every process
    and add an entry to the index each time. A fixed id per function and dtype makes the
    key the same from one process to the next. (Uses numba's ``_set_uuid``; where it is
    missing, the kernels still work and compile per process.)
    """
    for key, fn in names.items():  # compiled functions and intrinsics have _set_uuid
        if hasattr(fn, "_set_uuid"):
            try:
                fn._set_uuid(f"{prefix}.{key}")
            except Exception:  # already set, or another numba
                pass
