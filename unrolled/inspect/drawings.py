"""Drawings of a recurrent network: rolled (the cycle) and unrolled over T steps.

The pictures follow the classic figures of the unrolled graph (Goodfellow, Bengio and
Courville, *Deep Learning*, ch. 10)::

    rolled:    x --U--> h --V--> o --> L <-- y      with the loop W on h
    unrolled:  h_0 --W--> h_1 --W--> h_2 ...         one copy of x, h, o, L, y per step

U (input -> hidden), W (hidden -> hidden) and V (hidden -> output) are the same three
matrices at every step: every copy carries the same colour and label, and the legend
says so. ``backward=True`` overlays the paths the gradient takes in BPTT: dL/do_t into
h_t through V, dL/dh_{t+1} back through W into h_t (right to left), and the sums over
t that make dU, dW, dV.

Only matplotlib is used: figures are plain :class:`matplotlib.figure.Figure` objects on
an Agg canvas (no screen, no pyplot state to leak), saved as SVG or PNG by the path's
suffix.
"""
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch, Rectangle
from matplotlib.path import Path as MPath

from ..cells import REGISTRY

CELLS = tuple(REGISTRY)   # every registered cell can be drawn
_ALIASES = {"rnn": "elman", "vanilla": "elman", "rnn_tanh": "elman", "rnn_relu": "elman"}
_SUFFIXES = (".png", ".svg")
_TITLES = {"elman": "Elman RNN", "jordan": "Jordan RNN (output-to-hidden)",
           "lstm": "LSTM", "gru": "GRU"}
_SIGMOID = {"i", "f", "o", "r", "z"}     # gates squashed by a sigmoid; the rest by tanh
PATTERNS = ("many-to-many", "many-to-one", "one-to-many")


def _title(cell):
    if cell in _TITLES:
        return _TITLES[cell]
    return " ".join(w.upper() if w in ("lstm", "gru", "rnn") else w.capitalize()
                    for w in cell.split("_"))


def _has_c(cell):
    """The cell carries a cell state C beside h (LSTM, peephole LSTM)."""
    return "c" in REGISTRY[cell].state


def _gated(cell):
    """The cell is drawn as a box with its gates (more than one gate block)."""
    return cell != "jordan" and len(REGISTRY[cell].gate_names) > 1

# colours: U blue, W red, V green in the one-layer case; more matrices take the rest
_PALETTE = ["#1f5fbf", "#d62728", "#8e44ad", "#8c564b", "#17becf", "#7f7f00",
            "#e377c2", "#34495e", "#ff7f0e", "#5d6d7e", "#b03a2e", "#1abc9c"]
_V_COLOUR = "#2a9d3a"
_GRAD = "#d4006a"       # every gradient arrow
_CPATH = "#b8860b"      # the LSTM cell-state path (no weight on it)
_INK = "#222222"
_FACES = {"x": "#e8eef7", "h": "#fff4d6", "o": "#e3f4e1", "L": "#fde2e2", "y": "#eeeeee",
          "layer": "#f1ecf7"}
_LAYER = "#6c5b7b"      # the layers around the recurrence
_FEED = "#555555"       # an output fed back as the next input (generation)
_SCALE = 0.78           # inches per data unit: every drawing keeps the same scale


# ---------------------------------------------------------------------------- spec
@dataclass(frozen=True)
class NetSpec:
    """What a drawing needs to know about a recurrent network.

    Attributes:
        cell: a registered cell name (``"elman"``, ``"jordan"``, ``"lstm"``, ``"gru"``, ...).
        input_size: width D of x_t.
        hidden_size: width H of h_t.
        output_size: width of o_t, or None when unknown (shown as "?").
        num_layers: stacked recurrent layers, drawn one row per layer.
        bidirectional: add a right-to-left row to every layer.
        pattern: ``"many-to-many"`` (an output and a loss at every step) or
            ``"many-to-one"`` (one output, after the last step, and one loss).
        inputs: the layers between x and the recurrence, bottom to top, as they print
            (``"Embedding(30, 4)"``, ``"Dropout(p=0.2)"``).
        outputs: the layers between the recurrence and the output layer V.
    """
    cell: str
    input_size: int
    hidden_size: int
    output_size: int | None = None
    num_layers: int = 1
    bidirectional: bool = False
    pattern: str = "many-to-many"
    inputs: tuple = ()
    outputs: tuple = ()


def _positive_int(name, v, allow_none=False):
    if v is None and allow_none:
        return None
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


def _cell_name(cell):
    """The cell's name from a string or a cell object with a ``name`` attribute."""
    name = cell if isinstance(cell, str) else getattr(cell, "name", None)
    if not isinstance(name, str):
        raise TypeError(f"cell must be a string (one of {CELLS}) or a cell object with a "
                        f"`name` attribute, got {type(cell).__name__}")
    name = _ALIASES.get(name.lower(), name.lower())
    if name not in CELLS:
        raise ValueError(f"unknown cell {name!r}; valid cells are {', '.join(CELLS)}")
    return name


def _recurrent(layer):
    """The recurrent layer inside ``layer`` (itself, or a Recurrence/Fold's), or None."""
    from ..layers import Recurrent

    if isinstance(layer, Recurrent):
        return layer
    inner = getattr(layer, "layer", None)
    return inner if isinstance(inner, Recurrent) and hasattr(layer, "_sequences") else None


def _sequences(layer):
    """Does the layer give an output at every step?"""
    seq = getattr(layer, "_sequences", None)
    return bool(seq if seq is not None else layer.return_sequences)


def _flat_layers(model):
    from ..layers import Sequential

    if isinstance(model, Sequential):
        return [ly for m in model.layers for ly in _flat_layers(m)]
    return [model]


def spec_of_model(model):
    """The :class:`NetSpec` of a trained model: the first recurrent layer (with the
    recurrent layers stacked on it that have the same cell and width), the pattern its
    last recurrent layer gives, the layers before and after the recurrence, and the width
    of the last Dense layer as the output (V)."""
    from ..layers import Dense

    if hasattr(model, "rec") and hasattr(model, "readout"):   # UnfoldFrom: generation
        rnn = model.layer
        return describe({"cell": rnn._cell if rnn.cell == "jordan" else rnn.cell,
                         "input_size": rnn.input_size, "hidden_size": rnn.hidden_size,
                         "output_size": model.readout.out_features,
                         "num_layers": rnn.num_layers, "bidirectional": rnn.bidirectional,
                         "pattern": "one-to-many",
                         "inputs": (repr(model.embed),) if model.embed is not None else ()})
    if hasattr(model, "encoder") and hasattr(model, "decoder"):
        raise ValueError("an encoder–decoder is drawn unrolled only: use "
                         "draw_unrolled(model, T) or draw_encoder_decoder(model, T)")
    flat = _flat_layers(model)
    idx = [i for i, ly in enumerate(flat) if _recurrent(ly) is not None]
    if not idx:
        raise ValueError(f"{type(model).__name__} has no recurrent layer to draw")
    first = _recurrent(flat[idx[0]])
    layers, last = first.num_layers, idx[0]
    for i in idx[1:]:
        r = _recurrent(flat[i])
        if (i != last + 1 or r.cell != first.cell or r.hidden_size != first.hidden_size
                or r.bidirectional != first.bidirectional):
            break
        layers, last = layers + r.num_layers, i
    after = flat[last + 1:]
    out = None
    if after and isinstance(after[-1], Dense):
        out = after[-1].out_features
        after = after[:-1]
    seq = _sequences(flat[last])
    spec = {"cell": first._cell if first.cell == "jordan" else first.cell,
            "input_size": first.input_size, "hidden_size": first.hidden_size,
            "output_size": out if first.cell != "jordan" else None,
            "num_layers": layers, "bidirectional": first.bidirectional,
            "pattern": "many-to-many" if seq else "many-to-one",
            "inputs": tuple(repr(ly) for ly in flat[:idx[0]]),
            "outputs": tuple(repr(ly) for ly in after)}
    if first.cell == "jordan":
        spec["output_size"] = first._cell.output_size
    return describe(spec)


def describe(obj):
    """Normalise a network description into a :class:`NetSpec`.

    Args:
        obj: a :class:`NetSpec`; a dict with the keys ``cell``, ``input_size``,
            ``hidden_size`` and optionally ``output_size``, ``num_layers``,
            ``bidirectional``; or any object having those attributes (a recurrent
            layer). ``cell`` may be a name or a cell object with ``name``. From an
            object, ``output_size`` is read only for a Jordan layer (where o is the
            layer's own output); elsewhere the width of o belongs to the output layer
            that follows, so pass a dict to show it.

    Returns:
        NetSpec: validated.

    Raises:
        ValueError: unknown cell name, unknown dict key, or a size that is not a
            positive integer. TypeError: a required attribute is missing.

    >>> describe({"cell": "LSTM", "input_size": 3, "hidden_size": 8}).cell
    'lstm'
    """
    names = [f.name for f in fields(NetSpec)]
    required = ("cell", "input_size", "hidden_size")
    if hasattr(obj, "layers") or hasattr(obj, "_sequences") or hasattr(obj, "readout"):
        # a model: read it whole
        return spec_of_model(obj)
    if isinstance(obj, NetSpec):
        raw = {n: getattr(obj, n) for n in names}
    elif isinstance(obj, Mapping):
        unknown = sorted(set(obj) - set(names))
        if unknown:
            raise ValueError(f"unknown spec keys {unknown}; valid keys are {names}")
        missing = [n for n in required if n not in obj]
        if missing:
            raise ValueError(f"spec is missing {missing}; required keys are {list(required)}")
        raw = dict(obj)
    else:
        missing = [n for n in required if not hasattr(obj, n)]
        if missing:
            raise TypeError(f"{type(obj).__name__} has no attribute(s) {missing}; pass a "
                            f"dict or an object with {list(required)}")
        raw = {n: getattr(obj, n) for n in names if hasattr(obj, n) and n != "output_size"}
        if getattr(obj, "return_sequences", True) is False:
            raw["pattern"] = "many-to-one"
        # a recurrent layer's own output is h; only a Jordan layer's output is o
        if _cell_name(raw["cell"]) == "jordan":
            raw["output_size"] = getattr(obj, "output_size", None)
            if raw["output_size"] is None:
                raw["output_size"] = getattr(raw["cell"], "output_size", None)
    cell = _cell_name(raw["cell"])
    bidir = raw.get("bidirectional", False)
    if not isinstance(bidir, (bool, np.bool_)):
        raise ValueError(f"bidirectional must be True or False, got {bidir!r}")
    pattern = raw.get("pattern", "many-to-many")
    if pattern not in PATTERNS:
        raise ValueError(f"pattern must be one of {PATTERNS}, got {pattern!r}")
    around = {}
    for key in ("inputs", "outputs"):
        v = raw.get(key, ())
        if isinstance(v, str) or not all(isinstance(t, str) for t in v):
            raise ValueError(f"{key} must be a list of layer descriptions (strings), got {v!r}")
        around[key] = tuple(v)
    return NetSpec(cell=cell, pattern=pattern, **around,
                   input_size=_positive_int("input_size", raw["input_size"]),
                   hidden_size=_positive_int("hidden_size", raw["hidden_size"]),
                   output_size=_positive_int("output_size", raw.get("output_size"), True),
                   num_layers=_positive_int("num_layers", raw.get("num_layers", 1)),
                   bidirectional=bool(bidir))


# --------------------------------------------------------------- drawing primitives
@dataclass
class _Node:
    x: float
    y: float
    label: str
    kind: str = "h"          # face colour key
    shape: str = "circle"    # "circle" (w = radius) or "box" (w, h = half sizes)
    w: float = 0.34
    h: float = 0.34
    dashed: bool = False
    d: int = 0               # row direction: 1 left to right, -1 right to left, 0 one-way

    def inside(self, px, py, pad=0.0):
        dx, dy = np.asarray(px) - self.x, np.asarray(py) - self.y
        if self.shape == "circle":
            return np.hypot(dx, dy) < self.w + pad
        return (np.abs(dx) < self.w + pad) & (np.abs(dy) < self.h + pad)


def _draw_node(ax, n, fontsize=13):
    style = dict(facecolor=_FACES[n.kind], edgecolor=_INK, lw=1.3,
                 linestyle="--" if n.dashed else "-", zorder=3)
    if n.shape == "circle":
        ax.add_patch(Circle((n.x, n.y), n.w, **style))
    else:
        ax.add_patch(FancyBboxPatch((n.x - n.w, n.y - n.h), 2 * n.w, 2 * n.h,
                                    boxstyle="round,pad=0,rounding_size=0.12", **style))
    if n.label:
        ax.text(n.x, n.y, n.label, ha="center", va="center", fontsize=fontsize, zorder=4,
                color=_INK, fontstyle="italic")
    if n.d:   # the direction of a bidirectional row, above the name
        ax.text(n.x, n.y + (n.h - 0.13 if n.shape == "box" else 0.62 * n.w),
                "⟶" if n.d > 0 else "⟵", ha="center", va="center", fontsize=8,
                zorder=4, color=_INK)


def _quad(p0, c, p2, num=60):
    t = np.linspace(0, 1, num)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * c + t ** 2 * p2


def _cubic(p0, c1, c2, p3, num=80):
    t = np.linspace(0, 1, num)[:, None]
    return (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * c1 + 3 * (1 - t) * t ** 2 * c2 + t ** 3 * p3


def _clip(pts, a, b, gap=0.05):
    """Cut the part of a path that lies inside its end nodes (plus a small gap)."""
    out_a = ~a.inside(pts[:, 0], pts[:, 1], gap)
    out_b = ~b.inside(pts[:, 0], pts[:, 1], gap)
    ok = np.nonzero(out_a & out_b)[0]
    return pts[ok[0]:ok[-1] + 1] if len(ok) >= 2 else pts[[0, -1]]


def _route(a, b, nodes, off=0.0, rad=None, ports=(0.0, 0.0)):
    """Points of an edge from node a to node b.

    ``off`` shifts the edge sideways (to the left of its direction), ``ports`` shifts
    its two ends vertically (the C and h ports of an LSTM box). With ``rad=None`` the
    edge is straight unless it would cross another node; then it bends (quadratic
    curve), trying larger bends on alternating sides until it is clear.
    """
    p0 = np.array([a.x, a.y + ports[0]])
    p2 = np.array([b.x, b.y + ports[1]])
    d = p2 - p0
    normal = np.array([-d[1], d[0]]) / np.hypot(*d)
    p0, p2 = p0 + off * normal, p2 + off * normal
    others = [n for n in nodes if n is not a and n is not b]
    for r in ([rad] if rad is not None else [0.0, 0.15, -0.15, 0.25, -0.25, 0.4, -0.4]):
        c = (p0 + p2) / 2 + r * np.array([d[1], -d[0]])
        pts = _clip(_quad(p0, c, p2), a, b)
        if not any(n.inside(pts[:, 0], pts[:, 1], 0.06).any() for n in others):
            return pts
    return pts


def _kid(key):
    """A node key as text: ("h", 1, 0, 3) -> "h-1-0-3" (layer 1, direction 0, step 3).

    Directions are 0 (one-way), 1 (left to right) and "r" (right to left)."""
    if not isinstance(key, tuple):
        return str(key)
    return "-".join("r" if k == -1 else str(k) for k in key)


def _arrow(ax, pts, colour, lw=1.7, ls="-", z=2, head=12, gid=None):
    """An arrow along the points; ``gid`` (e.g. "W:h-1-0-0>h-1-0-1") becomes the id
    of its group in an SVG, so the graph's structure can be read back from the file."""
    ax.add_patch(FancyArrowPatch(path=MPath(pts), arrowstyle="-|>", mutation_scale=head,
                                 color=colour, lw=lw, linestyle=ls, zorder=z,
                                 shrinkA=0, shrinkB=0, gid=gid))


def _label(ax, pts, text, colour, side=1, at=0.5, dist=0.1, fontsize=12, bold=True):
    """Write ``text`` beside the path at fraction ``at`` of its length (or, with
    ``at=("y", value)``, where the path passes that height), on the left of the
    direction of travel (side=1) or on the right (side=-1)."""
    seg = np.hypot(*np.diff(pts, axis=0).T)
    s = np.concatenate([[0], np.cumsum(seg)])
    if isinstance(at, tuple):
        i = int(np.clip(np.argmin(np.abs(pts[:, 1] - at[1])), 1, len(pts) - 1))
    else:
        i = int(np.clip(np.searchsorted(s, at * s[-1]), 1, len(pts) - 1))
    p = pts[i - 1] + (pts[i] - pts[i - 1]) * 0.5
    t = (pts[i] - pts[i - 1]) / max(seg[i - 1], 1e-9)
    n = side * np.array([-t[1], t[0]])
    if abs(n[1]) >= abs(n[0]):
        ha, va = "center", ("bottom" if n[1] > 0 else "top")
    else:
        ha, va = ("left" if n[0] > 0 else "right"), "center"
    q = p + dist * n
    if text.startswith("$"):   # mathtext (a direction arrow on top) stands taller
        fontsize -= 1
    ax.text(q[0], q[1], text, ha=ha, va=va, color=colour, fontsize=fontsize, zorder=5,
            fontweight="bold" if bold else "normal", fontstyle="italic",
            bbox=dict(boxstyle="round,pad=0.08", fc="white", ec="none", alpha=0.85))


def _edge(ax, a, b, nodes, colour, text=None, side=1, at=0.5, off=0.0, ports=(0, 0),
          ls="-", lw=1.7, fontsize=12, bold=True, gid=None):
    pts = _route(a, b, nodes, off=off, ports=ports)
    _arrow(ax, pts, colour, lw=lw, ls=ls, gid=gid)
    if text:
        _label(ax, pts, text, colour, side=side, at=at, fontsize=fontsize, bold=bold)
    return pts


def _loop(ax, n, side, colour, text, port=0.0, size=0.36, gid=None):
    """A self-loop on the left (side=-1) or right (side=1) of node n, with the black
    square that marks a one-step delay, as in the classic rolled picture."""
    half = n.w if n.shape == "box" else n.w * 0.8
    cx, cy = n.x + side * (half + 0.55 * size), n.y + port
    theta = np.linspace(-np.pi, np.pi, 200) + (0 if side > 0 else np.pi)
    pts = np.c_[cx + size * np.cos(theta), cy + size * np.sin(theta)]
    pts = pts[~n.inside(pts[:, 0], pts[:, 1], 0.04)]
    if side > 0:
        pts = pts[::-1]            # leave at the top, come back at the bottom
    _arrow(ax, pts, colour, gid=gid)
    far = np.array([cx + side * size, cy])
    ax.add_patch(Rectangle(far - 0.07, 0.14, 0.14, color=_INK, zorder=4))
    ax.text(far[0] + side * 0.16, far[1], text, color=colour, fontsize=12, zorder=5,
            ha="left" if side > 0 else "right", va="center", fontweight="bold",
            fontstyle="italic")


# --------------------------------------------------------------- names and colours
_SUB = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")
_SUP = str.maketrans("0123456789()", "⁰¹²³⁴⁵⁶⁷⁸⁹⁽⁾")


def _sym(base, layer=None, d=0, t=None):
    """A weight or state name: ⁽ˡ⁾ for the layer, the step as a subscript, in plain
    Unicode (fast to render, searchable in an SVG). The direction of a bidirectional
    row (d = 1 or -1) becomes an arrow over the name, in mathtext."""
    if d:
        arrow = r"\overrightarrow" if d > 0 else r"\overleftarrow"
        sup = "" if layer is None else f"^{{({layer})}}"
        sub = "" if t is None else f"_{{{t}}}"
        return f"${arrow}{{{base}}}{sup}{sub}$"
    s = base
    if layer is not None:
        s += f"({layer})".translate(_SUP)
    if t is not None:
        s += str(t).translate(_SUB)
    return s


class _Weights:
    """Colour and label of every weight matrix of a spec, in a stable order."""

    def __init__(self, spec):
        self.spec, self.items = spec, {}
        dirs = (1, -1) if spec.bidirectional else (0,)
        keys = [(base, layer, d) for layer in range(1, spec.num_layers + 1) for d in dirs
                for base in ("U", "W") + (("V",) if spec.cell == "jordan" else ())]
        # one V per direction into o; one V only where a layer joins the directions first
        self.one_v = spec.cell != "jordan" and bool(spec.outputs)
        if spec.cell != "jordan":
            keys += [("V", None, d) for d in ((0,) if self.one_v else dirs)]
        # U blue, W red, the first V green; every further matrix its own colour
        palette = itertools.cycle(_PALETTE)
        for key in keys:
            first_v = key[0] == "V" and _V_COLOUR not in self.items.values()
            self.items[key] = _V_COLOUR if first_v else next(palette)

    def key(self, base, layer, d):
        one = base == "V" and self.spec.cell != "jordan"
        return (base, None if one else layer,
                d if self.spec.bidirectional and not (one and self.one_v) else 0)

    def colour(self, base, layer, d):
        return self.items[self.key(base, layer, d)]

    def text(self, base, layer, d):
        _, l, d = self.key(base, layer, d)
        return _sym(base, l if self.spec.num_layers > 1 else None, d)

    def legend(self, T=None):
        what = {"U": "input → hidden", "W": "hidden → hidden (the recurrence)",
                "V": "hidden → output"}
        if self.spec.cell == "jordan":
            what["W"] = "previous output → hidden (the recurrence)"
        where = ("one matrix, reused every step" if T is None else
                 "the matrix of the one step" if T == 1 else f"shared by all {T} steps")
        once = "once, after the last step"
        out = []
        for (base, layer, d), colour in self.items.items():
            name = self.text(base, layer, d)
            m2o = (base == "V" and self.spec.pattern == "many-to-one"
                   and (layer is None or layer == self.spec.num_layers))
            out.append((colour, f"{name}  {what[base]}: {once if m2o else where}"))
        return out


def _title_of(spec, what):
    parts = [_title(spec.cell)]
    if spec.pattern != "many-to-many":
        parts.append(spec.pattern)
    if spec.num_layers > 1:
        parts.append(f"{spec.num_layers} layers")
    if spec.bidirectional:
        parts.append("bidirectional")
    o = "?" if spec.output_size is None else spec.output_size
    sizes = f"input_size={spec.input_size}, hidden_size={spec.hidden_size}, output_size={o}"
    return f"{', '.join(parts)}, {what}", sizes


def _new_figure(xlim, ylim, title, subtitle, legend, min_width=6.0):
    """A figure at the common scale with the drawing on top and the legend below.

    ``legend`` holds ``(colour, text, style)`` with style a line style or ``"s"`` for
    a square marker. The legend and the title are measured first, so the figure is
    wide and tall enough for them; the legend takes two columns when they fit.
    """
    (x0, x1), (y0, y1) = xlim, ylim
    fig = Figure(figsize=(max((x1 - x0) * _SCALE, min_width), 4), dpi=100)
    FigureCanvasAgg(fig)
    renderer = fig.canvas.get_renderer()
    head = fig.text(0.5, 1, title, ha="center", va="top", fontsize=14, fontweight="bold")
    sub = fig.text(0.5, 1, subtitle, ha="center", va="top", fontsize=10.5, color="#555555")
    handles = [Line2D([], [], color=c, ls="none", marker="s", ms=7) if st == "s" else
               Line2D([], [], color=c, lw=3, ls=st) for c, _, st in legend]
    labels = [t for _, t, _ in legend]
    w = fig.get_size_inches()[0]
    leg = None
    for ncol in ((2, 1) if len(legend) > 2 else (1,)):
        if leg is not None:
            leg.remove()
        leg = fig.legend(handles, labels, loc="lower center", ncol=ncol, frameon=False,
                         fontsize=9.5, handlelength=2.2, columnspacing=1.5, borderaxespad=0)
        box = leg.get_window_extent(renderer)
        if box.width / fig.dpi + 0.3 <= w:
            break
    w = max(w, box.width / fig.dpi + 0.3, head.get_window_extent(renderer).width / fig.dpi + 0.4,
            sub.get_window_extent(renderer).width / fig.dpi + 0.4)
    pad = (w / _SCALE - (x1 - x0)) / 2         # widen the view, keep the scale
    x0, x1 = x0 - pad, x1 + pad
    h_draw, h_leg, h_top = (y1 - y0) * _SCALE, box.height / fig.dpi + 0.3, 0.8
    H = h_draw + h_leg + h_top
    fig.set_size_inches(w, H)
    ax = fig.add_axes([0, h_leg / H, 1, h_draw / H])
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_aspect("equal")
    ax.axis("off")
    head.set_y(1 - 0.2 / H)
    sub.set_y(1 - 0.5 / H)
    leg.set_bbox_to_anchor((0.5, 0.1 / H), transform=fig.transFigure)
    return fig, ax


def _check_path(path):
    if path is not None and Path(path).suffix.lower() not in _SUFFIXES:
        raise ValueError(f"path must end in one of {_SUFFIXES} (the format is taken from "
                         f"the suffix), got {str(path)!r}")


def _save(fig, path):
    if path is not None:
        path = Path(path)
        _check_path(path)
        # svg.fonttype "none" keeps labels as <text>, searchable and selectable
        with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "unrolled"}):
            fig.savefig(path, metadata={"Date": None} if path.suffix.lower() == ".svg" else None)
    return fig


# ---------------------------------------------------------------- cell interiors
def _chip(ax, x, y, name, act, colour="#555555"):
    ax.add_patch(FancyBboxPatch((x - 0.2, y - 0.22), 0.4, 0.44, zorder=4,
                                boxstyle="round,pad=0,rounding_size=0.06",
                                facecolor="white", edgecolor=colour, lw=1.1))
    ax.text(x, y + 0.07, name, ha="center", va="center", fontsize=10, zorder=5,
            fontstyle="italic")
    ax.text(x, y - 0.11, act, ha="center", va="center", fontsize=6.5, zorder=5,
            color="#555555")


def _op(ax, x, y, sym):
    ax.add_patch(Circle((x, y), 0.12, facecolor="white", edgecolor=_CPATH, lw=1.2, zorder=5))
    ax.text(x, y, sym, ha="center", va="center", fontsize=9, zorder=6, color=_CPATH)


def _interior(ax, n, cell):
    """The gates of a gated cell (LSTM, GRU, ...), compactly, inside the box of node n."""
    x, y = n.x, n.y
    gates = tuple(REGISTRY[cell].gate_names)
    ax.text(x - n.w + 0.1, y + n.h - 0.08, cell.upper(), ha="left", va="top",
            fontsize=7.5, color="#777777", zorder=5)
    if _has_c(cell) and set(gates) == {"i", "f", "g", "o"}:
        # cell-state path C_{t-1} -> (x f) -> (+ i*g) -> C_t: the linear path
        yc = y + 0.5
        ax.plot([x - n.w, x + n.w], [yc, yc], color=_CPATH, lw=2.2, zorder=4)
        _op(ax, x - 0.7, yc, "×")
        _op(ax, x + 0.2, yc, "+")
        gy = y - 0.12
        for gx, name, act in ((-0.7, "f", "σ"), (-0.05, "i", "σ"), (0.45, "g", "tanh"),
                              (1.05, "o", "σ")):
            _chip(ax, x + gx, gy, name, act)
        for gx, tx in ((-0.7, -0.7), (-0.05, 0.13), (0.45, 0.27)):
            ax.plot([x + gx, x + tx], [gy + 0.22, yc - 0.12], color="#777777", lw=1, zorder=4)
        ax.text(x, y - 0.64, r"$h = o \odot \tanh(C)$", ha="center", va="center",
                fontsize=9, zorder=5)
    else:
        gy = y + 0.18
        xs = np.linspace(-0.7, 0.7, len(gates)) if len(gates) > 1 else [0.0]
        for gx, name in zip(xs, gates):
            _chip(ax, x + gx, gy, name, "σ" if name in _SIGMOID else "tanh")
        if set(gates) == {"r", "z", "n"}:
            ax.text(x, y - 0.45, r"$h = (1-z) \odot n + z \odot h_{t-1}$", ha="center",
                    va="center", fontsize=9, zorder=5)


# ------------------------------------------------- the layers around the recurrence
_SHORT = {"Embedding": "emb", "Dropout": "drop", "Dense": "dense", "Sequential": "seq"}
_LAYER_HALF = (0.5, 0.2)   # half width and half height of a layer's box


def _layer_name(text):
    return text.split("(", 1)[0].strip()


def _short(text):
    name = _layer_name(text)
    return _SHORT.get(name, name.lower()[:5])


def _trainable(text):
    """Has the layer parameters, so that the gradient must reach it?"""
    return _layer_name(text) not in ("Dropout",)


def _layer_node(x, y, text):
    return _Node(x, y, _short(text), "layer", "box", *_LAYER_HALF)


def _layers_legend(spec, every):
    """Legend lines of the layers around the recurrence."""
    out = []
    after = "once, on the final state" if spec.pattern == "many-to-one" else every
    for where, items, when in (("before the recurrence", spec.inputs, every),
                               ("after the recurrence", spec.outputs, after)):
        for text in items:
            out.append((_LAYER, f"{_short(text)}  {text}: {where}, {when}", "s"))
    return out


def _pattern_note(spec, T=None):
    if spec.pattern == "one-to-many":
        return ("generation: each output is the next input; trained with the true previous "
                "output (teacher forcing), a loss at every step")
    if spec.pattern == "many-to-one":
        last = "the last step" if T is None else f"step {T}, the last"
        return f"one output and one loss, after {last}"
    return "an output and a loss at every step"


# ----------------------------------------------------------------------- rolled
def draw_rolled(spec, path=None):
    """Draw the rolled network: x -> h -> o -> L <- y with the recurrent loop.

    Args:
        spec: anything :func:`describe` accepts.
        path: where to save, ``.png`` or ``.svg``; None to only return the figure.

    Returns:
        matplotlib.figure.Figure: the drawing (on an Agg canvas; no pyplot state).

    An Elman network loops W on h; a Jordan network loops W from o back into h; an
    LSTM or GRU is drawn as a cell box naming its gates (LSTM: i, f, g, o and the
    cell-state path C; GRU: r, z, n). Stacked layers are drawn bottom to top,
    a bidirectional layer as two cells side by side.
    """
    if hasattr(spec, "encoder") and hasattr(spec, "decoder"):   # an encoder–decoder
        return draw_encoder_decoder_rolled(spec, path=path)
    if hasattr(spec, "max_arity") and hasattr(spec, "vocab_size"):   # over a tree
        return draw_tree_rolled(spec, path=path)
    spec = describe(spec)
    _check_path(path)
    wts = _Weights(spec)
    gated, jordan = _gated(spec.cell), spec.cell == "jordan"
    dirs = (1, -1) if spec.bidirectional else (0,)
    hw, hh = (1.45, 0.9) if gated else (0.42, 0.42)
    shape = "box" if gated else "circle"
    xs = {0: 0.0} if not spec.bidirectional else {1: -(hw + 1.0), -1: hw + 1.0}
    pitch = 2 * hh + 1.1

    # ---- nodes, bottom to top
    nodes = {"x": _Node(0, 0, "x", "x")}
    y = 0.0
    for k, text in enumerate(spec.inputs, 1):      # embedding, dropout, ... under h
        y += 0.42 + 0.75 if k == 1 else 1.0
        nodes[("in", k)] = _layer_node(0, y, text)
    if spec.inputs:
        y -= 0.42 - _LAYER_HALF[1]
    for layer in range(1, spec.num_layers + 1):
        y += (hh + 0.42 + 0.75) if layer == 1 else pitch
        for d in dirs:
            lab = "" if gated else _sym("h", layer if spec.num_layers > 1 else None)
            nodes[("h", layer, d)] = _Node(xs[d], y, lab, "h", shape, hw, hh, d=d)
        if jordan:
            y += 0.42 + 1.15
            for d in dirs:
                lab = _sym("o", layer if spec.num_layers > 1 else None)
                nodes[("o", layer, d)] = _Node(xs[d], y, lab, "o", "circle", 0.42, 0.42, d=d)
    top = [("o" if jordan else "h", spec.num_layers, d) for d in dirs]
    outs = spec.outputs if not jordan else ()
    for k, text in enumerate(outs, 1):             # dropout, ... between h and o
        y += (hh + 0.9) if k == 1 else 1.0
        nodes[("out", k)] = _layer_node(0, y, text)
    if not jordan:
        y += (hh + 0.9 + 0.42 if gated else 1.6) if not outs else 1.2
        nodes["o"] = _Node(0, y, "o", "o", "circle", 0.42, 0.42)
        top = ["o"]
    y += 1.5
    nodes["L"] = _Node(0, y, "L", "L", "circle", 0.42, 0.42)
    nodes["y"] = _Node(0, y + 1.5, "y", "y", "circle", 0.42, 0.42)
    allnodes = list(nodes.values())

    xmax = max(abs(n.x) + n.w for n in allnodes) + 1.6
    legend = [(c, t, "-") for c, t in wts.legend()]
    legend.append((_INK, "one-step delay: the value from step t−1", "s"))
    if _has_c(spec.cell):
        legend.append((_CPATH, "C  cell state carried to the next step (no weight)", "-"))
    legend += _layers_legend(spec, "at every step")
    if spec.pattern == "one-to-many" and not jordan:
        legend.append((_FEED, "o → next x: generating, the output chosen at step t is "
                              "the input of step t+1; training feeds the true y_t", ":"))
    title, sub = _title_of(spec, "rolled")
    sub += "; " + _pattern_note(spec)
    fig, ax = _new_figure((-xmax, xmax), (-0.8, y + 2.1), title, sub, legend)
    for n in allnodes:
        _draw_node(ax, n, fontsize=9 if n.kind == "layer" else 13)
        if gated and n.kind == "h":
            _interior(ax, n, spec.cell)

    # ---- edges
    for layer in range(1, spec.num_layers + 1):
        for d in dirs:
            h = nodes[("h", layer, d)]
            c, lab = wts.colour("U", layer, d), wts.text("U", layer, d)
            if layer == 1:
                k0 = ("in", len(spec.inputs)) if spec.inputs else "x"
                srcs = [(_kid(k0), nodes[k0])]
            else:
                srcs = [(_kid(k), nodes[k]) for k in
                        [("o" if jordan else "h", layer - 1, e) for e in dirs]]
            hk = _kid(("h", layer, d))
            for sk, s in srcs:
                straight = abs(s.x - h.x) < 1e-9 or len(srcs) == 1 or s.x * h.x > 0
                _edge(ax, s, h, allnodes, c, lab if straight else None,
                      side=1 if d >= 0 else -1, at=0.55, gid=f"U:{sk}>{hk}")
            side = -1 if d == 1 else 1          # loops on the outer side of the row
            wc, wl = wts.colour("W", layer, d), wts.text("W", layer, d)
            if jordan:
                o = nodes[("o", layer, d)]
                ok = _kid(("o", layer, d))
                _edge(ax, h, o, allnodes, wts.colour("V", layer, d),
                      wts.text("V", layer, d), side=side, gid=f"V:{hk}>{ok}")
                _jordan_loop(ax, o, h, side, wc, wl, gid=f"W:{ok}>{hk}")
            elif _has_c(spec.cell):
                _loop(ax, h, side, _CPATH, "C", port=0.5, size=0.3, gid=f"C:{hk}>{hk}")
                _loop(ax, h, side, wc, wl, port=-0.45, size=0.3, gid=f"W:{hk}>{hk}")
            else:
                _loop(ax, h, side, wc, wl, port=0.0, size=0.36 if not gated else 0.34,
                      gid=f"W:{hk}>{hk}")
    chain = ["x"] + [("in", k) for k in range(1, len(spec.inputs) + 1)]
    for a, b in zip(chain, chain[1:]):
        _edge(ax, nodes[a], nodes[b], allnodes, _LAYER, lw=1.4, gid=f"in:{_kid(a)}>{_kid(b)}")
    last_note = " (last step)" if spec.pattern == "many-to-one" else ""
    if not jordan and outs:
        for d in dirs:
            a = ("h", spec.num_layers, d)
            _edge(ax, nodes[a], nodes[("out", 1)], allnodes, _LAYER, lw=1.4,
                  gid=f"out:{_kid(a)}>{_kid(('out', 1))}")
        chain = [("out", k) for k in range(1, len(outs) + 1)]
        for a, b in zip(chain, chain[1:]):
            _edge(ax, nodes[a], nodes[b], allnodes, _LAYER, lw=1.4,
                  gid=f"out:{_kid(a)}>{_kid(b)}")
        _edge(ax, nodes[chain[-1]], nodes["o"], allnodes, wts.colour("V", None, 0),
              wts.text("V", None, 0) + last_note, gid=f"V:{_kid(chain[-1])}>o")
    elif not jordan:
        for d in dirs:
            s = nodes[("h", spec.num_layers, d)]
            _edge(ax, s, nodes["o"], allnodes, wts.colour("V", None, d),
                  wts.text("V", None, d) + (last_note if d >= 0 else ""),
                  side=1 if d >= 0 else -1,
                  gid=f"V:{_kid(('h', spec.num_layers, d))}>o")
    for key in top:
        _edge(ax, nodes[key], nodes["L"], allnodes, _INK, lw=1.3, gid=f"loss:{_kid(key)}>L")
    _edge(ax, nodes["y"], nodes["L"], allnodes, _INK, lw=1.3, gid="target:y>L")
    if spec.pattern == "one-to-many" and not jordan:
        _feedback(ax, nodes["o"], nodes["x"], xmax)
    return _save(fig, path)


def _feedback(ax, o, x, reach):
    """The output fed back as the next input, around the left of the rolled drawing."""
    p0, p3 = np.array([o.x - o.w, o.y]), np.array([x.x - x.w, x.y])
    left = -reach + 0.5
    pts = _clip(_cubic(p0, [left, o.y], [left, x.y], p3), o, x, 0.04)
    _arrow(ax, pts, _FEED, lw=1.3, ls=":", gid="feed:o>x")
    mid = pts[len(pts) // 2]
    ax.add_patch(Rectangle(mid - 0.07, 0.14, 0.14, color=_INK, zorder=4))   # one step late
    ax.text(mid[0] - 0.16, mid[1], "next\ninput", color=_FEED, fontsize=9, ha="right",
            va="center")


def _jordan_loop(ax, o, h, side, colour, text, gid=None):
    """The Jordan recurrence: o (one step late) back into h, around the outer side."""
    p0 = np.array([o.x + side * o.w, o.y])
    p3 = np.array([h.x + side * h.w, h.y])
    reach = 1.1
    pts = _cubic(p0, p0 + [side * reach, 0], p3 + [side * reach, 0], p3)
    pts = _clip(pts, o, h, 0.04)
    _arrow(ax, pts, colour, gid=gid)
    mid = pts[len(pts) // 2]
    ax.add_patch(Rectangle(mid - 0.07, 0.14, 0.14, color=_INK, zorder=4))
    ax.text(mid[0] + side * 0.16, mid[1], text, color=colour, fontsize=12, zorder=5,
            ha="left" if side > 0 else "right", va="center", fontweight="bold",
            fontstyle="italic")


# --------------------------------------------------------------------- unrolled
def draw_unrolled(spec, T=4, path=None, backward=False):
    """Draw the network unrolled over T steps, optionally with the backward pass.

    Args:
        spec: anything :func:`describe` accepts.
        T: time steps to draw, at least 1.
        path: where to save, ``.png`` or ``.svg``; None to only return the figure.
        backward: overlay BPTT: dL/do_t into h_t, dL/dh_{t+1} back through W into
            h_t (dashed, in the gradient colour, right to left for the forward rows),
            and the sums over t that give dU, dW, dV.

    Returns:
        matplotlib.figure.Figure: the drawing (on an Agg canvas; no pyplot state).

    Columns are time steps 1..T, with the initial state h_0 at the left (and the
    right-to-left row's initial state at the right). Rows, bottom to top: x_t, one
    row per layer and direction, o_t, L_t, y_t. A Jordan network has an h row and
    an o row per layer, and its recurrence runs from o_{t-1} into h_t.
    """
    if hasattr(spec, "encoder") and hasattr(spec, "decoder"):   # an encoder–decoder
        return draw_encoder_decoder(spec, T=T, path=path, backward=backward)
    if hasattr(spec, "max_arity") and hasattr(spec, "vocab_size"):   # over a tree
        return draw_tree(spec, path=path, backward=backward)
    spec = describe(spec)
    if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T < 1:
        raise ValueError(f"T must be an integer >= 1 (the number of time steps to draw), "
                         f"got {T!r}")
    T = int(T)
    _check_path(path)
    wts = _Weights(spec)
    gated, jordan, lstm = _gated(spec.cell), spec.cell == "jordan", _has_c(spec.cell)
    dirs = (1, -1) if spec.bidirectional else (0,)
    multi = spec.num_layers > 1
    r = 0.36
    hw, hh = (0.5, (0.62 if backward else 0.55) if lstm else 0.45) if gated else (r, r)
    port = 0.34 if backward else 0.22      # LSTM: C enters above, h below
    stagger = (hw + 0.18) if spec.bidirectional else 0.0
    dx = 2 * (stagger + hw) + (2.0 if backward else 1.6) + (1.0 if jordan and stagger else 0)
    xoff = {0: 0.0, 1: -stagger, -1: stagger}
    py = (1.5 if not gated else 1.7) + (0.3 if backward else 0.0)

    m2o = spec.pattern == "many-to-one"
    out_steps = [T] if m2o else list(range(1, T + 1))   # where o, L and y are
    outs = spec.outputs if not jordan else ()
    lpitch = 1.0

    # ---- lanes (rows), bottom to top
    lanes, y = [], len(spec.inputs) * lpitch
    for layer in range(1, spec.num_layers + 1):
        for kind in (("h", "o") if jordan else ("h",)):
            for d in sorted(dirs):      # a right-to-left row sits below its -> row
                y += py
                lanes.append((kind, layer, d, y))
    top_y = y
    nodes = {}

    def add(key, x, y, label, kind, box=False, dashed=False, d=0):
        nodes[key] = _Node(x, y, label, kind, "box" if box else "circle",
                           hw if box else r, hh if box else r, dashed, d)

    for t in range(1, T + 1):
        add(("x", t), t * dx, 0.0, _sym("x", t=t), "x")
        for k, text in enumerate(spec.inputs, 1):
            nodes[("in", k, t)] = _layer_node(t * dx, k * lpitch, text)
    for kind, layer, d, ly in lanes:
        rec = kind == ("o" if jordan else "h")       # the lane that carries the state
        steps = list(range(1, T + 1))
        if rec:
            steps = [0] + steps if d >= 0 else steps + [T + 1]
        for t in steps:
            box = gated and kind == "h"
            lab = _sym(kind, layer if multi else None, t=t)
            if lstm and kind == "h":
                lab = _sym("C", layer if multi else None, t=t) + "\n\n" + lab
            add((kind, layer, d, t), t * dx + xoff[d], ly, lab, kind, box,
                dashed=t in (0, T + 1), d=d)
    for k, text in enumerate(outs, 1):
        top_y += (hh + 0.75) if k == 1 else lpitch
        for t in out_steps:
            nodes[("out", k, t)] = _layer_node(t * dx, top_y, text)
    if not jordan:
        top_y += (py if not gated else py - 0.1) if not outs else 1.1
        for t in out_steps:
            add(("o", t), t * dx, top_y, _sym("o", t=t), "o")
    y_L, y_y = top_y + 1.4, top_y + 2.8
    for t in out_steps:
        add(("L", t), t * dx, y_L, _sym("L", t=t), "L")
        add(("y", t), t * dx, y_y, _sym("y", t=t), "y")
    allnodes = list(nodes.values())

    # ---- figure
    legend = [(c, t, "-") for c, t in wts.legend(T)]
    if lstm:
        legend.append((_CPATH, "C  cell state path: f ⊙ C + i ⊙ g (no weight)", "-"))
    legend += _layers_legend(spec, "at every step")
    if spec.pattern == "one-to-many" and not jordan:
        legend.append((_FEED, "o → next x: generating, the output chosen at step t is "
                              "the input of step t+1; training feeds the true y_t", ":"))
    if backward:
        legend.append((_GRAD, "gradient of L flowing back (BPTT)" + (", also along C"
                              if lstm else "") + ("; it enters at the last step only"
                                                  if m2o else "")
                       + "; summed over steps into dU, dW" + ("" if m2o else ", dV"), "--"))
    title, sub = _title_of(spec, f"unrolled over T = {T} step{'s' * (T > 1)}"
                           + (", with the backward pass" if backward else ""))
    sub += "; " + _pattern_note(spec, T)
    first_col = 0 if any(k[-1] == 0 for k in nodes if len(k) == 4) else 1
    last_col = T + 1 if spec.bidirectional else T
    x0, x1 = first_col * dx - hw - stagger - 0.9, last_col * dx + hw + stagger + 0.9
    if backward:   # room for the three sum boxes below
        boxes = _sum_boxes([dx, T * dx])
        x0, x1 = min(x0, boxes[0] - 2.2), max(x1, boxes[-1] + 2.2)
    y0 = -0.9 - (2.6 if backward else 0.0)
    fig, ax = _new_figure((x0, x1), (y0, y_y + 0.8), title, sub, legend,
                          min_width=7.0)
    for n in allnodes:
        _draw_node(ax, n, fontsize=9 if n.kind == "layer" else 12.5 if not lstm else 11)
    dkw = dict(ls="--", lw=1.4, fontsize=9, bold=False)

    # ---- forward edges (and, with backward=True, the gradient along each in reverse)
    def link(a, b, colour, text, side, at=None, ports=(0, 0), grad=None, grad_text=None,
             role="U"):
        ids = _kid(a), _kid(b)
        a, b = nodes[a], nodes[b]
        gat = at
        if at is None:   # label in the first gap between rows, clear of the rows it crosses
            at = gat = 0.5
            if abs(b.y - a.y) > 1.2 * py:
                at = gat = ("y", a.y + np.sign(b.y - a.y) * py / 2)
            elif abs(b.y - a.y) > 1e-9 and abs(b.x - a.x) < 1e-9 + 2 * stagger:
                # a vertical edge: its label midway in the clear gap between the nodes
                y_mid = (a.y + np.sign(b.y - a.y) * a.h + b.y - np.sign(b.y - a.y) * b.h) / 2
                at = gat = ("y", y_mid)
        elif not isinstance(at, tuple):
            gat = 1 - at
        # forward arrow on one side of the centre line, its gradient on the other
        sep = 0.09 if backward and grad else 0.0
        _edge(ax, a, b, allnodes, colour, text, side=side, at=at, off=side * sep,
              ports=ports, gid=f"{role}:{ids[0]}>{ids[1]}")
        if backward and grad:
            _edge(ax, b, a, allnodes, _GRAD, grad_text, side=side, at=gat,
                  off=side * sep, ports=ports[::-1], gid=f"grad:{ids[1]}>{ids[0]}", **dkw)

    for kind, layer, d, ly in lanes:
        sd = 1 if d >= 0 else -1     # labels on the left of travel: above for -> rows
        for t in range(1, T + 1):
            key = (kind, layer, d, t)
            if kind == "h":
                # input into the layer: x_t, or the layer below (both of its directions)
                if layer == 1:
                    below = ("in", len(spec.inputs), t) if spec.inputs else ("x", t)
                    link(below, key, wts.colour("U", 1, d), wts.text("U", 1, d), sd,
                         grad=any(map(_trainable, spec.inputs)))
                else:
                    below = "o" if jordan else "h"
                    for e in dirs:
                        link((below, layer - 1, e, t), key, wts.colour("U", layer, d),
                             wts.text("U", layer, d) if e == d else None, sd,
                             grad=e == d)   # cross-direction gradients left out: legibility
            else:   # Jordan: h -> o inside the layer
                link(("h", layer, d, t), key, wts.colour("V", layer, d),
                     wts.text("V", layer, d), sd, grad=True,
                     grad_text=_sym("∂L/∂o", layer if multi else None, t=t),
                     role="V")
            # the recurrence: from step t-1 (t+1 for a right-to-left row) into step t
            if kind == "h":
                prev = t - 1 if d >= 0 else t + 1
                src = ("o" if jordan else "h", layer, d, prev)
                w_c, w_t = wts.colour("W", layer, d), wts.text("W", layer, d)
                gsym = _sym("∂L/∂h", layer if multi else None, t=t)
                if lstm:
                    # top to bottom: C, its gradient, (W label), W, dL/dh, (its label)
                    link(src, key, _CPATH, "C", sd, ports=(port, port), grad=True, role="C")
                    link(src, key, w_c, w_t, sd if backward else -sd, ports=(-port, -port),
                         grad=True, grad_text=gsym, role="W")
                else:
                    link(src, key, w_c, w_t, sd, grad=True, grad_text=gsym, role="W")
    # the layers under the recurrence: the gradient reaches them where one below learns
    for t in range(1, T + 1):
        chain = [("x", t)] + [("in", k, t) for k in range(1, len(spec.inputs) + 1)]
        for k, (a, b) in enumerate(zip(chain, chain[1:])):
            link(a, b, _LAYER, None, 1, grad=any(map(_trainable, spec.inputs[:k])),
                 role="in")
    # outputs and losses: at every step, or once from the final states
    for t in out_steps:
        # the final state of a right-to-left row is the one at step 1
        src = {d: t if not m2o or d >= 0 else 1 for d in dirs}
        top = "o" if jordan else "h"
        if outs:
            first = ("out", 1, t)
            for d in dirs:
                link((top, spec.num_layers, d, src[d]), first, _LAYER, None,
                     1 if d >= 0 else -1, grad=True, role="out")
            chain = [("out", k, t) for k in range(1, len(outs) + 1)]
            for a, b in zip(chain, chain[1:]):
                link(a, b, _LAYER, None, 1, grad=True, role="out")
            link(chain[-1], ("o", t), wts.colour("V", None, 0), wts.text("V", None, 0), 1,
                 grad=True, grad_text=_sym("∂L/∂o", t=t), role="V")
        elif not jordan:
            for d in dirs:
                link((top, spec.num_layers, d, src[d]), ("o", t), wts.colour("V", None, d),
                     wts.text("V", None, d), 1 if d >= 0 else -1, grad=True,
                     grad_text=_sym("∂L/∂o", t=t) if d >= 0 else None,
                     role="V")
        if not jordan:
            link(("o", t), ("L", t), _INK, None, 1, grad=True, role="loss")
        else:
            for d in dirs:
                link((top, spec.num_layers, d, src[d]), ("L", t), _INK, None, 1, grad=True,
                     role="loss")
        link(("y", t), ("L", t), _INK, None, 1, role="target")
    if spec.pattern == "one-to-many" and not jordan:   # o_{t-1} is the next input x_t
        for t in range(2, T + 1):
            a, b = nodes[("o", t - 1)], nodes[("x", t)]
            pts = _route(a, b, allnodes, rad=0.0)
            _arrow(ax, pts, _FEED, lw=1.3, ls=":", gid=f"feed:{_kid(('o', t - 1))}>"
                                                       f"{_kid(('x', t))}")
            if t == 2:
                _label(ax, pts, "next input", _FEED, side=-1, at=0.5, fontsize=9,
                       bold=False)
    if backward:
        _sums(ax, spec, nodes, T, jordan)
    return _save(fig, path)


def _sum_boxes(xs):
    """x of the three sum boxes (dU, dW, dV) under columns xs, at least 3.6 apart."""
    mid, step = (xs[0] + xs[-1]) / 2, max(xs[-1] - xs[0], 10.8) / 3
    return [mid - step, mid, mid + step]


def _sums(ax, spec, nodes, T, jordan):
    """Every step's share of dU, dW, dV, gathered on a bus and summed."""
    ybus, ybox = -1.15, -2.35
    xs = [nodes[("x", t)].x for t in range(1, T + 1)]
    boxes = _sum_boxes(xs)
    for x in xs:   # each column adds its share
        ax.plot([x, x], [-0.45, ybus], color=_GRAD, lw=1.2, ls=":", zorder=1)
        ax.plot([x], [ybus], marker="o", ms=3.5, color=_GRAD, zorder=2)
    left, right = min(xs[0], boxes[0]), max(xs[-1], boxes[-1])
    ax.plot([left, right], [ybus, ybus], color=_GRAD, lw=1.6, zorder=1)
    ax.text(left - 0.3, ybus, rf"$\sum_{{t=1}}^{{{T}}}$", ha="right", va="center",
            color=_GRAD, fontsize=13)
    prev = "o_{t-1}" if jordan else "h_{t-1}"
    x_in = "e_t" if spec.inputs else "x_t"
    texts = [rf"$\partial L/\partial U = \sum_t\, \delta_t\, {x_in}^{{\top}}$",
             rf"$\partial L/\partial W = \sum_t\, \delta_t\, {prev}^{{\top}}$",
             r"$\partial L/\partial V = \sum_t\, (\partial L/\partial o_t)\, h_t^{\top}$"]
    if spec.pattern == "many-to-one" and not jordan:   # one output: no sum for V
        texts[2] = (rf"$\partial L/\partial V = (\partial L/\partial o_{{{T}}})\, "
                    rf"h_{{{T}}}^{{\top}}$")
    mid = boxes[1]
    for bx, txt in zip(boxes, texts):
        _arrow(ax, np.array([[bx, ybus], [bx, ybox + 0.3]]), _GRAD, lw=1.4)
        ax.text(bx, ybox, txt, ha="center", va="center", fontsize=10.5, color=_GRAD,
                zorder=5, bbox=dict(boxstyle="round,pad=0.3", fc="white", ec=_GRAD))
    note = r"$\delta_t = \partial L/\partial a_t$, the gradient at step $t$'s pre-activation"
    if _gated(spec.cell):
        note += " (all gates)"
    if spec.num_layers > 1 or spec.bidirectional:
        note += "; likewise for every layer and direction"
    if spec.inputs:
        note += r"; $e_t$: the input of the recurrence, from the layers under it"
    ax.text(mid, ybox - 0.62, note, ha="center", va="center", fontsize=9, color="#555555")


# ------------------------------------------------------------- encoder–decoder
def _encoder_decoder_config(model):
    """``(cfg, cell name, attention)`` of a ``Seq2Seq`` or of a dict describing one."""
    if isinstance(model, Mapping):
        cfg = dict(model)
    else:
        cfg = {"cell": model.cell, "hidden_size": model.hidden_size,
               "attention": model.attention, "num_layers": model.num_layers}
    cell = _cell_name(cfg["cell"])
    attention = cfg.get("attention")
    if attention not in (None, "dot", "general", "additive"):
        raise ValueError(f"attention must be None, 'dot', 'general' or 'additive', got "
                         f"{attention!r}")
    return cfg, cell, attention


def draw_encoder_decoder(model, T=3, path=None, backward=False, T_source=None):
    """Draw an encoder–decoder (:class:`unrolled.seq2seq.Seq2Seq`) unrolled.

    Args:
        model: a ``Seq2Seq``, or a dict with ``cell``, ``hidden_size`` and optionally
            ``attention`` (None, ``"dot"``, ``"general"``, ``"additive"``),
            ``num_layers``.
        T: decoder (target) steps to draw; ``T_source``: encoder steps (default T).
        path: ``.png`` or ``.svg``; None to only return the figure.
        backward: overlay the gradient: from every loss back along the decoder, into the
            encoder through its final state (and, with attention, through every
            encoder state the decoder attended to), and back along the encoder.

    The encoder reads the source x_1..x_S (embedded); its final state starts the decoder,
    which reads the target shifted by one (⟨bos⟩, y_1, ..., y_(T−1): teacher forcing)
    and gives o_t and a loss L_t at every target step. With attention each decoder state
    s_t scores every encoder state h_j, and the context they give (c_t) and s_t make the
    output.
    """
    cfg, cell, attention = _encoder_decoder_config(model)
    for name, v in (("T", T), ("T_source", T if T_source is None else T_source)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    S, T = int(T if T_source is None else T_source), int(T)
    _check_path(path)
    dx, r = 1.9, 0.36
    hw, hh = 0.5, 0.4
    x_enc = {t: t * dx for t in range(0, S + 1)}
    x_dec = {t: (S + 1.5 + t) * dx for t in range(1, T + 1)}
    y_in, y_emb, y_h = 0.0, 1.0, 2.6
    y_c = 4.1
    y_o = (5.5 if attention else 4.1)
    y_L, y_y = y_o + 1.4, y_o + 2.8
    nodes = {}

    def node(key, x, y, label, kind, shape="circle", w=r, h=r, dashed=False):
        nodes[key] = _Node(x, y, label, kind, shape, w, h, dashed)

    for t in range(1, S + 1):
        node(("x", t), x_enc[t], y_in, _sym("x", t=t), "x")
        nodes[("xe", t)] = _layer_node(x_enc[t], y_emb, "Embedding")
    node(("h", 0), x_enc[0], y_h, _sym("h", t=0), "h", "box", hw, hh, dashed=True)
    for t in range(1, S + 1):
        node(("h", t), x_enc[t], y_h, _sym("h", t=t), "h", "box", hw, hh)
    for t in range(1, T + 1):
        node(("yin", t), x_dec[t], y_in, "⟨bos⟩" if t == 1 else _sym("y", t=t - 1), "y")
        nodes[("ye", t)] = _layer_node(x_dec[t], y_emb, "Embedding")
        node(("s", t), x_dec[t], y_h, _sym("s", t=t), "h", "box", hw, hh)
        if attention:
            node(("c", t), x_dec[t], y_c, _sym("c", t=t), "o")
        node(("o", t), x_dec[t], y_o, _sym("o", t=t), "o")
        node(("L", t), x_dec[t], y_L, _sym("L", t=t), "L")
        node(("y", t), x_dec[t], y_y, _sym("y", t=t), "y")
    allnodes = list(nodes.values())
    col = dict(zip(("Ue", "We", "Ud", "Wd", "V", "A"),
                   ("#1f5fbf", "#d62728", "#8e44ad", "#8c564b", _V_COLOUR, "#17becf")))
    legend = [(col["Ue"], "Uₑ  encoder input → hidden: shared by all source steps", "-"),
              (col["We"], "Wₑ  encoder hidden → hidden: shared by all source steps", "-"),
              (col["Ud"], "U_d  decoder input → hidden: shared by all target steps", "-"),
              (col["Wd"], "W_d  decoder hidden → hidden; the encoder's final state starts "
                          "the decoder", "-"),
              (col["V"], "V  → output logits, at every target step", "-"),
              (_LAYER, "emb  an embedding of the source / target symbols", "s")]
    if attention:
        legend.append((col["A"], f"{attention} attention: s_t scores every h_j; their "
                                 "weighted sum c_t (with s_t) makes the output", "-"))
    if backward:
        legend.append((_GRAD, "gradient of the losses flowing back (BPTT), through the "
                              "decoder into the encoder" + ("; through the attention into "
                              "every h_j at every step (drawn for the last)" if attention
                              else ""), "--"))
    title = (f"Encoder–decoder ({_title(cell)}"
             + (f", {cfg.get('num_layers', 1)} layers" if cfg.get("num_layers", 1) > 1
                else "") + ")" + (f", {attention} attention" if attention else "")
             + f", unrolled over {S} source and {T} target steps"
             + (", with the backward pass" if backward else ""))
    sub = (f"hidden_size={cfg['hidden_size']}; trained with the target shifted by one as "
           "the decoder's input (teacher forcing), a loss at every target step")
    fig, ax = _new_figure((x_enc[0] - hw - 0.9, x_dec[T] + hw + 0.9), (-0.9, y_y + 0.8),
                          title, sub, legend, min_width=7.0)
    for n in allnodes:
        _draw_node(ax, n, fontsize=9 if n.kind == "layer" else 12)

    def link(a, b, colour, text=None, role="U", grad=True, side=1, lw=1.7):
        ids = f"{_kid(a)}>{_kid(b)}"
        A, B = nodes[a], nodes[b]
        sep = 0.09 if backward and grad else 0.0
        _edge(ax, A, B, allnodes, colour, text, side=side, off=side * sep, lw=lw,
              gid=f"{role}:{ids}")
        if backward and grad:
            _edge(ax, B, A, allnodes, _GRAD, None, side=side, off=side * sep,
                  gid=f"grad:{_kid(b)}>{_kid(a)}", ls="--", lw=1.3)

    for t in range(1, S + 1):
        link(("x", t), ("xe", t), _LAYER, role="in", grad=False, lw=1.4)
        link(("xe", t), ("h", t), col["Ue"], "Uₑ", role="U")
        link(("h", t - 1), ("h", t), col["We"], "Wₑ", role="W")
    link(("h", S), ("s", 1), col["Wd"], "initial state", role="state")
    for t in range(1, T + 1):
        link(("yin", t), ("ye", t), _LAYER, role="in", grad=False, lw=1.4)
        link(("ye", t), ("s", t), col["Ud"], "U_d", role="U")
        if t > 1:
            link(("s", t - 1), ("s", t), col["Wd"], "W_d", role="W")
        top = ("s", t)
        if attention:
            for j in range(1, S + 1):   # its gradient drawn for the last step only
                link(("h", j), ("c", t), col["A"], role="attn", grad=t == T, lw=0.8)
            link(("s", t), ("c", t), col["A"], role="attn", lw=1.2)
            top = ("c", t)
        link(top, ("o", t), col["V"], "V", role="V")
        link(("o", t), ("L", t), _INK, role="loss", lw=1.3)
        link(("y", t), ("L", t), _INK, role="target", grad=False, lw=1.3)
    return _save(fig, path)


def draw_encoder_decoder_rolled(model, path=None):
    """Draw an encoder–decoder rolled: the encoder's cell with its loop Wₑ over the
    source, the decoder's with its loop W_d over the target, the encoder's final state
    starting the decoder once, and (with attention) every encoder state read at every
    target step.

    Args:
        model: a ``Seq2Seq``, or a dict as :func:`draw_encoder_decoder` takes.
        path: ``.png`` or ``.svg``; None to only return the figure.
    """
    cfg, cell, attention = _encoder_decoder_config(model)
    _check_path(path)
    hw, hh, r, xe, xd = 0.6, 0.45, 0.36, 0.0, 4.2
    y_h = 2.6
    y_c = 4.1
    y_o = 5.5 if attention else 4.1
    y_L, y_y = y_o + 1.4, y_o + 2.8
    nodes = {"x": _Node(xe, 0.0, "xⱼ", "x", "circle", r, r),
             "xe": _layer_node(xe, 1.0, "Embedding"),
             "h": _Node(xe, y_h, "hⱼ", "h", "box", hw, hh),
             "yin": _Node(xd, 0.0, "yₜ₋₁", "y", "circle", r, r),
             "ye": _layer_node(xd, 1.0, "Embedding"),
             "s": _Node(xd, y_h, "sₜ", "h", "box", hw, hh),
             "o": _Node(xd, y_o, "oₜ", "o", "circle", r, r),
             "L": _Node(xd, y_L, "Lₜ", "L", "circle", r, r),
             "y": _Node(xd, y_y, "yₜ", "y", "circle", r, r)}
    if attention:
        nodes["c"] = _Node(xd, y_c, "cₜ", "o", "circle", r, r)
    allnodes = list(nodes.values())
    col = dict(zip(("Ue", "We", "Ud", "Wd", "V", "A"),
                   ("#1f5fbf", "#d62728", "#8e44ad", "#8c564b", _V_COLOUR, "#17becf")))
    legend = [(col["Ue"], "Uₑ, Wₑ  the encoder's weights, the same at every source step", "-"),
              (col["Ud"], "U_d, W_d  the decoder's, the same at every target step", "-"),
              (col["Wd"], "the encoder's final state starts the decoder (once)", "-"),
              (col["V"], "V  → output logits, at every target step", "-"),
              (_INK, "one-step delay: the value from the previous step", "s"),
              (_LAYER, "emb  an embedding of the source / target symbols", "s")]
    if attention:
        legend.append((col["A"], f"{attention} attention: at every target step, s_t "
                                 "scores every encoder state h_j", "-"))
    title = (f"Encoder–decoder ({_title(cell)}"
             + (f", {cfg.get('num_layers', 1)} layers" if cfg.get("num_layers", 1) > 1
                else "") + ")" + (f", {attention} attention" if attention else "")
             + ", rolled")
    sub = (f"hidden_size={cfg['hidden_size']}; the encoder loops over the source (j), then "
           "the decoder over the target (t), fed the previous target symbol")
    fig, ax = _new_figure((xe - hw - 1.6, xd + hw + 1.6), (-0.9, y_y + 0.8), title, sub,
                          legend, min_width=6.5)
    for n in allnodes:
        _draw_node(ax, n, fontsize=9 if n.kind == "layer" else 12)

    def link(a, b, colour, text=None, role="U", side=1, lw=1.7):
        _edge(ax, nodes[a], nodes[b], allnodes, colour, text, side=side, lw=lw,
              gid=f"{role}:{a}>{b}")

    link("x", "xe", _LAYER, role="in", lw=1.4)
    link("xe", "h", col["Ue"], "Uₑ")
    _loop(ax, nodes["h"], -1, col["We"], "Wₑ", gid="W:h>h")
    link("yin", "ye", _LAYER, role="in", lw=1.4)
    link("ye", "s", col["Ud"], "U_d")
    _loop(ax, nodes["s"], 1, col["Wd"], "W_d", gid="W:s>s")
    link("h", "s", col["Wd"], "final state", role="state", side=-1)
    top = "s"
    if attention:
        link("h", "c", col["A"], "all h_j", role="attn", side=-1, lw=1.2)
        link("s", "c", col["A"], role="attn", lw=1.2)
        top = "c"
    link(top, "o", col["V"], "V", role="V")
    link("o", "L", _INK, role="loss", lw=1.3)
    link("y", "L", _INK, role="target", lw=1.3)
    return _save(fig, path)


def draw_tree_rolled(net, path=None):
    """Draw a recursive network rolled: one composition W whose loop runs over the
    tree's structure (children to parent) instead of over time.

    Args:
        net: a ``RecursiveNet``, or a dict with ``hidden_size`` and optionally
            ``num_classes``, ``activation``, ``max_arity``.
        path: ``.png`` or ``.svg``; None to only return the figure.
    """
    cfg = dict(net) if isinstance(net, Mapping) else {
        "hidden_size": net.hidden_size, "num_classes": net.num_classes,
        "activation": net.activation, "max_arity": net.max_arity}
    _check_path(path)
    r = 0.42
    C = cfg.get("num_classes")
    nodes = {"x": _Node(0, 0.0, "x", "x", "circle", r, r),
             "h": _Node(0, 1.6, "h", "h", "circle", r, r)}
    if C:
        nodes.update(o=_Node(0, 3.1, "o", "o", "circle", r, r),
                     L=_Node(0, 4.6, "L", "L", "circle", r, r),
                     y=_Node(0, 6.1, "y", "y", "circle", r, r))
    allnodes = list(nodes.values())
    colE, colW, colV = "#1f5fbf", "#d62728", _V_COLOUR
    k = cfg.get("max_arity", 2)
    kids = "h_c1; h_c2" if k == 2 else f"h_c1; …; h_c{k}"
    legend = [(colE, "E  the leaf embedding: a leaf's h is its token's row", "-"),
              (colW, f"W  h = {cfg.get('activation', 'tanh')}(W[{kids}] + b): "
                     "the children's h make the parent's, at every inner node", "-"),
              (_INK, "structural delay: the children are computed before their parent", "s")]
    if C:
        legend.append((colV, "U  the classifier", "-"))
    title = "Recursive network over a tree, rolled"
    sub = (f"hidden_size={cfg['hidden_size']}, classes={C if C else '-'}, up to {k} "
           "children a node; the loop runs over the tree, leaves to root")
    y1 = max(n.y for n in allnodes) + 0.8
    fig, ax = _new_figure((-2.2, 2.2), (-0.8, y1), title, sub, legend, min_width=6.0)
    for n in allnodes:
        _draw_node(ax, n, fontsize=13)
    _edge(ax, nodes["x"], nodes["h"], allnodes, colE, "E", gid="E:x>h")
    _loop(ax, nodes["h"], 1, colW, "W", gid="W:h>h")
    if C:
        _edge(ax, nodes["h"], nodes["o"], allnodes, colV, "U", gid="U:h>o")
        _edge(ax, nodes["o"], nodes["L"], allnodes, _INK, lw=1.3, gid="loss:o>L")
        _edge(ax, nodes["y"], nodes["L"], allnodes, _INK, lw=1.3, gid="target:y>L")
    return _save(fig, path)


# ----------------------------------------------------------------- recursive nets
def draw_tree(net, tree=None, path=None, backward=False, all_nodes=False):
    """Draw a recursive network (:class:`unrolled.layers.RecursiveNet`) unrolled over a
    tree: the one composition W copied at every inner node, as a recurrent network's W
    is copied at every step ("unrolled in space").

    Args:
        net: a ``RecursiveNet``, or a dict with ``hidden_size`` and optionally
            ``num_classes``, ``activation``.
        tree: nested tuples whose leaves are tokens, e.g. ``(("the", "cat"), "sat")``;
            default ``((0, 1), (2, 3))``.
        path: ``.png`` or ``.svg``; None to only return the figure.
        backward: overlay backpropagation through structure: from the loss down every
            edge to the leaves' embeddings.
        all_nodes: a classifier and a loss at every node (else at the root only).
    """
    cfg = dict(net) if isinstance(net, Mapping) else {
        "hidden_size": net.hidden_size, "num_classes": net.num_classes,
        "activation": net.activation}
    tree = ((0, 1), (2, 3)) if tree is None else tree
    _check_path(path)
    if not isinstance(tree, (tuple, list)) or not tree:
        raise ValueError("tree must be nested tuples with tokens at the leaves, e.g. "
                         "(('the', 'cat'), 'sat')")
    nodes, kids, leaves, order = {}, {}, [], []

    def walk(t):
        """Returns the node's key; keys are ("n", i) in post-order, leaves ("x", j)."""
        if isinstance(t, (tuple, list)):
            ch = [walk(c) for c in t]
            key = ("n", len(order) + 1)
            order.append(key)
            kids[key] = ch
            return key
        j = len(leaves) + 1
        leaves.append((j, str(t)))
        key = ("n", len(order) + 1)
        order.append(key)
        kids[key] = [("x", j)]
        return key

    root = walk(tree)
    r, dx, dy = 0.36, 1.6, 1.5
    height = {}

    def h_of(k):
        if k[0] == "x":
            return -1
        if k not in height:
            height[k] = 1 + max(h_of(c) for c in kids[k])
        return height[k]

    xs = {}
    for j, tok in leaves:
        xs[("x", j)] = j * dx
    for k in order:   # post-order: children first
        xs[k] = float(np.mean([xs[c] for c in kids[k]]))
    top = h_of(root)
    for j, tok in leaves:
        nodes[("x", j)] = _Node(xs[("x", j)], 0.0, tok[:6], "x", "circle", r, r)
    for k in order:
        nodes[k] = _Node(xs[k], (h_of(k) + 1) * dy, _sym("h", t=k[1]), "h", "circle", r, r)
    heads = order if all_nodes else [root]
    y_top = (top + 1) * dy
    C = cfg.get("num_classes")
    for k in heads:
        nodes[("o",) + k[1:]] = _Node(xs[k] + (0.55 if all_nodes and k != root else 0),
                                      (y_top + 1.4) if k == root else nodes[k].y + 0.95,
                                      _sym("o", t=k[1]), "o", "circle", 0.3, 0.3)
    allnodes = list(nodes.values())
    colE, colW, colV = "#1f5fbf", "#d62728", _V_COLOUR
    legend = [(colE, "E  the leaf embedding: one table for every leaf", "-"),
              (colW, f"W  the composition {cfg.get('activation', 'tanh')}(W[h_c1; h_c2] + b): "
                     "one matrix at every inner node", "-")]
    if C:
        legend.append((colV, "U  the classifier" + (" at every node" if all_nodes
                                                    else " at the root"), "-"))
    if backward:
        legend.append((_GRAD, "gradient (backpropagation through structure): from the "
                              "loss down every edge to the leaves, whose tokens' rows of E "
                              "it updates; dW sums every inner node's share", "--"))
    title = ("Recursive network over a tree, unrolled" + (", with the backward pass"
                                                          if backward else ""))
    sub = (f"hidden_size={cfg['hidden_size']}, classes={C if C else '-'}; "
           f"{len(leaves)} leaves, {len(order) - len(leaves)} inner nodes, height {top}")
    x0 = min(n.x for n in allnodes) - 1.2
    x1 = max(n.x for n in allnodes) + 1.2
    y1 = max(n.y for n in allnodes) + (2.0 if C else 0.8)
    fig, ax = _new_figure((x0, x1), (-0.8, y1), title, sub, legend, min_width=6.0)
    for n in allnodes:
        _draw_node(ax, n, fontsize=11)

    def link(a, b, colour, text=None, role="W", grad=True):
        A, B = nodes[a], nodes[b]
        sep = 0.08 if backward and grad else 0.0
        _edge(ax, A, B, allnodes, colour, text, off=sep, gid=f"{role}:{_kid(a)}>{_kid(b)}")
        if backward and grad:
            _edge(ax, B, A, allnodes, _GRAD, None, off=sep, ls="--", lw=1.3,
                  gid=f"grad:{_kid(b)}>{_kid(a)}")

    for k in order:
        for c in kids[k]:
            if c[0] == "x":   # the token is data: its gradient is the row dE[token]
                link(c, k, colE, "E", role="E", grad=False)
            else:
                link(c, k, colW, "W", role="W")
    if C:
        for k in heads:
            o = ("o",) + k[1:]
            link(k, o, colV, "U", role="V")
            L = _Node(nodes[o].x, nodes[o].y + 1.1, _sym("L", t=k[1]), "L", "circle",
                      0.28, 0.28)
            _draw_node(ax, L, fontsize=10)
            nodes[("L",) + k[1:]] = L
            link(o, ("L",) + k[1:], _INK, role="loss")
    return _save(fig, path)
