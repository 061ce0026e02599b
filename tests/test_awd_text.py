"""An AWD-style LSTM in the text task: ``--cell``, ``--weight-drop``,
``--recurrent-dropout``, ``--embed-dropout``, ``--ar``, ``--tar``; the
ActivationRegularization layer's gradient (finite differences) and saving."""
import json

import numpy as np
import pytest
from helpers import numeric_grads, rel_err

import unrolled as u
from unrolled.cli import main
from unrolled.layers import LSTM, ActivationRegularization, Sequential
from unrolled.losses import activation_regularization
from unrolled.tasks.text import build_char_model


def test_activation_regularization_layer_gradient():
    """loss = sum(out * R) + AR/TAR(h): the layer's backward is its exact gradient (and
    the identity at evaluation)."""
    rng = np.random.default_rng(0)
    model = Sequential(LSTM(3, 4, dtype="float64", seed=0), ActivationRegularization(2.0, 1.5))
    X = rng.standard_normal((2, 5, 3))
    mask = np.arange(5)[None, :] < np.array([5, 3])[:, None]
    R = rng.standard_normal((2, 5, 4))

    def objective():
        out, _, _ = model.forward(X, mask=mask, training=True)
        h, _, _ = model.layers[0].forward(X, mask=mask, training=True)
        return float((out * R).sum()) + activation_regularization(h, 2.0, 1.5, mask)[0]

    out, _, cache = model.forward(X, mask=mask, training=True)
    grads, _, _ = model.backward(cache, R)
    p = model.layers[0].params["l0"]
    keys = sorted(p)
    num = numeric_grads(objective, [p[k] for k in keys])
    for k, n in zip(keys, num):
        assert rel_err(grads["0"]["l0"][k], n) < 1e-6, k
    # a negative control: without the layer the gradients differ
    plain = Sequential(model.layers[0])
    _, _, c2 = plain.forward(X, mask=mask, training=True)
    g2, _, _ = plain.backward(c2, R)
    assert rel_err(g2["0"]["l0"]["weight_hh"], grads["0"]["l0"]["weight_hh"]) > 1e-3
    ev, _, c = model.forward(X, mask=mask)
    assert c[1][0] is None and np.array_equal(ev, model.layers[0].forward(X, mask=mask)[0])
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        ActivationRegularization(-1.0)


def test_awd_char_model_saved_and_loaded(tmp_path):
    m = build_char_model(20, 8, 16, cell="lstm", weight_drop=0.3, recurrent_dropout=0.2,
                         embed_dropout=0.1, ar=2.0, tar=1.0, seed=0)
    lstm = m.layers[1]
    assert (lstm.weight_drop, lstm.recurrent_dropout, m.layers[0].dropout) == (0.3, 0.2, 0.1)
    assert (m.layers[2].alpha, m.layers[2].beta) == (2.0, 1.0)
    u.save_model(m, tmp_path / "m.npz")
    m2, _ = u.load_model(tmp_path / "m.npz")
    assert m2.layers[1].weight_drop == 0.3 and m2.layers[2].beta == 1.0
    ids = np.random.default_rng(0).integers(0, 20, (2, 7))
    assert np.array_equal(m(ids), m2(ids))
    assert len(build_char_model(20, 8, 16).layers) == 3  # no regulariser unless asked


def test_cli_awd_options_and_cells(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("the cat sat on the mat. " * 200, encoding="utf-8")
    out = tmp_path / "awd"
    args = ["train", "text", "--data", str(text), "--out", str(out), "--epochs", "1",
            "--hidden", "16", "--embed", "8", "--chunk", "16", "--batch-size", "8"]
    assert main(args + ["--weight-drop", "0.3", "--recurrent-dropout", "0.2",
                        "--embed-dropout", "0.1", "--ar", "2", "--tar", "1"]) == 0
    cfg = json.loads((out / "config.json").read_text())["config"]
    assert (cfg["weight_drop"], cfg["recurrent_dropout"], cfg["ar"]) == (0.3, 0.2, 2.0)
    m, _ = u.load_model(out / "model.npz")
    assert m.layers[1].weight_drop == 0.3
    assert main(args[:5] + [str(tmp_path / "q")] + args[6:] + ["--cell", "qrnn"]) == 0
    capsys.readouterr()
    assert main(args[:5] + [str(tmp_path / "bad")] + args[6:]
                + ["--cell", "qrnn", "--weight-drop", "0.3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "weight_drop needs a recurrent weight" in err and err.count("\n") == 0
