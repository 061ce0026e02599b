"""The compiled loop of a cell, generated from the cell's one definition.

A cell with a per-unit definition (``forward``/``backward``, see
:class:`unrolled.cells.Cell`) is traced once (:mod:`.trace`) and printed, with the
loop written once below (``_TEMPLATE``), as the source of a small Python module that
numba compiles: the recurrent product of each step on weights packed once per call
(:mod:`.microkernel`; NumPy's own BLAS where that is off), the cell's arithmetic fused over each row in one vectorised pass, masks and truncation
windows inside the loop. The module is written to a cache folder under a name made
from a hash of its source, so numba caches its machine code on disk and a changed
cell never meets stale code (``UNROLLED_CACHE_DIR``, default ``~/.cache/unrolled``).
"""
import hashlib
import importlib.util
import os
import sys
import tempfile
from types import SimpleNamespace

import numpy as np

from . import trace

_LOADED = {}  # (source hash) -> module


def _let_llvm_vectorise_many_streams():
    """A cell's fused loop reads and writes a dozen arrays per unit; LLVM vectorises such a
    loop behind run-time checks that the arrays do not overlap, and by default gives up
    above 8 checks (the LSTM's backward loop ran 1.4x slower). Raise that limit, once per
    process, before anything is compiled."""
    try:
        import llvmlite.binding as llb

        llb.set_option("unrolled", "-runtime-memory-check-threshold=256")
        llb.set_option("unrolled", "-memory-check-merge-threshold=256")
    except Exception:  # another llvmlite: the loops still work, maybe slower
        pass


_let_llvm_vectorise_many_streams()


def cache_dir():
    d = os.environ.get("UNROLLED_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "unrolled", "kernels")
    try:
        os.makedirs(d, exist_ok=True)
        probe = os.path.join(d, f".probe{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
        return d
    except OSError:
        d = os.path.join(tempfile.gettempdir(), f"unrolled-kernels-{os.getuid()}")
        os.makedirs(d, exist_ok=True)
        return d


def traced(cell):
    """The cell's per-unit programs: (forward lines, outputs), (backward lines, outputs)."""
    G, S, C, U = len(cell.gate_names), len(cell.state), len(cell.cache), len(cell.units)
    NX = G + len(getattr(cell, "noise", ()))  # input blocks: the gates, then the noise
    x, r = trace.inputs("X", NX), trace.inputs("R", G if cell.recurrent else 0)
    s, u = trace.inputs("S", S), trace.inputs("U", U)
    new, cache = cell.forward(x, r, s, u)
    _check_arity(cell, "forward", (("new states", new, S), ("cache", cache, C)))
    fwd = trace.program(list(new) + list(cache))
    d, n, c = trace.inputs("D", S), trace.inputs("N", S), trace.inputs("C", C)
    dx, dr, dp, du = cell.backward(d, s, n, c, u)
    _check_arity(cell, "backward", (("dx", dx, G), ("dr", dr, len(r)), ("dprev", dp, S),
                                    ("du", du, U)))
    bwd = trace.program(list(dx) + list(dr) + list(dp) + list(du))
    return fwd, bwd


def _check_arity(cell, what, parts):
    for name, got, n in parts:
        if len(tuple(got)) != n:
            raise TypeError(f"{type(cell).__name__}.{what} returned {len(tuple(got))} "
                            f"{name}, the cell declares {n}")


def _helpers_hash():
    """A hash of the modules whose compiled functions the generated loop inlines: a change
    there gives the generated module a new name, so numba never loads stale code."""
    if not _HELPERS:
        import os.path

        from . import cells_numba, loop_numba, microkernel

        h = hashlib.sha256(f"{microkernel.VECTOR_BYTES} {microkernel.MR}".encode())
        for mod in (cells_numba, loop_numba, microkernel):
            with open(os.path.abspath(mod.__file__), "rb") as f:
                h.update(f.read())
        _HELPERS.append(h.hexdigest()[:16])
    return _HELPERS[0]


_HELPERS = []


def source(cell, dtype):
    """The compiled module's source for ``cell`` and ``dtype`` (float32 or float64)."""
    from . import microkernel  # numba: imported only where a loop is compiled

    bits = 32 if np.dtype(dtype) == np.float32 else 64
    G, S, C, U = len(cell.gate_names), len(cell.state), len(cell.cache), len(cell.units)
    NX = G + len(getattr(cell, "noise", ()))
    consts = {}

    def const(v):
        if v not in consts:
            consts[v] = f"K{len(consts)}"
        return consts[v]

    const(0.0), const(1.0)
    (fo, fouts), (bo, bouts) = traced(cell)
    flines, fexpr = trace.print_python(fo, fouts, const)
    blines, bexpr = trace.print_python(bo, bouts, const)
    tied = bool(cell.tied)
    rec = bool(cell.recurrent)
    Gr = G if rec else 0  # gates with a recurrent part
    ind = " " * 12
    L = []
    # -- forward: one row at a time, each gate block a separate view (vectorises)
    sa = ", ".join([f"s{k}" for k in range(S)] + [f"n{k}" for k in range(S)]
                   + [f"c{k}" for k in range(C)])
    L.append("@jit_rows\ndef pw_forward(z, xw, br, " + sa + (", " if sa else "") + "U):")
    L.append("    B, H = s0.shape")
    L.append("    for b in range(B):")
    L.append("        zr, xr = z[b], xw[b]")
    for k in range(NX):
        L.append(f"        x{k} = xr[{k} * H:{k + 1} * H]")
    for k in range(Gr):
        L.append(f"        r{k} = zr[{k} * H:{k + 1} * H]")
        if not tied:
            L.append(f"        br{k} = br[{k} * H:{k + 1} * H]")
    for k in range(S):
        L.append(f"        s{k}r, n{k}r = s{k}[b], n{k}[b]")
    for k in range(C):
        L.append(f"        c{k}r = c{k}[b]")
    for k in range(U):
        L.append(f"        u{k} = U[{k}]")
    L.append("        for j in range(H):")
    for k in range(NX):
        L.append(f"{ind}X{k} = x{k}[j]")
    for k in range(Gr):
        L.append(f"{ind}R{k} = r{k}[j]" + ("" if tied else f" + br{k}[j]"))
    L += [f"{ind}S{k} = s{k}r[j]" for k in range(S)] + [f"{ind}U{k} = u{k}[j]" for k in range(U)]
    L += [ind + ln for ln in flines]
    L += [f"{ind}n{k}r[j] = {fexpr[k]}" for k in range(S)]
    L += [f"{ind}c{k}r[j] = {fexpr[S + k]}" for k in range(C)]
    # -- backward: the same walk; every gradient it writes is flushed below ``th``
    ba = ", ".join([f"d{k}" for k in range(S)] + [f"s{k}" for k in range(S)]
                   + [f"n{k}" for k in range(S)] + [f"c{k}" for k in range(C)])
    L.append("\n\n@jit_rows\ndef pw_backward(" + ba + ", U, dx, dr, "
             + "".join(f"p{k}, " for k in range(S)) + "DU, thr):")
    L.append("    B, H = s0.shape")
    L.append("    th = cast(thr)")
    L.append("    for b in range(B):")
    L.append("        dxr, drr = dx[b], dr[b]")
    for k in range(G):
        L.append(f"        dx{k}, dr{k} = dxr[{k} * H:{k + 1} * H], drr[{k} * H:{k + 1} * H]")
    for k in range(S):
        L.append(f"        d{k}r, s{k}r, n{k}r, p{k}r = d{k}[b], s{k}[b], n{k}[b], p{k}[b]")
    for k in range(C):
        L.append(f"        c{k}r = c{k}[b]")
    for k in range(U):
        L.append(f"        u{k}, du{k} = U[{k}], DU[{k}]")
    L.append("        for j in range(H):")
    L += [f"{ind}D{k} = d{k}r[j]" for k in range(S)] + [f"{ind}S{k} = s{k}r[j]" for k in range(S)]
    L += [f"{ind}N{k} = n{k}r[j]" for k in range(S)] + [f"{ind}C{k} = c{k}r[j]" for k in range(C)]
    L += [f"{ind}U{k} = u{k}[j]" for k in range(U)]
    L += [ind + ln for ln in blines]
    fl = "{i}q = {e}\n{i}{dst} = K0 if abs(q) < th else q"
    for k in range(G):
        L.append(fl.format(i=ind, e=bexpr[k], dst=f"dx{k}[j]"))
    if not tied:
        for k in range(Gr):
            L.append(fl.format(i=ind, e=bexpr[G + k], dst=f"dr{k}[j]"))
    # a state whose own path back is exactly 0 (h of an LSTM or Elman: all of dh_(t-1)
    # comes through the product) is written by the product alone (beta = 0)
    h_direct = not (rec and bexpr[G + Gr] == "K0")
    for k in range(S):
        if k == 0 and not h_direct:
            continue
        L.append(fl.format(i=ind, e=bexpr[G + Gr + k], dst=f"p{k}r[j]"))
    for k in range(U):
        L.append(f"{ind}du{k}[j] += {bexpr[G + Gr + S + k]}")
    # -- one step forward and back over rows [b0, b1) (a row block of the batch: every
    # array the step touches is (B, .) C-contiguous, so a row block is one too)
    st = lambda t: ", ".join(f"S[{k}][{t}][b0:b1]" for k in range(S))
    L.append("\n\n@jit\ndef step_rows(t, j, z, xw, br, S, C, U, W, hm, tmp, b0, b1):")
    L.append("    zb = z[b0:b1]")
    if rec:  # recurrent dropout: the product reads h_(t-1) * hm (hm empty: no mask)
        L.append("    if hm.shape[0] > 0:")
        L.append("        h, m, tb = S[0][t], hm, tmp")
        L.append("        for b in range(b0, b1):")
        L.append("            for k in range(h.shape[1]):")
        L.append("                tb[b, k] = h[b, k] * m[b, k]")
        L.append("        matmul(tb[b0:b1], W, zb, K0)")
        L.append("    else:")
        L.append("        matmul(S[0][t][b0:b1], W, zb, K0)")
    L.append(f"    pw_forward(zb, xw[b0:b1], br, {st('t')}, {st('t + 1')}, "
             + "".join(f"C[{k}][j][b0:b1], " for k in range(C)) + "U)")
    L.append("\n\n@jit\ndef step(t, j, z, xw, br, S, C, U, W, hm, tmp):")
    L.append("    step_rows(t, j, z, xw, br, S, C, U, W, hm, tmp, 0, z.shape[0])")
    rows = "dXW[i]" if tied or not rec else "SV[0][i]"
    L.append("\n\n@jit\ndef back_rows(t, i, dS, dXW, dN, SV, S, C, U, W, DU, thr, hm, tmp, b0, b1):")
    L.append("    rows = " + rows + "[b0:b1]")
    L.append("    pw_backward(" + "".join(f"dS[{k}][b0:b1], " for k in range(S)) + st("t") + ", "
             + st("t + 1") + ", " + "".join(f"C[{k}][t][b0:b1], " for k in range(C))
             + "U, dXW[i][b0:b1], rows, " + "".join(f"dN[{k}][b0:b1], " for k in range(S))
             + "DU, thr)")
    if rec:  # dh_(t-1) += rows W_hh (times the recurrent dropout mask)
        L.append("    if hm.shape[0] > 0:")
        L.append("        matmul(rows, W, tmp[b0:b1], K0)")
        L.append("        d = dN[0]")
        L.append("        for b in range(b0, b1):")
        L.append("            for k in range(d.shape[1]):")
        L.append("                d[b, k] = " + ("d[b, k] + " if h_direct else "")
                 + "tmp[b, k] * hm[b, k]")
        L.append("    else:")
        L.append(f"        matmul(rows, W, dN[0][b0:b1], {'K1' if h_direct else 'K0'})")
    body = "\n".join(L)
    head = [f'"""Generated from {type(cell).__module__}.{type(cell).__qualname__} '
            f'({cell!r}), float{bits}. Do not edit."""',
            "# compiled with -runtime-memory-check-threshold=256 (see compiled.py)",
            f"# helpers: {_helpers_hash()} (their machine code is inlined here)",
            "import numpy as np",
            "from unrolled.kernels.loop_numba import (JIT, JIT_ROWS, gemm{b} as gemm,"
            " tanh{b} as _tanh, exp{b} as _exp, cast{b} as cast, take_next)".format(b=bits),
            ("from unrolled.kernels.microkernel import matmul{b} as matmul".format(b=bits)
             if microkernel.available() else "matmul = gemm"),
            f"jit = JIT[{bits}]",
            f"jit_rows = JIT_ROWS[{bits}]"]
    head += [f"{name} = np.float{bits}({v!r})" for v, name in consts.items()]
    return "\n".join(head) + "\n\n\n" + body + "\n\n\n" + _TEMPLATE + _GENERATE


_TEMPLATE = '''
@jit
def forward_rows(t0, n, XW, S, C, U, W, z, br, keep, keep_tape, hm, tmp, b0, b1):
    """Steps [t0, t0+n) of batch rows [b0, b1); XW[i] is step t0+i's input projection;
    ``keep`` (T, B) marks padded steps (empty: none), which carry the state through;
    ``hm`` (B, H) is the recurrent dropout mask (empty: none) and ``tmp`` a (B, H) buffer
    for it."""
    for i in range(n):
        t = t0 + i
        j = t if keep_tape else 0
        step_rows(t, j, z, XW[i], br, S, C, U, W, hm, tmp, b0, b1)
        if keep.shape[0] > 0:
            for b in range(b0, b1):
                if keep[t, b]:
                    for s in S:
                        s[t + 1, b, :] = s[t, b, :]


@jit
def forward(t0, n, XW, S, C, U, W, z, br, keep, keep_tape, hm, tmp):
    """All rows on the calling thread (see ``forward_rows``)."""
    forward_rows(t0, n, XW, S, C, U, W, z, br, keep, keep_tape, hm, tmp, 0, z.shape[0])


@jit
def forward_blocks(t0, n, XW, S, C, U, W, z, br, keep, keep_tape, hm, tmp, bounds, counter):
    """``forward`` over row blocks [bounds[k], bounds[k+1]), taking the next block from
    ``counter`` until none is left; returns how many it ran. Rows are independent
    sequences, so a block runs all n steps without waiting for another, and several
    threads can call this at once: each takes blocks as it finishes one, so a thread
    slowed down by other work on its core takes fewer."""
    nb = bounds.shape[0] - 1
    done = 0
    k = take_next(counter)
    while k < nb:
        forward_rows(t0, n, XW, S, C, U, W, z, br, keep, keep_tape, hm, tmp,
                     bounds[k], bounds[k + 1])
        done += 1
        k = take_next(counter)
    return done


@jit
def backward_rows(t0, n, S, C, U, W, dXW, SV, dS, dN, dcell, d_out, win, mask, thr, DU, hm,
                  tmp, b0, b1):
    """BPTT of batch rows [b0, b1) over steps [t0+n-1 .. t0]; ``dS`` holds the gradient
    w.r.t. the state after the block and ``dN`` is a second buffer (they swap roles every
    step). ``d_out`` (T, B, S0), ``win`` (T, B) and ``mask`` (T, B) are empty where they do
    not apply. The rows' per-unit parameter gradients are added to ``DU``."""
    one = K1
    for i in range(n - 1, -1, -1):
        t = t0 + i
        if d_out.shape[0] > 0:
            g, o = dS[0], d_out[t]
            for b in range(b0, b1):
                for k in range(g.shape[1]):
                    g[b, k] += o[b, k]
        if win.shape[0] > 0:
            for d in dS:
                for b in range(b0, b1):
                    w = win[t, b]
                    for k in range(d.shape[1]):
                        d[b, k] *= w
        if mask.shape[0] > 0:
            for q in range(len(dS)):
                d, a = dS[q], dcell[q]
                for b in range(b0, b1):
                    m = mask[t, b]
                    for k in range(d.shape[1]):
                        a[b, k] = d[b, k] * m
            back_rows(t, i, dcell, dXW, dN, SV, S, C, U, W, DU, thr, hm, tmp, b0, b1)
            for q in range(len(dS)):  # a padded step passes the gradient on
                d, a = dS[q], dN[q]
                for b in range(b0, b1):
                    m = one - mask[t, b]
                    for k in range(d.shape[1]):
                        a[b, k] += d[b, k] * m
        else:
            back_rows(t, i, dS, dXW, dN, SV, S, C, U, W, DU, thr, hm, tmp, b0, b1)
        dS, dN = dN, dS
    return dS


@jit
def backward(t0, n, S, C, U, W, dXW, SV, dS, dN, dcell, d_out, win, mask, thr, DU, hm, tmp):
    """All rows on the calling thread (see ``backward_rows``)."""
    return backward_rows(t0, n, S, C, U, W, dXW, SV, dS, dN, dcell, d_out, win, mask, thr,
                         DU, hm, tmp, 0, dS[0].shape[0])


@jit
def backward_blocks(t0, n, S, C, U, W, dXW, SV, dS, dN, dcell, d_out, win, mask, thr, DUb, hm,
                    tmp, bounds, counter):
    """``backward`` over row blocks as ``forward_blocks``; block k adds its per-unit
    parameter gradients to ``DUb[k]`` (summed by the caller in block order, so the result
    does not depend on which thread ran which block)."""
    nb = bounds.shape[0] - 1
    done = 0
    k = take_next(counter)
    while k < nb:
        backward_rows(t0, n, S, C, U, W, dXW, SV, dS, dN, dcell, d_out, win, mask, thr,
                      DUb[k], hm, tmp, bounds[k], bounds[k + 1])
        done += 1
        k = take_next(counter)
    return done
'''


_GENERATE = '''

@jit
def sample_tokens(n, ids, table, S, C, U, W, BR, WI, BX, Wout, bout, xw, z, logits, cum, u,
                  inv_temp, greedy, out, e):
    """``n`` tokens of step-by-step generation, each fed back as the next input: the
    embedding table row (``table``: embedding times W_ih of layer 0 and its biases),
    ``step`` through the layers (per layer: states ``S`` (2, B, H), units ``U``, recurrent
    weight ``W``, ``BR``; from layer 1 on, input weight ``WI`` and biases ``BX``), the
    output layer and one draw per row from ``u[t]`` (B uniforms a token): the number of
    cumulative softmax weights below ``u`` times their sum, at temperature 1 / inv_temp
    (``greedy``: the most likely symbol). Writes ``out`` (B, n) and leaves ``ids`` at the
    last symbols."""
    B, V = logits.shape
    L = len(S)
    for t in range(n):
        for b in range(B):
            row, src = xw[b], table[ids[b]]
            for g in range(row.shape[0]):
                row[g] = src[g]
        for k in range(L):
            if k > 0:
                matmul(S[k - 1][0][0], WI[k], xw, K0)
                bx = BX[k]
                for b in range(B):
                    for g in range(xw.shape[1]):
                        xw[b, g] += bx[g]
            step(0, 0, z, xw, BR[k], S[k], C, U[k], W[k], e, e)
            for s in S[k]:
                for b in range(B):
                    for h in range(s.shape[2]):
                        s[0, b, h] = s[1, b, h]
        matmul(S[L - 1][0][0], Wout, logits, K0)
        for b in range(B):
            row = logits[b]
            if bout.shape[0] > 0:
                for v in range(V):
                    row[v] += bout[v]
            best = 0
            top = row[0]
            for v in range(1, V):
                if row[v] > top:
                    top = row[v]
                    best = v
            if not greedy:
                acc = K0
                cb = cum[b]
                for v in range(V):
                    acc += _exp((row[v] - top) * inv_temp)
                    cb[v] = acc
                edge = u[t, b] * acc
                best = 0
                for v in range(V):
                    if cb[v] < edge:
                        best += 1
                best = min(best, V - 1)
            out[b, t] = best
            ids[b] = best
'''


_BY_CELL = {}  # (cell class, cell, dtype) -> module: no tracing after the first call


def loops(cell, dtype):
    """The compiled module of ``cell`` for ``dtype``: ``forward``, ``backward``, ``step``."""
    ck = (type(cell), cell, np.dtype(dtype))
    mod = _BY_CELL.get(ck)
    if mod is None:
        mod = _BY_CELL[ck] = _load(cell, dtype)
    return mod


def _load(cell, dtype):
    src = source(cell, dtype)
    key = hashlib.sha256(src.encode()).hexdigest()[:20]
    mod = _LOADED.get(key)
    if mod is None:
        name = f"unrolled_loop_{cell.name}_{key}"
        path = os.path.join(cache_dir(), name + ".py")
        if not os.path.exists(path):
            import threading

            tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
            with open(tmp, "w") as f:
                f.write(src)
            os.replace(tmp, path)  # atomic: a second process reads a whole file
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        _LOADED[key] = mod
    return mod


def units_array(cell, p, H, dtype, xp):
    """(U, H) contiguous: the cell's per-unit parameter vectors, stacked."""
    if not cell.units:
        return xp.zeros((0, H), dtype)
    return xp.ascontiguousarray(xp.stack([p[k] for k in cell.units]).astype(dtype, copy=False))


__all__ = ["loops", "source", "traced", "units_array", "SimpleNamespace"]
