"""Compiled loops for the rest of a training step: updates, norms, the loss, scatters.

The recurrent loop is not the whole of a training step: the optimizer's update, the
gradient norm, the softmax cross-entropy and the embedding's gradient each pass over
arrays of the size of the model or of the logits. Written with NumPy operators, each
pass allocates a temporary per operator; the loops here make one pass and write in
place. Each is the readable NumPy formula of its caller (:mod:`unrolled.optim`,
:mod:`unrolled.losses`, :mod:`unrolled.layers.core`) written element by element in
the same order of operations and in the arrays' dtype, so the results are those of the
readable code: bit for bit for the updates and the scatter, to rounding for the loss
(whose exponentials NumPy computes) and the norms (summed in float64).

They run where the engine's compiled loop runs (NumPy arrays, numba importable,
``unrolled.settings.backend`` "auto" or "numba", see :func:`use_compiled`); the
readable code runs everywhere else, CuPy arrays included. numba is imported, and each
loop compiled (then cached on disk), on first use.
"""
import numpy as np

_JIT = {}


def use_compiled(xp):
    """True where the compiled loops run for arrays of module ``xp``."""
    from .kernels import resolve

    return resolve(None, xp) == "numba"


def kernel(name):
    """The compiled form of the loop ``_name`` of this module (compiled on first use)."""
    fn = _JIT.get(name)
    if fn is None:
        import numba

        fn = numba.njit(cache=True, nogil=True, boundscheck=False,
                        error_model="numpy")(globals()["_" + name])
        _JIT[name] = fn
    return fn


def flat(a):
    """``a`` as a 1-D view (None where it is not C-contiguous, so no view exists)."""
    return a.reshape(-1) if a.flags.c_contiguous else None


# ---------------------------------------------------------------------------- updates
# Scalars arrive in the arrays' dtype, converted once by the caller as NumPy converts a
# Python float in ``array * float``, so every operation below runs in that dtype.

def _adam(p, g, m, v, vmax, coupled, wd, decoupled, decay, small, w, one_minus_w,
          beta2, one_minus_beta2, amsgrad, step_size, bc2, eps):
    for i in range(p.size):
        gi = g[i]
        pi = p[i]
        if coupled:
            gi = gi + wd * pi
        if decoupled:
            pi = pi * decay
        mi = m[i]
        if small:  # torch's lerp: two forms by the weight
            mi = mi + w * (gi - mi)
        else:
            mi = gi - (gi - mi) * one_minus_w
        m[i] = mi
        vi = v[i] * beta2 + one_minus_beta2 * (gi * gi)
        v[i] = vi
        if amsgrad:
            mx = vmax[i]
            if mx != mx or vi != vi:  # np.maximum propagates NaN
                vi = mx + vi
            elif mx > vi:
                vi = mx
            vmax[i] = vi
        denom = np.sqrt(vi) / bc2 + eps
        p[i] = pi - step_size * (mi / denom)


def _sgd(p, g, buf, wd, momentum, first, one_minus_dampening, nesterov, lr):
    for i in range(p.size):
        gi = g[i]
        if wd != 0:
            gi = gi + wd * p[i]
        if momentum != 0:
            if first:  # torch starts the buffer at the first gradient, undamped
                b = gi
            else:
                b = buf[i] * momentum + one_minus_dampening * gi
            buf[i] = b
            gi = gi + momentum * b if nesterov else b
        p[i] = p[i] - lr * gi


# ----------------------------------------------------------------------------- norms

def _sum_squares(g):
    """The sum of squares of a 1-D array, in float64 (four running sums)."""
    s0 = s1 = s2 = s3 = 0.0
    n = g.size
    n4 = n - n % 4
    for i in range(0, n4, 4):
        a, b, c, d = float(g[i]), float(g[i + 1]), float(g[i + 2]), float(g[i + 3])
        s0 += a * a
        s1 += b * b
        s2 += c * c
        s3 += d * d
    for i in range(n4, n):
        a = float(g[i])
        s0 += a * a
    return (s0 + s1) + (s2 + s3)


# --------------------------------------------------------------------------- scatter

def _scatter_add(dW, idx, d):
    """``np.add.at(dW, idx, d)``: row ``idx[i]`` of dW += row i of d, in the order of i."""
    for i in range(idx.size):
        r = idx[i]
        for j in range(d.shape[1]):
            dW[r, j] += d[i, j]


# ---------------------------------------------------------------- softmax cross-entropy
# Logits o (B, T, C) in any layout; targets t (B, T) integers; valid (B, T) bool where
# has_mask; cw (C,) float64 class weights where weighted. First pass: check, shift each
# valid row by its maximum into d, note each row's weight; NumPy exponentiates d in
# place; second pass: the loss and d = (softmax - onehot) * weight.

def _ce_shift(o, t, valid, has_mask, cw, weighted, d, zt, wrow):
    """Returns (status, number of valid rows, sum of their weights); status 0 is fine,
    1 a target out of range, 2 a logit that is NaN or inf (the caller reports which)."""
    B, T, C = o.shape
    n, wsum = 0, 0.0
    for b in range(B):
        for s in range(T):
            if has_mask and not valid[b, s]:
                for c in range(C):
                    d[b, s, c] = 0
                wrow[b, s] = 0.0
                continue
            k = t[b, s]
            if k < 0 or k >= C:
                return 1, n, wsum
            m = o[b, s, 0]
            for c in range(C):
                x = o[b, s, c]
                if not np.isfinite(x):
                    return 2, n, wsum
                if x > m:
                    m = x
            for c in range(C):
                d[b, s, c] = o[b, s, c] - m
            zt[b, s] = d[b, s, k]
            w = cw[k] if weighted else 1.0
            wrow[b, s] = w
            wsum += w
            n += 1
    return 0, n, wsum


def _ce_finish(t, valid, has_mask, d, zt, wrow, scale):
    """Turns d = exp(z) into (softmax - onehot) * weight * scale (in float64, rounded
    once into d); returns -sum(weight * log softmax[target]) over the valid rows."""
    B, T, C = d.shape
    total = 0.0
    C4 = C - C % 4
    for b in range(B):
        for s in range(T):
            if has_mask and not valid[b, s]:
                for c in range(C):
                    d[b, s, c] = 0
                continue
            s0 = s1 = s2 = s3 = 0.0
            for c in range(0, C4, 4):
                s0 += d[b, s, c]
                s1 += d[b, s, c + 1]
                s2 += d[b, s, c + 2]
                s3 += d[b, s, c + 3]
            for c in range(C4, C):
                s0 += d[b, s, c]
            tot = (s0 + s1) + (s2 + s3)
            total += wrow[b, s] * (float(zt[b, s]) - np.log(tot))
            inv = 1.0 / tot
            wt = wrow[b, s] * scale
            k = t[b, s]
            ek = float(d[b, s, k])
            for c in range(C):
                d[b, s, c] = (d[b, s, c] * inv) * wt
            d[b, s, k] = (ek * inv - 1.0) * wt
    return -total
