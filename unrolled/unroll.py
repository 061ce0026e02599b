"""THE time loop, once, for every cell.

Forward over T keeping a tape of exactly what the backward needs; backpropagation through
time over that tape. Masks, truncation and teacher forcing are policies of this loop, so
they work for every cell. Arrays are time-major here: X is (T, B, D).

The work that does not depend on the recurrence is done at the size of the sequence:
the input projection of all T steps is one matrix product before the loop, and the
weight gradients are one matrix product over the whole tape after it. Only the recurrent
product and the cell's own arithmetic stay inside the loop. The loop never names a gate.

The loop runs on one of the backends of :mod:`unrolled.kernels`. On the fast ones
("numpy", "numba") every array a step touches is allocated before the loop (the tape,
the gradient of each step's input projection, the cell's workspace) and each step
writes into slices of them: the loop itself allocates nothing. BPTT there is also
subnormal-safe: state gradients below :func:`flush_threshold` are set to zero, which
changes no result beyond float rounding and avoids the many-fold slowdown of subnormal
arithmetic when gradients vanish. The "reference" backend is the readable definition.
"""
import os
from dataclasses import dataclass, field

from . import kernels


@dataclass
class Tape:
    """What the forward pass leaves for the backward pass of one direction of one layer."""

    X: object                 # (T, B, D) inputs of this layer (a reference, not a copy)
    states: tuple             # per state component (T+1, B, S); [0] is the initial state
    tape: dict = field(default_factory=dict)  # per cache name (T, B, ...)
    mask: object = None       # (T, B) bool or None
    teacher: bool = False     # states[:-1] were given, not computed


def _mask_col(mask, t):
    return None if mask is None else mask[t][:, None]


FLUSH_EVERY = 4  # steps between flushes on the NumPy path (the compiled kernels: every step)


def flush_threshold(dtype):
    """Gradients smaller than this in magnitude are flushed to zero by the fast BPTT.

    2**24 (float32) or 2**53 (float64) times the smallest normal number, i.e. about
    2e-31 in float32: a value this small is below the rounding of any gradient larger
    than 1e-24, so dropping it is within float rounding, and it keeps every product of
    the backward pass away from the slow subnormal range.
    """
    import numpy as np

    dt = np.dtype(dtype)
    return float(np.finfo(dt).tiny) * (2.0 ** (24 if dt.itemsize <= 4 else 53))


def _fast_ok(cell, backend, prev_states):
    return backend != "reference" and prev_states is None and cell.fast


def _block_setting():
    v = os.environ.get("UNROLLED_BLOCK_STEPS", "").strip().lower()
    return None if v in ("", "none", "0") else ("auto" if v == "auto" else int(v))


_block = [_block_setting()]


def set_block_steps(k):
    """Steps per block of the sequence-sized products on the fast path; returns the old value.

    ``None`` (the default): one block, the whole sequence. ``"auto"``: K with K*B >= 128
    rows (at least 4 steps). An int: that many steps. Also settable with the
    environment variable ``UNROLLED_BLOCK_STEPS``. Blocks trade nothing in results
    (float rounding aside) for memory: see :func:`time_chunk`.
    """
    if not (k is None or k == "auto" or (isinstance(k, int) and k >= 1)):
        raise ValueError(f"block steps must be None, 'auto' or a positive int, got {k!r}")
    old = _block[0]
    _block[0] = k
    return old


def time_chunk(T, B):
    """Steps per block of the sequence-sized products on the fast path.

    The input projection (before the steps) and the weight gradients and dX (after
    them) are matrix products over blocks of K steps. With K < T their buffers are
    (K, B, .) instead of (T, B, .), so the memory of a training step is the tape and
    little more; K*B >= 128 rows keeps them efficient GEMMs (0-15 % slower than one
    block for B=32, T=100).
    """
    k = _block[0]
    if k is None:
        return T
    if k == "auto":
        k = max(4, -(-128 // B))
    return max(1, min(T, k))


def _compiled(cell, be, xp, dtype, plain=True):
    """The whole-loop (forward, backward) for this call, or None (the per-step loop).

    "numba": the loop compiled (:mod:`unrolled.kernels.loop_numba`); "cupy": the loop
    recorded as CUDA graphs (:mod:`unrolled.kernels.loop_cupy`), for calls without masks
    or truncation (``plain``).
    """
    if be not in ("numba", "cupy") or getattr(cell, "loop_kind", None) is None:
        return None
    import numpy as np

    if np.dtype(dtype) not in (np.float32, np.float64):
        return None
    if be == "cupy":
        if not plain:
            return None
        from .kernels import loop_cupy

        return loop_cupy.loops(dtype, cell.loop_kind)
    from .kernels import loop_numba

    if not loop_numba.available():
        return None
    return loop_numba.loops(dtype, cell.loop_kind)


def _c(a, xp):
    return xp.ascontiguousarray(a)


def _project(X, p, a, n, out, xp):
    """out[:n] = X[a:a+n] W_ih^T + every foldable bias (the input projection of n steps)."""
    _, B, D = X.shape
    G = out.shape[-1]
    xp.matmul(X[a:a + n].reshape(n * B, D), p["weight_ih"].T, out=out[:n].reshape(n * B, G))
    out[:n] += p["bias_x"]


def forward(cell, p, X, state0, xp, mask=None, keep_tape=True, prev_states=None, backend=None):
    """Run ``cell`` over ``X`` (T, B, D) from ``state0`` (tuple of (B, S) arrays).

    ``p`` holds the cell's parameters after ``cell.prepare``. With ``prev_states`` (tuple of
    (T, B, S): the state fed into each step, e.g. true previous targets under teacher
    forcing) the steps are independent and run as one batched step with no sequential loop.
    A masked (padded) step carries the state through unchanged. ``backend`` overrides
    :func:`unrolled.kernels.get_backend` for this call.
    Returns a :class:`Tape`; ``tape.states[0][1:]`` is the output sequence.
    """
    be = kernels.resolve(backend, xp)
    if not _fast_ok(cell, be, prev_states):
        return _forward_reference(cell, p, X, state0, xp, mask, keep_tape, prev_states)
    T, B, _ = X.shape
    dtype = X.dtype
    kern = kernels.kernels_for(be, dtype)
    # input projection of K steps at a time, with every bias the cell lets us fold in
    K = time_chunk(T, B)
    XW = xp.empty((K, B, p["weight_ih"].shape[0]), dtype=dtype)
    H = state0[0].shape[-1]
    states = tuple(xp.empty((T + 1,) + s.shape, dtype=dtype) for s in state0)
    for s, s0 in zip(states, state0):
        s[0] = s0
    shapes = cell.tape_shapes(B, H)
    n = T if keep_tape else 1  # without a tape, one step's cache is reused
    tape = {k: xp.empty((n,) + sh, dtype=dtype) for k, sh in shapes.items()}
    comp = _compiled(cell, be, xp, dtype, mask is None)
    if comp is not None:  # the whole loop compiled: one call per block of K steps
        pad = xp.logical_not(mask) if mask is not None else xp.zeros((0, 0), bool)
        z = xp.empty(XW.shape[1:], dtype=dtype)  # a step's recurrent product
        args = (tuple(tape.values()), tuple(_c(a, xp) for a in cell.loop_params(p)),
                _c(p["W_hhT"], xp), z, pad, keep_tape)
        for t0 in range(0, T, K):
            n_ = min(K, T - t0)
            _project(X, p, t0, n_, XW, xp)
            comp[0](t0, n_, XW, states, *args)
        return Tape(X, states, tape if keep_tape else {}, mask)
    ws = cell.workspace(B, H, dtype, xp)
    keep = xp.logical_not(mask)[:, :, None] if mask is not None else None
    for t in range(T):
        prev = tuple(s[t] for s in states)
        new = tuple(s[t + 1] for s in states)
        j = t if keep_tape else 0
        cache = {k: v[j] for k, v in tape.items()}
        if t % K == 0:
            _project(X, p, t, min(K, T - t), XW, xp)
        cell.step_into(p, XW[t % K], prev, new, cache, ws, xp, kern)
        if keep is not None:  # a padded step carries the state through
            for s in states:
                xp.copyto(s[t + 1], s[t], where=keep[t])
    return Tape(X, states, tape if keep_tape else {}, mask)


def backward(cell, p, tp, xp, d_out=None, d_final=None, truncate=None, backend=None,
             need_dx=True):
    """Backpropagation through time over the tape ``tp``.

    ``d_out`` (T, B, S0): gradient of the loss w.r.t. the output sequence (ignored at
    padded steps). ``d_final``: tuple of (B, S) gradients w.r.t. the final state (or None).
    ``truncate=k``: the gradient reaches back only over each record's last k valid steps.
    ``backend`` overrides :func:`unrolled.kernels.get_backend` for this call.
    ``need_dx=False`` skips the input gradient (the inputs are data): dX is then None.
    Returns ``(grads, dX, d_state0)``: parameter gradients (dict), dX (T, B, D), and the
    gradient w.r.t. the initial state (tuple of (B, S)).
    """
    if tp.teacher is not False:
        return _backward_decoupled(cell, p, tp, xp, d_out, d_final, need_dx)
    be = kernels.resolve(backend, xp)
    # a tape written by the reference loop has the reference cache layout
    if not _fast_ok(cell, be, None) or set(tp.tape) != set(cell.tape_shapes(1, 1)):
        return _backward_reference(cell, p, tp, xp, d_out, d_final, truncate, need_dx)
    return _backward_fast(cell, p, tp, xp, d_out, d_final, truncate, be, need_dx)


def _backward_fast(cell, p, tp, xp, d_out, d_final, truncate, be, need_dx=True):
    X, states, mask = tp.X, tp.states, tp.mask
    T, B, D = X.shape
    dtype = X.dtype
    kern = kernels.kernels_for(be, dtype)
    H = states[0].shape[-1]
    thr = flush_threshold(dtype)
    # the state gradient lives in two sets of buffers that swap roles every step
    dstate = [xp.zeros(s.shape[1:], dtype=dtype) for s in states]
    dnext = [xp.empty(s.shape[1:], dtype=dtype) for s in states]
    if d_final is not None:
        for d, df in zip(dstate, d_final):
            if df is not None:
                d[...] = df
    if d_out is not None and mask is not None:
        d_out = d_out * mask[:, :, None]  # padded steps take no gradient from the output
    win = None if truncate is None else truncation_window(mask, T, B, truncate, xp, dtype)
    G = p["weight_ih"].shape[0]
    K = time_chunk(T, B)  # dXW and the cell's saved arrays for K steps at a time
    dXW = xp.empty((K, B, G), dtype=dtype)
    saved = {k: xp.empty((K,) + sh, dtype=dtype) for k, sh in cell.saved_shapes(B, H).items()}
    dX = xp.empty((T, B, D), dtype=dtype) if need_dx else None
    grads = {}
    comp = _compiled(cell, be, xp, dtype, mask is None and win is None)
    if comp is not None:
        return _backward_compiled(comp[1], cell, p, tp, xp, d_out, win, dstate, dnext, thr,
                                  K, dXW, saved, dX, grads)
    if mask is not None:
        m_f = mask.astype(dtype)[:, :, None]
        keep_f = 1 - m_f
        dcell = [xp.empty_like(d) for d in dstate]
    ws = cell.workspace(B, H, dtype, xp)
    flush_ws = None if kern is not None else (xp.empty((B, H), dtype=dtype),
                                               xp.empty((B, H), dtype=bool))
    for t in range(T - 1, -1, -1):
        if d_out is not None:
            dstate[0] += d_out[t]
        if win is not None:
            for d in dstate:
                d *= win[t]
        dc = dstate
        if mask is not None:
            for a, d in zip(dcell, dstate):
                xp.multiply(d, m_f[t], out=a)
            dc = dcell
        prev = tuple(s[t] for s in states)
        new = tuple(s[t + 1] for s in states)
        cache = {k: v[t] for k, v in tp.tape.items()}
        t0 = t - t % K  # this step's block is [t0, t0 + K)
        sv = {k: v[t - t0] for k, v in saved.items()}
        # ufunc flushing costs calls: the NumPy path flushes every FLUSH_EVERY steps (a
        # gradient cannot fall from the threshold into subnormals in so few steps)
        fl = thr if kern is not None or t % FLUSH_EVERY == 0 else 0.0
        cell.step_back_into(p, cache, prev, new, dc, dXW[t - t0], dnext, sv, ws, xp, kern, fl)
        if mask is not None:  # a padded step passes the gradient on untouched
            for a, d in zip(dnext, dstate):
                d *= keep_f[t]
                a += d
        if flush_ws is not None and fl:
            for a in dnext:
                _flush(a, thr, flush_ws, xp)
        dstate, dnext = dnext, dstate
        if t == t0:  # the block is done: its share of the weight gradients and of dX
            _block_grads(cell, p, tp, xp, t0, min(K, T - t0), dXW, saved, dX, grads)
    return grads, dX, tuple(dstate)


def _backward_compiled(bwd, cell, p, tp, xp, d_out, win, dS, dN, thr, K, dXW, saved, dX,
                       grads):
    """BPTT with the compiled loop: one call per block of K steps, newest block first."""
    # the compiled products assume C-contiguous rows: a tape made elsewhere (sliced, say)
    # is read through contiguous copies (it is only read here)
    states, mask = tuple(_c(s, xp) for s in tp.states), tp.mask
    T = tp.X.shape[0]
    dtype = tp.X.dtype
    none2, none3 = xp.zeros((0, 0), dtype), xp.zeros((0, 0, 0), dtype)
    d_out = none3 if d_out is None else _c(d_out, xp)
    win = none2 if win is None else _c(win[:, :, 0], xp)
    m = none2 if mask is None else mask.astype(dtype)
    dS, dN = tuple(dS), tuple(dN)
    dcell = tuple(xp.empty_like(d) for d in dS) if mask is not None else dN
    args = (tuple(_c(v, xp) for v in tp.tape.values()),
            tuple(_c(a, xp) for a in cell.loop_params(p)),
            _c(p["weight_hh"], xp), dXW, tuple(saved.values()))
    acc = _grad_gemm(cell, xp, dtype)
    for t0 in range((T - 1) // K * K, -1, -K):
        n = min(K, T - t0)
        bwd(t0, n, states, *args, dS, dN, dcell, d_out, win, m, thr)
        if n % 2:  # the two buffers swapped roles an odd number of times
            dS, dN = dN, dS
        _block_grads(cell, p, tp, xp, t0, n, dXW, saved, dX, grads, acc)
    return grads, dX, dS


def _grad_gemm(cell, xp, dtype):
    """The compiled C = A^T B + beta C for the weight gradients (NumPy arrays), or None."""
    if getattr(xp, "__name__", "") != "numpy":
        return None
    from .kernels import loop_numba

    return loop_numba.loops(dtype, "gemm_tn")


def _add_product(grads, k, A, Bm, acc, xp):
    """grads[k] += A^T Bm: with ``acc`` straight into the running sum (no temporary)."""
    if acc is None:
        _accumulate(grads, k, A.T @ Bm)
        return
    A, Bm = _c(A, xp), _c(Bm, xp)
    if k not in grads:
        grads[k] = xp.empty((A.shape[1], Bm.shape[1]), dtype=A.dtype)
        acc(A, Bm, grads[k], 0.0)
    else:
        acc(A, Bm, grads[k], 1.0)


def _block_grads(cell, p, tp, xp, a, n, dXW, saved, dX, grads, acc=None):
    """Add steps [a, a+n)'s weight gradients to ``grads``; write their dX. Each product is
    added to its sum before the next is made (with ``acc``, the compiled
    C = A^T B + beta C, without any temporary)."""
    X, states = tp.X, tp.states
    _, B, D = X.shape
    H = states[0].shape[-1]
    G = dXW[:n].reshape(n * B, -1)
    if dX is not None:
        xp.matmul(G, p["weight_ih"], out=dX[a:a + n].reshape(n * B, D))
    _add_product(grads, "weight_ih", G, X[a:a + n].reshape(n * B, D), acc, xp)
    _accumulate(grads, "bias_ih", G.sum(0))
    # the fast cells' dW_hh: their recurrent rows against the previous states
    R = cell.recurrent_grad_rows(dXW[:n], {k: v[:n] for k, v in saved.items()})
    R = R.reshape(n * B, -1)
    _add_product(grads, "weight_hh", R, states[0][a:a + n].reshape(n * B, H), acc, xp)
    _accumulate(grads, "bias_hh", R.sum(0))


def _accumulate(grads, k, v):
    if k in grads:
        grads[k] += v
    else:
        grads[k] = v


def _flush(a, thr, ws, xp):
    """Set entries of ``a`` smaller than ``thr`` in magnitude to zero, in place."""
    mag, small = ws
    xp.abs(a, out=mag)
    xp.less(mag, thr, out=small)
    xp.copyto(a, 0, where=small)


def _forward_reference(cell, p, X, state0, xp, mask, keep_tape, prev_states):
    """The readable loop: the cell's ``step`` returns new arrays every step."""
    T, B, D = X.shape
    # input projection of all T steps at once
    XW = (X.reshape(T * B, D) @ p["weight_ih"].T + p["bias_ih"]).reshape(T, B, -1)
    if prev_states is not None:
        flat = tuple(s.reshape(T * B, -1) for s in prev_states)
        new, cache = cell.step(p, XW.reshape(T * B, -1), flat, xp)
        states = tuple(xp.concatenate([s0[None], n.reshape(T, B, -1)], 0)
                       for s0, n in zip(state0, new))
        tape = {k: v.reshape((T, B) + v.shape[1:]) for k, v in cache.items()} if keep_tape else {}
        if mask is not None:  # padded steps output zero; the final state is the last valid one
            for s in states:
                s[1:] *= mask[:, :, None]
        return Tape(X, tuple(states), tape, mask, teacher=prev_states)
    states = tuple(xp.empty((T + 1,) + s.shape, dtype=s.dtype) for s in state0)
    for s, s0 in zip(states, state0):
        s[0] = s0
    tape = {}
    for t in range(T):
        prev = tuple(s[t] for s in states)
        new, cache = cell.step(p, XW[t], prev, xp)
        m = _mask_col(mask, t)
        for s, n, pr in zip(states, new, prev):
            s[t + 1] = n if m is None else xp.where(m, n, pr)
        if keep_tape:
            for k, v in cache.items():
                if t == 0:
                    tape[k] = xp.empty((T,) + v.shape, dtype=v.dtype)
                tape[k][t] = v
    return Tape(X, states, tape, mask)


def truncation_window(mask, T, B, k, xp, dtype):
    """(T, B, 1) weights: 1 on each record's last ``k`` valid steps (and trailing pads)."""
    valid = xp.ones((T, B), dtype=dtype) if mask is None else mask.astype(dtype)
    rev_cum = xp.cumsum(valid[::-1], axis=0)[::-1]  # valid steps from t to the end
    return (rev_cum <= k).astype(dtype)[:, :, None]


def _backward_reference(cell, p, tp, xp, d_out, d_final, truncate, need_dx=True):
    """The readable BPTT loop: the cell's ``step_back`` returns new arrays every step."""
    X, states, mask = tp.X, tp.states, tp.mask
    T, B, _ = X.shape
    dtype = X.dtype
    dstate = [xp.zeros(s.shape[1:], dtype=dtype) if d_final is None or d_final[k] is None
              else d_final[k].copy() for k, s in enumerate(states)]
    win = None if truncate is None else truncation_window(mask, T, B, truncate, xp, dtype)
    dXW = None
    saved = {}
    for t in reversed(range(T)):
        m = _mask_col(mask, t)
        if d_out is not None:
            dstate[0] += d_out[t] if m is None else d_out[t] * m
        if win is not None:
            dstate = [d * win[t] for d in dstate]
        prev = tuple(s[t] for s in states)
        new = tuple(s[t + 1] for s in states)
        cache = {k: v[t] for k, v in tp.tape.items()}
        dcell = dstate if m is None else [d * m for d in dstate]
        dxw, dprev, sv = cell.step_back(p, cache, prev, new, dcell, xp)
        if dXW is None:
            dXW = xp.empty((T,) + dxw.shape, dtype=dtype)
        dXW[t] = dxw
        for k, v in sv.items():
            if k not in saved:
                saved[k] = xp.empty((T,) + v.shape, dtype=dtype)
            saved[k][t] = v
        # a padded step passes the gradient on untouched
        dstate = list(dprev) if m is None else [dp + d * ~m for dp, d in zip(dprev, dstate)]
    prev_states = tuple(s[:-1] for s in states)
    return _finish(cell, p, tp, xp, dXW, saved, prev_states, tuple(dstate), need_dx)


def _backward_decoupled(cell, p, tp, xp, d_out, d_final, need_dx=True):
    """Backward of a teacher-forced run: all steps at once, no gradient into given states."""
    X, states, mask = tp.X, tp.states, tp.mask
    T, B, _ = X.shape
    d = [xp.zeros((T, B) + s.shape[2:], dtype=X.dtype) for s in states]
    if d_out is not None:
        d[0] += d_out
    if d_final is not None:  # the final state is each record's last valid output
        last = last_valid_index(mask, T, B, xp)
        for k, df in enumerate(d_final):
            if df is not None:
                d[k][last, xp.arange(B)] += df
    if mask is not None:
        d = [g * mask[:, :, None] for g in d]
    flat = lambda a: a.reshape((T * B,) + a.shape[2:])
    prev = tuple(flat(s) for s in tp.teacher)
    new = tuple(flat(s[1:]) for s in states)
    cache = {k: flat(v) for k, v in tp.tape.items()}
    dxw, dprev, sv = cell.step_back(p, cache, prev, new, tuple(flat(g) for g in d), xp)
    dXW = dxw.reshape(T, B, -1)
    saved = {k: v.reshape((T, B) + v.shape[1:]) for k, v in sv.items()}
    d0 = tuple(g.reshape((T, B) + g.shape[1:])[0] for g in dprev)
    return _finish(cell, p, tp, xp, dXW, saved, tp.teacher, d0, need_dx)


def _finish(cell, p, tp, xp, dXW, saved, prev_states, d_state0, need_dx=True):
    X = tp.X
    T, B, D = X.shape
    G = dXW.reshape(T * B, -1)
    grads = {"weight_ih": G.T @ X.reshape(T * B, D), "bias_ih": G.sum(0)}
    grads.update(cell.weight_grads(p, prev_states, tp.tape, dXW, saved, xp))
    dX = (G @ p["weight_ih"]).reshape(T, B, D) if need_dx else None
    return grads, dX, d_state0


def last_valid_index(mask, T, B, xp):
    """(B,) index of each record's last valid step."""
    if mask is None:
        return xp.full((B,), T - 1)
    return T - 1 - xp.argmax(mask[::-1], axis=0)


def final_state(tp, xp):
    """Tuple of (B, S): each record's state after its last valid step."""
    if tp.teacher is False:
        return tuple(s[-1] for s in tp.states)
    T, B = tp.X.shape[:2]
    last = last_valid_index(tp.mask, T, B, xp)
    return tuple(s[1:][last, xp.arange(B)] for s in tp.states)
