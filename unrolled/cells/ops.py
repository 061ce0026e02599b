"""The elementwise functions a cell's step is written with, for every backend at once.

A cell writes its per-unit arithmetic once, with Python operators and the functions of
this module. The same function then serves every backend:

* called on NumPy (or CuPy) arrays, whole (B, H) blocks at a time, it is the readable
  loop (the definition the others are checked against);
* called on symbols (:mod:`unrolled.kernels.trace`), it is recorded as an expression
  that is printed as the body of the compiled CPU loop (numba) and of the GPU kernels.

Only these functions, ``+ - * /``, unary ``-``, ``abs``, small integer powers (``x**2``),
comparisons (``h > 0``, giving 1 or 0) and numbers may appear in a step's arithmetic; a
Python ``if`` on a value cannot be recorded (use :func:`where`).
"""
import numpy as np


def _sym(x, name, *rest):
    f = getattr(x, "_unrolled_op", None)
    return f(name, *rest) if f is not None else None


def tanh(x):
    """Hyperbolic tangent."""
    s = _sym(x, "tanh")
    return np.tanh(x) if s is None else s


def sigmoid(x):
    """Logistic sigmoid, written with tanh: σ(x) = (tanh(x/2) + 1) / 2 (never overflows)."""
    return 0.5 * (tanh(0.5 * x) + 1)


def relu(x):
    """max(x, 0)."""
    s = _sym(x, "relu")
    return np.maximum(x, 0) if s is None else s


def exp(x):
    """e**x."""
    s = _sym(x, "exp")
    return np.exp(x) if s is None else s


def where(cond, a, b):
    """``a`` where ``cond`` is nonzero, else ``b`` (elementwise)."""
    for v in (cond, a, b):
        f = getattr(v, "_unrolled_where", None)
        if f is not None:
            return f(cond, a, b)
    return np.where(cond, a, b)
