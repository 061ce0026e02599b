"""Linear recurrences h_t = a_t ⊙ h_(t-1) + b_t over all T steps at once (no loop over time).

A cell whose state follows such a recurrence, with a_t and b_t functions of the input
alone (MinGRU, MinLSTM: ``Cell.linear``), can be trained in parallel over time. The pairs
(a_t, b_t) compose associatively, (a, b) then (a', b') = (a' a, a' b + b'), so a prefix
scan computes every h_t in ceil(log2 T) passes, each one array operation over all steps
(Hillis and Steele's scan; on a GPU each pass is one kernel over T·B·H numbers).

Heinsen's log-space form (log a*_t as a cumulative sum, the sum of b_k / a*_k as a
log-cumulative-sum-exp) does the same in two passes, but it cannot represent a_t = 0:
a state reset, a saturated gate (σ(x) = 1 exactly for x > 37 in float64) and a
truncation window all give exact zeros, where it yields inf − inf. The prefix scan takes
zeros and b of either sign as they come, and equals the step-by-step loop to rounding.

The backward is the same scan run backwards: g_t = dh_t + a_(t+1) ⊙ g_(t+1), then
da_t = g_t ⊙ h_(t-1), db_t = g_t. Chosen with ``unrolled.settings.scan = "parallel"``
(see :func:`unrolled.explain`).
"""


def prefix_scan(a, b, xp):
    """(A, B), each (T, ...): the composition of steps 0..t, so h_t = A_t h_0 + B_t."""
    A, Bv = a.copy(), b.copy()
    T = a.shape[0]
    k = 1
    while k < T:
        Bv[k:] = A[k:] * Bv[:-k] + Bv[k:]  # the right side is read before it is written
        A[k:] = A[k:] * A[:-k]
        k *= 2
    return A, Bv


def linear_scan(a, b, h0, xp):
    """(T+1, B, H): h_0 and h_t = a_t h_(t-1) + b_t for t = 1..T."""
    A, Bv = prefix_scan(a, b, xp)
    h = xp.empty((a.shape[0] + 1,) + h0.shape, dtype=h0.dtype)
    h[0] = h0
    h[1:] = A * h0 + Bv
    return h


def linear_scan_back(a, h, dh, d_final, xp, coef=None):
    """The backward of :func:`linear_scan`: (da, db, dh0) for gradients ``dh`` (T, B, H)
    w.r.t. h_1..h_T (None: zero) and ``d_final`` (B, H) w.r.t. h_T (None: zero).
    ``coef`` (T, B, H) replaces a_(t+1) as the factor that carries g back from t+1 to t
    (a truncation window multiplies it)."""
    d = xp.zeros_like(a) if dh is None else dh.astype(a.dtype, copy=True)
    if d_final is not None:
        d[-1] += d_final
    if coef is None:  # g_t = d_t + a_(t+1) g_(t+1)
        coef = xp.ones_like(a)
        coef[:-1] = a[1:]
    g = linear_scan(coef[::-1], d[::-1], xp.zeros_like(d[0]), xp)[1:][::-1]
    return g * h[:-1], g, a[0] * g[0]
