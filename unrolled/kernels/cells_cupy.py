"""A cell's GPU kernels, generated from its one definition (the "cupy" backend).

The per-unit programs traced from the cell's ``forward``/``backward``
(:mod:`.trace`) are printed as CUDA C into two CuPy ``ElementwiseKernel``s, one thread
per (row, unit), so a forward step is two launches (cuBLAS's recurrent product and this)
and a backward step two (this and the product that adds ``dr W_hh`` to the state
gradient). The same printed source is compiled for the CPU by the tests, which check it
against the readable loop.
"""
from . import trace

_FLUSH = "__device__ T fl(T v, T thr) { return fabs(v) < thr ? (T)0 : v; }\n"


def kernel_sources(cell):
    """(forward params, forward body, backward params, backward body) in CUDA C, for a
    kernel over ``i`` in [0, B*H) with ``T`` the element type."""
    from .compiled import traced

    (fo, fouts), (bo, bouts) = traced(cell)
    G, S, C, U = len(cell.gate_names), len(cell.state), len(cell.cache), len(cell.units)
    tied = bool(cell.tied) or not cell.recurrent
    Gr = G if cell.recurrent else 0
    NX = G + len(getattr(cell, "noise", ()))
    head = [f"int b = i / H, j = i % H, r = b * G * H, rx = b * {NX} * H;"]
    fin = ["T z", "T xw", "T br"] + [f"T s{k}" for k in range(S)] + ["T U"]
    fout = [f"T n{k}" for k in range(S)] + [f"T c{k}" for k in range(C)]
    body = list(head)
    for k in range(NX):
        body.append(f"T X{k} = xw[rx + {k} * H + j];")
    for k in range(Gr):
        body.append(f"T R{k} = z[r + {k} * H + j]" + ("" if tied else f" + br[{k} * H + j]")
                    + ";")
    body += [f"T S{k} = s{k}[i];" for k in range(S)] + [f"T U{k} = U[{k} * H + j];"
                                                         for k in range(U)]
    lines, ex = trace.print_c(fo, fouts, "T")
    body += lines
    body += [f"n{k}[i] = {ex[k]};" for k in range(S)]
    body += [f"c{k}[i] = {ex[S + k]};" for k in range(C)]
    fwd = (", ".join(f"raw {a}" for a in fin) + ", int32 H, int32 G",
           ", ".join(f"raw {a}" for a in fout), "\n".join(body))
    bin_ = ([f"T d{k}" for k in range(S)] + [f"T s{k}" for k in range(S)]
            + [f"T n{k}" for k in range(S)] + [f"T c{k}" for k in range(C)] + ["T U"])
    bout = ["T dx", "T dr"] + [f"T p{k}" for k in range(S)] + ["T DU"]
    body = list(head)
    body += [f"T D{k} = d{k}[i];" for k in range(S)] + [f"T S{k} = s{k}[i];" for k in range(S)]
    body += [f"T N{k} = n{k}[i];" for k in range(S)] + [f"T C{k} = c{k}[i];" for k in range(C)]
    body += [f"T U{k} = U[{k} * H + j];" for k in range(U)]
    lines, ex = trace.print_c(bo, bouts, "T")
    body += lines
    body += [f"dx[r + {k} * H + j] = fl({ex[k]}, thr);" for k in range(G)]
    if not tied:
        body += [f"dr[r + {k} * H + j] = fl({ex[G + k]}, thr);" for k in range(G)]
    body += [f"p{k}[i] = fl({ex[G + Gr + k]}, thr);" for k in range(S)]
    body += [f"atomicAdd(&DU[{k} * H + j], {ex[G + Gr + S + k]});" for k in range(U)]
    bwd = (", ".join(f"raw {a}" for a in bin_) + ", T thr, int32 H, int32 G",
           ", ".join(f"raw {a}" for a in bout), "\n".join(body))
    return fwd, bwd


_LIBS = {}


def library(cell):
    """(forward kernel, backward kernel) of ``cell`` as CuPy ElementwiseKernels."""
    key = (type(cell), cell)
    if key not in _LIBS:
        import cupy as cp

        fwd, bwd = kernel_sources(cell)
        tag = f"unrolled_{cell.name}_{abs(hash(fwd + bwd)) % 10**8}"
        _LIBS[key] = (cp.ElementwiseKernel(*fwd, tag + "_fwd"),
                      cp.ElementwiseKernel(*bwd, tag + "_bwd", preamble=_FLUSH))
    return _LIBS[key]
