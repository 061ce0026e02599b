"""Models that print as what they are: the nested repr and ``model.summary()``.

A plain layer's repr is evaluated back into a layer, which must be built the same way
(same sizes, options and parameter shapes); a summary's shapes come from a real forward
pass and its tape bytes from the arrays the forward really keeps.
"""
import numpy as np
import pytest

import unrolled as u
from unrolled.cells import REGISTRY
from unrolled.layers.recurrent import layer_class
from unrolled.tree import tree_flatten

NAMESPACE = {k: getattr(u, k) for k in u.__all__ if isinstance(getattr(u, k), type)}


def _layers():
    out = [u.Embedding(30, 4), u.Dense(5, 3, bias=False), u.Dropout(0.25), u.Dropout(),
           u.Dense(2, 2, dtype="float64"),
           u.LSTM(3, 4, forget_bias=1.0, initial_state="learned", num_layers=2, dropout=0.1),
           u.GRU(3, 4, reset_after=False, bidirectional=True, dtype="float64"),
           u.Elman(3, 4, nonlinearity="relu", truncate=5, memory="checkpoint",
                   return_sequences=False),
           u.Jordan(3, 4, output_size=2, recurrent_init="orthogonal")]
    for name in sorted(REGISTRY):   # every registered cell, through the generic layer too
        out.append(layer_class(name)(3, 4, num_layers=2))
        out.append(u.Recurrent(name, 3, 4, bidirectional=True))
    return out


def _same_layer(a, b):
    assert type(a) is type(b)
    sa = {k: v.shape for k, v in tree_flatten(a.params).items()}
    sb = {k: v.shape for k, v in tree_flatten(b.params).items()}
    assert sa == sb
    for attr in ("input_size", "hidden_size", "num_layers", "bidirectional", "dropout",
                 "return_sequences", "truncate", "memory", "initial_state", "dtype", "p",
                 "in_features", "out_features", "bias", "cell", "nonlinearity",
                 "reset_after", "forget_bias", "recurrent_init"):
        assert getattr(a, attr, None) == getattr(b, attr, None), attr


@pytest.mark.parametrize("layer", _layers(), ids=lambda ly: type(ly).__name__)
def test_repr_of_a_layer_builds_the_same_layer(layer):
    text = repr(layer)
    assert "object at" not in text and "\n" not in text
    again = eval(text, NAMESPACE)  # noqa: S307  (our own repr, read back)
    _same_layer(layer, again)
    assert repr(again) == text


def test_repr_shows_only_options_that_are_not_the_default():
    assert repr(u.LSTM(3, 4)) == "LSTM(3, 4)"
    text = repr(u.LSTM(3, 4, return_sequences=False, num_layers=3))
    assert "num_layers=3" in text and "return_sequences=False" in text
    assert "bidirectional" not in text and "dropout" not in text


def test_containers_print_their_layers_nested():
    inner = u.Sequential(u.Dense(3, 4), u.Dropout(0.1))
    lstm = u.LSTM(4, 5, return_sequences=False)
    model = u.Sequential(inner, u.Fold(u.GRU(4, 6), go_backwards=True), lstm)
    lines = repr(model).splitlines()
    assert lines[0] == "Sequential(" and lines[-1] == ")"
    assert "  (0): Sequential(" in lines
    assert f"    (0): {inner.layers[0]!r}" in lines and f"    (1): {inner.layers[1]!r}" in lines
    assert f"  (2): {lstm!r}" in lines
    fold = lines.index("  (1): Fold(")
    assert lines[fold + 1:fold + 3] == ["    go_backwards=True", "    (layer): GRU(4, 6)"]
    s2s = repr(u.Seq2Seq(10, 12, attention="dot", seed=0))
    assert "(encoder): LSTM(32, 64)" in s2s and "(readout): Dense(64, 12)" in s2s


def test_task_models_and_the_report_print_no_object_addresses(tmp_path):
    from test_inspect import _saved_names_model

    model, _ = _saved_names_model(tmp_path / "m")
    text = repr(model)
    assert "object at" not in text
    assert all(f"({i}): {ly!r}" in text for i, ly in enumerate(model.layers))


def _model():
    return u.Sequential(u.Embedding(30, 4, seed=0), u.Dropout(0.2, seed=1),
                        u.LSTM(4, 5, num_layers=2, dropout=0.1, seed=2),
                        u.GRU(5, 3, bidirectional=True, return_sequences=False, seed=3),
                        u.Dropout(0.5, seed=4), u.Dense(6, 3, seed=5))


def test_summary_shapes_and_parameters_are_those_of_the_model():
    model = _model()
    s = model.summary()
    assert len(s.rows) == len(model.layers)
    assert sum(r["params"] for r in s.rows) == s.total_params == model.num_params()
    assert [r["params"] for r in s.rows] == [ly.num_params() for ly in model.layers]
    # the output shapes of a real forward pass, B and T put in
    B, T = 2, 7
    X = np.random.default_rng(0).integers(0, 30, (B, T))
    for row, layer in zip(s.rows, model.layers):
        X, _, _ = layer.forward(X, training=True)
        want = tuple(B if d == "B" else T if d == "T" else d for d in row["output_shape"])
        assert X.shape == want, row
    text = str(s)
    assert "LSTM" in text and f"{model.num_params():,}" in text
    assert text.count("\n") >= len(model.layers) + 4


def _kept_bytes(layer, X):
    """Bytes the recurrent layer's forward keeps in its tape (states and cell caches),
    and its dropout masks."""
    _, _, cache = layer.forward(X, training=True, keep_tape=True)
    n = 0
    for tp in cache["tapes"].values():
        n += sum(s.nbytes for s in tp.states) + sum(v.nbytes for v in tp.tape.values())
    return n + sum(d.nbytes for d in cache["drops"] if d is not None)


@pytest.mark.filterwarnings("ignore:unrolled. cell:RuntimeWarning")
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_tape_bytes_per_step_are_what_the_forward_keeps(name):
    layer = layer_class(name)(3, 4, num_layers=2, bidirectional=True, dropout=0.2, seed=0)
    rng = np.random.default_rng(0)
    X5, X6 = (rng.standard_normal((1, T, 3)).astype("float32") for T in (5, 6))
    per_step = _kept_bytes(layer, X6) - _kept_bytes(layer, X5)
    assert per_step > 0
    assert layer.summary().tape_bytes == per_step


def test_summary_of_a_sequential_adds_the_layers_tapes():
    model = _model()
    s = model.summary()
    assert s.tape_bytes == sum(r["tape_bytes"] for r in s.rows)
    rows = {r["type"]: r for r in s.rows}
    assert rows["Embedding"]["tape_bytes"] == 8             # one int64 symbol per step
    assert rows["Dense"]["tape_bytes"] == 0                  # reads one vector per record
    assert s.rows[1]["tape_bytes"] == 4 * 4                  # the dropout mask, float32
