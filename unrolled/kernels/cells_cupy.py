"""Fused per-step gate kernels for CuPy arrays (the "cupy" backend, used on a GPU).

The same functions, arguments and arithmetic as :mod:`unrolled.kernels.cells_numba`,
each one CUDA kernel launch over the (B, H) units of a step, so a forward step costs
two launches (the recurrent product and this) and a backward step three or four.
"""
import cupy as cp

_SIG = "__device__ T sig(T x) { return T(0.5) * (tanh(T(0.5) * x) + T(1)); }\n"
_FLUSH = "__device__ T fl(T v, T thr) { return fabs(v) < thr ? T(0) : v; }\n"


def _k(name, ins, outs, body):
    # the written arrays are "out" parameters (CuPy makes raw inputs read-only)
    return cp.ElementwiseKernel(ins, outs, body, name, preamble=_SIG + _FLUSH)


_lstm_fwd = _k("unrolled_lstm_fwd",
               "raw T z, raw T xw, raw T c, int32 H", "raw T acts, raw T tc, raw T h_new, raw T c_new",
               """
    int b = i / H, j = i % H, r = b * 4 * H;
    T ig = sig(z[r + j] + xw[r + j]);
    T fg = sig(z[r + H + j] + xw[r + H + j]);
    T gg = tanh(z[r + 2 * H + j] + xw[r + 2 * H + j]);
    T og = sig(z[r + 3 * H + j] + xw[r + 3 * H + j]);
    acts[r + j] = ig; acts[r + H + j] = fg; acts[r + 2 * H + j] = gg; acts[r + 3 * H + j] = og;
    T cn = fg * c[i] + ig * gg;
    T t = tanh(cn);
    c_new[i] = cn; tc[i] = t; h_new[i] = og * t;
""")

_lstm_bwd = _k("unrolled_lstm_bwd",
               "raw T dh, raw T dc, raw T acts, raw T tc, raw T c_prev, T thr, int32 H",
               "raw T dz, raw T dc_prev", """
    int b = i / H, j = i % H, r = b * 4 * H;
    T ig = acts[r + j], fg = acts[r + H + j], gg = acts[r + 2 * H + j], og = acts[r + 3 * H + j];
    T t = tc[i], d = dh[i];
    T dct = dc[i] + d * og * (T(1) - t * t);
    dz[r + j] = fl(dct * gg * (ig * (T(1) - ig)), thr);
    dz[r + H + j] = fl(dct * c_prev[i] * (fg * (T(1) - fg)), thr);
    dz[r + 2 * H + j] = fl(dct * ig * (T(1) - gg * gg), thr);
    dz[r + 3 * H + j] = fl(d * t * (og * (T(1) - og)), thr);
    dc_prev[i] = fl(dct * fg, thr);
""")

_gru_fwd = _k("unrolled_gru_fwd",
              "raw T hw, raw T xw, raw T bhn, raw T h, int32 H", "raw T acts, raw T hn, raw T h_new",
              """
    int b = i / H, j = i % H, r = b * 3 * H;
    T rg = sig(hw[r + j] + xw[r + j]);
    T zg = sig(hw[r + H + j] + xw[r + H + j]);
    T m = hw[r + 2 * H + j] + bhn[j];
    T n = tanh(xw[r + 2 * H + j] + rg * m);
    acts[r + j] = rg; acts[r + H + j] = zg; acts[r + 2 * H + j] = n;
    hn[i] = m; h_new[i] = n + zg * (h[i] - n);
""")

_gru_bwd = _k("unrolled_gru_bwd",
              "raw T dh, raw T h, raw T acts, raw T hn, T thr, int32 H",
              "raw T dxw, raw T dhw, raw T dhz", """
    int b = i / H, j = i % H, r = b * 3 * H;
    T rg = acts[r + j], zg = acts[r + H + j], n = acts[r + 2 * H + j], d = dh[i];
    T dn = fl(d * (T(1) - zg) * (T(1) - n * n), thr);
    T dr = fl(dn * hn[i] * (rg * (T(1) - rg)), thr);
    T du = fl(d * (h[i] - n) * (zg * (T(1) - zg)), thr);
    dxw[r + j] = dr; dxw[r + H + j] = du; dxw[r + 2 * H + j] = dn;
    dhw[r + j] = dr; dhw[r + H + j] = du; dhw[r + 2 * H + j] = fl(dn * rg, thr);
    dhz[i] = fl(d * zg, thr);
""")

_elman_fwd = _k("unrolled_elman_fwd", "raw T xw, bool use_tanh", "raw T h", """
    T a = h[i] + xw[i];
    h[i] = use_tanh ? tanh(a) : (a > T(0) ? a : T(0));
""")

_elman_bwd = _k("unrolled_elman_bwd", "raw T dh, raw T h, bool use_tanh, T thr", "raw T da", """
    T v = h[i];
    T g = use_tanh ? T(1) - v * v : (v > T(0) ? T(1) : T(0));
    da[i] = fl(dh[i] * g, thr);
""")


class _Library:
    """Same call signatures as the numba library; arrays must be C-contiguous rows."""

    def __init__(self, dtype):
        self.dtype = cp.dtype(dtype)

    def lstm_fwd(self, z, xw, c, acts, tc, h_new, c_new):
        B, H = c.shape
        _lstm_fwd(z, xw, c, H, acts, tc, h_new, c_new, size=B * H)

    def lstm_bwd(self, dh, dc, acts, tc, c_prev, dz, dc_prev, thr):
        B, H = dh.shape
        _lstm_bwd(dh, dc, acts, tc, c_prev, self.dtype.type(thr), H, dz, dc_prev, size=B * H)

    def gru_fwd(self, hw, xw, bhn, h, acts, hn, h_new):
        B, H = h.shape
        _gru_fwd(hw, xw, bhn, h, H, acts, hn, h_new, size=B * H)

    def gru_bwd(self, dh, h, acts, hn, dxw, dhw, dhz, thr):
        B, H = dh.shape
        _gru_bwd(dh, h, acts, hn, self.dtype.type(thr), H, dxw, dhw, dhz, size=B * H)

    def elman_fwd(self, h, xw, use_tanh):
        _elman_fwd(xw, bool(use_tanh), h, size=h.size)

    def elman_bwd(self, dh, h, da, use_tanh, thr):
        _elman_bwd(dh, h, bool(use_tanh), self.dtype.type(thr), da, size=dh.size)


_LIBS = {}


def library(dtype):
    dt = cp.dtype(dtype)
    if dt not in _LIBS:
        _LIBS[dt] = _Library(dt)
    return _LIBS[dt]
