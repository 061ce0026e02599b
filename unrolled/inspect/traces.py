"""Traces: every step's hidden state, cell state and gate activations, exactly.

The forward pass of a recurrent layer keeps a tape (:class:`unrolled.unroll.Tape`) of
everything its backward needs: the states after every step and the gate activations.
A trace is that tape, read out per layer and direction, batch-first and in the input's
own time order (the reverse direction of a bidirectional layer is put back in place,
so ``h[:, t]`` of both directions belongs to input step ``t``). Nothing is recomputed:
the values are the forward pass's own.

    tr = traces(model, X)             # {"0/l0": {"h": (B, T, H), "c": ..., "i": ..., ...}}
    fig = plot_traces(tr, "trace.png")
    stats = saturation(model, batches)  # fraction of gate values near 0 or 1, per gate

Keys: a bare recurrent layer gives ``"l0"``, ``"l0_reverse"``, ``"l1"``, ...; inside a
:class:`~unrolled.layers.Sequential` the layer's index comes first: ``"1/l0"``.
"""
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..backend import to_numpy

# the gates of the built-in gated cells, in the cell's order (each a tape entry)
GATES = {"lstm": ("i", "f", "g", "o"), "gru": ("r", "z", "n"),
         "peephole_lstm": ("i", "f", "g", "o")}
# gates that go through a sigmoid (near 0 = shut, near 1 = open); the rest are tanh
SIGMOID_GATES = {"i", "f", "o", "r", "z"}
GATE_SET = {g for names in GATES.values() for g in names}
STATE_NAMES = ("h", "c")
_TAPE_NAMES = {"tanh_c": "tanh_c", "hn": "hn", "h": "hidden"}  # other tape entries, renamed


# --------------------------------------------------------------------------- walking a model

def as_batch(X, mask=None):
    """A record (T, D) or (T,) of symbols becomes a batch of one; batches pass through."""
    X = np.asarray(X) if not hasattr(X, "__array_namespace__") else X
    one = X.ndim == 1 or (X.ndim == 2 and X.dtype.kind == "f")
    if one:
        X = X[None]
        if mask is not None:
            mask = np.asarray(mask)[None]
    return X, mask


def recurrent_caches(model, cache, prefix=""):
    """Yield ``(key, layer, name, layer_cache)`` for every direction of every recurrent
    layer in ``model``, given the ``cache`` its ``forward`` returned."""
    from ..layers import Recurrent, Sequential

    if isinstance(model, Sequential):
        for i, (layer, (c, _)) in enumerate(zip(model.layers, cache)):
            yield from recurrent_caches(layer, c, f"{prefix}{i}/")
    elif isinstance(model, Recurrent):
        for name in model.names:
            yield f"{prefix}{name}", model, name, cache
    # other layers hold no recurrence


def to_input_order(a, name, layer_cache, xp=np):
    """(T, B, ...) in the order a direction read its input -> the input's own order."""
    ridx = layer_cache.get("ridx")
    if not name.endswith("_reverse") or ridx is None:
        return a
    return a[ridx, xp.arange(a.shape[1])[None, :]]  # the reversal is its own inverse


def _batch_first(a):
    return np.ascontiguousarray(np.swapaxes(to_numpy(a), 0, 1))  # on the host


def _split_tape(cell_name, tape):
    """{gate or tape name: (T, B, H)} from the tape of one direction (the cell's own
    cache names; Jordan's hidden layer is called "hidden")."""
    return {_TAPE_NAMES.get(k, k): v for k, v in tape.items()}


# --------------------------------------------------------------------------- traces

def traces(model, X, mask=None, initial_state=None):
    """Every step's states and gate activations of every recurrent layer and direction.

    Parameters
    ----------
    model : a recurrent layer or a ``Sequential`` holding recurrent layers.
    X : one record, (T, D) floats or (T,) integer symbols, or a batch (B, T, D) / (B, T).
    mask : (T,) or (B, T) bool, or None.
    initial_state : as for ``model.forward``.

    Returns
    -------
    dict ``{key: {name: (B, T, S) array}}`` per layer and direction (see the module doc):
    ``"h"`` the hidden state after each step (for a Jordan layer, the output fed back),
    ``"c"`` the LSTM cell state, the gates (LSTM ``"i", "f", "g", "o"``, GRU ``"r", "z",
    "n"``) and the other tape entries (``"tanh_c"``, ``"hn"``, ``"hidden"``), plus
    ``"h0"``/``"c0"`` the initial states (B, S) and ``"mask"`` (B, T) where given.
    The arrays are copies of the forward pass's own values, bit for bit.
    """
    X, mask = as_batch(X, mask)
    _out, _, cache = model.forward(X, mask=mask, initial_state=initial_state, training=False,
                                  keep_tape=True)
    result = {}
    for key, layer, name, lc in recurrent_caches(model, cache):
        tp = lc["tapes"][name]
        xp = lc.get("xp", np)
        tr = {}
        names = tuple(getattr(layer._cell, "state", STATE_NAMES))
        for j, s in enumerate(tp.states):
            sname = names[j] if j < len(names) else f"s{j}"
            tr[sname] = _batch_first(to_input_order(s[1:], name, lc, xp))
            tr[sname + "0"] = to_numpy(s[0]).copy()
        for g, v in _split_tape(layer.cell, tp.tape).items():
            tr[g] = _batch_first(to_input_order(v, name, lc, xp))
        if tp.mask is not None:
            tr["mask"] = _batch_first(tp.mask)
        result[key] = tr
    if not result:
        raise ValueError(f"{type(model).__name__} has no recurrent layer to trace; pass a "
                         "recurrent layer or a Sequential that holds one")
    return result


def flatten_traces(tr, prefix="trace"):
    """``{"trace/<key>/<name>": array}``: a flat dict for ``np.savez``."""
    return {f"{prefix}/{k}/{n}": np.asarray(v) for k, d in tr.items() for n, v in d.items()}


# --------------------------------------------------------------------------- saturation

def _iter_batches(data, mask):
    """(X, mask) pairs from an array, a list of arrays, (X, mask) pairs or Batch objects."""
    if hasattr(data, "shape"):
        yield data, mask
        return
    for item in data:
        if hasattr(item, "X"):
            yield item.X, getattr(item, "mask", None)
        elif isinstance(item, tuple):
            yield item[0], (item[1] if len(item) > 1 else None)
        else:
            yield item, None


def saturation(model, data, mask=None, tol=0.05):
    """How often each gate sits at its rails, over a data set.

    A sigmoid gate value is *shut* when it is <= ``tol`` and *open* when >= ``1 - tol``; a
    tanh value (LSTM ``g``, GRU ``n``, the Elman state ``h``) is saturated at <= ``-1 +
    tol`` or >= ``1 - tol``. Padded steps are left out.

    Parameters
    ----------
    data : a batch (B, T, D) / (B, T) of symbols, or an iterable of batches, of
        ``(X, mask)`` pairs or of objects with ``.X`` and ``.mask`` (``Batch``).
    mask : (B, T) bool for an array ``data``.
    tol : float in (0, 0.5).

    Returns
    -------
    dict ``{key: {gate: {"low": f, "high": f, "saturated": f, "mean": m, "count": n,
    "per_unit": (S,) saturated fraction per unit}}}`` where ``low``/``high`` are the
    fractions of (step, record, unit) values at the lower / upper rail.
    """
    if not 0 < tol < 0.5:
        raise ValueError(f"tol must be in (0, 0.5), got {tol}")
    acc = {}
    for Xb, mb in _iter_batches(data, mask):
        tr = traces(model, Xb, mb)
        for key, d in tr.items():
            m = d.get("mask")
            gated = any(g in d for g in ("i", "r"))
            for g, v in d.items():
                if g in GATE_SET:
                    lo_rail = 0.0 if g in SIGMOID_GATES else -1.0
                elif (g == "hidden" or (g == "h" and "hidden" not in d)) and not gated \
                        and v.min() >= -1 and v.max() <= 1:
                    lo_rail = -1.0  # Elman h, Jordan's hidden layer: a tanh output
                else:
                    continue
                valid = np.ones(v.shape[:2], bool) if m is None else m
                vv = v[valid]  # (n, S)
                low = vv <= lo_rail + tol
                high = vv >= 1 - tol
                a = acc.setdefault(key, {}).setdefault(
                    g, {"low": 0, "high": 0, "sum": 0.0, "n": 0, "unit": 0})
                a["low"] += int(low.sum())
                a["high"] += int(high.sum())
                a["sum"] += float(vv.sum())
                a["n"] += vv.size
                a["unit"] = a["unit"] + (low | high).sum(0)
                a["rows"] = a.get("rows", 0) + vv.shape[0]
    out = {}
    for key, gates in acc.items():
        out[key] = {}
        for g, a in gates.items():
            n = max(a["n"], 1)
            out[key][g] = {"low": a["low"] / n, "high": a["high"] / n,
                           "saturated": (a["low"] + a["high"]) / n, "mean": a["sum"] / n,
                           "count": a["n"],
                           "per_unit": np.asarray(a["unit"]) / max(a.get("rows", 1), 1)}
    return out


# --------------------------------------------------------------------------- pictures

def new_figure(w, h, layout="constrained"):
    """A matplotlib Figure on an Agg canvas (no screen, no pyplot state)."""
    fig = Figure(figsize=(w, h), dpi=100, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path):
    """Save ``fig`` to ``path`` (.png or .svg, by the suffix); returns the Path."""
    path = Path(path)
    if path.suffix.lower() not in (".png", ".svg"):
        raise ValueError(f"{path}: a picture must end in .png or .svg")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100 if path.suffix.lower() == ".png" else None)
    return path


def plot_traces(tr, path=None, record=0, keys=None, names=None, labels=None):
    """Heat maps of one record's trace: one row per layer/direction and quantity.

    Parameters
    ----------
    tr : the dict :func:`traces` returned.
    path : None, or a .png / .svg file to write.
    record : which record of the batch.
    keys : layer keys to draw (default: all); names : quantities (default: states, then
        gates in the cell's order).
    labels : optional list of T strings shown under the time axis (e.g. the characters).

    Returns
    -------
    matplotlib Figure: time on the x axis, units on the y axis; states and tanh values in
    a diverging map on [-1, 1], sigmoid gates on [0, 1].
    """
    keys = list(tr) if keys is None else list(keys)
    missing = [k for k in keys if k not in tr]
    if missing:
        raise ValueError(f"no layer {missing[0]!r} in the trace; it has {list(tr)}")
    order = list(names or ("h", "c", "i", "f", "g", "o", "r", "z", "n"))
    rows = [n for n in order if any(n in tr[k] for k in keys)]
    if not rows:
        raise ValueError(f"nothing to draw: none of {order} is in the trace")
    T = next(tr[k][n].shape[1] for k in keys for n in rows if n in tr[k])
    # a fixed layout (in inches): constrained layout is slow with dozens of panels
    pw, ph = min(1.6 + 0.16 * T, 12), 1.0          # one panel
    left, right, top, bottom, gap = 0.55, 0.75, 0.8, 0.5, 0.25
    W = left + right + len(keys) * pw + (len(keys) - 1) * gap
    Hh = top + bottom + len(rows) * ph + (len(rows) - 1) * 0.35
    fig = new_figure(W, Hh, layout=None)
    fig.subplots_adjust(left=left / W, right=1 - right / W, top=1 - top / Hh,
                        bottom=bottom / Hh, wspace=gap / pw, hspace=0.35 / ph)
    axes = fig.subplots(len(rows), len(keys), squeeze=False)
    for c, key in enumerate(keys):
        axes[0, c].set_title(key, fontsize=10)
        for r, n in enumerate(rows):
            ax = axes[r, c]
            if n not in tr[key]:
                ax.axis("off")
                continue
            v = np.asarray(tr[key][n][record], dtype=np.float64).T  # (S, T): units x time
            if n in SIGMOID_GATES:
                im = ax.imshow(v, aspect="auto", cmap="viridis", vmin=0, vmax=1,
                               interpolation="nearest")
            else:
                lim = max(1.0, float(np.abs(v).max())) if n == "c" else 1.0
                im = ax.imshow(v, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim,
                               interpolation="nearest")
            if c == 0:
                ax.set_ylabel(n, rotation=0, ha="right", va="center", fontsize=11)
            ax.set_yticks([])
            if c == len(keys) - 1:  # one colour bar per row, right of the last panel
                box = ax.get_position()
                cax = fig.add_axes([box.x1 + 0.12 / W, box.y0, 0.1 / W, box.height])
                fig.colorbar(im, cax=cax)
                cax.tick_params(labelsize=7)
            if labels is not None and len(labels) == T and T <= 60:
                ax.set_xticks(range(T))
                ax.set_xticklabels([str(s) for s in labels], fontsize=7)
            else:
                ax.tick_params(axis="x", labelsize=7)
        axes[-1, c].set_xlabel("time step t", fontsize=9)
    fig.suptitle("states and gates over one record", fontsize=11)
    if path is not None:
        save_figure(fig, path)
    return fig


def plot_saturation(stats, path=None):
    """Stacked bars: per layer and gate, the fraction of values near the lower / upper rail."""
    bars = [(f"{k}\n{g}", s["low"], s["high"]) for k, d in stats.items() for g, s in d.items()]
    if not bars:
        raise ValueError("no gate statistics to draw")
    fig = new_figure(max(3.0, 0.6 * len(bars) + 1.5), 3.2)
    ax = fig.add_subplot()
    x = np.arange(len(bars))
    low = np.array([b[1] for b in bars])
    high = np.array([b[2] for b in bars])
    ax.bar(x, low, color="#1f5fbf", label="near 0 (shut) / -1")
    ax.bar(x, high, bottom=low, color="#d62728", label="near 1 (open)")
    ax.set_xticks(x)
    ax.set_xticklabels([b[0] for b in bars], fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("fraction of values")
    ax.set_title("gate saturation", fontsize=11)
    ax.legend(fontsize=8, loc="upper right")
    if path is not None:
        save_figure(fig, path)
    return fig
