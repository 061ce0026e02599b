"""The time loop as a CUDA graph: the "cupy" backend without Python between steps.

On a GPU a step's arithmetic takes microseconds and launching it from Python takes as
long or longer, so the per-step loop leaves the GPU idle most of the time. Here the
loop over the steps of a block (per step: cuBLAS's recurrent product and the fused gate
kernel of :mod:`.cells_cupy`) is recorded once as a CUDA graph and replayed with one
launch. A graph replays the very arrays it was recorded with, so each recorded loop has
arrays of its own, shaped like the caller's: the inputs of a block are copied in before
a replay and its results copied out after (device copies, a few per cent of a step).
Graphs are kept per shape (up to MAX_GRAPHS): the first call with a new shape runs
eagerly, the second records, and from then on every call replays, wherever the
caller's arrays happen to live. cuBLAS is called directly (ctypes) on a handle of our
own, since CuPy's wrappers refuse to run while a stream is being recorded.

Same call shape as :mod:`.loop_numba` (see there); masks and truncation windows are not
covered: :func:`unrolled.unroll.forward` runs those steps on the per-step loop.
``UNROLLED_CUDA_GRAPHS=0`` turns graphs off (every call eager, same launches).
"""
from collections import OrderedDict
from types import SimpleNamespace

import cupy as cp
import numpy as np
from cupy_backends.cuda.libs import cublas

from . import cells_cupy

MAX_GRAPHS = 16  # recorded loops kept (each holds arrays the size of its tape)
stats = {"eager": 0, "captured": 0, "replayed": 0}


_broken = []


def enabled():
    if _broken:
        return False
    from ..settings import settings

    return settings.cuda_graphs


def _disable(why):
    """Recording failed: run every later call eagerly, and say why once."""
    import warnings

    _broken.append(why)
    stats["error"] = why
    warnings.warn(f"unrolled: CUDA graphs turned off, recording failed ({why}); the loop "
                  "runs step by step", RuntimeWarning, stacklevel=3)


def _libcublas():
    """The cuBLAS library CuPy loaded, opened with ctypes (CuPy's own wrappers refuse to
    run while a stream is being recorded)."""
    import ctypes
    import ctypes.util

    paths = []
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({ln.split()[-1] for ln in f if "libcublas.so" in ln
                            and "libcublasLt" not in ln})
    except OSError:
        pass
    for path in paths + [ctypes.util.find_library("cublas")]:
        if path:
            try:
                return ctypes.CDLL(path)
            except OSError:
                continue
    raise OSError("libcublas not found")


class _Device:
    """A cuBLAS handle, a stream and the graphs of one device."""

    def __init__(self):
        import ctypes

        self.stream = cp.cuda.Stream(non_blocking=True)
        self.handle = cublas.create()
        cublas.setStream(self.handle, self.stream.ptr)
        self.graphs = OrderedDict()   # key -> CUDA graph (or None: seen once)
        self.scalars = {dt: (np.ones((), dt), np.zeros((), dt))
                        for dt in (np.float32, np.float64)}
        lib = _libcublas()
        vp, i = ctypes.c_void_p, ctypes.c_int
        self.fns = {}
        for dt, name in ((np.float32, "cublasSgemm_v2"), (np.float64, "cublasDgemm_v2")):
            fn = getattr(lib, name)
            fn.restype = i
            fn.argtypes = [vp, i, i, i, i, i, vp, vp, i, vp, i, vp, vp, i]
            self.fns[dt] = fn
        # a workspace of its own, so that cuBLAS allocates nothing while being recorded
        ws = getattr(lib, "cublasSetWorkspace_v2", None)
        if ws is not None:
            self.workspace = cp.empty(32 << 20, dtype=np.uint8)
            ws.restype = i
            ws.argtypes = [vp, vp, ctypes.c_size_t]
            ws(self.handle, self.workspace.data.ptr, self.workspace.nbytes)

    def gemm(self, A, Bm, Cm, beta):
        """Cm = A @ Bm + beta * Cm (row-major, C-contiguous 2-D) on our stream."""
        M, K = A.shape
        N = Bm.shape[1]
        one, zero = self.scalars[A.dtype.type]
        b = one if beta else zero
        # row-major C = A B is column-major C^T = B^T A^T
        st = self.fns[A.dtype.type](self.handle, 0, 0, N, M, K, one.ctypes.data, Bm.data.ptr,
                                    N, A.data.ptr, K, b.ctypes.data, Cm.data.ptr, N)
        if st != 0:
            raise RuntimeError(f"cuBLAS gemm failed with status {st}")


_DEVICES = {}


def _device():
    d = cp.cuda.Device().id
    if d not in _DEVICES:
        _DEVICES[d] = _Device()
    return _DEVICES[d]


def _key(tag, arrays, scalars):
    """What a recorded loop depends on: shapes and dtypes (not addresses) and the scalars."""
    parts = [tag, *scalars]
    for a in arrays:
        if isinstance(a, tuple):
            parts.append(_key("", a, ()))
        else:
            parts.append((a.shape, a.dtype.char))
    return tuple(parts)


def _mirror(args):
    """Arrays of the graph's own, shaped like ``args`` (nested tuples kept)."""
    return tuple(_mirror(a) if isinstance(a, tuple) else cp.empty(a.shape, a.dtype)
                 for a in args)


def _run(dev, key, body, args, copy_in, copy_out):
    """Run ``body(*args)`` on the device's stream: eagerly the first time a key is seen;
    from the second time on as a CUDA graph over arrays of its own (recorded once), with
    ``copy_in(mirrors)`` before and ``copy_out(mirrors)`` after each replay."""
    cur = cp.cuda.get_current_stream()
    ready = cp.cuda.Event(disable_timing=True)
    ready.record(cur)
    dev.stream.wait_event(ready)
    with dev.stream:
        entry = dev.graphs.get(key)
        if not enabled() or entry is None:  # first sighting (or graphs off): eager
            if enabled():
                dev.graphs[key] = "seen"
                while len(dev.graphs) > MAX_GRAPHS:
                    dev.graphs.popitem(last=False)
            body(*args)
            stats["eager"] += 1
        else:
            if entry == "seen":  # second sighting: record once, then replay
                mirrors = _mirror(args)
                try:
                    dev.stream.begin_capture()
                    try:
                        body(*mirrors)
                    finally:
                        g = dev.stream.end_capture()
                except Exception as e:  # a driver or library that will not record
                    _disable(f"{type(e).__name__}: {e}")
                    body(*args)
                    stats["eager"] += 1
                    g = None
                else:
                    dev.graphs[key] = (g, mirrors)
                    stats["captured"] += 1
            else:
                g, mirrors = entry
                stats["replayed"] += 1
            if g is not None:
                dev.graphs.move_to_end(key)
                copy_in(mirrors)
                g.launch(dev.stream)
                copy_out(mirrors)
    done = cp.cuda.Event(disable_timing=True)
    done.record(dev.stream)
    cur.wait_event(done)


def _copy(dst, src):
    cp.copyto(dst, src)


_add = cp.ElementwiseKernel("T x", "T y", "y += x", "unrolled_add_into")


def _steps(cell, gemm):
    """The forward step and step back of ``cell`` (its generated kernels), in the
    shapes of the compiled CPU loop (:mod:`.compiled`)."""
    fwd, bwd = cells_cupy.library(cell)
    G, tied, rec = len(cell.gate_names), bool(cell.tied), bool(cell.recurrent)

    def step(t, j, z, xw, br, S, C, U, W):
        B, H = S[0].shape[1:]
        if rec:
            gemm(S[0][t], W, z, 0)
        fwd(z, xw, br, *[s[t] for s in S], U, H, G, *[s[t + 1] for s in S],
            *[c[j] for c in C], size=B * H)

    def back(t, i, dS, dXW, dN, SV, S, C, U, W, DU, thr):
        B, H = S[0].shape[1:]
        rows = dXW[i] if tied or not rec else SV[0][i]
        bwd(*dS, *[s[t] for s in S], *[s[t + 1] for s in S], *[c[t] for c in C], U,
            S[0].dtype.type(thr), H, G, dXW[i], rows, *dN, DU, size=B * H)
        if rec:
            gemm(rows, W, dN[0], 1)  # dh_(t-1) += rows W_hh
    return step, back


def loops(cell, dtype):
    """The loop of ``cell`` for CuPy arrays: ``forward`` and ``backward`` with the
    signatures of the compiled CPU loop (:mod:`.compiled`)."""
    kind = (type(cell).__qualname__, cell)

    def forward(t0, n, XW, S, C, U, W, z, br, keep, keep_tape, hm, tmp):
        if keep.shape[0] > 0 or hm.shape[0] > 0:
            raise ValueError("the CUDA-graph loop does not take masks")
        dev = _device()
        step, _ = _steps(cell, dev.gemm)
        j0, j1 = (t0, t0 + n) if keep_tape else (0, 1)

        def body(XW, S, C, U, W, z, br):
            for i in range(n):
                t = t0 + i
                step(t, t if keep_tape else 0, z, XW[i], br, S, C, U, W)

        def copy_in(m):
            mXW, mS, _, mU, mW, _, mbr = m
            _copy(mXW[:n], XW[:n])
            for a, b in zip(mS, S):
                _copy(a[t0], b[t0])
            _copy(mU, U)
            _copy(mW, W)
            _copy(mbr, br)

        def copy_out(m):
            _, mS, mC = m[:3]
            for a, b in zip(S, mS):
                _copy(a[t0 + 1:t0 + n + 1], b[t0 + 1:t0 + n + 1])
            for a, b in zip(C, mC):
                _copy(a[j0:j1], b[j0:j1])
        args = (XW, S, C, U, W, z, br)
        _run(dev, _key(("f", kind), args, (t0, n, bool(keep_tape))), body, args, copy_in,
             copy_out)

    def backward(t0, n, S, C, U, W, dXW, SV, dS, dN, dcell, d_out, win, mask, thr, DU, hm,
                 tmp):
        if mask.shape[0] > 0 or win.shape[0] > 0 or hm.shape[0] > 0:
            raise ValueError("the CUDA-graph loop does not take masks or truncation")
        dev = _device()
        _, back = _steps(cell, dev.gemm)
        has_out = d_out.shape[0] > 0

        def body(S, C, U, W, dXW, SV, dS, dN, d_out, DU):
            a, b = dS, dN
            for i in range(n - 1, -1, -1):
                t = t0 + i
                if has_out:
                    _add(d_out[t], a[0])
                back(t, i, a, dXW, b, SV, S, C, U, W, DU, thr)
                a, b = b, a

        def copy_in(m):
            mS, mC, mU, mW, _, _, mdS, _, md_out, mDU = m
            for a, b in zip(mS, S):
                _copy(a[t0:t0 + n + 1], b[t0:t0 + n + 1])
            for a, b in zip(mC, C):
                _copy(a[t0:t0 + n], b[t0:t0 + n])
            _copy(mU, U)
            _copy(mDU, DU)
            _copy(mW, W)
            for a, b in zip(mdS, dS):
                _copy(a, b)
            if has_out:
                _copy(md_out[t0:t0 + n], d_out[t0:t0 + n])

        def copy_out(m):
            mdXW, mSV, mdS, mdN = m[4], m[5], m[6], m[7]
            _copy(dXW[:n], mdXW[:n])
            for a, b in zip(SV, mSV):
                _copy(a[:n], b[:n])
            # the gradient before the block is where the loop left it: dS after an even
            # number of steps, dN after an odd one (as the caller expects)
            for a, b in (zip(dS, mdS) if n % 2 == 0 else zip(dN, mdN)):
                _copy(a, b)
            _copy(DU, m[9])
        args = (S, C, U, W, dXW, SV, dS, dN, d_out, DU)
        _run(dev, _key(("b", kind), args, (t0, n, float(thr), has_out)), body, args, copy_in,
             copy_out)
        return dS if n % 2 == 0 else dN

    return SimpleNamespace(forward=forward, backward=backward)
