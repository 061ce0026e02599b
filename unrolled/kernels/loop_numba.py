"""The compiled loop's access to BLAS: the "numba" backend without Python between steps.

Each cell's loop is generated from its definition (:mod:`.compiled`) and compiled whole,
so no Python runs between steps. This module holds what every generated loop calls:
the BLAS that NumPy itself uses (OpenBLAS, found with threadpoolctl), bound by symbol as
numba intrinsics, for each step's recurrent product; the typed tanh; the accumulating
product of the weight gradients.

Conventions of the compiled loop (arrays C-contiguous, time-major):
``S``  tuple of state tapes (T+1, B, H); ``C`` tuple of cache tapes (T or 1, B, H);
``U``  the cell's per-unit parameter vectors (n, H);
``W``  the recurrent weight: (H, G) transposed for the forward, (G, H) for the backward.
"""
import ctypes
import os

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .cells_numba import stabilize

_FOUND = []     # [True/False] once looked up: whether the CBLAS symbols are registered
_LOOPS = {}     # (dtype, cell kind) -> (forward, backward)


def _find_gemm():
    """Register the BLAS's 64-bit-integer CBLAS gemm and gemv with LLVM under our own
    names (``unrolled_cblas_sgemm`` ...); True where all four were found."""
    try:
        from llvmlite import binding as llb
        from threadpoolctl import threadpool_info
    except ImportError:
        return False
    for info in threadpool_info():  # NumPy (imported above) has loaded its BLAS
        if info.get("user_api") != "blas" or info.get("internal_api") != "openblas":
            continue
        try:
            lib = ctypes.CDLL(info["filepath"])
        except OSError:
            continue
        found = {}
        ilp64_lib = "64" in os.path.basename(info["filepath"])
        for name in ("sgemm", "dgemm", "sgemv", "dgemv"):
            # only 64-bit-integer interfaces (what NumPy's own OpenBLAS exports)
            for sym in (f"scipy_cblas_{name}64_", f"cblas_{name}64_") + \
                    ((f"cblas_{name}",) if ilp64_lib else ()):
                fn = getattr(lib, sym, None)
                if fn is not None:
                    found[name] = ctypes.cast(fn, ctypes.c_void_p).value
                    break
        if len(found) == 4:
            for name, addr in found.items():
                llb.add_symbol(f"unrolled_cblas_{name}", addr)
            _bind_thread_control(lib)
            return True
    return False


_BLAS_THREADS = []  # [get, set]: the BLAS's own thread count, where it exports both


def _bind_thread_control(lib):
    """``openblas_get_num_threads``/``openblas_set_num_threads`` of the same library
    (under the prefix NumPy's OpenBLAS gives its symbols)."""
    for pre, suf in (("scipy_", "64_"), ("", "64_"), ("", "")):
        get = getattr(lib, f"{pre}openblas_get_num_threads{suf}", None)
        put = getattr(lib, f"{pre}openblas_set_num_threads{suf}", None)
        if get is not None and put is not None:
            get.restype, get.argtypes = ctypes.c_int, []
            put.restype, put.argtypes = None, [ctypes.c_int]
            _BLAS_THREADS[:] = [get, put]
            return


def blas_threads(n=None):
    """The BLAS's thread count (None where it cannot be read); with ``n``, set it first
    and return the old count. Cheap (two C calls): the parallel loop sets 1 around its
    region, where each of its threads calls BLAS on its own rows."""
    if not _BLAS_THREADS:
        return None
    get, put = _BLAS_THREADS
    old = get()
    if n is not None and n != old:
        put(int(n))
    return old


# The calls into CBLAS, as numba intrinsics that declare the C function by name (resolved
# by LLVM through the symbols registered above). Module-level, with fixed identities, so
# that compiled code calling them can be cached on disk (see cells_numba.stabilize).
# Integers go as 64-bit, pointers as 64-bit integers (the same registers in the C ABI).
def _cblas_call(builder, context, name, parts, alpha):
    i32, i64 = ir.IntType(32), ir.IntType(64)
    ft = context.get_value_type(alpha)
    conv = {"e": (i32, types.int32), "i": (i64, types.int64), "f": (ft, alpha)}
    vals, lltys = [], []
    for kind, v, t in parts:
        llty, nbty = conv[kind]
        vals.append(context.cast(builder, v, t, nbty))
        lltys.append(llty)
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), lltys),
                                        name)
    builder.call(fn, vals)


@intrinsic
def _cblas_gemm(typingctx, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """cblas_?gemm(RowMajor, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)."""
    if not isinstance(alpha, types.Float):
        return None
    sig = types.void(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
    name = "unrolled_cblas_sgemm" if alpha.bitwidth == 32 else "unrolled_cblas_dgemm"

    def codegen(context, builder, signature, args):
        t = signature.args
        order = context.get_constant(types.int32, 101)
        kinds = "eeiiifiiiifii"
        parts = [("e", order, types.int32)] + list(zip(kinds, args, t))
        _cblas_call(builder, context, name, parts, alpha)
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def _cblas_gemv(typingctx, trans, m, n, alpha, a, lda, x, incx, beta, y, incy):
    """cblas_?gemv(RowMajor, trans, m, n, alpha, a, lda, x, incx, beta, y, incy)."""
    if not isinstance(alpha, types.Float):
        return None
    sig = types.void(trans, m, n, alpha, a, lda, x, incx, beta, y, incy)
    name = "unrolled_cblas_sgemv" if alpha.bitwidth == 32 else "unrolled_cblas_dgemv"

    def codegen(context, builder, signature, args):
        t = signature.args
        order = context.get_constant(types.int32, 101)
        parts = [("e", order, types.int32)] + list(zip("eiifiiiifii", args, t))
        _cblas_call(builder, context, name, parts, alpha)
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def take_next(typingctx, counter):
    """Atomically ``counter[0] += 1``, returning the old value: the next block of work
    for the thread that asks (the parallel loop's dynamic schedule)."""
    if not (isinstance(counter, types.Array) and counter.dtype == types.int64):
        return None

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.atomic_rmw("add", ary.data, ir.Constant(ir.IntType(64), 1), "seq_cst")
    return types.int64(counter), codegen


stabilize("unrolled.loop_numba", {"_cblas_gemm": _cblas_gemm, "_cblas_gemv": _cblas_gemv,
                                  "take_next": take_next})


def available():
    """True where the compiled loop can run (numba, and a BLAS that exports CBLAS)."""
    if not _FOUND:
        try:
            _FOUND.append(_find_gemm())
        except Exception:  # a BLAS we cannot bind: the per-step loop serves
            _FOUND.append(False)
    return _FOUND[0]


# -- the pieces every generated loop is made of (module level: cached on disk once) -----
from .cells_numba import (FASTMATH32, JIT_FLAGS, _cast32, _cast64, _jit,  # noqa: E402
                          _jit32, _tanh32, _tanh64)

JIT = {32: _jit32, 64: _jit}
# the per-row pass of a generated loop allocates nothing and takes a view per gate block
# and state per row: without the runtime's reference counts on those views (two atomic
# operations each) a row costs 0.5 µs less, which is most of a step at batch 1
JIT_ROWS = {32: numba.njit(**JIT_FLAGS, fastmath=FASTMATH32, _nrt=False),
            64: numba.njit(**JIT_FLAGS, _nrt=False)}
_ONE32, _ZERO32 = np.float32(1), np.float32(0)


def _gemm_pair(jit, one):
    @jit
    def gemm(A, Bm, Cm, beta):
        """Cm = A @ Bm + beta * Cm, row-major, all C-contiguous 2-D."""
        M, K = A.shape
        N = Bm.shape[1]
        if M == 1:  # one row (batch 1): a matrix-vector product, y = Bm^T x
            _cblas_gemv(112, K, N, one, Bm.ctypes.data, N, A.ctypes.data, 1, beta,
                        Cm.ctypes.data, 1)
            return
        _cblas_gemm(111, 111, M, N, K, one, A.ctypes.data, K, Bm.ctypes.data, N, beta,
                    Cm.ctypes.data, N)

    @jit
    def gemm_tn(A, Bm, Cm, beta):
        """Cm = A^T @ Bm + beta * Cm (A (K, M), Bm (K, N), C-contiguous): a weight
        gradient added to its running sum without a temporary."""
        K, M = A.shape
        N = Bm.shape[1]
        _cblas_gemm(112, 111, M, N, K, one, A.ctypes.data, M, Bm.ctypes.data, N, beta,
                    Cm.ctypes.data, N)
    return gemm, gemm_tn


gemm32, gemm_tn32 = _gemm_pair(_jit32, _ONE32)
gemm64, gemm_tn64 = _gemm_pair(_jit, 1.0)
tanh32, tanh64 = _tanh32, _tanh64
cast32, cast64 = _cast32, _cast64


@_jit32
def exp32(x):
    return np.exp(x)


@_jit
def exp64(x):
    return np.exp(x)


stabilize("unrolled.loop_numba", {"gemm32": gemm32, "gemm_tn32": gemm_tn32, "gemm64": gemm64,
                                  "gemm_tn64": gemm_tn64, "exp32": exp32, "exp64": exp64})


def loops(dtype, kind):
    """``kind="gemm_tn"``: the accumulating product ``gemm_tn(A, B, C, beta)``,
    C = A^T B + beta C, for ``dtype``."""
    if kind != "gemm_tn":
        raise ValueError(f"unknown compiled routine {kind!r}")
    if not available():  # the CBLAS symbols are registered by available(): never call unbound
        raise RuntimeError("no BLAS with CBLAS symbols was found for the compiled loop")
    return gemm_tn32 if np.dtype(dtype) == np.float32 else gemm_tn64
