"""Fused per-step gate kernels compiled with numba (the optional "numba" backend).

One call per step and direction does all of a cell's elementwise arithmetic, reading
the recurrent product that NumPy's BLAS wrote into a preallocated buffer and writing
straight into the tape. The backward kernels also flush gradients smaller than
``flush`` to zero (see :func:`unrolled.unroll.flush_threshold`).

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
_jit = numba.njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")
# float32 kernels may also contract to FMAs and reassociate (not assume away NaN or inf):
# that is what lets LLVM vectorise the rational tanh fully; float64 stays strict
_jit32 = numba.njit(cache=True, nogil=True, boundscheck=False, error_model="numpy",
                    # a dict, not a set: a set's order changes from process to process,
                    # and with it the key of numba's on-disk cache
                    fastmath={"contract": True, "reassoc": True, "nsz": True, "arcp": True})


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


def _build(tanh, half, one, zero, _jit, cast):
    """The kernels for one dtype, given its tanh, constants of that dtype, its jit and the
    conversion of a Python float to it."""

    @_jit
    def sig(x):
        return half * (tanh(half * x) + one)

    @_jit
    def flushed(v, th):
        return zero if abs(v) < th else v

    # Each kernel walks the batch row by row on 1-D row views, with inner loops over
    # contiguous runs of one gate block: the form LLVM vectorises.
    @_jit
    def lstm_fwd(z, xw, c, acts, tc, h_new, c_new):
        B, H = c.shape
        for b in range(B):
            zr, xr, ar = z[b], xw[b], acts[b]
            # one loop over all four gates: σ(x) = ½ tanh(½ x) + ½ for i, f, o and tanh(x)
            # for the candidate, i.e. s tanh(s x) + (1 - s) with s = ½ or 1 (the same
            # arithmetic as sig and tanh, so the same bits, in one vectorised pass)
            for k in range(4 * H):
                s = one if (k >= 2 * H) & (k < 3 * H) else half
                ar[k] = s * tanh(s * (zr[k] + xr[k])) + (one - s)
            cr, tr, hr, nr = c[b], tc[b], h_new[b], c_new[b]
            ai, af, ag, ao = ar[:H], ar[H:2 * H], ar[2 * H:3 * H], ar[3 * H:]
            for j in range(H):
                v = af[j] * cr[j] + ai[j] * ag[j]
                t = tanh(v)
                nr[j] = v
                tr[j] = t
                hr[j] = ao[j] * t

    # The gate blocks of a row are taken as separate views (ai, af, ...): indexed as
    # ar[H + j] etc. in one array, the compiler cannot tell the blocks apart and does
    # not vectorise a loop that writes one of them (3x slower).
    @_jit
    def lstm_bwd(dh, dc, acts, tc, c_prev, dz, dc_prev, thr):
        B, H = dh.shape
        th = cast(thr)  # compare in the arrays' own precision (float64: 2x slower)
        for b in range(B):
            ar, tr, dhr, dcr, cpr, dzr, dpr = acts[b], tc[b], dh[b], dc[b], c_prev[b], dz[b], \
                dc_prev[b]
            ai, af, ag, ao = ar[:H], ar[H:2 * H], ar[2 * H:3 * H], ar[3 * H:]
            di, df, dg, do = dzr[:H], dzr[H:2 * H], dzr[2 * H:3 * H], dzr[3 * H:]
            for j in range(H):
                i = ai[j]
                f = af[j]
                g = ag[j]
                o = ao[j]
                t = tr[j]
                d = dhr[j]
                dct = dcr[j] + d * o * (one - t * t)
                di[j] = flushed(dct * g * (i * (one - i)), th)
                df[j] = flushed(dct * cpr[j] * (f * (one - f)), th)
                dg[j] = flushed(dct * i * (one - g * g), th)
                do[j] = flushed(d * t * (o * (one - o)), th)
                dpr[j] = flushed(dct * f, th)

    @_jit
    def gru_fwd(hw, xw, bhn, h, acts, hn, h_new):
        B, H = h.shape
        for b in range(B):
            wr, xr, ar = hw[b], xw[b], acts[b]
            for k in range(2 * H):              # reset and update gates
                ar[k] = sig(wr[k] + xr[k])
            rr, zr, nn = ar[:H], ar[H:2 * H], ar[2 * H:]
            wn, xn = wr[2 * H:], xr[2 * H:]
            hr, mr, nr = h[b], hn[b], h_new[b]
            for j in range(H):
                m = wn[j] + bhn[j]
                n = tanh(xn[j] + rr[j] * m)
                nn[j] = n
                mr[j] = m
                nr[j] = n + zr[j] * (hr[j] - n)

    @_jit
    def gru_bwd(dh, h, acts, hn, dxw, dhw, dhz, thr):
        B, H = dh.shape
        th = cast(thr)  # compare in the arrays' own precision (float64: 2x slower)
        for b in range(B):
            ar, dhr, hr, mr, dxr, dwr, dzr = acts[b], dh[b], h[b], hn[b], dxw[b], dhw[b], dhz[b]
            ar_, az_, an_ = ar[:H], ar[H:2 * H], ar[2 * H:]
            xr_, xz_, xn_ = dxr[:H], dxr[H:2 * H], dxr[2 * H:]
            wr_, wz_, wn_ = dwr[:H], dwr[H:2 * H], dwr[2 * H:]
            for j in range(H):
                r = ar_[j]
                z = az_[j]
                n = an_[j]
                d = dhr[j]
                dn = flushed(d * (one - z) * (one - n * n), th)
                dr = flushed(dn * mr[j] * (r * (one - r)), th)
                du = flushed(d * (hr[j] - n) * (z * (one - z)), th)
                xr_[j] = dr
                xz_[j] = du
                xn_[j] = dn
                wr_[j] = dr
                wz_[j] = du
                wn_[j] = flushed(dn * r, th)
                dzr[j] = flushed(d * z, th)

    @_jit
    def elman_fwd(h, xw, use_tanh):
        B, H = h.shape
        for b in range(B):
            hr, xr = h[b], xw[b]
            if use_tanh:
                for j in range(H):
                    hr[j] = tanh(hr[j] + xr[j])
            else:
                for j in range(H):
                    hr[j] = max(hr[j] + xr[j], zero)

    @_jit
    def elman_bwd(dh, h, da, use_tanh, thr):
        B, H = dh.shape
        th = cast(thr)  # compare in the arrays' own precision (float64: 2x slower)
        for b in range(B):
            dhr, hr, dar = dh[b], h[b], da[b]
            if use_tanh:
                for j in range(H):
                    v = hr[j]
                    dar[j] = flushed(dhr[j] * (one - v * v), th)
            else:
                for j in range(H):
                    dar[j] = dhr[j] if hr[j] > zero else zero

    stabilize(f"unrolled.cells_numba.{np.dtype(type(one)).name}", locals())
    return {"lstm_fwd": lstm_fwd, "lstm_bwd": lstm_bwd, "gru_fwd": gru_fwd,
            "gru_bwd": gru_bwd, "elman_fwd": elman_fwd, "elman_bwd": elman_bwd}


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


class _Library:
    def __init__(self, fns):
        self.__dict__.update(fns)


_LIBS = {}


def library(dtype):
    """The kernel library for ``dtype`` (float32 or float64), built on first use."""
    dt = np.dtype(dtype)
    if dt not in _LIBS:
        if dt == np.float32:
            fns = _build(_tanh32, _HALF, _ONE, _ZERO, _jit32, _cast32)
        elif dt == np.float64:
            fns = _build(_tanh64, 0.5, 1.0, 0.0, _jit, _cast64)
        else:
            raise TypeError(f"the numba backend supports float32 and float64, got {dt}")
        _LIBS[dt] = _Library(fns)
    return _LIBS[dt]
