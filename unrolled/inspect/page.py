"""The interactive part of the inspection page: one record, step by step.

:func:`explorer_html` returns a ``<section>`` with the numbers it shows embedded as JSON
and a small script (no library, nothing fetched): pick a layer and a time step and see
h, c and every gate of every unit at that step as coloured cells; hover (or click) a
unit to see its trace over the whole record; beside it ‖∂L/∂h_t‖ over time, with the
chosen step marked. The page's address can name the view: ``#layer=1/l0&step=3&name=h
&unit=2`` (steps counted from 1).

:func:`data_uri` inlines a picture, so that the page is one self-contained file.
"""
import base64
import html
import json

import numpy as np

# gates squashed by a sigmoid (0..1); everything else is shown on -1..1 (tanh)
_UNIT_RANGE = {"i", "f", "o", "r", "z"}


def data_uri(path):
    """``data:image/png;base64,...`` of a PNG file (or ``image/svg+xml`` of an SVG)."""
    raw = open(path, "rb").read()
    mime = "image/svg+xml" if str(path).lower().endswith(".svg") else "image/png"
    return f"data:{mime};base64,{base64.b64encode(raw).decode('ascii')}"


def _round(a, digits=5):
    """Floats as short JSON numbers (the page shows 4 significant digits)."""
    a = np.asarray(a, dtype=np.float64)
    out = np.vectorize(lambda v: float(f"{v:.{digits}g}") if np.isfinite(v) else 0.0,
                       otypes=[float])(a) if a.size else a
    return out.tolist()


def explorer_data(tr, flow=None, labels=None, record=0, max_steps=1000):
    """The JSON-able numbers of the explorer: per layer/direction key, every state and
    tape entry of one record as (T, S) lists, and ‖∂L/∂h_t‖ (T,) where ``flow`` has it.
    A record longer than ``max_steps`` is cut to its first ``max_steps`` steps
    (``"of"`` then holds its full length)."""
    layers, T, full = {}, None, None
    for key, d in tr.items():
        names = {}
        for name, v in d.items():
            v = np.asarray(v)
            if v.ndim == 3 and name != "mask":
                full = v.shape[1]
                names[name] = _round(v[record, :max_steps])
                T = min(full, max_steps)
        layers[key] = {"names": list(names), "data": names,
                       "range": {n: ([0, 1] if n in _UNIT_RANGE else [-1, 1]) for n in names}}
    grad = {}
    if flow is not None:
        for key, v in flow.norms.items():
            grad[key] = _round(np.asarray(v)[record, :max_steps])
    labels = ([str(x) for x in labels[:T]] if labels is not None and len(labels) == full
              else None)
    return {"T": T, "of": full, "labels": labels, "layers": layers, "grad": grad}


_CSS = """
#explore .ex-controls{display:flex;gap:1.2em;align-items:center;flex-wrap:wrap;margin:.5em 0}
#explore .ex-panels{display:flex;gap:1.5em;flex-wrap:wrap}
#explore .ex-panel{flex:1 1 520px;min-width:380px}
#explore svg{border:1px solid #ddd;background:#fff}
#explore .ex-cell{cursor:crosshair}
#explore .ex-cell.sel{stroke:#000;stroke-width:2}
#explore #ex-value{font-family:monospace}
"""

_JS = r"""
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("explore-data").textContent);
  var $ = function (id) { return document.getElementById(id); };
  var NS = "http://www.w3.org/2000/svg";
  var keys = Object.keys(D.layers);
  var state = {key: keys[0], t: 0, name: null, unit: 0};
  function el(tag, attrs, parent) {
    var e = document.createElementNS(NS, tag);
    for (var k in attrs) { e.setAttribute(k, attrs[k]); }
    if (parent) { parent.appendChild(e); }
    return e;
  }
  function fmt(v) { return Number(v).toPrecision(4); }
  function stepName(t) {
    return "step " + (t + 1) + (D.labels ? " (" + JSON.stringify(D.labels[t]) + ")" : "");
  }
  function colour(v, lo, hi) {
    var x = Math.max(0, Math.min(1, (v - lo) / (hi - lo)));
    if (lo === 0) {  // 0..1: white to green
      return "rgb(" + Math.round(255 - 200 * x) + "," + Math.round(255 - 90 * x) + "," +
             Math.round(255 - 190 * x) + ")";
    }
    var s = 2 * x - 1;   // -1..1: blue, white, red
    if (s < 0) { return "rgb(" + Math.round(255 + 225 * s) + "," + Math.round(255 + 160 * s) +
                        ",255)"; }
    return "rgb(255," + Math.round(255 - 200 * s) + "," + Math.round(255 - 215 * s) + ")";
  }
  function grid() {
    var L = D.layers[state.key], svg = $("ex-grid");
    while (svg.firstChild) { svg.removeChild(svg.firstChild); }
    var S = 0;
    L.names.forEach(function (n) { S = Math.max(S, L.data[n][0].length); });
    var cw = Math.max(4, Math.min(26, Math.floor(470 / Math.max(S, 1)))), ch = 22, left = 70;
    svg.setAttribute("width", left + cw * S + 20);
    svg.setAttribute("height", 12 + ch * L.names.length + 10);
    L.names.forEach(function (n, row) {
      var y = 8 + row * ch, r = L.range[n], v = L.data[n][state.t];
      var lab = el("text", {x: left - 8, y: y + 15, "text-anchor": "end",
                            "font-size": 13}, svg);
      lab.textContent = n;
      v.forEach(function (val, u) {
        var c = el("rect", {x: left + u * cw, y: y, width: cw - 1, height: ch - 2,
                            fill: colour(val, r[0], r[1]), "class": "ex-cell",
                            "data-name": n, "data-unit": u}, svg);
        if (n === state.name && u === state.unit) { c.setAttribute("class", "ex-cell sel"); }
        var tip = el("title", {}, c);
        tip.textContent = n + "[" + u + "] = " + fmt(val);
        c.addEventListener("mouseenter", function () { pick(n, u); });
        c.addEventListener("click", function () { pick(n, u); });
      });
    });
  }
  function chart(svg, ys, t, log, colourName) {
    while (svg.firstChild) { svg.removeChild(svg.firstChild); }
    var W = 520, H = 200, pl = 56, pr = 10, pt = 10, pb = 30;
    svg.setAttribute("width", W); svg.setAttribute("height", H);
    var vals = ys.map(function (v) { return log ? Math.log10(Math.max(v, 1e-30)) : v; });
    var lo = Math.min.apply(null, vals), hi = Math.max.apply(null, vals);
    if (hi - lo < 1e-12) { lo -= 0.5; hi += 0.5; }
    var n = vals.length;
    var X = function (i) { return pl + (n > 1 ? i * (W - pl - pr) / (n - 1) : (W - pl - pr) / 2); };
    var Y = function (v) { return pt + (hi - v) * (H - pt - pb) / (hi - lo); };
    el("line", {x1: pl, y1: H - pb, x2: W - pr, y2: H - pb, stroke: "#999"}, svg);
    el("line", {x1: pl, y1: pt, x2: pl, y2: H - pb, stroke: "#999"}, svg);
    [lo, hi].forEach(function (v) {
      var tx = el("text", {x: pl - 4, y: Y(v) + 4, "text-anchor": "end", "font-size": 10}, svg);
      tx.textContent = log ? "1e" + v.toFixed(1) : fmt(v);
    });
    var every = Math.max(1, Math.ceil(n / 30));
    for (var i = 0; i < n; i += every) {
      var tk = el("text", {x: X(i), y: H - pb + 12, "text-anchor": "middle",
                           "font-size": 10}, svg);
      tk.textContent = D.labels ? D.labels[i] : String(i + 1);
    }
    var xl = el("text", {x: W - pr, y: H - 2, "text-anchor": "end", "font-size": 11}, svg);
    xl.textContent = "time step";
    el("line", {x1: X(t), y1: pt, x2: X(t), y2: H - pb, stroke: "#d4006a",
                "stroke-dasharray": "4 3", id: svg.id + "-mark"}, svg);
    el("polyline", {points: vals.map(function (v, i) { return X(i) + "," + Y(v); }).join(" "),
                    fill: "none", stroke: colourName, "stroke-width": 2}, svg);
    vals.forEach(function (v, i) {
      el("circle", {cx: X(i), cy: Y(v), r: i === t ? 4.5 : 2.2,
                    fill: i === t ? "#d4006a" : colourName}, svg);
    });
  }
  function pick(n, u) { state.name = n; state.unit = u; render(); }
  function render() {
    var L = D.layers[state.key];
    if (L.names.indexOf(state.name) < 0) { state.name = L.names[0]; }
    var S = L.data[state.name][0].length;
    state.unit = Math.max(0, Math.min(S - 1, state.unit));
    $("ex-step").value = state.t + 1;
    $("ex-step-name").textContent = stepName(state.t) + " of " + D.T;
    grid();
    var trace = L.data[state.name].map(function (row) { return row[state.unit]; });
    var v = trace[state.t];
    $("ex-value").textContent = state.key + " " + state.name + "[" + state.unit + "] at " +
      stepName(state.t) + " = " + fmt(v);
    $("ex-value").setAttribute("data-value", v);
    $("ex-trace-title").textContent = state.name + "[" + state.unit + "] of " + state.key +
      " at every step";
    chart($("ex-trace"), trace, state.t, false, "#1f5fbf");
    var g = D.grad[state.key];
    if (g) {
      $("ex-grad-title").textContent = "\u2016\u2202L/\u2202h_t\u2016 of " + state.key +
        " (log scale); at " + stepName(state.t) + ": " + fmt(g[state.t]);
      chart($("ex-grad"), g, state.t, true, "#d62728");
    }
    document.body.setAttribute("data-view", [state.key, state.t + 1, state.name,
                                             state.unit].join("|"));
  }
  var sel = $("ex-layer");
  keys.forEach(function (k) {
    var o = document.createElement("option"); o.value = k; o.textContent = k;
    sel.appendChild(o);
  });
  sel.addEventListener("change", function () { state.key = sel.value; render(); });
  var step = $("ex-step");
  step.max = D.T;
  step.addEventListener("input", function () { state.t = step.value - 1; render(); });
  document.addEventListener("keydown", function (e) {
    if (e.key === "ArrowRight") { state.t = Math.min(D.T - 1, state.t + 1); render(); }
    if (e.key === "ArrowLeft") { state.t = Math.max(0, state.t - 1); render(); }
  });
  // the view named in the address: #layer=1/l0&step=3&name=h&unit=2
  location.hash.replace(/^#/, "").split("&").forEach(function (kv) {
    var p = kv.split("="), k = p[0], v = decodeURIComponent(p[1] || "");
    if (k === "layer" && D.layers[v]) { state.key = v; }
    if (k === "step") { state.t = Math.max(0, Math.min(D.T - 1, parseInt(v, 10) - 1 || 0)); }
    if (k === "name") { state.name = v; }
    if (k === "unit") { state.unit = parseInt(v, 10) || 0; }
  });
  sel.value = state.key;
  render();
  document.body.setAttribute("data-ready", "1");
})();
"""

# errors of any script on the page are written into the page itself (data-errors), so a
# headless browser's dump of the page shows them
ERROR_HOOK = ("<script>window.onerror=function(m,s,l){var b=document.body||"
              "document.documentElement;b.setAttribute('data-errors',(b.getAttribute("
              "'data-errors')||'')+m+' (line '+l+'); ');};</script>")


def explorer_html(tr, flow=None, labels=None, note=None, max_steps=1000):
    """The interactive ``<section>`` (see the module doc) for the traces ``tr`` of one
    record and its gradient flow ``flow`` (its first ``max_steps`` steps)."""
    data = explorer_data(tr, flow, labels, max_steps=max_steps)
    if not data["layers"] or data["T"] is None:
        return ""
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    if data["of"] > data["T"]:
        cut = (f"This view shows the first {data['T']} of the record's {data['of']} steps "
               "(all of them are in arrays.npz).")
        note = f"{note} {cut}" if note else cut
    extra = f"<p>{html.escape(note)}</p>" if note else ""
    return (
        f"<section id='explore'><style>{_CSS}</style>"
        "<h2>Step by step</h2>"
        "<p>Pick a layer and a time step: every unit's state and gates at that step, "
        "coloured (blue −1, white 0, red +1; sigmoid gates white 0 to green 1). Hover or "
        "click a unit to follow it over the record; ← and → move the step.</p>" + extra +
        "<div class='ex-controls'><label>layer <select id='ex-layer'></select></label>"
        f"<label>step <input id='ex-step' type='range' min='1' max='{data['T']}' "
        "value='1'></label><span id='ex-step-name'></span></div>"
        "<p id='ex-value'></p>"
        "<div class='ex-panels'><div class='ex-panel'><svg id='ex-grid'></svg>"
        "<h3 id='ex-trace-title'></h3><svg id='ex-trace'></svg></div>"
        "<div class='ex-panel'><h3 id='ex-grad-title'></h3><svg id='ex-grad'></svg></div>"
        "</div>"
        f"<script type='application/json' id='explore-data'>{payload}</script>"
        f"<script>{_JS}</script></section>")
