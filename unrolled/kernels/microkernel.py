"""The recurrent product of one step, on weights packed once per call: ``C = A W (+ C)``.

Each step of the compiled loop multiplies a few rows (a block of the batch: 1 to 32) by
the recurrent weight. A general BLAS call does this poorly: it packs W again at every
call and its kernels are tuned for large products (OpenBLAS, one thread, (16, 256) times
(256, 1024): 110 GFLOP/s where the same core does 220 on large products). Here W is
packed once per call of the loop (the layout oneDNN's RNN kernels reorder into): panels of
``NR`` columns, each (K, NR) contiguous and zero-padded, so every step reads each panel
as one stream. A tile of ``m <= MR`` rows by ``NR`` columns keeps its sums in vector
registers over all of K: one broadcast of A and one fused multiply-add per vector of W
(the outer-product form of the BLIS micro-kernels). The tiles are written in LLVM's own
vector types (``<16 x float>`` on AVX-512), so the compiler needs no auto-vectorisation
to produce them; each sum runs in k order, so a row's result does not depend on which
block of rows it was computed in.

``available()`` is True on x86 CPUs with AVX2 and FMA (AVX-512: 2 x 16 float32 lanes,
8 rows a tile; AVX2: 2 x 8 lanes, 6 rows) unless ``UNROLLED_MICROKERNEL=0`` (``avx2``:
the AVX2 form on an AVX-512 machine too); elsewhere
the loop calls BLAS with W as it is, and :func:`pack` returns W unchanged.
"""
import os

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .cells_numba import _jit, _jit32, stabilize


def _host_vector_bytes():
    """64 (AVX-512), 32 (AVX2 with FMA) or 0 (neither, or switched off).
    ``UNROLLED_MICROKERNEL``: 0 (off), avx2 (32-byte vectors even with AVX-512)."""
    want = os.environ.get("UNROLLED_MICROKERNEL", "auto").strip().lower()
    if want in ("0", "off", "no", "false"):
        return 0
    try:
        import llvmlite.binding as llb

        feats = llb.get_host_cpu_features()
    except Exception:  # not an x86 host llvmlite can describe: BLAS serves
        return 0
    if feats.get("avx512f") and feats.get("fma") and want != "avx2":
        return 64
    if feats.get("avx2") and feats.get("fma"):
        return 32
    return 0


VECTOR_BYTES = _host_vector_bytes()
MR = 8 if VECTOR_BYTES == 64 else 6  # rows a tile: 2 * MR vector sums in registers
# the compiled functions' fixed identities (numba's disk cache keys) name the vector width:
# code compiled for one width is never loaded for another
_KEY = f"unrolled.microkernel.v{VECTOR_BYTES}x{MR}"


def available():
    """True where the loop's products run on packed weights (see the module's text)."""
    return VECTOR_BYTES > 0


def lanes(dtype):
    """Vector lanes for ``dtype``; 0 where the packed product is off."""
    return VECTOR_BYTES // np.dtype(dtype).itemsize


def panel(dtype):
    """NR: the columns of a packed panel (two vectors)."""
    return 2 * lanes(dtype)


def pack(W, xp=np):
    """W (K, N) as panels (ceil(N / NR), K, NR), zero-padded; W itself where the packed
    product is off, for a dtype other than float32/float64, or for other arrays than
    NumPy's (the GPU's loop)."""
    if (not available() or getattr(xp, "__name__", "") != "numpy"
            or W.dtype not in (np.float32, np.float64) or W.ndim != 2):
        return W
    K, N = W.shape
    nr = panel(W.dtype)
    P = -(-N // nr)
    out = np.empty((P, K, nr), W.dtype)
    full = N // nr
    if W.flags.c_contiguous:
        out[:full] = W[:, :full * nr].reshape(K, full, nr).transpose(1, 0, 2)
    else:  # a transposed view (W_ih.T, say): panel by panel, with no copy of W first
        for k in range(full):
            out[k] = W[:, k * nr:(k + 1) * nr]
    if full < P:
        out[full] = 0
        out[full, :, :N - full * nr] = W[:, full * nr:]
    return out


def _tile(bits, m):
    """The intrinsic ``tile(a, lda, w, c, ldc, k, acc)``: rows [0, m) of C (row stride
    ldc) = A (m rows, stride lda) times the packed panel at ``w`` (k, NR), added to C
    where ``acc`` is not 0; addresses as integers, strides in elements."""
    L = VECTOR_BYTES * 8 // bits
    nv = 2  # vectors a panel row

    @intrinsic
    def tile(typingctx, a, lda, w, c, ldc, k, acc):
        i64 = types.int64
        sig = types.void(i64, i64, i64, i64, i64, i64, i64)

        def codegen(context, builder, signature, args):
            a, lda, w, c, ldc, K, acc = args
            ft = ir.FloatType() if bits == 32 else ir.DoubleType()
            vt = ir.VectorType(ft, L)
            fp, vp = ft.as_pointer(), vt.as_pointer()
            li = ir.IntType(64)
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vt, [vt, vt, vt]), f"llvm.fma.v{L}f{bits}")
            A, Wp, Cp = (builder.inttoptr(v, fp) for v in (a, w, c))
            zero = ir.Constant(vt, [0.0] * L)
            accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(nv)]
                    for _ in range(m)]
            rows = [builder.gep(A, [builder.mul(lda, ir.Constant(li, r))]) for r in range(m)]
            splat = ir.Constant(ir.VectorType(ir.IntType(32), L), [0] * L)
            undef = ir.Constant(vt, ir.Undefined)
            with cgutils.for_range(builder, K) as loop:
                kk = loop.index
                wrow = builder.gep(Wp, [builder.mul(kk, ir.Constant(li, nv * L))])
                ws = [builder.load(builder.bitcast(builder.gep(wrow, [ir.Constant(li, L * j)]),
                                                   vp), align=bits // 8) for j in range(nv)]
                for r in range(m):
                    x = builder.load(builder.gep(rows[r], [kk]))
                    xb = builder.shuffle_vector(
                        builder.insert_element(undef, x, ir.Constant(ir.IntType(32), 0)),
                        undef, splat)
                    for j in range(nv):
                        builder.store(builder.call(fma, [xb, ws[j], builder.load(accs[r][j])]),
                                      accs[r][j])
            add = builder.icmp_signed("!=", acc, ir.Constant(li, 0))
            for r in range(m):
                crow = builder.gep(Cp, [builder.mul(ldc, ir.Constant(li, r))])
                for j in range(nv):
                    p = builder.bitcast(builder.gep(crow, [ir.Constant(li, L * j)]), vp)
                    v = builder.load(accs[r][j])
                    v = builder.select(add, builder.fadd(v, builder.load(p, align=bits // 8)),
                                       v)
                    builder.store(v, p, align=bits // 8)
            return context.get_dummy_value()
        return sig, codegen
    return tile


# the tiles: MR rows, then 4, 2 and 1 for the rows left over; for each dtype
# (module-level names with fixed identities, so that compiled code calling them is cached
# on disk)
_HEIGHTS = {"big": MR, "4": 4, "2": 2, "1": 1}
_TILES = {}
for _bits in (32, 64):
    for _name, _m in _HEIGHTS.items():
        _TILES[f"_t{_bits}_{_name}"] = _tile(_bits, _m) if available() else None
globals().update(_TILES)
stabilize(_KEY, {k: v for k, v in _TILES.items() if v is not None})


def _drivers(jit, size, big, t4, t2, t1):
    mr = MR

    @jit
    def rows(M, K, a, lda, w, c, ldc, acc):
        """Rows [0, M) of C at ``c`` against one panel at ``w``, MR rows a tile."""
        b = 0
        while b + mr <= M:
            big(a + b * lda * size, lda, w, c + b * ldc * size, ldc, K, acc)
            b += mr
        if M - b >= 4:
            t4(a + b * lda * size, lda, w, c + b * ldc * size, ldc, K, acc)
            b += 4
        if M - b >= 2:
            t2(a + b * lda * size, lda, w, c + b * ldc * size, ldc, K, acc)
            b += 2
        if M - b >= 1:
            t1(a + b * lda * size, lda, w, c + b * ldc * size, ldc, K, acc)

    @jit
    def matmul(A, Wp, C, beta):
        """C = A W + beta C for beta 0 or 1 (A (M, K) and C (M, N) with rows of unit
        stride, at any row stride; Wp from :func:`pack`). Full panels are written in
        place; the last, narrower one through a buffer of NR columns."""
        M, K = A.shape
        N = C.shape[1]
        if (K > 1 and A.strides[1] != size) or (N > 1 and C.strides[1] != size):
            raise ValueError("the packed product needs rows of unit stride")
        lda, ldc = A.strides[0] // size, C.strides[0] // size
        P, _, nr = Wp.shape
        acc = 1 if beta != 0 else 0
        a, c, w0 = A.ctypes.data, C.ctypes.data, Wp.ctypes.data
        edge = N - (P - 1) * nr  # columns of the last panel that exist
        full = P if edge == nr else P - 1
        for p in range(full):
            rows(M, K, a, lda, w0 + p * K * nr * size, c + p * nr * size, ldc, acc)
        if full < P:
            buf = np.empty((M, nr), C.dtype)
            rows(M, K, a, lda, w0 + full * K * nr * size, buf.ctypes.data, nr, 0)
            j0 = full * nr
            for b in range(M):
                for j in range(edge):
                    if acc:
                        C[b, j0 + j] += buf[b, j]
                    else:
                        C[b, j0 + j] = buf[b, j]
    return rows, matmul


if available():
    _rows32, matmul32 = _drivers(_jit32, 4, *(_TILES[f"_t32_{n}"] for n in _HEIGHTS))
    _rows64, matmul64 = _drivers(_jit, 8, *(_TILES[f"_t64_{n}"] for n in _HEIGHTS))
    stabilize(_KEY, {"_rows32": _rows32, "matmul32": matmul32,
                     "_rows64": _rows64, "matmul64": matmul64})


# -- a product over many rows, shared out over threads by blocks of rows -----------------
if available():
    from .loop_numba import take_next

    def _blocked(jit, matmul):
        @jit
        def add_bias(c, bias):
            """c += bias on every row (bias empty: nothing)."""
            if bias.shape[0] > 0:
                for b in range(c.shape[0]):
                    for j in range(c.shape[1]):
                        c[b, j] += bias[j]

        @jit
        def matmul_blocks(A, Wp, C, bias, bounds, counter):
            """Rows [bounds[k], bounds[k+1]) of C = A W (+ bias, where it is not empty),
            block by block from ``counter`` (see :mod:`.pool`); returns the blocks run."""
            nb = bounds.shape[0] - 1
            done = 0
            k = take_next(counter)
            while k < nb:
                b0, b1 = bounds[k], bounds[k + 1]
                c = C[b0:b1]
                matmul(A[b0:b1], Wp, c, 0)
                add_bias(c, bias)
                done += 1
                k = take_next(counter)
            return done

        @jit
        def project_records(X, a, n, Wp, XW, bias, counter):
            """XW[i] = X[:, a+i] W + bias for the steps i < n of a batch-first X (B, T, D)
            into the time-major XW (n, B, G), one step a block: the input projection
            without a time-major copy of X first."""
            done = 0
            i = take_next(counter)
            while i < n:
                c = XW[i]
                matmul(X[:, a + i], Wp, c, 0)
                add_bias(c, bias)
                done += 1
                i = take_next(counter)
            return done
        return add_bias, matmul_blocks, project_records

    _add_bias32, matmul_blocks32, project_records32 = _blocked(_jit32, matmul32)
    _add_bias64, matmul_blocks64, project_records64 = _blocked(_jit, matmul64)
    stabilize(_KEY, {"_add_bias32": _add_bias32, "_add_bias64": _add_bias64,
                     "matmul_blocks32": matmul_blocks32, "matmul_blocks64": matmul_blocks64,
                     "project_records32": project_records32,
                     "project_records64": project_records64})

BLOCK_ROWS = 64  # rows a block of a product over many rows
_BOUNDS = {}


def product(A, Wp, out, bias=None, threads=1):
    """out = A W (+ bias): A (M, K), out (M, N) C-contiguous NumPy arrays, ``Wp`` from
    :func:`pack`, over ``threads`` threads in blocks of BLOCK_ROWS rows (:mod:`.pool`)."""
    from .pool import run_blocks

    M = A.shape[0]
    bounds = _BOUNDS.get(M)
    if bounds is None:
        if len(_BOUNDS) > 256:
            _BOUNDS.clear()
        bounds = _BOUNDS[M] = np.array(list(range(0, M, BLOCK_ROWS)) + [M], np.int64)
    f = matmul_blocks32 if A.dtype == np.float32 else matmul_blocks64
    b = np.zeros(0, A.dtype) if bias is None else bias
    nb = len(bounds) - 1
    run_blocks(f, (A, Wp, out, b, bounds), nb, max(1, min(threads, nb)))


def project(X, a, n, Wp, XW, bias, threads=1):
    """XW[:n] = X[a:a+n] W (+ bias) for a time-major view X (T, B, D) of a batch-first
    C-contiguous array, record by record over ``threads`` threads (:mod:`.pool`)."""
    from .pool import run_blocks

    Xb = X.transpose(1, 0, 2)
    f = project_records32 if X.dtype == np.float32 else project_records64
    b = np.zeros(0, X.dtype) if bias is None else bias
    run_blocks(f, (Xb, a, n, Wp, XW, b), n, max(1, min(threads, n)))
