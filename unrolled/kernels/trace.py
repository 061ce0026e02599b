"""A cell's per-unit arithmetic recorded as an expression, and printed for a backend.

The cell's ``forward``/``backward`` (plain functions written with
:mod:`unrolled.cells.ops`) are called once on symbols instead of arrays. Every operator
and function builds a node; the nodes reached from the outputs, in the order they were
made, are the straight-line program of one hidden unit. :func:`program` returns it and
the printers turn it into the loop body of a backend: Python for numba (constants typed
in the arrays' precision, so float32 stays float32) and C for the GPU.
"""
import itertools

_BINARY = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
_COMPARE = {"gt": ">", "lt": "<", "ge": ">=", "le": "<="}


class Sym:
    """One value of the recorded program: an input, a constant or an operation."""

    __slots__ = ("op", "args", "n")
    _count = itertools.count()

    def __init__(self, op, *args):
        self.op, self.args, self.n = op, args, next(Sym._count)

    def _unrolled_op(self, name, *rest):
        return Sym(name, self, *map(_sym, rest))

    @staticmethod
    def _unrolled_where(cond, a, b):
        return Sym("where", _sym(cond), _sym(a), _sym(b))

    def __bool__(self):
        raise TypeError("a cell's arithmetic cannot branch on a value (`if`, `and`, `min`, "
                        "`max`): write it with unrolled.cells.ops (where, relu, ...)")

    def __repr__(self):
        return f"Sym({self.op}, {self.args})"


def _sym(v):
    if isinstance(v, Sym):
        return v
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return Sym("const", float(v))
    raise TypeError(f"a cell's arithmetic may use numbers and step values only, got "
                    f"{type(v).__name__}")


def _binary(op, swap=False):
    def f(a, b):
        try:
            b = _sym(b)
        except TypeError:
            return NotImplemented
        return Sym(op, b, a) if swap else Sym(op, a, b)
    return f


for _k in list(_BINARY) + list(_COMPARE):
    setattr(Sym, f"__{_k if _k != 'div' else 'truediv'}__", _binary(_k))
for _k in _BINARY:
    setattr(Sym, f"__r{_k if _k != 'div' else 'truediv'}__", _binary(_k, swap=True))
Sym.__neg__ = lambda a: Sym("neg", a)
Sym.__pos__ = lambda a: a
Sym.__abs__ = lambda a: Sym("abs", a)


def _pow(a, k):
    if not (isinstance(k, int) and 1 <= k <= 4):
        raise TypeError("a cell's arithmetic may raise to the power 1, 2, 3 or 4 only; "
                        "write other powers with ops.exp")
    out = a
    for _ in range(k - 1):
        out = Sym("mul", out, a)
    return out


Sym.__pow__ = _pow
Sym.__hash__ = object.__hash__


def inputs(prefix, n):
    return tuple(Sym("in", f"{prefix}{k}") for k in range(n))


def program(outputs):
    """The nodes needed for ``outputs`` (a list of Sym or numbers), oldest first."""
    outs = [_sym(o) for o in outputs]
    seen, order = set(), []
    stack = list(outs)
    while stack:
        s = stack.pop()
        if s.n in seen:
            continue
        seen.add(s.n)
        order.append(s)
        stack.extend(a for a in s.args if isinstance(a, Sym))
    order.sort(key=lambda s: s.n)
    return order, outs


def _print(order, outs, const, forms, statement):
    """The program as statements of one dialect: ``forms[op]`` formats an operation from
    its argument names, ``const(value)`` names a number, ``statement(name, expr)`` writes
    one assignment. Returns (lines, output expressions)."""
    name, lines = {}, []
    for s in order:
        if s.op == "in":
            name[s.n] = s.args[0]
            continue
        if s.op == "const":
            name[s.n] = const(s.args[0])
            continue
        a = [name[x.n] for x in s.args]
        if s.op in _BINARY:
            e = f"{a[0]} {_BINARY[s.op]} {a[1]}"
        elif s.op in _COMPARE:
            e = forms["compare"](a[0], _COMPARE[s.op], a[1])
        elif s.op in forms:
            e = forms[s.op](*a)
        else:  # pragma: no cover
            raise ValueError(f"unknown operation {s.op}")
        name[s.n] = f"v{s.n}"
        lines.append(statement(f"v{s.n}", e))
    return lines, [name[o.n] for o in outs]


def print_python(order, outs, const):
    """Lines computing every node (``v<n> = ...``) and the output expressions, for numba.

    ``const(value)`` names the typed constant for a number."""
    one, zero = const(1.0), const(0.0)
    forms = {"compare": lambda x, op, y: f"{one} if {x} {op} {y} else {zero}",
             "neg": lambda x: f"-{x}", "abs": lambda x: f"abs({x})",
             "tanh": lambda x: f"_tanh({x})", "exp": lambda x: f"_exp({x})",
             "relu": lambda x: f"max({x}, {zero})",
             "where": lambda c, x, y: f"{x} if {c} != {zero} else {y}"}
    return _print(order, outs, const, forms, lambda n, e: f"{n} = {e}")


def print_c(order, outs, ctype):
    """The same program as C statements (for the GPU kernels)."""
    f = "f" if ctype == "float" else ""
    t = ctype
    forms = {"compare": lambda x, op, y: f"({x} {op} {y}) ? ({t})1 : ({t})0",
             "neg": lambda x: f"-{x}", "abs": lambda x: f"fabs{f}({x})",
             "tanh": lambda x: f"tanh{f}({x})", "exp": lambda x: f"exp{f}({x})",
             "relu": lambda x: f"fmax{f}({x}, ({t})0)",
             "where": lambda c, x, y: f"({c} != ({t})0) ? {x} : {y}"}
    return _print(order, outs, lambda v: f"(({t}){v!r})", forms,
                  lambda n, e: f"{t} {n} = {e};")
