"""How a model prints: a nested repr of every layer and a Keras-style summary.

``repr(layer)`` shows the sizes first (as the constructor takes them), then every option
whose value differs from the constructor's default, read from the constructor's own
signature, so a new layer or a new option prints without a table to keep up to date::

    Sequential(
      (0): Embedding(30, 4)
      (1): Dropout(p=0.2)
      (2): LSTM(4, 5, return_sequences=False)
      (3): Dense(5, 3)
    )

:func:`summary` lists every layer with its output shape, its parameters and the bytes
its forward keeps for the backward per record and per time step (the tape).
"""
import inspect
from dataclasses import dataclass, field

import numpy as np

from ..memory import _fmt as _fmt_bytes

# the sizes a layer is built from, positional and in the constructor's order
_SIZES = (("num_embeddings", "embedding_dim"), ("in_features", "out_features"),
          ("input_size", "hidden_size"))
_SKIP = {"self", "seed", "dtype", "step", "readout", "embed", "cell", "label_map"}
_MISSING = object()


def _sizes(layer):
    for names in _SIZES:
        if all(hasattr(layer, n) for n in names):
            return names
    return ()


def _defaults(cls):
    """{keyword: default} of every constructor on the way down the class's bases (a
    subclass's ``**kw`` reaches its base), nearest class first."""
    out = {}
    for c in cls.__mro__:
        init = c.__dict__.get("__init__")
        if init is None:
            continue
        try:
            sig = inspect.signature(init)
        except (TypeError, ValueError):
            continue
        for name, p in sig.parameters.items():
            if p.default is not inspect.Parameter.empty and name not in out:
                out[name] = p.default
    return out


def _value(layer, name):
    cell = getattr(layer, "_cell", None)
    if name == "output_size" and cell is not None:   # a Jordan cell's own output width
        return getattr(cell, "output_size", _MISSING)
    return getattr(layer, name, _MISSING)


def _differs(value, default):
    try:
        same = value == default
        return not bool(same) if not isinstance(same, np.ndarray) else not same.all()
    except (TypeError, ValueError):
        return True


def _fmt(v):
    if isinstance(v, np.dtype):
        return repr(v.name)
    return repr(v)


def extra_repr(layer):
    """The inside of ``Name(...)``: sizes, then the options that are not the default."""
    parts = []
    if type(layer).__name__ == "Recurrent" and hasattr(layer, "cell"):
        parts.append(repr(layer.cell))   # the generic layer: which registered cell
    sizes = _sizes(layer)
    parts += [str(getattr(layer, n)) for n in sizes]
    always = tuple(getattr(layer, "_repr_always", ()))
    for name, default in _defaults(type(layer)).items():
        if name in _SKIP or name in sizes:
            continue
        v = _value(layer, name)
        if v is _MISSING:
            continue
        if name in always or _differs(v, default):
            parts.append(f"{name}={_fmt(v)}")
    dt = getattr(layer, "dtype", None)
    if dt is not None and np.dtype(dt).name != "float32" and "dtype" in _defaults(type(layer)):
        parts.append(f"dtype={np.dtype(dt).name!r}")
    return ", ".join(parts)


def children(layer):
    """The named sub-layers of a container (empty for a plain layer)."""
    own = getattr(layer, "named_children", None)
    return list(own()) if callable(own) else []


def module_repr(layer):
    """``Name(options)`` for a plain layer; a container lists its children, indented."""
    extra = layer.extra_repr() if hasattr(layer, "extra_repr") else extra_repr(layer)
    kids = children(layer)
    name = type(layer).__name__
    if not kids:
        return f"{name}({extra})"
    lines = [f"{name}("] + ([f"  {extra}"] if extra else [])
    for key, child in kids:
        inner = repr(child).replace("\n", "\n  ")
        lines.append(f"  ({key}): {inner}")
    lines.append(")")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ summary
def _shape_text(shape):
    return "(" + ", ".join(str(s) for s in shape) + ")" if shape is not None else "?"


def output_shape(layer, shape):
    """The shape ``layer`` gives for an input of ``shape`` (``"B"``, ``"T"`` symbolic;
    None where unknown)."""
    from .core import Dense, Dropout, Embedding, Sequential
    from .recurrent import Recurrent

    if shape is None:
        return None
    if isinstance(layer, Embedding):
        return tuple(shape) + (layer.embedding_dim,)
    if isinstance(layer, Dense):
        return tuple(shape[:-1]) + (layer.out_features,)
    if isinstance(layer, Dropout):
        return tuple(shape)
    if isinstance(layer, Sequential):
        for ly in layer.layers:
            shape = output_shape(ly, shape)
        return shape
    if isinstance(layer, Recurrent):
        return ((shape[0], shape[1], layer.output_size) if layer.return_sequences
                else (shape[0], layer.output_size))
    seq = getattr(layer, "_sequences", None)
    if seq is not None and hasattr(layer, "output_size"):   # Recurrence, Fold
        return (shape[0], shape[1], layer.output_size) if seq else (shape[0], layer.output_size)
    return None


def input_shape(layer):
    """The shape of the input ``layer`` reads: ``(B, T)`` symbols or ``(B, T, D)``."""
    from .core import Dense, Embedding, Sequential

    first = layer.layers[0] if isinstance(layer, Sequential) else layer
    if isinstance(first, Sequential):
        return input_shape(first)
    if isinstance(first, Embedding):
        return ("B", "T")
    if isinstance(first, Dense):
        return ("B", "T", first.in_features)
    size = getattr(first, "input_size", None)
    return ("B", "T", size) if size is not None else None


def tape_bytes_per_step(layer, shape):
    """Bytes the forward of ``layer`` keeps for its backward, per record and per time
    step of an input of ``shape`` (what is kept once per record counts 0 here)."""
    from .core import Dense, Dropout, Embedding, Sequential
    from .recurrent import Recurrent

    seq = shape is not None and len(shape) >= 2 and shape[1] == "T"
    it = np.dtype(getattr(layer, "dtype", "float32")).itemsize
    if isinstance(layer, Sequential):
        total = 0
        for ly in layer.layers:
            total += tape_bytes_per_step(ly, shape)
            shape = output_shape(ly, shape)
        return total
    rec = layer if isinstance(layer, Recurrent) else getattr(layer, "layer", None)
    if isinstance(rec, Recurrent):
        from ..memory import plan_memory

        rs = (rec.return_sequences if rec is layer else bool(getattr(layer, "_sequences",
                                                                     rec.return_sequences)))
        one = plan_memory(rec, 1, 1, memory="full", return_sequences=rs).parts["tape"]
        two = plan_memory(rec, 1, 2, memory="full", return_sequences=rs).parts["tape"]
        drops = (rec.num_layers - 1) * rec.output_size * it if rec.dropout > 0 else 0
        return int(two - one) + drops
    if not seq:
        return 0
    if isinstance(layer, Embedding):
        return np.dtype(np.int64).itemsize          # the symbol looked up
    if isinstance(layer, Dense):
        return layer.in_features * it               # its input, for the weight gradient
    if isinstance(layer, Dropout):
        return (int(shape[-1]) * it) if layer.p > 0 and isinstance(shape[-1], int) else 0
    return 0


@dataclass
class Summary:
    """The rows of :func:`summary` (``rows``: dicts with ``layer``, ``type``,
    ``output_shape``, ``params``, ``tape_bytes``), printed as a table."""

    rows: list = field(default_factory=list)
    total_params: int = 0
    tape_bytes: int = 0
    param_bytes: int = 0

    def __str__(self):
        head = ("Layer (type)", "Output shape", "Param #", "Tape bytes/step")
        body = [(f"{r['layer']} ({r['type']})", _shape_text(r["output_shape"]),
                 f"{r['params']:,}", f"{r['tape_bytes']:,}") for r in self.rows]
        w = [max(len(x[i]) for x in [head] + body) for i in range(4)]
        line = f"{{:<{w[0]}}}  {{:<{w[1]}}}  {{:>{w[2]}}}  {{:>{w[3]}}}"
        rule = "-" * (sum(w) + 6)
        out = [rule, line.format(*head), rule] + [line.format(*b) for b in body] + [rule]
        ex = self.tape_bytes * 32 * 100
        out += [f"Total params: {self.total_params:,} ({_fmt_bytes(self.param_bytes)})",
                f"Tape: {self.tape_bytes:,} bytes per record per time step "
                f"(a batch of 32 records of 100 steps keeps {_fmt_bytes(ex)} for the backward)",
                "B: records in a batch, T: time steps"]
        return "\n".join(out)

    __repr__ = __str__


def summary(model):
    """A :class:`Summary` of ``model``: one row per layer (a container's layers
    indented under it), its output shape for a batch of ``B`` records of ``T`` steps, its
    parameters and its tape bytes per record and per step."""
    from ..tree import tree_flatten

    rows = []

    def walk(layer, shape, name, depth):
        out = output_shape(layer, shape)
        kids = children(layer)
        rows.append({"layer": "  " * depth + name, "type": type(layer).__name__,
                     "output_shape": out, "params": layer.num_params(),
                     "tape_bytes": tape_bytes_per_step(layer, shape), "depth": depth})
        from .core import Sequential

        if isinstance(layer, Sequential):
            s = shape
            for key, child in kids:
                walk(child, s, key, depth + 1)
                s = output_shape(child, s)
        return out

    shape = input_shape(model)
    if children(model) and type(model).__name__ == "Sequential":
        s = shape
        for key, child in children(model):
            walk(child, s, key, 0)
            s = output_shape(child, s)
    else:
        walk(model, shape, type(model).__name__.lower(), 0)
    leaves = tree_flatten(model.params).values()
    return Summary(rows=rows, total_params=model.num_params(),
                   tape_bytes=tape_bytes_per_step(model, shape),
                   param_bytes=int(sum(np.asarray(v).nbytes for v in leaves)))
