"""THE time loop, once, for every cell and every backend.

Forward over T keeping a tape of exactly what the backward needs; backpropagation through
time over that tape. Masks, truncation, teacher forcing and blocks of steps are policies
of this loop, so they work for every cell (checkpointing is a policy on top of it, in
:mod:`unrolled.memory`). Arrays are time-major here: X is (T, B, D).

The work that does not depend on the recurrence is done in blocks of K steps (the
whole sequence by default): the input projection before the steps, the weight
gradients and dX after them, each one matrix product over K*B rows. Inside a block the
steps run one of two ways, chosen in one place (:func:`unrolled.kernels.plan`):

* the readable loop: the cell's ``step``/``step_back`` on whole arrays, every step in
  Python (any cell, any array module);
* the compiled loop: the block's steps in one call of the code generated from the
  cell's definition (numba on the CPU, CUDA graphs on a GPU), writing into buffers
  allocated before the loop. Its BPTT is also subnormal-safe: gradients below
  :func:`flush_threshold` are set to zero, which changes no result beyond float rounding
  and avoids the many-fold slowdown of subnormal arithmetic when gradients vanish.
"""
from dataclasses import dataclass, field

from . import kernels
from .settings import settings


@dataclass
class Tape:
    """What the forward pass leaves for the backward pass of one direction of one layer."""

    X: object                 # (T, B, D) inputs of this layer (a reference, not a copy)
    states: tuple             # per state component (T+1, B, S); [0] is the initial state
    tape: dict = field(default_factory=dict)  # per cache name (T, B, ...)
    mask: object = None       # (T, B) bool or None
    teacher: bool = False     # states[:-1] were given, not computed


def flush_threshold(dtype):
    """Gradients smaller than this in magnitude are flushed to zero by the compiled BPTT.

    2**24 (float32) or 2**53 (float64) times the smallest normal number, i.e. about
    2e-31 in float32: a value this small is below the rounding of any gradient larger
    than 1e-24, so dropping it is within float rounding, and it keeps every product of
    the backward pass away from the slow subnormal range.
    """
    import numpy as np

    dt = np.dtype(dtype)
    return float(np.finfo(dt).tiny) * (2.0 ** (24 if dt.itemsize <= 4 else 53))


def set_block_steps(k):
    """Steps per block of the sequence-sized products; returns the old value.

    ``None`` (the default): one block, the whole sequence. ``"auto"``: K with K*B >= 128
    rows (at least 4 steps). An int: that many steps. The same as
    ``unrolled.settings.block_steps`` (environment: ``UNROLLED_BLOCK_STEPS``).
    """
    old = settings.block_steps
    settings.block_steps = k
    return old


CHUNK_ROWS = 128  # rows (steps times batch), at least, of a block of steps ("auto")


def time_chunk(T, B):
    """Steps per block of the sequence-sized products.

    The input projection (before the steps) and the weight gradients and dX (after
    them) are matrix products over blocks of K steps. With K < T their buffers are
    (K, B, .) instead of (T, B, .), so the memory of a training step is the tape and
    little more; K*B >= 128 rows keeps them efficient GEMMs (0-15 % slower than one
    block for B=32, T=100).
    """
    k = settings.block_steps
    if k is None:
        return T
    if k == "auto":
        k = max(4, -(-CHUNK_ROWS // B))
    return max(1, min(T, k))


def _c(a, xp):
    return xp.ascontiguousarray(a)


def _project(X, p, a, n, out, bias, xp, Wx=None):
    """out[:n] = X[a:a+n] W_ihᵀ + bias (the input projection of n steps), followed by
    the steps' noise blocks where the cell has them (``p["noise"]``, (T, B, N*H)).
    ``Wx``: W_ihᵀ packed (:func:`packed`), for the compiled loop's threads."""
    _, B, D = X.shape
    G = p["weight_ih"].shape[0]
    noise = p.get("noise")
    if noise is None:
        if Wx is not None and Wx.ndim == 3:
            if not X[a:a + n].flags.c_contiguous and X.transpose(1, 0, 2).flags.c_contiguous:
                from .kernels import microkernel  # the caller's batch-first rows, uncopied

                microkernel.project(X, a, n, Wx, out, _c(xp.asarray(bias, dtype=X.dtype), xp),
                                    loop_threads())
                return
            _product(X[a:a + n].reshape(n * B, D), Wx, out[:n].reshape(n * B, G), bias, xp)
            return
        A, o = X[a:a + n].reshape(n * B, D), out[:n].reshape(n * B, G)
        xp.matmul(A, p["weight_ih"].T, out=o)
        out[:n] += bias
        return
    out[:n, :, :G] = (X[a:a + n].reshape(n * B, D) @ p["weight_ih"].T).reshape(n, B, G) + bias
    out[:n, :, G:] = noise[a:a + n]


def segment_params(p, a, b):
    """The prepared parameters for steps [a, b) of a call (the noise blocks sliced)."""
    if p.get("noise") is None:
        return p
    return {**p, "noise": p["noise"][a:b]}


def _xw_width(cell, p, B, xp):
    noise = p.get("noise")
    if noise is None and getattr(cell, "noise", ()):
        raise ValueError(f"the {cell.name} cell needs its noise inputs (p['noise']); run it "
                         "through a layer, which draws them")
    return p["weight_ih"].shape[0] + (0 if noise is None else noise.shape[-1])


def _loops(path, cell, xp, dtype):
    if path.name == "graphs":
        from .kernels import loop_cupy

        return loop_cupy.loops(cell, dtype)
    from .kernels import compiled

    return compiled.loops(cell, dtype)


_EMPTY = {}  # dtype -> an empty (0, 0) array: "no mask" for the step-by-step generator


def _mask_args(hm, B, H, dtype, xp):
    """(mask, buffer) for the compiled loop's recurrent dropout; empty where there is none."""
    if hm is None:
        e = xp.zeros((0, 0), dtype)
        return e, e
    return _c(xp.asarray(hm, dtype=dtype), xp), xp.empty((B, H), dtype)


# rows per block of the parallel loop, at least: every block reads all of W_hh at every
# step. Through BLAS, cutting a batch finer costs time (one thread, LSTM H = 256, B = 64:
# 16 % more CPU time in blocks of 16 rows than in one block, 44 % in blocks of 8); the
# packed product (kernels.microkernel) runs 4 rows near the speed of 16 (2 threads, LSTM
# H = 256, T = 100, training: B = 16 from 22.3 to 14.4 ms, B = 8 from 11.0 to 8.9 ms).
# None: 4 with the packed product, 16 through BLAS
MIN_BLOCK_ROWS = None
# more blocks than threads (up to BLOCKS_PER_THREAD each) where each keeps SHARE_ROWS rows:
# a thread whose core is busy with other work then takes fewer of them
BLOCKS_PER_THREAD = 2
SHARE_ROWS = 32
_BLOCKS = {}  # (B, threads) -> bounds


def loop_threads():
    """Threads the compiled loop runs on: ``settings.threads`` (the caller and helpers of
    :mod:`unrolled.kernels.pool`)."""
    return max(1, settings.threads)


def min_block_rows():
    """MIN_BLOCK_ROWS where set, else 4 with the packed product and 16 through BLAS."""
    if MIN_BLOCK_ROWS is not None:
        return MIN_BLOCK_ROWS
    from .kernels import microkernel

    return 4 if microkernel.available() else 16


def row_blocks(B, threads=None):
    """The row blocks the parallel compiled loop cuts a batch of B into: a list of bounds
    (block k is rows [bounds[k], bounds[k+1])), or None where it runs on one thread."""
    threads = loop_threads() if threads is None else threads
    # a multiple of the threads, so that on a quiet machine every thread does equal work
    nb = threads * max(1, min(BLOCKS_PER_THREAD, B // (threads * SHARE_ROWS)))
    nb = min(nb, B // min_block_rows())
    if threads < 2 or nb < 2:
        return None
    return [k * B // nb for k in range(nb + 1)]


def _row_blocks(path, B, xp):
    """(bounds, threads) for the compiled loop's parallel form, or None."""
    if path.name != "compiled" or getattr(xp, "__name__", "") != "numpy":
        return None
    threads = loop_threads()
    bounds = _BLOCKS.get((B, threads))
    if bounds is None:
        b = row_blocks(B, threads)
        if b is None:
            return None
        import numpy as np

        bounds = _BLOCKS[(B, threads)] = np.array(b, np.int64)
    return bounds, min(threads, len(bounds) - 1)


def _run_blocks(fn, args, blocks):
    from .kernels.pool import run_blocks

    bounds, threads = blocks
    run_blocks(fn, args + (bounds,), len(bounds) - 1, threads)


class _one_blas_thread:
    """BLAS on one thread inside the compiled loop: in its parallel form each of its
    threads calls BLAS on its own rows, and on one thread a step's product is too small
    for BLAS threads, which would synchronise at every step (many times slower on a busy
    machine). The previous count is restored after, for the products over all steps."""

    def __init__(self, path):
        self.on = path.name == "compiled"  # NumPy's BLAS (not the GPU's loop)

    def __enter__(self):
        self.old = None
        if self.on:
            from .kernels import loop_numba

            self.old = loop_numba.blas_threads(1)

    def __exit__(self, *exc):
        if self.old is not None and self.old != 1:
            from .kernels import loop_numba

            loop_numba.blas_threads(self.old)


def _product(A, Wp, out, bias, xp):
    """out = A W (+ bias) on the packed product, shared out over the loop's threads."""
    from .kernels import microkernel

    b = None if bias is None else _c(xp.asarray(bias, dtype=A.dtype), xp)
    microkernel.product(_c(A, xp), Wp, out, b, loop_threads())


def packed(W, xp):
    """The recurrent weight as the compiled loop's product reads it: W (K, N) packed into
    panels once per call (:mod:`unrolled.kernels.microkernel`), or W itself where that
    product is off."""
    if getattr(xp, "__name__", "") != "numpy" or not W.size:  # the GPU's loop: W itself
        return _c(W, xp)
    from .kernels import microkernel

    P = microkernel.pack(W, xp)
    return _c(W, xp) if P is W else P  # packed from a view (W_ih.T) without a copy first


def _units(cell, p, H, dtype, xp):
    from .kernels.compiled import units_array

    return units_array(cell, p, H, dtype, xp)


def forward(cell, p, X, state0, xp, mask=None, keep_tape=True, prev_states=None, backend=None):
    """Run ``cell`` over ``X`` (T, B, D) from ``state0`` (tuple of (B, S) arrays).

    ``p`` holds the cell's parameters after ``cell.prepare``. With ``prev_states`` (tuple of
    (T, B, S): the state fed into each step, e.g. true previous targets under teacher
    forcing) the steps are independent and run as one batched step with no sequential loop.
    A masked (padded) step carries the state through unchanged. ``backend`` overrides
    ``unrolled.settings.backend`` for this call.
    Returns a :class:`Tape`; ``tape.states[0][1:]`` is the output sequence.
    """
    if prev_states is not None:
        return _forward_decoupled(cell, p, X, state0, xp, mask, keep_tape, prev_states)
    T, B, _ = X.shape
    dtype = X.dtype
    hm = p.get("h_mask")
    path = kernels.plan(cell, xp, dtype, backend, masked=mask is not None,
                        recurrent_mask=hm is not None)
    if path.name == "scan":
        return _forward_scan(cell, p, X, state0, xp, mask)
    K = time_chunk(T, B)
    XW = xp.empty((K, B, _xw_width(cell, p, B, xp)), dtype=dtype)
    states = tuple(xp.empty((T + 1,) + s.shape, dtype=dtype) for s in state0)
    for s, s0 in zip(states, state0):
        s[0] = s0
    if path.compiled:
        H = state0[0].shape[-1]
        n = T if keep_tape else 1  # without a tape, one step's cache is reused
        tape = {k: xp.empty((n, B, H), dtype=dtype) for k in cell.cache}
        loops = _loops(path, cell, xp, dtype)
        pad = xp.logical_not(mask) if mask is not None else xp.zeros((0, 0), bool)
        z = xp.empty((B, p["weight_ih"].shape[0]), dtype=dtype)  # a step's recurrent product
        br = p["bias_r"] if p.get("bias_r") is not None else xp.zeros(0, dtype)
        args = (tuple(tape.values()), _units(cell, p, H, dtype, xp), packed(p["W_hhT"], xp), z,
                _c(br, xp), pad, keep_tape) + _mask_args(hm, B, H, dtype, xp)
        blocks = _row_blocks(path, B, xp)
        Wx = packed(p["weight_ih"].T, xp) if path.name == "compiled" else None
        for t0 in range(0, T, K):
            n_ = min(K, T - t0)
            _project(X, p, t0, n_, XW, p["bias_x"], xp, Wx)
            with _one_blas_thread(path):
                if blocks is None:
                    loops.forward(t0, n_, XW, states, *args)
                else:
                    _run_blocks(loops.forward_blocks, (t0, n_, XW, states) + args, blocks)
        return Tape(X, states, tape if keep_tape else {}, mask)
    tape = {}
    for t in range(T):
        if t % K == 0:
            _project(X, p, t, min(K, T - t), XW, p["bias_ih"], xp)
        prev = tuple(s[t] for s in states)
        new, cache = cell.step(p, XW[t % K], prev, xp)
        m = None if mask is None else mask[t][:, None]
        for s, nw, pr in zip(states, new, prev):
            s[t + 1] = nw if m is None else xp.where(m, nw, pr)  # a padded step carries
        if keep_tape:
            for k, v in cache.items():
                if k not in tape:
                    tape[k] = xp.empty((T,) + v.shape, dtype=v.dtype)
                tape[k][t] = v
    return Tape(X, states, tape, mask)


def backward(cell, p, tp, xp, d_out=None, d_final=None, truncate=None, backend=None,
             need_dx=True):
    """Backpropagation through time over the tape ``tp``.

    ``d_out`` (T, B, S0): gradient of the loss w.r.t. the output sequence (ignored at
    padded steps). ``d_final``: tuple of (B, S) gradients w.r.t. the final state (or None).
    ``truncate=k``: the gradient reaches back only over each record's last k valid steps.
    ``backend`` overrides ``unrolled.settings.backend`` for this call.
    ``need_dx=False`` skips the input gradient (the inputs are data): dX is then None.
    Returns ``(grads, dX, d_state0)``: parameter gradients (dict), dX (T, B, D), and the
    gradient w.r.t. the initial state (tuple of (B, S)).
    """
    if tp.teacher is not False:
        return _backward_decoupled(cell, p, tp, xp, d_out, d_final, need_dx)
    X, states, mask = tp.X, tp.states, tp.mask
    T, B, D = X.shape
    dtype = X.dtype
    path = kernels.plan(cell, xp, dtype, backend, masked=mask is not None,
                        truncated=truncate is not None, recurrent_mask=p.get("h_mask") is not None)
    if "_scan_xw" in tp.tape:  # written by the parallel scan: its own backward
        return _backward_scan(cell, p, tp, xp, d_out, d_final, truncate, need_dx)
    # a tape the compiled loop did not write (a general cell's) is read by the readable one
    if path.compiled and set(tp.tape) != set(cell.cache):
        path = kernels.Path("readable", "the tape was written by the readable loop")
    dstate = [xp.zeros(s.shape[1:], dtype=dtype) for s in states]
    if d_final is not None:
        for d, df in zip(dstate, d_final):
            if df is not None:
                d[...] = df
    if d_out is not None and mask is not None:
        d_out = d_out * mask[:, :, None]  # padded steps take no gradient from the output
    win = None if truncate is None else truncation_window(mask, T, B, truncate, xp, dtype)
    K = time_chunk(T, B)  # dXW and the cell's saved arrays for K steps at a time
    dXW = xp.empty((K, B, p["weight_ih"].shape[0]), dtype=dtype)
    dX = xp.empty((T, B, D), dtype=dtype) if need_dx else None
    if path.compiled:
        return _backward_compiled(path, cell, p, tp, xp, d_out, win, dstate, K, dXW, dX)
    grads, saved = {}, {}
    for t in range(T - 1, -1, -1):
        m = None if mask is None else mask[t][:, None]
        if d_out is not None:
            dstate[0] = dstate[0] + d_out[t]
        if win is not None:
            dstate = [d * win[t] for d in dstate]
        prev = tuple(s[t] for s in states)
        new = tuple(s[t + 1] for s in states)
        cache = {k: v[t] for k, v in tp.tape.items()}
        dcell = dstate if m is None else [d * m for d in dstate]
        dxw, dprev, sv = cell.step_back(p, cache, prev, new, tuple(dcell), xp)
        t0 = t - t % K  # this step's block is [t0, t0 + K)
        dXW[t - t0] = dxw
        for k, v in sv.items():
            if k not in saved:
                saved[k] = xp.empty((K,) + v.shape, dtype=v.dtype)
            saved[k][t - t0] = v
        # a padded step passes the gradient on untouched
        dstate = list(dprev) if m is None else [dp + d * ~m for dp, d in zip(dprev, dstate)]
        if t == t0:  # the block is done: its share of the weight gradients and of dX
            n = min(K, T - t0)
            _block_input_grads(p, tp, xp, t0, n, dXW, dX, grads, None)
            sv_n = {k: v[:n] for k, v in saved.items()}
            g = cell.weight_grads(p, tuple(s[t0:t0 + n] for s in states),
                                  {k: v[t0:t0 + n] for k, v in tp.tape.items()},
                                  dXW[:n], sv_n, xp)
            for k, v in g.items():
                _accumulate(grads, k, v)
    return grads, dX, tuple(dstate)


def _backward_compiled(path, cell, p, tp, xp, d_out, win, dstate, K, dXW, dX):
    """BPTT with the compiled loop: one call per block of K steps, newest block first."""
    # the compiled products assume C-contiguous rows: a tape made elsewhere (sliced, say)
    # is read through contiguous copies (it is only read here)
    states, mask = tuple(_c(s, xp) for s in tp.states), tp.mask
    T, B, _ = tp.X.shape
    dtype = tp.X.dtype
    H = states[0].shape[-1]
    loops = _loops(path, cell, xp, dtype)
    dS = tuple(dstate)
    dN = tuple(xp.empty_like(d) for d in dS)
    none2, none3 = xp.zeros((0, 0), dtype), xp.zeros((0, 0, 0), dtype)
    d_out = none3 if d_out is None else _c(d_out, xp)
    win = none2 if win is None else _c(win[:, :, 0], xp)
    m = none2 if mask is None else mask.astype(dtype)
    dcell = tuple(xp.empty_like(d) for d in dS) if mask is not None else dN
    rec = getattr(cell, "recurrent", True)
    SV = () if cell.tied or not rec else (xp.empty_like(dXW),)
    blocks = _row_blocks(path, B, xp)
    DU = xp.zeros((len(cell.units), H), dtype)
    DUb = None if blocks is None else xp.zeros((len(blocks[0]) - 1,) + DU.shape, dtype)
    args = (tuple(_c(tp.tape[k], xp) for k in cell.cache), _units(cell, p, H, dtype, xp),
            packed(p["weight_hh"], xp), dXW, SV)
    acc = _grad_gemm(xp, dtype)
    Wd = packed(p["weight_ih"], xp) if path.name == "compiled" and dX is not None else None
    grads = {}
    thr = flush_threshold(dtype)
    hm = p.get("h_mask")
    margs = _mask_args(hm, B, H, dtype, xp)
    for t0 in range((T - 1) // K * K, -1, -K):
        n = min(K, T - t0)
        with _one_blas_thread(path):
            if blocks is None:
                loops.backward(t0, n, states, *args, dS, dN, dcell, d_out, win, m, thr, DU,
                               *margs)
            else:
                _run_blocks(loops.backward_blocks, (t0, n, states) + args
                            + (dS, dN, dcell, d_out, win, m, thr, DUb) + margs, blocks)
        if n % 2:  # the two buffers swapped roles an odd number of times
            dS, dN = dN, dS
        db = _block_input_grads(p, tp, xp, t0, n, dXW, dX, grads, acc, Wd)
        if rec:  # the recurrent weight's gradient: the cell's rows against the previous states
            R = (dXW if cell.tied else SV[0])[:n].reshape(n * B, -1)
            hin = states[0][t0:t0 + n] if hm is None else states[0][t0:t0 + n] * hm
            _add_product(grads, "weight_hh", R, hin.reshape(n * B, H), acc, xp)
            _accumulate(grads, "bias_hh", db if cell.tied else _row_sum(R, xp))
    if DUb is not None:  # the row blocks' sums, added in block order
        for k in range(DUb.shape[0]):
            DU += DUb[k]
    for k, name in enumerate(cell.units):
        grads[name] = DU[k]
    return grads, dX, dS


def _grad_gemm(xp, dtype):
    """The compiled C = Aᵀ B + beta C for the weight gradients (NumPy arrays), or None."""
    if getattr(xp, "__name__", "") != "numpy":
        return None
    from .kernels import loop_numba

    return loop_numba.loops(dtype, "gemm_tn")


def _add_product(grads, k, A, Bm, acc, xp):
    """grads[k] += Aᵀ Bm: with ``acc`` straight into the running sum (no temporary)."""
    if acc is None:
        _accumulate(grads, k, A.T @ Bm)
        return
    A, Bm = _c(A, xp), _c(Bm, xp)
    if k not in grads:
        grads[k] = xp.empty((A.shape[1], Bm.shape[1]), dtype=A.dtype)
        acc(A, Bm, grads[k], 0.0)
    else:
        acc(A, Bm, grads[k], 1.0)


def _block_input_grads(p, tp, xp, a, n, dXW, dX, grads, acc, Wd=None):
    """Steps [a, a+n): the input projection's gradients (added to ``grads``) and dX;
    returns the bias gradient of these steps (the sum of the rows of dXW). ``Wd``: W_ih
    packed (:func:`packed`), for the compiled loop's threads."""
    X = tp.X
    _, B, D = X.shape
    G = dXW[:n].reshape(n * B, -1)
    if dX is not None:
        if Wd is not None and Wd.ndim == 3:
            _product(G, Wd, dX[a:a + n].reshape(n * B, D), None, xp)
        else:
            xp.matmul(G, p["weight_ih"], out=dX[a:a + n].reshape(n * B, D))
    _add_product(grads, "weight_ih", G, X[a:a + n].reshape(n * B, D), acc, xp)
    db = _row_sum(G, xp)
    _accumulate(grads, "bias_ih", db.copy())
    return db


_ONES = {}  # (rows, dtype) -> a vector of ones


def _row_sum(G, xp):
    """G.sum(0): through BLAS as 1ᵀ G for NumPy arrays (twice as fast as the reduction)."""
    if getattr(xp, "__name__", "") != "numpy" or G.ndim != 2 or not G.flags.c_contiguous:
        return G.sum(0)
    key = (G.shape[0], G.dtype)
    ones = _ONES.get(key)
    if ones is None:
        if len(_ONES) > 8:  # variable-length batches: keep a few
            _ONES.clear()
        ones = _ONES[key] = xp.ones(G.shape[0], G.dtype)
    return ones @ G


def _accumulate(grads, k, v):
    if k in grads:
        grads[k] += v
    else:
        grads[k] = v


def _scan_coefficients(cell, XW, mask, xp):
    """a, b (T, B, H) of the cell's linear recurrence; padded steps carry (a = 1, b = 0)."""
    a, b = cell.linear(cell._split(XW))
    if mask is not None:
        m = mask[:, :, None]
        a, b = xp.where(m, a, 1), xp.where(m, b, 0)
    return a, b


def _forward_scan(cell, p, X, state0, xp, mask):
    """All steps at once for a cell whose state is a linear recurrence of its input."""
    from .scan import linear_scan

    T, B, D = X.shape
    XW = (X.reshape(T * B, D) @ p["weight_ih"].T + p["bias_ih"]).reshape(T, B, -1)
    a, b = _scan_coefficients(cell, XW, mask, xp)
    h = linear_scan(a.astype(X.dtype), b.astype(X.dtype), state0[0], xp)
    return Tape(X, (h,), {"_scan_xw": XW}, mask)


def _backward_scan(cell, p, tp, xp, d_out, d_final, truncate, need_dx):
    from .scan import linear_scan_back

    X, (h,), mask = tp.X, tp.states, tp.mask
    T, B, D = X.shape
    XW = tp.tape["_scan_xw"]
    a, _ = _scan_coefficients(cell, XW, mask, xp)
    d = None if d_out is None else (d_out if mask is None else d_out * mask[:, :, None])
    df = None if d_final is None else d_final[0]
    if truncate is not None:  # the carried gradient is cut where the window is 0
        win = truncation_window(mask, T, B, truncate, xp, X.dtype)
        d = win * (xp.zeros_like(h[1:]) if d is None else d)
        if df is not None:
            d = d.copy()
            d[-1] += win[-1] * df
            df = None
        a_next = xp.ones_like(a)
        a_next[:-1] = a[1:]
        da, db, dh0 = linear_scan_back(a, h, d, None, xp, coef=a_next * win[..., 0:1])
    else:
        da, db, dh0 = linear_scan_back(a, h, d, df, xp)
    if mask is not None:  # padded steps' a, b are constants
        m = mask[:, :, None]
        da, db = da * m, db * m
    dXW = xp.concatenate(cell.linear_back(cell._split(XW), da, db), axis=-1)
    dX = xp.empty((T, B, D), dtype=X.dtype) if need_dx else None
    grads = {}
    _block_input_grads(p, tp, xp, 0, T, dXW, dX, grads, None)
    return grads, dX, (dh0,)


def step_once(cell, p, xw, S, C, xp, backend=None, z=None, units=None):
    """One step from ``S[k][0]`` into ``S[k][1]`` (S: tuple of (2, B, H) state buffers),
    for step-by-step generation. ``xw`` (B, G) is ``x W_ihᵀ + p["bias_x"]`` (the folded
    biases); ``C`` holds a (1, B, H) buffer per cache name. Compiled where the loop is."""
    path = kernels.plan(cell, xp, xw.dtype, backend)
    if path.name == "compiled":
        from .kernels import compiled

        loops = compiled.loops(cell, xw.dtype)
        H = S[0].shape[-1]
        if units is None:
            units = _units(cell, p, H, xw.dtype, xp)
        br = p["bias_r"] if p.get("bias_r") is not None else xp.zeros(0, xw.dtype)
        e = _EMPTY.get(xw.dtype)
        if e is None:
            e = _EMPTY[xw.dtype] = xp.zeros((0, 0), xw.dtype)
        W = p.get("W_hhP")
        loops.step(0, 0, z, xw, br, S, C, units, packed(p["W_hhT"], xp) if W is None else W,
                   e, e)
        return
    # readable: the step takes x W_ihᵀ + b_ih; xw holds the folded biases
    x = xw - (p["bias_x"] - p["bias_ih"])
    new, _ = cell.step(p, x, tuple(s[0] for s in S), xp)
    for s, v in zip(S, new):
        s[1] = v


def _forward_decoupled(cell, p, X, state0, xp, mask, keep_tape, prev_states):
    """Teacher forcing: every step's input state is given, so all steps run at once."""
    T, B, D = X.shape
    XW = (X.reshape(T * B, D) @ p["weight_ih"].T + p["bias_ih"]).reshape(T, B, -1)
    flat = tuple(s.reshape(T * B, -1) for s in prev_states)
    new, cache = cell.step(p, XW.reshape(T * B, -1), flat, xp)
    states = tuple(xp.concatenate([s0[None], n.reshape(T, B, -1)], 0)
                   for s0, n in zip(state0, new))
    tape = {k: v.reshape((T, B) + v.shape[1:]) for k, v in cache.items()} if keep_tape else {}
    if mask is not None:  # padded steps output zero; the final state is the last valid one
        for s in states:
            s[1:] *= mask[:, :, None]
    return Tape(X, tuple(states), tape, mask, teacher=prev_states)


def truncation_window(mask, T, B, k, xp, dtype):
    """(T, B, 1) weights: 1 on each record's last ``k`` valid steps (and trailing pads)."""
    valid = xp.ones((T, B), dtype=dtype) if mask is None else mask.astype(dtype)
    rev_cum = xp.cumsum(valid[::-1], axis=0)[::-1]  # valid steps from t to the end
    return (rev_cum <= k).astype(dtype)[:, :, None]


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
    G = dXW.reshape(T * B, -1)
    grads = {"weight_ih": G.T @ X.reshape(T * B, -1), "bias_ih": G.sum(0)}
    grads.update(cell.weight_grads(p, tp.teacher, tp.tape, dXW, saved, xp))
    dX = (G @ p["weight_ih"]).reshape(T, B, -1) if need_dx else None
    return grads, dX, d0


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
