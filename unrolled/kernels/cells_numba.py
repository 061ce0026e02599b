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

_jit = numba.njit(cache=True, fastmath=False, nogil=True, boundscheck=False)


@_jit
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


def _build(tanh, half, one, zero):
    """The kernels for one dtype, given its tanh and constants of that dtype."""

    @_jit
    def sig(x):
        return half * (tanh(half * x) + one)

    @_jit
    def flushed(v, thr):
        return zero if abs(v) < thr else v

    @_jit
    def lstm_fwd(z, xw, c, acts, tc, h_new, c_new):
        B, H = c.shape
        for b in range(B):
            for j in range(H):
                i = sig(z[b, j] + xw[b, j])
                f = sig(z[b, H + j] + xw[b, H + j])
                g = tanh(z[b, 2 * H + j] + xw[b, 2 * H + j])
                o = sig(z[b, 3 * H + j] + xw[b, 3 * H + j])
                acts[b, j] = i
                acts[b, H + j] = f
                acts[b, 2 * H + j] = g
                acts[b, 3 * H + j] = o
                cn = f * c[b, j] + i * g
                t = tanh(cn)
                c_new[b, j] = cn
                tc[b, j] = t
                h_new[b, j] = o * t

    @_jit
    def lstm_bwd(dh, dc, acts, tc, c_prev, dz, dc_prev, thr):
        B, H = dh.shape
        for b in range(B):
            for j in range(H):
                i = acts[b, j]
                f = acts[b, H + j]
                g = acts[b, 2 * H + j]
                o = acts[b, 3 * H + j]
                t = tc[b, j]
                d = dh[b, j]
                dct = dc[b, j] + d * o * (one - t * t)
                dz[b, j] = flushed(dct * g * (i * (one - i)), thr)
                dz[b, H + j] = flushed(dct * c_prev[b, j] * (f * (one - f)), thr)
                dz[b, 2 * H + j] = flushed(dct * i * (one - g * g), thr)
                dz[b, 3 * H + j] = flushed(d * t * (o * (one - o)), thr)
                dc_prev[b, j] = flushed(dct * f, thr)

    @_jit
    def gru_fwd(hw, xw, bhn, h, acts, hn, h_new):
        B, H = h.shape
        for b in range(B):
            for j in range(H):
                r = sig(hw[b, j] + xw[b, j])
                z = sig(hw[b, H + j] + xw[b, H + j])
                m = hw[b, 2 * H + j] + bhn[j]
                n = tanh(xw[b, 2 * H + j] + r * m)
                acts[b, j] = r
                acts[b, H + j] = z
                acts[b, 2 * H + j] = n
                hn[b, j] = m
                h_new[b, j] = n + z * (h[b, j] - n)

    @_jit
    def gru_bwd(dh, h, acts, hn, dxw, dhw, dhz, thr):
        B, H = dh.shape
        for b in range(B):
            for j in range(H):
                r = acts[b, j]
                z = acts[b, H + j]
                n = acts[b, 2 * H + j]
                d = dh[b, j]
                dn = flushed(d * (one - z) * (one - n * n), thr)
                dr = flushed(dn * hn[b, j] * (r * (one - r)), thr)
                du = flushed(d * (h[b, j] - n) * (z * (one - z)), thr)
                dxw[b, j] = dr
                dxw[b, H + j] = du
                dxw[b, 2 * H + j] = dn
                dhw[b, j] = dr
                dhw[b, H + j] = du
                dhw[b, 2 * H + j] = flushed(dn * r, thr)
                dhz[b, j] = flushed(d * z, thr)

    @_jit
    def elman_fwd(h, xw, use_tanh):
        B, H = h.shape
        for b in range(B):
            for j in range(H):
                a = h[b, j] + xw[b, j]
                h[b, j] = tanh(a) if use_tanh else max(a, zero)

    @_jit
    def elman_bwd(dh, h, da, use_tanh, thr):
        B, H = dh.shape
        for b in range(B):
            for j in range(H):
                v = h[b, j]
                g = (one - v * v) if use_tanh else (one if v > zero else zero)
                da[b, j] = flushed(dh[b, j] * g, thr)

    return {"lstm_fwd": lstm_fwd, "lstm_bwd": lstm_bwd, "gru_fwd": gru_fwd,
            "gru_bwd": gru_bwd, "elman_fwd": elman_fwd, "elman_bwd": elman_bwd}


class _Library:
    def __init__(self, fns):
        self.__dict__.update(fns)


_LIBS = {}


def library(dtype):
    """The kernel library for ``dtype`` (float32 or float64), built on first use."""
    dt = np.dtype(dtype)
    if dt not in _LIBS:
        if dt == np.float32:
            fns = _build(_tanh32, _HALF, _ONE, _ZERO)
        elif dt == np.float64:
            fns = _build(_tanh64, 0.5, 1.0, 0.0)
        else:
            raise TypeError(f"the numba backend supports float32 and float64, got {dt}")
        _LIBS[dt] = _Library(fns)
    return _LIBS[dt]
