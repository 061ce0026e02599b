"""Which loop runs a model, and why: ``unrolled.explain(model, batch, steps)``."""
import numpy as np


def _recurrent_layers(model, prefix=""):
    from .layers import Recurrent, Sequential

    if isinstance(model, Sequential):
        for i, layer in enumerate(model.layers):
            yield from _recurrent_layers(layer, f"{prefix}{i}/")
    elif isinstance(model, Recurrent):
        yield prefix.rstrip("/") or type(model).__name__, model


def _threads_line(path, batch, unroll):
    if path.name != "compiled":
        return ""
    b = unroll.row_blocks(batch)
    if b is None:
        return "; its steps on one thread"
    return (f"; {len(b) - 1} blocks of batch rows on {min(unroll.loop_threads(), len(b) - 1)} "
            "threads (settings.threads)")


def explain(model, batch=32, steps=100, masked=False, truncate=None, xp=np):
    """A few lines saying, for each recurrent layer of ``model``, which loop its forward
    and backward run for a batch of ``batch`` records of ``steps`` steps, and why
    (backend, cell, dtype, masks, memory policy). Returns the text."""
    from . import kernels, memory, unroll
    from .settings import settings

    lines = [f"backend setting {settings.backend!r}; batch {batch}, {steps} steps"
             + (", masked" if masked else "")]
    found = False
    for key, layer in _recurrent_layers(model):
        found = True
        cell = layer._cell
        tr = truncate if truncate is not None else layer.truncate
        path = kernels.plan(cell, xp, np.dtype(layer.dtype), None, masked=masked,
                            truncated=tr is not None, warn=False,
                            recurrent_mask=bool(getattr(layer, "recurrent_dropout", 0)))
        pol = memory.policy(layer, batch, steps, True, None, True)
        mem = ("full BPTT" if pol is unroll
               else f"checkpointed BPTT (segments of {pol.segment} steps)")
        lines.append(f"{key}: {type(layer).__name__} cell {cell.name!r} ({layer.dtype}), "
                     f"{mem}: {path.name} loop; {path.why}" + _threads_line(path, batch, unroll))
    if not found:
        lines.append(f"{type(model).__name__} holds no recurrent layer")
    return "\n".join(lines)
