"""Drawings of the rolled and unrolled network: rendered, opened and read back.

Every picture is drawn to PNG and opened as an image (size, not blank); SVGs are
parsed as XML and their labels and arrow ids (``role:source>target``) checked against
the graph the drawing must show.
"""
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
import matplotlib.image as mpimg

from unrolled.cells import REGISTRY
from unrolled.inspect import CELLS, NetSpec, describe, draw_rolled, draw_unrolled

BASE = dict(input_size=3, hidden_size=8, output_size=5)
GRAD_RGB = np.array([0xd4, 0x00, 0x6a]) / 255     # drawings._GRAD
CPATH_RGB = np.array([0xb8, 0x86, 0x0b]) / 255    # drawings._CPATH


def has_c(cell):
    """The cell carries a cell state beside h (LSTM, peephole LSTM)."""
    return "c" in REGISTRY[cell].state


def spec(cell, **kw):
    return {"cell": cell, **BASE, **kw}


def open_png(path):
    """The PNG as an (H, W, 3) float array, checked to be a real, non-blank picture."""
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    h, w = img.shape[:2]
    assert 300 <= h <= 4000 and 300 <= w <= 5000, (h, w)
    rgb = img[..., :3]
    q = (rgb * 255).astype(np.uint32)
    colours = np.unique((q[..., 0] << 16) | (q[..., 1] << 8) | q[..., 2])   # packed RGB
    assert len(colours) > 50, "too few distinct colours: blank or nearly blank"
    ink = (np.abs(rgb - 1.0).sum(axis=2) > 0.05).mean()   # not the white background
    assert 0.03 < ink < 0.6, f"fraction of non-background pixels {ink:.3f}"
    return rgb


def has_colour(rgb, target, tol=0.06, min_pixels=30):
    return int((np.abs(rgb - target).max(axis=2) < tol).sum()) >= min_pixels


def svg_texts(path):
    root = ET.parse(path).getroot()
    return [re.sub(r"\s+", "", "".join(e.itertext())) for e in root.iter()
            if e.tag.endswith("}text")]


def svg_edges(path):
    """Arrow ids of the SVG as (role, source, target) triples."""
    root = ET.parse(path).getroot()
    out = []
    for e in root.iter():
        m = re.fullmatch(r"(\w+):([\w.-]+)>([\w.-]+)", e.get("id", ""))
        if m:
            out.append(m.groups())
    return out


# ------------------------------------------------------------------------ rendering
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("T", [1, 4, 8])
def test_unrolled_png_is_a_real_picture_and_grows_with_T(cell, T, tmp_path):
    fig = draw_unrolled(spec(cell), T=T, path=tmp_path / "u.png")
    rgb = open_png(tmp_path / "u.png")
    assert fig.get_size_inches()[0] * fig.dpi == pytest.approx(rgb.shape[1], abs=2)
    # the LSTM's cell-state path is drawn, and only for the LSTM
    assert has_colour(rgb, CPATH_RGB) == has_c(cell)
    assert not has_colour(rgb, GRAD_RGB)          # no gradient without backward=True
    if T == 8:
        w4 = draw_unrolled(spec(cell), T=4).get_size_inches()[0]
        assert fig.get_size_inches()[0] > w4 + 3   # one column per step


@pytest.mark.parametrize("cell, opts", [
    ("elman", dict(bidirectional=True)), ("gru", dict(bidirectional=True)),
    ("jordan", dict(num_layers=3)), ("lstm", dict(num_layers=2)),
] + [(c, dict(num_layers=2, bidirectional=True)) for c in CELLS])
def test_stacked_and_bidirectional_render(cell, opts, tmp_path):
    draw_unrolled(spec(cell, **opts), T=3, path=tmp_path / "u.png")
    rgb = open_png(tmp_path / "u.png")
    one_row = draw_unrolled(spec(cell), T=3).get_size_inches()[1] * 100   # not saved
    assert rgb.shape[0] > one_row + 100        # a row per layer and direction
    if opts.get("bidirectional") and opts.get("num_layers"):
        draw_rolled(spec(cell, **opts), path=tmp_path / "r.png")
        open_png(tmp_path / "r.png")


@pytest.mark.parametrize("cell", CELLS)
def test_backward_overlay_draws_gradient_paths(cell, tmp_path):
    draw_unrolled(spec(cell), T=4, path=tmp_path / "b.png", backward=True)
    rgb = open_png(tmp_path / "b.png")
    assert has_colour(rgb, GRAD_RGB, min_pixels=500)
    draw_unrolled(spec(cell), T=4, path=tmp_path / "b.svg", backward=True)
    edges = svg_edges(tmp_path / "b.svg")
    grads = {(s, t) for r, s, t in edges if r == "grad"}
    state = "o" if cell == "jordan" else "h"
    for t in range(1, 5):
        # back through W: from step t into the state of step t-1, right to left
        assert (f"h-1-0-{t}", f"{state}-1-0-{t - 1}") in grads
        # dL/dL_t -> o_t, and dL/do_t into the hidden state
        assert (f"L-{t}", f"o-{t}" if cell != "jordan" else f"o-1-0-{t}") in grads
        assert (f"o-{t}" if cell != "jordan" else f"o-1-0-{t}", f"h-1-0-{t}") in grads
    # nothing flows back into the inputs or the targets
    assert not any(t.startswith(("x-", "y-")) for r, s, t in edges if r == "grad")
    texts = svg_texts(tmp_path / "b.svg")
    assert sum("∑" in t for t in texts) >= 4      # the bus and the three sums
    assert any("summedoverstepsintodU,dW,dV" in t for t in texts)


def test_stacked_bidirectional_backward_renders(tmp_path):
    draw_unrolled(spec("lstm", num_layers=2, bidirectional=True), T=2,
                  path=tmp_path / "b.png", backward=True)
    assert has_colour(open_png(tmp_path / "b.png"), GRAD_RGB, min_pixels=500)


# ---------------------------------------------------------------- what is drawn (SVG)
@pytest.mark.parametrize("cell, T", [(c, 4) for c in CELLS] + [
    ("elman", 1), ("jordan", 1), ("lstm", 8), ("gru", 8)])
def test_svg_shows_shared_weights_once_per_step(cell, T, tmp_path):
    draw_unrolled(spec(cell), T=T, path=tmp_path / "u.svg")
    texts = svg_texts(tmp_path / "u.svg")
    for w in ("U", "W", "V"):
        assert texts.count(w) == T, (w, texts.count(w))
    shared = f"sharedbyall{T}steps" if T > 1 else "thematrixoftheonestep"
    assert sum(shared in t for t in texts) == 3        # U, W, V in the legend
    edges = svg_edges(tmp_path / "u.svg")
    w_edges = [(s, t) for r, s, t in edges if r == "W"]
    assert len(w_edges) == T
    state = "o" if cell == "jordan" else "h"          # Jordan: o_{t-1} -> h_t
    assert sorted(w_edges) == sorted((f"{state}-1-0-{t - 1}", f"h-1-0-{t}")
                                     for t in range(1, T + 1))
    assert ("C" in texts) == has_c(cell)
    assert len([1 for r, *_ in edges if r == "C"]) == (T if has_c(cell) else 0)


def test_bidirectional_rows_run_right_to_left(tmp_path):
    draw_unrolled(spec("elman", bidirectional=True, num_layers=2), T=3,
                  path=tmp_path / "u.svg")
    w = {(s, t) for r, s, t in svg_edges(tmp_path / "u.svg") if r == "W"}
    for layer in (1, 2):
        for t in range(1, 4):
            assert (f"h-{layer}-1-{t - 1}", f"h-{layer}-1-{t}") in w     # ->
            assert (f"h-{layer}-r-{t + 1}", f"h-{layer}-r-{t}") in w      # <-
    assert len(w) == 2 * 2 * 3
    # layer 2 reads both directions of layer 1
    u = {(s, t) for r, s, t in svg_edges(tmp_path / "u.svg") if r == "U"}
    assert {("h-1-1-2", "h-2-1-2"), ("h-1-r-2", "h-2-1-2")} <= u


@pytest.mark.parametrize("cell", CELLS)
def test_rolled_svg_has_one_loop_and_the_gates(cell, tmp_path):
    fig = draw_rolled(spec(cell), path=tmp_path / "r.svg")
    assert fig.axes
    texts = svg_texts(tmp_path / "r.svg")
    assert texts.count("W") == 1 and texts.count("U") == 1 and texts.count("V") == 1
    names = REGISTRY[cell].gate_names
    gates = names if len(names) > 1 and cell != "jordan" else []   # a gated cell's box
    for g in gates:
        assert g in texts, g
    w = [(s, t) for r, s, t in svg_edges(tmp_path / "r.svg") if r == "W"]
    assert w == ([("o-1-0", "h-1-0")] if cell == "jordan" else [("h-1-0", "h-1-0")])
    draw_rolled(spec(cell), path=tmp_path / "r.png")
    open_png(tmp_path / "r.png")


def test_figures_do_not_leak_into_pyplot(tmp_path):
    plt = pytest.importorskip("matplotlib.pyplot")
    before = plt.get_fignums()
    draw_unrolled(spec("gru"), T=2, path=tmp_path / "a.png")
    draw_rolled(spec("gru"))
    assert plt.get_fignums() == before


# --------------------------------------------------------------------------- specs
def test_describe_accepts_dicts_dataclasses_and_layer_objects():
    s = describe({"cell": "LSTM", "input_size": 3, "hidden_size": 8})
    assert s == NetSpec("lstm", 3, 8, None, 1, False)
    assert describe(s) is not s and describe(s) == s

    @dataclass(frozen=True)
    class Cell:                      # a cell object that knows its name and width
        output_size: int = 4
        name: str = "jordan"

    class Layer:                     # a recurrent layer exposing the usual attributes
        cell = Cell()
        input_size, hidden_size, num_layers, bidirectional = 2, 6, 3, True

    got = describe(Layer())
    assert got == NetSpec("jordan", 2, 6, 4, 3, True)
    fig = draw_unrolled(Layer(), T=2)
    assert fig.get_size_inches()[1] > draw_unrolled(spec("jordan"), T=2).get_size_inches()[1]


def test_describe_reads_the_recurrent_layers():
    layers = pytest.importorskip("unrolled.layers")
    cells = pytest.importorskip("unrolled.cells")
    lstm = layers.Recurrent(cells.LSTMCell(), 3, 8, num_layers=2, bidirectional=True)
    assert describe(lstm) == NetSpec("lstm", 3, 8, None, 2, True)
    jordan = layers.Recurrent(cells.JordanCell(output_size=4), 3, 8)
    assert describe(jordan) == NetSpec("jordan", 3, 8, 4, 1, False)


@pytest.mark.parametrize("bad, match", [
    (dict(cell="transformer"), ", ".join(CELLS)),
    (dict(cell="elman", hidden_size=0), "hidden_size"),
    (dict(cell="elman", num_layers=1.5), "num_layers"),
    (dict(cell="elman", bidirectional="yes"), "bidirectional"),
    (dict(cell="elman", hiden_size=3), "valid keys"),
])
def test_bad_spec_is_a_value_error_naming_the_valid_values(bad, match):
    with pytest.raises(ValueError, match=match):
        describe({**BASE, **bad})
    with pytest.raises(ValueError, match=match):
        draw_rolled({**BASE, **bad})


def test_object_without_the_attributes_is_a_type_error():
    with pytest.raises(TypeError, match="hidden_size"):
        describe(type("Half", (), {"cell": "gru", "input_size": 3})())


@pytest.mark.parametrize("T", [0, -2, 2.5, True])
def test_T_below_one_is_a_value_error(T):
    with pytest.raises(ValueError, match="T must be an integer >= 1"):
        draw_unrolled(spec("elman"), T=T)


def test_unknown_suffix_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match=r"\.png.*\.svg"):
        draw_rolled(spec("elman"), path=tmp_path / "r.jpg")
    assert not (tmp_path / "r.jpg").exists()


def test_drawing_is_deterministic(tmp_path):
    for name in ("a.svg", "b.svg"):
        draw_unrolled(spec("lstm"), T=2, path=tmp_path / name, backward=True)
    assert (tmp_path / "a.svg").read_bytes() == (tmp_path / "b.svg").read_bytes()


# ------------------------------------------------------------- the model as it was built
def _names_model(bidirectional=False):
    u = pytest.importorskip("unrolled")
    return u.Sequential(u.Embedding(30, 4, seed=0), u.Dropout(0.2, seed=1),
                        u.LSTM(4, 5, return_sequences=False, bidirectional=bidirectional,
                               seed=2),
                        u.Dropout(0.5, seed=3), u.Dense(5 * (1 + bidirectional), 3, seed=4))


def test_spec_of_a_model_reads_its_pattern_and_the_layers_around_it():
    u = pytest.importorskip("unrolled")
    model = _names_model()
    s = describe(model)
    assert (s.cell, s.input_size, s.hidden_size, s.output_size) == ("lstm", 4, 5, 3)
    assert s.pattern == "many-to-one"
    assert s.inputs == tuple(repr(ly) for ly in model.layers[:2])
    assert s.outputs == (repr(model.layers[3]),)       # the Dense is V, not a box
    tagger = u.Sequential(u.Embedding(9, 3), u.GRU(3, 4), u.GRU(4, 4, bidirectional=False),
                          u.Dense(4, 2))
    t = describe(tagger)
    assert (t.pattern, t.num_layers, t.cell, t.outputs) == ("many-to-many", 2, "gru", ())
    # a GRU after an LSTM is not drawn as a second layer of the LSTM: it is a box after it
    mixed = describe(u.Sequential(u.LSTM(3, 4), u.Fold(u.GRU(4, 6))))
    assert mixed.num_layers == 1 and mixed.pattern == "many-to-many"
    assert mixed.outputs and mixed.outputs[0].startswith("Fold(")
    assert describe(u.Fold(u.GRU(3, 4))).pattern == "many-to-one"
    assert describe(u.GRU(3, 4, return_sequences=False)).pattern == "many-to-one"
    with pytest.raises(ValueError, match="pattern"):
        describe(spec("gru", pattern="one-to-one"))


@pytest.mark.parametrize("bidirectional", [False, True])
def test_many_to_one_draws_one_output_one_loss_and_the_gradient_entering_there(
        bidirectional, tmp_path):
    T = 4
    draw_unrolled(_names_model(bidirectional), T=T, path=tmp_path / "b.svg", backward=True)
    edges = svg_edges(tmp_path / "b.svg")
    by = lambda role: {(s, t) for r, s, t in edges if r == role}   # noqa: E731
    assert by("loss") == {(f"o-{T}", f"L-{T}")} and by("target") == {(f"y-{T}", f"L-{T}")}
    assert by("V") == {(f"out-1-{T}", f"o-{T}")}
    # the final states feed the layer after the recurrence: ->h_T, and <-h_1
    finals = {("h-1-0-%d" % T, f"out-1-{T}")} if not bidirectional else {
        ("h-1-1-%d" % T, f"out-1-{T}"), ("h-1-r-1", f"out-1-{T}")}
    assert by("out") == finals
    # the embedding and the dropout at every step; the gradient reaches the embedding's
    # output but not the symbols x (data)
    assert by("in") == {(f"x-{t}", f"in-1-{t}") for t in range(1, T + 1)} | {
        (f"in-1-{t}", f"in-2-{t}") for t in range(1, T + 1)}
    grads = by("grad")
    assert {(f"in-2-{t}", f"in-1-{t}") for t in range(1, T + 1)} <= grads
    assert not any(t.startswith("x-") for _, t in grads)
    assert (f"o-{T}", f"out-1-{T}") in grads and (f"L-{T}", f"o-{T}") in grads
    texts = svg_texts(tmp_path / "b.svg")
    assert texts.count("emb") == T and texts.count("drop") == T + 1
    assert any("many-to-one" in t for t in texts)
    assert any("output:once,afterthelaststep" in t for t in texts)


def test_many_to_many_model_has_a_loss_at_every_step(tmp_path):
    u = pytest.importorskip("unrolled")
    tagger = u.Sequential(u.Embedding(9, 3), u.Dropout(0.1), u.LSTM(3, 4, bidirectional=True),
                          u.Dropout(0.1), u.Dense(8, 5))
    T = 3
    draw_unrolled(tagger, T=T, path=tmp_path / "u.svg")
    edges = svg_edges(tmp_path / "u.svg")
    loss = {(s, t) for r, s, t in edges if r == "loss"}
    assert loss == {(f"o-{t}", f"L-{t}") for t in range(1, T + 1)}
    out = {(s, t) for r, s, t in edges if r == "out"}
    assert out == {(f"h-1-{d}-{t}", f"out-1-{t}") for t in range(1, T + 1) for d in ("1", "r")}
    draw_unrolled(tagger, T=T, path=tmp_path / "u.png", backward=True)
    open_png(tmp_path / "u.png")


def test_rolled_model_shows_the_layers_around_the_recurrence(tmp_path):
    draw_rolled(_names_model(), path=tmp_path / "r.svg")
    texts = svg_texts(tmp_path / "r.svg")
    assert texts.count("emb") == 1 and texts.count("drop") == 2     # one box per layer
    assert "embEmbedding(30,4):beforetherecurrence,ateverystep" in texts
    assert "dropDropout(p=0.5):aftertherecurrence,once,onthefinalstate" in texts
    assert "V(laststep)" in texts
    edges = svg_edges(tmp_path / "r.svg")
    assert ("in", "x", "in-1") in edges and ("U", "in-2", "h-1-0") in edges
    assert ("V", "out-1", "o") in edges
    draw_rolled(_names_model(True), path=tmp_path / "r.png")
    open_png(tmp_path / "r.png")


def test_one_to_many_generation_feeds_each_output_back_as_the_next_input(tmp_path):
    u = pytest.importorskip("unrolled")
    gen = u.UnfoldFrom("gru", u.Dense(4, 7), embed=u.Embedding(7, 3), start=1, until=2,
                       input_size=3, hidden_size=4)
    s = describe(gen)
    assert (s.pattern, s.output_size, s.inputs) == ("one-to-many", 7, ("Embedding(7, 3)",))
    T = 4
    draw_unrolled(gen, T=T, path=tmp_path / "g.svg", backward=True)
    edges = svg_edges(tmp_path / "g.svg")
    feed = {(a, b) for r, a, b in edges if r == "feed"}
    assert feed == {(f"o-{t - 1}", f"x-{t}") for t in range(2, T + 1)}
    # teacher forcing: no gradient along the feedback, a loss at every step
    assert not any(r == "grad" and a.startswith("x-") for r, a, b in edges)
    assert len([1 for r, *_ in edges if r == "loss"]) == T
    draw_rolled(gen, path=tmp_path / "r.svg")
    assert ("feed", "o", "x") in svg_edges(tmp_path / "r.svg")


@pytest.mark.parametrize("attention", [None, "dot"])
def test_encoder_decoder_drawing_links_the_encoder_to_the_decoder(attention, tmp_path):
    u = pytest.importorskip("unrolled")
    model = u.Seq2Seq(10, 12, embed_size=4, hidden_size=5, attention=attention, seed=0)
    S = T = 3
    draw_unrolled(model, T=T, path=tmp_path / "s.svg", backward=True)
    edges = svg_edges(tmp_path / "s.svg")
    by = lambda role: {(a, b) for r, a, b in edges if r == role}   # noqa: E731
    assert by("state") == {(f"h-{S}", "s-1")}                      # the final state
    assert by("W") == {(f"h-{t - 1}", f"h-{t}") for t in range(1, S + 1)} | {
        (f"s-{t - 1}", f"s-{t}") for t in range(2, T + 1)}
    assert by("loss") == {(f"o-{t}", f"L-{t}") for t in range(1, T + 1)}
    assert ("s-1", f"h-{S}") in by("grad")                         # into the encoder
    attn = by("attn")
    if attention:
        assert {(f"h-{j}", f"c-{t}") for j in range(1, S + 1)
                for t in range(1, T + 1)} <= attn
        assert by("V") == {(f"c-{t}", f"o-{t}") for t in range(1, T + 1)}
    else:
        assert not attn and by("V") == {(f"s-{t}", f"o-{t}") for t in range(1, T + 1)}
    from unrolled.inspect.drawings import draw_encoder_decoder

    draw_encoder_decoder({"cell": "gru", "hidden_size": 8, "attention": "additive"}, T=2,
                         T_source=4, path=tmp_path / "s.png")
    open_png(tmp_path / "s.png")
    with pytest.raises(ValueError, match="attention"):
        draw_encoder_decoder({"cell": "gru", "hidden_size": 8, "attention": "luong"})
    # rolled: one encoder cell and one decoder cell, each with its loop
    draw_rolled(model, path=tmp_path / "r.svg")
    edges = svg_edges(tmp_path / "r.svg")
    assert {(r, a, b) for r, a, b in edges if r in ("W", "state")} == {
        ("W", "h", "h"), ("W", "s", "s"), ("state", "h", "s")}
    assert (("attn", "h", "c") in edges) == bool(attention)
    assert ("V", "c" if attention else "s", "o") in edges and ("loss", "o", "L") in edges
    assert not any(r == "grad" for r, *_ in edges)


@pytest.mark.parametrize("all_nodes", [False, True])
def test_tree_drawing_copies_one_composition_at_every_inner_node(all_nodes, tmp_path):
    layers = pytest.importorskip("unrolled.layers")
    from unrolled.inspect import draw_tree

    net = layers.RecursiveNet(vocab=5, hidden_size=4, num_classes=2)
    tree = (("the", "cat"), ("sat", ("on", "it")))
    draw_tree(net, tree, path=tmp_path / "t.svg", backward=True, all_nodes=all_nodes)
    edges = svg_edges(tmp_path / "t.svg")
    by = lambda role: [(a, b) for r, a, b in edges if r == role]   # noqa: E731
    # post-order: leaves h1 h2, inner h3; h4 leaf; h5 h6 leaves, h7, h8; the root h9
    assert sorted(by("W")) == sorted([("n-1", "n-3"), ("n-2", "n-3"), ("n-5", "n-7"),
                                      ("n-6", "n-7"), ("n-4", "n-8"), ("n-7", "n-8"),
                                      ("n-3", "n-9"), ("n-8", "n-9")])
    assert sorted(by("E")) == [(f"x-{j}", f"n-{k}") for j, k in
                               zip(range(1, 6), (1, 2, 4, 5, 6))]
    assert len(by("loss")) == (9 if all_nodes else 1)
    grads = set(by("grad"))
    assert {(b, a) for a, b in by("W")} <= grads                   # down every edge
    assert not any(b.startswith("x-") for _, b in grads)           # not into the tokens
    texts = svg_texts(tmp_path / "t.svg")
    assert texts.count("W") == 8 and {"the", "cat", "sat", "on", "it"} <= set(texts)
    draw_unrolled(net, path=tmp_path / "t.png")                    # the default tree
    open_png(tmp_path / "t.png")
    draw_rolled(net, path=tmp_path / "r.svg")                      # one W, looping
    assert set(svg_edges(tmp_path / "r.svg")) == {
        ("E", "x", "h"), ("W", "h", "h"), ("U", "h", "o"), ("loss", "o", "L"),
        ("target", "y", "L")}
    from unrolled.inspect.drawings import draw_tree_rolled

    draw_tree_rolled({"hidden_size": 3, "max_arity": 3}, path=tmp_path / "r.svg")
    assert set(svg_edges(tmp_path / "r.svg")) == {("E", "x", "h"), ("W", "h", "h")}
