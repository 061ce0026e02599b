"""One HTML page that shows what a model does with one record.

:func:`write_report` writes into a folder:

- ``index.html``, one self-contained page (the pictures inlined, nothing fetched): the
  model as it prints and its summary, the drawings of the model (rolled, unrolled, and
  the backward pass), a step-by-step view (pick a time step and see h, c and the gates;
  hover a unit for its trace; the gradient flow beside it), the states and gates over the
  record, gate saturation, ‖∂L/∂h_t‖ over time, each step's share of the weight
  gradients, and the singular values of ∂s_T/∂s_t;
- every picture as ``.png`` (shown in the page) and ``.svg`` (linked);
- ``arrays.npz``: the raw numbers behind the pictures (traces, ∂L/∂h_t, norms, shares'
  norms, singular values, the record and the output).

:func:`cli_inspect` is ``unrolled inspect MODEL --input TEXT --out DIR``: it loads a model
saved by ``unrolled train``, turns ``--input`` into a record the way its task reads one
(a name, a text prime, 64 comma-separated pixel values, ...) and writes the report.
"""
import html
import json
from pathlib import Path

import numpy as np

from ..backend import to_numpy
from .page import ERROR_HOOK, data_uri, explorer_html
from .gradflow import (
    gradient_flow,
    plot_gradient_flow,
    plot_jacobians,
    plot_shares,
    state_jacobians,
)
from .traces import as_batch, flatten_traces, plot_saturation, plot_traces, saturation, traces

__all__ = ["cli_inspect", "record_from_input", "write_report"]

_MAX_PANELS = 4  # layers/directions drawn in the per-layer pictures


def _recurrent_layers(model):
    from ..layers import Recurrent, Sequential

    if isinstance(model, Recurrent):
        return [model]
    if isinstance(model, Sequential):
        return [ly for m in model.layers for ly in _recurrent_layers(m)]
    return []


def _spec_for_drawing(model):
    """The model as it was built: its pattern, its recurrent layers and the layers around
    them (see :func:`unrolled.inspect.drawings.spec_of_model`)."""
    from .drawings import spec_of_model

    return spec_of_model(model)


def _save(fig, out_dir, stem, files):
    """Save ``fig`` as PNG and SVG; remember both names."""
    for ext in ("png", "svg"):
        fig.savefig(out_dir / f"{stem}.{ext}", dpi=100 if ext == "png" else None)
    files.append(stem)
    return stem


def _figure_html(stem, caption):
    return (f'<figure><a href="{stem}.svg"><img src="{stem}.png" alt="{html.escape(caption)}">'
            f'</a><figcaption>{html.escape(caption)} (<a href="{stem}.svg">SVG</a>)'
            f"</figcaption></figure>")


_CSS = """body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}
img{max-width:100%;border:1px solid #ddd}figure{margin:1.2em 0}
figcaption{font-size:.9em;color:#555}table{border-collapse:collapse;font-size:.9em}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}code,pre{background:#f6f6f6}"""


def write_report(model, record, out_dir, target=None, loss=None, mask=None, labels=None,
                 title=None, data=None, T_draw=4, notes=()):
    """Write the inspection report of ``model`` on one record into ``out_dir``.

    Parameters
    ----------
    model : a recurrent layer or a ``Sequential`` holding recurrent layers.
    record : one record: (T, D) floats or (T,) integer symbols (or a batch of one).
    out_dir : folder to write (created if needed).
    target, loss : the target of the record and the loss for the gradient flow; with no
        target, a cross-entropy model is explained w.r.t. its own prediction (argmax),
        any other w.r.t. the sum of its outputs.
    mask : (T,) bool or None.
    labels : optional T strings naming the steps (e.g. the characters of a name).
    title : the page's title.
    data : optional batches for the saturation statistics (default: the record alone).
    T_draw : time steps in the unrolled drawing.
    notes : lines shown at the top of the page (e.g. the model's prediction).

    Returns
    -------
    Path of ``index.html``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not _recurrent_layers(model):
        raise ValueError(f"{type(model).__name__} has no recurrent layer to inspect; pass a "
                         "model with a recurrent layer")
    X, m = as_batch(record, mask)
    if X.shape[0] != 1:
        raise ValueError(f"write_report takes one record, got a batch of {X.shape[0]}; "
                         "pass record[i]")
    if X.shape[1] < 1:
        raise ValueError("the record is empty: it needs at least one step")
    output = model(X, mask=m)
    if target is None:
        if _is_classifier(loss):  # explain the model's own prediction
            target = output.argmax(-1)
        else:                     # follow the sum of the outputs
            loss = None
    files, sections, arrays = [], [], {"record": to_numpy(X), "output": to_numpy(output)}

    # -- drawings (when the drawing module is there)
    figs = []
    try:
        from .drawings import draw_rolled, draw_unrolled

        spec = _spec_for_drawing(model)
        figs = [(_save(draw_rolled(spec), out, "net_rolled", files), "the rolled network"),
                (_save(draw_unrolled(spec, T=T_draw), out, "net_unrolled", files),
                 f"unrolled over {T_draw} steps: the same weights at every step"),
                (_save(draw_unrolled(spec, T=T_draw, backward=True), out, "net_backward",
                       files), "the backward pass (BPTT): the paths the gradient takes")]
    except Exception as e:  # noqa: BLE001  (a drawing problem must not cost the report)
        sections.append(f"<p><em>No drawing of this network ({html.escape(str(e))}).</em></p>")
    if figs:
        sections.append("<h2>The network</h2>" + "".join(_figure_html(s, c) for s, c in figs))

    # -- traces
    tr = traces(model, X, m)
    arrays.update(flatten_traces(tr))
    keys = list(tr)[:_MAX_PANELS]
    part = (f" (the first {len(keys)} of the {len(tr)} layers and directions; all of them "
            "in the step-by-step view and in arrays.npz)" if len(tr) > len(keys) else "")
    T = X.shape[1]
    lab = list(labels) if labels is not None and len(labels) == T else None
    _save(plot_traces(tr, keys=keys, labels=lab), out, "traces", files)
    sat = saturation(model, X if data is None else data, m if data is None else None)
    sat_rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{g}</td><td>{s['low']:.3f}</td>"
        f"<td>{s['high']:.3f}</td><td>{s['mean']:.3f}</td></tr>"
        for k, d in sat.items() for g, s in d.items())
    parts = [_figure_html("traces", "hidden state h, cell state c and gate activations "
                          "at every step (units on the vertical axis)" + part)]
    if sat_rows:
        _save(plot_saturation(sat), out, "saturation", files)
        parts.append(_figure_html("saturation", "share of gate values near their rails "
                                  "(sigmoid gates: ≤ 0.05 or ≥ 0.95; tanh: near ±1)"))
        parts.append("<table><tr><th>layer</th><th>gate</th><th>low</th><th>high</th>"
                     f"<th>mean</th></tr>{sat_rows}</table>")
    sections.append("<h2>States and gates over the record</h2>" + "".join(parts))

    # -- gradient flow
    flow = gradient_flow(model, X, target, loss, mask=m)
    arrays.update(flow.arrays())
    sections.insert(1 if figs else 0, explorer_html(tr, flow, lab))
    _save(plot_gradient_flow(flow, labels=lab), out, "gradflow", files)
    share_figs = []
    shown = list(flow.share_norms)[:_MAX_PANELS]
    if len(flow.share_norms) > len(shown):
        share_figs.append(f"<p>Shares of the first {len(shown)} of the "
                          f"{len(flow.share_norms)} layers and directions are drawn; all "
                          "of them are in arrays.npz.</p>")
    for k in shown:
        stem = "shares_" + k.replace("/", "_")
        _save(plot_shares(flow, key=k), out, stem, files)
        share_figs.append(_figure_html(stem, f"{k}: norm of each step's share of each "
                                       "weight gradient (the shares add up to the gradient)"))
    jacs = {}
    for k in list(flow.norms)[:_MAX_PANELS]:
        j = state_jacobians(model, X, mask=m, key=k)
        jacs[k] = j
        arrays[f"jacobian/{k}/singular_values"] = j["singular_values"]
    _save(plot_jacobians(jacs), out, "jacobians", files)
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v[0]:.3g}</td><td>{v[-1]:.3g}</td>"
                   f"<td>{v.max():.3g}</td><td>{v.min():.3g}</td></tr>"
                   for k, v in flow.total_norms.items())
    sections.append(
        "<h2>Gradient flow over time</h2>"
        f"<p>Loss on this record: {flow.loss:.6g}. ‖∂L/∂h<sub>t</sub>‖ is the gradient "
        "BPTT carries into step t, read from the backward pass itself.</p>"
        "<table><tr><th>layer</th><th>first step</th><th>last step</th><th>largest</th>"
        f"<th>smallest</th></tr>{rows}</table>"
        + _figure_html("gradflow", "‖∂L/∂h_t‖ against t (log scale)")
        + "".join(share_figs)
        + _figure_html("jacobians", f"the {_top_sv(jacs)} singular values of the Jacobian "
                       "∂s_T/∂s_t against the distance T − t: how fast a change at step t "
                       "fades by the end"
                       + (f" (the first {len(jacs)} of the {len(flow.norms)} layers and "
                          "directions)" if len(flow.norms) > len(jacs) else "")))

    # -- files
    return write_page(out, title or f"inspect: {type(model).__name__}", notes, model,
                      sections, arrays, files)


def write_page(out, title, notes, model, sections, arrays, files):
    """``out/index.html``, one self-contained file (the PNGs inlined), and
    ``out/arrays.npz``; returns the page's path."""
    np.savez_compressed(out / "arrays.npz", **arrays)
    head = "".join(f"<p>{html.escape(str(n))}</p>" for n in notes)
    summary = getattr(model, "summary", None)
    summary = f"<pre>{html.escape(str(summary()))}</pre>" if callable(summary) else ""
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title>{ERROR_HOOK}<style>{_CSS}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>{head}"
            f"<h2>The model</h2><pre>{html.escape(repr(model))}</pre>{summary}"
            + "".join(sections)
            + "<h2>Files</h2><p>Raw arrays: <a href='arrays.npz'>arrays.npz</a> ("
            + ", ".join(sorted({k.split('/')[0] for k in arrays}))
            + "). Pictures: " + ", ".join(f"<a href='{s}.svg'>{s}</a>" for s in files)
            + ".</p></body></html>\n")
    for stem in files:   # the pictures inside the page: one file, nothing to fetch
        page = page.replace(f'src="{stem}.png"', f'src="{data_uri(out / (stem + ".png"))}"')
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


def _top_sv(jacs, top=3):
    """Which singular values the Jacobian picture draws: "3 largest of the 64" (or "64"
    when it draws them all), for its caption."""
    n = max((j["singular_values"].shape[1] for j in jacs.values()), default=0)
    return f"{n}" if n <= top else f"{top} largest of the {n}"


def _is_classifier(loss):
    """No target given: explain a classifier's own prediction (logits out, CE loss)."""
    name = loss if isinstance(loss, str) else getattr(loss, "name", None)
    return name == "cross_entropy"


# --------------------------------------------------------------------------- the CLI

def _input_size(model):
    """The width of one step of input, or None for a model that reads symbols."""
    from ..layers import Embedding, Sequential

    first = model.layers[0] if isinstance(model, Sequential) else model
    if isinstance(first, Embedding):
        return None
    return getattr(first, "input_size", None)


def _numbers(text, D):
    """A window of numbers as (T, D): rows split by ';' or new lines, values by ',' or
    spaces; a single row of T*D values is read step by step."""
    rows = [r for r in str(text).replace("\n", ";").split(";") if r.strip()]
    try:
        vals = [[float(v) for v in r.replace(",", " ").split()] for r in rows]
    except ValueError:
        return None
    if not vals or len({len(r) for r in vals}) != 1:
        return None
    arr = np.array(vals, dtype=np.float64)
    if arr.shape[1] == D:
        return arr
    if arr.shape[0] == 1 and arr.size % D == 0:
        return arr.reshape(-1, D)
    raise ValueError(f"--input holds rows of {arr.shape[1]} values but the model reads "
                     f"{D} per step; pass one row of {D} values per step, rows separated "
                     "by ';'")


def record_from_input(task, text, model=None):
    """``(record, target, labels, notes)`` for ``--input`` in the task's own form.

    A task's own ``encode(text)`` comes first (a name, an image's 64 values, ...); a
    language model's vocabulary reads a prime; otherwise, for a model of real-valued
    inputs, ``--input`` is a window of numbers fed as given.
    """
    try:  # names, digits, ... : one record to classify
        rec = np.asarray(task.encode(text)) if hasattr(task, "encode") else None
    except NotImplementedError:  # a task without a text form of its records (ctf)
        rec = None
    if rec is not None:
        labels = list(str(text).strip()) if rec.shape[0] == len(str(text).strip()) else None
        return rec, None, labels, []
    vocab = getattr(task, "vocab", None)
    if vocab is not None:  # a language model: the prime, each step predicting the next
        from ..tasks.text import encode_prime

        ids = np.asarray(encode_prime(vocab, text))
        if ids.size < 2:
            raise ValueError("--input for a text model needs at least 2 characters: each "
                             "step is scored on predicting the next one")
        return ids[:-1], ids[1:][None], list(text[:-1]), [(f"record: {text!r}, each step "
                                                          "predicting the next character")]
    D = None if model is None else _input_size(model)
    rec = None if D is None else _numbers(text, D)
    if rec is not None:
        return (rec.astype(getattr(model, "dtype", "float32")), None, None,
                [(f"record: a window of {rec.shape[0]} steps of {D} value(s), fed as given "
                 "(scale them as the training data was)")])
    raise ValueError(f"task {getattr(task, 'name', '?')!r} cannot turn --input into a "
                     "record; pass a window of numbers, one row per step separated by ';'")


# fonts with CJK glyphs, tried in order after the default one (matplotlib falls back from
# one family to the next glyph by glyph)
CJK_FONTS = ("Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans JP", "Source Han Sans JP",
             "IPAexGothic", "IPAGothic", "TakaoGothic", "WenQuanYi Zen Hei",
             "Droid Sans Fallback", "Hiragino Sans", "Yu Gothic", "MS Gothic",
             "Microsoft YaHei", "SimHei", "Arial Unicode MS")


def _charmap(path):
    """The code points a font file has glyphs for (empty when it cannot be read)."""
    if path not in _CHARMAPS:
        from matplotlib.ft2font import FT2Font

        try:
            _CHARMAPS[path] = frozenset(FT2Font(path).get_charmap())
        except (OSError, RuntimeError, ValueError):
            _CHARMAPS[path] = frozenset()
    return _CHARMAPS[path]


_CHARMAPS = {}


def label_fonts(labels):
    """``(font families, note)`` for drawing ``labels``.

    The characters the default font has no glyph for are looked up in the installed fonts
    (by their character maps; the CJK fonts of :data:`CJK_FONTS` first, and trusted for
    CJK by name), and the fonts that have them are added after the default family, so
    matplotlib falls back to them glyph by glyph. ``families`` is None when the default
    font has every glyph or no installed font has any that is missing. ``note`` (or None)
    names the characters no installed font has: the pictures draw them as boxes."""
    from matplotlib import font_manager, rcParams
    from matplotlib.font_manager import FontProperties

    chars = list(dict.fromkeys(ch for ch in "".join(map(str, labels)) if not ch.isspace()))
    if not chars:
        return None, None
    try:
        default = font_manager.findfont(FontProperties(family=rcParams["font.family"]),
                                        fallback_to_default=True)
        have = _charmap(default)
    except (OSError, RuntimeError, ValueError):
        have = frozenset()
    missing = [ch for ch in chars if ord(ch) not in have]
    if not missing:
        return None, None
    entries = [f for f in font_manager.fontManager.ttflist
               if "last resort" not in f.name.lower()]  # its glyphs are boxes too
    entries.sort(key=lambda f: CJK_FONTS.index(f.name) if f.name in CJK_FONTS
                 else len(CJK_FONTS))
    found, left = [], list(missing)
    for f in entries:
        cmap = _charmap(f.fname) if f.fname else frozenset()
        if not cmap and f.name in CJK_FONTS:  # a known CJK font: its CJK glyphs
            cmap = {ord(ch) for ch in left if ord(ch) >= 0x2E80}
        got = [ch for ch in left if ord(ch) in cmap]
        if got and f.name not in found:
            found.append(f.name)
            left = [ch for ch in left if ch not in got]
        if not left:
            break
    note = None
    if left:
        shown = "".join(left[:40]) + ("..." if len(left) > 40 else "")
        note = (f"no installed font has the glyphs of {len(left)} character(s) of the input "
                f"({shown}), so the pictures draw them as boxes; install a font that has "
                "them (for CJK, e.g. the fonts-noto-cjk or fonts-wqy-zenhei package)")
    if not found:
        return None, note
    base = rcParams["font.family"]
    return (list(base) if isinstance(base, list) else [base]) + found, note


def cli_inspect(model_dir, input_text, out_dir):
    """``unrolled inspect MODEL --input TEXT --out DIR``: load, encode, report.

    Returns
    -------
    Path of the ``index.html`` written.
    """
    from ..metrics import softmax
    from ..tasks.base import load_trained

    model, meta, task = load_trained(model_dir,
                                     "use unrolled.inspect.write_report from Python")
    title = f"unrolled inspect: {meta['config']['task']} model {Path(model_dir).name}"
    from ..seq2seq import Seq2Seq

    if isinstance(model, Seq2Seq):  # an encoder–decoder: its own page
        from .encdec import write_encoder_decoder_report

        if not hasattr(task, "encode_source"):
            raise ValueError(f"task {meta['config']['task']!r} cannot turn --input into a "
                             "source sequence; use unrolled.inspect.encdec from Python")
        src, labels = task.encode_source(input_text)
        families, note = label_fonts(labels)
        import matplotlib

        with matplotlib.rc_context({"font.family": families} if families else {}):
            path = write_encoder_decoder_report(
                model, src, out_dir, source_labels=labels, target_names=task.output_names(),
                title=title, notes=[f"input {input_text!r}"] + ([note] if note else []),
                max_len=24)  # as `predict` decodes
        (Path(out_dir) / "input.json").write_text(json.dumps({"input": input_text,
                                                              "model": str(model_dir)}) + "\n")
        return path
    record, target, labels, notes = record_from_input(task, input_text, model)
    loss = task.loss
    X, _ = as_batch(record)
    out = model(X)
    classes = (meta.get("task_state") or {}).get("classes")
    if classes and out.ndim == 2:
        p = softmax(out[0].astype(np.float64))
        top = np.argsort(-p)[:3]
        notes = [f"input {input_text!r}: predicted " + ", ".join(
            f"{classes[i]} {p[i]:.3f}" for i in top) + "; the gradient flow explains the "
            "top prediction"] + notes
    import matplotlib

    families, note = label_fonts(labels or [])
    notes = notes + ([note] if note else [])
    with matplotlib.rc_context({"font.family": families} if families else {}):
        path = write_report(model, X, out_dir, target=target, loss=loss, labels=labels,
                            title=title, notes=notes)
    (Path(out_dir) / "input.json").write_text(json.dumps({"input": input_text,
                                                          "model": str(model_dir)}) + "\n")
    return path
