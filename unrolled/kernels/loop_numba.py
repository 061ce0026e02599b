"""The time loop compiled whole: the "numba" backend without Python between steps.

:mod:`unrolled.unroll` runs the loop over the steps of one block in Python and calls, per
step, NumPy's matrix product and one fused gate kernel. At small sizes (H <= 128) the
Python and the call overheads between them cost more than the arithmetic. Here the same
loop — the same buffers, the same fused kernels of :mod:`.cells_numba`, the same order
of operations — is one compiled function that calls the BLAS NumPy itself uses
(OpenBLAS, found with threadpoolctl) for the recurrent product of each step. The loop is
written once; each cell hands it a step (forward) and a step back (backward) of a common
shape, and numba specialises the loop for it.

Used by :func:`unrolled.unroll.forward` and BPTT when the backend is "numba", the arrays
are NumPy float32 or float64, and NumPy's BLAS exports CBLAS (:func:`available`); else
the per-step loop runs. ``UNROLLED_COMPILED_LOOP=0`` turns it off (for comparisons).

Conventions of the compiled loop (arrays C-contiguous, time-major):
``S``  tuple of state tapes (T+1, B, S); ``C`` tuple of cache tapes (T or 1, B, .);
``P``  tuple of 1-D parameter arrays a step needs besides the weights (GRU's ``b_hn``);
``W``  the recurrent weight: (H, G) transposed for the forward, (G, H) for the backward.
"""
import ctypes
import os

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
            return True
    return False


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


stabilize("unrolled.loop_numba", {"_cblas_gemm": _cblas_gemm, "_cblas_gemv": _cblas_gemv})


def available():
    """True where the compiled loop can run (numba, and a BLAS that exports CBLAS)."""
    if os.environ.get("UNROLLED_COMPILED_LOOP", "1").strip() in ("0", "false", "no"):
        return False
    if not _FOUND:
        try:
            _FOUND.append(_find_gemm())
        except Exception:  # a BLAS we cannot bind: the per-step loop serves
            _FOUND.append(False)
    return _FOUND[0]


def _build(dtype):
    from . import cells_numba
    from .cells_numba import stabilize

    dt = np.dtype(dtype)
    kern = cells_numba.library(dt).__dict__
    jit = cells_numba._jit32 if dt == np.float32 else cells_numba._jit
    prefix = f"unrolled.loop_numba.{dt.name}"
    one, zero = dt.type(1), dt.type(0)
    lstm_fwd, lstm_bwd = kern["lstm_fwd"], kern["lstm_bwd"]
    gru_fwd, gru_bwd = kern["gru_fwd"], kern["gru_bwd"]
    elman_fwd, elman_bwd = kern["elman_fwd"], kern["elman_bwd"]

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

    # -- the steps of each cell, in one shape: (t, j, z, xw, S, C, P, W) forward and
    #    (t, i, dS, dXW, dN, SV, S, C, P, W, thr) backward
    @jit
    def lstm_step(t, j, z, xw, S, C, P, W):
        gemm(S[0][t], W, z, zero)
        lstm_fwd(z, xw, S[1][t], C[0][j], C[1][j], S[0][t + 1], S[1][t + 1])

    @jit
    def lstm_back(t, i, dS, dXW, dN, SV, S, C, P, W, thr):
        lstm_bwd(dS[0], dS[1], C[0][t], C[1][t], S[1][t], dXW[i], dN[1], thr)
        gemm(dXW[i], W, dN[0], zero)

    @jit
    def gru_step(t, j, z, xw, S, C, P, W):
        gemm(S[0][t], W, z, zero)
        gru_fwd(z, xw, P[0], S[0][t], C[0][j], C[1][j], S[0][t + 1])

    @jit
    def gru_back(t, i, dS, dXW, dN, SV, S, C, P, W, thr):
        dhz = dN[0]  # dh ⊙ z goes straight into the gradient, the product is added to it
        gru_bwd(dS[0], S[0][t], C[0][t], C[1][t], dXW[i], SV[0][i], dhz, thr)
        gemm(SV[0][i], W, dN[0], one)

    def elman_steps(use_tanh):  # tanh or relu, a constant of the compiled code
        @jit
        def step(t, j, z, xw, S, C, P, W):
            gemm(S[0][t], W, S[0][t + 1], zero)
            elman_fwd(S[0][t + 1], xw, use_tanh)

        @jit
        def back(t, i, dS, dXW, dN, SV, S, C, P, W, thr):
            elman_bwd(dS[0], S[0][t + 1], dXW[i], use_tanh, thr)
            gemm(dXW[i], W, dN[0], zero)
        stabilize(f"{prefix}.elman_{'tanh' if use_tanh else 'relu'}", locals())
        return step, back

    def make(name, step, step_back):
        @jit
        def forward(t0, n, XW, S, C, P, W, z, keep, keep_tape):
            """Steps [t0, t0+n); XW[i] is step t0+i's input projection; ``keep`` (T, B)
            marks padded steps (empty: none), which carry the state through."""
            for i in range(n):
                t = t0 + i
                j = t if keep_tape else 0
                step(t, j, z, XW[i], S, C, P, W)
                if keep.shape[0] > 0:
                    for b in range(keep.shape[1]):
                        if keep[t, b]:
                            for s in S:
                                s[t + 1, b, :] = s[t, b, :]

        @jit
        def backward(t0, n, S, C, P, W, dXW, SV, dS, dN, dcell, d_out, win, mask, thr):
            """BPTT over steps [t0+n-1 .. t0]; ``dS`` holds the gradient w.r.t. the state
            after the block and ``dN`` is a second buffer; returns the gradient w.r.t. the
            state before it (one of the two). ``d_out`` (T, B, S0), ``win`` (T, B) and
            ``mask`` (T, B) are empty where they do not apply."""
            B = dS[0].shape[0]
            for i in range(n - 1, -1, -1):
                t = t0 + i
                if d_out.shape[0] > 0:
                    g, o = dS[0], d_out[t]
                    for b in range(B):
                        for k in range(g.shape[1]):
                            g[b, k] += o[b, k]
                if win.shape[0] > 0:
                    for d in dS:
                        for b in range(B):
                            w = win[t, b]
                            for k in range(d.shape[1]):
                                d[b, k] *= w
                if mask.shape[0] > 0:
                    for q in range(len(dS)):
                        d, a = dS[q], dcell[q]
                        for b in range(B):
                            m = mask[t, b]
                            for k in range(d.shape[1]):
                                a[b, k] = d[b, k] * m
                    step_back(t, i, dcell, dXW, dN, SV, S, C, P, W, thr)
                    for q in range(len(dS)):  # a padded step passes the gradient on
                        d, a = dS[q], dN[q]
                        for b in range(B):
                            m = one - mask[t, b]
                            for k in range(d.shape[1]):
                                a[b, k] += d[b, k] * m
                else:
                    step_back(t, i, dS, dXW, dN, SV, S, C, P, W, thr)
                dS, dN = dN, dS
            return dS

        stabilize(f"{prefix}.loop_{name}", locals())
        return forward, backward

    @jit
    def gemm_tn(A, Bm, Cm, beta):
        """Cm = A^T @ Bm + beta * Cm (A (K, M), Bm (K, N), C-contiguous): a weight
        gradient added to its running sum without a temporary."""
        K, M = A.shape
        N = Bm.shape[1]
        _cblas_gemm(112, 111, M, N, K, one, A.ctypes.data, M, Bm.ctypes.data, N, beta,
                    Cm.ctypes.data, N)

    stabilize(prefix, locals())
    return {"lstm": make("lstm", lstm_step, lstm_back), "gru": make("gru", gru_step, gru_back),
            "tanh": make("tanh", *elman_steps(True)),
            "relu": make("relu", *elman_steps(False)), "gemm_tn": gemm_tn}


def loops(dtype, kind):
    """(forward, backward) compiled for ``dtype`` and the cell kind ("lstm", "gru",
    "tanh" or "relu" for Elman); ``kind="gemm_tn"``: the accumulating product
    ``gemm_tn(A, B, C, beta)``, C = A^T B + beta C."""
    dt = np.dtype(dtype)
    if dt not in _LOOPS:
        _LOOPS[dt] = _build(dt)
    return _LOOPS[dt][kind]
